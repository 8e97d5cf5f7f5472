"""AITM (Xi et al., KDD 2021): adaptive information transfer between the click and the conversion
task, with a behavioural-expectation calibrator, on Ali-CCP.

    ids ─► features ─┬─► click tower ─► q1 ─────────────────────────► logit1 ─► pctr
                     └─► conversion tower ─► q2 ─┐
                         q1 ─► info MLP ─► p1 ───┴─► AIT attention ─► z2 ─► logit2 ─► p(click∧buy)

The conversion task predicts click∧buy over all impressions (the paper's sequential dependence:
impression → click → conversion). Its AIT module attends over what the click task transfers
(p1) and its own representation (q2): z2 = Σ_u w_u h3(u), w_u = softmax_u(⟨h1(u), h2(u)⟩/√k).

Loss = BCE(pctr, click) + BCE(p(click∧buy), click·buy) + α · mean(max(p(click∧buy) − pctr, 0)),
the last term (the calibrator) penalising a conversion probability above the click
probability, which the behaviour forbids. The outputs of the zoo follow:
pcvr = clip(p(click∧buy) / pctr, 0, 1) and pctcvr = pctr · pcvr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from paddle_rec_zoo import (
    FeatureInput,
    Linear,
    MultiTaskHyperParameters,
    MultiTaskModel,
    UserError,
    division_outputs,
    dnn,
)


@dataclass
class HyperParameters(MultiTaskHyperParameters):
    """The `hyper_parameters:` section of an AITM config. The towers' `hidden_units` make q1 and
    q2 (their last size is the attention's dimension k)."""

    calibrator_weight: float = 0.6  # α of the behavioural-expectation calibrator (the paper's)

    def validate(self, where: str):
        super().validate(where)
        if self.calibrator_weight < 0:
            raise UserError(f"{where}.calibrator_weight must be non-negative")
        if not self.tower_units("ctr") or self.tower_units("ctr") != self.tower_units("cvr"):
            raise UserError(
                f"{where}: AITM's towers need the same, non-empty hidden_units (the transferred "
                f"representation enters the conversion task's attention); got "
                f"{self.tower_units('ctr')} and {self.tower_units('cvr')}"
            )


class AIT(nn.Layer):
    """Attention over the transferred and the own representation, both [B, k] -> [B, k]."""

    def __init__(self, k: int):
        super().__init__()
        self.h1, self.h2, self.h3 = (Linear(k, k) for _ in range(3))
        self.scale = 1.0 / math.sqrt(k)

    def forward(self, transferred, own):
        u = paddle.stack([transferred, own], axis=1)  # [B, 2, k]
        scores = (self.h1(u) * self.h2(u)).sum(axis=-1, keepdim=True) * self.scale  # [B, 2, 1]
        return (F.softmax(scores, axis=1) * self.h3(u)).sum(axis=1)


class AITMLayer(MultiTaskModel):
    """ids [B, width] int64 -> pctr, pcvr, pctcvr [B, 1], the click and click∧buy logits."""

    hyper_parameters_class = HyperParameters

    def __init__(self, hp: HyperParameters):
        super().__init__(hp)
        self.input = FeatureInput(hp)
        units = hp.tower_units("ctr")
        k = units[-1]
        self.ctr_tower = dnn(self.input.out_size, units, hp.ctr_tower.dropout)
        self.cvr_tower = dnn(self.input.out_size, units, hp.cvr_tower.dropout)
        self.info = nn.Sequential(Linear(k, k), nn.ReLU())
        self.ait = AIT(k)
        self.ctr_out = Linear(k, 1)
        self.ctcvr_out = Linear(k, 1)

    def forward(self, ids):
        x, pooled = self.input(ids)
        q1, q2 = self.ctr_tower(x), self.cvr_tower(x)
        z2 = self.ait(self.info(q1), q2)
        out = division_outputs(self.ctr_out(q1), self.ctcvr_out(z2))
        out["embedding_reg"] = self.embedding_penalty([pooled])
        return out

    def loss(self, outputs: dict, labels: dict):
        total, parts = self.task_loss(outputs, labels, "ctcvr_head")
        parts["calibrator"] = calibrator_loss(outputs["p_ctcvr"], outputs["pctr"])
        total = total + self.hp.calibrator_weight * parts["calibrator"]
        return self.regularized(total, parts, outputs)


def calibrator_loss(p_later, p_earlier):
    """Batch mean of max(p_later − p_earlier, 0): a later step of the funnel (conversion) must not
    be likelier than an earlier one (click)."""
    return F.relu(p_later - p_earlier).mean()
