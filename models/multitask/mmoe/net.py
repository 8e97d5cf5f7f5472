"""MMoE (Ma et al., KDD 2018): multi-gate mixture of experts, for CTR and CVR on Ali-CCP.

    ids ─► features ─► experts (MLPs) ─┬─ CTR gate ─► CTR tower ─► pctr
                                       └─ CVR gate ─► CVR tower ─► pcvr      pctcvr = pctr · pcvr

The tasks share experts, not a bottom: each task's gate weighs the experts per impression. The
CVR output is fitted over the entire space like ESMM's (`cvr_loss: entire_space`: BCE of
pctr·pcvr against click·buy on all impressions) or on clicked impressions only (`clicked`).
Features, experts, towers, losses and regularisation are the zoo's shared ones
(`paddle_rec_zoo.features`, `.experts`, `.multitask`).
"""

from __future__ import annotations

from dataclasses import dataclass

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.experts import ExpertsHyperParameters, MMoE
from paddle_rec_zoo.features import FeatureInput
from paddle_rec_zoo.layers import mlp
from paddle_rec_zoo.multitask import MultiTaskModel, entire_space_outputs


@dataclass
class HyperParameters(ExpertsHyperParameters):
    """The `hyper_parameters:` section of an MMoE config."""

    num_experts: int = 4

    def validate(self, where: str):
        super().validate(where)
        if self.num_experts < 1:
            raise UserError(f"{where}.num_experts must be at least 1")


class MMoELayer(MultiTaskModel):
    """ids [B, width] int64 -> pctr, pcvr, pctcvr [B, 1] and the towers' logits."""

    hyper_parameters_class = HyperParameters

    def __init__(self, hp: HyperParameters):
        super().__init__(hp)
        self.input = FeatureInput(hp)
        self.mmoe = MMoE(self.input.out_size, 2, hp.num_experts, hp.expert_units, hp.expert_dropout)
        size = self.mmoe.out_size
        self.ctr_tower = mlp(size, hp.tower_units("ctr"), hp.ctr_tower.dropout)
        self.cvr_tower = mlp(size, hp.tower_units("cvr"), hp.cvr_tower.dropout)

    def forward(self, ids):
        x, pooled = self.input(ids)
        ctr_x, cvr_x = self.mmoe(x)
        out = entire_space_outputs(self.ctr_tower(ctr_x), self.cvr_tower(cvr_x))
        out["embedding_reg"] = self.embedding_penalty([pooled])
        return out

    def loss(self, outputs: dict, labels: dict):
        return self.ctr_cvr_loss(outputs, labels, self.hp.cvr_loss)
