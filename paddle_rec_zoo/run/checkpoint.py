"""Checkpoint folders, written atomically, describing themselves.

- `<model_save_path>/<epoch>/`: the end of an epoch (what the infer tools evaluate);
- `<model_save_path>/steps/<step>/`: a position inside an epoch (`runner.save_steps`, or a stop
  by signal), for resuming only; removed once their epoch's checkpoint is complete.

A checkpoint is built in a hidden temporary folder beside its final place and renamed into place
in one step, so a run killed at any moment leaves every earlier checkpoint complete. `meta.json`
(written last) holds the resolved config, epoch, step, engine, seed and metrics. The weight files
are pickles (as all Paddle `.pdparams` are): load checkpoints only from sources you trust.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile

from paddle_rec_zoo.errors import UserError

META_FILE = "meta.json"
STEPS_DIR = "steps"


def epoch_dir(root: str, epoch: int) -> str:
    return os.path.join(root, str(epoch))


def step_dir(root: str, step: int) -> str:
    return os.path.join(root, STEPS_DIR, str(step))


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


def save(root: str, epoch: int, write_files, meta: dict) -> str:
    """Create `root/<epoch>/`: `write_files(tmp_folder)` writes the weights, then meta.json."""
    return _save(epoch_dir(root, epoch), write_files, meta)


def save_step(root: str, step: int, write_files, meta: dict, keep: int) -> str:
    """Create `root/steps/<step>/` like `save`, then keep only the newest `keep` of them."""
    folder = _save(step_dir(root, step), write_files, meta)
    for old in saved_steps(root)[:-keep]:
        remove(step_dir(root, old))
    return folder


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


def prepare_run_folder(root: str, overwrite: bool, run_files: tuple[str, ...]):
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
        for name in run_files:
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
