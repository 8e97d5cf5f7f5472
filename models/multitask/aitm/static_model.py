"""Static-graph adapter of AITM (PIR): PaddleRec's `StaticModel` contract, generic over the
network."""

from paddle_rec_zoo.run import adapters

from .net import AITMLayer


class StaticModel(adapters.StaticModel):
    network = AITMLayer
