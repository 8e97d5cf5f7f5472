"""Checkpoint folders `<model_save_path>/<epoch>/`, written atomically, describing themselves.

A checkpoint is built in a hidden temporary folder beside its final place and renamed into place
in one step, so a run killed at any moment leaves every earlier checkpoint complete. `meta.json`
holds the resolved config, epoch, engine, seed and metrics. The weight files are pickles (as all
Paddle `.pdparams` are): load checkpoints only from sources you trust.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from utils.errors import UserError

META_FILE = "meta.json"


def epoch_dir(root: str, epoch: int) -> str:
    return os.path.join(root, str(epoch))


def saved_epochs(root: str) -> list[int]:
    """Epochs with a complete checkpoint under `root`, ascending."""
    if not os.path.isdir(root):
        return []
    return sorted(
        int(name)
        for name in os.listdir(root)
        if name.isdigit() and os.path.exists(os.path.join(root, name, META_FILE))
    )


def save(root: str, epoch: int, write_files, meta: dict) -> str:
    """Create `root/<epoch>/`: `write_files(tmp_folder)` writes the weights, then meta.json."""
    os.makedirs(root, exist_ok=True)
    final = epoch_dir(root, epoch)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{epoch}-", dir=root)
    try:
        write_files(tmp)
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=1, default=str)
        _move_into_place(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


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
            shutil.copy2(os.path.join(src, name), os.path.join(tmp, name))
        _move_into_place(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_meta(folder: str) -> dict:
    with open(os.path.join(folder, META_FILE)) as f:
        return json.load(f)


def prepare_run_folder(root: str, overwrite: bool, run_files: tuple[str, ...]):
    """Refuse to mix a new run into an earlier one, unless `runner.overwrite` says so."""
    epochs = saved_epochs(root)
    if epochs and not overwrite:
        raise UserError(
            f"runner.model_save_path {root} already holds checkpoints of epochs "
            f"{epochs[0]}..{epochs[-1]} from an earlier run; choose another folder or pass "
            "-o runner.overwrite=True to replace them"
        )
    if overwrite:
        for epoch in epochs:
            shutil.rmtree(epoch_dir(root, epoch))
        for name in run_files:
            path = os.path.join(root, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    os.makedirs(root, exist_ok=True)
    remove_unfinished(root)


def remove_unfinished(root: str, keep_through: int | None = None):
    """Remove what a killed run left: hidden temporary folders and epochs after `keep_through`."""
    if not os.path.isdir(root):
        return
    for name in os.listdir(root):
        leftover = name.startswith((".tmp-", ".old-"))
        later = keep_through is not None and name.isdigit() and int(name) > keep_through
        if leftover or later:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


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
