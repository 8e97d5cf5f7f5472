"""Writing the converter's outputs: the binary data set's columns and the slot text.

Binary (the default): each byte range of a skeleton writes its rows' columns into a part folder
(`PartWriter`); `join_parts` appends the parts, in file order, and the users' common feasigns into
one data set per split (layout: paddle_rec_zoo/data/binary_data.py, doc/data.md).

Slot text (``--format slot``): a row is its head ``sample_id,click,buy``, its own
``,field:feasign`` tokens (`render_rows`), then its user's common features, rendered once per user
into a blob file and read back with ``pread`` (`Blobs`). Every write names its file when it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import numpy as np

from paddle_rec_zoo.data.ali_ccp.raw_parse import KEY_SHIFT, MAX_DIGITS, parse_uint
from paddle_rec_zoo.data.binary_data import FORMAT as BINARY_FORMAT
from paddle_rec_zoo.data.slot_parser import byte_words

PART_COLUMNS = ("sample_id", "labels", "user", "item_len", "item_ids")
COMMON_COLUMNS = ("common_offsets", "common_ids")
_PIECES_PER_WRITE = 1024
_POW10 = np.array([10**i for i in range(MAX_DIGITS + 1)], np.int64)


class ArrayFile:
    """An output file written with `os.write` (unbuffered: the arrays and texts are large),
    whose errors name the file."""

    def __init__(self, path):
        self.path = str(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def write(self, data):
        """Write an array's bytes, or bytes."""
        if not isinstance(data, bytes):
            data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)  # may be empty
        data = memoryview(data)
        while data:
            try:
                data = data[os.write(self.fd, data) :]
            except OSError as e:
                raise OSError(e.errno, e.strerror, self.path) from None

    def copy_from(self, path):
        with open(path, "rb") as src:
            while chunk := src.read(16 << 20):
                self.write(chunk)

    def close(self):
        os.close(self.fd)


# ---------------------------------------------------------------------------------------------
# Binary


class PartWriter:
    """The binary columns of one byte range of a skeleton (a folder of `PART_COLUMNS` files),
    appended to the split's columns in file order at the end (`join_parts`)."""

    def __init__(self, folder):
        os.mkdir(folder)
        self.files = {c: ArrayFile(os.path.join(folder, f"{c}.bin")) for c in PART_COLUMNS}

    def write_rows(self, src, hstart, hlen, cid, frow, feasigns):
        """Rows with heads `src[hstart:hstart+hlen]`, users `cid` and own `feasigns` (> 0; the
        row of each in `frow`, non-decreasing)."""
        # The head is `sample_id,click,buy` with one-byte labels (checked by the parser).
        src = np.asarray(src, np.uint8)
        click = src[hstart + hlen - 3] - 48
        buy = src[hstart + hlen - 1] - 48
        sid, _ = parse_uint(src, byte_words(src), hstart, hstart + hlen - 4)
        f = self.files
        f["sample_id"].write(sid.astype(np.int64))
        f["labels"].write(np.stack([click, buy], axis=1).astype(np.int8))
        f["user"].write(cid.astype(np.int32))
        f["item_len"].write(np.bincount(frow, minlength=len(cid)).astype(np.int32))
        f["item_ids"].write(feasigns.astype(np.int32))

    def close(self):
        for fh in self.files.values():
            fh.close()


def join_parts(folder, parts, common, fields, numbered, meta):
    """Append the skeleton parts' columns, in file order, and the common rows (`common`: (ids
    file, ids per row) pairs) into one binary data set in `folder`; the part and common files
    are removed on the way. `numbered`: the vocabulary's keys in feasign order."""
    n_items = n_common = 0
    with contextlib.ExitStack() as stack:
        out = {}
        for c in ("sample_id", "labels", "user", "item_offsets", "item_ids") + COMMON_COLUMNS:
            out[c] = ArrayFile(folder / f"{c}.bin")
            stack.callback(out[c].close)
        out["item_offsets"].write(np.zeros(1, np.int64))
        for part in parts:
            for c in ("sample_id", "labels", "user", "item_ids"):
                out[c].copy_from(part / f"{c}.bin")
            lens = np.fromfile(part / "item_len.bin", np.int32).astype(np.int64)
            out["item_offsets"].write(n_items + np.cumsum(lens))
            n_items += int(lens.sum())
            shutil.rmtree(part)
        out["common_offsets"].write(np.zeros(1, np.int64))
        for path, lens in common:
            out["common_ids"].copy_from(path)
            out["common_offsets"].write(n_common + np.cumsum(lens, dtype=np.int64))
            n_common += int(np.sum(lens))
            os.remove(path)
        # The field of every feasign (index into `fields`; 255 for the padding 0): the reader
        # needs no assumption about how feasigns are numbered.
        field = np.full(len(numbered) + 1, 255, np.uint8)
        field[1:] = numbered >> KEY_SHIFT
        out["feasign_field"] = ArrayFile(folder / "feasign_field.bin")
        stack.callback(out["feasign_field"].close)
        out["feasign_field"].write(field)
    n = (folder / "user.bin").stat().st_size // 4
    users = (folder / "common_offsets.bin").stat().st_size // 8 - 1
    info = {
        "format": BINARY_FORMAT,
        "rows": n,
        "users": users,
        "fields": list(fields),
        "field_ranges": meta.get("field_ranges"),  # none for a vocabulary extended by --vocab
        "sparse_feature_number": meta["sparse_feature_number"],
        "columns": {
            "sample_id": ["int64", [n]],
            "labels": ["int8", [n, 2]],
            "user": ["int32", [n]],
            "item_offsets": ["int64", [n + 1]],
            "item_ids": ["int32", [n_items]],
            "common_offsets": ["int64", [users + 1]],
            "common_ids": ["int32", [n_common]],
            "feasign_field": ["uint8", [len(numbered) + 1]],
        },
    }
    with open(folder / "dataset.json", "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
        f.write("\n")


# ---------------------------------------------------------------------------------------------
# Slot text


def prefix_table(fields):
    """[NF, P] uint8 bytes of ',field:' left-aligned, their lengths, and the mask of real bytes."""
    pre = [f",{f}:".encode() for f in fields]
    width = max(len(p) for p in pre)
    mat = np.zeros((len(pre), width), np.uint8)
    for i, p in enumerate(pre):
        mat[i, : len(p)] = np.frombuffer(p, np.uint8)
    lens = np.array([len(p) for p in pre], np.int64)
    return mat, lens, np.arange(width) < lens[:, None]


def decimal_digits(values, width: int) -> np.ndarray:
    """[N, width] ASCII digits of non-negative `values`, right-aligned, zero-padded. One division
    by the scalar 10 per column (numpy divides by a scalar much faster than by an array), in
    32 bits when the values fit (10x faster than dividing by an array of powers of ten)."""
    x = values.astype(np.uint32 if int(values.max()) < 2**32 else np.uint64)
    ten = x.dtype.type(10)
    out = np.empty((len(values), width), np.uint8)
    for c in range(width - 1, -1, -1):
        q = x // ten
        out[:, c] = x - q * ten + 48
        x = q
    return out


def render_rows(n_rows, tok_row, tok_field, tok_val, prefix, head=None, newline=False):
    """Text of `n_rows` rows: [head bytes] + `,field:feasign` per token + ['\\n'].

    tok_row [T] non-decreasing row of each token, tok_field [T] field index, tok_val [T] > 0;
    prefix: `prefix_table(fields)`. head: (src uint8 array, start [R], length [R]) copied
    verbatim at the start of each row. Every piece is laid out in one row of a fixed-width byte
    matrix; the mask of real bytes compresses it into the output in one step. Returns (bytes,
    row_len [R]).
    """
    pmat, plen, pmask = prefix
    n_tok = len(tok_row)
    h, nl = int(head is not None), int(newline)
    per_row = h + nl
    cnt = np.bincount(tok_row, minlength=n_rows)
    before = np.cumsum(cnt) - cnt
    ndig = np.searchsorted(_POW10, tok_val, side="right") if n_tok else np.zeros(0, np.int64)
    dmax = int(ndig.max()) if n_tok else 0
    hmax = int(head[2].max()) if h and n_rows else 0
    pw = pmat.shape[1]
    width = max(pw + dmax, hmax, 1)
    mat = np.zeros((n_tok + n_rows * per_row, width), np.uint8)
    mask = np.zeros(mat.shape, bool)
    row_len = np.zeros(n_rows, np.int64)
    if n_tok:
        dest = np.arange(n_tok) + tok_row * per_row + h
        mat[dest, :pw] = pmat[tok_field]
        mask[dest, :pw] = pmask[tok_field]
        cols = np.arange(dmax)
        mat[dest, pw : pw + dmax] = decimal_digits(tok_val, dmax)
        mask[dest, pw : pw + dmax] = cols >= (dmax - ndig)[:, None]
        row_len += np.bincount(tok_row, weights=plen[tok_field] + ndig, minlength=n_rows).astype(
            np.int64
        )
    rows = np.arange(n_rows)
    if h and n_rows:
        src, hstart, hlen = head
        hd = rows * per_row + before
        hc = np.arange(hmax)
        mat[hd, :hmax] = src[np.minimum(hstart[:, None] + hc, len(src) - 1)]
        mask[hd, :hmax] = hc < hlen[:, None]
        row_len += hlen
    if nl and n_rows:
        nd = rows * per_row + h + before + cnt
        mat[nd, 0] = 10
        mask[nd, 0] = True
        row_len += 1
    return mat[mask].tobytes(), row_len


def blob_index(files, lens):
    """Where each common row's rendered text is: (files, file of each row, offset, length)."""
    lens = [np.asarray(x, np.int64) for x in lens]
    none = [np.zeros(0, np.int64)]  # a split may have no common rows at all
    part = np.concatenate(none + [np.full(len(x), i, np.int64) for i, x in enumerate(lens)])
    off = np.concatenate(none + [np.cumsum(x) - x for x in lens])
    return [str(f) for f in files], part, off, np.concatenate(none + lens)


class Blobs:
    """Reads the rendered text of common rows (a `blob_index`) with pread."""

    def __init__(self, index):
        self.files, self.part, self.off, self.len = index
        self.fds = {}

    def get(self, cid):
        p = int(self.part[cid])
        fd = self.fds.get(p)
        if fd is None:
            fd = self.fds[p] = os.open(self.files[p], os.O_RDONLY)
        return os.pread(fd, int(self.len[cid]), int(self.off[cid]))

    def close(self):
        for fd in self.fds.values():
            os.close(fd)


def write_slot_rows(out, head, cid, frow, field, feasigns, prefix, blobs):
    """Write the slot lines of a batch of rows to `out` (an `ArrayFile`): each row's head
    (`head`: src, start, length), its own tokens (`frow`, `field`, `feasigns`), then its user's
    rendered common features (`blobs.get(cid)`)."""
    text, row_len = render_rows(len(cid), frow, field, feasigns, prefix, head=head)
    ends = np.cumsum(row_len).tolist()
    mv = memoryview(text)
    pieces, last, blob, a = [], -1, b"", 0
    for e, c in zip(ends, cid.tolist(), strict=True):
        if c != last:
            blob, last = blobs.get(c), c
        pieces.append(mv[a:e])
        pieces.append(blob)
        a = e
        if len(pieces) >= _PIECES_PER_WRITE:
            out.write(b"".join(pieces))
            pieces = []
    out.write(b"".join(pieces))
