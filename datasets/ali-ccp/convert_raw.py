#!/usr/bin/env python3
"""Convert the raw Ali-CCP files (Tianchi data set 408) into the binary data set the trainers
read, or into PaddleRec's slot format.

    python datasets/ali-ccp/convert_raw.py --raw RAW_DIR --out OUT_DIR [--min-count N]
        [--workers N] [--skip-bad] [--force] [--fields 101,121,...] [--no-jit] [--no-direct-io]
        [--format binary|slot] [--vocab OLD_OUT [--freeze-vocab]]

Input (``RAW_DIR``): ``sample_skeleton_{train,test}.csv`` with rows
``sample_id,click,buy,common_feature_index,feature_num,feature_list`` and
``common_features_{train,test}.csv`` with rows ``common_feature_index,feature_num,feature_list``;
a feature list is ``field\\x02feature_id\\x03value`` items joined by ``\\x01``.

Output (``OUT_DIR``): ``train_data/``, ``test_data/`` and ``meta.json``. By default each split
folder is a normalised binary data set (``dataset.json`` and flat arrays: per impression its
sample id, labels, own feasigns and the row of its user's common feasigns, which are stored once;
layout in ``paddle_rec_zoo/binary_data.py``). With ``--format slot``: ``part-NNNNN.txt`` files, one
line per kept skeleton row, ``sample_id,click,buy`` then ``,field:feasign`` tokens (the
skeleton's features in their raw order, then the user's common features in their raw order).
Both forms hold the same rows and ids. Also ``vocab.txt`` (line n: ``field:feature_id`` of
feasign n).

What happens, in order (every step streams; nothing grows with the skeleton). Each step is a
pool of worker processes over byte ranges (or runs of rows) of its files:

1. Both ``common_features_*.csv`` are parsed once into compact binary side files of int64 keys
   ``field_index << 56 | feature_id`` (one run per common row) plus, per split, a sorted array
   of 64-bit hashes of the ``common_feature_index`` strings.
2. Train skeleton, pass 1: count every kept (field, id) key and how many kept rows reference each
   common row; ``click=0,buy=1`` rows are dropped and counted. The parsed rows (heads, keys,
   common row ids) are kept in a binary side file per byte range, so pass 2 does not parse the
   text again.
3. The common train keys are counted with those reference counts as weights, so a key's count is
   the number of train impressions it occurs in, whichever file it comes from. Keys with count >=
   ``min_count`` form the vocabulary, sorted by (field order, id): feasign = rank + 1, so every
   field gets one contiguous range and 0 stays padding (and means "unseen"). With ``--vocab``
   the pairs of an earlier ``vocab.txt`` keep their feasigns and only new pairs are numbered,
   after them (day-by-day training: a model trained on the earlier data means the same rows).
4. Each common row of both splits is encoded once: its feasigns (binary), or its slot text
   (``,109_14:17,...\\n``) in a blob file on disk whose texts skeleton rows read with ``os.preadv``.
5. Both skeletons are encoded with that one vocabulary (test ids unseen in train are not
   written): train from pass 1's side files (each deleted when done), test from its text; one
   part per byte range, in file order (binary parts are then joined into one array per
   column). The slot text (~17x the raw input: every
   impression repeats its user's common features) is written with O_DIRECT where the file system
   takes it, from a background thread, so the page cache is neither paid for nor flooded.

The hot loops (parse, hash-table counts and lookups, rendering) are compiled with numba when it
is installed (``--no-jit``: numpy only, 1.5-2.9x slower, the same bytes out); a block with a line
that is not well formed is always parsed by the numpy code, whose checks name the problem.

Everything is written into ``OUT_DIR/.convert-tmp-*`` and renamed into place at the end, so an
interrupted or failed run never leaves half-written ``train_data/``/``test_data/``.

Malformed lines stop the run with ``file:line: problem`` (exit status 2, no traceback), or with
``--skip-bad`` are counted and skipped. A skeleton row whose ``common_feature_index`` is not in the
split's common-features file is treated the same way (it cannot be encoded faithfully).

Self-contained (stdlib + numpy + tqdm, numba optional): it is loaded by path, not imported as a
package.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.util
import json
import math
import multiprocessing as mp
import os
import queue
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

# Compiled kernels (parse, render, copy, hash tables) need numba; without it the numpy kernels do
# everything. numba is imported only when a conversion starts (`_load_kernels`): it takes ~0.2 s,
# and the scripts that import this one for FIELDS do not need it.
HAVE_NUMBA = importlib.util.find_spec("numba") is not None
_LOADED = None  # None, or whether the loaded kernels are cached on disk

# The 23 Ali-CCP fields, in the project's field order (user, user histories, item, crosses,
# context). The order fixes the feasign ranges: field i's ids come before field i+1's.
FIELDS = (
    "101", "121", "122", "124", "125", "126", "127", "128", "129",
    "109_14", "110_14", "127_14", "150_14",
    "205", "206", "207", "210", "216",
    "508", "509", "702", "853",
    "301",
)  # fmt: skip
FIELD_MEANING = {
    "101": "user id",
    "121": "user profile (micro group)",
    "122": "user profile (cms group)",
    "124": "user gender",
    "125": "user age",
    "126": "user consumption level 1",
    "127": "user consumption level 2",
    "128": "user occupation",
    "129": "user geography",
    "109_14": "user history: categories",
    "110_14": "user history: shops",
    "127_14": "user history: brands",
    "150_14": "user history: intention nodes",
    "205": "item id",
    "206": "item category",
    "207": "item shop",
    "210": "item intention nodes",
    "216": "item brand",
    "508": "cross: user (gender, age) x category",
    "509": "cross: user x shop",
    "702": "cross: user x brand",
    "853": "cross: user x intention node",
    "301": "context: position",
}
SPLITS = ("train", "test")
VOCAB_FILE = "vocab.txt"  # line n: `field:raw_feature_id` of feasign n
SKELETON = "sample_skeleton_{}.csv"
COMMON = "common_features_{}.csv"

KEY_SHIFT = 56  # key = field_index << 56 | feature_id
MAX_DIGITS = 16  # ids below 10**16 < 2**56 fit the key
BLOCK_BYTES = 8 << 20  # bytes parsed at a time by a worker (bounds its memory)
TASK_BYTES = 64 << 20  # bytes of raw input per task, and per output part file
_PIECES_PER_WRITE = 1024
EXIT_USER_ERROR = 2
BINARY_FORMAT = "ali-ccp-binary/1"  # the marker paddle_rec_zoo/binary_data.py looks for
PART_COLUMNS = ("sample_id", "labels", "user", "item_len", "item_ids")
COMMON_COLUMNS = ("common_offsets", "common_ids")
FORMATS = ("binary", "slot")

_POW10 = np.array([10**i for i in range(MAX_DIGITS + 1)], np.int64)


class ConvertError(Exception):
    """A problem the user can fix (bad input, existing output); printed without a traceback."""


# ---------------------------------------------------------------------------------------------
# Tokens: hashing and digits, vectorised with 64-bit word loads (SWAR)
#
# A block is padded (8 bytes before, 264 after) and viewed as an unaligned uint64 at every byte
# offset, so the 8 bytes at any position come out in one gather. A token of up to 16 digits is
# two such words; 8 ASCII digits become a number in three multiply-shift steps.

_PAD_BEFORE, _PAD_AFTER = 8, 264
_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
_LOW_MASK = np.array([(1 << (8 * i)) - 1 for i in range(8)] + [(1 << 64) - 1], np.uint64)
_ZEROS = np.uint64(0x3030303030303030)  # eight ASCII '0'
_SIX = np.uint64(0x0606060606060606)
_HIGH_NIBBLES = np.uint64(0xF0F0F0F0F0F0F0F0)
_M1 = np.uint64(0x000000FF000000FF)
_MUL1 = np.uint64(100 + (1000000 << 32))
_MUL2 = np.uint64(1 + (10000 << 32))
_HASH_P = 0x100000001B3  # FNV-1 64-bit prime
_HASH_MIX = 0x9E3779B97F4A7C15
_HASH_WORDS = 32  # tokens longer than 256 bytes are hashed on their first 256 bytes
_U64 = (1 << 64) - 1


def hash_bytes(token: bytes) -> int:
    """Python twin of `_hash_tokens`: fold the 8-byte little-endian words of the token."""
    h = (len(token) * _HASH_MIX) & _U64
    for i in range(0, min(len(token), 8 * _HASH_WORDS), 8):
        w = int.from_bytes(token[i : i + 8], "little")
        h = ((h ^ w) * _HASH_P) & _U64
    return h


class _Padded:
    """A block with padding, as bytes (`arr`) and as a uint64 at every byte offset (`words`)."""

    def __init__(self, buf: bytes):
        self.buf = b"\0" * _PAD_BEFORE + buf + b"\0" * _PAD_AFTER
        self.arr = np.frombuffer(self.buf, np.uint8)
        self.words = np.ndarray((len(self.buf) - 7,), "<u8", self.buf, 0, (1,))


def _hash_tokens(pb: _Padded, starts, lens):
    """uint64 hash of each token pb.buf[starts:starts+lens] (exact key for up to 8 bytes)."""
    h = lens.astype(np.uint64) * np.uint64(_HASH_MIX)
    if len(starts) == 0:
        return h
    n_words = min(int((lens.max() + 7) // 8), _HASH_WORDS)
    for i in range(n_words):
        take = np.clip(lens - 8 * i, 0, 8)
        w = pb.words[starts + 8 * i] & _LOW_MASK[take]
        h = np.where(take > 0, (h ^ w) * np.uint64(_HASH_P), h)
    return h


def _eight_digits(w, n):
    """Value of the last `n` (0..8) ASCII digits in words `w` and whether they are digits.

    `w` holds the 8 bytes ending at the token's end; the bytes before the token become '0'.
    """
    low = _LOW_MASK[8 - n]
    w = (w & ~low) | (_ZEROS & low)
    ok = ((w & _HIGH_NIBBLES) == _ZEROS) & (((w + _SIX) & _HIGH_NIBBLES) == _ZEROS)
    v = w - _ZEROS
    v = v * np.uint64(10) + (v >> np.uint64(8))
    v = ((v & _M1) * _MUL1 + ((v >> np.uint64(16)) & _M1) * _MUL2) >> np.uint64(32)
    return v.astype(np.int64), ok


def _parse_uint(pb: _Padded, starts, ends):
    """Decimal value of each token and whether it is 1..16 ASCII digits."""
    lens = ends - starts
    ok = (lens >= 1) & (lens <= MAX_DIGITS)
    if len(starts) == 0:
        return np.zeros(0, np.int64), ok
    n_lo = np.clip(lens, 0, 8)
    lo, ok_lo = _eight_digits(pb.words[ends - 8], n_lo)
    value, ok = lo, ok & ok_lo
    if lens.max() > 8:
        n_hi = np.clip(lens - 8, 0, 8)
        hi, ok_hi = _eight_digits(pb.words[np.maximum(ends - 16, 0)], n_hi)
        value = hi * 100_000_000 + lo
        ok &= ok_hi
    return value, ok


# Allowed delimiter transitions within and between lines: ',' -> ',' STX NL; STX -> ETX;
# ETX -> SOH NL; SOH -> STX; NL -> ',' NL. Anything else marks the line of the second one bad.
_DELIMS = (ord(","), 1, 2, 3, 10)
_TRANSITION_OK = np.zeros((64, 64), bool)
for _a, _bs in ((",", ",\x02\n"), ("\x02", "\x03"), ("\x03", "\x01\n"), ("\x01", "\x02"),
                ("\n", ",\n")):  # fmt: skip
    for _b in _bs:
        _TRANSITION_OK[ord(_a) & 63, ord(_b) & 63] = True


class Block:
    """One parsed block of raw lines (skeleton: 5 head columns, common: 2).

    Per good line: `line_start` [G] byte offset in the block, `head_end` [G] end of
    `sample_id,click,buy` (skeleton), `click`, `buy` [G] int8, `cfi` [G] uint64 hash.
    Per kept feature: `feat_row` [F] index into the good lines (non-decreasing), `key` [F] int64.
    `bad_offsets`: block offsets of the malformed lines; `n_lines`: non-blank lines.
    """


def parse_block(buf: bytes, n_head: int, field_hashes, field_index) -> Block:
    """Parse complete lines (buf ends with a newline) with numpy only, no loop over lines.

    With the compiled kernels on, a block of well-formed lines is parsed by `_jit_parse`."""
    if _S.get("jit"):
        b = _parse_compiled(buf, n_head, field_hashes, field_index)
        if b is not None:
            return b
    pb = _Padded(buf)
    arr = pb.arr
    body = arr[_PAD_BEFORE : _PAD_BEFORE + len(buf)]
    is_delim = (body == 44) | (body == 10) | ((body >= 1) & (body <= 3))
    dpos = np.flatnonzero(is_delim) + _PAD_BEFORE  # every delimiter ends one token
    dcls = arr[dpos]
    is_nl = dcls == 10
    nl = np.flatnonzero(is_nl)
    n_lines = len(nl)
    first = np.zeros(n_lines, np.int64)  # index of each line's first delimiter
    first[1:] = nl[:-1] + 1
    line_start = np.full(n_lines, _PAD_BEFORE, np.int64)
    line_start[1:] = dpos[nl[:-1]] + 1
    nl_cum = np.cumsum(is_nl)

    # Structure: transitions between consecutive delimiters, commas and features per line.
    prev = np.empty(len(dcls), np.uint8)
    prev[0], prev[1:] = 10, dcls[:-1]
    wrong = np.flatnonzero(~_TRANSITION_OK[prev & 63, dcls & 63])
    bad = np.zeros(n_lines, bool)
    bad[nl_cum[wrong] - is_nl[wrong]] = True
    # With valid transitions a line is n commas, then STX ETX (SOH STX ETX)* or nothing, then NL:
    # it has n_head commas iff its delimiter n_head - 1 is a comma and delimiter n_head is not.
    has = first + n_head <= nl
    at = np.minimum(first + n_head, len(dcls) - 1)
    blank = (first == nl) & (dpos[nl] == line_start)
    bad |= ~(has & (dcls[at - 1] == 44) & (dcls[at] != 44)) & ~blank
    n_feat = (nl - first - n_head + 1) // 3
    is_stx = dcls == 2
    # An empty feature list ends ",\n"; text after the last comma must be a feature list.
    before_nl = np.where(nl > first, dcls[np.maximum(nl - 1, 0)], 10)
    bad |= (before_nl == 44) & (dpos[nl] - dpos[np.maximum(nl - 1, 0)] > 1)

    # Head columns of structurally sound lines.
    ok_lines = np.flatnonzero(~bad & ~blank)
    f0 = first[ok_lines]
    ends = [dpos[f0 + c] for c in range(n_head + 1)]  # end of column c (the list ends at NL)
    starts = [line_start[ok_lines]] + [e + 1 for e in ends[:-1]]
    head_ok = np.ones(len(ok_lines), bool)
    if n_head == 5:
        head_ok &= _parse_uint(pb, starts[0], ends[0])[1]
        click_b, buy_b = arr[starts[1]], arr[starts[2]]
        head_ok &= (ends[1] - starts[1] == 1) & (ends[2] - starts[2] == 1)
        head_ok &= ((click_b == 48) | (click_b == 49)) & ((buy_b == 48) | (buy_b == 49))
    c = n_head - 2
    head_ok &= ends[c] > starts[c]
    cfi = _hash_tokens(pb, starts[c], ends[c] - starts[c])
    fnum, fnum_ok = _parse_uint(pb, starts[c + 1], ends[c + 1])
    head_ok &= fnum_ok & (fnum == n_feat[ok_lines])

    # Features of sound lines: the field token ends at STX, its id at the ETX right after.
    row_of_line = np.full(n_lines, -1, np.int64)
    row_of_line[ok_lines] = np.arange(len(ok_lines))
    ftok = np.flatnonzero(is_stx)
    frow = row_of_line[nl_cum[ftok]]
    ftok, frow = ftok[frow >= 0], frow[frow >= 0]
    fstart = dpos[ftok - 1] + 1
    flen = dpos[ftok] - fstart
    fhash = _hash_tokens(pb, fstart, flen)
    pos = np.minimum(np.searchsorted(field_hashes, fhash), len(field_hashes) - 1)
    fidx = np.where(field_hashes[pos] == fhash, field_index[pos], -1)
    keep = fidx >= 0
    ids, id_ok = _parse_uint(pb, dpos[ftok[keep]] + 1, dpos[ftok[keep] + 1])
    row_bad = ~head_ok
    row_bad[frow[flen == 0]] = True
    row_bad[frow[keep][~id_ok]] = True
    bad[ok_lines[row_bad]] = True

    good_rows = ~row_bad
    new_row = np.cumsum(good_rows) - 1
    fkeep_row = frow[keep]
    fsel = good_rows[fkeep_row]
    g = ok_lines[good_rows]
    b = Block()
    b.n_lines = int(n_lines - blank.sum())
    b.line_start = line_start[g] - _PAD_BEFORE
    b.cfi = cfi[good_rows]
    if n_head == 5:
        b.click = (click_b[good_rows] - 48).astype(np.int8)
        b.buy = (buy_b[good_rows] - 48).astype(np.int8)
        b.head_end = ends[2][good_rows] - _PAD_BEFORE
    b.feat_row = new_row[fkeep_row[fsel]]
    b.key = (fidx[keep][fsel].astype(np.int64) << KEY_SHIFT) | ids[fsel]
    b.bad_offsets = line_start[bad] - _PAD_BEFORE
    return b


def explain_line(line: bytes, n_head: int, kept_fields) -> str:
    """What is wrong with one raw line (slow, exact twin of the checks in `parse_block`)."""
    line = line.rstrip(b"\n")
    cols = line.split(b",", n_head)
    names = ["sample_id", "click", "buy"] if n_head == 5 else []
    names += ["common_feature_index", "feature_num", "feature_list"]
    if len(cols) < n_head + 1 or b"," in cols[-1]:
        found = line.count(b",") + 1
        return f"expected {n_head + 1} comma-separated columns ({','.join(names)}), found {found}"

    def show(x: bytes) -> str:
        return repr(x.decode("utf-8", "replace"))[:40]

    def is_uint(x: bytes) -> bool:
        return 1 <= len(x) <= MAX_DIGITS and x.isdigit() and x.isascii()

    if n_head == 5:
        if not is_uint(cols[0]):
            return f"sample_id {show(cols[0])} is not a non-negative integer"
        for name, x in (("click", cols[1]), ("buy", cols[2])):
            if x not in (b"0", b"1"):
                return f"{name} must be 0 or 1, got {show(x)}"
    if not cols[n_head - 2]:
        return "empty common_feature_index"
    items = cols[-1].split(b"\x01") if cols[-1] else []
    for i, item in enumerate(items, 1):
        a, b = item.find(b"\x02"), item.find(b"\x03")
        if item.count(b"\x02") != 1 or item.count(b"\x03") != 1 or not 0 <= a < b:
            return f"feature {i} is not field\\x02feature_id\\x03value: {show(item)}"
        field, fid = item[:a], item[a + 1 : b]
        if not field:
            return f"feature {i} has an empty field name"
        if field.decode("utf-8", "replace") in kept_fields and not is_uint(fid):
            return (
                f"feature {i} (field {field.decode()}): feature_id {show(fid)} is not an "
                f"integer of 1 to {MAX_DIGITS} digits"
            )
    fnum = cols[n_head - 1]
    if not is_uint(fnum):
        return f"feature_num {show(fnum)} is not an integer"
    if int(fnum) != len(items):
        return f"feature_num says {int(fnum)} but {len(items)} features found"
    return "malformed line"


# ---------------------------------------------------------------------------------------------
# Rendering `,field:feasign` tokens


def _prefix_table(fields):
    """[NF, P] uint8 bytes of ',field:' left-aligned, and their lengths."""
    pre = [f",{f}:".encode() for f in fields]
    width = max(len(p) for p in pre)
    mat = np.zeros((len(pre), width), np.uint8)
    for i, p in enumerate(pre):
        mat[i, : len(p)] = np.frombuffer(p, np.uint8)
    lens = np.array([len(p) for p in pre], np.int64)
    return mat, lens, np.arange(width) < lens[:, None]


def _decimal_digits(values, width: int) -> np.ndarray:
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

    tok_row [T] non-decreasing row of each token, tok_field [T] field index, tok_val [T] > 0.
    head: (src uint8 array, start [R], length [R]) copied verbatim at the start of each row.
    Every piece is laid out in one row of a fixed-width byte matrix; the mask of real bytes
    compresses it into the output in one step. Returns (bytes, row_len [R]).
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
        mat[dest, pw : pw + dmax] = _decimal_digits(tok_val, dmax)
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


# ---------------------------------------------------------------------------------------------
# Compiled kernels (numba), used when numba is installed (it is in requirements.txt) unless
# `jit=False`. The numpy kernels above stay the reference: a block with any line that is not well
# formed goes to `parse_block` for its checks and messages, and the tests compare both outputs.


def _load_kernels(cache=None):
    """Import numba and define the compiled kernels, once per process (they are cached on
    disk by numba, so only the first run on a machine compiles them: 2.5-5 s). cache=False
    defines them anew without numba's disk cache (where no cache folder is writable)."""
    global _LOADED, _memcpy, _jit_hash, _jit_uint, _jit_token_end, _jit_field, _jit_parse
    global _jit_count_bytes, _jit_table_put, _jit_table_get, _jit_rows
    if _LOADED is not None and cache in (None, _LOADED):
        return
    cache = True if cache is None else cache
    import numba
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    _njit = numba.njit(cache=cache, nogil=True)

    @intrinsic
    def _memcpy(typingctx, dst, dst_at, src, src_at, n):
        """dst[dst_at:dst_at+n] = src[src_at:src_at+n] as one memcpy (a slice assignment in
        numba copies byte by byte, 4x slower)."""
        sig = types.void(dst, dst_at, src, src_at, n)

        def codegen(context, builder, signature, args):
            d, d_at, s, s_at, count = args
            da = context.make_array(signature.args[0])(context, builder, d)
            sa = context.make_array(signature.args[2])(context, builder, s)
            dp, sp = builder.gep(da.data, [d_at]), builder.gep(sa.data, [s_at])
            cgutils.raw_memcpy(builder, dp, sp, count, 1)

        return sig, codegen

    @_njit
    def _jit_hash(a, s, e):
        """`hash_bytes(a[s:e])`, as `_hash_tokens` computes it."""
        n = e - s
        h = np.uint64(n) * np.uint64(_HASH_MIX)
        for i in range(min((n + 7) // 8, _HASH_WORDS)):
            w = np.uint64(0)
            for k in range(min(8, n - 8 * i)):
                w |= np.uint64(a[s + 8 * i + k]) << np.uint64(8 * k)
            h = (h ^ w) * np.uint64(_HASH_P)
        return h

    @_njit
    def _jit_uint(a, s, e):
        """Value of a[s:e], or -1 unless it is 1 to MAX_DIGITS ASCII digits."""
        if e - s < 1 or e - s > MAX_DIGITS:
            return -1
        v = 0
        for i in range(s, e):
            d = np.int64(a[i]) - 48
            if d < 0 or d > 9:
                return -1
            v = v * 10 + d
        return v

    @_njit
    def _jit_token_end(a, pos):
        """Position of the first delimiter (, \n \x01 \x02 \x03) at or after pos."""
        while not _IS_DELIM[a[pos]]:
            pos += 1
        return pos

    @_njit
    def _jit_field(fhash, findex, h):
        """Index of the kept field with token hash h, or -1: `fhash` is an open-addressing
        table of _FIELD_SLOTS hashes (0 = empty), `findex` the field index in each slot."""
        j = np.int64(h >> np.uint64(64 - _FIELD_BITS))
        while True:
            if fhash[j] == h:
                return findex[j]
            if fhash[j] == 0:
                return -1
            j = (j + 1) & (_FIELD_SLOTS - 1)

    @_njit
    def _jit_parse(a, n_head, fhash, findex, line_start, head_end, click, buy, cfi, frow, key):
        """`parse_block` for a block whose lines are all well formed. Returns (lines, kept
        features), or (-1, -1) at the first line that is not (or is blank)."""
        pos, row, nf = 0, 0, 0
        while pos < len(a):
            line_start[row] = pos
            fnum = -1
            for c in range(n_head):  # the head columns, each ended by a comma
                s = pos
                e = _jit_token_end(a, pos)
                if a[e] != 44:
                    return -1, -1
                pos = e + 1
                if c == n_head - 1:
                    fnum = _jit_uint(a, s, e)
                    if fnum < 0:
                        return -1, -1
                elif c == n_head - 2:
                    if e == s:
                        return -1, -1
                    cfi[row] = _jit_hash(a, s, e)
                elif c == 0:  # sample_id
                    if _jit_uint(a, s, e) < 0:
                        return -1, -1
                else:  # click, buy
                    if e - s != 1 or (a[s] != 48 and a[s] != 49):
                        return -1, -1
                    if c == 1:
                        click[row] = a[s] - 48
                    else:
                        buy[row] = a[s] - 48
                        head_end[row] = e
            count = 0
            if a[pos] == 10:  # empty feature list
                pos += 1
            else:  # field \x02 id \x03 value, joined by \x01, ended by \n
                while True:
                    s = pos
                    e = _jit_token_end(a, s)
                    if a[e] != 2 or e == s:
                        return -1, -1
                    i1 = _jit_token_end(a, e + 1)
                    if a[i1] != 3:
                        return -1, -1
                    v1 = _jit_token_end(a, i1 + 1)
                    if a[v1] != 1 and a[v1] != 10:
                        return -1, -1
                    count += 1
                    f = _jit_field(fhash, findex, _jit_hash(a, s, e))
                    if f >= 0:
                        v = _jit_uint(a, e + 1, i1)
                        if v < 0:
                            return -1, -1
                        frow[nf] = row
                        key[nf] = (f << KEY_SHIFT) | v
                        nf += 1
                    pos = v1 + 1
                    if a[v1] == 10:
                        break
            if count != fnum:
                return -1, -1
            row += 1
        return row, nf

    @_njit
    def _jit_count_bytes(a, x, y):
        """How many bytes of a are x, and how many are y."""
        nx = ny = 0
        for c in a:
            nx += c == x
            ny += c == y
        return nx, ny

    @_njit
    def _jit_table_put(tk, tv, shift, keys, vals, add, start, limit):
        """Put keys[start:] into the open-addressing table (keys tk, values tv; value 0 marks an
        empty slot, so vals must not be 0): add=True sums vals into a key's value, else sets it.
        Stops before the table holds more than `limit` keys. Returns (new keys, where it
        stopped)."""
        mask = len(tk) - 1
        new = 0
        for i in range(start, len(keys)):
            k = keys[i]
            j = np.int64((np.uint64(k) * np.uint64(_HASH_MIX)) >> np.uint64(shift))
            while tv[j] != 0 and tk[j] != k:
                j = (j + 1) & mask
            if tv[j] == 0:
                if new >= limit:
                    return new, i
                tk[j] = k
                tv[j] = vals[i]
                new += 1
            elif add:
                tv[j] += vals[i]
            else:
                tv[j] = vals[i]
        return new, len(keys)

    @_njit
    def _jit_table_get(tk, tv, shift, keys, out):
        """out[i] = value of keys[i] in the table, 0 if absent."""
        mask = len(tk) - 1
        for i in range(len(keys)):
            k = keys[i]
            j = np.int64((np.uint64(k) * np.uint64(_HASH_MIX)) >> np.uint64(shift))
            while tv[j] != 0 and tk[j] != k:
                j = (j + 1) & mask
            out[i] = tv[j]

    @_njit
    def _jit_rows(out, heads, hoff, hlen, tok_ptr, tok_field, tok_val, pre, plen, blobs, boff,
                  blen, row_blob, newline, row_len):  # fmt: skip
        """Write rows into `out`: each is its head bytes, `,field:feasign` for its tokens
        (tok_ptr[r]:tok_ptr[r+1]), its blob (row_blob[r] >= 0), ['\n']. Returns the bytes
        written; row_len[r] gets each row's length."""
        p = 0
        for r in range(len(tok_ptr) - 1):
            p0 = p
            _memcpy(out, p, heads, hoff[r], hlen[r])
            p += hlen[r]
            for t in range(tok_ptr[r], tok_ptr[r + 1]):
                f = tok_field[t]
                for i in range(plen[f]):
                    out[p + i] = pre[f, i]
                p += plen[f]
                v = tok_val[t]
                n, x = 1, v // 10
                while x:
                    n += 1
                    x //= 10
                for i in range(n - 1, -1, -1):
                    out[p + i] = 48 + v % 10
                    v //= 10
                p += n
            b = row_blob[r]
            if b >= 0:
                _memcpy(out, p, blobs, boff[b], blen[b])
                p += blen[b]
            if newline:
                out[p] = 10
                p += 1
            row_len[r] = p - p0
        return p

    _LOADED = cache


_I64 = np.zeros(0, np.int64)
_U8 = np.zeros(0, np.uint8)
_IS_DELIM = np.zeros(256, np.bool_)
_IS_DELIM[[44, 10, 1, 2, 3]] = True
_FIELD_BITS = 10
_FIELD_SLOTS = 1 << _FIELD_BITS


def _field_slots(field_hashes, field_index):
    """The kept fields' token hashes in an open-addressing table for `_jit_field`."""
    key = (field_hashes.tobytes(), field_index.tobytes())
    if _FIELD_TABLE.get("key") != key:
        th, ti = np.zeros(_FIELD_SLOTS, np.uint64), np.full(_FIELD_SLOTS, -1, np.int64)
        for h, i in zip(field_hashes.tolist(), field_index.tolist(), strict=True):
            j = h >> (64 - _FIELD_BITS)
            while th[j] != 0:
                j = (j + 1) % _FIELD_SLOTS
            th[j], ti[j] = h, i
        _FIELD_TABLE.update(key=key, table=(th, ti))
    return _FIELD_TABLE["table"]


_FIELD_TABLE: dict = {}


def _parse_compiled(buf: bytes, n_head: int, field_hashes, field_index):
    """`parse_block` of a block of well-formed lines, compiled; None if any line is not."""
    if not buf.endswith(b"\n"):  # the kernel relies on it to stop
        return None
    _load_kernels()
    a = np.frombuffer(buf, np.uint8)
    n_lines, n_stx = _jit_count_bytes(a, 10, 2)
    n_rows = n_lines if n_head == 5 else 0
    line_start, cfi = np.empty(n_lines, np.int64), np.empty(n_lines, np.uint64)
    head_end = np.empty(n_rows, np.int64)
    click, buy = np.empty(n_rows, np.int8), np.empty(n_rows, np.int8)
    frow, key = np.empty(n_stx, np.int64), np.empty(n_stx, np.int64)
    fh, fi = _field_slots(field_hashes.astype(np.uint64), field_index.astype(np.int64))
    rows, nf = _jit_parse(a, n_head, fh, fi, line_start, head_end, click, buy, cfi, frow, key)
    if rows < 0:
        return None
    b = Block()
    b.n_lines, b.line_start, b.cfi = rows, line_start, cfi
    if n_head == 5:
        b.click, b.buy, b.head_end = click, buy, head_end
    b.feat_row, b.key = frow[:nf], key[:nf]
    b.bad_offsets = _I64
    return b


class _KeyTable:
    """int64 key -> nonzero int64 value, in a compiled open-addressing hash table that grows
    to stay at most half full: counting keys (`add`) and the vocabulary lookup (`get`), in
    place of sorting."""

    def __init__(self, n=0):
        _load_kernels()
        self._alloc(max(1024, 1 << int(2 * max(n, 1) - 1).bit_length()))

    def _alloc(self, cap):
        self.k, self.v = np.zeros(cap, np.int64), np.zeros(cap, np.int64)
        self.shift, self.used = 64 - (cap.bit_length() - 1), 0

    def put(self, keys, vals, add=True):
        keys = np.ascontiguousarray(keys, np.int64)
        vals = np.ascontiguousarray(vals, np.int64)
        i = 0
        while i < len(keys):
            room = len(self.k) // 2 - self.used
            new, i = _jit_table_put(self.k, self.v, self.shift, keys, vals, add, i, room)
            self.used += new
            if i < len(keys):  # full: twice the size, then go on where it stopped
                old_k, old_v = self.items()
                self._alloc(2 * len(self.k))
                self.used, _ = _jit_table_put(
                    self.k, self.v, self.shift, old_k, old_v, False, 0, len(old_k)
                )

    def get(self, keys):
        out = np.empty(len(keys), np.int64)
        _jit_table_get(self.k, self.v, self.shift, np.ascontiguousarray(keys, np.int64), out)
        return out

    def items(self):
        full = self.v != 0
        return self.k[full], self.v[full]


def _rows_compiled(out, head, tok_ptr, tok_field, tok_val, prefix, blobs=None, newline=False):
    """Write rows into the uint8 array `out` with `_jit_rows`; `out` must hold every row (head,
    tokens of at most prefix width + MAX_DIGITS bytes, blob, newline). head: (src uint8, start
    [R], length [R]) or None; blobs: (uint8 array, offset [B], length [B], blob of each row [R])
    or None. Returns (bytes written, row lengths)."""
    _load_kernels()
    n = len(tok_ptr) - 1
    pmat, plen, _ = prefix
    src, hoff, hlen = (
        head if head is not None else (_U8, np.zeros(n, np.int64), np.zeros(n, np.int64))
    )
    btext, boff, blen, row_blob = (
        blobs if blobs is not None else (_U8, _I64, _I64, np.full(n, -1, np.int64))
    )
    row_len = np.empty(n, np.int64)
    src, btext = _readonly(src), _readonly(btext)  # one compiled signature for every caller
    p = _jit_rows(out, src, hoff, hlen, tok_ptr, tok_field, tok_val, pmat, plen, btext, boff,
                  blen, row_blob, newline, row_len)  # fmt: skip
    return p, row_len


def _readonly(a):
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def _warm_compiled(fields):
    """Compile (or load from numba's cache) every kernel once, in this process, with the
    argument types of the real calls, so that forked workers inherit them ready to run. Where
    numba has no writable folder for its cache, the kernels are compiled without it."""
    try:
        _warm_kernels(fields)
    except RuntimeError as e:
        if "cannot cache" not in str(e):
            raise
        print("note: numba has no writable cache folder here (set NUMBA_CACHE_DIR); "
              "compiling the converter's kernels for this run", file=sys.stderr, flush=True)  # fmt: skip
        _load_kernels(cache=False)
        _warm_kernels(fields)


def _warm_kernels(fields):
    fh, fi = _field_lookup(fields)
    lines = [b"1,1,0,c,1,%s\x02" % fields[0].encode() + b"7\x031.0\n", b"c,0,\n"]
    for n_head, buf in zip((5, 2), lines, strict=True):
        _parse_compiled(buf, n_head, fh, fi)
    prefix = _prefix_table(fields)
    one = np.ones(1, np.int64)
    out = np.empty(64, np.uint8)
    ptr = np.array([0, 1], np.int64)
    zero = np.zeros(1, np.int64)
    head = (np.frombuffer(b"1,1,0", np.uint8), zero, np.full(1, 5, np.int64))
    blob = (np.frombuffer(b",9:1", np.uint8), zero, np.full(1, 4, np.int64), zero)
    _rows_compiled(out, head, ptr, zero, one, prefix, blob)
    _rows_compiled(out, None, ptr, zero, one, prefix, newline=True)
    table = _KeyTable()
    table.put(one, one)
    table.get(one)


# ---------------------------------------------------------------------------------------------
# Reading byte ranges


def split_ranges(path: Path, n_tasks: int) -> list[tuple[int, int]]:
    """Cut a file into about `n_tasks` byte ranges that start at line starts."""
    size = path.stat().st_size
    if size == 0:
        return []
    cuts = [0]
    with open(path, "rb") as fh:
        for i in range(1, n_tasks):
            fh.seek(max(size * i // n_tasks - 1, cuts[-1]))
            fh.readline()
            pos = fh.tell()
            if cuts[-1] < pos < size:
                cuts.append(pos)
    cuts.append(size)
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def n_tasks_for(size: int, workers: int) -> int:
    tasks = math.ceil(size / TASK_BYTES)
    if size > (1 << 20):  # big enough to be worth splitting over every worker
        tasks = max(tasks, workers)
    return max(tasks, 1)


def read_blocks(path, start, end, block_bytes=None):
    """Yield (offset, bytes) of whole lines covering [start, end); the last gets a newline."""
    block_bytes = block_bytes or BLOCK_BYTES
    with open(path, "rb") as fh:
        fh.seek(start)
        pos, carry = start, b""
        while pos < end:
            data = fh.read(min(block_bytes, end - pos))
            if not data:
                break
            pos += len(data)
            data = carry + data
            cut = data.rfind(b"\n") + 1
            if cut == 0 and pos < end:
                carry = data  # a line longer than a block: keep reading
                continue
            if pos >= end:
                cut = len(data)
            block, carry = data[:cut], data[cut:]
            if block:
                if not block.endswith(b"\n"):
                    block += b"\n"
                yield pos - len(data), block
        if carry:
            yield pos - len(carry), carry if carry.endswith(b"\n") else carry + b"\n"


def line_number(path, offset: int) -> int:
    """1-based number of the line starting at byte `offset`."""
    n, done = 1, 0
    with open(path, "rb") as fh:
        while done < offset:
            data = fh.read(min(16 << 20, offset - done))
            if not data:
                break
            n += data.count(b"\n")
            done += len(data)
    return n


# ---------------------------------------------------------------------------------------------
# Work done in worker processes. Read-only state lives in `_S`, set before the workers fork.

_S: dict = {}


def _bad_lines(path, block, off, buf, n_head):
    """(count, first offset, first message) of the malformed lines in a block."""
    if len(block.bad_offsets) == 0:
        return 0, None, None
    o = int(block.bad_offsets[0])
    line = buf[o : buf.index(b"\n", o)]
    return len(block.bad_offsets), off + o, explain_line(line, n_head, _S["fields"])


class _TaskError(Exception):
    def __init__(self, path, offset, message):
        super().__init__(message)
        self.path, self.offset, self.message = path, offset, message


def _sum_counts(keys, counts):
    """Combine duplicate keys: (sorted unique keys, summed counts)."""
    if len(keys) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    start = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[start], np.add.reduceat(counts, start)


class _Counts:
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

    def result(self):
        return _merge(self.parts)


class _Tally:
    """Summed weights per key within a task: a hash table with the compiled kernels, else
    sorted partial sums in a `_Counts`. result() -> (keys, sums), sorted by key."""

    def __init__(self):
        self.table = _KeyTable() if _S.get("jit") else None
        self.counts = _Counts() if self.table is None else None

    def add(self, keys, weights):
        if self.table is not None:
            self.table.put(keys, weights)
        else:
            self.counts.add(*_sum_counts(keys, weights))

    def result(self):
        if self.table is None:
            return self.counts.result()
        # sorted here, in the worker: the parent's merge (a stable sort, i.e. timsort) of
        # sorted runs is then close to linear, and it is on the critical path
        keys, sums = self.table.items()
        order = np.argsort(keys)
        return keys[order], sums[order]


def _merge(parts):
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return _sum_counts(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def _common_task(task, progress):
    """Parse a byte range of a common-features file: write the kept keys of its rows to `out`
    (int64); return the rows' index hashes and key counts."""
    path, start, end, out = task
    hashes, sizes, n_bad, first_bad, n_lines = [], [], 0, None, 0
    with open(out, "wb") as fh:
        for off, buf in read_blocks(path, start, end):
            b = parse_block(buf, 2, _S["field_hashes"], _S["field_index"])
            n_lines += b.n_lines
            nb, o, msg = _bad_lines(path, b, off, buf, 2)
            if nb and not _S["skip_bad"]:
                raise _TaskError(path, o, msg)
            n_bad += nb
            if nb and first_bad is None:
                first_bad = (o, msg)
            hashes.append(b.cfi)
            b.key.tofile(fh)
            sizes.append(np.bincount(b.feat_row, minlength=len(b.cfi)))
            progress(len(buf))
    return {
        "hashes": np.concatenate(hashes) if hashes else np.zeros(0, np.uint64),
        "sizes": np.concatenate(sizes) if sizes else np.zeros(0, np.int64),
        "n_bad": n_bad,
        "first_bad": first_bad,
        "lines": n_lines,
    }


def _search(table, needles):
    """`np.searchsorted(table, needles)`, about 4x faster for many needles in a large table:
    searching them in sorted order keeps the binary search's path in the CPU cache."""
    if len(needles) < 4096 or len(table) < 65536:
        return np.searchsorted(table, needles)
    order = np.argsort(needles)
    pos = np.empty(len(needles), np.int64)
    pos[order] = np.searchsorted(table, needles[order])
    return pos


def _lookup(keys):
    """Feasign of each key (0 = not in the vocabulary)."""
    if "vocab_table" in _S:
        return _S["vocab_table"].get(keys)
    vocab = _S["vocab"]
    if len(vocab) == 0:
        return np.zeros(len(keys), np.int64)
    pos = np.minimum(_search(vocab, keys), len(vocab) - 1)
    # a vocabulary extended from an earlier one is not numbered in key order
    ids = _S["vocab_ids"][pos] if "vocab_ids" in _S else pos + 1
    return np.where(vocab[pos] == keys, ids, 0)


def _weighted_task(task, progress):
    """Count the keys of a run of common rows, each weighted by its train reference count."""
    path, row0, sizes = task
    ref = _S["refcount"]
    tally = _Tally()
    for r, r2, keys in _key_runs(path, sizes, max(1, (32 << 20) // 8)):
        w = np.repeat(ref[row0 + r : row0 + r2], sizes[r:r2])
        sel = w > 0
        tally.add(keys[sel], w[sel])
        progress(len(keys) * 8)
    return tally.result()


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


def _render_lines(n_rows, tok_row, tok_field, tok_val):
    """Text of n_rows lines of `,field:feasign` tokens (a user's common features) and their
    lengths."""
    if not _S.get("jit"):
        return render_rows(n_rows, tok_row, tok_field, tok_val, _S["prefix"], newline=True)
    tok_ptr = np.zeros(n_rows + 1, np.int64)
    np.cumsum(np.bincount(tok_row, minlength=n_rows), out=tok_ptr[1:])
    out = np.empty(len(tok_row) * (_S["prefix"][0].shape[1] + MAX_DIGITS) + n_rows, np.uint8)
    p, row_len = _rows_compiled(out, None, tok_ptr, tok_field, tok_val, _S["prefix"], newline=True)
    return out[:p], row_len


def _seen_runs(path, sizes, counts, progress):
    """Runs of common rows (either split) with their keys looked up in the vocabulary: yields
    (rows in the run, the row of each seen key, the seen keys, their feasigns). Unseen keys are
    dropped, as the slot text drops them; `counts` ([tokens, unseen]) adds up both."""
    for r, r2, keys in _key_runs(path, sizes, 4 << 20):
        rows = np.repeat(np.arange(r2 - r), sizes[r:r2])
        fs = _lookup(keys)
        seen = fs > 0
        counts[0] += len(fs)
        counts[1] += int((~seen).sum())
        yield r2 - r, rows[seen], keys[seen], fs[seen]
        progress(len(keys) * 8)


def _render_common_task(task, progress):
    """Render the slot text of a run of common rows (either split) from their keys."""
    path, sizes, out = task
    lens, counts = [], [0, 0]
    with open(out, "wb") as wh:
        for n, rows, keys, fs in _seen_runs(path, sizes, counts, progress):
            text, row_len = _render_lines(n, rows, keys >> KEY_SHIFT, fs)
            wh.write(text)
            lens.append(row_len)
    lens = np.concatenate(lens) if lens else np.zeros(0, np.int64)
    return {"sizes": lens, "tokens": counts[0], "unseen": counts[1]}


def _common_ids_task(task, progress):
    """Binary output: the feasigns of a run of common rows (either split), int32, in raw order."""
    path, sizes, out = task
    lens, counts = [], [0, 0]
    with open(out, "wb") as wh:
        for n, rows, _, fs in _seen_runs(path, sizes, counts, progress):
            fs.astype(np.int32).tofile(wh)
            lens.append(np.bincount(rows, minlength=n))
    lens = np.concatenate(lens) if lens else np.zeros(0, np.int64)
    return {"sizes": lens, "tokens": counts[0], "unseen": counts[1]}


class _Blobs:
    """Reads the rendered text of common rows with pread, remembering the last one."""

    def __init__(self, index):
        self.files, self.part, self.off, self.len = index
        self.fds = {}

    def get(self, cid):
        p = int(self.part[cid])
        return os.pread(self._fd(p), int(self.len[cid]), int(self.off[cid]))

    def _fd(self, p):
        fd = self.fds.get(p)
        if fd is None:
            fd = self.fds[p] = os.open(self.files[p], os.O_RDONLY)
        return fd

    def read(self, users):
        """The texts of the sorted distinct common rows `users` in one array: (array, offset and
        length of each in it). Runs of consecutive rows of one file are read at once."""
        lens = self.len[users]
        off = np.cumsum(lens) - lens
        buf = np.empty(int(lens.sum()), np.uint8)
        part, src = self.part[users], self.off[users]
        cut = np.flatnonzero((part[1:] != part[:-1]) | (src[1:] != src[:-1] + lens[:-1])) + 1
        mv = memoryview(buf)
        for a, z in zip([0, *cut.tolist()], [*cut.tolist(), len(users)], strict=True):
            begin, end = int(off[a]), int(off[z - 1] + lens[z - 1])
            if os.preadv(self._fd(int(part[a])), [mv[begin:end]], int(src[a])) != end - begin:
                raise OSError(f"short read from {self.files[int(part[a])]}")
        return buf, off, lens

    def close(self):
        for fd in self.fds.values():
            os.close(fd)


def _skeleton_task(task, progress):
    """Pass over a byte range of a skeleton file.

    mode "count": return key counts and per-common-row reference counts; with `cache`, also
    keep the parsed rows there (binary), so that encoding them needs no second parse.
    mode "encode": write the slot lines to `out`, from `cache` if given, else from the text.
    """
    path, start, end, out, mode, cache, split = task
    if mode == "encode" and cache is not None:
        return _encode_cached(cache, out, progress, split)
    idx_hash, idx_cid = _S["common_index"][split]
    res = {"lines": 0, "rows": 0, "noise": 0, "n_bad": 0, "missing": 0, "first_bad": None}
    res.update(tokens=0, unseen=0)
    tally = _Tally()
    ref = np.zeros(len(idx_hash), np.int64) if mode == "count" else None
    blobs = _Blobs(_S["blobs"][split]) if mode == "encode" and _S["format"] == "slot" else None
    with contextlib.ExitStack() as stack:
        wh = None
        if mode == "encode":
            wh = _open_part(out)
            stack.callback(wh.close)
        if blobs is not None:
            stack.callback(blobs.close)
        ch = stack.enter_context(open(cache, "wb")) if cache is not None else None
        for off, buf in read_blocks(path, start, end):
            b = parse_block(buf, 5, _S["field_hashes"], _S["field_index"])
            res["lines"] += b.n_lines
            nb, o, msg = _bad_lines(path, b, off, buf, 5)
            if nb and not _S["skip_bad"]:
                raise _TaskError(path, o, msg)
            if nb:
                res["n_bad"] += nb
                if res["first_bad"] is None:
                    res["first_bad"] = (o, msg)
            # Join with the common features.
            if len(idx_hash):
                pos = np.minimum(_search(idx_hash, b.cfi), len(idx_hash) - 1)
                found = idx_hash[pos] == b.cfi
                cid = idx_cid[pos]
            else:
                found = np.zeros(len(b.cfi), bool)
                cid = np.zeros(len(b.cfi), np.int64)
            if not found.all():
                i = int(np.flatnonzero(~found)[0])
                o = int(b.line_start[i])
                line = buf[o : buf.index(b"\n", o)]
                cfi_text = line.split(b",")[3].decode("utf-8", "replace")
                common = COMMON.format(split)
                msg = f"common_feature_index {cfi_text!r} is not in {common}"
                if not _S["skip_bad"]:
                    raise _TaskError(path, off + o, msg)
                res["missing"] += int((~found).sum())
                if res["first_bad"] is None:
                    res["first_bad"] = (off + o, msg)
            noise = (b.click == 0) & (b.buy == 1)
            res["noise"] += int((noise & found).sum())
            keep = found & ~noise
            res["rows"] += int(keep.sum())
            fkeep = keep[b.feat_row]
            rows = _kept_rows(buf, b, keep, fkeep, cid)
            if mode == "count":
                _, _, _, kept_cid, keys, _ = rows
                tally.add(keys, np.ones(len(keys), np.int64))
                ref += np.bincount(kept_cid, minlength=len(ref))
                if ch is not None:
                    _save_rows(ch, len(buf), *rows)
            else:
                _emit(wh, *rows, blobs, res)
            progress(len(buf))
    if cache is not None:
        with open(f"{cache}.json", "w") as f:
            json.dump(res, f, default=int)
    if mode == "count":
        res["counts"] = tally.result()
        res["refcount"] = ref
    return res


def _kept_rows(buf, b, keep, fkeep, cid):
    """The rows of a block that are written: (head bytes, head starts, head lengths, common
    row ids, feature keys, row of each key)."""
    rows = np.flatnonzero(keep)
    hstart = b.line_start[rows]
    new_row = np.cumsum(keep) - 1
    frow = new_row[b.feat_row[fkeep]]
    return (
        np.frombuffer(buf, np.uint8),
        hstart,
        b.head_end[rows] - hstart,
        cid[rows],
        b.key[fkeep],
        frow,
    )


# A parsed block in the cache between the two passes over the train skeleton: its raw length,
# then its written rows' heads (`sample_id,click,buy`, concatenated), their lengths, common row
# ids, feature keys and the row of each key, as .npy arrays one after the other.
def _save_rows(fh, raw_len, src, hstart, hlen, cid, keys, frow):
    out_start = np.cumsum(hlen) - hlen
    heads = src[np.arange(int(hlen.sum())) + np.repeat(hstart - out_start, hlen)]
    for a in (np.array([raw_len]), heads, hlen.astype(np.int32), cid, keys, frow.astype(np.int32)):
        np.save(fh, a, allow_pickle=False)


def _encode_cached(cache, out, progress, split):
    with open(f"{cache}.json") as f:
        res = json.load(f)
    if res["first_bad"] is not None:
        res["first_bad"] = tuple(res["first_bad"])
    blobs = _Blobs(_S["blobs"][split]) if _S["format"] == "slot" else None
    size = os.path.getsize(cache)
    wh = _open_part(out)
    try:
        with open(cache, "rb") as fh:
            while fh.tell() < size:
                raw_len, heads, hlen, cid, keys, frow = (
                    np.load(fh, allow_pickle=False) for _ in range(6)
                )
                hlen = hlen.astype(np.int64)
                head = (heads, np.cumsum(hlen) - hlen, hlen)
                _emit(wh, *head, cid, keys, frow.astype(np.int64), blobs, res)
                progress(int(raw_len[0]))
    finally:
        wh.close()
        if blobs is not None:
            blobs.close()
    os.remove(cache)  # free its disk space before the test split is converted
    return res


def _open_part(out):
    if _S["format"] == "slot":
        return _Output(out, _S.get("direct", False))
    return _BinaryPart(out)


def _emit(out, src, hstart, hlen, cid, keys, frow, blobs, res):
    if isinstance(out, _BinaryPart):
        out.write_rows(src, hstart, hlen, cid, keys, frow, res)
    else:
        _write_rows(out, src, hstart, hlen, cid, keys, frow, blobs, res)


class _ArrayFile:
    """An output file written with `os.write` (unbuffered: the arrays are large), whose errors
    name the file."""

    def __init__(self, path):
        self.path = str(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def write(self, data):
        data = memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))  # may be empty
        while data:
            try:
                data = data[os.write(self.fd, data) :]
            except OSError as e:
                raise OSError(e.errno, e.strerror, self.path) from None

    def copy_from(self, path):
        with open(path, "rb") as src:
            while chunk := src.read(16 << 20):
                self.write(np.frombuffer(chunk, np.uint8))

    def close(self):
        os.close(self.fd)


class _BinaryPart:
    """The binary columns of one byte range of a skeleton (a folder of `PART_COLUMNS` files),
    appended to the split's columns in file order at the end (`_join_parts`)."""

    def __init__(self, folder):
        os.mkdir(folder)
        self.files = {c: _ArrayFile(os.path.join(folder, f"{c}.bin")) for c in PART_COLUMNS}

    def write_rows(self, src, hstart, hlen, cid, keys, frow, res):
        fs = _lookup(keys)
        seen = fs > 0
        res["tokens"] += len(fs)
        res["unseen"] += int((~seen).sum())
        # The head is `sample_id,click,buy` with one-byte labels (checked by the parser).
        src = np.asarray(src, np.uint8)
        click = src[hstart + hlen - 3] - 48
        buy = src[hstart + hlen - 1] - 48
        pb = _Padded(src.tobytes())
        sid, _ = _parse_uint(pb, hstart + _PAD_BEFORE, hstart + hlen - 4 + _PAD_BEFORE)
        f = self.files
        f["sample_id"].write(sid.astype(np.int64))
        f["labels"].write(np.stack([click, buy], axis=1).astype(np.int8))
        f["user"].write(cid.astype(np.int32))
        f["item_len"].write(np.bincount(frow[seen], minlength=len(cid)).astype(np.int32))
        f["item_ids"].write(fs[seen].astype(np.int32))

    def close(self):
        for fh in self.files.values():
            fh.close()


def _write_rows(out, src, hstart, hlen, cid, keys, frow, blobs, res):
    """Write the slot lines of a batch of rows to `out` (an `_Output`): each row's head, its own
    tokens, then its user's rendered common features."""
    fs = _lookup(keys)
    seen = fs > 0
    res["tokens"] += len(fs)
    res["unseen"] += int((~seen).sum())
    frow, field, fs = frow[seen], keys[seen] >> KEY_SHIFT, fs[seen]
    if not _S.get("jit"):
        return _write_rows_numpy(out, src, hstart, hlen, cid, frow, field, fs, blobs)
    n = len(cid)
    tok_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(frow, minlength=n), out=tok_ptr[1:])
    # Upper bound of each row's bytes; rows go out in runs of about _CHUNK_BYTES.
    pw = _S["prefix"][0].shape[1]
    bound = hlen + np.diff(tok_ptr) * (pw + MAX_DIGITS) + blobs.len[cid]
    ends = np.cumsum(bound)
    r = 0
    while r < n:
        base = int(ends[r - 1]) if r else 0
        r2 = min(max(int(np.searchsorted(ends, base + _CHUNK_BYTES, side="right")), r + 1), n)
        users, row_blob = np.unique(cid[r:r2], return_inverse=True)
        t0, t1 = tok_ptr[r], tok_ptr[r2]
        p, _ = _rows_compiled(
            out.space(int(ends[r2 - 1]) - base),
            (src, hstart[r:r2], hlen[r:r2]),
            tok_ptr[r : r2 + 1] - t0,
            field[t0:t1],
            fs[t0:t1],
            _S["prefix"],
            (*blobs.read(users), row_blob.astype(np.int64)),
        )
        out.commit(p)
        r = r2


def _write_rows_numpy(out, src, hstart, hlen, cid, frow, field, fs, blobs):
    text, row_len = render_rows(len(cid), frow, field, fs, _S["prefix"], head=(src, hstart, hlen))
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


_CHUNK_BYTES = 8 << 20  # output bytes rendered, and written, at a time
_ALIGN = 4096  # O_DIRECT: buffer address, file offset and size multiples


class _Output:
    """A part file written sequentially, from buffers of its own.

    With `direct` (O_DIRECT, where the file system takes it) the text goes from those buffers
    to the disk without a copy into the page cache, which costs more CPU than rendering it
    (doc/benchmarks.md), and without flooding the cache with hundreds of GB; whole aligned
    buffers are written by a background thread while the next one is filled. Otherwise (or
    where O_DIRECT is refused) plain buffered writes."""

    def __init__(self, path, direct=False):
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        self.path, self.direct = path, False
        if direct and hasattr(os, "O_DIRECT"):
            with contextlib.suppress(OSError):
                self.fd = os.open(path, flags | os.O_DIRECT, 0o644)
                self.direct = True
        if not self.direct:
            self.fd = os.open(path, flags, 0o644)
        self.bufs = [_aligned(2 * _CHUNK_BYTES), _aligned(2 * _CHUNK_BYTES)]
        self.cur, self.fill, self.pending = 0, 0, None
        self.pool = None
        if self.direct:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(1, thread_name_prefix="convert-write")

    def space(self, n):
        """A writable view of at least n bytes at the end of the data; `commit` what was used."""
        buf = self.bufs[self.cur]
        if len(buf) < self.fill + n:
            bigger = _aligned(2 * (self.fill + n))
            bigger[: self.fill] = buf[: self.fill]
            self.bufs[self.cur] = buf = bigger
        return buf[self.fill :]

    def commit(self, n):
        self.fill += n
        if self.fill >= _CHUNK_BYTES:
            self._flush()

    def write(self, data):
        """Append bytes; plain writes with nothing buffered go straight to the file."""
        if not self.direct and self.fill == 0:
            self._write(data)
            return
        data = np.frombuffer(data, np.uint8)
        self.space(len(data))[: len(data)] = data
        self.commit(len(data))

    def _flush(self):
        buf, fill = self.bufs[self.cur], self.fill
        k = fill - fill % _ALIGN if self.direct else fill
        if self.pool is None:
            self._write(buf[:k])
        else:
            self._wait()
            self.pending = self.pool.submit(self._write, buf[:k])
            self.cur ^= 1
        self.bufs[self.cur][: fill - k] = buf[k:fill]
        self.fill = fill - k

    def _write(self, data):
        data = memoryview(data)
        while data:
            try:
                data = data[os.write(self.fd, data) :]
            except OSError as e:
                # O_DIRECT refused after all (EINVAL): buffered writes from here on
                if e.errno == errno.EINVAL and self.direct and self._clear_direct():
                    continue
                raise OSError(e.errno, e.strerror, str(self.path)) from None

    def _clear_direct(self):
        """Turn O_DIRECT off for the file; False if it was off already."""
        import fcntl

        fl = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fl & ~os.O_DIRECT)
        return bool(fl & os.O_DIRECT)

    def _wait(self):
        if self.pending is not None:
            p, self.pending = self.pending, None
            p.result()

    def close(self):
        """Write the rest and close; the thread and the file are released even on errors."""
        try:
            self._wait()
            if self.direct:  # the tail is not a whole number of aligned blocks
                self._clear_direct()
            self._write(self.bufs[self.cur][: self.fill])
            self.fill = 0
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
            os.close(self.fd)


def _aligned(n):
    """An uninitialised uint8 array of n bytes starting at an _ALIGN boundary."""
    raw = np.empty(n + _ALIGN, np.uint8)
    skip = -raw.ctypes.data % _ALIGN
    return raw[skip : skip + n]


# ---------------------------------------------------------------------------------------------
# Running tasks on worker processes (fork: the state in `_S` is inherited, not pickled)


def _worker(fn, tasks, inq, outq):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    # a forked worker inherits the parent's SIGTERM handler (ours from main(), or one a library
    # such as Paddle installed); the parent's terminate() must simply end it
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def progress(n):
        outq.put(("progress", None, n))

    while True:
        i = inq.get()
        if i is None:
            return
        try:
            outq.put(("done", i, fn(tasks[i], progress)))
        except _TaskError as e:
            outq.put(("bad", i, (e.path, e.offset, e.message)))
        except OSError as e:  # disk full, permissions, ...: one line for the user
            outq.put(("io", i, _io_message(e)))
            return
        except BaseException:  # a bug: hand the traceback to the parent
            outq.put(("crash", i, traceback.format_exc()))
            return


def run_tasks(fn, tasks, workers, bar, on_result=None, meanwhile=None):
    """Run fn(task, progress) for every task; results in task order.

    With `on_result(value)`, results are handed over as they arrive (in any order) and not kept,
    so folding them (sums, merged counts) needs no memory per task. `meanwhile()` is run in this
    process once the workers are started (before the tasks when there are no workers).
    """
    results = [None] * len(tasks)

    def done(i, val):
        if on_result is None:
            results[i] = val
        else:
            on_result(val)

    if workers <= 1 or len(tasks) <= 1:
        if meanwhile is not None:
            meanwhile()
        for i, t in enumerate(tasks):
            try:
                done(i, fn(t, bar.update))
            except _TaskError as e:
                _raise_bad(e.path, e.offset, e.message)
            except OSError as e:
                raise ConvertError(_io_message(e)) from None
        return results
    ctx = mp.get_context("fork")
    inq, outq = ctx.Queue(), ctx.Queue()
    for i in range(len(tasks)):
        inq.put(i)
    procs = []
    for _ in range(min(workers, len(tasks))):
        inq.put(None)
        p = ctx.Process(target=_worker, args=(fn, tasks, inq, outq), daemon=True)
        p.start()
        procs.append(p)
    left = len(tasks)
    try:
        if meanwhile is not None:
            meanwhile()
        while left:
            try:
                kind, i, val = outq.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a worker died (exit code {dead[0].exitcode})") from None
                continue
            if kind == "progress":
                bar.update(val)
            elif kind == "done":
                done(i, val)
                left -= 1
            elif kind == "bad":
                _raise_bad(*val)
            elif kind == "io":
                raise ConvertError(val)
            else:
                raise RuntimeError("a worker failed:\n" + val)
    finally:
        _stop_workers(procs, (inq, outq), finished=not left)
    return results


def _stop_workers(procs, queues, finished: bool):
    """Reap the workers. After a failure (or Ctrl-C) nobody drains the queues any more: a worker
    may be blocked writing to a full pipe, even on its way out, and so may this process's own
    queue feeder; kill the workers and do not wait for the queues to flush."""
    if not finished:
        for p in procs:
            if p.is_alive():
                p.kill()
        for q in queues:
            q.cancel_join_thread()
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():  # finished, yet stuck on its way out: nothing of it is needed
            p.kill()
            p.join()
    for q in queues:
        q.close()


def _io_message(e: OSError) -> str:
    return f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)


def _raise_bad(path, offset, message):
    raise ConvertError(f"{Path(path).name}:{line_number(path, offset)}: {message}")


# ---------------------------------------------------------------------------------------------
# Progress


class Progress:
    """tqdm bar on a terminal; otherwise a plain line every ~10% (logs stay readable)."""

    def __init__(self, desc, total, enabled=True):
        self.desc, self.total, self.n, self.enabled = desc, max(int(total), 1), 0, enabled
        self.t0, self.next_pct, self.bar = time.time(), 10, None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr)

    def update(self, n):
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled:
            pct = 100 * self.n // self.total
            if pct >= self.next_pct and pct < 100:
                self._line(f"{pct}%")
                self.next_pct = (pct // 10 + 1) * 10

    def _line(self, what):
        dt = max(time.time() - self.t0, 1e-9)
        print(
            f"{self.desc}: {what} ({self.n / 1e6:.1f} MB, {self.n / 1e6 / dt:.1f} MB/s)",
            file=sys.stderr,
            flush=True,
        )

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._line(f"done in {time.time() - self.t0:.1f}s")


# ---------------------------------------------------------------------------------------------
# The conversion


def _check_output(out_dir: Path, force: bool):
    for name in ("train_data", "test_data"):
        p = out_dir / name
        if p.exists() and not p.is_dir():
            raise ConvertError(f"{p} exists and is not a folder")
        if p.is_dir() and any(p.iterdir()) and not force:
            raise ConvertError(f"{p} already exists and is not empty; use --force to replace it")


def _field_lookup(fields):
    hashes = np.array([hash_bytes(f.encode()) for f in fields], np.uint64)
    order = np.argsort(hashes)
    return hashes[order], order.astype(np.int64)


def convert(
    raw_dir,
    out_dir,
    min_count=1,
    workers=2,
    skip_bad=False,
    force=False,
    fields=None,
    progress=True,
    jit=None,
    direct_io=True,
    fmt="binary",
    vocab=None,
    freeze_vocab=False,
):
    """Convert the four raw Ali-CCP files in `raw_dir` into slot files in `out_dir`.

    vocab: an earlier output folder (or its vocab.txt) whose feasigns keep their numbers; the
    (field, id) pairs new in this train split (count >= min_count) are appended after them.
    freeze_vocab: with `vocab`, append nothing (pairs not in it are written as unseen), e.g. to
    encode evaluation data for a model trained on that vocabulary.

    jit: use the compiled kernels (None: if numba is installed); direct_io: write the slot files
    with O_DIRECT where the file system takes it. Neither changes a byte of the output. Returns
    the meta dict also written to `out_dir/meta.json`. Raises ConvertError for problems
    in the input or an existing output.
    """
    t0 = time.time()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    fields = tuple(fields) if fields else FIELDS
    if len(set(fields)) != len(fields) or not 0 < len(fields) < 256:
        raise ConvertError(f"--fields: 1 to 255 distinct names, got {list(fields)}")
    for f in fields:
        if not f or any(c in f for c in ",:\x01\x02\x03\n"):
            raise ConvertError(f"--fields: bad field name {f!r}")
    if fmt not in FORMATS:
        raise ConvertError(f"--format: one of {', '.join(FORMATS)}, got {fmt!r}")
    if min_count < 1:
        raise ConvertError(f"--min-count must be at least 1, got {min_count}")
    if jit and not HAVE_NUMBA:
        raise ConvertError("the compiled kernels need numba (pip install numba), or use --no-jit")
    if freeze_vocab and vocab is None:
        raise ConvertError("--freeze-vocab needs --vocab (the vocabulary to keep)")
    base_vocab = read_vocab(vocab, fields) if vocab is not None else None
    workers = max(1, int(workers))
    inputs = {}
    for split in SPLITS:
        for pat in (SKELETON, COMMON):
            p = raw_dir / pat.format(split)
            if not p.is_file():
                raise ConvertError(
                    f"raw file not found: {p} (expected sample_skeleton_{{train,test}}.csv and "
                    "common_features_{train,test}.csv from Tianchi data set 408)"
                )
            inputs[p.name] = p
    _check_output(out_dir, force)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-tmp-", dir=out_dir))
    work = tmp / "work"
    work.mkdir()
    fh, fi = _field_lookup(fields)
    _S.clear()
    _S.update(fields=set(fields), field_hashes=fh, field_index=fi, skip_bad=skip_bad)
    _S.update(prefix=_prefix_table(fields))
    _S.update(jit=HAVE_NUMBA if jit is None else bool(jit), jit_asked=bool(jit))
    _S.update(direct=bool(direct_io), format=fmt)
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if progress else (lambda *a: None)
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
    if base_vocab is not None:
        _S["base_vocab"] = (base_vocab, str(vocab), bool(freeze_vocab))
    try:
        _convert(inputs, tmp, work, fields, min_count, workers, skip_bad, progress, meta, log)
        meta["seconds"] = round(time.time() - t0, 2)
        with open(tmp / "meta.json", "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
            f.write("\n")
        shutil.rmtree(work)
        _install(tmp, out_dir)
    except BaseException:
        if created:  # a failed run leaves no trace, not even the folder it made
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        _S.clear()
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _install(tmp: Path, out_dir: Path):
    """Move the finished outputs into place; old ones (with --force) go only after that."""
    trash = tmp / "old"
    trash.mkdir()
    for name in ("train_data", "test_data", "meta.json", VOCAB_FILE):
        if (out_dir / name).exists():
            os.replace(out_dir / name, trash / name)
    for name in ("train_data", "test_data", "meta.json", VOCAB_FILE):
        os.replace(tmp / name, out_dir / name)


def _convert(inputs, tmp, work, fields, min_count, workers, skip_bad, progress, meta, log):
    def bar(desc, total):
        return Progress(desc, total, progress)

    def ranges(path):
        return split_ranges(path, n_tasks_for(path.stat().st_size, workers))

    def run(fn, tasks, desc, total, on_result=None, meanwhile=None):
        b = bar(desc, total)
        try:
            return run_tasks(fn, tasks, workers, b, on_result, meanwhile)
        finally:
            b.close()

    # 1. Common features of both splits -> key side files + indexes.
    ctasks, split_of = [], []
    for split in SPLITS:
        cpath = inputs[COMMON.format(split)]
        for i, (a, z) in enumerate(ranges(cpath)):
            ctasks.append((cpath, a, z, work / f"common-{split}-{i:05d}.keys"))
            split_of.append(split)
    csize = sum(inputs[COMMON.format(split)].stat().st_size for split in SPLITS)
    # The compiled kernels are loaded here once (importing numba and its start-up take ~0.45 s)
    # while this first pool of workers, forked before, parses with the numpy kernels; later
    # pools inherit them ready to run.
    jit, _S["jit"] = _S["jit"], False

    def load_kernels():
        if not jit:
            return
        try:
            _warm_compiled(fields)
        except Exception as e:  # e.g. a numba release that does not know this numpy yet
            msg = f"numba could not compile the converter's kernels ({type(e).__name__}: {e})"
            if _S["jit_asked"]:
                raise ConvertError(msg + "; use --no-jit") from None
            print(f"note: {msg.splitlines()[0][:200]}; using numpy", file=sys.stderr, flush=True)
            return
        _S["jit"] = True

    cres = run(_common_task, ctasks, "common features (parse)", csize, meanwhile=load_kernels)
    n_common = {}
    _S["common_index"] = {}
    for split in SPLITS:
        res = [r for r, sp in zip(cres, split_of, strict=True) if sp == split]
        idx, n_common[split] = _build_index(res, inputs[COMMON.format(split)], skip_bad, meta)
        _S["common_index"][split] = idx

    # 2. Train skeleton, pass 1: counts.
    spath = inputs[SKELETON.format("train")]
    stasks = [
        (spath, a, z, None, "count", work / f"skeleton-train-{i:05d}.npy", "train")
        for i, (a, z) in enumerate(ranges(spath))
    ]
    refcount = np.zeros(n_common["train"], np.int64)
    counts = _Counts()

    def fold(r):
        refcount[:] += r["refcount"]
        counts.add(*r["counts"])

    run(_skeleton_task, stasks, "train skeleton (count)", spath.stat().st_size, fold)

    # 3. Weighted counts of the common train keys, then the vocabulary.
    _S["refcount"] = refcount
    wtasks, row0 = [], 0
    for t, r, sp in zip(ctasks, cres, split_of, strict=True):
        if sp == "train":
            wtasks.append((t[3], row0, r["sizes"]))
            row0 += len(r["sizes"])
    key_bytes = {sp: 0 for sp in SPLITS}
    for r, sp in zip(cres, split_of, strict=True):
        key_bytes[sp] += int(r["sizes"].sum()) * 8
    run(
        _weighted_task, wtasks, "train common (count)", key_bytes["train"], lambda r: counts.add(*r)
    )
    keys, cnt = counts.result()
    vocab = keys[cnt >= min_count]
    del keys, cnt
    counts.parts.clear()
    numbered = vocab  # the keys in feasign order: feasign = position + 1
    if "base_vocab" in _S:
        base, source, frozen = _S.pop("base_vocab")
        new = vocab[:0] if frozen else vocab[~np.isin(vocab, base)]
        numbered = np.concatenate([base, new])
        order = np.argsort(numbered, kind="stable")
        vocab = numbered[order]
        _S["vocab_ids"] = order + 1
        meta["vocab"] = {"base": source, "kept": len(base), "new": len(new), "frozen": frozen}
        log(
            f"vocabulary: {len(base)} feasigns kept from {source}, {len(new)} new"
            + (" (--freeze-vocab)" if frozen else "")
        )
    else:
        meta["vocab"] = {"base": None, "kept": 0, "new": len(vocab), "frozen": False}
    meta["vocab"]["file"] = VOCAB_FILE
    _S["vocab"] = vocab
    if _S["jit"]:  # built once here, shared with the forked workers
        _S["vocab_table"] = table = _KeyTable(len(numbered))
        table.put(numbered, np.arange(1, len(numbered) + 1), add=False)
    meta.update(_vocab_meta(numbered, fields, contiguous="vocab_ids" not in _S))
    write_vocab(tmp / VOCAB_FILE, numbered, fields)
    log(f"vocabulary: {len(numbered)} feasigns (min_count={min_count})")
    _S["numbered"] = numbered  # feasign order, for the binary data set's field table
    if len(numbered) >= 2**31 - 1 and _S["format"] == "binary":
        raise ConvertError(f"{len(numbered)} feasigns do not fit the binary format's int32 ids")

    # 4. The common rows of both splits with that vocabulary: slot text, or feasigns.
    slot = _S["format"] == "slot"
    rtasks = [
        (t[3], r["sizes"], work / f"common-{sp}-{i:05d}.{'txt' if slot else 'ids'}")
        for i, (t, r, sp) in enumerate(zip(ctasks, cres, split_of, strict=True))
    ]
    task = _render_common_task if slot else _common_ids_task
    rres = run(task, rtasks, "common features (encode)", sum(key_bytes.values()))
    _S["blobs"], common_parts = {}, {}
    for split in SPLITS:
        mine = [i for i, sp in enumerate(split_of) if sp == split]
        common_parts[split] = [(rtasks[i][2], rres[i]["sizes"]) for i in mine]
        if slot:
            _S["blobs"][split] = _blob_index(*zip(*common_parts[split], strict=True))
        meta["splits"][split] = {
            "common_tokens": sum(rres[i]["tokens"] for i in mine),
            "common_tokens_not_in_vocab": sum(rres[i]["unseen"] for i in mine),
        }

    # 5. Both skeletons: train from pass 1's side files (each deleted when done), test parsed.
    etasks, sizes = [], {}
    for split in SPLITS:
        path = inputs[SKELETON.format(split)]
        (tmp / f"{split}_data").mkdir()
        if split == "train":
            parts = [(t[0], t[1], t[2], t[5]) for t in stasks]
        else:
            parts = [(path, a, z, None) for a, z in ranges(path)]
        for i, (pth, a, z, cache) in enumerate(parts):
            if slot:
                out = tmp / f"{split}_data" / f"part-{i:05d}.txt"
            else:
                out = work / f"{split}-part-{i:05d}"
            etasks.append((pth, a, z, out, "encode", cache, split))
        sizes[split] = path.stat().st_size
    eres = run(_skeleton_task, etasks, "skeletons (encode)", sum(sizes.values()))
    for split in SPLITS:
        mine = [(t, r) for t, r in zip(etasks, eres, strict=True) if t[6] == split]
        _split_meta(split, inputs[SKELETON.format(split)], mine, meta)
        if not slot:
            folder = tmp / f"{split}_data"
            try:
                parts = [t[3] for t, _ in mine]
                _join_parts(folder, parts, common_parts[split], meta, fields, _S["numbered"])
            except OSError as e:
                raise ConvertError(_io_message(e)) from None
            meta["splits"][split]["files"] = sorted(
                f"{split}_data/{p.name}" for p in folder.iterdir()
            )
    for split in SPLITS:
        s = meta["splits"][split]
        log(
            f"{split}: {s['rows']} rows written, {s['dropped_noise']} click=0,buy=1 rows dropped"
            + (f", {s['skipped_bad']} bad lines skipped" if s["skipped_bad"] else "")
            + (
                f", {s['skipped_missing_common']} rows without common features skipped"
                if s["skipped_missing_common"]
                else ""
            )  # fmt: skip
        )
    total_bad = sum(meta["bad_lines"].values())
    if skip_bad:
        log(f"--skip-bad: {total_bad} malformed lines skipped in total")


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
        raise ConvertError(
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


def _join_parts(folder, parts, common, meta, fields, numbered):
    """Append the skeleton parts' columns, in file order, and the common rows into one binary
    data set in `folder` (the layout is described in doc/data.md and paddle_rec_zoo/binary_data.py).
    """
    n_items = n_common = 0
    with contextlib.ExitStack() as stack:
        out = {}
        for c in ("sample_id", "labels", "user", "item_offsets", "item_ids") + COMMON_COLUMNS:
            out[c] = _ArrayFile(folder / f"{c}.bin")
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
        out["feasign_field"] = _ArrayFile(folder / "feasign_field.bin")
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


def _blob_index(files, lens):
    lens = [np.asarray(x, np.int64) for x in lens]
    none = [np.zeros(0, np.int64)]  # a split may have no common rows at all
    part = np.concatenate(none + [np.full(len(x), i, np.int64) for i, x in enumerate(lens)])
    off = np.concatenate(none + [np.cumsum(x) - x for x in lens])
    return [str(f) for f in files], part, off, np.concatenate(none + lens)


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


def _vocab_meta(vocab, fields, contiguous=True):
    per = np.bincount((vocab >> KEY_SHIFT).astype(np.int64), minlength=len(fields))
    start = np.cumsum(per) - per + 1
    meta = {
        "vocab_size": {
            "per_field": {f: int(n) for f, n in zip(fields, per, strict=True)},
            "total": int(len(vocab)),
        },  # fmt: skip
        "sparse_feature_number": int(len(vocab)) + 1,
    }
    if contiguous:  # an extended vocabulary appends new ids after the old ones: no ranges
        meta["field_ranges"] = {
            f: [int(s), int(s + n - 1)] for f, s, n in zip(fields, start, per, strict=True)
        }
    return meta


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
        raise ConvertError(
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
        raise ConvertError(
            f"{path}:{n + 1}: expected field:feature_id, got {lines[n].decode(errors='replace')!r}"
        )
    names, which = np.unique(field, return_inverse=True)
    for k, name in enumerate(names.tolist()):
        if lines and name.decode(errors="replace") not in index:
            n = int(np.flatnonzero(which == k)[0])
            raise ConvertError(
                f"{path}:{n + 1}: field {name.decode(errors='replace')} is not converted "
                "(--fields); an extended vocabulary needs every field of the old one"
            )
    if not lines:
        return np.zeros(0, np.int64)
    field_index = np.array([index[name.decode()] for name in names.tolist()], np.int64)
    keys = (field_index[which] << KEY_SHIFT) | fid.astype(np.int64)
    ordered = np.sort(keys)  # (numpy 2.4's hash-based np.unique took 4x the whole read)
    if (ordered[1:] == ordered[:-1]).any():
        raise ConvertError(f"{path}: a field:feature_id pair appears on two lines")
    return keys


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert the raw Ali-CCP (Tianchi) files into PaddleRec slot files.",
        epilog="Writes OUT/train_data/, OUT/test_data/ and OUT/meta.json. See doc/data.md.",
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
    parser.add_argument("--no-jit", action="store_true",
                        help="numpy kernels only, even if numba is installed (slower, same output)")  # fmt: skip
    parser.add_argument("--no-direct-io", action="store_true",
                        help="write through the page cache instead of with O_DIRECT")  # fmt: skip
    parser.add_argument("--format", choices=FORMATS, default="binary",
                        help="binary: the normalised data set the trainers read (default); "
                        "slot: PaddleRec's slot text (~17x the raw input)")  # fmt: skip
    parser.add_argument("--vocab", default=None,
                        help="keep the feasigns of an earlier output folder (or its vocab.txt) "
                        "and append the new (field, id) pairs of this train split")  # fmt: skip
    parser.add_argument("--freeze-vocab", action="store_true",
                        help="with --vocab: append nothing; pairs not in it are left out as unseen")  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress output")
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
            jit=False if args.no_jit else None,
            direct_io=not args.no_direct_io,
            fmt=args.format,
            vocab=args.vocab,
            freeze_vocab=args.freeze_vocab,
        )
    except ConvertError as e:
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
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is written, closed and reaped by now; skip the interpreter's teardown, which
    # with numba's compiled kernels loaded takes ~0.12 s (LLVM's), a tenth of a small run.
    os._exit(code)
