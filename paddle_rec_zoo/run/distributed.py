"""Data-parallel training on Paddle's collective engine (the `fleet` launcher), CPU or GPU.

    python -m paddle.distributed.launch --nproc_per_node 2 tools/trainer.py -m CONFIG \\
        -o runner.use_fleet=True

Each process (rank) reads a disjoint share of the rows, gradients are all-reduced every step
(gloo on the CPU, NCCL on GPUs), rank 0 alone writes checkpoints, curves and logs, and the metrics
it prints are global: their statistics are summed or gathered over all ranks first.

Why not `fleet.distributed_optimizer(...).minimize` for the static engine: under PIR (Paddle 3's
default static IR) it calls `Program.clone(for_test=...)`, which PIR programs do not accept. We
append the backward pass ourselves and insert one all-reduce per gradient instead; the same
collective communicator, set up by `init_parallel_env()`, serves both engines (engines.py).
Row-wise embedding tables (paddle_rec_zoo/sparse.py) look up the union of every rank's ids and average
their rows' gradients the same way.
"""

from __future__ import annotations

import contextlib
import copy
import os

import numpy as np
import paddle

from paddle_rec_zoo.errors import UserError


class World:
    """This process's place in the job: `rank` of `size`; a single process is rank 0 of 1."""

    def __init__(self, rank: int = 0, size: int = 1):
        self.rank = rank
        self.size = size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    # ---------------------------------------------------------------- collectives (numpy in/out)
    def all_reduce_sum(self, array: np.ndarray) -> np.ndarray:
        if not self.active:
            return array
        with _dygraph():
            t = paddle.to_tensor(np.ascontiguousarray(array))
            paddle.distributed.all_reduce(t)
            return t.numpy()

    def all_gather_object(self, obj) -> list:
        if not self.active:
            return [obj]
        with _dygraph():
            out: list = []
            paddle.distributed.all_gather_object(out, obj)
            return out

    def merged_metrics(self, metrics):
        """A copy of a training-metrics object whose `histograms()` hold every rank's counts."""
        if not self.active:
            return metrics
        merged = copy.deepcopy(metrics)
        for counts in merged.histograms().values():
            counts[...] = self.all_reduce_sum(counts)
        return merged

    def gather_arrays(self, arrays: dict) -> dict:
        """Concatenate every rank's arrays (same keys), in rank order."""
        if not self.active:
            return arrays
        parts = self.all_gather_object(arrays)
        return {k: np.concatenate([p[k] for p in parts]) for k in arrays}


@contextlib.contextmanager
def _dygraph():
    """Collectives below run eagerly, also while the static engine holds Paddle in static mode."""
    static = not paddle.in_dynamic_mode()
    if static:
        paddle.disable_static()
    try:
        yield
    finally:
        if static:
            paddle.enable_static()


def launched_size() -> int:
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


PS_UNSUPPORTED = (
    "parameter-server training (launch --server_num/--trainer_num, fleetrun --server_num) is not "
    "supported: the paddlepaddle {version} wheel has no parameter-server runtime "
    "(paddle.base.core.CommContext is missing) and paddle.static.nn.sparse_embedding fails under "
    "PIR; use collective data parallelism (--nproc_per_node N); see doc/distributed.md"
)


def init(use_fleet: bool) -> World:
    """Join the job started by `paddle.distributed.launch` (before Paddle enters static mode)."""
    if os.environ.get("PADDLE_PSERVERS_IP_PORT_LIST"):
        raise UserError(PS_UNSUPPORTED.format(version=paddle.__version__))
    if not use_fleet:
        if launched_size() > 1:
            raise UserError(
                "started by paddle.distributed.launch with several processes, but "
                "runner.use_fleet is False: pass -o runner.use_fleet=True"
            )
        return World()
    if "PADDLE_TRAINER_ID" not in os.environ:
        raise UserError(
            "runner.use_fleet=True needs the launcher: python -m paddle.distributed.launch "
            "--nproc_per_node N tools/trainer.py -m CONFIG -o runner.use_fleet=True"
        )
    paddle.distributed.init_parallel_env()
    return World(paddle.distributed.get_rank(), paddle.distributed.get_world_size())
