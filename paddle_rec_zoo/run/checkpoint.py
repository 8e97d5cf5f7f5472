"""The run folder `runner.model_save_path`: its layout, and its checkpoints written atomically.

Every name of the folder is here, and nowhere else:

- `<epoch>/`: the end of an epoch (what the infer tools evaluate);
- `steps/<step>/`: a position inside an epoch (`runner.save_steps`, or a stop by signal), for
  resuming only; removed once their epoch's checkpoint is complete;
- `best/` and `best.json`: a copy of the best epoch by `runner.keep_best`, and which it is;
- `metrics.jsonl` (one JSON line per log line and evaluation), `training_curves.png`.

A checkpoint holds the engine's weights (`rec.pdparams`) and optimizer state (`rec.pdopt`; the
static engine also exports its inference model, `inference.json`/`.pdiparams`), every rank's
random-generator state (`rng_state.pdstate`), inside an epoch every rank's training metrics so
far (`train_state.npz`), and `meta.json` (written last: the resolved config, epoch, step,
engine, seed and metrics; built by `describe`). It is built in a hidden temporary folder beside
its final place and renamed into place in one step, so a run killed at any moment leaves every
earlier checkpoint complete. The weight files are pickles (as all Paddle `.pdparams` are): load
checkpoints only from sources you trust.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import time
import zipfile

import numpy as np
import paddle

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.run import table_shards

META_FILE = "meta.json"
STEPS_DIR = "steps"
BEST_DIR = "best"
PARAMS_FILE = "rec.pdparams"
OPT_FILE = "rec.pdopt"
INFERENCE_PREFIX = "inference"  # the static engine's exported model: inference.json, .pdiparams
RNG_FILE = "rng_state.pdstate"  # every rank's random-generator state (dropout), a pickle
STATE_FILE = "train_state.npz"  # mid-epoch checkpoints: every rank's training metrics so far
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "training_curves.png"
BEST_FILE = "best.json"
VISUAL_DIR = "visualdl"  # runner.use_visual's VisualDL logs
# what a new run replaces (with runner.overwrite) besides the checkpoints
RUN_FILES = (METRICS_FILE, CURVES_FILE, BEST_FILE, BEST_DIR, STEPS_DIR, VISUAL_DIR)


def epoch_dir(root: str, epoch: int) -> str:
    return os.path.join(root, str(epoch))


def step_dir(root: str, step: int) -> str:
    return os.path.join(root, STEPS_DIR, str(step))


def best_dir(root: str) -> str:
    return os.path.join(root, BEST_DIR)


def metrics_path(root: str) -> str:
    return os.path.join(root, METRICS_FILE)


def curves_path(root: str) -> str:
    return os.path.join(root, CURVES_FILE)


def visual_dir(root: str) -> str:
    return os.path.join(root, VISUAL_DIR)


def saved_steps(root: str) -> list[int]:
    """Global steps with a complete mid-epoch checkpoint under `root/steps/`, ascending."""
    return _complete_numbered(os.path.join(root, STEPS_DIR))


def _complete_numbered(folder: str) -> list[int]:
    if not os.path.isdir(folder):
        return []
    return sorted(
        int(name)
        for name in os.listdir(folder)
        if name.isdigit() and os.path.exists(os.path.join(folder, name, META_FILE))
    )


def latest(root: str) -> str | None:
    """The newest complete checkpoint folder of either kind (by training step; at equal steps
    the epoch's, which also holds the epoch's evaluation), or None."""
    best = None
    epochs = saved_epochs(root)
    if epochs:
        folder = epoch_dir(root, epochs[-1])
        best = (read_meta(folder)["step"], 1, folder)
    steps = saved_steps(root)
    if steps and (best is None or (steps[-1], 0) > best[:2]):
        best = (steps[-1], 0, step_dir(root, steps[-1]))
    return best[2] if best else None


def saved_epochs(root: str) -> list[int]:
    """Epochs with a complete checkpoint under `root`, ascending."""
    return _complete_numbered(root)


def describe(config, engine_name: str, ranks: int, epoch: int, step: int, train, **more) -> dict:
    """A checkpoint's meta.json: where the run was (`epoch`, `step`, and inside an epoch `batch`,
    `batches` and `epoch_samples` in `more`), what trained it, its last training log line, and
    its resolved config (which `runner.resume` compares and warm starts read)."""
    return {
        "epoch": epoch,
        **more,
        "step": step,
        "engine": engine_name,
        "seed": config.runner.seed,
        "ranks": ranks,
        "train": train,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": config.to_dict(),
    }


def save(root: str, epoch: int, write_files, meta: dict) -> str:
    """Create `root/<epoch>/`: `write_files(tmp_folder)` writes the weights, then meta.json."""
    return _save(epoch_dir(root, epoch), write_files, meta)


def save_epoch(root: str, engine, rng_states: list, meta: dict, shards: str | None = None) -> str:
    """The end of epoch `meta["epoch"]`: the engine's files, every rank's random state, meta;
    `shards`: the staging folder of every rank's rows of row-sharded tables (`stage_shards`)."""
    return save(root, meta["epoch"], _training_files(engine, rng_states, shards), meta)


def save_position(
    root: str, engine, rank_states: list[dict], meta: dict, keep: int, shards: str | None = None
) -> str:
    """`root/steps/<step>/` of a position inside an epoch, then only the newest `keep` of them.
    `rank_states[rank]`: that rank's {"rng", "window", "metrics"} (its loss window and training
    metrics' histograms so far); `shards` as for `save_epoch`."""
    write_engine = _training_files(engine, [s["rng"] for s in rank_states], shards)

    def write(tmp: str):
        write_engine(tmp)
        arrays = {}
        for rank, s in enumerate(rank_states):
            arrays[f"{rank}.window"] = s["window"]
            arrays.update({f"{rank}.metrics.{k}": v for k, v in s["metrics"].items()})
        with open(os.path.join(tmp, STATE_FILE), "wb") as f:
            np.savez(f, **arrays)

    folder = _save(step_dir(root, meta["step"]), write, meta)
    for old in saved_steps(root)[:-keep]:
        remove(step_dir(root, old))
    return folder


def stage_shards(engine, world, root: str, name: str) -> str | None:
    """Every rank (all of them call this) writes its rows of row-sharded tables into a staging
    folder, returned once every rank's files are complete; rank 0 then moves them into the
    checkpoint it writes. None without sharded tables."""
    if not getattr(engine, "sharded", None):
        return None
    staging = table_shards.staging_dir(root, name)
    engine.write_shards(staging)
    world.all_reduce_sum(np.zeros(1))  # every rank's files are complete
    return staging


def _training_files(engine, rng_states: list, shards: str | None = None):
    """Writes the engine's files, every rank's random-generator state (dropout masks) and the
    staged rows of sharded tables."""

    def write(folder: str):
        if shards is not None:
            table_shards.move_into(shards, folder, engine.shard_shapes(), engine.world.size)
        engine.save(folder)
        paddle.save(rng_states, os.path.join(folder, RNG_FILE))

    return write


def restore_rng(folder: str, rank: int):
    """Continue every random draw (dropout) where the run that saved `folder` was."""
    path = os.path.join(folder, RNG_FILE)
    if not os.path.exists(path):  # written before this file existed: dropout differs, no more
        return
    try:
        states = paddle.load(path)
    except Exception as e:  # truncated or foreign file: say which, not a pickle traceback
        raise UserError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    if rank < len(states):  # an epoch's end resumed on more ranks: their draws are new anyway
        paddle.set_rng_state(states[rank])


def load_position(folder: str, rank: int) -> dict:
    """This rank's training metrics and loss window from a mid-epoch checkpoint."""
    path = os.path.join(folder, STATE_FILE)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    prefix = f"{rank}.metrics."
    if f"{rank}.window" not in arrays:
        raise UserError(f"{path}: holds no training state for rank {rank}")
    return {
        "window": arrays[f"{rank}.window"],
        "metrics": {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)},
    }


def remove_steps(root: str, through: int):
    """Drop mid-epoch checkpoints up to global step `through` (an epoch's checkpoint has them)."""
    for step in saved_steps(root):
        if step <= through:
            remove(step_dir(root, step))
    with contextlib.suppress(OSError):  # only when empty
        os.rmdir(os.path.join(root, STEPS_DIR))


def remove(folder: str):
    """Delete a checkpoint folder, meta.json first: killed half-way, it is no longer complete
    (rather than complete-looking with files missing)."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(folder, META_FILE))
    shutil.rmtree(folder, ignore_errors=True)


def _save(final: str, write_files, meta: dict) -> str:
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(final)}-", dir=parent)
    try:
        try:
            write_files(tmp)
            with open(os.path.join(tmp, META_FILE), "w") as f:
                json.dump(meta, f, indent=1, default=str)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            written = folder_bytes(tmp)
            shutil.rmtree(tmp, ignore_errors=True)  # before measuring what is free
            raise UserError(_disk_full(final, written, e)) from None
        _move_into_place(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def folder_bytes(folder: str) -> int:
    total = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):  # removed meanwhile
                total += os.path.getsize(os.path.join(dirpath, name))
    return total


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _disk_full(final: str, written: int, error: OSError) -> str:
    """Which checkpoint, where it stopped, how much it needs and how much there is."""
    root = os.path.dirname(final)
    if os.path.basename(root) == STEPS_DIR:
        root = os.path.dirname(root)
    previous = latest(root)
    if previous is not None and folder_bytes(previous) > written:
        need = f"about {_mb(folder_bytes(previous))} (the size of {previous})"
    else:
        need = f"more than the {_mb(written)} written"
    free = shutil.disk_usage(os.path.dirname(final)).free
    where = f" writing {error.filename}" if error.filename else ""
    kept = f"; the last complete checkpoint, {previous}, is kept" if previous else ""
    return (
        f"checkpoint {final}: {os.strerror(error.errno)}{where}; it needs {need}, "
        f"{_mb(free)} are free there; free some space or choose another "
        f"runner.model_save_path{kept}"
    )


def _move_into_place(tmp: str, final: str):
    """Rename the finished folder `tmp` to `final`; an existing `final` is replaced last."""
    if os.path.exists(final):
        old = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(final))
        os.rename(final, os.path.join(old, "ckpt"))
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


def is_checkpoint(folder: str) -> bool:
    return os.path.exists(os.path.join(folder, META_FILE))


def copy(src: str, dst: str):
    """Replace checkpoint folder `dst` by a copy of `src`, atomically."""
    parent = os.path.dirname(dst)
    tmp = tempfile.mkdtemp(prefix=".tmp-copy-", dir=parent)
    try:
        for name in os.listdir(src):
            path = os.path.join(src, name)
            if os.path.isdir(path):  # shards/: every rank's rows of sharded tables
                shutil.copytree(path, os.path.join(tmp, name))
            else:
                shutil.copy2(path, os.path.join(tmp, name))
        _move_into_place(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_meta(folder: str) -> dict:
    path = os.path.join(folder, META_FILE)
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:  # truncated, or not ours: say which file
        raise UserError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict) or "epoch" not in meta:
        raise UserError(f"{path}: not a checkpoint's meta.json (no epoch)")
    return meta


def prepare_run_folder(root: str, overwrite: bool):
    """Refuse to mix a new run into an earlier one, unless `runner.overwrite` says so."""
    epochs = saved_epochs(root)
    steps = saved_steps(root)
    if (epochs or steps) and not overwrite:
        what = f"epochs {epochs[0]}..{epochs[-1]}" if epochs else f"steps up to {steps[-1]}"
        raise UserError(
            f"runner.model_save_path {root} already holds checkpoints of {what} from an earlier "
            "run; choose another folder, pass -o runner.resume=True to continue it, or "
            "-o runner.overwrite=True to replace it"
        )
    if overwrite:
        for epoch in epochs:
            remove(epoch_dir(root, epoch))
        for step in steps:
            remove(step_dir(root, step))
        shutil.rmtree(os.path.join(root, STEPS_DIR), ignore_errors=True)
        for name in RUN_FILES:
            path = os.path.join(root, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    os.makedirs(root, exist_ok=True)
    remove_unfinished(root)


def remove_unfinished(root: str, keep_through: int | None = None, keep_steps_through=None):
    """Remove what a killed run left: hidden temporary folders, epochs after `keep_through` and
    mid-epoch checkpoints after step `keep_steps_through`."""
    for folder, last in ((root, keep_through), (os.path.join(root, STEPS_DIR), keep_steps_through)):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            leftover = name.startswith((".tmp-", ".old-"))
            later = last is not None and name.isdigit() and int(name) > last
            if leftover or later:
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def require_epoch(root: str, epoch: int) -> str:
    folder = epoch_dir(root, epoch)
    if not os.path.exists(os.path.join(folder, META_FILE)):
        have = saved_epochs(root)
        listing = f"epochs {have[0]}..{have[-1]}" if have else "no checkpoints"
        raise UserError(
            f"no checkpoint for epoch {epoch} in {root} (it has {listing}); "
            "check runner.infer_load_path, runner.infer_start_epoch and runner.infer_end_epoch"
        )
    return folder


# ---------------------------------------------------------------- the run's log and best epoch
def append_record(root: str, record: dict):
    """One line of metrics.jsonl (a training log line or an evaluation)."""
    path = metrics_path(root)
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:  # a full disk: say which file (the write's error does not)
        raise UserError(f"{path}: cannot be written ({e.strerror})") from None


def read_records(root: str) -> list[dict]:
    path = metrics_path(root)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def rewrite_records(root: str, records: list[dict]):
    """Replace metrics.jsonl by `records`, atomically."""
    path = metrics_path(root)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, path)


def read_best(root: str) -> dict | None:
    """best.json: {"metric", "epoch", "value"} of the best epoch so far, or None."""
    path = os.path.join(root, BEST_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def save_best(root: str, folder: str, best: dict):
    """Copy checkpoint `folder` to `root/best/` and record which it is in best.json."""
    copy(folder, best_dir(root))
    with open(os.path.join(root, BEST_FILE), "w") as f:
        json.dump(best, f)
