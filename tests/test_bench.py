"""The benchmark harness (seqcore.bench) on quick sizes: what it reports, not how fast."""
import numpy as np
import pytest

from seqcore import bench


def test_fma_cases_pair_probe_samples_with_their_rounds():
    recs = bench.run(suites="gemm", threads=(1,), repeats=3, quick=True, verbose=False)
    fma = [r for r in recs if r["peak_used"]["kind"].startswith(("fma32", "fma64"))]
    assert fma, "the gemm suite compares with the FMA peak"
    for r in fma:
        # one probe sample per round, taken between the contenders' samples
        rounds = max(d["samples"] for d in r["contenders"].values())
        assert len(r["probe_samples"]) == rounds
        div = 2.0 if r["dtype"] == "float64" else 1.0
        paired = float(np.median(r["probe_samples"])) / 1e9 / div
        assert r["peak_used"]["gflops"] == pytest.approx(paired)
        sc = r["contenders"]["seqcore"]["gflops"]
        assert r["frac_peak"]["seqcore"] == pytest.approx(sc / paired)
        assert r["frac_peak_of_max"]["seqcore"] == pytest.approx(sc / r["peak_used"]["gflops_max_of_run"])
    md = bench.run.last_markdown
    assert "interleaved with its samples" in md
    row = next(line for line in md.splitlines() if line.startswith("| sgemm"))
    assert row.rstrip(" |").endswith("%)"), row  # paired fraction, then the max-probe one


def test_bandwidth_cases_take_no_fma_probe_samples():
    recs = bench.run(suites="activations", threads=(1,), repeats=1, quick=True, verbose=False)
    assert recs and all("probe_samples" not in r and "frac_bw" in r for r in recs)
