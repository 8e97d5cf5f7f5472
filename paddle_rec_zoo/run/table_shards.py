"""Checkpoint files of row-sharded embedding tables (`hyper_parameters.table_sharding: row`).

Each rank writes the rows it holds, and their row-wise optimizer slots, as `.npy` files:

    <checkpoint>/shards.json                          {"ranks": N, "arrays": {key: shape}}
    <checkpoint>/shards/<key>.<rank>-of-<N>.npy       rows i with i % N == rank, in order of i

where `key` is a table's `state_dict` name (`input.embedding.weight`) or a slot's optimizer-state
key (`input.embedding.weight:moment1`). `rec.pdparams`/`rec.pdopt` hold everything else. A
checkpoint written by N ranks loads on M ranks (each reads its rows out of the N files, memory-
mapped: no other rank's shard is held in memory), and merged into whole tables in one process
(the infer tools, an exported model, a warm start of an unsharded run).

The ranks write their files into one staging folder beside the checkpoints before rank 0 builds
the checkpoint folder and moves it in, so a checkpoint is still complete or absent
(checkpoint.py); the folder must be on a file system every rank writes (a shared one across
machines, as the data already is).
"""

from __future__ import annotations

import json
import os

import numpy as np
import paddle

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.nn.sparse import RowShards

SHARDS_DIR = "shards"
LAYOUT_FILE = "shards.json"
CHUNK_ROWS = 1 << 20  # rows copied at a time: bounded memory however large a shard


def shard_path(folder: str, key: str, rank: int, size: int) -> str:
    return os.path.join(folder, SHARDS_DIR, f"{key}.{rank}-of-{size}.npy")


def staging_dir(root: str, name: str) -> str:
    """Where every rank writes its shard files of checkpoint `name` (a `.tmp-` folder: what a
    killed run leaves is removed with the other unfinished folders)."""
    return os.path.join(root, f".tmp-shards-{name}")


def write_array(path: str, tensor, chunk: int = CHUNK_ROWS):
    """Write a [rows, ...] float32 Paddle tensor (read in place, no copy) or array as a `.npy`
    file, `chunk` rows at a time."""
    array = tensor
    if not isinstance(tensor, paddle.Tensor):
        array = np.asarray(tensor)
    elif tensor.place.is_cpu_place():
        array = np.from_dlpack(tensor)  # (a GPU tensor is copied chunk by chunk below)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".part", "wb") as f:
        shape = tuple(array.shape)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("float32")), "shape": shape}
        np.lib.format.write_array_header_1_0(f, {**header, "fortran_order": False})
        for start in range(0, shape[0], chunk):
            part = array[start : start + chunk]
            part = part.numpy() if isinstance(part, paddle.Tensor) else part
            f.write(np.ascontiguousarray(part, "float32").data)
    os.replace(path + ".part", path)


def write_layout(folder: str, size: int, shapes: dict):
    """`shards.json`: how many ranks wrote the shards, and every sharded array's whole shape."""
    with open(os.path.join(folder, LAYOUT_FILE), "w") as f:
        json.dump({"ranks": size, "arrays": {k: list(v) for k, v in shapes.items()}}, f, indent=1)


def read_layout(folder: str) -> dict | None:
    """{"ranks": N, "arrays": {key: whole shape}} of a sharded checkpoint, or None."""
    path = os.path.join(folder, LAYOUT_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            layout = json.load(f)
        return {"ranks": int(layout["ranks"]), "arrays": dict(layout["arrays"])}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None


def check_complete(staging: str, keys, size: int):
    """Every rank's file of every key is in `staging` (ranks on machines that do not share the
    checkpoint folder write theirs elsewhere: say so rather than save half a table)."""
    missing = [
        shard_path(staging, key, rank, size)
        for key in keys
        for rank in range(size)
        if not os.path.exists(shard_path(staging, key, rank, size))
    ]
    if missing:
        raise UserError(
            f"sharded tables: {missing[0]} (and {len(missing) - 1} more) not found; every rank "
            "writes its rows into runner.model_save_path, which must be one folder that all "
            "ranks share (a shared file system across machines)"
        )


def move_into(staging: str, folder: str, keys, size: int):
    """Move every rank's files from `staging` into the checkpoint being written in `folder`."""
    check_complete(staging, keys, size)
    os.rename(os.path.join(staging, SHARDS_DIR), os.path.join(folder, SHARDS_DIR))
    os.rmdir(staging)


def _open(folder: str, key: str, rank: int, size: int) -> np.ndarray:
    path = shard_path(folder, key, rank, size)
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None


def read_rows(folder: str, key: str, layout: dict, shards: RowShards, limit=None) -> np.ndarray:
    """Rank `shards.rank` of `shards.size`'s rows of the sharded array `key` (its first `limit`
    rows only: a table that grew since), whatever number of ranks wrote them."""
    whole = layout["arrays"][key]
    rows = whole[0] if limit is None else min(limit, whole[0])
    out = np.empty((shards.rows(rows), *whole[1:]), np.float32)
    size = layout["ranks"]
    for source in range(size):
        if size == shards.size and source != shards.rank:
            continue  # the same ranks: all of this rank's rows are in its own file
        part = _open(folder, key, source, size)
        for start in range(0, part.shape[0], CHUNK_ROWS):
            ids = source + size * np.arange(start, min(start + CHUNK_ROWS, part.shape[0]))
            keep = (ids % shards.size == shards.rank) & (ids < rows)
            out[ids[keep] // shards.size] = part[start : start + len(ids)][keep]
    return out


def merge(folder: str, key: str, layout: dict) -> np.ndarray:
    """The whole array `key` [rows, ...] from every rank's file."""
    whole = layout["arrays"][key]
    out = np.empty(whole, np.float32)
    size = layout["ranks"]
    for source in range(size):
        out[source::size] = _open(folder, key, source, size)
    return out


def merged(folder: str, values: dict, which) -> dict:
    """`values` (a `rec.pdparams` or `rec.pdopt` dict) with the sharded arrays it lacks merged in
    (`which(key)`: whether a sharded key belongs in it)."""
    layout = read_layout(folder)
    if layout is None:
        return values
    out = dict(values)
    for key in layout["arrays"]:
        if which(key):
            out[key] = merge(folder, key, layout)
    return out
