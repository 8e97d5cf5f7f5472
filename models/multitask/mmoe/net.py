"""MMoE (Ma et al., KDD 2018): multi-gate mixture of experts, for CTR and CVR on Ali-CCP.

    ids ─► features ─► experts (MLPs) ─┬─ CTR gate ─► CTR tower ─► pctr
                                       └─ CVR gate ─► CVR tower ─► pcvr      pctcvr = pctr · pcvr

The tasks share experts, not a bottom: each task's gate weighs the experts per impression. The
CVR output is fitted over the entire space like ESMM's (`cvr_loss: entire_space`: BCE of
pctr·pcvr against click·buy on all impressions) or on clicked impressions only (`clicked`).
Features, experts, towers, losses and regularisation are the zoo's shared ones
(`paddle_rec_zoo.nn.features`, `.experts`, `.multitask`).
"""

from __future__ import annotations

from dataclasses import dataclass

from paddle_rec_zoo import ExpertsHyperParameters, ExpertsModel, MMoE, UserError


@dataclass
class HyperParameters(ExpertsHyperParameters):
    """The `hyper_parameters:` section of an MMoE config."""

    num_experts: int = 4

    def validate(self, where: str):
        super().validate(where)
        if self.num_experts < 1:
            raise UserError(f"{where}.num_experts must be at least 1")


class MMoELayer(ExpertsModel):
    """ids [B, width] int64 -> pctr, pcvr, pctcvr [B, 1] and the towers' logits."""

    hyper_parameters_class = HyperParameters

    def build_mixture(self, hp: HyperParameters, in_size: int) -> MMoE:
        return MMoE(in_size, 2, hp.num_experts, hp.expert_units, hp.expert_dropout)
