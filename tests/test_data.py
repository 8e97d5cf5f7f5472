"""Data layer: cache correctness and invalidation, batching, deterministic shuffling."""

import os
import time

import numpy as np
import pytest
from conftest import esmm_config

from paddle_rec_zoo.data import ali_ccp
from paddle_rec_zoo.data.dataset import Dataset, list_data_files
from paddle_rec_zoo.data.prefetch import prefetch
from paddle_rec_zoo.errors import UserError


def write_rows(path, rows, start=1):
    with open(path, "w") as f:
        for i in range(rows):
            sid = start + i
            f.write(f"{sid},{sid % 2},{int(sid % 4 == 1)},101:{sid % 50 + 1},205:{sid % 7 + 1}\n")


def reader(*overrides):
    cfg = esmm_config("hyper_parameters.sparse_feature_number=100", *overrides)
    return ali_ccp.Reader(cfg)


def test_cache_matches_direct_read_and_is_rebuilt_when_the_file_changes(tmp_path):
    data = tmp_path / "train"
    data.mkdir()
    write_rows(data / "a.txt", 300)
    write_rows(data / "b.txt", 200, start=1000)
    files = list_data_files(str(data), "runner.train_data_dir")
    cache = str(tmp_path / "cache")
    mem = Dataset.load(files, reader(), None)
    cached = Dataset.load(files, reader(), cache)
    again = Dataset.load(files, reader(), cache)  # from the cache: memory-mapped
    assert isinstance(again.parts[0].ids, np.memmap)
    for ds in (cached, again):
        assert len(ds) == len(mem) == 500
        for a, b in zip(ds.parts, mem.parts, strict=True):
            np.testing.assert_array_equal(a.ids, b.ids)
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_array_equal(a.sample_id, b.sample_id)
    assert len(os.listdir(cache)) == 2
    time.sleep(0.01)
    write_rows(data / "a.txt", 10)  # new content, new mtime and size
    changed = Dataset.load(files, reader(), cache)
    assert len(changed) == 210
    assert len(os.listdir(cache)) == 2  # the stale entry of a.txt was replaced
    other = Dataset.load(files, reader("hyper_parameters.max_len=1"), cache)
    assert other.parts[0].ids.shape[1] == 23  # reader settings are part of the key


def test_batches_cover_every_row_once_and_shuffle_deterministically(tmp_path):
    write_rows(tmp_path / "a.txt", 250)
    write_rows(tmp_path / "b.txt", 130, start=500)
    files = list_data_files(str(tmp_path), "x")
    ds = Dataset.load(files, reader(), None)

    def ids_of(**kw):
        return [b.sample_id.tolist() for b in ds.batches(64, **kw)]

    plain = ids_of()
    assert [len(b) for b in plain] == [64] * 5 + [60]
    assert sorted(sum(plain, [])) == sorted(
        ds.parts[0].sample_id.tolist() + ds.parts[1].sample_id.tolist()
    )
    e0 = ids_of(shuffle=True, seed=1, epoch=0)
    assert e0 == ids_of(shuffle=True, seed=1, epoch=0)
    assert e0 != ids_of(shuffle=True, seed=1, epoch=1)
    assert sorted(sum(e0, [])) == sorted(sum(plain, []))
    # ranks of a distributed run see disjoint shares that add up to everything
    shares = [sum(ids_of(shuffle=True, seed=1, epoch=0, rank=r, world=2), []) for r in (0, 1)]
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == sorted(sum(plain, []))
    # labels stay with their rows
    batch = next(iter(ds.batches(500, shuffle=True, seed=3)))
    np.testing.assert_array_equal(batch.labels[:, 0], batch.sample_id % 2)
    np.testing.assert_array_equal(batch.ids[:, 0], batch.sample_id % 50 + 1)


def test_missing_or_empty_data_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        list_data_files(str(tmp_path / "nope"), "runner.train_data_dir")
    (tmp_path / ".hidden").write_text("1,0,0\n")
    with pytest.raises(UserError, match="runner.test_data_dir: folder .* holds no data files"):
        list_data_files(str(tmp_path), "runner.test_data_dir")


def test_prefetch_passes_items_and_errors_through():
    assert list(prefetch(iter(range(10)), depth=2)) == list(range(10))

    def boom():
        yield 1
        raise ValueError("bad")

    it = prefetch(boom())
    assert next(it) == 1
    with pytest.raises(ValueError, match="bad"):
        next(it)
    # abandoning an iterator early does not hang
    it = prefetch(iter(range(1000)), depth=1)
    next(it)
    it.close()


def test_parallel_parse_of_one_file_equals_one_process_parse(tmp_path, monkeypatch):
    from paddle_rec_zoo.data import parallel_parse

    write_rows(tmp_path / "a.txt", 3000)
    monkeypatch.setattr(parallel_parse, "_MIN_PART_BYTES", 1000)  # this small file: 3 processes
    files = [str(tmp_path / "a.txt")]
    one = Dataset.load(files, reader(), str(tmp_path / "c1"), workers=1)
    parse_range, log = parallel_parse._parse_range, tmp_path / "ranges.log"

    def logged(path, reader, folder, ids_dtype, start, end):  # runs in the forked processes too
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {start} {end}\n")
        return parse_range(path, reader, folder, ids_dtype, start, end)

    monkeypatch.setattr(parallel_parse, "_parse_range", logged)
    three = Dataset.load(files, reader(), str(tmp_path / "c3"), workers=3)
    ranges = [line.split() for line in log.read_text().splitlines()]
    assert len({pid for pid, _, _ in ranges}) == 3  # three processes, one range each
    cuts = sorted({int(x) for _, a, z in ranges for x in (a, z)})
    assert cuts == parallel_parse.parse_cuts(files[0], reader(), 3)
    assert len(cuts) == 4 and cuts[0] == 0 and cuts[-1] == os.path.getsize(files[0])
    monkeypatch.setattr(parallel_parse, "_parse_range", parse_range)
    for name in ("sample_id", "labels", "ids"):
        np.testing.assert_array_equal(getattr(one.parts[0], name), getattr(three.parts[0], name))
    assert vars(one.stats) == vars(three.stats)
    # a bad line in the last part: the same message, with its line number in the whole file
    with open(tmp_path / "a.txt", "a") as f:
        f.write("5,1,0,101:abc\n")
    for workers, cache in ((1, "d1"), (3, "d3")):
        with pytest.raises(UserError, match=r"a.txt:3001: field 101: feasign 'abc'"):
            Dataset.load(files, reader(), str(tmp_path / cache), workers=workers)
    skip = ("runner.skip_bad_lines=True",)
    one = Dataset.load(files, reader(*skip), str(tmp_path / "e1"), workers=1)
    three = Dataset.load(files, reader(*skip), str(tmp_path / "e3"), workers=3)
    assert three.stats.bad_lines == one.stats.bad_lines == 1
    assert vars(one.stats) == vars(three.stats)


def test_large_cached_columns_are_read_not_mapped_and_give_the_same_rows(tmp_path, monkeypatch):
    from paddle_rec_zoo.data import column_files

    write_rows(tmp_path / "a.txt", 700)
    ds = Dataset.load([str(tmp_path / "a.txt")], reader(), str(tmp_path / "cache"))
    ids = ds.parts[0].ids
    assert isinstance(ids, np.memmap)
    assert column_files.PREAD_BYTES == 1 << 30  # "columns of 1 GB or more" (doc/architecture.md)
    reads = []

    def pread(fd, n, offset):  # a spy on the pread path
        reads.append((n, offset))
        return real_pread(fd, n, offset)

    real_pread = os.pread
    monkeypatch.setattr(os, "pread", pread)

    def epoch():
        return list(ds.batches(64, shuffle=True, seed=5))  # gathered in the prefetch thread

    mapped = epoch()  # the default threshold, 1 GB: this column is mapped
    monkeypatch.setattr(
        column_files, "PREAD_BYTES", ids.nbytes + 1
    )  # one byte short of the threshold
    mapped += epoch()
    assert reads == []
    monkeypatch.setattr(column_files, "PREAD_BYTES", ids.nbytes)  # "at least this large": read
    read = epoch() + epoch()
    row = ids.strides[0]
    assert len(reads) == 2 * len(ds)  # one pread per row, of that row
    assert {n for n, _ in reads} == {row}
    assert sorted(offset // row for _, offset in reads[: len(ds)]) == list(range(len(ds)))
    for a, b in zip(mapped, read, strict=True):
        for x, y in zip(a[:3], b[:3], strict=True):  # ids, labels, sample_id (no rows here)
            np.testing.assert_array_equal(x, y)
            assert x.dtype == y.dtype


class WholeFileReader:
    """A reader without byte ranges (no `supports_ranges`): `read_file(path)` only."""

    def __init__(self, inner):
        self.inner = inner
        self.layout, self.label_names = inner.layout, inner.label_names
        self.cache_key, self.max_id = inner.cache_key, inner.max_id
        self.calls = []

    def read_file(self, path):
        self.calls.append(path)
        return self.inner.read_file(path)


def test_a_reader_without_byte_ranges_is_read_in_one_process_without_probing(tmp_path, monkeypatch):
    from paddle_rec_zoo.data import parallel_parse

    write_rows(tmp_path / "a.txt", 3000)
    monkeypatch.setattr(parallel_parse, "_MIN_PART_BYTES", 1000)  # large enough for 3 processes
    files = [str(tmp_path / "a.txt")]
    plain = WholeFileReader(reader())
    assert parallel_parse.parse_cuts(files[0], plain, 3) == [0, os.path.getsize(files[0])]
    assert plain.calls == []  # told by its class, not found out by running it
    got = Dataset.load(files, plain, str(tmp_path / "c"), workers=3)
    want = Dataset.load(files, reader(), str(tmp_path / "c3"), workers=3)
    assert plain.calls == files
    np.testing.assert_array_equal(got.parts[0].ids, want.parts[0].ids)
    assert vars(got.stats) == vars(want.stats)


def test_read_stats_add_up_ranges_and_files_keeping_the_first_five_examples():
    from paddle_rec_zoo.data.read_stats import ReadStats

    def info(rows, bad, filtered):
        return {"rows": rows, "bad_lines": len(bad), "bad_examples": bad, "filtered": filtered}

    stats = ReadStats()
    stats.add(info(10, ["a:1", "a:2", "a:3"], {"noise": 2}))
    stats.add(info(5, ["b:1", "b:2", "b:3"], {"noise": 1, "other": 4}))
    assert stats.info() == {
        "rows": 15,
        "bad_lines": 6,  # every bad line counted, 5 examples kept
        "bad_examples": ["a:1", "a:2", "a:3", "b:1", "b:2"],
        "filtered": {"noise": 3, "other": 4},
    }
    assert ReadStats(rows=7).info() == info(7, [], {})
