"""Runtime: info(), threads (setters, OMP_NUM_THREADS, threadpoolctl), ISA forcing at import,
and a disassembly check that no wide-vector instruction leaks out of its ISA's namespace."""
import json
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict

import pytest

import seqcore

KNOWN_ISAS = ("scalar", "avx2", "avx512")


def run_python(code, env_extra=None, drop=("SEQCORE_ISA", "OMP_NUM_THREADS"), timeout=120):
    """Run ``python -c code`` in a fresh interpreter (the ISA and the OpenMP pool size are
    fixed at import). Returns the CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout)


INFO_JSON = "import json, seqcore; print(json.dumps(seqcore.info()))"


def info_in_subprocess(env_extra):
    r = run_python(INFO_JSON, env_extra)
    assert r.returncode == 0, f"import failed with {env_extra}:\n{r.stderr}"
    return json.loads(r.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- info


def test_info_keys_and_types():
    info = seqcore.info()
    assert set(info) == {"version", "isa", "available_isas", "built_isas", "num_threads", "openmp", "compiler",
                         "build_type"}
    assert info["built_isas"][:2] == ["scalar", "avx2"] and set(info["built_isas"]) <= set(KNOWN_ISAS)
    assert set(info["available_isas"]) <= set(info["built_isas"])
    assert isinstance(info["version"], str) and info["version"] == seqcore.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", info["version"]), info["version"]
    assert isinstance(info["available_isas"], list)
    assert all(isinstance(s, str) for s in info["available_isas"])
    assert info["available_isas"][0] == "scalar"
    assert set(info["available_isas"]) <= set(KNOWN_ISAS)
    # listed in increasing order of width, no duplicates
    order = [KNOWN_ISAS.index(s) for s in info["available_isas"]]
    assert order == sorted(set(order))
    assert isinstance(info["isa"], str) and info["isa"] in info["available_isas"]
    assert isinstance(info["num_threads"], int) and info["num_threads"] >= 1
    assert info["num_threads"] == seqcore.get_num_threads()
    assert isinstance(info["openmp"], str) and re.fullmatch(r"\d{6}", info["openmp"]), info["openmp"]
    assert isinstance(info["compiler"], str) and info["compiler"]
    assert isinstance(info["build_type"], str)
    assert info["build_type"].split("+")[0] in {"Release", "RelWithDebInfo", "Debug", "MinSizeRel"}  # "+asan+ubsan" on sanitizer builds


def test_info_returns_a_fresh_dict():
    info = seqcore.info()
    info["isa"] = "bogus"
    info.clear()
    assert seqcore.info()["isa"] in KNOWN_ISAS


def test_version_matches_metadata():
    from importlib.metadata import version
    assert seqcore.__version__ == version("seqcore")


def test_default_isa_is_the_widest_available():
    if os.environ.get("SEQCORE_ISA"):
        pytest.skip("SEQCORE_ISA is set for this run")
    info = seqcore.info()
    assert info["isa"] == info["available_isas"][-1]


# ----------------------------------------------------------------------------- threads


def test_set_get_num_threads():
    for n in (1, 2, 3, 1):
        seqcore.set_num_threads(n)
        assert seqcore.get_num_threads() == n
        assert seqcore.info()["num_threads"] == n


@pytest.mark.parametrize("bad", [0, -1, -(2 ** 31)])
def test_set_num_threads_rejects_non_positive(bad):
    before = seqcore.get_num_threads()
    with pytest.raises(ValueError, match="n must be >= 1"):
        seqcore.set_num_threads(bad)
    assert seqcore.get_num_threads() == before


@pytest.mark.parametrize("bad", [1.5, "2", None])
def test_set_num_threads_rejects_non_int(bad):
    with pytest.raises(TypeError):
        seqcore.set_num_threads(bad)


@pytest.mark.parametrize("n", [1, 3])
def test_omp_num_threads_is_honoured(n):
    r = run_python("import seqcore; print(seqcore.get_num_threads(), seqcore.info()['num_threads'])",
                   {"OMP_NUM_THREADS": str(n)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(n), str(n)]


def test_threadpoolctl_sees_the_openmp_pool():
    pytest.importorskip("threadpoolctl")
    # A fresh interpreter importing only NumPy (OpenBLAS: its own pthreads pool) and
    # seqcore: any OpenMP runtime threadpoolctl finds is seqcore's.
    code = (
        "import json, seqcore\n"
        "from threadpoolctl import threadpool_info\n"
        "seqcore.set_num_threads(2)\n"
        "print(json.dumps([i for i in threadpool_info() if i['user_api'] == 'openmp']))\n"
    )
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    pools = json.loads(r.stdout.strip().splitlines()[-1])
    assert pools, "threadpoolctl found no OpenMP runtime after importing seqcore"
    assert any(p["num_threads"] == 2 for p in pools), pools


def test_threadpool_limits_limits_seqcore():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    seqcore.set_num_threads(2)
    with threadpoolctl.threadpool_limits(limits=1):
        assert seqcore.get_num_threads() == 1
        assert seqcore.info()["num_threads"] == 1
    assert seqcore.get_num_threads() == 2
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert seqcore.get_num_threads() == 1
    assert seqcore.get_num_threads() == 2


# ----------------------------------------------------------------------------- ISA forcing


@pytest.mark.parametrize("isa", KNOWN_ISAS)
def test_seqcore_isa_forces_the_kernels(isa):
    if isa not in seqcore.info()["available_isas"]:
        pytest.skip(f"{isa} not available on this CPU")
    info = info_in_subprocess({"SEQCORE_ISA": isa})
    assert info["isa"] == isa
    assert info["available_isas"] == seqcore.info()["available_isas"]


def test_empty_seqcore_isa_means_default():
    info = info_in_subprocess({"SEQCORE_ISA": ""})
    assert info["isa"] == info["available_isas"][-1]


@pytest.mark.parametrize("name", ["sse9", "avx", "avx1024", "native"])
def test_unknown_seqcore_isa_is_an_import_error(name):
    code = (
        "try:\n"
        "    import seqcore\n"
        "except ImportError as e:\n"
        "    print('IMPORTERROR:', e)\n"
        "else:\n"
        "    print('IMPORTED', seqcore.info()['isa'])\n"
    )
    r = run_python(code, {"SEQCORE_ISA": name})
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip().splitlines()[-1]
    assert out.startswith("IMPORTERROR:"), out
    assert "SEQCORE_ISA" in out and repr(name) in out, out
    assert "scalar, avx2, avx512" in out, out


def test_unsupported_seqcore_isa_is_an_import_error():
    missing = [i for i in KNOWN_ISAS if i not in seqcore.info()["available_isas"]]
    if not missing:
        pytest.skip("this CPU supports every ISA seqcore knows")
    r = run_python("import seqcore", {"SEQCORE_ISA": missing[-1]})
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "not supported" in r.stderr, r.stderr
    assert "Illegal instruction" not in r.stderr


# ----------------------------------------------------------------------------- disassembly

# Names the toolchain's own statics (crt, libgcc) get; they are not seqcore code and are
# compiled by the toolchain, not with our per-ISA flags.
TOOLCHAIN = re.compile(r"^(_init|_fini|deregister_tm_clones|register_tm_clones|frame_dummy|"
                       r"__do_global_dtors_aux|__cpu_indicator_init|__cpu_model|__libc_csu_\w+|"
                       r"__x86\.\w+|_start)\b|@plt")
LABEL = re.compile(r"^[0-9a-f]+ <(.*)>:$")


def _registers_by_function(path):
    r = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", path], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    regs = defaultdict(set)
    current = None
    for line in r.stdout.splitlines():
        m = LABEL.match(line)
        if m:
            current = m.group(1)
            regs[current]
            continue
        if current is None or "%" not in line:
            continue
        if "%zmm" in line:
            regs[current].add("zmm")
        if "%ymm" in line:
            regs[current].add("ymm")
    return regs


def test_wide_registers_stay_in_their_isa_namespace():
    """No AVX-512 (zmm) outside seqcore::avx512::, no ymm/zmm in seqcore::scalar::, and no
    ymm/zmm in the ISA-independent code (bindings, runtime, pybind11, libstdc++ templates):
    a COMDAT copy compiled with wider flags and kept by the linker would crash older CPUs."""
    if shutil.which("objdump") is None:
        pytest.skip("objdump not installed")
    path = seqcore._core.__file__
    regs = _registers_by_function(path)
    names = list(regs)
    built = seqcore.info()["built_isas"]  # CI's sanitizer build leaves out what the CPU cannot run
    per_ns = {ns: [s for s in names if f"seqcore::{ns}::" in s] for ns in built}
    if not any(per_ns.values()):
        pytest.skip(f"{path} has no seqcore symbols (stripped?)")
    for ns, syms in per_ns.items():
        assert syms, f"no functions of namespace seqcore::{ns}:: in {path}"
    checked = [s for s in names if not TOOLCHAIN.search(s)]
    zmm_outside = [s for s in checked if "zmm" in regs[s] and "seqcore::avx512::" not in s]
    wide_scalar = [s for s in per_ns["scalar"] if regs[s] & {"ymm", "zmm"}]
    generic = [s for s in checked if "seqcore::avx2::" not in s and "seqcore::avx512::" not in s]
    wide_generic = [s for s in generic if regs[s] & {"ymm", "zmm"}]
    assert not zmm_outside, "zmm used outside seqcore::avx512::\n" + "\n".join(zmm_outside[:20])
    assert not wide_scalar, "ymm/zmm in seqcore::scalar::\n" + "\n".join(wide_scalar[:20])
    assert not wide_generic, "ymm/zmm in ISA-independent code\n" + "\n".join(wide_generic[:20])
    # The AVX-512 kernels really use zmm (else the avx512 build flags did not apply).
    if "avx512" in per_ns:
        assert any("zmm" in regs[s] for s in per_ns["avx512"])
    else:
        assert not any("seqcore::avx512::" in s for s in names)
    assert any("ymm" in regs[s] for s in per_ns["avx2"])


def test_flush_denormal_reaches_idle_pool_workers():
    """Turning FTZ/DAZ off must also reset pool workers idle at the current thread count, or a
    later 2-thread kernel computes on flushed subnormals (and differs from 1 thread)."""
    import numpy as np

    from seqcore import functional as F

    x = np.full(3 * 2 ** 14 + 7, 1e-39, np.float32)
    before = seqcore.get_num_threads()
    try:
        seqcore.set_num_threads(2)
        ref = F.gelu(x)
        seqcore.set_flush_denormal(True)
        assert not F.gelu(x).any(), "flushed: subnormal inputs read as 0"
        seqcore.set_num_threads(1)
        seqcore.set_flush_denormal(False)
        seqcore.set_num_threads(2)
        assert np.array_equal(F.gelu(x), ref)
    finally:
        seqcore.set_flush_denormal(False)
        seqcore.set_num_threads(before)
