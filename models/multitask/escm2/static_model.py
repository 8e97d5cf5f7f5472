"""Static-graph adapter of ESCM² (PIR): PaddleRec's `StaticModel` contract, generic over the
network."""

from paddle_rec_zoo.run import adapters

from .net import ESCM2Layer


class StaticModel(adapters.StaticModel):
    network = ESCM2Layer
