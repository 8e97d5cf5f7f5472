"""tools/experiment.py and the EasyRec-style config, end to end on the bundled sample."""

import json
import os

import numpy as np
import pytest
from conftest import ESMM_CONFIG, ESMM_DIR, run_tool

from paddle_rec_zoo import experiment_table as table


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
    scored = table.score(preds, truth)
    assert set(scored) == set(table.METRICS)
    assert scored["auc_cvr_entire"] > 0.7  # true pCVR ranks its own Bernoulli labels well
    assert table.oracle(preds, truth)["auc_cvr_entire"] == pytest.approx(scored["auc_cvr_entire"])
    # labels are drawn once per data set: the same for every run
    again = table.Truth(str(truth_path))
    np.testing.assert_array_equal(again.cvr_label, truth.cvr_label)
    summary = table.summarize(
        [{"variant": "a", **scored}, {"variant": "a", **{k: v - 0.02 for k, v in scored.items()}}]
    )
    md = table.markdown_table(summary, table.oracle(preds, truth))
    assert "CVR AUC (clicked)" in md and "CVR AUC (entire space)" in md and "oracle" in md
    assert " ± 1.41 |" in md  # std of two runs 2 points apart, in %


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
        "| variant | seeds | CTR AUC | CVR AUC (clicked) | CTCVR AUC | CVR AUC (entire space) |"
    )
    rows = [line for line in md.splitlines() if line.startswith(("| esmm", "| base", "| oracle"))]
    assert len(rows) == 3 and all(line.count("±") == 4 for line in rows[:2])
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
