"""When a training run stops for a signal: the step every rank agrees on, and what it says."""

from __future__ import annotations

import signal

import numpy as np

from paddle_rec_zoo.run import signals
from paddle_rec_zoo.run.distributed import World

# Fleet ranks agree on stopping every this many steps: a vote is an all-reduce, too dear for
# every step, and a stop waits at most this many steps for it
STOP_VOTE_STEPS = 10


def agreed_signal(world: World, step: int | None = None) -> int:
    """The signal that asked this job to stop (0 if none), agreed by all ranks: every rank
    must stop after the same step, whichever of them was signalled. Ranks vote (one small
    all-reduce) every STOP_VOTE_STEPS steps, and at every call without `step`."""
    got = signals.stop.signum
    if not world.active:
        return got or 0
    if step is not None and step % STOP_VOTE_STEPS:
        return 0
    votes = np.array([got == signal.SIGTERM, got == signal.SIGINT], dtype=np.float64)
    votes = world.all_reduce_sum(votes)
    return signal.SIGTERM if votes[0] else signal.SIGINT if votes[1] else 0


def stopped(signum: int, position: tuple, folder: str) -> signals.Interrupted:
    """The exception that ends the run; `position`: (epoch, batch, batches, step) saved in
    checkpoint `folder`."""
    epoch, batch, n_batches, step = position
    where = f"epoch {epoch} batch {batch}/{n_batches} (step {step})"
    return signals.Interrupted(
        signum,
        f"stopped by {signals.name(signum)} after {where}; saved {folder}; to continue, run "
        "the same command with -o runner.resume=True",
    )
