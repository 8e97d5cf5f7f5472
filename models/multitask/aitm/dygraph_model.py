"""Dygraph adapter of AITM: PaddleRec's `DygraphModel` contract, generic over the network."""

from paddle_rec_zoo.run import adapters

from .net import AITMLayer


class DygraphModel(adapters.DygraphModel):
    network = AITMLayer
