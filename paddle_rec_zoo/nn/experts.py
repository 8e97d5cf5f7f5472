"""Expert sharing between tasks: the mixture of experts of MMoE (Ma et al., KDD 2018) and the
progressive layered extraction of PLE (Tang et al., RecSys 2020), over the shared features.

    MMoE:  x ─► n experts ─► per task t: softmax(W_t x) · experts ─► task t's input
    PLE:   per level: task t's experts + shared experts ─► task t's gate over both;
           (levels before the last) a shared gate over all experts feeds the next level

`ExpertsHyperParameters` adds their keys to a CTR/CVR model's `hyper_parameters`;
`ExpertsModel` is the network around either block (features, the block, a tower per task).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.nn.features import FeatureInput
from paddle_rec_zoo.nn.layers import Linear, dnn, mlp
from paddle_rec_zoo.nn.multitask import (
    CVR_LOSSES,
    MultiTaskHyperParameters,
    MultiTaskModel,
    entire_space_outputs,
)


@dataclass
class ExpertsHyperParameters(MultiTaskHyperParameters):
    """The experts of MMoE or PLE: each an MLP of `expert_units` over the features."""

    expert_units: list[int] = field(default_factory=lambda: [128, 64])
    expert_dropout: float = 0.0
    cvr_loss: str = "entire_space"  # entire_space: BCE(pctr·pcvr, click·buy); clicked: on clicks

    def validate(self, where: str):
        super().validate(where)
        if not self.expert_units or any(n < 1 for n in self.expert_units):
            raise UserError(f"{where}.expert_units: at least one layer, sizes positive")
        if not 0 <= self.expert_dropout < 1:
            raise UserError(f"{where}.expert_dropout must be in [0, 1)")
        if self.cvr_loss not in CVR_LOSSES:
            raise UserError(
                f"{where}.cvr_loss: choose one of {', '.join(CVR_LOSSES)}, not {self.cvr_loss!r}"
            )


class Experts(nn.Layer):
    """`n` MLPs over the same input: [B, in_size] -> [B, n, out_size]."""

    def __init__(self, in_size: int, n: int, units: list[int], dropout: float = 0.0):
        super().__init__()
        self.experts = nn.LayerList([dnn(in_size, units, dropout) for _ in range(n)])
        self.out_size = units[-1]

    def forward(self, x):
        return paddle.stack([expert(x) for expert in self.experts], axis=1)


class Gate(nn.Layer):
    """softmax(W x + b) over `n` experts; mixes their outputs [B, n, d] into [B, d]."""

    def __init__(self, in_size: int, n: int):
        super().__init__()
        self.linear = Linear(in_size, n)

    def forward(self, x, experts):
        weights = F.softmax(self.linear(x), axis=-1).unsqueeze(-1)  # [B, n, 1]
        return (weights * experts).sum(axis=1)


class MMoE(nn.Layer):
    """x [B, in_size] -> one mixture [B, out_size] per task."""

    def __init__(self, in_size: int, n_tasks: int, n_experts: int, units, dropout=0.0):
        super().__init__()
        self.experts = Experts(in_size, n_experts, units, dropout)
        self.gates = nn.LayerList([Gate(in_size, n_experts) for _ in range(n_tasks)])
        self.out_size = self.experts.out_size

    def forward(self, x) -> list:
        experts = self.experts(x)
        return [gate(x, experts) for gate in self.gates]


class CGC(nn.Layer):
    """One PLE level (customized gate control): task-specific and shared experts; task t's gate
    mixes its own and the shared experts; with `shared_gate`, a gate over every expert makes the
    shared input of the next level."""

    def __init__(self, in_size, n_tasks, n_task_experts, n_shared, units, dropout, shared_gate):
        super().__init__()
        self.task_experts = nn.LayerList(
            [Experts(in_size, n_task_experts, units, dropout) for _ in range(n_tasks)]
        )
        self.shared_experts = Experts(in_size, n_shared, units, dropout)
        self.gates = nn.LayerList(
            [Gate(in_size, n_task_experts + n_shared) for _ in range(n_tasks)]
        )
        n_all = n_tasks * n_task_experts + n_shared
        self.shared_gate = Gate(in_size, n_all) if shared_gate else None
        self.out_size = units[-1]

    def forward(self, task_inputs: list, shared_input) -> tuple[list, object]:
        shared = self.shared_experts(shared_input)
        own = [experts(x) for experts, x in zip(self.task_experts, task_inputs, strict=True)]
        outs = [
            gate(x, paddle.concat([mine, shared], axis=1))
            for gate, x, mine in zip(self.gates, task_inputs, own, strict=True)
        ]
        if self.shared_gate is None:
            return outs, None
        return outs, self.shared_gate(shared_input, paddle.concat([*own, shared], axis=1))


class PLE(nn.Layer):
    """x [B, in_size] -> one output [B, out_size] per task, through `n_levels` CGC levels."""

    def __init__(self, in_size, n_tasks, n_levels, n_task_experts, n_shared, units, dropout=0.0):
        super().__init__()
        levels = []
        for level in range(n_levels):
            size = in_size if level == 0 else units[-1]
            last = level == n_levels - 1
            levels.append(CGC(size, n_tasks, n_task_experts, n_shared, units, dropout, not last))
        self.levels = nn.LayerList(levels)
        self.n_tasks = n_tasks
        self.out_size = units[-1]

    def forward(self, x) -> list:
        task_inputs, shared = [x] * self.n_tasks, x
        for level in self.levels:
            task_inputs, shared = level(task_inputs, shared)
        return task_inputs


class ExpertsModel(MultiTaskModel):
    """ids -> features -> an expert-sharing block (`build_mixture`: one output per task) -> a CTR
    and a CVR tower -> pctr, pcvr, pctcvr; the CVR output fitted as `cvr_loss` says."""

    hyper_parameters_class = ExpertsHyperParameters

    def __init__(self, hp: ExpertsHyperParameters):
        super().__init__(hp)
        self.input = FeatureInput(hp)
        self.mixture = self.build_mixture(hp, self.input.out_size)
        size = self.mixture.out_size
        self.ctr_tower = mlp(size, hp.tower_units("ctr"), hp.ctr_tower.dropout)
        self.cvr_tower = mlp(size, hp.tower_units("cvr"), hp.cvr_tower.dropout)

    def build_mixture(self, hp, in_size: int) -> nn.Layer:
        """The block between the features and the towers ([B, in_size] -> [ctr_x, cvr_x])."""
        raise NotImplementedError

    def forward(self, ids):
        x, pooled = self.input(ids)
        ctr_x, cvr_x = self.mixture(x)
        out = entire_space_outputs(self.ctr_tower(ctr_x), self.cvr_tower(cvr_x))
        out["embedding_reg"] = self.embedding_penalty([pooled])
        return out

    def loss(self, outputs: dict, labels: dict):
        return self.ctr_cvr_loss(outputs, labels, self.hp.cvr_loss)
