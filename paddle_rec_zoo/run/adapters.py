"""PaddleRec's two model contracts (`DygraphModel`, `StaticModel`) over any zoo `Model`.

A model folder binds its network to them in two short files:

    # dygraph_model.py                            # static_model.py
    from paddle_rec_zoo import adapters           from paddle_rec_zoo import adapters
    from .net import ESMMLayer                    from .net import ESMMLayer

    class DygraphModel(adapters.DygraphModel):    class StaticModel(adapters.StaticModel):
        network = ESMMLayer                           network = ESMMLayer

Feeds, labels, the loss call, the optimizers and the fetched outputs all follow from the
network's declarations (`Model.spec`), so nothing here is model specific.
"""

from __future__ import annotations

import numpy as np
import paddle

from paddle_rec_zoo.nn.model import Model, ModelSpec
from paddle_rec_zoo.nn.optim import create_embedding_optimizer, create_optimizer
from paddle_rec_zoo.nn.sparse import forget_row_ids, set_row_ids
from paddle_rec_zoo.run.model_loader import check_labels, reader_class


class _Adapter:
    network: type[Model]  # set by the model folder's subclass

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "network" in cls.__dict__:
            cls.hyper_parameters_class = cls.network.hyper_parameters_class

    def __init__(self, config, label_names: tuple[str, ...] | None = None):
        """`label_names`: the reader's label columns, in the order of a batch's `labels`
        (default: those of the config's reader)."""
        self.config = config
        self.hp = config.hyper_parameters
        self.spec: ModelSpec = self.network.spec(self.hp)
        self.label_names = tuple(label_names or reader_class(config).label_names)
        check_labels(self.spec, self.label_names)

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.spec.outputs

    def labels(self, batch) -> dict:
        """{label name: [B] array} of the labels the model uses."""
        return self.spec.label_columns(batch, self.label_names)

    def inputs(self, batch) -> dict:
        """{input name: array} from the batch's columns of the same names; a batch prepared
        for row-wise tables (`batch.rows`) gives its local ids as `ids` (paddle_rec_zoo.nn.sparse)."""
        found = {i.name: getattr(batch, i.name) for i in self.spec.inputs}
        if batch.rows is not None:
            found["ids"] = batch.rows.local
        return found

    def create_embedding_optimizer(self):
        """The row-wise optimizer of the embedding tables, or None (they are dense parameters)."""
        return create_embedding_optimizer(self.hp)


def _row_tensors(rows) -> tuple:
    """`set_row_ids`' arguments from a `RowBatch`: its unique ids, and this rank's rows among
    them for sharded tables."""
    owned = getattr(rows, "owned", None)  # a ShardedRowBatch
    owned = None if owned is None else tuple(paddle.to_tensor(a) for a in owned)
    return paddle.to_tensor(rows.uniq), owned


class DygraphModel(_Adapter):
    def __init__(self, config, label_names=None):
        super().__init__(config, label_names)
        self.net = None

    def create_model(self) -> Model:
        self.net = self.network(self.hp)
        return self.net

    def create_feeds(self, batch, with_labels: bool = True) -> dict:
        """Tensors: the declared inputs, and one [B, 1] float32 per label the model uses."""
        feeds = {k: paddle.to_tensor(v) for k, v in self.inputs(batch).items()}
        if with_labels:
            for name, column in self.labels(batch).items():
                feeds[name] = paddle.to_tensor(column.astype(np.float32).reshape(-1, 1))
        return feeds

    def create_loss(self, net, outputs: dict, feeds: dict):
        """(total loss, parts): the network's loss with its regularisation."""
        return net.loss(outputs, {name: feeds[name] for name in self.spec.labels})

    def create_optimizer(self, net):
        """The dense parameters' optimizer (row-wise embedding tables are not among them)."""
        return create_optimizer(self.hp, net.parameters())

    def train_forward(self, net, batch):
        """(loss tensor, outputs dict of [B, 1] tensors). A batch prepared for row-wise tables
        (`batch.rows`, see `paddle_rec_zoo.nn.sparse.row_batch`) trains them on its own rows."""
        feeds = self.create_feeds(batch)
        if batch.rows is not None:
            set_row_ids(net, *_row_tensors(batch.rows))
        outputs = net(*(feeds[i.name] for i in self.spec.inputs))
        loss, _ = self.create_loss(net, outputs, feeds)
        return loss, outputs

    def infer_forward(self, net, batch) -> dict:
        """Outputs of global ids; of local ids if the batch has its rows (`batch.rows`: how
        sharded tables look up, in evaluation too)."""
        feeds = self.create_feeds(batch, with_labels=False)
        if batch.rows is not None:
            set_row_ids(net, *_row_tensors(batch.rows))
        try:
            outputs = net(*(feeds[i.name] for i in self.spec.inputs))
        finally:
            if batch.rows is not None:
                forget_row_ids(net)
        return {name: outputs[name] for name in self.output_names}


class StaticModel(_Adapter):
    """Builds the network inside the current `paddle.static.Program` (under PIR); every fetched
    value is named (the declared outputs and `loss`), never auto-generated."""

    def __init__(self, config, label_names=None):
        super().__init__(config, label_names)
        self.layer = None

    def create_feeds(self, is_infer: bool = False) -> dict:
        feeds = {
            i.name: paddle.static.data(i.name, [None, i.width], i.dtype) for i in self.spec.inputs
        }
        if not is_infer:
            for name in self.spec.labels:
                feeds[name] = paddle.static.data(name, [None, 1], "float32")
        return feeds

    def feed(self, batch, is_infer: bool = False) -> dict:
        """The arrays of a batch for `create_feeds`' placeholders."""
        feed = self.inputs(batch)
        if not is_infer:
            for name, column in self.labels(batch).items():
                feed[name] = column.astype(np.float32).reshape(-1, 1)
        return feed

    def net(self, inputs: dict, is_infer: bool = False, row_ids=None, owned=None) -> dict:
        """Build the network; returns the values to fetch by name. `row_ids`: the feed of a
        batch's unique ids, for row-wise tables (whose `ids` feed then holds local ids);
        `owned`: the feeds of this rank's rows among them, for sharded tables."""
        self.layer = self.network(self.hp)
        if is_infer:
            self.layer.eval()
        if row_ids is not None:
            set_row_ids(self.layer, row_ids, owned)
        outputs = self.layer(*(inputs[i.name] for i in self.spec.inputs))
        fetch = {name: outputs[name] for name in self.output_names}
        if not is_infer:
            labels = {name: inputs[name] for name in self.spec.labels}
            fetch["loss"], _ = self.layer.loss(outputs, labels)
        return fetch

    def create_optimizer(self):
        """The dense parameters' optimizer. The engine applies it (with the embedding optimizer
        and, under Fleet, the gradients' all-reduce) to `loss` in one backward pass."""
        return create_optimizer(self.hp)

    def infer_net(self, inputs: dict, row_ids=None, owned=None) -> dict:
        return self.net(inputs, is_infer=True, row_ids=row_ids, owned=owned)
