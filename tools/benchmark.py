"""Throughput benchmarks of the zoo (doc/benchmarks.md).

    python tools/benchmark.py                       # 400k train rows, 3 runs each (~15 min)
    python tools/benchmark.py --rows 20000 --runs 1 # a quick look
    python tools/benchmark.py --help                # every mode (--scale, --profile, --zoo, ...)

The benchmark is `paddle_rec_zoo.bench.benchmark` (its docstring says what each figure means).
"""

import sys

from paddle_rec_zoo.bench.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
