"""What every model's input is: the embedding table (with its row-wise update), per-field pooling
and feature groups, configured by the `hyper_parameters` every model shares.

    ids [B, width] ─► embedding ─► per-field pooling ─► feature groups ─► features [B, out_size]
                     (SparseEmbedding)  (sum / mean)     (each group: concat, own DNN)

`FeatureHyperParameters` is the base of every model's `hyper_parameters` dataclass: the table,
the fields and their pooling, the feature groups, regularisation and both optimizers. A model's
own dataclass derives from it (or from `multitask.MultiTaskHyperParameters`) and adds only what
its paper adds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import paddle
import paddle.nn as nn

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.nn.layers import dnn
from paddle_rec_zoo.nn.optim import EmbeddingOptimizerConfig, OptimizerConfig
from paddle_rec_zoo.nn.sparse import SparseEmbedding
from paddle_rec_zoo.schema import FieldLayout

POOLINGS = ("sum", "mean")
TABLE_SHARDINGS = ("none", "row")


@dataclass
class FieldOptions:
    """Per-field overrides of `max_len` and `pooling`."""

    max_len: int | None = None
    pooling: str | None = None


@dataclass
class FeatureGroup:
    """Fields whose pooled embeddings are concatenated and passed through one DNN."""

    name: str
    fields: list[str]
    hidden_units: list[int] = field(default_factory=list)  # [] = the concatenation itself
    dropout: float = 0.0


@dataclass
class FeatureHyperParameters:
    """The part of `hyper_parameters:` every model shares."""

    sparse_feature_number: int = 737946  # embedding rows; every feasign must be below it
    hash_ids: bool = False  # fold feasigns >= sparse_feature_number into the table, no error
    # none: every Fleet rank holds the whole table; row: each holds 1/ranks of its rows and
    # their optimizer slots (doc/distributed.md)
    table_sharding: str = "none"
    sparse_feature_dim: int = 12
    fields: list[str] = field(default_factory=list)  # config: the reader's FIELDS if not set
    max_len: int = 3  # feasigns kept per field and line (the first ones)
    pooling: str = "sum"  # sum or mean of a field's embeddings
    field_options: dict[str, FieldOptions] = field(default_factory=dict)
    feature_groups: list[FeatureGroup] = field(default_factory=list)  # [] = one group, no DNN
    embedding_init_std: float = 0.01  # N(0, std); PaddleRec's U(-1, 1) overfits badly
    # every epoch after the first starts from fresh tables (and slots, and their schedule), the
    # dense layers carrying on (MEDA): a second epoch then gains instead of memorising the rows
    embedding_reinit: bool = True
    l2_regularization: float = 0.0  # λ·½Σw² over the kernels of every dense layer
    embedding_regularization: float = 0.0  # λ·½Σx² over the batch's pooled embeddings
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    embedding_optimizer: EmbeddingOptimizerConfig = field(default_factory=EmbeddingOptimizerConfig)

    def validate(self, where: str):
        if self.sparse_feature_number < 2:
            raise UserError(f"{where}.sparse_feature_number must be at least 2 (0 is padding)")
        for key in ("sparse_feature_dim", "max_len"):
            if getattr(self, key) < 1:
                raise UserError(f"{where}.{key} must be at least 1")
        if not self.fields:
            raise UserError(f"{where}.fields is empty")
        for key in ("embedding_init_std", "l2_regularization", "embedding_regularization"):
            if getattr(self, key) < 0:
                raise UserError(f"{where}.{key} must be non-negative")
        if self.table_sharding not in TABLE_SHARDINGS:
            raise UserError(
                f"{where}.table_sharding: choose none or row, not {self.table_sharding!r}"
            )
        if self.table_sharding == "row" and not self.embedding_optimizer.row_wise:
            raise UserError(
                f"{where}.table_sharding: row needs a row-wise embedding_optimizer (the tables "
                "of class dense are parameters of the dense optimizer)"
            )
        if self.pooling not in POOLINGS:
            raise UserError(f"{where}.pooling: choose sum or mean, not {self.pooling!r}")
        for name, opt in self.field_options.items():
            key = f"{where}.field_options.{name}"
            if name not in self.fields:
                raise UserError(f"{key}: {name!r} is not in {where}.fields")
            if opt.max_len is not None and opt.max_len < 1:
                raise UserError(f"{key}.max_len must be at least 1")
            if opt.pooling is not None and opt.pooling not in POOLINGS:
                raise UserError(f"{key}.pooling: choose sum or mean, not {opt.pooling!r}")
        self._validate_groups(where)
        self.layout()  # checks field names

    def _validate_groups(self, where: str):
        owner: dict[str, str] = {}
        names = set()
        for i, group in enumerate(self.feature_groups):
            key = f"{where}.feature_groups[{i}]"
            if not group.name:
                raise UserError(f"{key}.name is empty")
            if group.name in names:
                raise UserError(f"{key}.name: group {group.name!r} is defined twice")
            names.add(group.name)
            if not group.fields:
                raise UserError(f"{key} ({group.name}): fields is empty")
            for name in group.fields:
                if name not in self.fields:
                    raise UserError(
                        f"{key}.fields: {name!r} is not in {where}.fields (unknown field)"
                    )
                if name in owner:
                    raise UserError(
                        f"{key}.fields: {name!r} is already in group {owner[name]!r}; "
                        "a field belongs to one group"
                    )
                owner[name] = group.name
            if any(n < 1 for n in group.hidden_units):
                raise UserError(f"{key}.hidden_units: layer sizes must be positive")
            if not 0 <= group.dropout < 1:
                raise UserError(f"{key}.dropout must be in [0, 1)")
        if self.feature_groups:
            unused = [f for f in self.fields if f not in owner]
            if unused:
                raise UserError(
                    f"{where}.feature_groups: fields {unused} are read but in no group; add them "
                    f"to a group or remove them from {where}.fields"
                )

    # ---- resolved values
    def field_max_len(self, name: str) -> int:
        opt = self.field_options.get(name)
        return opt.max_len if opt is not None and opt.max_len is not None else self.max_len

    def field_pooling(self, name: str) -> str:
        opt = self.field_options.get(name)
        return opt.pooling if opt is not None and opt.pooling is not None else self.pooling

    def layout(self) -> FieldLayout:
        return FieldLayout(tuple(self.fields), tuple(self.field_max_len(f) for f in self.fields))

    def groups(self) -> list[FeatureGroup]:
        return self.feature_groups or [FeatureGroup("all", list(self.fields))]


class FeatureInput(nn.Layer):
    """ids [B, width] -> features [B, out_size]: embedding, per-field pooling, group DNNs."""

    def __init__(self, hp: FeatureHyperParameters):
        super().__init__()
        self.layout = hp.layout()
        self.dim = hp.sparse_feature_dim
        self.embedding = SparseEmbedding(
            hp.sparse_feature_number,
            hp.sparse_feature_dim,
            hp.embedding_init_std,
            row_wise=hp.embedding_optimizer.row_wise,
        )
        self.mean_fields = [hp.field_pooling(f) == "mean" for f in self.layout.names]
        # slot l: the column of each field's l-th id, or `width` (padding) past a field's max_len
        lens = self.layout.max_lens
        starts = np.cumsum([0, *lens[:-1]])
        width = int(sum(lens))
        self.ragged = len(set(lens)) > 1
        self.slot_columns = [
            np.array(
                [s + k if k < n else width for s, n in zip(starts, lens, strict=True)],
                dtype="int64",
            )
            for k in range(max(lens))
        ]
        index = {name: i for i, name in enumerate(self.layout.names)}
        self.group_fields = [[index[f] for f in g.fields] for g in hp.groups()]
        self.group_dnns = nn.LayerList(
            [dnn(len(g.fields) * self.dim, g.hidden_units, g.dropout) for g in hp.groups()]
        )
        self.out_size = sum(
            g.hidden_units[-1] if g.hidden_units else len(g.fields) * self.dim for g in hp.groups()
        )

    def pooled(self, ids):
        """[B, width] ids -> [B, F, D] pooled embeddings (sum, or mean of the non-padding ids).

        Pooled slot by slot: slot l holds every field's l-th id ([B, F], padding where a field
        has fewer), each slot is looked up at once and the L lookups are added. The same sums
        as looking up [B, width] and reducing each field's run, without Paddle's CPU reduction
        over the middle axis, which with its gradient took 2.5 ms of a 1024-row step against
        1.0 ms this way (doc/benchmarks.md, "Step profile").
        """
        source = ids
        if self.ragged:  # fields of different max_len: a last column of padding for the short
            source = paddle.concat([ids, paddle.zeros_like(ids[:, :1])], axis=1)
        slots = [paddle.gather(source, paddle.assign(i), axis=1) for i in self.slot_columns]
        pooled = paddle.add_n([self.embedding(slot) for slot in slots])  # [B, F, D]
        if any(self.mean_fields):
            counts = paddle.add_n([(slot != 0).astype(pooled.dtype) for slot in slots])  # [B, F]
            mean = paddle.assign(np.array(self.mean_fields, dtype="float32"))  # [F]
            # sum fields divide by 1, mean fields by their count of non-padding ids (at least 1)
            divisor = 1.0 + mean * (paddle.clip(counts, min=1.0) - 1.0)  # [B, F]
            pooled = pooled / divisor.unsqueeze(-1)
        return pooled

    def forward(self, ids):
        """Returns (features [B, out_size], pooled embeddings [B, F, D])."""
        pooled = self.pooled(ids)
        n_fields = len(self.layout.names)
        if len(self.group_fields) == 1 and self.group_fields[0] == list(range(n_fields)):
            x = pooled.reshape([-1, n_fields * self.dim])
            return self.group_dnns[0](x), pooled
        per_field = paddle.unbind(pooled, axis=1)  # F x [B, D]
        outs = []
        for fields, group_dnn in zip(self.group_fields, self.group_dnns, strict=True):
            x = paddle.concat([per_field[i] for i in fields], axis=1)  # [B, |g| * D]
            outs.append(group_dnn(x))
        return paddle.concat(outs, axis=1), pooled
