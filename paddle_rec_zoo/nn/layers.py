"""Dense building blocks shared by the zoo's networks."""

from __future__ import annotations

import paddle
import paddle.nn as nn


class Linear(nn.Linear):
    """`nn.Linear` whose training step adds the bias as a rank-1 product, ones[B, 1] @ b[1, N].

    The result is the same, but the bias gradient becomes a matrix product (onesᵀ @ grad)
    instead of Paddle's CPU column-sum of the broadcast add, which cost more than the layer's
    matrix products: a 1024x276 @ 276x256 layer's forward and backward took 3.95 ms with the
    broadcast add and 2.43 ms with the product (1 thread; 5.4 vs 1.7 ms with 2; AMD EPYC,
    doc/benchmarks.md "Step profile"). Evaluation and exported models use the plain layer
    (Paddle Inference fuses it). Parameters, names and checkpoints are `nn.Linear`'s.
    """

    def forward(self, x):
        if not self.training or self.bias is None or len(x.shape) != 2:
            return super().forward(x)
        rows = x.shape[0] if paddle.in_dynamic_mode() else paddle.shape(x)[0]
        ones = paddle.ones([rows, 1], x.dtype)  # takes no gradient
        return paddle.matmul(x, self.weight) + paddle.matmul(ones, self.bias.unsqueeze(0))


def dnn(in_size: int, sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear+ReLU(+Dropout) layers of `sizes` (no output layer); empty `sizes` = identity."""
    layers: list[nn.Layer] = []
    for size in sizes:
        layers += [Linear(in_size, size), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_size = size
    return nn.Sequential(*layers)


def mlp(in_size: int, sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    """`dnn(sizes)` then one output logit."""
    net = dnn(in_size, sizes, dropout)
    net.add_sublayer(str(len(net)), Linear(sizes[-1] if sizes else in_size, 1))
    return net
