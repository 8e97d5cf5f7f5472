"""What the zoo's CTR/CVR models share: the towers' config (EasyRec's `ctr_tower` / `cvr_tower`),
their labels and metrics, the entire-space outputs and the losses built from them.

Every multi-task model of the zoo outputs pctr, pcvr and pctcvr [B, 1] and is evaluated the
paper's way: CTR and CTCVR over all impressions, CVR over clicked impressions only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import paddle
import paddle.nn.functional as F

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.nn.features import FeatureHyperParameters
from paddle_rec_zoo.nn.model import Input, Model, ModelSpec
from paddle_rec_zoo.report.metrics import EPS, KINDS, Metric

DEFAULT_TOWER = [256, 64]
OUTPUTS = ("pctr", "pcvr", "pctcvr")
TOWERS = ("ctr", "cvr")
CVR_LOSSES = ("entire_space", "clicked")  # how a CVR output is fitted (see MultiTaskModel)
DEFAULT_LABELS = {"ctr": "click", "cvr": "buy"}


@dataclass
class TowerConfig:
    """EasyRec's `ctr_tower` / `cvr_tower`: label, MLP, loss weight, reported metrics."""

    label_name: str = ""  # "" = click for the CTR tower, buy for the CVR tower
    hidden_units: list[int] | None = None  # None = [256, 64] (or the *_fc_sizes shorthand)
    weight: float = 1.0  # loss weight (CVR tower: of its entire-space loss)
    dropout: float = 0.0
    metrics: list[str] = field(default_factory=lambda: list(KINDS))


@dataclass
class MultiTaskHyperParameters(FeatureHyperParameters):
    """`hyper_parameters:` of a CTR/CVR model: the shared features, and the two towers."""

    ctr_tower: TowerConfig = field(default_factory=TowerConfig)
    cvr_tower: TowerConfig = field(default_factory=TowerConfig)
    ctr_fc_sizes: list[int] | None = None  # PaddleRec shorthand for ctr_tower.hidden_units
    cvr_fc_sizes: list[int] | None = None  # PaddleRec shorthand for cvr_tower.hidden_units

    def validate(self, where: str):
        super().validate(where)
        for tower in TOWERS:
            key, shorthand = f"{tower}_tower", f"{tower}_fc_sizes"
            cfg: TowerConfig = getattr(self, key)
            short = getattr(self, shorthand)
            if short is not None and cfg.hidden_units is not None:
                raise UserError(
                    f"{where}.{shorthand} and {where}.{key}.hidden_units both set the "
                    f"{tower.upper()} tower; keep one (set {shorthand}: null to drop an inherited "
                    "shorthand)"
                )
            units = cfg.hidden_units if cfg.hidden_units is not None else short
            if units is not None and any(n < 1 for n in units):
                bad = f"{key}.hidden_units" if cfg.hidden_units is not None else shorthand
                raise UserError(f"{where}.{bad}: layer sizes must be positive")
            if cfg.weight < 0:
                raise UserError(f"{where}.{key}.weight must be non-negative")
            if not 0 <= cfg.dropout < 1:
                raise UserError(f"{where}.{key}.dropout must be in [0, 1)")
            for m in cfg.metrics:
                if m not in KINDS:
                    raise UserError(
                        f"{where}.{key}.metrics: unknown metric {m!r}; choose from "
                        f"{', '.join(KINDS)}"
                    )
        if self.label("ctr") == self.label("cvr"):
            raise UserError(
                f"{where}.ctr_tower.label_name and {where}.cvr_tower.label_name are both "
                f"{self.label('ctr')!r}"
            )

    def tower_units(self, tower: str) -> list[int]:
        cfg = getattr(self, f"{tower}_tower")
        short = getattr(self, f"{tower}_fc_sizes")
        if cfg.hidden_units is not None:
            return list(cfg.hidden_units)
        return list(short) if short is not None else list(DEFAULT_TOWER)

    def label(self, tower: str) -> str:
        return getattr(self, f"{tower}_tower").label_name or DEFAULT_LABELS[tower]


def multitask_spec(hp: MultiTaskHyperParameters) -> ModelSpec:
    """pctr, pcvr, pctcvr from `ids`; the towers' metrics on their labels: the CTR tower's on
    pctr (all impressions), the CVR tower's on pcvr (clicked impressions, AUC only) and pctcvr
    (all impressions)."""
    click, buy = hp.label("ctr"), hp.label("cvr")
    ctr, cvr = set(hp.ctr_tower.metrics), set(hp.cvr_tower.metrics)
    ctr_auc = Metric("auc", "auc_ctr", "pctr", (click,), title="CTR AUC")
    ctcvr_auc = Metric("auc", "auc_ctcvr", "pctcvr", (click, buy), title="CTCVR AUC")
    metrics = []
    if "auc" in ctr:
        metrics.append(ctr_auc)
    if "auc" in cvr:
        metrics.append(Metric("auc", "auc_cvr", "pcvr", (buy,), (click,), "CVR AUC (clicked)"))
        metrics.append(ctcvr_auc)
    for kind in ("logloss", "calibration"):
        if kind in ctr:
            metrics.append(Metric(kind, f"{kind}_ctr", "pctr", (click,)))
        if kind in cvr:
            metrics.append(Metric(kind, f"{kind}_ctcvr", "pctcvr", (click, buy)))
    return ModelSpec(
        inputs=(Input("ids", "int64", hp.layout().width),),
        outputs=OUTPUTS,
        labels=(click, buy),
        metrics=tuple(metrics),
        train_metrics=(ctr_auc, ctcvr_auc),  # whatever the towers' metrics
        truth_metrics=truth_metrics(click),
        counts={"clicks": (click,), "buys": (click, buy)},  # of the towers' labels
        label_keys={
            click: "hyper_parameters.ctr_tower.label_name",
            buy: "hyper_parameters.cvr_tower.label_name",
        },  # fmt: skip
    )


def truth_metrics(click: str) -> tuple[Metric, ...]:
    """With synthetic data's true probabilities: is pCVR right on every impression, not only on
    the clicked ones real labels can check it on? (ESMM's and ESCM²'s question.) The entire-space
    AUC is against labels drawn from the true pCVR; calibration is mean pCVR / mean true pCVR."""
    return (
        Metric("auc", "auc_cvr_entire", "pcvr", ("truth_pcvr_label",),
               title="CVR AUC (entire space)"),
        Metric("calibration", "calibration_cvr_entire", "pcvr", ("truth_pcvr",),
               title="pCVR calibration (entire space)"),
        Metric("calibration", "calibration_cvr_unclicked", "pcvr", ("truth_pcvr",),
               (f"~{click}",), "pCVR calibration (unclicked)"),
    )  # fmt: skip


class MultiTaskModel(Model):
    """A CTR/CVR network: `forward(ids)` returns pctr, pcvr, pctcvr and the logits its loss uses."""

    hyper_parameters_class = MultiTaskHyperParameters

    @classmethod
    def spec(cls, hp) -> ModelSpec:
        return multitask_spec(hp)

    @staticmethod
    def outputs_from_truth(spec, truth: dict) -> dict:
        out = Model.outputs_from_truth(spec, truth)
        if "pctr" in out and "pcvr" in out:
            out["pctcvr"] = out["pctr"] * out["pcvr"]
        return out

    def labels_of(self, labels: dict):
        """(click, buy) [B, 1] float32 of the towers' label columns."""
        return labels[self.hp.label("ctr")], labels[self.hp.label("cvr")]

    def task_loss(self, outputs: dict, labels: dict, cvr_loss: str = "entire_space"):
        """(total, parts) of the towers' logits, without regularisation: w_ctr·BCE(pctr, click)
        plus
        - entire_space: w_cvr·BCE(pctr·pcvr, click·buy) over all impressions (ESMM's),
        - clicked: w_cvr·BCE(pcvr, buy) over the clicked impressions only (the naive CVR), or
        - ctcvr_head: w_cvr·BCE(σ(ctcvr_logit), click·buy), a head of its own for click∧buy."""
        hp = self.hp
        click, buy = self.labels_of(labels)
        ctr_logit = outputs["ctr_logit"]
        ctr_loss = F.binary_cross_entropy_with_logits(ctr_logit, click)
        if cvr_loss == "entire_space":
            second = ctcvr_bce(ctr_logit, outputs["cvr_logit"], click * buy)
            name = "loss_ctcvr"
        elif cvr_loss == "clicked":
            second, name = clicked_bce(outputs["cvr_logit"], buy, click), "loss_cvr"
        else:
            second = F.binary_cross_entropy_with_logits(outputs["ctcvr_logit"], click * buy)
            name = "loss_ctcvr"
        total = hp.ctr_tower.weight * ctr_loss + hp.cvr_tower.weight * second
        return total, {"loss_ctr": ctr_loss, name: second}

    def ctr_cvr_loss(self, outputs: dict, labels: dict, cvr_loss: str = "entire_space"):
        """`task_loss` with the L2 and embedding regularisation."""
        return self.regularized(*self.task_loss(outputs, labels, cvr_loss), outputs)


def entire_space_outputs(ctr_logit, cvr_logit) -> dict:
    """The declared outputs from the two towers' logits: pctcvr = pctr · pcvr."""
    pctr, pcvr = F.sigmoid(ctr_logit), F.sigmoid(cvr_logit)
    return {
        "ctr_logit": ctr_logit,
        "cvr_logit": cvr_logit,
        "pctr": pctr,
        "pcvr": pcvr,
        "pctcvr": pctr * pcvr,
    }


def division_outputs(ctr_logit, ctcvr_logit) -> dict:
    """The declared outputs of a model with a CTCVR head instead of a CVR tower (DIVISION: ESMM's
    `division` variant, AITM): pcvr = σ(ctcvr) / σ(ctr) clipped to [0, 1], and, as for every
    CTR/CVR model, pctcvr = pctr · pcvr, so pctcvr never exceeds pctr (it is min(σ(ctcvr), pctr)).
    `p_ctcvr` is the head's own probability, the one its loss fits."""
    pctr, p_ctcvr = F.sigmoid(ctr_logit), F.sigmoid(ctcvr_logit)
    pcvr = paddle.clip(p_ctcvr / paddle.clip(pctr, min=EPS), 0.0, 1.0)
    return {
        "ctr_logit": ctr_logit,
        "ctcvr_logit": ctcvr_logit,
        "p_ctcvr": p_ctcvr,
        "pctr": pctr,
        "pcvr": pcvr,
        "pctcvr": pctr * pcvr,
    }


def ctcvr_bce(ctr_logit, cvr_logit, ctcvr):
    """Batch-mean BCE(σ(a)·σ(b), ctcvr), from the logits: log pctcvr = log σ(a) + log σ(b) is
    exact where the product would underflow, and only 1 - pctcvr needs a floor."""
    log_p = F.log_sigmoid(ctr_logit) + F.log_sigmoid(cvr_logit)
    log_not_p = paddle.log(paddle.clip(1.0 - paddle.exp(log_p), min=EPS))
    return -(ctcvr * log_p + (1.0 - ctcvr) * log_not_p).mean()


def clicked_bce(cvr_logit, buy, click):
    """BCE(σ(cvr_logit), buy) averaged over the clicked rows only (0 for a batch without clicks)."""
    per_row = F.binary_cross_entropy_with_logits(cvr_logit, buy, reduction="none")
    return (per_row * click).sum() / paddle.clip(click.sum(), min=1.0)
