"""Dygraph adapter of ESCM²: PaddleRec's `DygraphModel` contract, generic over the network."""

from paddle_rec_zoo.run import adapters

from .net import ESCM2Layer


class DygraphModel(adapters.DygraphModel):
    network = ESCM2Layer
