#!/usr/bin/env python3
"""Benchmark the raw Ali-CCP converter and project it to the full data set.

    python datasets/ali-ccp/bench_convert.py [--users 2000] [--scales 1,2,4] [--runs 3] [...]

The benchmark is `paddle_rec_zoo.bench.convert` (its docstring and `--help` say more).
"""

import sys

from paddle_rec_zoo.bench.convert import main

if __name__ == "__main__":
    sys.exit(main())
