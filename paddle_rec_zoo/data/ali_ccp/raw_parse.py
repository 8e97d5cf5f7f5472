"""Parsing the raw Ali-CCP files (Tianchi data set 408), vectorised with numpy.

A skeleton line is ``sample_id,click,buy,common_feature_index,feature_num,feature_list`` and a
common-features line ``common_feature_index,feature_num,feature_list``; a feature list is items
``field\\x02feature_id\\x03value`` joined by ``\\x01``. A block of whole lines is parsed at once
(`parse_block`: delimiter positions of the whole block, 8-byte word loads for ids and hashes, no
Python loop per line); a line that breaks the format is flagged there and explained by
`explain_line`, a slow exact twin of the same checks, so that errors name the problem.

A kept feature becomes an int64 key ``field_index << KEY_SHIFT | feature_id``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from paddle_rec_zoo.data.slot_parser import byte_words, parse_uints

KEY_SHIFT = 56  # key = field_index << 56 | feature_id
MAX_DIGITS = 16  # ids below 10**16 < 2**56 fit the key

_HASH_P = 0x100000001B3  # FNV-1 64-bit prime
_HASH_MIX = 0x9E3779B97F4A7C15
_HASH_WORDS = 32  # tokens longer than 256 bytes are hashed on their first 256 bytes
_MASK64 = (1 << 64) - 1
_LOW_MASK = np.array([(1 << (8 * i)) - 1 for i in range(8)] + [(1 << 64) - 1], np.uint64)


def hash_bytes(token: bytes) -> int:
    """Python twin of `hash_tokens`: fold the 8-byte little-endian words of the token."""
    h = (len(token) * _HASH_MIX) & _MASK64
    for i in range(0, min(len(token), 8 * _HASH_WORDS), 8):
        w = int.from_bytes(token[i : i + 8], "little")
        h = ((h ^ w) * _HASH_P) & _MASK64
    return h


def hash_tokens(words, starts, lens):
    """uint64 hash of each token ``buf[starts:starts+lens]`` (exact key for up to 8 bytes);
    `words` is `byte_words(buf)`."""
    h = lens.astype(np.uint64) * np.uint64(_HASH_MIX)
    if len(starts) == 0:
        return h
    n_words = min(int((lens.max() + 7) // 8), _HASH_WORDS)
    last = len(words) - 1
    for i in range(n_words):
        take = np.clip(lens - 8 * i, 0, 8)
        w = words[np.minimum(starts + 8 * i, last)] & _LOW_MASK[take]
        h = np.where(take > 0, (h ^ w) * np.uint64(_HASH_P), h)
    return h


def parse_uint(buf, words, starts, ends):
    """Decimal value of each token ``buf[starts:ends]`` and whether it is 1..16 ASCII digits."""
    value, ok = parse_uints(buf, words, starts, ends)
    return value, ok & (ends - starts <= MAX_DIGITS)


def field_lookup(fields):
    """The kept fields' token hashes, sorted, and the field index of each (for `parse_block`)."""
    hashes = np.array([hash_bytes(f.encode()) for f in fields], np.uint64)
    order = np.argsort(hashes)
    return hashes[order], order.astype(np.int64)


# Allowed delimiter transitions within and between lines: ',' -> ',' STX NL; STX -> ETX;
# ETX -> SOH NL; SOH -> STX; NL -> ',' NL. Anything else marks the line of the second one bad.
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
    """Parse complete lines (`buf` ends with a newline) with numpy only, no loop over lines."""
    arr = np.frombuffer(buf, np.uint8)
    words = byte_words(arr)
    is_delim = (arr == 44) | (arr == 10) | ((arr >= 1) & (arr <= 3))
    dpos = np.flatnonzero(is_delim)  # every delimiter ends one token
    dcls = arr[dpos]
    is_nl = dcls == 10
    nl = np.flatnonzero(is_nl)
    n_lines = len(nl)
    first = np.zeros(n_lines, np.int64)  # index of each line's first delimiter
    first[1:] = nl[:-1] + 1
    line_start = np.zeros(n_lines, np.int64)
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
        head_ok &= parse_uint(arr, words, starts[0], ends[0])[1]
        click_b, buy_b = arr[starts[1]], arr[starts[2]]
        head_ok &= (ends[1] - starts[1] == 1) & (ends[2] - starts[2] == 1)
        head_ok &= ((click_b == 48) | (click_b == 49)) & ((buy_b == 48) | (buy_b == 49))
    c = n_head - 2
    head_ok &= ends[c] > starts[c]
    cfi = hash_tokens(words, starts[c], ends[c] - starts[c])
    fnum, fnum_ok = parse_uint(arr, words, starts[c + 1], ends[c + 1])
    head_ok &= fnum_ok & (fnum == n_feat[ok_lines])

    # Features of sound lines: the field token ends at STX, its id at the ETX right after.
    row_of_line = np.full(n_lines, -1, np.int64)
    row_of_line[ok_lines] = np.arange(len(ok_lines))
    ftok = np.flatnonzero(is_stx)
    frow = row_of_line[nl_cum[ftok]]
    ftok, frow = ftok[frow >= 0], frow[frow >= 0]
    fstart = dpos[ftok - 1] + 1
    flen = dpos[ftok] - fstart
    fhash = hash_tokens(words, fstart, flen)
    pos = np.minimum(np.searchsorted(field_hashes, fhash), len(field_hashes) - 1)
    fidx = np.where(field_hashes[pos] == fhash, field_index[pos], -1)
    keep = fidx >= 0
    ids, id_ok = parse_uint(arr, words, dpos[ftok[keep]] + 1, dpos[ftok[keep] + 1])
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
    b.line_start = line_start[g]
    b.cfi = cfi[good_rows]
    if n_head == 5:
        b.click = (click_b[good_rows] - 48).astype(np.int8)
        b.buy = (buy_b[good_rows] - 48).astype(np.int8)
        b.head_end = ends[2][good_rows]
    b.feat_row = new_row[fkeep_row[fsel]]
    b.key = (fidx[keep][fsel].astype(np.int64) << KEY_SHIFT) | ids[fsel]
    b.bad_offsets = line_start[bad]
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

    for name, x in zip(names, cols[:-1], strict=False):
        if any(c in x for c in b"\x01\x02\x03"):
            return f"{name} {show(x)} holds a feature-list delimiter (\\x01-\\x03)"

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
# Byte ranges of a file


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


def n_tasks_for(size: int, workers: int, task_bytes: int) -> int:
    """Tasks of at most `task_bytes` each, and at least one per worker for files over 1 MB."""
    tasks = math.ceil(size / task_bytes)
    if size > (1 << 20):  # big enough to be worth splitting over every worker
        tasks = max(tasks, workers)
    return max(tasks, 1)


def read_blocks(path, start, end, block_bytes):
    """Yield (offset, bytes) of whole lines covering [start, end); the last gets a newline."""
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
