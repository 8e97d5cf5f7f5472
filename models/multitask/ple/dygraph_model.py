"""Dygraph adapter of PLE: PaddleRec's `DygraphModel` contract, generic over the network."""

from paddle_rec_zoo.run import adapters

from .net import PLELayer


class DygraphModel(adapters.DygraphModel):
    network = PLELayer
