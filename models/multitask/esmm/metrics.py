"""ESMM's metrics: the paper's CVR AUC is over clicked impressions only; CTR and CTCVR over all."""

from __future__ import annotations

import numpy as np

from paddle_rec_zoo.metrics import StreamingAUC, auc, calibration, logloss

ALL_METRICS = ("auc", "logloss", "calibration")


class TrainMetrics:
    """Running AUCs for training logs (cheap: histograms, not stored predictions)."""

    def __init__(self):
        self.ctr = StreamingAUC()
        self.ctcvr = StreamingAUC()

    def update(self, outputs: dict, labels: np.ndarray):
        click, buy = labels[:, 0], labels[:, 1]
        self.ctr.update(outputs["pctr"], click)
        self.ctcvr.update(outputs["pctcvr"], click * buy)

    def compute(self) -> dict:
        return {"auc_ctr": self.ctr.compute(), "auc_ctcvr": self.ctcvr.compute()}


def evaluate(
    pctr, pcvr, pctcvr, click, buy, ctr_metrics=ALL_METRICS, cvr_metrics=ALL_METRICS
) -> dict:
    """Exact evaluation metrics from 1-D arrays of predictions and labels.

    `ctr_metrics` / `cvr_metrics` (the towers' `metrics` keys) choose among auc, logloss and
    calibration: the CTR tower's apply to pctr, the CVR tower's to pcvr (AUC on clicked
    impressions) and pctcvr.
    """
    ctcvr = click * buy
    clicked = click > 0.5
    out = {}
    if "auc" in ctr_metrics:
        out["auc_ctr"] = auc(pctr, click)
    if "auc" in cvr_metrics:
        out["auc_cvr"] = auc(pcvr[clicked], buy[clicked])
        out["auc_ctcvr"] = auc(pctcvr, ctcvr)
    if "logloss" in ctr_metrics:
        out["logloss_ctr"] = logloss(pctr, click)
    if "logloss" in cvr_metrics:
        out["logloss_ctcvr"] = logloss(pctcvr, ctcvr)
    if "calibration" in ctr_metrics:
        out["calibration_ctr"] = calibration(pctr, click)
    if "calibration" in cvr_metrics:
        out["calibration_ctcvr"] = calibration(pctcvr, ctcvr)
    out.update(samples=int(len(click)), clicks=int(clicked.sum()), buys=int(ctcvr.sum()))
    return out


def evaluate_for(hp):
    """`evaluate` with the metrics the config's towers ask for."""

    def run(**arrays) -> dict:
        return evaluate(
            **arrays, ctr_metrics=hp.ctr_tower.metrics, cvr_metrics=hp.cvr_tower.metrics
        )

    return run
