"""tools/experiment.py and the EasyRec-style config, end to end on the bundled sample."""

import json
import os

import numpy as np
import pytest
from conftest import ESMM_CONFIG, ESMM_DIR, esmm_config, esmm_module, run_tool

from paddle_rec_zoo.report import experiment_table as table


def test_scoring_uses_clicked_rows_and_truth_labels(tmp_path):
    truth_path = tmp_path / "truth.csv"
    n = 4000
    rng = np.random.default_rng(0)
    pcvr = rng.random(n)
    ids = np.arange(10, 10 + n)
    with open(truth_path, "w") as f:
        f.write("sample_id,pctr,pcvr\n")
        for i, p in zip(ids[::-1], pcvr[::-1], strict=True):  # order does not matter
            f.write(f"{i},0.5,{p}\n")
    truth = table.Truth(str(truth_path))
    click = (rng.random(n) < 0.5).astype(float)
    buy = click * (rng.random(n) < pcvr)
    preds = {"sample_id": ids.astype(float), "click": click, "buy": buy}
    preds.update(pctr=np.full(n, 0.5), pcvr=pcvr, pctcvr=0.5 * pcvr)
    net = esmm_module("net").ESMMLayer
    spec = net.spec(esmm_config().hyper_parameters)
    scored = table.score(spec, preds, truth)
    metrics = table.table_metrics(spec, truth)
    assert set(scored) == {m.name for m in metrics} == {
        "auc_ctr", "auc_cvr", "auc_ctcvr", "auc_cvr_entire", "calibration_cvr_entire",
        "calibration_cvr_unclicked",
    }  # fmt: skip
    assert scored["auc_cvr_entire"] > 0.7  # true pCVR ranks its own Bernoulli labels well
    assert scored["calibration_cvr_entire"] == pytest.approx(1.0)  # pcvr is the truth here
    oracle = table.oracle(spec, net, preds, truth)
    assert oracle["auc_cvr_entire"] == pytest.approx(scored["auc_cvr_entire"])
    # labels are drawn once per data set: the same for every run
    again = table.Truth(str(truth_path))
    np.testing.assert_array_equal(again.labels["pcvr"], truth.labels["pcvr"])
    summary = table.summarize(
        [{"variant": "a", **scored}, {"variant": "a", **{k: v - 0.02 for k, v in scored.items()}}],
        metrics,
    )
    md = table.markdown_table(summary, metrics, oracle)
    assert "CVR AUC (clicked)" in md and "CVR AUC (entire space)" in md and "oracle" in md
    assert " ± 1.41 |" in md  # std of two runs 2 points apart, in %
    assert " ± 0.014 |" in md  # a calibration: as a ratio


def test_calibration_on_unclicked_rows_sees_only_them(tmp_path):
    truth_path = tmp_path / "truth.csv"
    truth_path.write_text("sample_id,pctr,pcvr\n1,0.5,0.2\n2,0.5,0.2\n3,0.5,0.4\n4,0.5,0.4\n")
    spec = esmm_module("net").ESMMLayer.spec(esmm_config().hyper_parameters)
    preds = {"sample_id": np.array([1.0, 2, 3, 4]), "click": np.array([1.0, 1, 0, 0])}
    preds.update(buy=np.zeros(4), pctr=np.full(4, 0.5), pcvr=np.array([0.9, 0.9, 0.2, 0.2]))
    preds["pctcvr"] = preds["pctr"] * preds["pcvr"]
    scored = table.score(spec, preds, table.Truth(str(truth_path)))
    assert scored["calibration_cvr_unclicked"] == pytest.approx(0.2 / 0.4)  # rows 3, 4 only
    assert scored["calibration_cvr_entire"] == pytest.approx(0.55 / 0.3)


@pytest.mark.slow
def test_experiment_runs_two_variants_two_seeds(tmp_path):
    out = tmp_path / "exp"
    proc = run_tool(
        "experiment",
        "-m",
        ESMM_CONFIG,
        "--variants",
        "esmm",
        "base",
        "--seeds",
        "2",
        "--out",
        str(out),
        "-o",
        "runner.epochs=1",
        f"runner.cache_dir={tmp_path / 'cache'}",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    md = (out / "results.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| variant"))
    assert header == (
        "| variant | runs | CTR AUC | CVR AUC (clicked) | CTCVR AUC | CVR AUC (entire space) "
        "| pCVR calibration (entire space) | pCVR calibration (unclicked) |"
    )
    rows = [line for line in md.splitlines() if line.startswith(("| esmm", "| base", "| oracle"))]
    assert len(rows) == 3 and all(line.count("±") == 6 for line in rows[:2])
    assert (out / "results.png").stat().st_size > 10_000
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["variant"], r.get("seed")) for r in results] == [
        ("esmm", 1),
        ("esmm", 2),
        ("base", 1),
        ("base", 2),
        ("oracle", None),
    ]
    assert results[0]["auc_ctr"] != results[1]["auc_ctr"]  # the seed really changes the run
    for variant in ("esmm", "base"):
        assert os.path.exists(out / "runs" / f"{variant}-s1" / "predictions.csv")


@pytest.mark.slow
def test_every_epoch_gives_a_row_per_epoch(tmp_path):
    out = tmp_path / "exp"
    proc = run_tool(
        "experiment",
        *("-m", ESMM_CONFIG, "--variants", "esmm", "--seeds", "1", "--every-epoch"),
        *("--out", str(out), "-o", "runner.epochs=2", f"runner.cache_dir={tmp_path / 'cache'}"),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    md = (out / "results.md").read_text()
    assert "| esmm, epoch 1 | 1 |" in md and "| esmm, epoch 2 | 1 |" in md
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["variant"], r.get("epoch")) for r in results] == [
        ("esmm, epoch 1", 1),
        ("esmm, epoch 2", 2),
        ("oracle", None),  # one: one data set
    ]
    assert results[0]["auc_ctr"] != results[1]["auc_ctr"]  # two checkpoints, not one twice
    run = out / "runs" / "esmm-s1"
    assert (run / "predictions-0.csv").exists() and (run / "predictions.csv").exists()


@pytest.mark.slow
def test_easyrec_config_trains_one_epoch(tmp_path):
    proc = run_tool(
        "trainer",
        "-m",
        os.path.join(ESMM_DIR, "config_easyrec.yaml"),
        "-o",
        "runner.epochs=1",
        f"runner.model_save_path={tmp_path / 'out'}",
        f"runner.cache_dir={tmp_path / 'cache'}",
        "runner.evaluate_each_epoch=True",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    meta = json.loads((tmp_path / "out" / "0" / "meta.json").read_text())
    assert meta["config"]["hyper_parameters"]["feature_groups"][0]["name"] == "user"
    assert 0 <= meta["test"]["auc_ctr"] <= 1


@pytest.mark.slow
def test_experiment_compares_models_over_two_data_sets(tmp_path):
    from paddle_rec_zoo.data.ali_ccp import synthetic

    data = []
    for seed in (1, 2):
        folder = tmp_path / f"data{seed}"
        synthetic.generate(str(folder), n_train=3000, seed=seed)
        data.append(str(folder))
    out = tmp_path / "exp"
    proc = run_tool(
        "experiment",
        *("--models", "esmm", "escm2", "--seeds", "1", "--engine", "dygraph"),
        *("--data", *data, "--out", str(out)),
        *("-o", f"runner.cache_dir={tmp_path / 'cache'}"),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    md = (out / "results.md").read_text()
    assert "on 2 data sets" in md
    rows = {line.split(" | ")[0]: line for line in md.splitlines() if line.startswith("| ")}
    assert set(rows) == {"| model", "| esmm", "| escm2", "| oracle (true probabilities)"}
    assert rows["| esmm"].split(" | ")[1] == "2"  # two runs: one per data set
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["model"], r.get("data")) for r in results] == [
        ("esmm", 1), ("esmm", 2), ("escm2", 1), ("escm2", 2), ("oracle", None), ("oracle", None)
    ]  # fmt: skip
    assert os.path.exists(out / "runs" / "escm2-d2-s1" / "predictions.csv")


def test_a_truth_columns_labels_do_not_depend_on_the_other_columns(tmp_path):
    rng = np.random.default_rng(3)
    p = rng.random(500)
    (tmp_path / "one.csv").write_text(
        "sample_id,pcvr\n" + "".join(f"{i},{v}\n" for i, v in enumerate(p))
    )
    (tmp_path / "two.csv").write_text(
        "sample_id,pctr,pcvr\n" + "".join(f"{i},0.5,{v}\n" for i, v in enumerate(p))
    )
    one, two = table.Truth(str(tmp_path / "one.csv")), table.Truth(str(tmp_path / "two.csv"))
    np.testing.assert_array_equal(one.labels["pcvr"], two.labels["pcvr"])
