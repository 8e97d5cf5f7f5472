import numpy as np
import pytest
from conftest import esmm_config, esmm_module
from sklearn.metrics import roc_auc_score

from paddle_rec_zoo.report.metrics import StreamingAUC, auc, calibration, evaluate, logloss


def test_auc_known_values():
    y = np.array([0, 0, 1, 1])
    assert auc(np.array([0.1, 0.2, 0.8, 0.9]), y) == 1.0
    assert auc(np.array([0.9, 0.8, 0.2, 0.1]), y) == 0.0
    assert auc(np.array([0.5, 0.5, 0.5, 0.5]), y) == 0.5
    assert np.isnan(auc(np.array([0.1, 0.2]), np.array([1, 1])))


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 5000
    scores = np.round(rng.random(n), 2)  # only 101 distinct values: many ties
    labels = (rng.random(n) < 0.3 + 0.4 * scores).astype(np.float32)
    assert auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_streaming_auc_is_close_to_exact_and_accumulates():
    rng = np.random.default_rng(0)
    scores = rng.random(20000)
    labels = (rng.random(20000) < scores).astype(int)
    s = StreamingAUC()
    for part in np.array_split(np.arange(20000), 7):
        s.update(scores[part], labels[part])
    assert s.compute() == pytest.approx(roc_auc_score(labels, scores), abs=1e-3)
    s.reset()
    assert np.isnan(s.compute())


def test_logloss_and_calibration():
    y = np.array([1, 0, 0, 0])
    p = np.array([0.25, 0.25, 0.25, 0.25])
    assert logloss(p, y) == pytest.approx(-(np.log(0.25) + 3 * np.log(0.75)) / 4)
    assert calibration(p, y) == pytest.approx(1.0)
    assert calibration(p * 2, y) == pytest.approx(2.0)


def test_cvr_auc_is_computed_on_clicked_rows_only():
    spec = esmm_module("net").ESMMLayer.spec(esmm_config().hyper_parameters)
    click = np.array([1, 1, 1, 1, 0, 0, 0, 0], np.float32)
    buy = np.array([1, 0, 1, 0, 0, 0, 0, 0], np.float32)
    # clicked rows: pcvr ranks buyers first (AUC 1); unclicked rows have high pcvr, which
    # would pull an all-rows CVR AUC down if they were counted
    pcvr = np.array([0.6, 0.2, 0.7, 0.1, 0.9, 0.9, 0.9, 0.9], np.float32)
    pctr = np.full(8, 0.5, np.float32)
    cols = dict(pctr=pctr, pcvr=pcvr, pctcvr=pctr * pcvr, click=click, buy=buy)
    out = evaluate(spec.metrics, spec.counts, cols)
    assert out["auc_cvr"] == 1.0
    assert out["auc_cvr"] != pytest.approx(roc_auc_score(buy, pcvr))
    assert out["auc_ctcvr"] == pytest.approx(roc_auc_score(click * buy, pctr * pcvr))
    assert out["auc_ctr"] == 0.5
    assert out["clicks"] == 4 and out["buys"] == 2 and out["samples"] == 8
