"""The converter's binary data set (paddle_rec_zoo/binary_data.py) against its slot text.

The same raw files are converted twice, `--format slot` and the default binary; the data layer
must hand the model exactly the same batches from both, and a training run the same metrics.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import ESMM_CONFIG, esmm_config
from test_convert_raw import common_line, item, skel_line, write_raw

from paddle_rec_zoo.data import ali_ccp
from paddle_rec_zoo.data.ali_ccp import convert as cr
from paddle_rec_zoo.data.binary_data import BinarySplit
from paddle_rec_zoo.data.dataset import Dataset, list_data_files
from paddle_rec_zoo.errors import UserError


def overlapping_raw(d: Path, n_users=30, n_rows=1200, seed=3) -> Path:
    """Random raw files where some fields occur on both sides: 210 (multi-valued) and 101 are
    in common rows and in skeleton rows, so a row's ids of one field come from both arrays."""
    r = random.Random(seed)
    files = {}
    for split in ("train", "test"):
        cfis = [f"{split}-u{u}" for u in range(n_users)]
        lines = []
        for c in cfis:
            its = [item("101", r.randint(1, 20)), item("124", r.randint(1, 3))]
            its += [item("109_14", r.randint(1, 300)) for _ in range(r.randint(0, 30))]
            its += [item("210", r.randint(1, 50)) for _ in range(r.randint(0, 4))]
            r.shuffle(its)
            lines.append(common_line(c, its))
        files[f"common_features_{split}.csv"] = "".join(lines)
        lines = []
        for s in range(n_rows):
            click = int(r.random() < 0.4)
            buy = int(click and r.random() < 0.4)
            its = [item("205", r.randint(1, 90)), item("301", r.randint(1, 3))]
            its += [item("210", r.randint(1, 50)) for _ in range(r.randint(0, 3))]
            if r.random() < 0.2:
                its.append(item("101", r.randint(1, 20)))
            r.shuffle(its)
            lines.append(
                skel_line(s + 1 + 10**6 * (split == "test"), click, buy, r.choice(cfis), its)
            )
        files[f"sample_skeleton_{split}.csv"] = "".join(lines)
    return write_raw(d, files)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(slot folder, binary folder, meta); several parts per split, so parts are joined."""
    root = tmp_path_factory.mktemp("binary")
    raw = overlapping_raw(root / "raw")
    saved = cr.BLOCK_BYTES, cr.TASK_BYTES
    cr.BLOCK_BYTES, cr.TASK_BYTES = 4096, 20_000
    try:
        cr.convert(raw, root / "slot", workers=2, progress=False, fmt="slot")
        meta = cr.convert(raw, root / "bin", workers=2, progress=False)
    finally:
        cr.BLOCK_BYTES, cr.TASK_BYTES = saved
    assert meta["format"] == "binary"
    return root / "slot", root / "bin", meta


def load(folder: Path, split: str, *overrides: str, cache=None) -> Dataset:
    cfg = esmm_config(*overrides)
    reader = ali_ccp.Reader(cfg)
    files = list_data_files(str(folder / f"{split}_data"), f"runner.{split}_data_dir")
    return Dataset.load(files, reader, None if cache is None else str(cache))


def assert_same_batches(a: Dataset, b: Dataset, **plan):
    n = 0
    for x, y in zip(a.batches(**plan), b.batches(**plan), strict=True):
        np.testing.assert_array_equal(x.ids, y.ids)
        assert x.ids.dtype == y.ids.dtype == np.int64
        np.testing.assert_array_equal(x.labels, y.labels)
        np.testing.assert_array_equal(x.sample_id, y.sample_id)
        n += len(x.labels)
    return n


OVERRIDES = [
    (),  # the 23 fields, max_len 3
    ("hyper_parameters.max_len=1",),
    ("hyper_parameters.max_len=40",),  # longer than any field: nothing capped
    ("hyper_parameters.fields=[205,301,124,109_14]",),  # no field on both sides: the fast path
    (
        "hyper_parameters.fields=[210,101,205,109_14]",
        "hyper_parameters.field_options={210: {max_len: 5}, 109_14: {max_len: 7}}",
    ),
]


@pytest.mark.parametrize("overrides", OVERRIDES)
@pytest.mark.parametrize("split", ["train", "test"])
def test_binary_batches_equal_slot_batches(converted, overrides, split):
    slot, binary, meta = converted
    n_ids = f"hyper_parameters.sparse_feature_number={meta['sparse_feature_number']}"
    a, b = load(slot, split, n_ids, *overrides), load(binary, split, n_ids, *overrides)
    assert isinstance(b.parts[0], BinarySplit) and len(a) == len(b) == meta["rows"][split]
    assert assert_same_batches(a, b, batch_size=100) == len(a)
    # shuffled, and each rank of two its share, as in training
    for rank in (0, 1):
        plan = dict(batch_size=64, shuffle=True, seed=7, epoch=2, rank=rank, world=2, equal=True)
        assert assert_same_batches(a, b, **plan) == len(a) // 2


def test_the_users_layout_is_cached_per_layout(converted, tmp_path):
    slot, binary, meta = converted
    n_ids = f"hyper_parameters.sparse_feature_number={meta['sparse_feature_number']}"
    cache = tmp_path / "cache"
    want = load(slot, "train", n_ids)
    for overrides, entries in (((), 1), ((), 1), (("hyper_parameters.max_len=5",), 2)):
        got = load(binary, "train", n_ids, *overrides, cache=cache)
        assert len(list(cache.glob("common-train_data-*.fields.npy"))) == entries
        if not overrides:
            assert assert_same_batches(want, got, batch_size=128, shuffle=True) == len(want)
    assert not list(cache.glob(".*"))  # no half-built entry left


def test_the_fixture_has_fields_on_both_sides(converted):
    """Without ids of one field in both arrays the merge of the two would go untested."""
    _, binary, meta = converted
    part = load(
        binary, "train", f"hyper_parameters.sparse_feature_number={meta['sparse_feature_number']}"
    ).parts[0]
    lo, hi = meta["field_ranges"]["210"]
    c = part.cols
    item_210 = (np.asarray(c["item_ids"]) >= lo) & (np.asarray(c["item_ids"]) <= hi)
    common_210 = (np.asarray(c["common_ids"]) >= lo) & (np.asarray(c["common_ids"]) <= hi)
    assert item_210.sum() > 100 and common_210.sum() > 20


def test_ids_beyond_the_table_are_an_error_or_folded(converted):
    slot, binary, meta = converted
    small = "hyper_parameters.sparse_feature_number=100"
    with pytest.raises(UserError, match=r"train_data: field 109_14: feasigns up to \d+ are not "):
        load(binary, "train", small)
    folded = ("hyper_parameters.hash_ids=True", small)
    a, b = load(slot, "train", *folded), load(binary, "train", *folded)
    assert assert_same_batches(a, b, batch_size=256) == len(a)


def test_a_damaged_data_set_is_one_line(converted, tmp_path):
    _, binary, meta = converted
    folder = tmp_path / "train_data"
    folder.mkdir()
    for f in (binary / "train_data").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    n_ids = f"hyper_parameters.sparse_feature_number={meta['sparse_feature_number']}"
    with open(folder / "item_ids.bin", "r+b") as f:
        f.truncate(8)
    with pytest.raises(UserError, match=r"item_ids.bin: missing or not \d+ bytes"):
        load(tmp_path, "train", n_ids)
    info = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**info, "format": "other/9"}))
    with pytest.raises(UserError, match="format 'other/9'"):
        load(tmp_path, "train", n_ids)


def train_and_predict(tool: str, data: Path, out: Path, n_ids: int) -> tuple[list, str]:
    from paddle_rec_zoo.run.cli import main

    opts = [
        f"runner.train_data_dir={data / 'train_data'}",
        f"runner.test_data_dir={data / 'test_data'}",
        f"runner.model_save_path={out}",
        f"runner.cache_dir={out}-cache",
        "runner.epochs=2",
        "runner.infer_end_epoch=2",
        "runner.train_batch_size=128",
        f"runner.save_predictions={out}/predictions.csv",
        f"hyper_parameters.sparse_feature_number={n_ids}",
    ]
    infer = "infer" if tool == "trainer" else "static_infer"
    assert main(tool, ["-m", ESMM_CONFIG, "-o", *opts]) == 0
    assert main(infer, ["-m", ESMM_CONFIG, "-o", *opts]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        r.pop("samples_per_s")
    return records, (out / "predictions.csv").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["trainer", "static_trainer"])
def test_training_on_either_form_gives_identical_metrics(converted, tmp_path, tool):
    slot, binary, meta = converted
    n = meta["sparse_feature_number"]
    from_slot = train_and_predict(tool, slot, tmp_path / "slot", n)
    from_binary = train_and_predict(tool, binary, tmp_path / "bin", n)
    assert from_slot[0] and from_slot[0] == from_binary[0]
    assert from_slot[1].count("\n") == meta["rows"]["test"] + 1
    assert from_slot[1] == from_binary[1]


@pytest.mark.slow
def test_fleet_ranks_read_their_share_of_either_form_alike(converted, tmp_path):
    """Two data-parallel processes (each rank its share of every shuffled epoch) train to the
    same metrics, and evaluate the whole test split, from either form."""
    from conftest import launch_fleet

    slot, binary, meta = converted
    records = {}
    for name, data in (("slot", slot), ("bin", binary)):
        proc, (log0, _) = launch_fleet(
            tmp_path / f"log-{name}",
            "trainer",
            f"runner.train_data_dir={data / 'train_data'}",
            f"runner.test_data_dir={data / 'test_data'}",
            f"runner.model_save_path={tmp_path / name}",
            f"runner.cache_dir={tmp_path / 'cache'}",
            "runner.epochs=1",
            "runner.train_batch_size=128",
            "runner.evaluate_each_epoch=True",
            f"hyper_parameters.sparse_feature_number={meta['sparse_feature_number']}",
        )
        assert proc.returncode == 0, log0[-3000:]
        assert "on each of 2 ranks" in log0
        assert f"(samples {meta['rows']['test']:,}," in log0  # the whole split, gathered
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        records[name] = [json.loads(line) for line in lines]
        for r in records[name]:
            r.pop("samples_per_s")
    assert records["slot"] and records["slot"] == records["bin"]


@pytest.mark.slow
def test_resuming_on_the_binary_form_finishes_the_same_run(converted, tmp_path):
    """The epoch order is seeded by (seed, epoch) whatever the form: an interrupted run resumed
    on the binary data set logs what the uninterrupted one does."""
    from paddle_rec_zoo.run.cli import main

    _, binary, meta = converted

    def run(save, epochs, *extra):
        opts = [
            f"runner.train_data_dir={binary / 'train_data'}",
            f"runner.test_data_dir={binary / 'test_data'}",
            f"runner.model_save_path={save}",
            f"runner.cache_dir={tmp_path / 'cache'}",
            f"runner.epochs={epochs}",
            "runner.shuffle=True",
            "runner.train_batch_size=128",
            f"hyper_parameters.sparse_feature_number={meta['sparse_feature_number']}",
        ]
        assert main("trainer", ["-m", ESMM_CONFIG, "-o", *opts, *extra]) == 0
        lines = (save / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k != "samples_per_s"} for x in lines]

    whole = run(tmp_path / "whole", 3)
    run(tmp_path / "resumed", 1)
    assert run(tmp_path / "resumed", 3, "runner.resume=True") == whole
    assert {r["epoch"] for r in whole} == {0, 1, 2}


def write_binary(folder: Path, fields, rows, users, n_ids: int):
    """A binary data set by hand: `rows` = [(sample_id, click, buy, user, item ids)], `users` =
    [common ids of user u]; `fields` = {field: its feasigns} (feasign_field.bin)."""
    folder.mkdir()
    field_of = np.full(n_ids, 255, np.uint8)
    for i, ids in enumerate(fields.values()):
        field_of[list(ids)] = i
    items = [r[4] for r in rows]
    cols = {
        "sample_id": np.array([r[0] for r in rows], np.int64),
        "labels": np.array([r[1:3] for r in rows], np.int8),
        "user": np.array([r[3] for r in rows], np.int32),
        "item_offsets": np.cumsum([0] + [len(x) for x in items]).astype(np.int64),
        "item_ids": np.array(sum(items, []), np.int32),
        "common_offsets": np.cumsum([0] + [len(x) for x in users]).astype(np.int64),
        "common_ids": np.array(sum(users, []), np.int32),
        "feasign_field": field_of,
    }
    for name, a in cols.items():
        (folder / f"{name}.bin").write_bytes(a.tobytes())
    meta = {
        "format": "ali-ccp-binary/1",
        "rows": len(rows),
        "users": len(users),
        "fields": list(fields),
        "columns": {k: [a.dtype.name, list(a.shape)] for k, a in cols.items()},
    }
    (folder / "dataset.json").write_text(json.dumps(meta))


def test_hash_ids_folds_binary_ids_as_slot_text_by_the_documented_rule(tmp_path):
    """1 + (id - 1) mod (n - 1) for ids >= n (doc/data.md), never 0, from both forms of the data;
    the ids are chosen so that id mod n or id mod (n - 1) would be 0 for many of them."""
    item = [[10, 18, 20, 9], [19, 100, 11]]  # field 205, the impressions' own
    common = [[30, 1000, 25, 12], [17, 5]]  # field 101, the users'
    write_binary(
        tmp_path / "bin",
        {"205": {10, 18, 20, 9, 19, 100, 11}, "101": {30, 1000, 25, 12, 17, 5}},
        [(1, 1, 0, 0, item[0]), (2, 0, 0, 1, item[1])],
        common,
        n_ids=1001,
    )
    slot = tmp_path / "slot.txt"
    slot.write_text(
        "".join(
            f"{sid},{click},0,"
            + ",".join([f"205:{i}" for i in its] + [f"101:{i}" for i in com])
            + "\n"
            for sid, click, its, com in ((1, 1, item[0], common[0]), (2, 0, item[1], common[1]))
        )
    )
    cfg = esmm_config(
        "hyper_parameters.fields=[205,101]",
        "hyper_parameters.max_len=4",
        "hyper_parameters.sparse_feature_number=10",
        "hyper_parameters.hash_ids=True",
    )
    want = [[1, 9, 2, 9, 3, 1, 7, 3], [1, 1, 2, 0, 8, 5, 0, 0]]
    binary = Dataset.load([str(tmp_path / "bin")], ali_ccp.Reader(cfg), None)
    text = Dataset.load([str(slot)], ali_ccp.Reader(cfg), None)
    assert isinstance(binary.parts[0], BinarySplit) and not isinstance(text.parts[0], BinarySplit)
    for data in (binary, text):
        batch = data.gather(np.arange(2))
        np.testing.assert_array_equal(batch.ids, want)
        np.testing.assert_array_equal(batch.sample_id, [1, 2])
