#!/usr/bin/env python3
"""Run the seqcore benchmarks: a thin wrapper around ``seqcore.bench.main``.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 benchmarks/run.py \
        --suite gemm,activations,overhead --threads 1,2 \
        --json benchmarks/results/latest.json --md benchmarks/results/latest.md

See benchmarks/README.md and ``python3 benchmarks/run.py --help``.
"""
import sys

from seqcore.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
