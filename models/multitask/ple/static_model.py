"""Static-graph adapter of PLE (PIR): PaddleRec's `StaticModel` contract, generic over the
network."""

from paddle_rec_zoo.run import adapters

from .net import PLELayer


class StaticModel(adapters.StaticModel):
    network = PLELayer
