"""Parsed `Columns` as flat binary files (`sample_id.bin`, `labels.bin`, `ids.bin` in a folder):
appending chunks to them, mapping them back, and reading rows of a large mapped `ids` file."""

from __future__ import annotations

import contextlib
import os

import numpy as np

from paddle_rec_zoo.data.read_stats import ReadStats
from paddle_rec_zoo.schema import Columns

COLUMNS = ("sample_id", "labels", "ids")  # the files of a folder, in the order they are joined
PREAD_BYTES = 1 << 30  # memory-mapped columns at least this large are gathered with pread


def write_columns(chunks, folder: str, ids_dtype) -> tuple[int, dict]:
    """Append the `(Columns, info)` chunks to `folder/<column>.bin`; returns (rows, last info)."""
    n, info = 0, ReadStats().info()
    with contextlib.ExitStack() as stack:
        files = {
            k: stack.enter_context(open(os.path.join(folder, f"{k}.bin"), "ab")) for k in COLUMNS
        }
        for chunk, chunk_info in chunks:
            files["sample_id"].write(chunk.sample_id.astype(np.int64).tobytes())
            files["labels"].write(chunk.labels.astype(np.int8).tobytes())
            files["ids"].write(chunk.ids.astype(ids_dtype).tobytes())
            n += len(chunk)
            info = chunk_info
    return n, info


def column_types(n: int, n_labels: int, width: int, ids_dtype) -> dict:
    """name -> [dtype, shape] of the files `write_columns` wrote for `n` rows."""
    return {
        "sample_id": ["int64", [n]],
        "labels": ["int8", [n, n_labels]],
        "ids": [np.dtype(ids_dtype).name, [n, width]],
    }


def map_columns(folder: str, types: dict) -> Columns:
    """The column files of `folder` (their `column_types`), memory-mapped."""
    cols = {}
    for name, (dtype, shape) in types.items():
        if shape[0] == 0:
            cols[name] = np.zeros(shape, dtype)
        else:
            file = os.path.join(folder, f"{name}.bin")
            cols[name] = np.memmap(file, dtype=dtype, mode="r", shape=tuple(shape))
    return Columns(cols["ids"], cols["labels"], cols["sample_id"])


def take_ids(column: np.ndarray, index) -> np.ndarray:
    """`column[index]` of an `ids` column: [rows, width], in memory or a whole column file mapped
    by `map_columns`. The rows of a large mapped column are read with `pread` instead: the
    kernel maps whole page-cache folios (up to megabytes) around every row a shuffled batch
    touches, so over an epoch the mapped pages, which count as the process's resident memory,
    would grow to the size of the cache file; reading leaves them in the page cache only."""
    if not (isinstance(column, np.memmap) and column.nbytes >= PREAD_BYTES):
        return column[index]
    row = column.strides[0]
    fd = os.open(column.filename, os.O_RDONLY)
    try:
        data = b"".join([os.pread(fd, row, column.offset + i * row) for i in index.tolist()])
    finally:
        os.close(fd)
    return np.frombuffer(data, column.dtype).reshape(len(index), *column.shape[1:])
