"""Dense building blocks shared by the zoo's networks."""

from __future__ import annotations

import paddle.nn as nn


def dnn(in_size: int, sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear+ReLU(+Dropout) layers of `sizes` (no output layer); empty `sizes` = identity."""
    layers: list[nn.Layer] = []
    for size in sizes:
        layers += [nn.Linear(in_size, size), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_size = size
    return nn.Sequential(*layers)


def mlp(in_size: int, sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    """`dnn(sizes)` then one output logit."""
    net = dnn(in_size, sizes, dropout)
    net.add_sublayer(str(len(net)), nn.Linear(sizes[-1] if sizes else in_size, 1))
    return net
