"""runner.keep_best picks the best epoch by its metric's own sense of best (issue 20)."""

import json
import math

import pytest
from conftest import esmm_config, esmm_module

from paddle_rec_zoo.run import checkpoint, keep_best


def spec():
    return esmm_module("net").ESMMLayer.spec(esmm_config().hyper_parameters)


def best_epoch_of(tmp_path, metric: str, values: list[float]) -> int:
    """Feed one evaluation per epoch (`values`, epoch 0 first) to keep_best; returns the epoch
    best/ holds, checked against best.json."""
    root, best = str(tmp_path), None
    for epoch, value in enumerate(values):
        meta = {"epoch": epoch, "step": epoch}
        folder = checkpoint.save(root, epoch, lambda tmp: None, meta)
        best = keep_best.update(root, spec(), metric, {"epoch": epoch, metric: value}, folder, best)
    copied = checkpoint.read_meta(checkpoint.best_dir(root))["epoch"]
    with open(tmp_path / checkpoint.BEST_FILE) as f:
        assert json.load(f)["epoch"] == copied == best["epoch"]
    return copied


@pytest.mark.parametrize(
    "metric, values, best",
    [
        ("auc_ctr", [0.60, 0.70, 0.65], 1),  # higher
        ("logloss_ctr", [0.40, 0.30, 0.35], 1),  # lower
        ("calibration_ctr", [0.50, 0.95, 1.20], 1),  # nearest 1: not the lowest (0.5)
        ("calibration_ctr", [1.30, 1.10, 0.85], 1),  # nor the highest
        ("auc_ctr", [0.60, 0.60], 0),  # a tie keeps the earlier epoch
    ],
)
def test_the_best_epoch_is_best_by_the_metrics_own_sense(tmp_path, metric, values, best):
    assert best_epoch_of(tmp_path, metric, values) == best


@pytest.mark.parametrize("metric", ["auc_ctr", "logloss_ctr", "calibration_ctr"])
def test_a_nan_is_never_best(tmp_path, metric):
    """A NaN (an evaluation without positives) in the first epoch gives way to the first finite
    value, and a later NaN never replaces a finite one."""
    assert best_epoch_of(tmp_path / "first", metric, [math.nan, 0.7, math.nan]) == 1


def test_every_metric_kind_declares_its_sense_of_best():
    from paddle_rec_zoo.report.metrics import KINDS, Metric

    for kind in KINDS:
        m = Metric(kind, kind, "p", ("y",))
        assert m.distance_from_best(math.nan) == math.inf
        assert not m.is_better(math.nan, 0.5) and m.is_better(0.5, math.nan)
