"""Convert the raw Ali-CCP files (Tianchi data set 408) into the binary data set the trainers
read, or into PaddleRec's slot format.

    python datasets/ali-ccp/convert_raw.py --raw RAW_DIR --out OUT_DIR [--min-count N]
        [--workers N] [--skip-bad] [--force] [--fields 101,121,...]
        [--format binary|slot] [--vocab OLD_OUT [--freeze-vocab]]

Input (``RAW_DIR``): ``sample_skeleton_{train,test}.csv`` and ``common_features_{train,test}.csv``
(raw_parse.py describes the lines). Output (``OUT_DIR``): ``train_data/``, ``test_data/``,
``meta.json`` and ``vocab.txt`` (line n: ``field:feature_id`` of feasign n). By default each split
folder is a normalised binary data set (per impression its sample id, labels, own feasigns and
the row of its user's common feasigns, which are stored once; raw_write.py). With ``--format
slot``: ``part-NNNNN.txt`` files, one line per kept skeleton row, ``sample_id,click,buy`` then
``,field:feasign`` tokens (the skeleton's features in their raw order, then the user's common
features in their raw order). Both forms hold the same rows and ids.

What happens, in order (every step streams; nothing grows with the skeleton). Each step is a
pool of worker processes over byte ranges (or runs of rows) of its files:

1. Both ``common_features_*.csv`` are parsed once into binary side files of int64 keys
   (raw_parse.py; one run per common row) plus, per split, a sorted array of 64-bit hashes of
   the ``common_feature_index`` strings.
2. Train skeleton, pass 1: count every kept key and how many kept rows reference each common
   row; ``click=0,buy=1`` rows are dropped and counted. The parsed rows (heads, keys, common row
   ids) are kept in a binary side file per byte range, so pass 2 does not parse the text again.
3. The common train keys are counted with those reference counts as weights, so a key's count is
   the number of train impressions it occurs in, whichever file it comes from; the vocabulary
   is numbered from the counts (vocabulary.py).
4. Each common row of both splits is encoded once: its feasigns (binary), or its slot text in a
   blob file on disk whose texts skeleton rows read with ``os.pread``.
5. Both skeletons are encoded with that one vocabulary (test ids unseen in train are not
   written): train from pass 1's side files (each deleted when done), test from its text; one
   part per byte range, in file order (binary parts are then joined into one array per column).

Everything is written into ``OUT_DIR/.convert-tmp-*`` and renamed into place at the end, so an
interrupted or failed run never leaves half-written ``train_data/``/``test_data/``.

Malformed lines stop the run with ``file:line: problem`` (exit status 2, no traceback), or with
``--skip-bad`` are counted and skipped. A skeleton row whose ``common_feature_index`` is not in the
split's common-features file is treated the same way (it cannot be encoded faithfully).

Its parts: raw_parse (lines), vocabulary (feasign numbering), raw_write (output formats), raw_pool
(worker processes); ``datasets/ali-ccp/convert_raw.py`` is the command-line script.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from paddle_rec_zoo.data.ali_ccp import (
    RAW_COMMON,
    RAW_FILES,
    RAW_SKELETON,
    RAW_SPLITS,
    raw_write,
    vocabulary,
)
from paddle_rec_zoo.data.ali_ccp.raw_parse import (
    KEY_SHIFT,
    explain_line,
    field_lookup,
    line_number,
    n_tasks_for,
    parse_block,
    read_blocks,
    split_ranges,
)
from paddle_rec_zoo.data.ali_ccp.raw_pool import Progress, TaskError, io_message, run_tasks
from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.schema import field_name_problem

FEASIGN_ORDER = vocabulary.FEASIGN_ORDER  # the default --fields, in feasign order
FORMATS = ("binary", "slot")
EXIT_USER_ERROR = 2
# Read by each conversion (tests make them small to exercise block and task edges).
BLOCK_BYTES = 8 << 20  # bytes parsed at a time by a worker (bounds its memory)
TASK_BYTES = 64 << 20  # bytes of raw input per task, and per output part


@dataclasses.dataclass
class Context:
    """What the worker tasks of one conversion read. Each pool's workers are forked with the
    context as it is then (nothing is pickled); workers never change it."""

    fields: tuple[str, ...]
    skip_bad: bool
    fmt: str
    block_bytes: int
    field_hashes: np.ndarray = None
    field_index: np.ndarray = None
    prefix: tuple = None  # raw_write.prefix_table(fields), for the slot text
    common_index: dict = dataclasses.field(default_factory=dict)  # split -> (hashes, row ids)
    refcount: np.ndarray = None  # kept train rows referencing each common train row
    vocab: vocabulary.Vocabulary = None
    blobs: dict = dataclasses.field(default_factory=dict)  # split -> raw_write.blob_index

    def __post_init__(self):
        self.field_hashes, self.field_index = field_lookup(self.fields)
        self.prefix = raw_write.prefix_table(self.fields)

    def blocks(self, path, start, end, n_head, res):
        """Parse the lines of [start, end) of `path` block by block: yields (offset, bytes,
        Block). Malformed lines are counted in `res` (`n_bad`, `first_bad`) with --skip-bad, or
        stop the task with the first one's file, line and problem."""
        for off, buf in read_blocks(path, start, end, self.block_bytes):
            b = parse_block(buf, n_head, self.field_hashes, self.field_index)
            if len(b.bad_offsets):
                o = int(b.bad_offsets[0])
                msg = explain_line(buf[o : buf.index(b"\n", o)], n_head, set(self.fields))
                self.bad(path, off + o, msg, len(b.bad_offsets), res)
            yield off, buf, b

    def bad(self, path, offset, message, n, res, key="n_bad"):
        if not self.skip_bad:
            raise TaskError(path, offset, message)
        res[key] += n
        if res["first_bad"] is None:
            res["first_bad"] = (offset, message)


# ---------------------------------------------------------------------------------------------
# Worker tasks: fn(ctx, task, progress) -> result


def _common_task(ctx, task, progress):
    """Parse a byte range of a common-features file: write the kept keys of its rows to `out`
    (int64); return the rows' index hashes and key counts."""
    path, start, end, out = task
    hashes, sizes = [], []
    res = {"n_bad": 0, "first_bad": None, "lines": 0}
    with open(out, "wb") as fh:
        for _, buf, b in ctx.blocks(path, start, end, 2, res):
            res["lines"] += b.n_lines
            hashes.append(b.cfi)
            b.key.tofile(fh)
            sizes.append(np.bincount(b.feat_row, minlength=len(b.cfi)))
            progress(len(buf))
    res["hashes"] = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    res["sizes"] = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
    return res


def _key_runs(path, sizes, step):
    """Yield `(r, r2, keys)`: the int64 keys of rows r..r2-1 of a key file whose rows hold
    `sizes` keys each, about `step` keys at a time (always at least one whole row)."""
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    with open(path, "rb") as fh:
        r = 0
        while r < len(sizes):
            r2 = int(np.searchsorted(bounds, bounds[r] + step, side="right")) - 1
            r2 = min(max(r2, r + 1), len(sizes))
            yield r, r2, np.fromfile(fh, np.int64, count=int(bounds[r2] - bounds[r]))
            r = r2


def _weighted_task(ctx, task, progress):
    """Count the keys of a run of common rows, each weighted by its train reference count."""
    path, row0, sizes = task
    counts = vocabulary.Counts()
    for r, r2, keys in _key_runs(path, sizes, max(1, (32 << 20) // 8)):
        w = np.repeat(ctx.refcount[row0 + r : row0 + r2], sizes[r:r2])
        sel = w > 0
        counts.add_weighted(keys[sel], w[sel])
        progress(len(keys) * 8)
    return counts.result()


def _seen_runs(ctx, path, sizes, res, progress):
    """Runs of common rows (either split) with their keys looked up in the vocabulary: yields
    (rows in the run, the row of each seen key, the seen keys, their feasigns). Unseen keys are
    dropped, as the slot text drops them; `res` counts `tokens` and `unseen`."""
    for r, r2, keys in _key_runs(path, sizes, 4 << 20):
        rows = np.repeat(np.arange(r2 - r), sizes[r:r2])
        fs = ctx.vocab.lookup(keys)
        seen = fs > 0
        res["tokens"] += len(fs)
        res["unseen"] += int((~seen).sum())
        yield r2 - r, rows[seen], keys[seen], fs[seen]
        progress(len(keys) * 8)


def _encode_common_task(ctx, task, progress):
    """The common rows of a key file (either split) in the output's form: their feasigns
    (int32, raw order) for the binary data set, or their slot text. Returns each row's size."""
    path, sizes, out = task
    lens, res = [], {"tokens": 0, "unseen": 0}
    with open(out, "wb") as wh:
        for n, rows, keys, fs in _seen_runs(ctx, path, sizes, res, progress):
            if ctx.fmt == "slot":
                text, row_len = raw_write.render_rows(
                    n, rows, keys >> KEY_SHIFT, fs, ctx.prefix, newline=True
                )
                wh.write(text)
                lens.append(row_len)
            else:
                fs.astype(np.int32).tofile(wh)
                lens.append(np.bincount(rows, minlength=n))
    res["sizes"] = np.concatenate(lens) if lens else np.zeros(0, np.int64)
    return res


def _skeleton_task(ctx, task, progress):
    """Pass over a byte range of a skeleton file.

    mode "count": return key counts and per-common-row reference counts; with `cache`, also
    keep the parsed rows there (binary), so that encoding them needs no second parse.
    mode "encode": write the rows to the part `out`, from `cache` if given, else from the text.
    """
    path, start, end, out, mode, cache, split = task
    if mode == "encode" and cache is not None:
        return _encode_cached(ctx, cache, out, progress, split)
    idx_hash, idx_cid = ctx.common_index[split]
    res = {"lines": 0, "rows": 0, "noise": 0, "n_bad": 0, "missing": 0, "first_bad": None}
    res.update(tokens=0, unseen=0)
    counts = vocabulary.Counts()
    ref = np.zeros(len(idx_hash), np.int64) if mode == "count" else None
    with contextlib.ExitStack() as stack:
        if mode == "encode":
            writer = stack.enter_context(_Encoder(ctx, out, split, res))
        ch = stack.enter_context(open(cache, "wb")) if cache is not None else None
        for off, buf, b in ctx.blocks(path, start, end, 5, res):
            res["lines"] += b.n_lines
            # Join with the common features.
            if len(idx_hash):
                pos = np.minimum(vocabulary.search(idx_hash, b.cfi), len(idx_hash) - 1)
                found = idx_hash[pos] == b.cfi
                cid = idx_cid[pos]
            else:
                found = np.zeros(len(b.cfi), bool)
                cid = np.zeros(len(b.cfi), np.int64)
            if not found.all():
                o = int(b.line_start[np.flatnonzero(~found)[0]])
                cfi_text = buf[o : buf.index(b"\n", o)].split(b",")[3].decode("utf-8", "replace")
                msg = f"common_feature_index {cfi_text!r} is not in {RAW_COMMON.format(split)}"
                ctx.bad(path, off + o, msg, int((~found).sum()), res, key="missing")
            noise = (b.click == 0) & (b.buy == 1)
            res["noise"] += int((noise & found).sum())
            keep = found & ~noise
            res["rows"] += int(keep.sum())
            rows = _kept_rows(buf, b, keep, cid)
            if mode == "count":
                _, _, _, kept_cid, keys, _ = rows
                counts.add_weighted(keys, np.ones(len(keys), np.int64))
                ref += np.bincount(kept_cid, minlength=len(ref))
                if ch is not None:
                    _save_rows(ch, len(buf), *rows)
            else:
                writer.write(*rows)
            progress(len(buf))
    if cache is not None:
        with open(f"{cache}.json", "w") as f:
            json.dump(res, f, default=int)
    if mode == "count":
        res["counts"] = counts.result()
        res["refcount"] = ref
    return res


def _kept_rows(buf, b, keep, cid):
    """The rows of a block that are written: (head bytes, head starts, head lengths, common
    row ids, feature keys, row of each key)."""
    rows = np.flatnonzero(keep)
    hstart = b.line_start[rows]
    fkeep = keep[b.feat_row]
    frow = (np.cumsum(keep) - 1)[b.feat_row[fkeep]]
    src = np.frombuffer(buf, np.uint8)
    return src, hstart, b.head_end[rows] - hstart, cid[rows], b.key[fkeep], frow


# A parsed block in the cache between the two passes over the train skeleton: its raw length,
# then its written rows' heads (`sample_id,click,buy`, concatenated), their lengths, common row
# ids, feature keys and the row of each key, as .npy arrays one after the other.
def _save_rows(fh, raw_len, src, hstart, hlen, cid, keys, frow):
    out_start = np.cumsum(hlen) - hlen
    heads = src[np.arange(int(hlen.sum())) + np.repeat(hstart - out_start, hlen)]
    for a in (np.array([raw_len]), heads, hlen.astype(np.int32), cid, keys, frow.astype(np.int32)):
        np.save(fh, a, allow_pickle=False)


def _encode_cached(ctx, cache, out, progress, split):
    with open(f"{cache}.json") as f:
        res = json.load(f)
    if res["first_bad"] is not None:
        res["first_bad"] = tuple(res["first_bad"])
    size = os.path.getsize(cache)
    with _Encoder(ctx, out, split, res) as writer, open(cache, "rb") as fh:
        while fh.tell() < size:
            raw_len, heads, hlen, cid, keys, frow = (
                np.load(fh, allow_pickle=False) for _ in range(6)
            )
            hlen = hlen.astype(np.int64)
            writer.write(heads, np.cumsum(hlen) - hlen, hlen, cid, keys, frow.astype(np.int64))
            progress(int(raw_len[0]))
    os.remove(cache)  # free its disk space before the test split is converted
    return res


class _Encoder:
    """Looks up a batch of rows' keys and writes the rows to one output part: binary columns, or
    slot lines with their users' common text. Counts `tokens` and `unseen` in `res`."""

    def __init__(self, ctx, out, split, res):
        self.ctx, self.res = ctx, res
        if ctx.fmt == "slot":
            self.file, self.blobs = raw_write.ArrayFile(out), raw_write.Blobs(ctx.blobs[split])
        else:
            self.file, self.blobs = raw_write.PartWriter(out), None

    def write(self, src, hstart, hlen, cid, keys, frow):
        fs = self.ctx.vocab.lookup(keys)
        seen = fs > 0
        self.res["tokens"] += len(fs)
        self.res["unseen"] += int((~seen).sum())
        if self.blobs is None:
            self.file.write_rows(src, hstart, hlen, cid, frow[seen], fs[seen])
        else:
            field = keys[seen] >> KEY_SHIFT
            head = (src, hstart, hlen)
            raw_write.write_slot_rows(
                self.file, head, cid, frow[seen], field, fs[seen], self.ctx.prefix, self.blobs
            )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()
        if self.blobs is not None:
            self.blobs.close()


# ---------------------------------------------------------------------------------------------
# The conversion


def _check_output(out_dir: Path, force: bool):
    for name in ("train_data", "test_data"):
        p = out_dir / name
        if p.exists() and not p.is_dir():
            raise UserError(f"{p} exists and is not a folder")
        if p.is_dir() and any(p.iterdir()) and not force:
            raise UserError(f"{p} already exists and is not empty; use --force to replace it")


def _check_fields(fields):
    """The fields to convert must be names every reader accepts (the binary format also keeps a
    feasign's field in one byte): checked before anything is written."""
    if len(set(fields)) != len(fields) or not 0 < len(fields) < 256:
        raise UserError(f"--fields: 1 to 255 distinct names, got {list(fields)}")
    for name in fields:
        problem = field_name_problem(name)
        if problem:
            raise UserError(f"--fields: {problem}")


def convert(
    raw_dir,
    out_dir,
    min_count=1,
    workers=2,
    skip_bad=False,
    force=False,
    fields=None,
    progress=True,
    fmt="binary",
    vocab=None,
    freeze_vocab=False,
):
    """Convert the four raw Ali-CCP files in `raw_dir` into `out_dir` (binary data set, or slot
    files with fmt="slot").

    fields: the fields to keep, in feasign order (default `FEASIGN_ORDER`).
    vocab: an earlier output folder (or its vocab.txt) whose feasigns keep their numbers; the
    (field, id) pairs new in this train split (count >= min_count) are appended after them.
    freeze_vocab: with `vocab`, append nothing (pairs not in it are written as unseen), e.g. to
    encode evaluation data for a model trained on that vocabulary.

    Returns the meta dict also written to `out_dir/meta.json`. Raises UserError for problems
    in the input or an existing output.
    """
    t0 = time.time()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    fields = tuple(fields) if fields else FEASIGN_ORDER
    _check_fields(fields)
    if fmt not in FORMATS:
        raise UserError(f"--format: one of {', '.join(FORMATS)}, got {fmt!r}")
    if min_count < 1:
        raise UserError(f"--min-count must be at least 1, got {min_count}")
    if freeze_vocab and vocab is None:
        raise UserError("--freeze-vocab needs --vocab (the vocabulary to keep)")
    base = None
    if vocab is not None:
        base = (vocabulary.read_vocab(vocab, fields), str(vocab), bool(freeze_vocab))
    inputs = {}
    for split in RAW_SPLITS:
        for pat in (RAW_SKELETON, RAW_COMMON):
            p = raw_dir / pat.format(split)
            if not p.is_file():
                raise UserError(
                    f"raw file not found: {p} (expected {', '.join(RAW_FILES)} from Tianchi "
                    "data set 408)"
                )
            inputs[p.name] = p
    _check_output(out_dir, force)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-tmp-", dir=out_dir))
    ctx = Context(fields, skip_bad, fmt, BLOCK_BYTES)
    meta = {
        "converter": "datasets/ali-ccp/convert_raw.py",
        "format": fmt,
        "raw_dir": str(raw_dir),
        "input_bytes": {name: p.stat().st_size for name, p in inputs.items()},
        "fields": list(fields),
        "min_count": min_count,
        "splits": {},
        "bad_lines": {},
    }
    conversion = _Conversion(ctx, inputs, tmp, max(1, int(workers)), progress, meta)
    try:
        conversion.run(min_count, base)
        meta["seconds"] = round(time.time() - t0, 2)
        with open(tmp / "meta.json", "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
            f.write("\n")
        shutil.rmtree(tmp / "work")
        _install(tmp, out_dir)
    except BaseException:
        if created:  # a failed run leaves no trace, not even the folder it made
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _install(tmp: Path, out_dir: Path):
    """Move the finished outputs into place; old ones (with --force) go only after that."""
    trash = tmp / "old"
    trash.mkdir()
    names = ("train_data", "test_data", "meta.json", vocabulary.VOCAB_FILE)
    for name in names:
        if (out_dir / name).exists():
            os.replace(out_dir / name, trash / name)
    for name in names:
        os.replace(tmp / name, out_dir / name)


@dataclasses.dataclass
class _CommonParts:
    """The byte ranges of both common-features files (step 1's tasks, in split order), the
    split of each, its parse result, and the rows of each split's file."""

    tasks: list
    split_of: list
    results: list
    rows: dict = dataclasses.field(default_factory=dict)

    def of(self, split: str) -> list[int]:
        return [i for i, sp in enumerate(self.split_of) if sp == split]

    def key_bytes(self, split: str) -> int:
        """Bytes of the split's key side files."""
        return sum(int(self.results[i]["sizes"].sum()) * 8 for i in self.of(split))


class _Conversion:
    """The five steps of a conversion (module docstring), each a pool of worker tasks."""

    def __init__(self, ctx, inputs, tmp, workers, progress, meta):
        self.ctx, self.inputs, self.tmp, self.work = ctx, inputs, tmp, tmp / "work"
        self.workers, self.progress, self.meta = workers, progress, meta
        self.work.mkdir()

    def log(self, *a):
        if self.progress:
            print(*a, file=sys.stderr, flush=True)

    def ranges(self, path):
        return split_ranges(path, n_tasks_for(path.stat().st_size, self.workers, TASK_BYTES))

    def pool(self, fn, tasks, desc, total, on_result=None):
        bar = Progress(desc, total, self.progress)
        try:
            return run_tasks(functools.partial(fn, self.ctx), tasks, self.workers, bar, on_result)
        finally:
            bar.close()

    def run(self, min_count, base):
        common = self.parse_common()
        train_tasks, counts = self.count_train_skeleton(common)
        self.count_common_train(common, counts)
        self.number(*counts.result(), min_count, base)
        counts.parts.clear()  # free the merged counts before the encoding passes
        encoded_common = self.encode_common(common)
        self.encode_skeletons(train_tasks, encoded_common)
        self.summary()

    def parse_common(self) -> _CommonParts:
        """Step 1: the common features of both splits -> key side files, and each split's
        index (into the context)."""
        tasks, split_of = [], []
        for split in RAW_SPLITS:
            cpath = self.inputs[RAW_COMMON.format(split)]
            for i, (a, z) in enumerate(self.ranges(cpath)):
                tasks.append((cpath, a, z, self.work / f"common-{split}-{i:05d}.keys"))
                split_of.append(split)
        csize = sum(self.inputs[RAW_COMMON.format(split)].stat().st_size for split in RAW_SPLITS)
        results = self.pool(_common_task, tasks, "common features (parse)", csize)
        common = _CommonParts(tasks, split_of, results)
        for split in RAW_SPLITS:
            res = [results[i] for i in common.of(split)]
            path = self.inputs[RAW_COMMON.format(split)]
            self.ctx.common_index[split], common.rows[split] = _build_index(
                res, path, self.ctx.skip_bad, self.meta
            )
        return common

    def count_train_skeleton(self, common: _CommonParts):
        """Step 2: the train skeleton's key counts and its references to common rows (into the
        context). Returns its tasks (their side files feed step 5) and the counts."""
        spath = self.inputs[RAW_SKELETON.format("train")]
        tasks = [
            (spath, a, z, None, "count", self.work / f"skeleton-train-{i:05d}.npy", "train")
            for i, (a, z) in enumerate(self.ranges(spath))
        ]
        refcount = np.zeros(common.rows["train"], np.int64)
        counts = vocabulary.Counts()

        def fold(r):
            refcount[:] += r["refcount"]
            counts.add(*r["counts"])

        self.pool(_skeleton_task, tasks, "train skeleton (count)", spath.stat().st_size, fold)
        self.ctx.refcount = refcount
        return tasks, counts

    def count_common_train(self, common: _CommonParts, counts: vocabulary.Counts):
        """Step 3: the common train keys, weighted by their reference counts, into `counts`."""
        wtasks, row0 = [], 0
        for i in common.of("train"):
            wtasks.append((common.tasks[i][3], row0, common.results[i]["sizes"]))
            row0 += len(common.results[i]["sizes"])
        desc = "train common (count)"
        total = common.key_bytes("train")
        self.pool(_weighted_task, wtasks, desc, total, lambda r: counts.add(*r))

    def encode_common(self, common: _CommonParts) -> dict:
        """Step 4: the common rows of both splits with the vocabulary, as slot text or feasigns.
        Returns, per split, its encoded files and the size of each of their rows."""
        slot = self.ctx.fmt == "slot"
        rtasks = [
            (t[3], r["sizes"], self.work / f"common-{sp}-{i:05d}.{'txt' if slot else 'ids'}")
            for i, (t, r, sp) in enumerate(
                zip(common.tasks, common.results, common.split_of, strict=True)
            )
        ]
        total = sum(common.key_bytes(split) for split in RAW_SPLITS)
        rres = self.pool(_encode_common_task, rtasks, "common features (encode)", total)
        encoded = {}
        for split in RAW_SPLITS:
            mine = common.of(split)
            encoded[split] = [(rtasks[i][2], rres[i]["sizes"]) for i in mine]
            if slot:
                files, lens = [p for p, _ in encoded[split]], [n for _, n in encoded[split]]
                self.ctx.blobs[split] = raw_write.blob_index(files, lens)  # (no files: empty)
            self.meta["splits"][split] = {
                "common_tokens": sum(rres[i]["tokens"] for i in mine),
                "common_tokens_not_in_vocab": sum(rres[i]["unseen"] for i in mine),
            }
        return encoded

    def encode_skeletons(self, train_tasks, encoded_common: dict):
        """Step 5: both skeletons, train from pass 1's side files (each deleted when done), test
        parsed; binary parts are then joined with the split's common rows into its data set."""
        etasks, sizes = [], {}
        for split in RAW_SPLITS:
            path = self.inputs[RAW_SKELETON.format(split)]
            (self.tmp / f"{split}_data").mkdir()
            if split == "train":
                parts = [(t[0], t[1], t[2], t[5]) for t in train_tasks]
            else:
                parts = [(path, a, z, None) for a, z in self.ranges(path)]
            for i, (pth, a, z, cache) in enumerate(parts):
                etasks.append((pth, a, z, self.part_path(split, i), "encode", cache, split))
            sizes[split] = path.stat().st_size
        eres = self.pool(_skeleton_task, etasks, "skeletons (encode)", sum(sizes.values()))
        for split in RAW_SPLITS:
            mine = [(t, r) for t, r in zip(etasks, eres, strict=True) if t[6] == split]
            _split_meta(split, self.inputs[RAW_SKELETON.format(split)], mine, self.meta)
            if self.ctx.fmt != "slot":
                self.join_binary(split, [t[3] for t, _ in mine], encoded_common[split])

    def part_path(self, split: str, i: int) -> Path:
        """Where the i-th encoded part of a skeleton goes: a slot file of the output, or a
        binary part to be joined."""
        if self.ctx.fmt == "slot":
            return self.tmp / f"{split}_data" / f"part-{i:05d}.txt"
        return self.work / f"{split}-part-{i:05d}"

    def join_binary(self, split: str, parts: list, encoded_common: list):
        folder = self.tmp / f"{split}_data"
        try:
            numbered = self.ctx.vocab.numbered
            raw_write.join_parts(
                folder, parts, encoded_common, self.ctx.fields, numbered, self.meta
            )
        except OSError as e:
            raise UserError(io_message(e)) from None
        self.meta["splits"][split]["files"] = sorted(
            f"{split}_data/{p.name}" for p in folder.iterdir()
        )

    def number(self, keys, cnt, min_count, base):
        """Step 3's end: the vocabulary from the counts (and `base`), into the context, the
        meta and vocab.txt."""
        ctx, meta = self.ctx, self.meta
        if base is None:
            ctx.vocab, new = vocabulary.build(keys, cnt, min_count)
            meta["vocab"] = {"base": None, "kept": 0, "new": new, "frozen": False}
        else:
            keys_base, source, frozen = base
            ctx.vocab, new = vocabulary.build(keys, cnt, min_count, keys_base, frozen)
            meta["vocab"] = {"base": source, "kept": len(keys_base), "new": new, "frozen": frozen}
            self.log(
                f"vocabulary: {len(keys_base)} feasigns kept from {source}, {new} new"
                + (" (--freeze-vocab)" if frozen else "")
            )
        meta["vocab"]["file"] = vocabulary.VOCAB_FILE
        meta.update(ctx.vocab.meta(ctx.fields))
        vocabulary.write_vocab(self.tmp / vocabulary.VOCAB_FILE, ctx.vocab.numbered, ctx.fields)
        self.log(f"vocabulary: {len(ctx.vocab)} feasigns (min_count={min_count})")
        if len(ctx.vocab) >= 2**31 - 1 and ctx.fmt == "binary":
            raise UserError(f"{len(ctx.vocab)} feasigns do not fit the binary format's int32 ids")

    def summary(self):
        for split in RAW_SPLITS:
            s = self.meta["splits"][split]
            self.log(
                f"{split}: {s['rows']} rows written, {s['dropped_noise']} click=0,buy=1 rows "
                "dropped"
                + (f", {s['skipped_bad']} bad lines skipped" if s["skipped_bad"] else "")
                + (
                    f", {s['skipped_missing_common']} rows without common features skipped"
                    if s["skipped_missing_common"]
                    else ""
                )  # fmt: skip
            )
        if self.ctx.skip_bad:
            total_bad = sum(self.meta["bad_lines"].values())
            self.log(f"--skip-bad: {total_bad} malformed lines skipped in total")


def _build_index(results, path, skip_bad, meta):
    """Sorted common_feature_index hashes -> row id; duplicates keep the first line."""
    name = path.name
    hashes = np.concatenate([np.zeros(0, np.uint64)] + [r["hashes"] for r in results])
    order = np.argsort(hashes, kind="stable")
    sh = hashes[order]
    dup = int((sh[1:] == sh[:-1]).sum()) if len(sh) else 0
    n_bad = sum(r["n_bad"] for r in results)
    firsts = [r["first_bad"] for r in results if r["first_bad"]]
    if dup and not skip_bad:
        raise UserError(
            f"{name}: {dup} common_feature_index values appear on more than one line "
            "(use --skip-bad to keep the first line of each)"
        )
    meta["bad_lines"][name] = n_bad + dup
    if firsts:
        o, msg = min(firsts)
        meta.setdefault("first_bad_line", {})[name] = f"{name}:{line_number(path, o)}: {msg}"
    split = "train" if "train" in name else "test"
    meta.setdefault("common_rows", {})[split] = len(hashes) - dup
    return (sh, order.astype(np.int64)), len(hashes)


def _split_meta(split, path, done, meta):
    """Sum the encoding results `done` ((task, result) pairs) of one split into meta."""
    res = [r for _, r in done]
    info = {
        "input_rows": sum(r["lines"] for r in res),
        "rows": sum(r["rows"] for r in res),
        "dropped_noise": sum(r["noise"] for r in res),
        "skipped_bad": sum(r["n_bad"] for r in res),
        "skipped_missing_common": sum(r["missing"] for r in res),
        "common_rows": meta["common_rows"][split],
        "skeleton_tokens": sum(r["tokens"] for r in res),
        "skeleton_tokens_not_in_vocab": sum(r["unseen"] for r in res),
        "files": [f"{split}_data/{t[3].name}" for t, _ in done],
    }
    meta["splits"][split].update(info)
    meta["bad_lines"][path.name] = info["skipped_bad"]
    firsts = [r["first_bad"] for r in res if r["first_bad"]]
    if firsts:
        o, msg = min(firsts)
        meta.setdefault("first_bad_line", {})[path.name] = (
            f"{path.name}:{line_number(path, o)}: {msg}"
        )
    meta.setdefault("rows", {})[split] = info["rows"]
    meta.setdefault("dropped_noise", {})[split] = info["dropped_noise"]


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert the raw Ali-CCP (Tianchi) files into the binary data set the "
        "trainers read, or PaddleRec's slot text.",
        epilog="Writes OUT/train_data/, OUT/test_data/, OUT/meta.json and OUT/vocab.txt. "
        "See doc/data.md.",
    )
    parser.add_argument("--raw", required=True, help="folder with the four raw Tianchi CSV files")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--min-count", type=int, default=1,
                        help="keep (field, id) pairs seen in at least this many train rows (default 1)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: all cores)")  # fmt: skip
    parser.add_argument("--skip-bad", action="store_true",
                        help="count and skip malformed lines instead of stopping")  # fmt: skip
    parser.add_argument("--force", action="store_true",
                        help="replace existing OUT/train_data and OUT/test_data")  # fmt: skip
    parser.add_argument("--fields", default=None,
                        help="comma-separated fields to keep, in feasign order "
                        "(default: the 23 Ali-CCP fields)")  # fmt: skip
    parser.add_argument("--format", choices=FORMATS, default="binary",
                        help="binary: the normalised data set the trainers read (default); "
                        "slot: PaddleRec's slot text (~17x the raw input)")  # fmt: skip
    parser.add_argument("--vocab", default=None,
                        help="keep the feasigns of an earlier output folder (or its vocab.txt) "
                        "and append the new (field, id) pairs of this train split")  # fmt: skip
    parser.add_argument("--freeze-vocab", action="store_true",
                        help="with --vocab: append nothing; pairs not in it are left out as unseen")  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    # Switches of earlier versions (numba kernels, O_DIRECT writes), accepted so that scripts
    # passing them keep working; the converter is numpy only and writes through the page cache.
    for gone in ("--no-jit", "--no-direct-io"):
        parser.add_argument(gone, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # `kill` (SIGTERM) unwinds like Ctrl-C, so the temporary output is removed; only while we
    # run: main() may be called from a program that has its own handler
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return _main(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(args) -> int:
    fields = [f.strip() for f in args.fields.split(",") if f.strip()] if args.fields else None
    try:
        meta = convert(
            args.raw,
            args.out,
            min_count=args.min_count,
            workers=args.workers,
            skip_bad=args.skip_bad,
            force=args.force,
            fields=fields,
            progress=not args.quiet,
            fmt=args.format,
            vocab=args.vocab,
            freeze_vocab=args.freeze_vocab,
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    if not args.quiet:
        print(
            f"wrote {args.out}: train {meta['rows']['train']} rows, test {meta['rows']['test']} "
            f"rows, sparse_feature_number={meta['sparse_feature_number']} "
            f"({meta['vocab']['new']} new feasigns; {meta['seconds']}s)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
