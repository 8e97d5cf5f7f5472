"""PLE (Tang et al., RecSys 2020): progressive layered extraction, for CTR and CVR on Ali-CCP.

    ids ─► features ─► CGC level 1 ─► ... ─► CGC level L ─┬─► CTR tower ─► pctr
                       (task experts + shared experts,    └─► CVR tower ─► pcvr
                        a gate per task)                       pctcvr = pctr · pcvr

Each level has experts of its own for every task and experts shared by all; a task's gate mixes
its own and the shared experts, which keeps a task's private knowledge from being overwritten by
the other's (the "seesaw" the paper is about). With one level it is CGC. The CVR output is
fitted as MMoE's is (`cvr_loss`). Shared parts: `paddle_rec_zoo.nn.features`, `.experts`,
`.multitask`.
"""

from __future__ import annotations

from dataclasses import dataclass

from paddle_rec_zoo import PLE, ExpertsHyperParameters, ExpertsModel, UserError


@dataclass
class HyperParameters(ExpertsHyperParameters):
    """The `hyper_parameters:` section of a PLE config."""

    num_levels: int = 2  # CGC levels (1 = CGC)
    num_task_experts: int = 2  # experts of each task, per level
    num_shared_experts: int = 2  # experts shared by both tasks, per level

    def validate(self, where: str):
        super().validate(where)
        for key in ("num_levels", "num_task_experts", "num_shared_experts"):
            if getattr(self, key) < 1:
                raise UserError(f"{where}.{key} must be at least 1")


class PLELayer(ExpertsModel):
    """ids [B, width] int64 -> pctr, pcvr, pctcvr [B, 1] and the towers' logits."""

    hyper_parameters_class = HyperParameters

    def build_mixture(self, hp: HyperParameters, in_size: int) -> PLE:
        return PLE(
            in_size,
            2,
            hp.num_levels,
            hp.num_task_experts,
            hp.num_shared_experts,
            hp.expert_units,
            hp.expert_dropout,
        )
