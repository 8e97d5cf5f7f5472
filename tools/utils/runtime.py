"""Device, threads and seeds, set once per process from `runner:`."""

from __future__ import annotations

import os
import random

import numpy as np
import paddle

from utils.progress import log


def setup(config, static: bool = False):
    """Select the device, seed every generator; returns the Place for static executors."""
    r = config.runner
    use_gpu = r.use_gpu
    if use_gpu and not paddle.is_compiled_with_cuda():
        log("runner.use_gpu is set but this Paddle build has no CUDA; running on the CPU")
        use_gpu = False
    if use_gpu:
        device_id = int(os.environ.get("FLAGS_selected_gpus", "0").split(",")[0])
        paddle.set_device(f"gpu:{device_id}")
        place = paddle.CUDAPlace(device_id)
    else:
        paddle.set_device("cpu")
        place = paddle.CPUPlace()
        threads = r.cpu_threads or os.cpu_count() or 1
        paddle.base.core.set_num_threads(threads)
    random.seed(r.seed)
    np.random.seed(r.seed)
    paddle.seed(r.seed)
    if static:
        paddle.enable_static()
    return place
