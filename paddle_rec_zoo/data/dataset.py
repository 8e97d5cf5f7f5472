"""From data folders to batches: file listing, a parsed-data cache, shuffling, prefetching.

Text is parsed once (vectorised, `paddle_rec_zoo.data.slot_parser`; a large file by several processes at once)
into flat binary columns kept in a cache folder; later runs memory-map them (and read the rows of
very large columns with `pread`), so memory stays flat whatever the data size and start-up is
instant. The cache entry of a file is keyed by its path, size and modification time and by the
reader's settings (fields, max_len, id limit, ...): change any of them and it is rebuilt. An entry
is written into a temporary folder and renamed into place, so two processes building it at once,
or a run killed half-way, never leave a broken entry behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import queue
import shutil
import signal
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator

import numpy as np

from paddle_rec_zoo.data import binary_data
from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.schema import Batch, Columns

CACHE_VERSION = 1
PREAD_BYTES = 1 << 30  # memory-mapped columns at least this large are gathered with pread


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


class ReadStats:
    """What reading dropped: malformed lines (when skipping them) and rows a reader filtered.

    The one place where the counts of several files, or of the byte ranges of one file, are
    added up. A reader reports them as an `info` dict (`info()`'s keys), which is also what a
    cache entry's meta.json keeps.
    """

    def __init__(self, rows: int = 0):
        self.rows = rows
        self.bad_lines = 0
        self.bad_examples: list[str] = []
        self.filtered: dict[str, int] = {}

    def add(self, info: dict):
        self.rows += info["rows"]
        self.bad_lines += info["bad_lines"]
        self.bad_examples += info["bad_examples"][: max(0, 5 - len(self.bad_examples))]
        for k, v in info["filtered"].items():
            self.filtered[k] = self.filtered.get(k, 0) + v

    def info(self) -> dict:
        return {
            "rows": self.rows,
            "bad_lines": self.bad_lines,
            "bad_examples": list(self.bad_examples),
            "filtered": dict(self.filtered),
        }

    def summary(self) -> list[str]:
        lines = [f"dropped {v} {k}" for k, v in self.filtered.items() if v]
        if self.bad_lines:
            lines.append(f"skipped {self.bad_lines} malformed lines, e.g. {self.bad_examples[0]}")
        return lines


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
                part, info = _read_cached(path, reader, cache_dir, workers)
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
        np.ascontiguousarray(_rows(part.ids, index), dtype=np.int64),
        np.ascontiguousarray(part.labels[index], dtype=np.float32),
        np.ascontiguousarray(part.sample_id[index]),
    )


def _rows(column: np.ndarray, index) -> np.ndarray:
    """`column[index]` of an `ids` column: [rows, width], in memory or a whole cache file mapped
    by `_read_cached`. The rows of a large mapped column are read with `pread` instead: the
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


# ----------------------------------------------------------------------------- reading
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


def _read_cached(path: str, reader, cache_dir: str, workers=None) -> tuple[Columns, dict]:
    entry = os.path.join(cache_dir, _cache_key(path, reader))
    meta_path = os.path.join(entry, "meta.json")
    if not os.path.exists(meta_path):
        _build_cache_entry(path, reader, entry, workers)
    with open(meta_path) as f:
        meta = json.load(f)
    cols = {}
    for name, (dtype, shape) in meta["columns"].items():
        file = os.path.join(entry, f"{name}.bin")
        if shape[0] == 0:
            cols[name] = np.zeros(shape, dtype)
        else:
            cols[name] = np.memmap(file, dtype=dtype, mode="r", shape=tuple(shape))
    return Columns(cols["sample_id"], cols["labels"], cols["ids"]), meta["info"]


def _build_cache_entry(path: str, reader, entry: str, workers: int | None = None):
    parent = os.path.dirname(entry)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".building-", dir=parent)
    except OSError as e:
        raise UserError(
            f"cannot write the data cache in {parent} ({e.strerror}); set runner.cache_dir "
            "to a writable folder or runner.use_cache=False"
        ) from None
    try:
        ids_dtype = np.int32 if reader.max_id() < 2**31 else np.int64
        cuts = _parse_cuts(path, reader, workers)
        if len(cuts) > 2:
            n, info = _write_columns_parallel(path, reader, tmp, ids_dtype, cuts)
        else:
            n, info = _write_columns(reader.read_file(path), tmp, ids_dtype)
        meta = {
            "source": os.path.abspath(path),
            "columns": {
                "sample_id": ["int64", [n]],
                "labels": ["int8", [n, len(reader.label_names)]],
                "ids": [np.dtype(ids_dtype).name, [n, reader.layout.width]],
            },
            "info": info,
        }
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


_COLUMNS = ("sample_id", "labels", "ids")
_MIN_PART_BYTES = 32 << 20  # smaller files are parsed by one process (forking costs more)


def _write_columns(chunks, folder: str, ids_dtype) -> tuple[int, dict]:
    """Append the `(Columns, info)` chunks to `folder/<column>.bin`; returns (rows, last info)."""
    n, info = 0, ReadStats().info()
    with contextlib.ExitStack() as stack:
        files = {
            k: stack.enter_context(open(os.path.join(folder, f"{k}.bin"), "ab")) for k in _COLUMNS
        }
        for chunk, chunk_info in chunks:
            files["sample_id"].write(chunk.sample_id.astype(np.int64).tobytes())
            files["labels"].write(chunk.labels.astype(np.int8).tobytes())
            files["ids"].write(chunk.ids.astype(ids_dtype).tobytes())
            n += len(chunk)
            info = chunk_info
    return n, info


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _parse_cuts(path: str, reader, workers: int | None) -> list[int]:
    """Byte offsets cutting `path` into one range per parsing process ([0, size]: one).

    Parallel parsing needs `fork` and a reader whose class says `supports_ranges = True`: its
    `read_file(path, start, end)` reads the lines that start in bytes [start, end), so equal
    byte ranges split the file at line starts. Any other reader is run in one process, with
    `read_file(path)`.
    """
    size = os.path.getsize(path)
    parts = min(workers or usable_cores(), size // _MIN_PART_BYTES)
    if (
        parts < 2
        or not getattr(reader, "supports_ranges", False)  # optional in the reader contract
        or "fork" not in multiprocessing.get_all_start_methods()
        or multiprocessing.current_process().daemon  # may not start processes of its own
    ):
        return [0, size]
    return [size * k // parts for k in range(parts + 1)]


def _parse_range(path: str, reader, folder: str, ids_dtype, start: int, end: int) -> dict:
    """Parse the lines starting in bytes [start, end) of `path` into `folder`; a result dict
    instead of exceptions."""
    try:
        n, info = _write_columns(reader.read_file(path, start, end), folder, ids_dtype)
        return {"rows": n, "info": info}
    except UserError as e:
        return {"user_error": str(e)}
    except BaseException:  # a bug: keep its traceback for the parent
        return {"error": traceback.format_exc()}


def _range_worker(path, reader, folder, ids_dtype, start, end):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the handler Paddle installed in the parent
    result = _parse_range(path, reader, folder, ids_dtype, start, end)
    with open(os.path.join(folder, "result.json"), "w") as f:
        json.dump(result, f)


def _write_columns_parallel(path, reader, tmp, ids_dtype, cuts) -> tuple[int, dict]:
    """Parse the runs of lines between `cuts` at once, this process taking the first and one
    forked process each of the others; then append their columns in order. Errors are those
    of a one-process parse: the first bad line of the file is reported."""
    ctx = multiprocessing.get_context("fork")
    children = []
    for k in range(1, len(cuts) - 1):
        folder = os.path.join(tmp, f"part-{k}")
        os.mkdir(folder)
        args = (path, reader, folder, ids_dtype, cuts[k], cuts[k + 1])
        proc = ctx.Process(target=_range_worker, args=args, daemon=True)
        proc.start()
        children.append((folder, proc))
    results = [_parse_range(path, reader, tmp, ids_dtype, cuts[0], cuts[1])]
    for folder, proc in children:
        proc.join()
        try:
            with open(os.path.join(folder, "result.json")) as f:
                results.append(json.load(f))
        except OSError:
            results.append({"error": f"parsing process exited with status {proc.exitcode}"})
    for result in results:
        if "user_error" in result:
            raise UserError(result["user_error"])
        if "error" in result:
            raise RuntimeError(f"parsing {path} failed:\n{result['error']}")
    for folder, _ in children:
        for name in _COLUMNS:
            with open(os.path.join(tmp, f"{name}.bin"), "ab") as out:
                with open(os.path.join(folder, f"{name}.bin"), "rb") as part:
                    shutil.copyfileobj(part, out, 16 << 20)
        shutil.rmtree(folder)
    stats = ReadStats()
    for result in results:
        stats.add(result["info"])
    return sum(r["rows"] for r in results), stats.info()


def default_cache_dir() -> str:
    """`$XDG_CACHE_HOME/paddle-rec-zoo` (usually ~/.cache/paddle-rec-zoo): never the data folder,
    which may be read-only or shared, and whose files the trainer reads one and all."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "paddle-rec-zoo")


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


# ----------------------------------------------------------------------------- prefetch
_END = object()


def prefetch(items: Iterator, depth: int = 4) -> Iterator:
    """Run the iterator `items` in a background thread, `depth` items ahead of the consumer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work():
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
            q.put(_END)
        except BaseException as e:  # hand the error to the consumer
            q.put(e)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.01)
