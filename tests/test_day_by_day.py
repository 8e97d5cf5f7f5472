"""Day-by-day training, the README's worked example ("Day by day") on synthetic days.

Day 1 is converted and trained from scratch; day 2 is converted with day 1's vocabulary
(`--vocab`) and trained from day 1's model (`runner.model_init_path`); both that model and a cold
start trained on day 2 alone are evaluated on day 3 (converted with day 2's vocabulary, frozen).
"""

import json
import re

import numpy as np
import pytest
from conftest import ESMM_CONFIG

from paddle_rec_zoo.data.ali_ccp import convert as convert_raw
from paddle_rec_zoo.data.ali_ccp import synthetic
from paddle_rec_zoo.run.cli import main as cli_main

DAY = dict(n_train=4000, seed=7, preset="sample", test_ratio=0.0)
EVAL = re.compile(r"epoch 3 \[dygraph\]: auc_ctr (\S+) auc_cvr (\S+) auc_ctcvr (\S+)")


def read_slot(folder):
    lines = (folder / "part-00000.txt").read_text().splitlines()
    return [line.split(",") for line in lines]


def test_days_share_one_world_but_not_impressions(tmp_path):
    day1 = synthetic.generate(tmp_path / "d1", n_train=300, seed=3, preset="sample", day=1)
    day2 = synthetic.generate(tmp_path / "d2", n_train=300, seed=3, preset="sample", day=2)
    assert day1["intercepts"] == day2["intercepts"]  # the same calibrated world
    rows1 = read_slot(tmp_path / "d1" / "train_data")
    rows2 = read_slot(tmp_path / "d2" / "train_data")
    ids1, ids2 = {int(r[0]) for r in rows1}, {int(r[0]) for r in rows2}
    assert min(ids1) == synthetic.DAY_ID_STRIDE + 1 and min(ids2) == 2 * synthetic.DAY_ID_STRIDE + 1
    assert [r[3:] for r in rows1[:20]] != [r[3:] for r in rows2[:20]]  # other impressions

    def users(rows):  # user id -> its user-side tokens (profile and histories)
        out = {}
        for r in rows:
            toks = r[3:]
            uid = next(t for t in toks if t.startswith("101:"))
            out[uid] = sorted(t for t in toks[toks.index(uid) - 2 :] if not t.startswith("301:"))
        return out

    u1, u2 = users(rows1), users(rows2)
    shared = set(u1) & set(u2)
    assert len(shared) > 10 and all(u1[u] == u2[u] for u in shared)  # the same users
    # day 0 is the single-day generator, byte for byte
    synthetic.generate(tmp_path / "a", n_train=200, seed=3, preset="sample")
    synthetic.generate(tmp_path / "b", n_train=200, seed=3, preset="sample", day=0)
    for name in ("train_data/part-00000.txt", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def train(capsys, data, rows, save, *extra):
    code = cli_main(
        "trainer",
        ["-m", ESMM_CONFIG, "-o", f"runner.train_data_dir={data}/train_data",
         f"hyper_parameters.sparse_feature_number={rows}", f"runner.model_save_path={save}",
         "runner.epochs=4", *extra],
    )  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def evaluate(capsys, model, data, rows) -> np.ndarray:
    code = cli_main(
        "infer",
        ["-m", ESMM_CONFIG, "-o", f"runner.test_data_dir={data}/train_data",
         f"hyper_parameters.sparse_feature_number={rows}", f"runner.infer_load_path={model}",
         "runner.infer_start_epoch=3", "runner.infer_end_epoch=4"],
    )  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    return np.array(EVAL.search(out.out).groups(), float)


@pytest.mark.slow
def test_warm_started_day_2_model_beats_a_cold_start_on_day_3(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for day in (1, 2, 3):
        synthetic.generate(f"raw{day}", fmt="raw", day=day, **DAY)
    meta = {}
    convert = dict(workers=1, progress=False)
    meta[1] = convert_raw.convert("raw1", "day1", **convert)
    meta[2] = convert_raw.convert("raw2", "day2", vocab="day1", **convert)
    meta[3] = convert_raw.convert("raw3", "day3", vocab="day2", freeze_vocab=True, **convert)
    n1, n2 = meta[1]["sparse_feature_number"], meta[2]["sparse_feature_number"]
    assert meta[2]["vocab"]["kept"] == n1 - 1 and meta[2]["vocab"]["new"] == n2 - n1 > 0
    assert meta[3]["sparse_feature_number"] == n2
    vocab1 = (tmp_path / "day1" / "vocab.txt").read_text().splitlines()
    vocab2 = (tmp_path / "day2" / "vocab.txt").read_text().splitlines()
    assert vocab2[: len(vocab1)] == vocab1  # yesterday's ids keep their numbers

    train(capsys, "day1", n1, "model1")
    log = train(capsys, "day2", n2, "model2", "runner.model_init_path=model1")
    assert f"embedding rows {n1} -> {n2}, new rows fresh" in log
    train(capsys, "day2", n2, "cold2")
    warm = evaluate(capsys, "model2", "day3", n2)
    cold = evaluate(capsys, "cold2", "day3", n2)
    result = {"warm": warm.tolist(), "cold": cold.tolist()}
    (tmp_path / "result.json").write_text(json.dumps(result))
    # auc_ctr, auc_cvr, auc_ctcvr: two days of data beat one, on every task
    assert (warm > cold + 0.005).all(), result
