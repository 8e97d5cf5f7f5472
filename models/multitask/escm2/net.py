"""ESCM² (Wang et al., SIGIR 2022): ESMM plus a counterfactual CVR risk, on Ali-CCP.

    ids ─► shared features ─┬─► CTR tower ─► pctr ──────────┐
                            ├─► CVR tower ─► pcvr ──────────┴─► pctcvr = pctr · pcvr
                            └─► imputation tower ─► r̃ (DR only)

ESMM's pCVR is only ever fitted through pCTCVR, which the paper shows biases it upwards on
unclicked impressions (inherent estimation bias). ESCM² adds an unbiased estimate of the CVR
risk over the entire space, using pCTR as the propensity of the click (o = click, p̂ = pctr,
e = BCE(pcvr, buy), defined where o = 1):

    IPS: R = (1/N) Σ o · e / p̂
    DR:  R = (1/N) Σ [ ê + o · (e − ê) / p̂ ],  ê = BCE(pcvr, r̃)
         imputation loss (1/N) Σ o · (e − ê)² / p̂

DR is the joint learning of Wang et al. (ICML 2019) that ESCM² builds on: an imputation tower
predicts a conversion label r̃ for every impression, so ê, the error pCVR would have against it,
is defined on unclicked impressions too and pulls pCVR there towards r̃; the imputation tower
learns r̃ from the clicked impressions, where e is known. Each side takes the other as a
constant (r̃ in R, pCVR in the imputation loss).

Loss = w_ctr·BCE(pctr, click) + counterfactual_weight·R + w_cvr·BCE(pctcvr, click·buy)
(+ imputation_weight · the imputation loss, DR). p̂ is taken without gradient and floored at
`propensity_clip`. `counterfactual: none` is ESMM.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import paddle
import paddle.nn.functional as F

from paddle_rec_zoo import (
    EPS,
    FeatureInput,
    MultiTaskHyperParameters,
    MultiTaskModel,
    UserError,
    entire_space_outputs,
    mlp,
)

COUNTERFACTUALS = ("ips", "dr", "none")


@dataclass
class HyperParameters(MultiTaskHyperParameters):
    """The `hyper_parameters:` section of an ESCM² config."""

    counterfactual: str = "ips"  # ips, dr (doubly robust, with an imputation tower) or none
    counterfactual_weight: float = 0.1  # λc of the counterfactual CVR risk
    propensity_clip: float = 0.05  # p̂ = max(pctr, this): bounds the weights 1/p̂
    imputation_units: list[int] = field(default_factory=lambda: [64])  # DR's imputation tower
    imputation_weight: float = 1.0  # weight of DR's imputation loss

    def validate(self, where: str):
        super().validate(where)
        if self.counterfactual not in COUNTERFACTUALS:
            raise UserError(
                f"{where}.counterfactual: choose one of {', '.join(COUNTERFACTUALS)}, not "
                f"{self.counterfactual!r}"
            )
        for key in ("counterfactual_weight", "imputation_weight"):
            if getattr(self, key) < 0:
                raise UserError(f"{where}.{key} must be non-negative")
        if not 0 < self.propensity_clip <= 1:
            raise UserError(f"{where}.propensity_clip must be in (0, 1]")
        if any(n < 1 for n in self.imputation_units):
            raise UserError(f"{where}.imputation_units: layer sizes must be positive")


class ESCM2Layer(MultiTaskModel):
    """ids [B, width] int64 -> pctr, pcvr, pctcvr [B, 1], the towers' logits (and DR's r̃)."""

    hyper_parameters_class = HyperParameters

    def __init__(self, hp: HyperParameters):
        super().__init__(hp)
        self.input = FeatureInput(hp)
        size = self.input.out_size
        self.ctr_tower = mlp(size, hp.tower_units("ctr"), hp.ctr_tower.dropout)
        self.cvr_tower = mlp(size, hp.tower_units("cvr"), hp.cvr_tower.dropout)
        if hp.counterfactual == "dr":
            self.imputation_tower = mlp(size, hp.imputation_units)

    def forward(self, ids):
        x, pooled = self.input(ids)
        out = entire_space_outputs(self.ctr_tower(x), self.cvr_tower(x))
        if self.hp.counterfactual == "dr":
            out["imputed_label"] = F.sigmoid(self.imputation_tower(x))  # r̃ in (0, 1)
        out["embedding_reg"] = self.embedding_penalty([pooled])
        return out

    def loss(self, outputs: dict, labels: dict):
        total, parts = self.ctr_cvr_loss(outputs, labels, "entire_space")
        hp = self.hp
        if hp.counterfactual == "none":
            return total, parts
        click, buy = self.labels_of(labels)
        risk, imputation = counterfactual_risk(
            outputs["cvr_logit"],
            buy,
            click,
            outputs["pctr"],
            hp.propensity_clip,
            outputs.get("imputed_label"),
        )
        parts["loss_cvr_" + hp.counterfactual] = risk
        total = total + hp.counterfactual_weight * risk
        if imputation is not None:
            parts["loss_imputation"] = imputation
            total = total + hp.imputation_weight * imputation
        return total, parts


def counterfactual_risk(cvr_logit, buy, click, pctr, clip: float, imputed_label=None):
    """(CVR risk over the entire space, imputation loss or None): IPS without `imputed_label`,
    DR with it (see the module docstring). All inputs [B, 1]; means over the batch."""
    propensity = paddle.clip(pctr, min=clip).detach()
    error = F.binary_cross_entropy_with_logits(cvr_logit, buy, reduction="none")
    if imputed_label is None:
        return (click * error / propensity).mean(), None
    imputed = F.binary_cross_entropy_with_logits(
        cvr_logit, imputed_label.detach(), reduction="none"
    )
    risk = (imputed + click * (error - imputed) / propensity).mean()
    # the imputation tower's side: pCVR fixed, r̃ learned where the error is observed
    pcvr = F.sigmoid(cvr_logit).detach()
    imputed_for_r = -(
        imputed_label * paddle.log(paddle.clip(pcvr, min=EPS))
        + (1 - imputed_label) * paddle.log(paddle.clip(1 - pcvr, min=EPS))
    )
    imputation = (click * (error.detach() - imputed_for_r) ** 2 / propensity).mean()
    return risk, imputation
