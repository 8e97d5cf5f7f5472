"""Dygraph adapter of ESMM: PaddleRec's `DygraphModel` contract, generic over the network."""

from paddle_rec_zoo.run import adapters

from .net import ESMMLayer


class DygraphModel(adapters.DygraphModel):
    network = ESMMLayer
