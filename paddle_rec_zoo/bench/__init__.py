"""The benchmarks behind doc/benchmarks.md (`tools/benchmark.py`, `datasets/ali-ccp/bench_convert.py`)
and their baseline reader. Nothing else in the package imports them."""
