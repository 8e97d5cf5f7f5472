"""Device, threads and seeds, set once per process from `runner:`."""

from __future__ import annotations

import contextlib
import functools
import os
import random

import numpy as np
import paddle

from paddle_rec_zoo.data.parallel_parse import usable_cores
from paddle_rec_zoo.report.progress import log
from paddle_rec_zoo.run import cpu_math


def math_threads(requested: int) -> int:
    """Math-library threads for `runner.cpu_threads` (or `inference_cpu_threads`): N as asked;
    0 = this process's share of the usable cores (all of them, divided among the ranks that
    `paddle.distributed.launch` started on this machine)."""
    if requested:
        return requested
    return max(1, usable_cores() // max(_local_ranks(), 1))


def _local_ranks() -> int:
    """The ranks `paddle.distributed.launch` started on this machine (1 outside a launch)."""
    return int(os.environ.get("PADDLE_LOCAL_SIZE") or 1)


SERIAL_FLAG = "FLAGS_new_executor_serial_run"


def serial_executor(threads: int) -> bool:
    """Whether the static executor runs every kernel on the calling thread.

    On its own worker threads the kernels ignore the math-thread setting (with 2 threads:
    31k -> 41k samples/s compute-only when run serially; doc/benchmarks.md), so several
    threads, or several ranks sharing this machine's cores, run serially. With one thread
    and one process the executor's own scheduling is faster here (static_trainer.py, 400k
    rows, medians of 3 and 4 runs: 80k vs 58k and 51k vs 46k samples/s on a 2-core AMD EPYC):
    it runs independent ops, such as the two towers, on the otherwise idle core. Setting
    FLAGS_new_executor_serial_run=1 in the environment keeps every kernel on the calling thread."""
    return threads > 1 or _local_ranks() > 1


@contextlib.contextmanager
def static_mode():
    """Paddle's static mode inside the block, the mode the process was in after it. A static
    engine builds and runs its programs in it, so constructing one does not switch the rest of
    the process (a dygraph engine, a test) to static mode; the static tools run in one such
    block throughout (run/cli.py), so a step pays nothing here."""
    if not paddle.in_dynamic_mode():
        yield
        return
    paddle.enable_static()
    try:
        yield
    finally:
        paddle.disable_static()


def in_static_mode(method):
    """`method` runs under `static_mode()`."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with static_mode():
            return method(*args, **kwargs)

    return wrapper


def selected_gpu() -> int:
    """The GPU this process uses: the first of FLAGS_selected_gpus, which Paddle's launcher sets
    per rank (0 without it)."""
    return int(os.environ.get("FLAGS_selected_gpus", "0").split(",")[0])


def setup(config, static: bool = False):
    """Select the device, the math library's kernels and threads (`static`: the executor's
    scheduling too), seed every generator; returns the Place for static executors. Static mode
    itself is the static engine's (`static_mode`)."""
    r = config.runner
    # before the first matrix product: MKL reads its kernel choice once, when it first runs
    log(cpu_math.select(r.cpu_math))
    use_gpu = r.use_gpu
    if use_gpu and not paddle.is_compiled_with_cuda():
        log("runner.use_gpu is set but this Paddle build has no CUDA; running on the CPU")
        use_gpu = False
    if use_gpu:
        device_id = selected_gpu()
        paddle.set_device(f"gpu:{device_id}")
        place = paddle.CUDAPlace(device_id)
    else:
        paddle.set_device("cpu")
        place = paddle.CPUPlace()
        threads = math_threads(r.cpu_threads)
        paddle.base.core.set_num_threads(threads)
        if static and SERIAL_FLAG not in os.environ:  # a user's own setting wins
            paddle.set_flags({SERIAL_FLAG: serial_executor(threads)})
    random.seed(r.seed)
    np.random.seed(r.seed)
    paddle.seed(r.seed)
    return place
