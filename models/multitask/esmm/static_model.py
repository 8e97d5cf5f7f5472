"""Static-graph adapter of ESMM (PIR): PaddleRec's `StaticModel` contract, generic over the
network."""

from paddle_rec_zoo.run import adapters

from .net import ESMMLayer


class StaticModel(adapters.StaticModel):
    network = ESMMLayer
