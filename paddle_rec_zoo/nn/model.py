"""What a zoo network is, to the tools: a `paddle.nn.Layer` that declares its inputs, outputs,
labels and metrics (`ModelSpec`), and defines its loss.

The engines, loops, plots and experiment tables read only these declarations; nothing in
`tools/` or in the generic modules of this package names a model, an output, a label or a
metric. A model folder's `net.py` defines one `Model` subclass; its `dygraph_model.py` and
`static_model.py` bind it to the generic adapters (`paddle_rec_zoo.run.adapters`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import paddle.nn as nn

from paddle_rec_zoo.report.metrics import Metric


@dataclass(frozen=True)
class Input:
    """A model input, fed from the `Batch` column of the same name (`ids`: [B, width] int64)."""

    name: str
    dtype: str
    width: int


@dataclass(frozen=True)
class ModelSpec:
    """A model's declarations for the tools.

    - `inputs`: what the network's `forward` takes, in order;
    - `outputs`: the predictions it returns (and the exported inference model's output names);
    - `labels`: the reader's label columns its loss and metrics use;
    - `metrics`: evaluated exactly on the test data (and `runner.keep_best`'s choices);
    - `train_metrics`: running values in training logs (AUCs only, from histograms);
    - `truth_metrics`: with a data set's true probabilities (synthetic data): metrics whose
      labels are `truth_<output>` (the true probability) or `truth_<output>_label` (a label drawn
      from it), see `paddle_rec_zoo.report.experiment_table.Truth`;
    - `counts`: positives counted in an evaluation's result, {name: label columns multiplied};
    - `label_keys`: the config key that chose each label column (for error messages).
    """

    inputs: tuple[Input, ...]
    outputs: tuple[str, ...]
    labels: tuple[str, ...]
    metrics: tuple[Metric, ...]
    train_metrics: tuple[Metric, ...] = ()
    truth_metrics: tuple[Metric, ...] = ()
    counts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    label_keys: dict[str, str] = field(default_factory=dict)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)

    def metric(self, name: str) -> Metric:
        return next(m for m in self.metrics if m.name == name)

    def label_columns(self, batch, label_names: tuple[str, ...]) -> dict:
        """{label: [B] array} of the labels this model uses, from a batch whose `labels`
        columns are the reader's `label_names`."""
        return {name: batch.labels[:, label_names.index(name)] for name in self.labels}


class Model(nn.Layer):
    """Base of the zoo's networks: `forward(*inputs) -> {name: [B, 1] tensor}` (the declared
    outputs, and whatever the loss needs), `loss(outputs, labels) -> (total, {part: tensor})`.

    Subclasses set `hyper_parameters_class` and define `spec(hp)` (a classmethod: the tools read
    it before any network is built).
    """

    hyper_parameters_class: type
    # {old key prefix: new}: weights and optimizer slots saved before a layer was renamed keep
    # loading (checkpoints, warm starts, resume); see `upgrade_state`
    renamed_state: ClassVar[dict[str, str]] = {}

    def __init__(self, hp):
        super().__init__()
        self.hp = hp

    @classmethod
    def upgrade_state(cls, state: dict) -> dict:
        """`state` (structured names, or `name:slot` keys) with the names of older checkpoints
        renamed to this version's; other keys unchanged."""
        if not cls.renamed_state:
            return state
        out = {}
        for key, value in state.items():
            old = next((p for p in cls.renamed_state if key.startswith(p)), None)
            out[cls.renamed_state[old] + key[len(old) :] if old else key] = value
        return out

    @classmethod
    def spec(cls, hp) -> ModelSpec:
        raise NotImplementedError

    def loss(self, outputs: dict, labels: dict):
        raise NotImplementedError

    @staticmethod
    def outputs_from_truth(spec: ModelSpec, truth: dict) -> dict:
        """The outputs a perfect model would give, from true probabilities keyed by output name
        (the oracle of experiment tables); outputs the truth lacks are left out."""
        return {k: truth[k] for k in spec.outputs if k in truth}

    # ---- regularisation every model may use (hyper_parameters.l2_regularization and
    # embedding_regularization, see paddle_rec_zoo.nn.features.FeatureHyperParameters)
    def dense_l2(self):
        """½·Σ‖W‖² over the kernels (not biases) of every dense layer (TensorFlow's l2_loss)."""
        total = None
        for layer in self.sublayers():
            if isinstance(layer, nn.Linear):
                term = 0.5 * (layer.weight * layer.weight).sum()
                total = term if total is None else total + term
        return total

    def embedding_penalty(self, pooled: list):
        """EasyRec's embedding regulariser, ½·λ·Σx² over the batch's pooled embeddings (each
        [B, F, D]); None when it is off or the network is not training."""
        lam = self.hp.embedding_regularization
        if not self.training or lam <= 0:
            return None
        total = None
        for p in pooled:
            term = (p * p).sum()
            total = term if total is None else total + term
        return 0.5 * lam * total

    def regularized(self, total, parts: dict, outputs: dict):
        """`total` plus the L2 penalty of the dense kernels and the embedding penalty (put in
        `outputs["embedding_reg"]` by `forward`), each also reported in `parts`."""
        if self.hp.l2_regularization > 0:
            parts["l2_reg"] = self.hp.l2_regularization * self.dense_l2()
            total = total + parts["l2_reg"]
        if outputs.get("embedding_reg") is not None:
            parts["embedding_reg"] = outputs["embedding_reg"]
            total = total + outputs["embedding_reg"]
        return total, parts
