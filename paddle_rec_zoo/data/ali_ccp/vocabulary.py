"""The converter's vocabulary: counting (field, id) keys, numbering them, vocab.txt.

A key is ``field_index << KEY_SHIFT | feature_id`` (raw_parse.py). Keys seen in at least
`min_count` train impressions are numbered by (field order, id): feasign = rank + 1, one
contiguous range per field, 0 for padding and "unseen". An extended vocabulary (``--vocab``)
keeps an earlier run's numbers and appends the new keys after them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from paddle_rec_zoo.data.ali_ccp import FIELDS
from paddle_rec_zoo.data.ali_ccp.raw_parse import KEY_SHIFT, MAX_DIGITS
from paddle_rec_zoo.errors import UserError

VOCAB_FILE = "vocab.txt"  # line n: `field:raw_feature_id` of feasign n


def feasign_order(fields=FIELDS) -> tuple[str, ...]:
    """The order of the converter's feasign ranges: the fields in `fields`' order, except that
    the user-history fields (names ending in ``_14``) come right after the other user fields
    (names starting with ``1``): user id and profile, histories, then item, crosses, context.
    This is the order of the converter's outputs since its first version (vocab.txt, the
    synthetic generator's feasigns and the bundled sample keep it)."""

    def group(f):
        return 1 if f.endswith("_14") else 0 if f.startswith("1") else 2

    return tuple(sorted(fields, key=group))  # sorted() is stable: PaddleRec's order within


FEASIGN_ORDER = feasign_order()


def sum_counts(keys, counts):
    """Combine duplicate keys: (sorted unique keys, summed counts)."""
    if len(keys) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    start = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[start], np.add.reduceat(counts, start)


def _merge(parts):
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return sum_counts(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


class Counts:
    """Running (key, count) totals; new parts are buffered and merged in batches."""

    BUFFER = 8_000_000  # keys buffered before a merge

    def __init__(self):
        self.parts, self.buffered = [], 0

    def add(self, keys, counts):
        self.parts.append((keys, counts))
        self.buffered += len(keys)
        if self.buffered > self.BUFFER:
            self.parts = [_merge(self.parts)]
            self.buffered = 0

    def add_weighted(self, keys, weights):
        """Add keys with repeats, each with its weight."""
        self.add(*sum_counts(keys, weights))

    def result(self):
        """(sorted keys, their totals)."""
        return _merge(self.parts)


def search(table, needles):
    """`np.searchsorted(table, needles)`, about 4x faster for many needles in a large table:
    searching them in sorted order keeps the binary search's path in the CPU cache."""
    if len(needles) < 4096 or len(table) < 65536:
        return np.searchsorted(table, needles)
    order = np.argsort(needles)
    pos = np.empty(len(needles), np.int64)
    pos[order] = np.searchsorted(table, needles[order])
    return pos


class Vocabulary:
    """The numbered keys: `numbered[i]` has feasign i + 1; `extended` if it continues an earlier
    vocabulary (then its ids are not in key order, and fields have no contiguous ranges)."""

    def __init__(self, numbered, extended=False):
        self.numbered, self.extended = numbered, extended
        if extended:
            order = np.argsort(numbered, kind="stable")
            self.keys, self.ids = numbered[order], order + 1
        else:
            self.keys, self.ids = numbered, None

    def __len__(self):
        return len(self.numbered)

    def lookup(self, keys):
        """Feasign of each key (0 = not in the vocabulary)."""
        if len(self.keys) == 0:
            return np.zeros(len(keys), np.int64)
        pos = np.minimum(search(self.keys, keys), len(self.keys) - 1)
        ids = pos + 1 if self.ids is None else self.ids[pos]
        return np.where(self.keys[pos] == keys, ids, 0)

    def meta(self, fields):
        """`vocab_size`, `sparse_feature_number` and (unless extended) `field_ranges`."""
        per = np.bincount((self.numbered >> KEY_SHIFT).astype(np.int64), minlength=len(fields))
        start = np.cumsum(per) - per + 1
        meta = {
            "vocab_size": {
                "per_field": {f: int(n) for f, n in zip(fields, per, strict=True)},
                "total": len(self),
            },
            "sparse_feature_number": len(self) + 1,
        }
        if not self.extended:
            meta["field_ranges"] = {
                f: [int(s), int(s + n - 1)] for f, s, n in zip(fields, start, per, strict=True)
            }
        return meta


def build(keys, counts, min_count, base=None, frozen=False):
    """The vocabulary of sorted `keys` with their train `counts`: those counted at least
    `min_count` times, after the keys of `base` (an earlier vocabulary's keys in feasign order)
    if given, or none of them if `frozen`. Returns (Vocabulary, number of new keys)."""
    kept = keys[counts >= min_count]
    if base is None:
        return Vocabulary(kept), len(kept)
    new = kept[:0] if frozen else kept[~np.isin(kept, base)]
    return Vocabulary(np.concatenate([base, new]), extended=True), len(new)


def write_vocab(path: Path, numbered, fields):
    """`vocab.txt`: line n is `field:raw_feature_id` of feasign n (0, padding, has no line)."""
    names = np.asarray(fields, dtype=object)[(numbered >> KEY_SHIFT).astype(np.int64)]
    ids = (numbered & ((1 << KEY_SHIFT) - 1)).tolist()
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for start in range(0, len(ids), 1 << 20):
            part = slice(start, start + (1 << 20))
            f.write("".join(f"{n}:{i}\n" for n, i in zip(names[part], ids[part], strict=True)))


def read_vocab(path, fields) -> np.ndarray:
    """The keys of an earlier `vocab.txt` (or of the one in folder `path`), in feasign order."""
    path = Path(path)
    if path.is_dir():
        path = path / VOCAB_FILE
    if not path.is_file():
        raise UserError(
            f"--vocab: {path} not found (give an earlier --out folder or its {VOCAB_FILE})"
        )
    index = {f: i for i, f in enumerate(fields)}
    lines = path.read_bytes().split(b"\n")  # numpy's string kernels, not a loop per line
    if lines and not lines[-1]:
        lines.pop()
    field, sep, fid = np.char.partition(np.array(lines or [b""], dtype=bytes), b":").T
    ok = (sep == b":") & np.char.isdigit(fid) & (np.char.str_len(fid) <= MAX_DIGITS)
    if lines and not ok.all():
        n = int(np.flatnonzero(~ok)[0])
        raise UserError(
            f"{path}:{n + 1}: expected field:feature_id, got {lines[n].decode(errors='replace')!r}"
        )
    names, which = np.unique(field, return_inverse=True)
    for k, name in enumerate(names.tolist()):
        if lines and name.decode(errors="replace") not in index:
            n = int(np.flatnonzero(which == k)[0])
            raise UserError(
                f"{path}:{n + 1}: field {name.decode(errors='replace')} is not converted "
                "(--fields); an extended vocabulary needs every field of the old one"
            )
    if not lines:
        return np.zeros(0, np.int64)
    field_index = np.array([index[name.decode()] for name in names.tolist()], np.int64)
    keys = (field_index[which] << KEY_SHIFT) | fid.astype(np.int64)
    ordered = np.sort(keys)  # duplicates by sorting (numpy 2.4 hashes in np.unique: slower)
    if (ordered[1:] == ordered[:-1]).any():
        raise UserError(f"{path}: a field:feature_id pair appears on two lines")
    return keys
