"""The parsed-data cache: a text file parsed once into column files (`column_files`), memory-mapped
by later runs, so memory stays flat whatever the data size and start-up is instant.

The cache entry of a file is keyed by its path, size and modification time and by the reader's
settings (fields, max_len, id limit, ...): change any of them and it is rebuilt. An entry is
written into a temporary folder and renamed into place, so two processes building it at once, or
a run killed half-way, never leave a broken entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import numpy as np

from paddle_rec_zoo.data.column_files import column_types, map_columns, write_columns
from paddle_rec_zoo.data.parallel_parse import parse_cuts, write_columns_parallel
from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.schema import Columns

CACHE_VERSION = 1


def default_cache_dir() -> str:
    """`$XDG_CACHE_HOME/paddle-rec-zoo` (usually ~/.cache/paddle-rec-zoo): never the data folder,
    which may be read-only or shared, and whose files the trainer reads one and all."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "paddle-rec-zoo")


def read_cached(path: str, reader, cache_dir: str, workers=None) -> tuple[Columns, dict]:
    """The rows of text file `path` as `reader` parses them, from its cache entry (built first
    if missing, by `workers` processes; None: the usable cores)."""
    entry = os.path.join(cache_dir, _cache_key(path, reader))
    meta_path = os.path.join(entry, "meta.json")
    if not os.path.exists(meta_path):
        _build_entry(path, reader, entry, workers)
    with open(meta_path) as f:
        meta = json.load(f)
    return map_columns(entry, meta["columns"]), meta["info"]


def _cache_key(path: str, reader) -> str:
    st = os.stat(path)
    key = {
        "version": CACHE_VERSION,
        "path": os.path.abspath(path),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "reader": reader.cache_key(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return f"{os.path.basename(path)}-{digest}"


def _make_building_folder(parent: str) -> str:
    try:
        os.makedirs(parent, exist_ok=True)
        return tempfile.mkdtemp(prefix=".building-", dir=parent)
    except OSError as e:
        raise UserError(
            f"cannot write the data cache in {parent} ({e.strerror}); set runner.cache_dir "
            "to a writable folder or runner.use_cache=False"
        ) from None


def _parse_into(path: str, reader, folder: str, workers) -> dict:
    """Parse `path` into the column files of `folder`; returns the entry's meta."""
    ids_dtype = np.int32 if reader.max_id() < 2**31 else np.int64
    cuts = parse_cuts(path, reader, workers)
    if len(cuts) > 2:
        n, info = write_columns_parallel(path, reader, folder, ids_dtype, cuts)
    else:
        n, info = write_columns(reader.read_file(path), folder, ids_dtype)
    width = reader.layout.width
    return {
        "source": os.path.abspath(path),
        "columns": column_types(n, len(reader.label_names), width, ids_dtype),
        "info": info,
    }


def _build_entry(path: str, reader, entry: str, workers: int | None = None):
    tmp = _make_building_folder(os.path.dirname(entry))
    try:
        meta = _parse_into(path, reader, tmp, workers)
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f)
        try:
            os.rename(tmp, entry)
        except OSError:  # another process finished the same entry first: keep theirs
            if not os.path.exists(os.path.join(entry, "meta.json")):
                raise
        _remove_stale_entries(entry, meta["source"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_entries(entry: str, source: str):
    """Drop older entries of the same source file (it changed, or the reader settings did)."""
    parent, name = os.path.split(entry)
    prefix = os.path.basename(source) + "-"
    for other in os.listdir(parent):
        if other == name or not other.startswith(prefix) or len(other) != len(name):
            continue
        try:
            with open(os.path.join(parent, other, "meta.json")) as f:
                if json.load(f).get("source") != source:
                    continue
        except (OSError, ValueError):
            continue
        shutil.rmtree(os.path.join(parent, other), ignore_errors=True)
