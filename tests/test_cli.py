"""The command line end to end, at tiny sizes: every subcommand's exit code and files (PNG
headers, the --log-json schema, checkpoints), exact resume (bit for bit equal to an
uninterrupted run, also after Ctrl-C), clear errors without a traceback for bad arguments,
the demo's vanishing-gradient contrast, and the examples/ scripts.

Most tests call ``seqcore.cli.main(argv)`` in process (fast); a few run
``python -m seqcore`` in a subprocess (signals, the real entry point, no traceback on stderr).
"""
import json
import os
import signal
import subprocess
import sys
import time
from importlib import resources

import numpy as np
import pytest

import seqcore
import seqcore.plots
from seqcore import cli, nn
from seqcore.trainer import LOG_SCHEMA, Trainer, TrainConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_TRANSFORMER = hasattr(nn, "TransformerEncoderLayer")
try:
    import matplotlib  # noqa: F401
    HAVE_MPL = True
except ImportError:
    HAVE_MPL = False
needs_mpl = pytest.mark.skipif(not HAVE_MPL, reason="matplotlib is not installed")


def run_cli(*argv, timeout=120, **kw):
    """``python -m seqcore ARGV`` in a subprocess (1 thread, from a neutral directory)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("SEQCORE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "seqcore", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def main(*argv):
    return cli.main([str(a) for a in argv])


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC, f"{path} is not a PNG"


def assert_same(a, b, path=""):
    """Exact equality of nested checkpoint content (arrays bitwise, NaN == NaN)."""
    if isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), path
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}/{i}")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), f"{path}: arrays differ"
    elif isinstance(a, float) and a != a:
        assert b != b, path
    else:
        assert a == b, (path, a, b)


def assert_resumed_equal(a, b):
    """Everything the continuation depends on, plus the loss history."""
    for key in ("model", "optimizer", "rng", "step", "config", "task"):
        assert_same(a[key], b[key], key)
    for key in ("loss", "grad_norm"):
        assert_same(a["history"][key], b["history"][key], f"history/{key}")
    assert_same_evals(a["history"]["evals"], b["history"]["evals"])


def assert_same_evals(ea, eb):
    """Evaluations at the steps both runs evaluated (a run that stopped early also evaluated
    where it stopped) are identical."""
    da, db = ({e["step"]: (e["loss"], e["acc"]) for e in ev} for ev in (ea, eb))
    common = sorted(set(da) & set(db))
    assert common and common[-1] == max(da) == max(db)
    assert_same([da[s] for s in common], [db[s] for s in common], "evals")


def check_log_schema(doc, steps):
    assert doc["schema"] == LOG_SCHEMA
    assert set(doc) >= {"config", "task", "model", "seqcore", "steps", "evals", "dh_norms", "final", "interrupted"}
    cfg = doc["config"]
    for k in ("model", "task", "seq_len", "hidden", "layers", "batch", "steps", "lr", "clip", "optimizer", "seed"):
        assert k in cfg, k
    assert isinstance(doc["model"]["parameters"], int) and doc["model"]["parameters"] > 0
    assert len(doc["steps"]) == steps
    for i, s in enumerate(doc["steps"]):
        assert s["step"] == i + 1 and isinstance(s["loss"], float) and isinstance(s["grad_norm"], float)
    assert doc["evals"] and all({"step", "loss", "acc"} <= set(e) for e in doc["evals"])
    assert doc["evals"][-1]["step"] == steps
    fin = doc["final"]
    for k in ("step", "train_loss", "eval_loss", "eval_acc", "solved", "time_s", "steps_per_s", "parameters"):
        assert k in fin, k
    assert fin["step"] == steps and isinstance(fin["solved"], bool)
    assert isinstance(doc["interrupted"], bool)


# ============================================================================ help and info
@pytest.mark.parametrize("command", ["", "info", "demo", "train", "generate", "gradflow", "bench"])
def test_help_for_every_subcommand(command, capsys):
    argv = ([command] if command else []) + ["--help"]
    assert main(*argv) == 0
    out = capsys.readouterr().out
    assert "usage:" in out
    if command in ("", "demo", "train", "generate", "gradflow"):
        assert "130" in out  # exit codes are documented


def test_info(capsys):
    assert main("info") == 0
    out = capsys.readouterr().out
    assert seqcore.info()["isa"] in out and "version" in out


def test_no_command_is_a_usage_error(capsys):
    assert main() == 2
    assert "usage:" in capsys.readouterr().err


# ============================================================================ train
def test_train_writes_checkpoint_log_and_plots(tmp_path):
    """The real entry point: exit 0, a loadable checkpoint, the JSON schema, PNGs."""
    ck, log, plots = tmp_path / "m.ckpt", tmp_path / "log.json", tmp_path / "plots"
    r = run_cli("train", "--model", "gru", "--task", "adding", "--seq-len", 12, "--hidden", 8, "--steps", 12,
                "--eval-every", 4, "--save", ck, "--log-json", log, "--plot", plots)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "step 12:" in r.stdout
    c = seqcore.load(ck)
    assert c["format"] == "seqcore-train-checkpoint" and c["step"] == 12
    assert set(c["model"]) == {"rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0",
                               "head.weight", "head.bias"}
    assert c["model"]["rnn.weight_hh_l0"].shape == (3 * 8, 8)
    doc = json.loads(log.read_text())
    check_log_schema(doc, 12)
    assert [e["step"] for e in doc["evals"]] == [4, 8, 12]
    assert len(doc["dh_norms"]["first"]["rnn[0,0]"]) == 12
    if HAVE_MPL:
        assert_png(plots / "loss.png")
        assert_png(plots / "gradflow.png")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


@pytest.mark.parametrize("model, task, extra", [
    ("rnn", "adding", ["--seq-len", 10, "--optimizer", "sgd"]),
    ("lstm", "copy", ["--seq-len", 23, "--layers", 2, "--optimizer", "rmsprop"]),
    ("gru", "charlm", ["--seq-len", 16, "--optimizer", "adamw"]),
])
def test_resume_equals_uninterrupted_training_bit_for_bit(tmp_path, model, task, extra):
    common = ["train", "--model", model, "--task", task, "--hidden", 12, "--batch", 4, "--eval-every", 3,
              "--quiet", *extra]
    full, part = tmp_path / "full.ckpt", tmp_path / "part.ckpt"
    assert main(*common, "--steps", 10, "--save", full, "--log-json", tmp_path / "full.json") == 0
    assert main(*common, "--steps", 4, "--save", part) == 0
    assert seqcore.load(part)["step"] == 4
    # resume with the checkpoint's settings, another thread count (results do not depend on it)
    assert main("train", "--resume", part, "--steps", 10, "--save", part, "--threads", 2, "--quiet",
                "--log-json", tmp_path / "resumed.json") == 0
    a, b = seqcore.load(full), seqcore.load(part)
    assert a["step"] == b["step"] == 10
    assert_resumed_equal(a, b)
    ja, jb = (json.loads((tmp_path / f).read_text()) for f in ("full.json", "resumed.json"))
    assert ja["steps"] == jb["steps"]
    assert_same_evals(ja["evals"], jb["evals"])


def test_ctrl_c_saves_a_complete_checkpoint_exits_130_and_resumes_exactly(tmp_path):
    ck = tmp_path / "run.ckpt"
    args = ["--model", "lstm", "--task", "adding", "--seq-len", 8, "--hidden", 8, "--batch", 4,
            "--eval-every", 10, "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "seqcore", "train", *map(str, args), "--steps", str(10 ** 7),
                          "--save", str(ck)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not ck.exists():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert "Traceback" not in err and "interrupted at step" in err and "--resume" in err
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")], "a temporary file was left"
    c = seqcore.load(ck)
    s = c["step"]
    assert s >= 10 and len(c["history"]["loss"]) == s
    # resuming the interrupted run for 3 more steps equals an uninterrupted run of s + 3 steps
    assert main("train", "--resume", ck, "--steps", s + 3, "--save", ck, "--quiet") == 0
    ref = tmp_path / "ref.ckpt"
    assert main("train", *args, "--steps", s + 3, "--save", ref) == 0
    assert_resumed_equal(seqcore.load(ref), seqcore.load(ck))


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """Ctrl-C (or a crash) in the middle of writing: the old file is untouched, no temp left."""
    tr = Trainer.create(TrainConfig(model="rnn", task="adding", seq_len=6, hidden=4, batch=2, steps=2))
    tr.run(progress=False)
    path = tmp_path / "c.ckpt"
    tr.save(path)
    before = path.read_bytes()
    tr.train_step()
    real_savez = np.savez

    def broken_savez(f, **members):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(seqcore.serialization.np, "savez", broken_savez)
    with pytest.raises(KeyboardInterrupt):
        tr.save(path)
    monkeypatch.setattr(seqcore.serialization.np, "savez", real_savez)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.ckpt"]
    assert seqcore.load(path)["step"] == 2


def test_non_finite_loss_is_a_runtime_error(capsys):
    rc = main("train", "--model", "rnn", "--seq-len", 6, "--hidden", 4, "--steps", 20, "--lr", 1e30,
              "--clip", 0, "--optimizer", "sgd", "--quiet")
    err = capsys.readouterr().err
    assert rc == 1 and "non-finite" in err and "Traceback" not in err


def test_plots_are_skipped_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(seqcore.plots, "have_matplotlib", lambda: False)
    assert main("train", "--model", "rnn", "--seq-len", 6, "--hidden", 4, "--steps", 3, "--quiet",
                "--plot", tmp_path / "p") == 0
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_shipped_corpus_is_package_data():
    """The charlm default text is found through importlib.resources in the installed package."""
    res = resources.files("seqcore").joinpath("data").joinpath("coriolanus.txt")
    text = res.read_text(encoding="utf-8")
    assert len(text) > 20000 and text.startswith("First Citizen:")


# ============================================================================ generate
@pytest.fixture(scope="module")
def charlm_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "lm.ckpt"
    assert main("train", "--model", "lstm", "--task", "charlm", "--layers", 2, "--seq-len", 24, "--hidden", 24,
                "--steps", 30, "--batch", 8, "--save", path, "--quiet") == 0
    return path


def test_generate(charlm_ckpt):
    r = run_cli("generate", charlm_ckpt, "--prompt", "MENENIUS:", "--length", 50, "--seed", 3)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert text.startswith("MENENIUS:") and len(text) == len("MENENIUS:") + 50 + 1  # + final newline
    again = run_cli("generate", charlm_ckpt, "--prompt", "MENENIUS:", "--length", 50, "--seed", 3)
    assert again.stdout == text  # seeded
    vocab = set(seqcore.load(charlm_ckpt)["task"]["vocab"])
    assert set(text[:-1]) <= vocab


def test_generate_streaming_steps_follow_the_trained_layers(charlm_ckpt):
    """Greedy generation through the cells equals the argmax of the whole-sequence model run
    over prompt + generated text: the cells carry the trained weights and state."""
    from seqcore.generate import generate, load_charlm
    from seqcore.tasks import encode_chars

    ck = seqcore.load(charlm_ckpt)
    prompt = "First "
    gen = "".join(generate(ck, prompt=prompt, length=30, temperature=0))
    model, vocab = load_charlm(ck)
    model.eval()
    ids = encode_chars(prompt + gen, vocab)
    logits = model.forward(ids[:-1, None])[:, 0]
    pred = np.argmax(logits[len(prompt) - 1:], axis=1)
    assert "".join(vocab[i] for i in pred) == gen


# ============================================================================ gradflow and demo
def test_gradflow(tmp_path):
    js, png = tmp_path / "g.json", tmp_path / "g.png"
    assert main("gradflow", "--seq-len", 40, "--hidden", 16, "--batch", 8, "--json", js, "--plot", png) == 0
    doc = json.loads(js.read_text())
    assert doc["schema"] == "seqcore-gradflow/1"
    norms = {r["model"]: np.array(r["norms"]) for r in doc["results"]}
    assert set(norms) == {"rnn", "lstm", "gru"} and all(n.shape == (40,) for n in norms.values())
    assert norms["rnn"][0] < 1e-3 * norms["lstm"][0]
    if HAVE_MPL:
        assert_png(png)


def test_gradflow_of_a_checkpoint(charlm_ckpt, capsys):
    assert main("gradflow", "--checkpoint", charlm_ckpt, "--no-plot") == 0
    out = capsys.readouterr().out
    assert "layer 0" in out and "layer 1" in out


def test_demo_contrast_at_reduced_size(tmp_path, capsys):
    """The plain RNN's gradient at t = 0 is orders of magnitude below the LSTM's; the demo
    writes its table, its JSON and both PNGs; a missing Transformer is skipped with a note."""
    log, plots = tmp_path / "demo.json", tmp_path / "plots"
    models = "rnn,lstm,gru,transformer"
    assert main("demo", "--models", models, "--seq-len", 50, "--hidden", 16, "--steps", 8, "--batch", 8,
                "--quiet", "--plot", plots, "--log-json", log) == 0
    out = capsys.readouterr().out
    for word in ("model", "params", "steps/s", "held-out MSE", "rnn", "lstm", "gru"):
        assert word in out
    assert ("skipping transformer" in out) == (not HAVE_TRANSFORMER)
    doc = json.loads(log.read_text())
    runs = doc["runs"]
    first = {m: np.array(runs[m]["dh_norms"]["first"]["rnn[0,0]"]) for m in ("rnn", "lstm", "gru")}
    assert first["rnn"][0] < 1e-4 * first["lstm"][0]
    for m in runs:
        check_log_schema(runs[m], runs[m]["config"]["steps"])
    if HAVE_MPL:
        assert_png(plots / "demo_loss.png")
        assert_png(plots / "demo_gradflow.png")


# ============================================================================ bad arguments
@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "foo"], "invalid choice: 'foo'"),
    (["train", "--task", "bar"], "invalid choice: 'bar'"),
    (["train", "--steps", "-1"], "must be >= 0"),
    (["train", "--lr", "abc"], "expected a number"),
    (["train", "--task", "charlm", "--text", "{tmp}/missing.txt"], "no such file"),
    (["train", "--task", "adding", "--text", "{tmp}/x.txt"], "only used by --task charlm"),
    (["train", "--task", "copy", "--seq-len", "5"], "the copy task needs --seq-len"),
    (["train", "--resume", "{tmp}/missing.ckpt"], "no such checkpoint"),
    (["train", "--resume", "{tmp}/garbage.ckpt"], "not a seqcore checkpoint"),
    (["train", "--resume", "{tmp}/truncated.ckpt"], "truncated or corrupted"),
    (["train", "--resume", "{tmp}/other.npz"], "not a checkpoint written by 'seqcore train'"),
    (["train", "--resume", "{tmp}/good.ckpt", "--hidden", "7"], "trained with --hidden 6"),
    (["train", "--resume", "{tmp}/good.ckpt", "--model", "gru"], "trained with --model rnn"),
    (["train", "--resume", "{tmp}/reshaped.ckpt"], "do not fit a rnn model"),
    (["train", "--save", "{tmp}/no/such/dir/x.ckpt"], "does not exist"),
    (["generate", "{tmp}/good.ckpt"], "not a char-level language model"),
    (["generate", "{tmp}/missing.ckpt"], "no such checkpoint"),
    (["generate", "{tmp}/good.ckpt", "--temperature", "-1"], "must be >= 0"),
    (["gradflow", "--models", "rnn,transformer"], "unknown model 'transformer'"),
    (["gradflow", "--checkpoint", "{tmp}/garbage.ckpt"], "not a seqcore checkpoint"),
    (["demo", "--steps", "0"], "must be >= 1"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_give_a_message_and_exit_2(tmp_path, capsys, argv, message):
    good = tmp_path / "good.ckpt"
    assert main("train", "--model", "rnn", "--seq-len", 6, "--hidden", 6, "--steps", 2, "--save", good,
                "--quiet") == 0
    (tmp_path / "x.txt").write_text("hello")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    (tmp_path / "truncated.ckpt").write_bytes(good.read_bytes()[:2000])
    seqcore.save({"a": np.zeros(3)}, tmp_path / "other.npz")
    c = seqcore.load(good)
    c["model"]["rnn.weight_hh_l0"] = np.zeros((6, 5), np.float32)
    seqcore.save(c, tmp_path / "reshaped.ckpt")
    capsys.readouterr()
    rc = main(*[a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err, err
    assert "Traceback" not in err


def test_bad_arguments_from_the_real_entry_point(tmp_path):
    (tmp_path / "bad.ckpt").write_bytes(b"\x00" * 100)
    for argv in (["train", "--model", "nope"], ["generate", tmp_path / "bad.ckpt"]):
        r = run_cli(*argv)
        assert r.returncode == 2 and "error" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_transformer_unavailable_is_a_clear_usage_error_and_skipped_by_the_demo(monkeypatch, capsys):
    """A build without the Transformer layers: --model transformer fails with a message, the
    demo trains the others and says it skipped it."""
    monkeypatch.delattr(nn, "TransformerEncoderLayer", raising=False)
    assert main("train", "--model", "transformer", "--steps", 1) == 2
    err = capsys.readouterr().err
    assert "TransformerEncoderLayer" in err and "Traceback" not in err
    assert main("demo", "--models", "rnn,transformer", "--seq-len", 10, "--hidden", 4, "--steps", 2, "--quiet",
                "--no-plot") == 0
    assert "skipping transformer" in capsys.readouterr().out


# ============================================================================ examples
EXAMPLES = ["train_lstm_on_arrays.py", "pytorch_lstm_weights.py", "truncated_bptt.py", "custom_model.py"]


@pytest.mark.skipif(not os.path.isdir(os.path.join(REPO, "examples")), reason="no examples/ (installed tests)")
@pytest.mark.parametrize("script", EXAMPLES)
def test_examples_run(script, tmp_path):
    args = {"train_lstm_on_arrays.py": ["--epochs", "3"], "truncated_bptt.py": ["--epochs", "1"],
            "pytorch_lstm_weights.py": ["--weights", str(tmp_path / "w.npz")]}.get(script, [])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, os.path.join(REPO, "examples", script), *args], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()


# ============================================================================ transformer
needs_transformer = pytest.mark.skipif(not HAVE_TRANSFORMER, reason="no nn.TransformerEncoderLayer")


@needs_transformer
@pytest.mark.parametrize("task, extra", [("adding", ["--seq-len", 10]), ("charlm", ["--seq-len", 16])])
def test_transformer_entry_trains_resumes_and_generates(tmp_path, capsys, task, extra):
    common = ["train", "--model", "transformer", "--task", task, "--hidden", 8, "--layers", 2, "--batch", 4,
              "--eval-every", 3, "--quiet", *extra]
    full, part = tmp_path / "full.ckpt", tmp_path / "part.ckpt"
    assert main(*common, "--steps", 8, "--save", full) == 0
    assert main(*common, "--steps", 3, "--save", part) == 0
    assert main("train", "--resume", part, "--steps", 8, "--save", part, "--quiet") == 0
    assert_resumed_equal(seqcore.load(full), seqcore.load(part))
    assert any(k.startswith("encoder.") for k in seqcore.load(full)["model"])
    if task == "charlm":
        capsys.readouterr()
        assert main("generate", full, "--prompt", "All:", "--length", 20) == 0
        assert capsys.readouterr().out.startswith("All:")
        assert main("gradflow", "--checkpoint", full, "--no-plot") == 2  # no recurrent state

