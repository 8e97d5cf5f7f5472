"""Static-graph adapter of MMoE (PIR): PaddleRec's `StaticModel` contract, generic over the
network."""

from paddle_rec_zoo.run import adapters

from .net import MMoELayer


class StaticModel(adapters.StaticModel):
    network = MMoELayer
