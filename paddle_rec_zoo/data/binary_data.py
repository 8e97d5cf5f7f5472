"""The normalised binary Ali-CCP data set that `datasets/ali-ccp/convert_raw.py` writes.

One folder per split, every column a flat little-endian array the data layer memory-maps:

    dataset.json          format marker, row and user counts, fields and their feasign ranges,
                          and every column's dtype and shape
    sample_id.bin         int64 [N]
    labels.bin            int8  [N, 2]        click, buy
    user.bin              int32 [N]           the impression's row of the common arrays
    item_offsets.bin      int64 [N + 1]       impression i's own feasigns are
    item_ids.bin          int32 [T]             item_ids[item_offsets[i]:item_offsets[i + 1]]
    common_offsets.bin    int64 [U + 1]       user u's common feasigns are
    common_ids.bin        int32 [C]             common_ids[common_offsets[u]:common_offsets[u + 1]]
    feasign_field.bin     uint8 [V]           the field of feasign v (index into `fields`;
                                              255 for the padding feasign 0)

Both feasign lists keep the raw order, and a feasign's field is looked up in
`feasign_field.bin` (no assumption about how feasigns are numbered), so a row is exactly the slot line
`sample_id,click,buy,<item tokens>,<common tokens>` the converter writes with `--format slot`.
Multi-valued fields are ragged (offsets), not capped: the cap is the reader's `max_len`, a
training setting, and the files must not depend on it.

A batch is gathered without any text: the impressions' own ids (~12 per row) are placed per
batch; the users' common ids (~430 per user, each user shared by many impressions) are
laid out once per user into a [U, width] matrix when the data set is opened, so a batch takes
its rows from that matrix. Where an impression and its user both carry ids of one field, the
impression's come first, as on a slot line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import tempfile

import numpy as np

from paddle_rec_zoo.data.slot_parser import fold_ids
from paddle_rec_zoo.errors import UserError

FORMAT = "ali-ccp-binary/1"
MARKER = "dataset.json"
_USERS_PER_CHUNK = 1 << 14
RELEASE_EVERY = 64  # batches between `release` calls


def is_dataset(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, MARKER))


class BinarySplit:
    """One split of the binary data set, read for a reader's field layout.

    Args:
        path: the split's folder.
        layout: `FieldLayout` (fields kept and their `max_len`).
        label_names: must be ("click", "buy"), the columns of `labels.bin`.
        id_limit: feasigns must be below this (None: no check); `hash_ids` folds larger ones
            (`slot_parser.fold_ids`, as for slot text).
    """

    def __init__(self, path, layout, label_names, id_limit=None, hash_ids=False):
        self.path = path
        with open(os.path.join(path, MARKER), encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT:
            raise UserError(
                f"{os.path.join(path, MARKER)}: format {meta.get('format')!r}, expected {FORMAT!r}"
                " (convert the raw data again with datasets/ali-ccp/run.sh)"
            )
        if tuple(label_names) != ("click", "buy"):
            raise UserError(f"{path}: holds the labels click, buy; the reader wants {label_names}")
        self.meta = meta
        self.cols, self._maps, self._batches = {}, [], 0
        for name, (dtype, shape) in meta["columns"].items():
            file = os.path.join(path, f"{name}.bin")
            want = int(np.prod(shape)) * np.dtype(dtype).itemsize
            if not os.path.isfile(file) or os.path.getsize(file) != want:
                raise UserError(f"{file}: missing or not {want} bytes as dataset.json says")
            if want == 0:
                self.cols[name] = np.zeros(shape, dtype)
            else:
                mapped = np.memmap(file, dtype=dtype, mode="r", shape=tuple(shape))
                self._maps.append(mapped._mmap)
                self.cols[name] = mapped.view(np.ndarray)  # no memmap bookkeeping per batch
        self.layout = layout
        self.hash_ids = hash_ids and id_limit is not None
        self.id_limit = id_limit
        self._fields_of_ids(layout, meta)
        self._check_ids(id_limit)
        self.common = None  # [users, width], made by `prepare`

    def prepare(self, cache_dir: str | None = None):
        """Lay out every user's common ids for the layout, or memory-map that layout from
        `cache_dir` (built there the first time, keyed by the data set's files and the layout)."""
        if cache_dir is None:
            self.common, in_common = self._lay_out_common()
        else:
            self.common, in_common = self._cached_common(cache_dir)
        # layout fields with common ids: an impression's ids of such a field shift its user's
        self._in_common = np.zeros(len(self.layout.names), bool)
        self._in_common[in_common] = True
        return self

    def __len__(self) -> int:
        return int(self.meta["rows"])

    # ------------------------------------------------------------------ setup
    def _fields_of_ids(self, layout, meta):
        """Feasign -> layout field (-1: not in the layout), from `feasign_field.bin`."""
        index = {name: i for i, name in enumerate(layout.names)}
        to_layout = np.full(256, -1, np.int8)  # data set field index -> layout field
        for i, name in enumerate(meta["fields"]):
            to_layout[i] = index.get(name, -1)
        # one byte per feasign: its layout field; a gather, not a search, per id
        self._field_table = to_layout[self.cols["feasign_field"]]
        # the largest feasign of each layout field the data set has
        self._ranges = {}
        for f, name in enumerate(layout.names):
            ids = np.flatnonzero(self._field_table == f)
            if len(ids):
                self._ranges[name] = (int(ids[0]), int(ids[-1]))
        offsets = np.array(layout.offsets, np.int64)
        self._max_lens = np.array(layout.max_lens, np.int64)
        # per column of a row: its field and its rank within the field
        self._col_field = np.repeat(np.arange(len(layout.names)), layout.max_lens)
        self._col_rank = np.arange(layout.width) - offsets[self._col_field]
        self._offsets = offsets

    def _check_ids(self, id_limit):
        if id_limit is None or self.hash_ids:
            return
        for name, (_, last) in self._ranges.items():
            if last >= id_limit:
                raise UserError(
                    f"{self.path}: field {name}: feasigns up to {last} are not below "
                    f"hyper_parameters.sparse_feature_number={id_limit}; raise it to at least "
                    f"{last + 1} (dataset.json: sparse_feature_number)"
                )

    def field_of(self, ids: np.ndarray) -> np.ndarray:
        """Layout field of each feasign (int64; -1: a field the layout leaves out)."""
        return self._field_table[ids].astype(np.int64)

    def _place(self, row, ids, n_rows, field=None, dtype=np.int64, counts=True):
        """Scatter `ids` of rows `row` (non-decreasing) into [n_rows, width], the first
        `max_len` of each (row, field) in order. Returns (matrix, count per [row, field])."""
        field = self.field_of(ids) if field is None else field
        keep = field >= 0
        row, ids, field = row[keep], ids[keep], field[keep]
        n_fields = len(self._max_lens)
        group = row * n_fields + field
        order = np.argsort(group, kind="stable")
        g = group[order]
        starts = np.concatenate(([True], g[1:] != g[:-1]))
        rank = np.arange(len(g)) - np.maximum.accumulate(np.where(starts, np.arange(len(g)), 0))
        f = field[order]
        sel = rank < self._max_lens[f]
        out = np.zeros((n_rows, self.layout.width), dtype)
        out[row[order][sel], self._offsets[f[sel]] + rank[sel]] = ids[order][sel]
        if not counts:
            return out, None
        return out, np.bincount(group, minlength=n_rows * n_fields).reshape(n_rows, n_fields)

    def _lay_out_common(self, out=None) -> tuple[np.ndarray, np.ndarray]:
        """Every user's common ids in the layout, [U, width] int32 (into `out` if given), and
        the layout fields that have any."""
        off, ids = self.cols["common_offsets"], self.cols["common_ids"]
        users = len(off) - 1
        if out is None:
            out = np.zeros((users, self.layout.width), np.int32)
        seen = np.zeros(len(self._max_lens), bool)
        for a in range(0, users, _USERS_PER_CHUNK):
            z = min(a + _USERS_PER_CHUNK, users)
            lo, hi = int(off[a]), int(off[z])
            row = np.repeat(np.arange(z - a, dtype=np.int32), np.diff(off[a : z + 1]))
            chunk = ids[lo:hi]
            field = self.field_of(chunk)
            seen[field[field >= 0]] = True
            out[a:z], _ = self._place(row, chunk, z - a, field, np.int32, counts=False)
        return out, np.flatnonzero(seen)

    def _cached_common(self, cache_dir: str) -> tuple[np.ndarray, np.ndarray]:
        files = [
            os.path.join(self.path, f) for f in (MARKER, "common_ids.bin", "common_offsets.bin")
        ]
        key = {
            "format": FORMAT,
            "path": os.path.abspath(self.path),
            "files": [(os.path.getsize(f), os.stat(f).st_mtime_ns) for f in files],
            "layout": self.layout.to_dict(),
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        name = os.path.join(cache_dir, f"common-{os.path.basename(self.path)}-{digest}")
        if not os.path.exists(name + ".npy"):
            try:
                os.makedirs(cache_dir, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".building-", suffix=".npy", dir=cache_dir)
                os.close(fd)
            except OSError as e:
                raise UserError(
                    f"cannot write the data cache in {cache_dir} ({e.strerror}); set "
                    "runner.cache_dir to a writable folder or runner.use_cache=False"
                ) from None
            try:
                users = len(self.cols["common_offsets"]) - 1
                shape = (users, self.layout.width)
                out = np.lib.format.open_memmap(tmp, "w+", np.int32, shape)
                _, in_common = self._lay_out_common(out)
                out.flush()
                del out
                np.save(tmp[:-4] + ".fields.npy", in_common)
                os.replace(tmp[:-4] + ".fields.npy", name + ".fields.npy")
                os.replace(tmp, name + ".npy")  # last: its presence means the entry is whole
            finally:
                for leftover in (tmp, tmp[:-4] + ".fields.npy"):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(leftover)
        common = np.load(name + ".npy", mmap_mode="r")
        if common.size:
            self._maps.append(common._mmap)
        return common.view(np.ndarray), np.load(name + ".fields.npy")

    # ------------------------------------------------------------------ batches
    def gather(self, index: np.ndarray):
        """Rows `index` (ascending) -> (ids [B, width] int64, labels [B, 2] int8, sample_id [B])."""
        index = np.asarray(index, np.int64)
        c = self.cols
        n = len(index)
        start = c["item_offsets"][index]
        lens = c["item_offsets"][index + 1] - start
        row = np.repeat(np.arange(n), lens)
        pos = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
        item_ids = c["item_ids"][start[row] + pos].astype(np.int64)
        field = self.field_of(item_ids)
        items, count = self._place(row, item_ids, n, field)
        common = self.common[c["user"][index]]
        if not self._in_common[field[field >= 0]].any():  # disjoint fields, as in Ali-CCP
            ids = items
            ids += common
        else:  # a field's columns hold the impression's ids first, then its user's
            shift = count[:, self._col_field]
            src = self._col_rank[None, :] - shift
            from_common = src >= 0
            col = np.where(from_common, self._offsets[self._col_field][None, :] + src, 0)
            ids = np.where(from_common, np.take_along_axis(common, col, axis=1), items)
        self._batches += 1
        if self._batches % RELEASE_EVERY == 0:
            self.release()
        if self.hash_ids:
            ids = fold_ids(ids, self.id_limit)
        return ids, c["labels"][index], c["sample_id"][index]

    def release(self):
        """Drop the mapped pages from this process (they stay in the page cache). A shuffled
        epoch touches every page of the impression columns, and mapped pages count as the
        process's resident memory: without this it would grow to the size of the files."""
        for m in self._maps:
            m.madvise(mmap.MADV_DONTNEED)
