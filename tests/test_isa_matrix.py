"""The dense, activation, recurrent, attention, BatchNorm and LayerNorm suites again under
every other ISA this CPU has.

The ISA is fixed at import (SEQCORE_ISA), so each one runs in a child pytest.
SEQCORE_TEST_NO_RECURSE=1 marks the child so that it does not start children itself.
"""
import os
import subprocess
import sys

import pytest

import seqcore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = ["tests/test_dense.py", "tests/test_activations.py", "tests/test_recurrent.py", "tests/test_attention.py",
         "tests/test_batchnorm.py", "tests/test_layernorm.py"]
ISAS = ["scalar", "avx2", "avx512"]


@pytest.mark.parametrize("isa", ISAS)
def test_kernel_suite_under_isa(isa):
    if os.environ.get("SEQCORE_TEST_NO_RECURSE"):
        pytest.skip("inside a per-ISA child run")
    info = seqcore.info()
    if isa not in info["available_isas"]:
        pytest.skip(f"{isa} not available on this CPU")
    if isa == info["isa"]:
        pytest.skip(f"{isa} is the ISA of this run")
    env = dict(os.environ, SEQCORE_ISA=isa, SEQCORE_TEST_NO_RECURSE="1",
               HYPOTHESIS_PROFILE="ci-noshrink")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", *SUITE, "-p", "no:cacheprovider"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = "\n".join((r.stdout + r.stderr).splitlines()[-60:])
    assert r.returncode == 0, f"SEQCORE_ISA={isa} {' '.join(cmd[1:])} exited with {r.returncode}:\n{tail}"
    # the child really ran under the forced ISA (a wrong env would silently test the default)
    check = subprocess.run([sys.executable, "-c", "import seqcore; print(seqcore.info()['isa'])"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert check.stdout.strip() == isa, check.stderr
