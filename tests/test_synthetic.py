"""Tests of the synthetic Ali-CCP generator (datasets/ali-ccp/synthetic.py) and the bundled sample."""

import csv
import filecmp
import hashlib
import json
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from paddle_rec_zoo.data.ali_ccp import synthetic as syn

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "datasets" / "ali-ccp" / "synthetic.py"
SAMPLE = ROOT / "models" / "multitask" / "esmm" / "data"


SINGLE_VALUED = ("101", *syn.PROFILE_FIELDS, "205", "206", "207", "216", "301")


def read_slot(path):
    """[(sample_id, click, buy, [(field, feasign), ...]), ...] of one slot file."""
    rows = []
    text = Path(path).read_text(encoding="utf-8")
    assert text.endswith("\n") and "\r" not in text
    for line in text.splitlines():
        cols = line.split(",")
        tokens = []
        for tok in cols[3:]:
            field, sep, value = tok.partition(":")
            assert sep and value.isdigit(), f"bad token {tok!r} in {line[:80]!r}"
            tokens.append((field, int(value)))
        rows.append((int(cols[0]), int(cols[1]), int(cols[2]), tokens))
    return rows


def read_truth(path):
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        assert next(reader) == ["sample_id", "pctr", "pcvr"]
        rows = [(int(a), float(b), float(c)) for a, b, c in reader]
    sid, pctr, pcvr = zip(*rows, strict=True)
    return np.array(sid), np.array(pctr), np.array(pcvr)


def tree_bytes(root):
    root = Path(root)
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


@pytest.fixture(scope="module")
def slot20k(tmp_path_factory):
    out = tmp_path_factory.mktemp("slot20k")
    meta = syn.generate(out, 20_000, seed=3)
    data = {s: read_slot(out / f"{s}_data" / "part-00000.txt") for s in ("train", "test")}
    truth = {s: read_truth(out / f"truth_{s}.csv") for s in ("train", "test")}
    return out, meta, data, truth


@pytest.fixture(scope="module")
def raw5k(tmp_path_factory):
    out = tmp_path_factory.mktemp("raw5k")
    return out, syn.generate(out, 5_000, seed=4, fmt="raw")


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for fmt in ("slot", "raw"):
        a = syn.generate(tmp_path / f"{fmt}a", 3000, seed=11, fmt=fmt)
        b = syn.generate(tmp_path / f"{fmt}b", 3000, seed=11, fmt=fmt)
        c = syn.generate(tmp_path / f"{fmt}c", 3000, seed=12, fmt=fmt)
        assert a == b
        files_a, files_c = tree_bytes(tmp_path / f"{fmt}a"), tree_bytes(tmp_path / f"{fmt}c")
        assert files_a == tree_bytes(tmp_path / f"{fmt}b")
        assert files_a.keys() == files_c.keys()
        assert all(files_a[k] != files_c[k] for k in files_a)
        assert a["splits"]["train"]["ctr"] != c["splits"]["train"]["ctr"]


def tree_sha256(root) -> str:
    digest = hashlib.sha256()
    for name, data in tree_bytes(root).items():
        digest.update(name.encode() + b"\0" + data)
    return digest.hexdigest()


# The generator's bytes, recorded before it was split into functions: refactoring must keep them
# (a new draw or a changed format is a new data set, and these are to be updated knowingly).
GOLDEN = {
    "slot": "0bf000a1d5b0f0174dc8f51fcc2710c3c7e87c2ff7e0700efd93116983b6b609",
    "raw": "0b3d4a79424b8acfac57a8216ce68d671aeb0dc59729de5a20ef9d6b4e21dfa2",
}


def test_output_bytes_are_the_recorded_ones(tmp_path):
    syn.generate(tmp_path / "slot", 2000, seed=5, files=2, day=1)
    syn.generate(tmp_path / "raw", 2000, seed=5, fmt="raw")
    assert {fmt: tree_sha256(tmp_path / fmt) for fmt in GOLDEN} == GOLDEN


def test_slot_lines_parse(slot20k):
    _, meta, data, _ = slot20k
    sfn = meta["sparse_feature_number"]
    ranges = meta["field_ranges"]
    assert set(ranges) == set(syn.FIELDS) and len(syn.FIELDS) == 23
    seen_fields = Counter()
    expected_id = 1
    for split in ("train", "test"):
        assert len(data[split]) == meta["splits"][split]["rows"]
        for sid, click, buy, tokens in data[split]:
            assert sid == expected_id  # unique across splits; test follows train
            expected_id += 1
            assert click in (0, 1) and buy in (0, 1) and not (click == 0 and buy == 1)
            counts = Counter(f for f, _ in tokens)
            for field, feasign in tokens:
                lo, hi = ranges[field]  # KeyError = a field outside the 23
                assert 0 < lo <= feasign <= hi < sfn
            for field in SINGLE_VALUED:
                assert counts[field] == 1, (sid, field)
            for field in ("210", *syn.HISTORY_FIELDS):
                assert counts[field] >= 1
            assert len(set(tokens)) == len(tokens)
            seen_fields.update(counts.keys())
    assert set(seen_fields) == set(syn.FIELDS)
    n = expected_id - 1
    for field in syn.CROSS_FIELDS:  # crosses: present on some lines only
        assert 0.05 * n < seen_fields[field] < n
    lengths = [Counter(f for f, _ in t)["150_14"] for _, _, _, t in data["train"]]
    assert max(lengths) > 3 * min(lengths)  # history lengths vary


def test_rates_near_requested(slot20k):
    _, meta, _, _ = slot20k
    for split in ("train", "test"):
        info = meta["splits"][split]
        assert abs(info["expected"]["ctr"] - 0.04) < 0.006
        assert abs(info["expected"]["cvr_among_clicks"] - 0.06) < 0.012
    clicks = sum(meta["splits"][s]["clicks"] for s in ("train", "test"))
    buys = sum(meta["splits"][s]["buys"] for s in ("train", "test"))
    assert abs(clicks / 25_000 - 0.04) < 0.006
    assert abs(buys / clicks - 0.06) < 0.02


def test_sample_preset_rates(tmp_path):
    meta = syn.generate(tmp_path, 20_000, seed=5, preset="sample")
    info = meta["splits"]["train"]
    assert abs(info["ctr"] - 0.2) < 0.03
    assert abs(info["cvr_among_clicks"] - 0.25) < 0.04
    assert meta["sparse_feature_number"] < 3000


def test_truth_aligns_with_data(slot20k):
    _, _, data, truth = slot20k
    for split in ("train", "test"):
        sid, pctr, pcvr = truth[split]
        assert sid.tolist() == [row[0] for row in data[split]]
        assert ((pctr >= 0) & (pctr <= 1) & (pcvr >= 0) & (pcvr <= 1)).all()


def test_oracle_aucs_sane_and_match_sklearn(slot20k):
    _, meta, data, truth = slot20k
    for split in ("train", "test"):
        _, pctr, pcvr = truth[split]
        click = np.array([row[1] for row in data[split]])
        buy = np.array([row[2] for row in data[split]])
        oracle = meta["splits"][split]["oracle_auc"]
        clicked = click == 1
        assert oracle["ctr"] == pytest.approx(roc_auc_score(click, pctr), abs=1e-9)
        assert oracle["cvr"] == pytest.approx(roc_auc_score(buy[clicked], pcvr[clicked]), abs=1e-9)
        assert oracle["ctcvr"] == pytest.approx(roc_auc_score(buy, pctr * pcvr), abs=1e-9)
        assert all(0.6 < value < 0.99 for value in oracle.values()), oracle


def test_position_biases_ctr_not_cvr_and_cvr_is_not_ctr(slot20k):
    _, meta, data, truth = slot20k
    _, pctr, pcvr = truth["train"]
    first = meta["field_ranges"]["301"][0]
    pos = np.array([dict(row[3])["301"] - first for row in data["train"]])
    ctr_by_pos = [pctr[pos == j].mean() for j in range(3)]
    cvr_by_pos = [pcvr[pos == j].mean() for j in range(3)]
    assert ctr_by_pos[0] > 1.2 * ctr_by_pos[2]
    assert max(cvr_by_pos) < 1.1 * min(cvr_by_pos)
    assert abs(np.corrcoef(np.log(pctr), np.log(pcvr))[0, 1]) < 0.3


def test_auc_helper_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=500).astype(float)
    labels = rng.random(500) < 0.3
    assert syn.auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert syn.auc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0
    assert syn.auc(np.array([0.9, 0.1]), np.array([0, 1])) == 0.0
    assert syn.auc(np.ones(4), np.array([0, 1, 0, 1])) == 0.5


def test_files_option_splits_the_same_lines(tmp_path):
    syn.generate(tmp_path / "one", 3000, seed=2)
    meta = syn.generate(tmp_path / "three", 3000, seed=2, files=3)
    assert meta["splits"]["test"]["files"] == [f"test_data/part-0000{i}.txt" for i in range(3)]
    for split in ("train", "test"):
        parts = sorted((tmp_path / "three" / f"{split}_data").iterdir())
        assert len(parts) == 3
        joined = b"".join(p.read_bytes() for p in parts)
        assert joined == (tmp_path / "one" / f"{split}_data" / "part-00000.txt").read_bytes()


def _read_raw(path, columns):
    with open(path, encoding="utf-8", newline="") as fh:
        rows = [line.rstrip("\n").split(",") for line in fh]
    assert all(len(r) == columns for r in rows)
    return rows


def _feature_list(text):
    items = []
    for item in text.split("\x01"):
        field, rest = item.split("\x02")
        feature_id, value = rest.split("\x03")
        items.append((field, int(feature_id), float(value)))
    return items


def test_raw_layout(raw5k, tmp_path):
    out, meta = raw5k
    user_side = {"101", *syn.PROFILE_FIELDS, *syn.HISTORY_FIELDS}
    slot = syn.generate(tmp_path, 5_000, seed=4)  # the same impressions in slot format
    noise_total = 0
    for split in ("train", "test"):
        common = {}
        for cfi, num, flist in _read_raw(out / f"common_features_{split}.csv", 3):
            items = _feature_list(flist)
            assert len(items) == int(num) and cfi not in common and len(cfi) == 32
            assert {f for f, _, _ in items} == user_side
            common[cfi] = items
        assert len(common) == meta["splits"][split]["common_feature_rows"]
        skeleton = _read_raw(out / f"sample_skeleton_{split}.csv", 6)
        noise, real = [], []
        for sid, click, buy, cfi, num, flist in skeleton:
            items = _feature_list(flist)
            assert cfi in common and len(items) == int(num)
            fields = {f for f, _, _ in items}
            assert fields <= {*syn.ITEM_FIELDS, *syn.CROSS_FIELDS, "301"} and "205" in fields
            (noise if (click, buy) == ("0", "1") else real).append((int(sid), click, buy))
        assert len(noise) == meta["splits"][split]["noise_rows"] >= 3
        noise_total += len(noise)
        truth_ids, _, _ = read_truth(out / f"truth_{split}.csv")
        assert [r[0] for r in real] == truth_ids.tolist()
        assert not set(truth_ids) & {r[0] for r in noise}
        slot_rows = read_slot(tmp_path / f"{split}_data" / "part-00000.txt")
        assert [(r[0], str(r[1]), str(r[2])) for r in slot_rows] == real
    assert (out / "truth_train.csv").read_bytes() == (tmp_path / "truth_train.csv").read_bytes()
    assert noise_total == len(
        meta["splits"]["train"]["noise_sample_ids"] + meta["splits"]["test"]["noise_sample_ids"]
    )
    assert slot["splits"]["train"]["oracle_auc"] == meta["splits"]["train"]["oracle_auc"]


def test_unknown_parameter_is_rejected_with_a_hint(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'max_history'"):
        syn.generate(tmp_path, 100, max_histroy=3)
    with pytest.raises(ValueError, match="unknown preset"):
        syn.generate(tmp_path, 100, preset="tiny")


def test_help_documents_every_option_and_preset(capsys):
    with pytest.raises(SystemExit):
        syn.main(["--help"])
    text = capsys.readouterr().out
    for name in syn.PARAMS:
        assert "--" + name.replace("_", "-") in text
    for option in ("--n", "--out", "--seed", "--format", "--test-ratio", "--files", "--preset"):
        assert option in text
    assert "sample:" in text and "default:" in text


def test_runs_as_a_script(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--n", "500", "--out", str(tmp_path), "--seed", "1"]
    subprocess.run([*cmd, "--quiet", "--preset", "sample"], check=True, cwd=tmp_path)
    assert json.loads((tmp_path / "meta.json").read_text())["splits"]["test"]["rows"] == 125


def test_bundled_sample_is_what_the_documented_command_makes(tmp_path):
    readme = (SAMPLE / "README.md").read_text()
    (command,) = [line for line in readme.splitlines() if line.startswith("python datasets/")]
    args = shlex.split(command)[2:]
    args[args.index("--out") + 1] = str(tmp_path)
    syn.main([*args, "--quiet"])
    shipped = tree_bytes(SAMPLE)
    shipped.pop("README.md")
    assert shipped == tree_bytes(tmp_path)
    for split in ("train", "test"):  # the trainer reads every file in these folders
        assert [p.name for p in (SAMPLE / split).iterdir()] == ["part-00000.txt"]
    assert sum(len(b) for b in shipped.values()) < 2_000_000
    meta = json.loads(shipped["meta.json"])
    assert meta["sparse_feature_number"] < 5000
    assert meta["splits"]["test"]["oracle_auc"]["ctr"] >= 0.75
    assert meta["splits"]["test"]["oracle_auc"]["cvr"] >= 0.7
    assert not filecmp.cmp(SAMPLE / "truth_train.csv", SAMPLE / "truth_test.csv", shallow=False)
