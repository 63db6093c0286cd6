"""Command line: ``seqcore COMMAND`` (also ``python -m seqcore COMMAND``).

Commands: ``demo`` (a plain RNN, an LSTM, a GRU and, when available, a Transformer trained on
the adding problem: table and plots), ``train`` (one model on adding / copy / charlm, with
checkpoints and exact resume), ``generate`` (sample from a char-level checkpoint, one cell
step per character), ``gradflow`` (||dL/dh_t|| through time), ``bench`` (C++ vs NumPy vs
PyTorch), ``info``.

Exit codes: 0 success; 1 runtime error (training diverged, a file could not be written, an
unexpected failure); 2 usage error (bad option or value, unknown model/task, a missing or
unreadable input file or checkpoint, a checkpoint that does not fit the request, a model this
installation cannot build); 130 interrupted (Ctrl-C). Messages go to stderr, without a
traceback (set ``SEQCORE_DEBUG=1`` to see one).
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

EXIT_CODES_HELP = """exit codes:
  0    success
  1    runtime error (training diverged, a file could not be written, ...)
  2    usage error (bad option, unknown model or task, missing or unreadable file or
       checkpoint, checkpoint that does not fit, model not available in this build)
  130  interrupted (Ctrl-C; training writes its checkpoint first when --save is given)"""

RECURRENT = ("rnn", "lstm", "gru")
MODEL_NAMES = ("rnn", "lstm", "gru", "transformer")
TASK_NAMES = ("adding", "copy", "charlm")


class UsageError(Exception):
    """Bad arguments or input files: exit code 2."""


class RuntimeFailure(Exception):
    """A failure while running: exit code 1."""


def _err(msg):
    print(f"seqcore: error: {msg}", file=sys.stderr)


def _note(msg, quiet=False):
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


# ============================================================================ argument types
def _int_at_least(lo, what="value"):
    def conv(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v
    return conv


def _float_range(lo, lo_open=False):
    def conv(s):
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        if not math.isfinite(v) or v < lo or (lo_open and v == lo):
            raise argparse.ArgumentTypeError(f"must be {'>' if lo_open else '>='} {lo:g}, got {s}")
        return v
    return conv


def _model_list(allowed):
    def conv(s):
        names = [n.strip() for n in s.split(",") if n.strip()]
        if not names:
            raise argparse.ArgumentTypeError("expected a comma-separated list of models")
        bad = [n for n in names if n not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown model {bad[0]!r} (choose from {', '.join(allowed)})")
        return list(dict.fromkeys(names))
    return conv


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _threads_default():
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else 1


def _set_threads(n):
    import seqcore

    seqcore.set_num_threads(n if n and n > 0 else _threads_default())


def _check_writable_dir(path, what):
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise UsageError(f"{what}: directory {d} does not exist")
    if not os.access(d, os.W_OK):
        raise UsageError(f"{what}: directory {d} is not writable")
    if os.path.isdir(path):
        raise UsageError(f"{what}: {path} is a directory")


def _prepare_plot_dir(path):
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--plot: {path} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--plot: cannot create directory {path}: {e.strerror}") from None


def _plots_available(quiet=False):
    from seqcore.plots import have_matplotlib

    if have_matplotlib():
        return True
    _note("note: matplotlib is not installed, so no plots are written (pip install 'seqcore[plot]')")
    return False


# ============================================================================ info
def cmd_info(args):
    import seqcore

    for k, v in seqcore.info().items():
        print(f"{k:15s} {v}")
    return EXIT_OK


# ============================================================================ train
TRAIN_EPILOG = """examples:
  seqcore train --model lstm --task adding --steps 2000 --save lstm.ckpt
  seqcore train --resume lstm.ckpt --steps 4000           # continue (bit-for-bit) to step 4000
  seqcore train --model gru --task charlm --save lm.ckpt   # the corpus shipped in the package
  seqcore generate lm.ckpt --prompt "MENENIUS:" --length 300

defaults per task (used for every option not given):
  adding  seq-len 100, hidden 64, batch 32, steps 3000, lr 0.003, clip 1
  copy    seq-len 40 (10 symbols, delimiter, 10 recall steps), hidden 64, batch 32,
          steps 3000, lr 0.003, clip 1
  charlm  seq-len 64, hidden 128, batch 32, steps 1200, lr 0.003, clip 1
With --resume, the checkpoint's settings are used; --steps (the total to reach), --lr,
--clip, --batch and --eval-every may be changed, options that define the model or the data
must match the checkpoint.

""" + EXIT_CODES_HELP


def _train_overrides(args):
    return {"model": args.model, "task": args.task, "seq_len": args.seq_len, "hidden": args.hidden,
            "layers": args.layers, "batch": args.batch, "steps": args.steps, "lr": args.lr, "clip": args.clip,
            "optimizer": args.optimizer, "seed": args.seed, "eval_every": args.eval_every}


def _format_metrics(task, m):
    acc = m.get("acc")
    s = f"held-out loss {m['loss']:.4g}"
    if acc is not None and math.isfinite(acc):
        s += f", accuracy {acc:.3f}"
    return s


def cmd_train(args):
    from seqcore.models import model_unavailable
    from seqcore.trainer import TASK_DEFAULTS, Interrupted, TrainConfig, Trainer, load_checkpoint

    _set_threads(args.threads)
    for opt, path in (("--save", args.save), ("--log-json", args.log_json)):
        if path:
            _check_writable_dir(path, opt)
    plot_dir = args.plot if args.plot and _plots_available() else None
    if plot_dir:
        _prepare_plot_dir(plot_dir)
    ov = _train_overrides(args)
    if args.resume:
        ck = load_checkpoint(args.resume)
        trainer = Trainer.from_checkpoint(ck, args.resume, ov, text=args.text)
        start = trainer.step
        if start >= trainer.cfg.steps:
            _note(f"{args.resume} is already at step {start} (--steps {trainer.cfg.steps}): nothing to train; "
                  f"pass a larger --steps to continue")
        else:
            _note(f"resuming {args.resume} at step {start} of {trainer.cfg.steps}", args.quiet)
    else:
        task = args.task or "adding"
        model = args.model or "lstm"
        why = model_unavailable(model)
        if why:
            raise UsageError(f"--model {model}: {why}")
        d = dict(TASK_DEFAULTS[task])
        vals = {k: (v if v is not None else d.get(k)) for k, v in ov.items()}
        vals.update(model=model, task=task, optimizer=args.optimizer or "adam",
                    seed=args.seed if args.seed is not None else 0,
                    eval_every=args.eval_every if args.eval_every is not None else 0, text=args.text)
        cfg = TrainConfig(**vals)
        try:
            cfg.validate()
        except ValueError as e:
            raise UsageError(str(e)) from None
        trainer = Trainer.create(cfg)
    from seqcore import distributed as dist

    world = dist.init()
    if world.size > 1:
        try:
            trainer.set_world(world)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if not world.is_root:  # rank 0 alone prints, saves, logs and plots
            args.quiet, args.save, args.log_json, plot_dir = True, None, None, None
    cfg = trainer.cfg
    if not args.quiet:
        if world.size > 1:
            print(f"data parallel over {world.size} ranks: {cfg.batch // world.size} sequences per rank", flush=True)
        print(f"{cfg.model} on {cfg.task}: seq-len {cfg.seq_len}, hidden {cfg.hidden} x {cfg.layers} layer(s), "
              f"{trainer.num_parameters():,} parameters; batch {cfg.batch}, {cfg.optimizer} lr {cfg.lr:g}, "
              f"clip {cfg.clip:g}, {cfg.steps} steps, seed {cfg.seed}", flush=True)
    try:
        final = trainer.run(progress=not args.quiet, save=args.save)
    except Interrupted as e:
        if args.log_json:
            trainer.write_log(args.log_json, interrupted=True)
        msg = f"interrupted at step {e.step}"
        if e.saved:
            msg += f"; checkpoint written to {e.saved} (continue with: seqcore train --resume {e.saved})"
        _note(msg)
        return EXIT_INTERRUPTED
    s = trainer.summary(final)
    print(f"step {trainer.step}: {_format_metrics(trainer.task, final)}"
          f"{' (solved)' if s['solved'] else ''}; train loss {s['train_loss']:.4g}; "
          f"{s['steps_per_s']:.1f} steps/s", flush=True)
    if args.save:
        print(f"checkpoint: {args.save}")
    if args.log_json:
        trainer.write_log(args.log_json, final)
        print(f"log: {args.log_json}")
    if plot_dir:
        from seqcore import plots

        files = [plots.plot_losses({cfg.model: trainer.history()}, os.path.join(plot_dir, "loss.png"),
                                   title=f"{cfg.model} on {cfg.task}", chance=trainer.task.chance())]
        dh = {k: {"first": trainer.dh_first[k], "last": v} for k, v in trainer.dh_last.items()
              if k in trainer.dh_first}
        if dh:
            files.append(plots.plot_dh_norms(dh, os.path.join(plot_dir, "gradflow.png")))
        print("plots: " + ", ".join(files))
    return EXIT_OK


# ============================================================================ demo
DEMO_DEFAULTS = dict(seq_len=100, hidden=64, batch=32, steps=3000, lr=1e-2, clip=1.0)
# Per-model adjustments of the demo's settings (--exact turns them off). The Transformer
# solves the task in a few hundred steps at a smaller learning rate, and a step costs it
# ~5x an LSTM step here, so it trains for a fifth of the steps.
DEMO_MODEL_OVERRIDES = {"transformer": dict(lr=1e-3, steps_fraction=0.2)}

DEMO_DESCRIPTION = """Trains a plain RNN, an LSTM and a GRU (and a small Transformer encoder when this
build has one) on the adding problem: two input channels, random values and a marker at
two steps (one in each half of the sequence); the target, read at the last step, is the
sum of the two marked values. A model that cannot carry information across the sequence
stays at the mean predictor's error (MSE 1/6 ~ 0.167); "solved" means held-out MSE < 0.01.

At the default length the plain RNN's gradient ||dL/dh_t|| decays geometrically towards
t = 0 (the vanishing-gradient problem) and it fails; the LSTM and GRU carry it and solve
the task. Prints a table, writes loss curves and the gradient-through-time plot."""


def cmd_demo(args):
    import seqcore
    from seqcore.models import model_unavailable
    from seqcore.trainer import Interrupted, TrainConfig, Trainer

    _set_threads(args.threads)
    plot_dir = None if args.no_plot or not args.plot or not _plots_available() else args.plot
    if plot_dir:
        _prepare_plot_dir(plot_dir)
    if args.log_json:
        _check_writable_dir(args.log_json, "--log-json")
    info = seqcore.info()
    print(f"seqcore {info['version']} | ISA {info['isa']} | {seqcore.get_num_threads()} thread(s)")
    print(f"adding problem, sequence length {args.seq_len}: {args.steps} steps of batch {args.batch}, "
          f"hidden {args.hidden}, Adam lr {args.lr:g}, gradient clipping at {args.clip:g}, seed {args.seed}",
          flush=True)
    trainers, summaries, skipped = {}, [], []
    for name in args.models:
        why = model_unavailable(name)
        if why:
            print(f"note: skipping {name}: {why}", flush=True)
            skipped.append(name)
            continue
        kw = dict(model=name, task="adding", seq_len=args.seq_len, hidden=args.hidden, layers=1,
                  batch=args.batch, steps=args.steps, lr=args.lr, clip=args.clip, optimizer="adam",
                  seed=args.seed, eval_every=max(1, args.steps // 20))
        adjust = {} if args.exact else dict(DEMO_MODEL_OVERRIDES.get(name, {}))
        if adjust:
            frac = adjust.pop("steps_fraction", 1.0)
            kw.update(adjust, steps=max(1, round(args.steps * frac)))
            kw["eval_every"] = max(1, kw["steps"] // 20)
            print(f"{name}: {kw['steps']} steps at lr {kw['lr']:g} (--exact: the same settings as the others)",
                  flush=True)
        tr = Trainer.create(TrainConfig(**kw))
        trainers[name] = tr
        try:
            final = tr.run(progress=not args.quiet, desc=f"{name:>11s}")
        except Interrupted:
            _note("interrupted")
            return EXIT_INTERRUPTED
        summaries.append(tr.summary(final))
    if not summaries:
        raise UsageError("no model left to train")
    print()
    print(_demo_table(summaries))
    print()
    T = args.seq_len
    print(f"gradient reaching the first step from the loss at the last one, ||dL/dh_0|| / ||dL/dh_{T - 1}||:")
    for s in summaries:
        tr = trainers[s["model"]]
        verdict = ("solved" if s["solved"] else
                   "failed (stays at the mean predictor's error)" if s["eval_loss"] > 0.5 * s["chance_loss"]
                   else "partly learned")
        line = f"{s['model']:>11s}: {verdict:44s}"
        ratios = [_ratio(next(iter(d.values()))) for d in (tr.dh_first, tr.dh_last) if d]
        if len(ratios) == 2:
            line += f" {ratios[0]} at step 1, {ratios[1]} at the end"
        elif not tr.model.recurrent_layers():
            line += " (attention links every step to the last: no gradient path through time)"
        print(line.rstrip())
    if args.log_json:
        from seqcore.trainer import atomic_write_text

        doc = {"schema": "seqcore-demo-log/1", "config": {k: getattr(args, k) for k in
                                                            ("seq_len", "hidden", "batch", "steps", "lr", "clip",
                                                             "seed")},
               "skipped": skipped, "runs": {n: tr.log_dict() for n, tr in trainers.items()}}
        atomic_write_text(args.log_json, json.dumps(doc, indent=1) + "\n")
        print(f"log: {args.log_json}")
    if plot_dir:
        from seqcore import plots

        f1 = plots.plot_losses({n: tr.history() for n, tr in trainers.items()},
                               os.path.join(plot_dir, "demo_loss.png"),
                               title=f"adding problem, T = {args.seq_len}: held-out and training MSE",
                               chance=1 / 6, ylabel="MSE")
        curves = {}
        for n, tr in trainers.items():
            for k, v in tr.dh_last.items():
                if k in tr.dh_first:
                    curves[n] = {"first": tr.dh_first[k], "last": v}
                    break
        f2 = plots.plot_dh_norms(curves, os.path.join(plot_dir, "demo_gradflow.png"),
                                 title=f"||dL/dh_t|| through {args.seq_len} steps (loss at the last step)")
        print(f"plots: {f1}, {f2}")
    return EXIT_OK


def _ratio(curve):
    c = np.asarray(curve, np.float64)
    if c.size == 0 or not c[-1] > 0:
        return "n/a"
    r = c[0] / c[-1]
    return "0 (underflow)" if r == 0 else f"{r:.1e}"


def _demo_table(rows):
    head = ["model", "params", "steps", "time", "steps/s", "train MSE", "held-out MSE", "acc(±0.04)", "solved"]
    body = [[r["model"], f"{r['parameters']:,}", str(r["step"]), f"{r['time_s']:.1f} s", f"{r['steps_per_s']:.0f}",
             f"{r['train_loss']:.4f}", f"{r['eval_loss']:.4f}", f"{r['eval_acc']:.3f}", "yes" if r["solved"] else "no"]
            for r in rows]
    return _table(head, body)


def _table(head, body):
    w = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(cells))
    return "\n".join([line(head), line(["-" * x for x in w])] + [line(r) for r in body])


# ============================================================================ generate
def cmd_generate(args):
    from seqcore.generate import generate
    from seqcore.trainer import load_checkpoint

    _set_threads(None)
    ck = load_checkpoint(args.checkpoint)
    out = sys.stdout
    out.write(args.prompt)
    out.flush()
    for ch in generate(ck, args.checkpoint, prompt=args.prompt, length=args.length,
                       temperature=args.temperature, seed=args.seed):
        out.write(ch)
        out.flush()
    out.write("\n")
    return EXIT_OK


# ============================================================================ gradflow
def cmd_gradflow(args):
    from seqcore.gradflow import gradient_flow

    _set_threads(args.threads)
    plot = None if args.no_plot or not args.plot or not _plots_available() else args.plot
    if plot:
        _check_writable_dir(plot, "--plot")
    if args.json:
        _check_writable_dir(args.json, "--json")
    results = gradient_flow(models=args.models, checkpoints=args.checkpoint or [], seq_len=args.seq_len,
                            hidden=args.hidden, batch=args.batch, seed=args.seed)
    T_max = max(len(r["norms"]) for r in results)
    print(f"||dL/dh_t|| at initialisation (loss on the last step of the adding problem, batch {args.batch})"
          if not args.checkpoint else "||dL/dh_t|| (loss on the last step)")
    cols = sorted({0, T_max // 4, T_max // 2, (3 * T_max) // 4, T_max - 1})
    head = ["model", "T"] + [f"t={t}" for t in cols] + ["dh_0/dh_T-1"]
    body = []
    for r in results:
        n = r["norms"]
        body.append([r["label"], str(len(n))] + [f"{n[t]:.2e}" if t < len(n) else "" for t in cols] +
                    [f"{n[0] / n[-1]:.2e}" if n[-1] > 0 else "nan"])
    print(_table(head, body))
    if args.json:
        from seqcore.trainer import atomic_write_text

        atomic_write_text(args.json, json.dumps({"schema": "seqcore-gradflow/1", "results": [
            {"label": r["label"], "model": r["model"], "seq_len": len(r["norms"]),
             "norms": [float(v) for v in r["norms"]]} for r in results]}, indent=1) + "\n")
        print(f"numbers: {args.json}")
    if plot:
        from seqcore import plots

        plots.plot_dh_norms({r["label"]: r["norms"] for r in results}, plot,
                            title="||dL/dh_t|| through time (loss at the last step)")
        print(f"plot: {plot}")
    return EXIT_OK


# ============================================================================ bench
def cmd_bench(rest):
    from seqcore import bench

    return bench.main(rest, prog="seqcore bench")


# ============================================================================ parser
def build_parser():
    p = argparse.ArgumentParser(
        prog="seqcore", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fast CPU kernels for sequence models: train, watch gradients flow, generate, benchmark.",
        epilog=EXIT_CODES_HELP)
    p.add_argument("--version", action="version", version=f"seqcore {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser("info", help="version, ISA chosen and available, threads",
                   description="Prints the version, the kernels (ISA) in use and available, threads and build.")

    d = sub.add_parser("demo", help="RNN vs LSTM vs GRU (vs Transformer) on the adding problem",
                       description=DEMO_DESCRIPTION, epilog=EXIT_CODES_HELP, formatter_class=_Formatter)
    d.add_argument("--models", type=_model_list(MODEL_NAMES), default=list(MODEL_NAMES),
                   help="comma-separated models (rnn,lstm,gru,transformer)")
    d.add_argument("--seq-len", type=_int_at_least(2), default=DEMO_DEFAULTS["seq_len"], help="sequence length T")
    d.add_argument("--hidden", type=_int_at_least(1), default=DEMO_DEFAULTS["hidden"], help="hidden size")
    d.add_argument("--batch", type=_int_at_least(1), default=DEMO_DEFAULTS["batch"], help="batch size")
    d.add_argument("--steps", type=_int_at_least(1), default=DEMO_DEFAULTS["steps"], help="training steps per model")
    d.add_argument("--lr", type=_float_range(0, lo_open=True), default=DEMO_DEFAULTS["lr"], help="Adam learning rate")
    d.add_argument("--clip", type=_float_range(0), default=DEMO_DEFAULTS["clip"],
                   help="clip the global gradient norm to this (0: off)")
    d.add_argument("--seed", type=int, default=0, help="seed of the data and the initial weights")
    d.add_argument("--threads", type=_int_at_least(0), default=None,
                   help="OpenMP threads (default: $OMP_NUM_THREADS, else 1: these small models run "
                        "fastest on one core)")
    d.add_argument("--plot", metavar="DIR", default="seqcore-demo", help="directory for the PNGs")
    d.add_argument("--no-plot", action="store_true", help="write no PNGs")
    d.add_argument("--log-json", metavar="FILE", help="write every run's history as JSON")
    d.add_argument("--exact", action="store_true",
                   help="use exactly these settings for every model (no per-model adjustments)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")

    t = sub.add_parser("train", help="train one model on adding / copy / charlm, with checkpoints",
                       description="Trains one model on a built-in task with progress bars, periodic evaluation "
                                   "on held-out data and atomic checkpoints that resume exactly.",
                       epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--model", choices=MODEL_NAMES, help="model (default lstm)")
    t.add_argument("--task", choices=TASK_NAMES, help="task (default adding)")
    t.add_argument("--text", metavar="FILE", help="charlm: a UTF-8 text file (default: the corpus shipped with "
                                                  "seqcore, the opening of Shakespeare's Coriolanus)")
    t.add_argument("--seq-len", type=_int_at_least(1), help="sequence length T")
    t.add_argument("--hidden", type=_int_at_least(1), help="hidden size (Transformer: d_model)")
    t.add_argument("--layers", type=_int_at_least(1), help="number of layers (default 1)")
    t.add_argument("--batch", type=_int_at_least(1), help="batch size")
    t.add_argument("--steps", type=_int_at_least(0), help="total training steps")
    t.add_argument("--lr", type=_float_range(0, lo_open=True), help="learning rate")
    t.add_argument("--clip", type=_float_range(0), help="clip the global gradient norm to this (0: off)")
    t.add_argument("--optimizer", choices=("adam", "adamw", "rmsprop", "sgd"),
                   help="optimizer (default adam; sgd uses momentum 0.9)")
    t.add_argument("--seed", type=int, help="seed of the initial weights and the data stream (default 0)")
    t.add_argument("--eval-every", type=_int_at_least(1), help="evaluate (and checkpoint) every N steps "
                                                               "(default: steps / 10)")
    t.add_argument("--threads", type=_int_at_least(0), default=None,
                   help="OpenMP threads (default: $OMP_NUM_THREADS, else 1)")
    t.add_argument("--save", metavar="CKPT", help="checkpoint file, written atomically at every evaluation, "
                                                  "at the end and on Ctrl-C")
    t.add_argument("--resume", metavar="CKPT", help="continue the run saved in CKPT")
    t.add_argument("--log-json", metavar="FILE", help="write the run's history as JSON (schema seqcore-train-log/1)")
    t.add_argument("--plot", metavar="DIR", help="write loss.png (and gradflow.png for recurrent models) here")
    t.add_argument("--quiet", action="store_true", help="no progress bar or header")

    g = sub.add_parser("generate", help="sample text from a char-level checkpoint",
                       description="Samples from a model trained with 'seqcore train --task charlm': the prompt "
                                   "runs through the whole-sequence layer, then every new character is one "
                                   "streaming cell step (nn.LSTMCell/GRUCell/RNNCell.step) per layer.",
                       epilog=EXIT_CODES_HELP, formatter_class=_Formatter)
    g.add_argument("checkpoint", metavar="CKPT", help="checkpoint from 'seqcore train --task charlm --save CKPT'")
    g.add_argument("--prompt", default="\n", help="text to start from (characters of the model's vocabulary)")
    g.add_argument("--length", type=_int_at_least(0), default=300, help="characters to generate")
    g.add_argument("--temperature", type=_float_range(0), default=0.8,
                   help="softmax temperature (0: always the most likely character)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")

    f = sub.add_parser("gradflow", help="||dL/dh_t|| through time for fresh (or trained) recurrent models",
                       description="One forward and backward pass of the adding problem's loss (at the last "
                                   "step) through freshly initialised recurrent models, or through trained ones "
                                   "(--checkpoint) on their own task: prints ||dL/dh_t|| at a few t and plots "
                                   "the whole curve (log scale).",
                       epilog=EXIT_CODES_HELP, formatter_class=_Formatter)
    f.add_argument("--models", type=_model_list(RECURRENT), default=list(RECURRENT),
                   help="comma-separated recurrent models (rnn,lstm,gru)")
    f.add_argument("--checkpoint", metavar="CKPT", action="append",
                   help="a trained recurrent model's checkpoint instead of fresh models (repeatable)")
    f.add_argument("--seq-len", type=_int_at_least(1), default=100, help="sequence length T")
    f.add_argument("--hidden", type=_int_at_least(1), default=64, help="hidden size")
    f.add_argument("--batch", type=_int_at_least(1), default=32, help="batch size")
    f.add_argument("--seed", type=int, default=0, help="seed of the weights and the data")
    f.add_argument("--threads", type=_int_at_least(0), default=None,
                   help="OpenMP threads (default: $OMP_NUM_THREADS, else 1)")
    f.add_argument("--plot", metavar="FILE", default="gradflow.png", help="PNG to write")
    f.add_argument("--no-plot", action="store_true", help="write no PNG")
    f.add_argument("--json", metavar="FILE", help="write the curves as JSON")

    sub.add_parser("bench", help="C++ vs NumPy twin vs PyTorch benchmarks (see 'seqcore bench --help')",
                   add_help=False)
    return p


def _version():
    try:
        from importlib.metadata import version

        return version("seqcore")
    except Exception:
        return "unknown"


_HANDLERS = {"info": cmd_info, "demo": cmd_demo, "train": cmd_train, "generate": cmd_generate,
             "gradflow": cmd_gradflow}


def main(argv=None):
    """Runs the command line; returns the exit code (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "bench":
            return _run(lambda: cmd_bench(argv[1:]))
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help (0) or a usage error (2), already printed by argparse
            return e.code if isinstance(e.code, int) else EXIT_USAGE
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        if args.command in ("train", "demo"):
            return _run(lambda: _flush_denormals(_HANDLERS[args.command], args))
        return _run(lambda: _HANDLERS[args.command](args))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _flush_denormals(handler, args):
    """Training runs with subnormal floats flushed to zero: a vanishing gradient (the plain
    RNN's, by design of the demo) otherwise sinks into the subnormal range, where x86
    arithmetic is ~100x slower, and dominates the run time. Restored afterwards."""
    import seqcore

    seqcore.set_flush_denormal(True)
    try:
        return handler(args)
    finally:
        seqcore.set_flush_denormal(False)


def _run(fn):
    from seqcore.models import ModelError
    from seqcore.tasks import TaskError
    from seqcore.trainer import CheckpointError, TrainingError

    debug = os.environ.get("SEQCORE_DEBUG", "") not in ("", "0")
    try:
        rc = fn()
        return EXIT_OK if rc is None else int(rc)
    except SystemExit as e:  # argparse inside 'bench'
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    except (UsageError, CheckpointError, TaskError, ModelError) as e:
        if debug:
            raise
        _err(str(e))
        return EXIT_USAGE
    except (TrainingError, RuntimeFailure) as e:
        if debug:
            raise
        _err(str(e))
        return EXIT_ERROR
    except BrokenPipeError:  # e.g. 'seqcore generate ... | head'
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK
    except KeyboardInterrupt:
        raise
    except OSError as e:
        if debug:
            raise
        where = f" {e.filename}" if e.filename else ""
        _err(f"{e.strerror or e}{':' if where else ''}{where}")
        return EXIT_ERROR
    except Exception as e:  # an unexpected failure: one line, no traceback
        if debug:
            raise
        _err(f"{type(e).__name__}: {e} (set SEQCORE_DEBUG=1 for a traceback)")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
