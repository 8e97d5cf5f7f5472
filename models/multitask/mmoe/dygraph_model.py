"""Dygraph adapter of MMoE: PaddleRec's `DygraphModel` contract, generic over the network."""

from paddle_rec_zoo.run import adapters

from .net import MMoELayer


class DygraphModel(adapters.DygraphModel):
    network = MMoELayer
