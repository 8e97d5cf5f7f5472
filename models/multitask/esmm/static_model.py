"""Static-graph adapter of ESMM (PaddleRec's `StaticModel` contract), for Paddle 3.x under PIR.

It builds the same `ESMMLayer` inside a `paddle.static.Program`; feeds are derived from the field
layout and every fetched value is named (`pctr`, `pcvr`, `pctcvr`, `loss`), never auto-generated.
"""

from __future__ import annotations

import paddle

from . import metrics
from .net import ESMMLayer, HyperParameters, create_embedding_optimizer, create_optimizer
from .reader import Reader


class StaticModel:
    hyper_parameters_class = HyperParameters
    label_names = Reader.label_names
    output_names = ("pctr", "pcvr", "pctcvr")

    def __init__(self, config):
        self.config = config
        self.hp = config.hyper_parameters
        self.layer = None
        self.evaluate = metrics.evaluate_for(self.hp)

    def create_feeds(self, is_infer: bool = False) -> dict:
        feeds = {"ids": paddle.static.data("ids", [None, self.hp.layout().width], "int64")}
        if not is_infer:
            for name in self.label_names:
                feeds[name] = paddle.static.data(name, [None, 1], "float32")
        return feeds

    def net(self, inputs: dict, is_infer: bool = False) -> dict:
        """Build the network; returns the values to fetch by name."""
        self.layer = ESMMLayer(self.hp)
        if is_infer:
            self.layer.eval()
        outputs = self.layer(inputs["ids"])
        fetch = {name: outputs[name] for name in self.output_names}
        if not is_infer:
            labels = {name: inputs[name] for name in self.label_names}
            fetch["loss"], _ = self.layer.loss(outputs, labels)
        return fetch

    def create_optimizer(self):
        """The dense parameters' optimizer. The engine applies it (with the embedding optimizer
        and, under Fleet, the gradients' all-reduce) to `loss` in one backward pass."""
        return create_optimizer(self.hp)

    def create_embedding_optimizer(self):
        """The row-wise optimizer of the embedding tables, or None (they are dense parameters)."""
        return create_embedding_optimizer(self.hp)

    def create_metrics(self) -> metrics.TrainMetrics:
        return metrics.TrainMetrics()

    def infer_net(self, inputs: dict) -> dict:
        return self.net(inputs, is_infer=True)
