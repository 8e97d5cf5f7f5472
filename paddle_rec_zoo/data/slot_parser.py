"""Vectorised parser for PaddleRec's slot text format.

A line is `sample_id,label_1,...,label_k,` followed by comma-separated tokens `field:feasign`.
Every token after the label columns that contains `:` is a feature; tokens without `:` are
ignored, and so are fields that are not in the layout. Feasigns are non-negative integers
(0 is padding). A field keeps its first `max_len` feasigns on a line; missing slots stay 0.

Whole chunks of a file are parsed with numpy (no Python loop over lines or tokens), which is
what makes reading fast enough to keep the trainer busy. A line that breaks the format is found
by the vectorised checks and then explained by `explain_line`, a slow but exact per-line parser,
so error messages name the file, the line and the problem.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.schema import MAX_FIELD_BYTES, Columns, FieldLayout

_NL, _CR, _COMMA, _COLON, _ZERO, _NINE = 10, 13, 44, 58, 48, 57
_MAX_DIGITS = 18  # fits int64 without overflow checks


@dataclass
class BadLines:
    """Lines that broke the format: count and the first few explained."""

    count: int = 0
    examples: list[str] = dataclasses.field(default_factory=list)

    def add(self, message: str, limit: int = 5):
        self.count += 1
        if len(self.examples) < limit:
            self.examples.append(message)


def _count_lines(f, end: int, block: int = 16 << 20) -> int:
    """Newlines in the first `end` bytes of the open file `f`."""
    n = 0
    f.seek(0)
    while end > 0:
        data = f.read(min(block, end))
        if not data:
            break
        n += data.count(b"\n")
        end -= len(data)
    return n


def _line_start_from(f, pos: int) -> int:
    """The offset of the first line of the open file `f` that starts at or after byte `pos`
    (`pos` at most the file's size)."""
    if pos <= 0:
        return 0
    f.seek(pos - 1)
    f.readline()  # to the end of the line holding byte pos - 1
    return f.tell()


def fold_ids(ids: np.ndarray, id_limit: int) -> np.ndarray:
    """`hash_ids`: ids at or above `id_limit` folded into [1, id_limit) by
    `1 + (id - 1) mod (id_limit - 1)`; smaller ids (0, the padding, among them) unchanged.
    Never 0: id - 1 >= 1 for a folded id, so the result is 1 or more."""
    return np.where(ids >= id_limit, 1 + (ids - 1) % (id_limit - 1), ids)


def _pack_name(name: str) -> int:
    raw = name.encode()
    return int.from_bytes(raw + b"\0" * (MAX_FIELD_BYTES - len(raw)), "little")


def _line_buffer(data: bytes) -> np.ndarray:
    """The bytes as uint8, ending with a newline, without CRs (CRLF line ends, stray CRs)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size and buf[-1] != _NL:
        buf = np.concatenate([buf, np.array([_NL], np.uint8)])
    if (buf == _CR).any():
        buf = buf[buf != _CR]
    return buf


class _Tokens:
    """The tokens of whole slot lines (separated by ',' or '\\n'): per token its `start`, `end`,
    `length`, line (`line_of`) and `index` in its line; per line its first token (`first_tok`),
    token count (`n_tok`), whether it is empty, and `bad_line` (short lines so far; the parsing
    steps mark more)."""

    def __init__(self, buf: np.ndarray, n_head: int):
        self.n_head = n_head
        is_sep = (buf == _COMMA) | (buf == _NL)
        self.end = np.flatnonzero(is_sep)
        self.start = np.empty_like(self.end)
        self.start[0:1] = 0
        self.start[1:] = self.end[:-1] + 1
        ends_line = buf[self.end] == _NL
        self.n_lines = int(ends_line.sum())
        self.line_of = np.zeros(len(self.end), np.int64)
        self.line_of[1:] = np.cumsum(ends_line[:-1])
        self.first_tok = np.flatnonzero(np.concatenate(([True], ends_line[:-1])))
        self.index = np.arange(len(self.end)) - self.first_tok[self.line_of]
        self.length = self.end - self.start
        self.n_tok = np.bincount(self.line_of, minlength=self.n_lines)
        self.empty_line = (self.n_tok == 1) & (self.length[self.first_tok] == 0)
        self.bad_line = (self.n_tok < n_head) & ~self.empty_line


class SlotParser:
    """Parse slot text into `Columns`.

    Args:
        layout: the fields to keep and how many feasigns each keeps.
        label_names: names of the label columns after sample_id (their values must be 0 or 1).
        id_limit: feasigns must be below this (the embedding table size); None = no check.
        id_limit_key: the config key to name when an id is too large.
        hash_ids: fold ids >= id_limit into [1, id_limit) (`fold_ids`) instead of rejecting
            them; ids already below the limit are unchanged.
        skip_bad: count and skip malformed lines instead of stopping at the first one.
    """

    def __init__(
        self,
        layout: FieldLayout,
        label_names: tuple[str, ...],
        id_limit: int | None = None,
        id_limit_key: str = "hyper_parameters.sparse_feature_number",
        skip_bad: bool = False,
        hash_ids: bool = False,
    ):
        self.layout = layout
        self.hash_ids = hash_ids and id_limit is not None
        self.label_names = tuple(label_names)
        self.id_limit = id_limit
        self.id_limit_key = id_limit_key
        self.skip_bad = skip_bad
        packed = np.array([_pack_name(n) for n in layout.names], dtype=np.uint64)
        self._key_order = np.argsort(packed)
        self._keys_sorted = packed[self._key_order]
        self._offsets = np.array(layout.offsets, dtype=np.int64)
        self._max_lens = np.array(layout.max_lens, dtype=np.int64)
        self._field_index = {n: i for i, n in enumerate(layout.names)}

    # ------------------------------------------------------------------ files
    def parse_file(
        self,
        path: str,
        chunk_bytes: int = 4 << 20,
        bad: BadLines | None = None,
        start: int = 0,
        end: int | None = None,
    ) -> Iterator[Columns]:
        """Yield `Columns` for consecutive chunks of whole lines of `path`: the lines that start
        in bytes [start, end) (`end` None: the end of the file).

        Cuts need not fall on line starts: a line belongs to the range its first byte is in, so
        the ranges between any cuts hold every line of the file exactly once (the data layer
        parses one file in several processes this way). Line numbers in error messages count
        from the top of the file.
        """
        bad = bad if bad is not None else BadLines()
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            first = _line_start_from(f, min(start, size))
            left = None if end is None else max(0, _line_start_from(f, min(end, size)) - first)
            line_no = _count_lines(f, first)  # lines before the current chunk
            rest = b""
            f.seek(first)
            while True:
                block = f.read(chunk_bytes if left is None else min(chunk_bytes, left))
                if left is not None:
                    left -= len(block)
                data = rest + block
                if not block:  # end of the range: the file's last line may lack its newline
                    if data:
                        yield self.parse_bytes(data, path, line_no, bad)
                    return
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # no complete line yet (a very long line): read more
                    rest = data
                    continue
                chunk, rest = data[:cut], data[cut:]
                yield self.parse_bytes(chunk, path, line_no, bad)
                line_no += chunk.count(b"\n")

    # ------------------------------------------------------------------ chunks
    def parse_bytes(
        self, data: bytes, source: str = "<bytes>", first_line: int = 0, bad: BadLines | None = None
    ) -> Columns:
        """Parse whole lines. `first_line` is the number of lines before `data` in `source`."""
        buf = _line_buffer(data)
        toks = _Tokens(buf, 1 + len(self.label_names))
        # every byte offset as the start of an unaligned little-endian uint64 (8 bytes at once)
        words = byte_words(buf)
        sample_id, labels = self._parse_head(buf, words, toks)
        line, field, value = self._parse_features(buf, words, toks)
        if toks.bad_line.any():
            self._report_bad_lines(buf, toks, source, first_line, bad)
        ids = self._scatter(line, field, value, toks.n_lines)
        keep = ~(toks.bad_line | toks.empty_line)
        return Columns(ids[keep], labels[keep], sample_id[keep])

    def _parse_head(self, buf, words, toks: _Tokens):
        """The head columns of each line: sample_id [lines] and labels [lines, k] (0 where the
        line is short); marks lines whose head is malformed bad."""
        full = (toks.n_tok >= toks.n_head) & ~toks.empty_line
        sample_id = np.zeros(toks.n_lines, np.int64)
        labels = np.zeros((toks.n_lines, len(self.label_names)), np.int8)
        head_lines = np.flatnonzero(full)
        t0 = toks.first_tok[head_lines]
        sample_id[head_lines], ok = parse_uints(buf, words, toks.start[t0], toks.end[t0])
        toks.bad_line[head_lines[~ok]] = True
        for j in range(len(self.label_names)):
            t = t0 + 1 + j
            byte = buf[toks.start[t]]
            ok = (toks.length[t] == 1) & ((byte == _ZERO) | (byte == _ZERO + 1))
            labels[head_lines, j] = (byte == _ZERO + 1) & ok
            toks.bad_line[head_lines[~ok]] = True
        return sample_id, labels

    def _parse_features(self, buf, words, toks: _Tokens):
        """The feature tokens of the layout's fields, after the head: (line, field, feasign) of
        each, in file order; marks lines with a malformed or out-of-range feasign bad."""
        # a field name is 1 to 8 bytes, so its ':' is one of the 8 bytes after the token start
        feat = np.flatnonzero((toks.index >= toks.n_head) & (toks.length >= 2))
        fstart = toks.start[feat]
        name_len = _first_byte(words[fstart + 1], _COLON) + 1  # 9 = no ':' in reach
        has = name_len < np.minimum(toks.length[feat], MAX_FIELD_BYTES + 1)
        feat, fstart, name_len = feat[has], fstart[has], name_len[has]
        colon, fend = fstart + name_len, toks.end[feat]
        key = words[fstart] & _LOW_BYTES[name_len]
        pos = np.searchsorted(self._keys_sorted, key)
        pos_c = np.minimum(pos, len(self._keys_sorted) - 1)
        known = self._keys_sorted[pos_c] == key
        feat, colon, fend = feat[known], colon[known], fend[known]
        field = self._key_order[pos_c[known]]
        value, ok = parse_uints(buf, words, colon + 1, fend)
        if self.hash_ids:
            value = fold_ids(value, self.id_limit)
        elif self.id_limit is not None:
            ok &= value < self.id_limit
        toks.bad_line[toks.line_of[feat[~ok]]] = True
        return toks.line_of[feat], field, value

    def _report_bad_lines(self, buf, toks: _Tokens, source, first_line, bad):
        """Stop at the first bad line, or (skip_bad) add them all to `bad`."""
        bad = bad if bad is not None else BadLines()
        for i in np.flatnonzero(toks.bad_line):
            where = f"{source}:{first_line + i + 1}"
            start = toks.start[toks.first_tok[i]]
            end = toks.end[toks.first_tok[i] + toks.n_tok[i] - 1]
            message = f"{where}: {self.explain_line(bytes(buf[start:end]))}"
            if not self.skip_bad:
                raise UserError(message)
            bad.add(message)

    def _scatter(self, line, field, value, n_lines: int) -> np.ndarray:
        """ids [lines, width]: the first max_len feasigns of each (line, field), in file order."""
        group = line * len(self.layout.names) + field
        order = np.argsort(group, kind="stable")
        group_sorted = group[order]
        starts = np.concatenate(([True], group_sorted[1:] != group_sorted[:-1]))
        first = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
        rank = np.arange(len(order)) - first
        sel = order[rank < self._max_lens[field[order]]]
        rank_sel = rank[rank < self._max_lens[field[order]]]
        ids = np.zeros((n_lines, self.layout.width), np.int64)
        ids[line[sel], self._offsets[field[sel]] + rank_sel] = value[sel]
        return ids

    # ------------------------------------------------------------------ messages
    def explain_line(self, line: bytes) -> str:
        """Say exactly what is wrong with one line (the slow path, for error messages)."""
        text = line.decode("utf-8", errors="replace")
        if any(ord(c) < 32 and c not in "\t" for c in text) or "\ufffd" in text:
            return "binary data, not a slot text line"
        cols = text.split(",")
        n_head = 1 + len(self.label_names)
        if len(cols) < n_head:
            names = ",".join(("sample_id",) + self.label_names)
            return (
                f"expected at least {n_head} comma-separated columns ({names}), found {len(cols)}"
            )
        if not _is_uint(cols[0]):
            return f"sample_id {_short(cols[0])} is not a non-negative integer"
        for name, value in zip(self.label_names, cols[1:n_head], strict=True):
            if value not in ("0", "1"):
                return f"{name} must be 0 or 1, got {_short(value)}"
        for token in cols[n_head:]:
            name, colon, feasign = token.partition(":")
            if not colon or name not in self._field_index:
                continue
            if not _is_uint(feasign):
                return f"field {name}: feasign {_short(feasign)} is not a non-negative integer"
            if not self.hash_ids and self.id_limit is not None and int(feasign) >= self.id_limit:
                return (
                    f"field {name}: feasign {feasign} is not below {self.id_limit_key}"
                    f"={self.id_limit}; raise {self.id_limit_key} to at least {int(feasign) + 1}"
                    " (or set hyper_parameters.hash_ids: True to fold large ids into the table)"
                )
        return "malformed line"


# ----------------------------------------------------------------------------- SWAR helpers
# Bytes are read 8 at a time as uint64 words ("SIMD within a register"), so finding a ':' and
# parsing up to 8 digits cost a handful of whole-array operations instead of one per byte.
_ONES = np.uint64(0x0101010101010101)
_HIGH_BITS = np.uint64(0x8080808080808080)
_ASCII_0 = np.uint64(0x3030303030303030)
# _LOW_BYTES[n]: a mask of the first n bytes (n = 0..8) of a little-endian word
_LOW_BYTES = np.array([(1 << (8 * n)) - 1 for n in range(9)], dtype=np.uint64)
# _ZERO_FILL[n]: '0' in the first 8 - n bytes, to left-pad an n-digit number to 8 digits
_ZERO_FILL = np.array(
    [0x3030303030303030 & ((1 << (8 * (8 - n))) - 1) for n in range(9)], np.uint64
)
_U64 = np.uint64


def byte_words(buf: np.ndarray) -> np.ndarray:
    """`words[i]` = bytes `i .. i+7` of `buf` as a little-endian uint64 (zero-padded at the end);
    `len(words) == len(buf) + 1`. A strided view of one padded copy, no per-offset copy."""
    padded = np.zeros(len(buf) + 16, np.uint8)
    padded[: len(buf)] = buf
    return np.ndarray((len(buf) + 1,), dtype="<u8", buffer=padded, offset=0, strides=(1,))


def _first_byte(word: np.ndarray, byte: int) -> np.ndarray:
    """Index (0..7) of the first byte equal to `byte` in each word; 8 where there is none."""
    v = word ^ _U64(byte * 0x0101010101010101)
    hit = (v - _ONES) & ~v & _HIGH_BITS  # exact up to the first zero byte, which is all we need
    lowest = hit & (~hit + _U64(1))  # lowest set bit: 0x80 << 8 k for byte k
    # (1 << 8 k) * 0x0001020304050607 carries k into the top byte
    index = ((lowest >> _U64(7)) * _U64(0x0001020304050607)) >> _U64(56)
    return np.where(hit == 0, 8, index.astype(np.int64))


def _eight_digits(x):
    """Value of the 8 ASCII bytes of each word `x` (the first is the most significant digit),
    and whether all 8 are digits."""
    ok = (
        (x & _U64(0xF0F0F0F0F0F0F0F0))
        | (((x + _U64(0x0606060606060606)) & _U64(0xF0F0F0F0F0F0F0F0)) >> _U64(4))
    ) == _U64(0x3333333333333333)
    x = x - _ASCII_0
    x = (x * _U64(10) + (x >> _U64(8))) & _U64(0x00FF00FF00FF00FF)
    x = (x * _U64(100) + (x >> _U64(16))) & _U64(0x0000FFFF0000FFFF)
    x = (x * _U64(10000) + (x >> _U64(32))) & _U64(0xFFFFFFFF)
    return x.astype(np.int64), ok


def parse_uints(buf, words, start, end) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative integers written in `buf[start:end]` -> (int64 values, ok); `words` is
    `byte_words(buf)`.

    `ok` is False for an empty span, a non-digit byte or more than 18 digits (value then 0).
    Spans of up to 16 digits, almost all of them, are parsed 8 bytes at a time (the last 8
    digits, then those before); longer ones digit by digit.
    """
    n = end - start
    short = (n >= 1) & (n <= 16)
    k = np.where(short, np.minimum(n, 8), 8).astype(np.uint64)  # digits in the low word
    # shift the last k digits to the end of the word and fill the front with '0': 8 digits
    low_at = np.where(short, end - k.astype(np.int64), start)
    value, ok = _eight_digits((words[low_at] << (_U64(8) * (_U64(8) - k))) | _ZERO_FILL[k])
    ok &= short
    mid = np.flatnonzero(short & (n > 8))
    if len(mid):  # 9 to 16 digits: the first n - 8 as a second word
        k = (n[mid] - 8).astype(np.uint64)
        high, high_ok = _eight_digits(
            (words[start[mid]] << (_U64(8) * (_U64(8) - k))) | _ZERO_FILL[k]
        )
        value[mid] += high * 100_000_000
        ok[mid] &= high_ok
    value = np.where(ok, value, 0)
    long = np.flatnonzero((n > 16) & (n <= _MAX_DIGITS))
    if len(long):
        s, m = start[long], n[long]
        v = np.zeros(len(long), np.int64)
        good = np.ones(len(long), bool)
        for j in range(int(m.max())):
            live = j < m
            digit = buf[np.where(live, s + j, 0)].astype(np.int64) - _ZERO
            good &= ~live | ((digit >= 0) & (digit <= 9))
            v = np.where(live, v * 10 + digit, v)
        value[long] = np.where(good, v, 0)
        ok[long] = good
    return value, ok


def _is_uint(s: str) -> bool:
    return s.isascii() and s.isdigit() and len(s) <= _MAX_DIGITS


def _short(s: str, n: int = 40) -> str:
    return repr(s if len(s) <= n else s[:n] + "...")
