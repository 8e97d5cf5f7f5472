"""`runner.model_init_path`: start a new training run from an earlier run's weights.

Recommendation models are retrained every day on the newest data, starting from yesterday's
model. The checkpoint's weights are loaded through the engines' public `get_params`/`set_params`
(so either engine can start from either engine's checkpoint), and its optimizer state only with
`runner.model_init_optimizer` (through `load_training_state`, same engine only).

When the vocabulary grew since the checkpoint (a larger `hyper_parameters.sparse_feature_number`,
see `run.sh --raw ... --vocab`), each embedding table keeps the checkpoint's rows, which mean the
same feasigns as before, and its new rows keep the fresh initialisation this run drew for them,
as a table built from scratch would have; the new rows' optimizer moments (if carried) start at
zero, as a fresh optimizer's do. Any other difference in shape stops with the engines' usual
one-line error.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import paddle

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.report.progress import log
from paddle_rec_zoo.run import checkpoint
from paddle_rec_zoo.run.checkpoint import OPT_FILE, PARAMS_FILE
from paddle_rec_zoo.run.engines import ROW_LR_STATE, load_optimizer_file, load_params_file

KEY = "runner.model_init_path"


def resolve(path: str) -> str:
    """A checkpoint folder as given, or a run folder's last complete epoch."""
    if checkpoint.is_checkpoint(path):
        return path
    epochs = checkpoint.saved_epochs(path)
    if epochs:
        return checkpoint.epoch_dir(path, epochs[-1])
    what = "does not exist" if not os.path.exists(path) else "holds no checkpoint (no meta.json)"
    raise UserError(
        f"{KEY}: {path} {what}; give a checkpoint folder (model_save_path/<epoch>) or a run folder"
    )


def _rows(meta: dict) -> int | None:
    hp = meta.get("config", {}).get("hyper_parameters", {})
    return hp.get("sparse_feature_number")


def grow_tables(current: dict, saved: dict, old_rows: int, new_rows: int, source: str) -> dict:
    """`saved` with every embedding table of `old_rows` rows extended to `new_rows`, the extra
    rows taken from `current` (this run's fresh initialisation)."""
    if new_rows < old_rows:
        raise UserError(
            f"{source}: the checkpoint's embedding tables have {old_rows} rows but "
            f"hyper_parameters.sparse_feature_number is {new_rows}; it may grow (a vocabulary "
            "extended since), never shrink"
        )
    out = dict(saved)
    if new_rows == old_rows:
        return out
    for name, value in saved.items():
        fresh = current.get(name)
        if fresh is None or value.ndim < 1 or value.shape[0] != old_rows:
            continue
        if fresh.shape[0] != new_rows or fresh.shape[1:] != value.shape[1:]:
            continue  # not a table: the shape check of set_params reports it
        grown = np.array(fresh, copy=True)
        grown[:old_rows] = value
        out[name] = grown
    return out


def _grow_optimizer(state: dict, old_rows: int, new_rows: int, tables: dict) -> dict:
    """Optimizer arrays shaped like an old embedding table, padded with zero rows: moments
    `[rows, dim]`, and row-wise accumulators `[rows, 1]`."""
    shapes = {v.shape[1:] for v in tables.values()} | {(1,)}
    out = {}
    for key, value in state.items():
        arr = None if isinstance(value, dict) else np.asarray(value)
        if (
            arr is not None
            and arr.ndim >= 1
            and arr.shape[0] == old_rows
            and arr.shape[1:] in shapes
        ):
            pad = np.zeros((new_rows - old_rows, *arr.shape[1:]), arr.dtype)
            value = np.concatenate([arr, pad])
        out[key] = value
    return out


def _check_compatible(config, engine, meta: dict, folder: str):
    saved = meta.get("config", {}).get("hyper_parameters", {})
    now = config.to_dict()["hyper_parameters"]
    for key in ("variant", "fields"):
        if key in saved and key in now and saved[key] != now[key]:
            raise UserError(
                f"{KEY}: hyper_parameters.{key} was {saved[key]!r} in {folder}, now {now[key]!r}; "
                "a warm start needs the same network layout"
            )
    if not config.runner.model_init_optimizer:
        return
    if meta.get("engine") != engine.name:
        raise UserError(
            f"runner.model_init_optimizer: {folder} was trained by the {meta.get('engine')} "
            f"engine; its optimizer state loads only into the same engine (the weights alone "
            "load into either: drop model_init_optimizer)"
        )
    for section in ("optimizer", "embedding_optimizer"):
        old_opt = (saved.get(section) or {}).get("class_", "")
        new_opt = (now.get(section) or {}).get("class_", "")
        if old_opt.lower() != new_opt.lower():
            raise UserError(
                f"runner.model_init_optimizer: {folder} was trained with {old_opt}, this run "
                f"uses {new_opt} (hyper_parameters.{section}.class); its optimizer state does "
                "not carry over (drop model_init_optimizer)"
            )


def load(config, engine):
    """Load `runner.model_init_path` into a freshly built training engine."""
    folder = resolve(config.runner.model_init_path)
    meta = checkpoint.read_meta(folder)
    _check_compatible(config, engine, meta, folder)
    source = f"{KEY} {folder}"
    current = engine.get_params()
    # an engine with row-sharded tables holds, and is given, its own rows of them (row i on
    # rank i % ranks at i // ranks): the rows of a grown table keep their rank, and the first
    # rows of each rank's shard are the old table's
    own = getattr(engine, "checkpoint_params", None)
    saved = engine.upgrade_state(own(folder) if own is not None else load_params_file(folder))
    old_rows = _rows(meta)
    new_rows = getattr(config.hyper_parameters, "sparse_feature_number", None)
    grown = old_rows is not None and new_rows is not None and new_rows != old_rows
    if grown and new_rows < old_rows:
        grow_tables(current, saved, old_rows, new_rows, source)  # says why not
    shards = getattr(engine, "shards", None)
    old_n, new_n = (
        (shards.rows(old_rows), shards.rows(new_rows)) if shards and grown else (old_rows, new_rows)
    )
    params = grow_tables(current, saved, old_n, new_n, source) if grown else saved
    engine.set_params(params, source)
    what = "weights"
    if config.runner.model_init_optimizer:
        scratch = config.runner.model_save_path
        _load_optimizer(engine, folder, params, saved, old_n, new_n, grown, scratch)
        what = "weights and optimizer state"
    extra = f"; embedding rows {old_rows} -> {new_rows}, new rows fresh" if grown else ""
    log(f"{KEY}: starting from the {what} of {folder} (epoch {meta.get('epoch')}){extra}")


def _load_optimizer(engine, folder, params, saved, old_rows, new_rows, grown, scratch):
    """Through the engine's `load_training_state`, from a folder whose files fit this run: the
    tables and their moments grown, and this run's own learning-rate schedule (the warm run
    is a new run; it does not continue the old schedule's decay)."""
    path = os.path.join(folder, OPT_FILE)
    if not os.path.exists(path):
        raise UserError(f"runner.model_init_optimizer: {folder} has no {OPT_FILE}")
    own = getattr(engine, "checkpoint_optimizer_state", None)
    state = engine.upgrade_state(own(folder) if own is not None else load_optimizer_file(folder))
    if grown:
        tables = {k: v for k, v in saved.items() if params[k].shape != v.shape}
        state = _grow_optimizer(state, old_rows, new_rows, tables)
    fresh = engine.optimizer_state()
    schedules = ("LR_Scheduler", ROW_LR_STATE)
    for key in (*schedules, *(k for k in fresh if k.startswith("learning_rate_"))):
        if key in fresh:
            state[key] = fresh[key]
    if getattr(engine, "sharded", None):
        # this rank's rows, given directly: a file of them would read as a whole table
        try:
            engine.set_optimizer_state(state, folder)
        except UserError as e:
            raise _not_fitting(folder, e) from None
        return
    # beside the run's checkpoints (the files are as large as one), not in a small /tmp; a
    # killed run's leftover is removed with the other `.tmp-` folders on the next start
    os.makedirs(scratch, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-model-init-", dir=scratch)
    try:
        paddle.save(params, os.path.join(tmp, PARAMS_FILE))
        paddle.save(state, os.path.join(tmp, OPT_FILE))
        try:
            engine.load_training_state(tmp)
        except UserError as e:
            raise _not_fitting(folder, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _not_fitting(folder: str, e: UserError) -> UserError:
    return UserError(
        f"runner.model_init_optimizer: the optimizer state of {folder} does not fit this "
        f"run ({str(e).split('; ')[0].split(': ', 1)[-1]}); drop model_init_optimizer "
        "to start from the weights alone"
    )
