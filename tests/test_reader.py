"""The slot reader: exact ids and labels, PaddleRec's published files, and bad input."""

import os

import numpy as np
import pytest
from conftest import FIXTURES, esmm_config

from paddle_rec_zoo.data import ali_ccp
from paddle_rec_zoo.data.slot_parser import BadLines, SlotParser
from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.schema import Columns, FieldLayout

ALICCP = os.path.join(FIXTURES, "aliccp")


def parser(fields=("101", "205", "150_14"), max_len=2, id_limit=1000, **kw):
    layout = FieldLayout(tuple(fields), (max_len,) * len(fields))
    return SlotParser(layout, ("click", "buy"), id_limit=id_limit, **kw)


def test_three_line_file(tmp_path):
    path = tmp_path / "part-0.txt"
    path.write_bytes(
        b"7,1,0,101:5,205:9,150_14:1,150_14:2,150_14:3,999:4\n"
        b"8,0,0,x,205:11,weird,101:6\n"
        b"9,1,1,150_14:4,205:12,101:7,101:8,101:9"  # no final newline
    )
    chunks = list(parser().parse_file(str(path)))
    cols = Columns.concat(chunks, 2, 6)
    np.testing.assert_array_equal(cols.sample_id, [7, 8, 9])
    np.testing.assert_array_equal(cols.labels, [[1, 0], [0, 0], [1, 1]])
    # layout: 101 x2, 205 x2, 150_14 x2; first max_len ids kept in file order; unknown field 999
    # and tokens without ':' are ignored
    np.testing.assert_array_equal(
        cols.ids,
        [[5, 0, 9, 0, 1, 2], [6, 0, 11, 0, 0, 0], [7, 8, 12, 0, 4, 0]],
    )


def test_crlf_blank_lines_and_chunk_boundaries_change_nothing(tmp_path):
    lines = [f"{i},{i % 2},0,101:{i + 1},205:{i + 2}" for i in range(1, 200)]
    plain = tmp_path / "a.txt"
    plain.write_text("\n".join(lines) + "\n")
    crlf = tmp_path / "b.txt"
    crlf.write_bytes(("\r\n".join(lines) + "\r\n\r\n").encode())
    p = parser()
    a = list(p.parse_file(str(plain)))
    b = list(p.parse_file(str(crlf), chunk_bytes=97))  # many chunks, lines cut across reads
    assert len(b) > 5
    ids_a = np.concatenate([c.ids for c in a])
    ids_b = np.concatenate([c.ids for c in b])
    np.testing.assert_array_equal(ids_a, ids_b)
    assert len(ids_a) == 199


def test_fourth_column_is_a_feature_as_in_paddlerec_sample():
    """PaddleRec's reader drops the 4th column; in its published sample that is `210:1`."""
    cfg = esmm_config()
    reader = ali_ccp.Reader(cfg)
    (cols, info), *_ = list(reader.read_file(os.path.join(ALICCP, "paddlerec_train_sample.txt")))
    layout = reader.layout
    col_210 = layout.offsets[layout.names.index("210")]
    assert cols.ids[0, col_210] == 1


@pytest.mark.parametrize("name", ["paddlerec_train_sample.txt", "paddlerec_test_sample.txt"])
def test_reads_published_aliccp_files_exactly(name):
    path = os.path.join(ALICCP, name)
    cfg = esmm_config()
    reader = ali_ccp.Reader(cfg)
    chunks = list(reader.read_file(path))
    cols = chunks[0][0]
    fields, max_len = cfg.hyper_parameters.fields, cfg.hyper_parameters.max_len
    expected_rows = []
    with open(path) as f:
        for line in f:  # a straightforward reference parser
            parts = line.rstrip("\n").split(",")
            if parts[1] == "0" and parts[2] == "1":
                continue
            row = np.zeros(len(fields) * max_len, np.int64)
            seen = dict.fromkeys(fields, 0)
            for token in parts[3:]:
                field, colon, feasign = token.partition(":")
                if colon and field in seen and seen[field] < max_len:
                    row[fields.index(field) * max_len + seen[field]] = int(feasign)
                    seen[field] += 1
            expected_rows.append((int(parts[0]), int(parts[1]), int(parts[2]), row))
    assert len(cols) == len(expected_rows) == 10
    for i, (sid, click, buy, row) in enumerate(expected_rows):
        assert cols.sample_id[i] == sid
        assert list(cols.labels[i]) == [click, buy]
        np.testing.assert_array_equal(cols.ids[i], row)
    assert (cols.ids > 0).sum(axis=1).min() >= 23  # every field present at least once


def test_noise_rows_are_dropped_and_counted(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("1,0,1,101:3\n2,1,1,101:4\n3,0,0,101:5\n")
    reader = ali_ccp.Reader(esmm_config())
    ((cols, info),) = list(reader.read_file(str(path)))
    assert list(cols.sample_id) == [2, 3]
    assert sum(info["filtered"].values()) == 1


@pytest.mark.parametrize(
    "line, problem",
    [
        ("5,1", "expected at least 3 comma-separated columns"),
        ("5,2,0,101:1", "click must be 0 or 1, got '2'"),
        ("5,1,x,101:1", "buy must be 0 or 1, got 'x'"),
        ("abc,1,0,101:1", "sample_id 'abc' is not a non-negative integer"),
        ("5,1,0,101:abc", "field 101: feasign 'abc' is not a non-negative integer"),
        ("5,1,0,101:-3", "field 101: feasign '-3' is not a non-negative integer"),
        ("5,1,0,205:", "field 205: feasign '' is not a non-negative integer"),
        (
            "5,1,0,205:1000",
            "field 205: feasign 1000 is not below hyper_parameters.sparse_feature_number"
            "=1000; raise hyper_parameters.sparse_feature_number to at least 1001",
        ),
        ("\x00\x01\xff\xfe,garbage", "binary data"),
    ],
)
def test_bad_lines_name_file_line_and_problem(tmp_path, line, problem):
    path = tmp_path / "part-0.txt"
    path.write_bytes(b"1,0,0,101:1\n" + line.encode("latin-1") + b"\n3,0,0,101:2\n")
    with pytest.raises(UserError) as err:
        list(parser().parse_file(str(path)))
    assert str(err.value).startswith(f"{path}:2: ")
    assert problem in str(err.value)
    bad = BadLines()
    cols = list(parser(skip_bad=True).parse_file(str(path), bad=bad))[0]
    assert list(cols.sample_id) == [1, 3]
    assert bad.count == 1 and problem in bad.examples[0]


def test_unknown_fields_do_not_need_valid_ids():
    cols = parser().parse_bytes(b"1,0,0,101:2,777:notanumber,none\n")
    assert list(cols.ids[0]) == [2, 0, 0, 0, 0, 0]


def test_eight_bytes_at_a_time_helpers_match_python():
    from paddle_rec_zoo.data.slot_parser import _first_byte, byte_words, parse_uints

    spans = ["0", "7", "42", "00012", "12345678", "99999999", "123456789", "100000000"]
    spans += ["123456789012345678", "1234567890123456789", "", "12a4", "1:2", "-3", "9" * 17]
    text = ",".join(spans).encode()
    buf = np.frombuffer(text, np.uint8)
    ends = np.flatnonzero(np.frombuffer(text + b",", np.uint8) == ord(","))
    starts = np.concatenate(([0], ends[:-1] + 1))
    value, ok = parse_uints(buf, byte_words(buf), starts, ends)
    for s, v, good in zip(spans, value, ok, strict=True):
        expected = s.isdigit() and len(s) <= 18
        assert bool(good) == expected, s
        assert int(v) == (int(s) if expected else 0), s
    words = byte_words(np.frombuffer(b"ab:cdefghij:", np.uint8))
    assert list(_first_byte(words[[0, 1, 2, 3, 4]], ord(":"))) == [2, 1, 0, 8, 7]


def test_byte_ranges_cut_anywhere_hold_every_line_once(tmp_path):
    """`parse_file(start, end)` reads the lines that start in [start, end): ranges between any
    cuts (on a line start, on a newline, inside a line, past the end) add up to the file."""
    lines = [f"{i},{i % 2},0,101:{i},205:{i * 7 % 999},150_14:{i % 5 + 1}" for i in range(1, 301)]
    path = tmp_path / "a.txt"
    path.write_text("\n".join(lines))  # no final newline
    data = path.read_bytes()
    whole = Columns.concat(list(parser().parse_file(str(path))), 2, 6)
    starts = [0] + [i + 1 for i, b in enumerate(data) if b == ord("\n")]
    rng = np.random.default_rng(0)
    for cuts in (
        [0, starts[100], len(data)],  # on a line start
        [0, starts[100] - 1, len(data)],  # on the newline before it
        [0, starts[100] + 3, starts[100] + 5, len(data) + 10],  # an empty range, past the end
        [0, *sorted(rng.integers(0, len(data), 6)), len(data)],
    ):
        parts = []
        for a, z in zip(cuts[:-1], cuts[1:], strict=True):
            parts += list(parser().parse_file(str(path), start=a, end=z, chunk_bytes=101))
        got = Columns.concat(parts, 2, 6)
        for name in ("sample_id", "labels", "ids"):
            np.testing.assert_array_equal(getattr(got, name), getattr(whole, name), err_msg=cuts)
    # a range starting inside line 3 begins with line 4, and errors count lines from the top
    path.write_bytes(data.replace(b"\n4,0,0,101:4,", b"\n4,0,0,101:x,", 1))
    with pytest.raises(UserError, match=r"a.txt:4: field 101: feasign 'x'"):
        list(parser().parse_file(str(path), start=starts[2] + 1, end=starts[10]))
    assert list(parser().parse_file(str(path), start=starts[4], end=starts[10]))  # line 4 is out


def test_reader_passes_its_byte_range_on():
    reader = ali_ccp.Reader(esmm_config())
    assert reader.supports_ranges  # so the data layer may split a file between processes
    path = os.path.join(ALICCP, "paddlerec_train_sample.txt")
    size = os.path.getsize(path)
    (whole, info), *_ = list(reader.read_file(path))
    head = [c for c, _ in reader.read_file(path, 0, size // 2)]
    tail = [c for c, _ in reader.read_file(path, size // 2, size)]
    both = Columns.concat(head + tail, 2, reader.layout.width)
    assert 0 < len(head[0]) < len(whole) == len(both) == info["rows"]
    np.testing.assert_array_equal(both.ids, whole.ids)


def test_hash_ids_folds_large_ids_by_the_documented_rule_never_to_padding():
    """doc/data.md: an id >= n becomes 1 + (id - 1) mod (n - 1); smaller ids stay, 0 is padding."""
    p = parser(fields=("205", "101"), max_len=4, id_limit=10, hash_ids=True)
    cols = p.parse_bytes(
        b"1,1,0,205:10,205:18,205:20,205:9,101:30,101:1000,101:25,101:12\n"
        b"2,0,0,205:19,205:100,205:11,101:17,101:5\n"
        b"3,0,0,205:999999999999999999,205:100000000000000000,101:0\n"
    )
    # 10, 20, 30, 100, 1000 and 10**17 are multiples of the table size (id mod 10 = 0), 18 and
    # 10**18 - 1 multiples of n - 1 (id mod 9 = 0): none folds to 0
    np.testing.assert_array_equal(
        cols.ids,
        [[1, 9, 2, 9, 3, 1, 7, 3], [1, 1, 2, 0, 8, 5, 0, 0], [9, 1, 0, 0, 0, 0, 0, 0]],
    )
    ids = np.arange(0, 1000)
    folded = p.parse_bytes("".join(f"{i},0,0,205:{i}\n" for i in ids).encode()).ids[:, 0]
    np.testing.assert_array_equal(folded[:10], ids[:10])  # below the table size: unchanged
    assert folded[10:].min() == 1 and folded[10:].max() == 9  # into [1, 10), never 0
    # the smallest table, 2 rows: every id but the padding becomes 1
    two = parser(fields=("205",), max_len=1, id_limit=2, hash_ids=True)
    assert two.parse_bytes(
        b"1,0,0,205:0\n2,0,0,205:1\n3,0,0,205:2\n4,0,0,205:77\n"
    ).ids.ravel().tolist() == [0, 1, 1, 1]
