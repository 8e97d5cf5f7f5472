"""Dygraph adapter of ESMM (PaddleRec's `DygraphModel` contract): feeds, loss, optimizer, metrics.

The network, the loss and the metrics are defined once (`net.py`, `metrics.py`); this file only
turns a `Batch` into tensors and calls them.
"""

from __future__ import annotations

import paddle

from . import metrics
from .net import ESMMLayer, HyperParameters, create_embedding_optimizer, create_optimizer
from .reader import Reader


class DygraphModel:
    hyper_parameters_class = HyperParameters
    label_names = Reader.label_names
    output_names = ("pctr", "pcvr", "pctcvr")

    def __init__(self):
        self.net = None
        self.evaluate = metrics.evaluate

    def create_model(self, config) -> ESMMLayer:
        self.net = ESMMLayer(config.hyper_parameters)
        self.evaluate = metrics.evaluate_for(config.hyper_parameters)
        return self.net

    def create_feeds(self, batch, config) -> dict:
        """`Batch` -> tensors: ids [B, width] int64, one [B, 1] float32 per label (click, buy)."""
        feeds = {"ids": paddle.to_tensor(batch.ids)}
        for j, name in enumerate(self.label_names):
            feeds[name] = paddle.to_tensor(batch.labels[:, j : j + 1].astype("float32"))
        return feeds

    def create_loss(self, outputs: dict, feeds: dict, net=None):
        """(total loss, parts) of the network's variant, with its regularisation."""
        net = net or self.net
        return net.loss(outputs, {name: feeds[name] for name in self.label_names})

    def create_optimizer(self, net, config):
        """The dense parameters' optimizer (row-wise embedding tables are not among them)."""
        return create_optimizer(config.hyper_parameters, net.parameters())

    def create_embedding_optimizer(self, config):
        """The row-wise optimizer of the embedding tables, or None (they are dense parameters)."""
        return create_embedding_optimizer(config.hyper_parameters)

    def create_metrics(self) -> metrics.TrainMetrics:
        return metrics.TrainMetrics()

    def train_forward(self, net, batch, config):
        """Returns (loss tensor, outputs dict of [B, 1] tensors)."""
        feeds = self.create_feeds(batch, config)
        outputs = net(feeds["ids"])
        loss, _ = self.create_loss(outputs, feeds, net)
        return loss, outputs

    def infer_forward(self, net, batch, config) -> dict:
        outputs = net(paddle.to_tensor(batch.ids))
        return {name: outputs[name] for name in self.output_names}
