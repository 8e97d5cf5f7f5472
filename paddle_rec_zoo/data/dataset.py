"""From data folders to batches: file listing, loading each file's rows (a binary data set as
it is; text parsed into memory or through the parsed-data cache, `paddle_rec_zoo.data.cache`),
shuffled batches gathered in a background thread (`paddle_rec_zoo.data.prefetch`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from paddle_rec_zoo.data import binary_data
from paddle_rec_zoo.data.cache import read_cached
from paddle_rec_zoo.data.column_files import take_ids
from paddle_rec_zoo.data.prefetch import prefetch
from paddle_rec_zoo.data.read_stats import ReadStats
from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.schema import Batch, Columns


def list_data_files(folder: str, key: str) -> list[str]:
    """Every regular, non-hidden file in `folder`, sorted. `key` names the config key in errors."""
    if not folder:
        raise UserError(f"{key} is not set")
    if os.path.isfile(folder) or binary_data.is_dataset(folder):
        return [folder]
    if not os.path.isdir(folder):
        raise UserError(f"{key}: folder {folder} does not exist")
    files = sorted(
        os.path.join(folder, name)
        for name in os.listdir(folder)
        if not name.startswith(".") and os.path.isfile(os.path.join(folder, name))
    )
    if not files:
        raise UserError(f"{key}: folder {folder} holds no data files")
    return files


class Dataset:
    """The rows of a list of files, as per-file `Columns` (memory-mapped when cached)."""

    def __init__(self, parts: list[Columns], files: list[str], stats: ReadStats):
        self.parts = parts
        self.files = files
        self.stats = stats
        self.offsets = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @classmethod
    def load(
        cls, files: list[str], reader, cache_dir: str | None, workers: int | None = None
    ) -> Dataset:
        """`workers`: processes that parse one file into the cache (None = the usable cores)."""
        parts, stats = [], ReadStats()
        for path in files:
            if binary_data.is_dataset(path):  # memory-mapped as it is: no text pass
                part, info = _open_binary(path, reader, cache_dir)
            elif cache_dir is None:
                part, info = _read_into_memory(path, reader)
            else:
                part, info = read_cached(path, reader, cache_dir, workers)
            parts.append(part)
            stats.add(info)
        return cls(parts, files, stats)

    def gather(self, index: np.ndarray) -> Batch:
        """Rows `index` (global, ascending for locality) as a `Batch`."""
        if len(self.parts) == 1:
            return _to_batch(self.parts[0], index)
        which = np.searchsorted(self.offsets, index, side="right") - 1
        pieces = []
        for f in np.unique(which):
            local = index[which == f] - self.offsets[f]
            pieces.append(_to_batch(self.parts[f], local))
        columns = zip(*(p[:3] for p in pieces), strict=True)  # rows: none yet
        return Batch(*(np.concatenate(cols) for cols in columns))

    def batch_indices(
        self,
        batch_size: int,
        shuffle: bool,
        seed: int,
        epoch: int,
        rank: int = 0,
        world: int = 1,
        equal: bool = False,
    ) -> list[np.ndarray]:
        """Row indices of each batch of this rank for one epoch (deterministic in seed, epoch).

        Ranks take every `world`-th row. `equal=True` (training) cuts the shares to the same
        length, so every rank runs the same number of steps, as gradient all-reduce requires;
        at most `world - 1` rows of the epoch's permutation are left out.
        """
        n = len(self)
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        order = order[rank::world]
        if equal:
            order = order[: n // world]
        out = []
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out.append(np.sort(idx) if shuffle else idx)
        return out

    def batches(
        self,
        batch_size: int,
        shuffle=False,
        seed=0,
        epoch=0,
        rank=0,
        world=1,
        equal=False,
        start=0,
        prepare: Callable[[Batch], Batch] | None = None,
    ):
        """Iterate `Batch`es from the `start`-th on (a resumed epoch), gathered and passed
        through `prepare` (an engine's per-batch work that needs no model) in a background
        thread while the caller computes."""
        plan = self.batch_indices(batch_size, shuffle, seed, epoch, rank, world, equal)[start:]
        batches = (self.gather(idx) for idx in plan)
        if prepare is not None:
            batches = (prepare(batch) for batch in batches)
        return prefetch(batches, depth=4)

    def num_batches(self, batch_size: int, rank: int = 0, world: int = 1, equal=False) -> int:
        n = len(self) // world if equal else len(range(rank, len(self), world))
        return (n + batch_size - 1) // batch_size


def _to_batch(part, index) -> Batch:
    if isinstance(part, binary_data.BinarySplit):
        ids, labels, sample_id = part.gather(index)
        return Batch(ids, labels.astype(np.float32), sample_id)
    return Batch(
        np.ascontiguousarray(take_ids(part.ids, index), dtype=np.int64),
        np.ascontiguousarray(part.labels[index], dtype=np.float32),
        np.ascontiguousarray(part.sample_id[index]),
    )


def _open_binary(path: str, reader, cache_dir: str | None) -> tuple[binary_data.BinarySplit, dict]:
    """A binary data set; `cache_dir` keeps its users' common ids laid out for the reader."""
    open_binary = getattr(reader, "open_binary", None)
    if open_binary is None:
        raise UserError(
            f"{path} is a binary data set, which the reader {type(reader).__module__} cannot read"
        )
    part = open_binary(path).prepare(cache_dir)
    return part, ReadStats(rows=len(part)).info()


def _read_into_memory(path: str, reader) -> tuple[Columns, dict]:
    chunks, info = [], ReadStats().info()
    for chunk, chunk_info in reader.read_file(path):
        chunks.append(chunk)
        info = chunk_info
    width = reader.layout.width
    return Columns.concat(chunks, len(reader.label_names), width), info
