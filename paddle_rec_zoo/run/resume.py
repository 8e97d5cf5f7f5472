"""Where a training run starts: a fresh run folder, or (`runner.resume`) the newest complete
checkpoint of its own, an epoch's end or a position inside an epoch (`steps/<step>/`).

The data order needs no saved state: each epoch's permutation is seeded by (seed, epoch), so a
position is an epoch and a batch index.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.report.progress import log
from paddle_rec_zoo.run import checkpoint
from paddle_rec_zoo.run.distributed import World

# what a resumed run must share with the run it continues, besides all of hyper_parameters:
# the data order and the step count
_SAME_RUNNER_KEYS = ("seed", "shuffle", "train_batch_size", "train_data_dir")


@dataclass
class RunState:
    """The state of a training run that outlives an epoch (and is restored on resume)."""

    records: list = field(default_factory=list)  # training log lines, as in metrics.jsonl
    tests: list = field(default_factory=list)  # per-epoch test results
    best: dict | None = None  # runner.keep_best's best epoch so far
    step: int = 0
    start_epoch: int = 0
    start_batch: int = 0  # resumed inside `start_epoch`: batches already trained
    folder: str | None = None  # the checkpoint resumed from
    position: dict | None = None  # a mid-epoch checkpoint's metrics state and loss window
    epoch_samples: int = 0
    visual: object = None  # runner.use_visual's VisualLog (main rank), or None


def start_or_resume(config, engine, world: World, n_batches: int) -> RunState:
    """Prepare the run folder; with `runner.resume`, load its newest complete checkpoint into
    `engine` and return where the run goes on."""
    r = config.runner
    folder = checkpoint.latest(r.model_save_path) if r.resume else None
    if folder is None:
        if r.resume:
            log(f"runner.resume: no checkpoint in {r.model_save_path} yet; starting from epoch 0")
        if world.is_main:
            checkpoint.prepare_run_folder(r.model_save_path, r.overwrite or r.resume)
        return RunState()
    return _resume(config, engine, world, n_batches, folder)


def _resume(config, engine, world: World, n_batches: int, folder: str) -> RunState:
    root = config.runner.model_save_path
    meta = checkpoint.read_meta(folder)
    _check_resumable(config, engine, meta, folder, world, n_batches)
    engine.load_training_state(folder)
    checkpoint.restore_rng(folder, world.rank)
    run, where = _position(meta, folder, world.rank, n_batches)
    history = _history_until(checkpoint.read_records(root), run.start_epoch, run.start_batch)
    run.records = [h for h in history if h.get("split") != "test"]
    run.tests = [h for h in history if h.get("split") == "test"]
    if config.runner.keep_best:
        run.best = checkpoint.read_best(root)
    if world.is_main:
        checkpoint.remove_unfinished(
            root, keep_through=run.start_epoch - 1, keep_steps_through=meta["step"]
        )
        checkpoint.rewrite_records(root, history)
    log(f"resuming {where} (step {meta['step']}) from {folder}")
    return run


def _position(meta: dict, folder: str, rank: int, n_batches: int) -> tuple[RunState, str]:
    """The run state a checkpoint starts from, and where that is in words."""
    run = RunState(step=meta["step"], folder=folder)
    if "batch" in meta:  # inside an epoch
        run.start_epoch, run.start_batch = meta["epoch"], meta["batch"]
        run.position = checkpoint.load_position(folder, rank)
        run.epoch_samples = meta["epoch_samples"]
        return run, f"in epoch {meta['epoch']} after batch {meta['batch']}/{n_batches}"
    run.start_epoch = meta["epoch"] + 1
    return run, f"after epoch {meta['epoch']}"


def _history_until(history: list[dict], epoch: int, batch: int) -> list[dict]:
    """metrics.jsonl's lines up to the checkpoint (training lines of `epoch` through `batch`);
    those logged after it are trained again."""
    return [
        h
        for h in history
        if h["epoch"] < epoch or (h["epoch"] == epoch and "split" not in h and h["batch"] <= batch)
    ]


def _check_resumable(config, engine, meta: dict, folder: str, world: World, n_batches: int):
    """The network, data order and step count must be the run's own, or resuming is a lie."""
    saved, now = meta["config"], config.to_dict()
    keys = [("hyper_parameters", k) for k in now["hyper_parameters"]]
    keys += [("runner", k) for k in _SAME_RUNNER_KEYS]
    for section, key in keys:
        if saved[section].get(key) != now[section].get(key):
            raise UserError(
                f"runner.resume: {section}.{key} was {saved[section].get(key)!r} in the run in "
                f"{folder}, now {now[section].get(key)!r}; resume with the same config or start "
                "a new run"
            )
    if meta["engine"] != engine.name:
        raise UserError(
            f"runner.resume: {folder} was trained by the {meta['engine']} engine; resume it with "
            "the same tool"
        )
    if "batch" in meta and (meta["ranks"], meta["batches"]) != (world.size, n_batches):
        raise UserError(
            f"runner.resume: {folder} stopped inside an epoch of {meta['batches']} batches on "
            f"{meta['ranks']} rank(s); resume it on as many ranks (now {world.size}), or remove "
            f"{os.path.dirname(folder)} to resume from the last epoch's end"
        )
