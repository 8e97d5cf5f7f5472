"""Embedding tables whose training step costs what the batch touches, not the whole table.

A plain `nn.Embedding` has a dense gradient `[rows, dim]`, and Adam then rewrites the table and
both moment tables on every step: the step time grows with the vocabulary (about 10x slower at
10M rows than at 300k here). Paddle's own sparse path does not help under PIR: on Paddle 3.3.1
`nn.Embedding(sparse=True)` still builds a dense `embedding_grad` in a static program, and
`Adam(lazy_mode=True)` has nothing sparse to be lazy about. So the update is built here, from
Paddle ops that run the same in both engines:

    host (numpy, in the data thread):  ids [B, W] ─► row_batch ─► uniq [U], local [B, W]
                                        (uniq[0] = 0, the padding id; uniq[local] == ids)
    rows = table[uniq]                  [U, D], a leaf that takes a gradient (the table does not)
    embeddings = rows[local]            [B, W, D] (the embedding op; local 0 looks up zeros)
    backward:   d loss / d rows [U, D]
    update:     rows, slots[uniq] ─► the optimizer's rule ─► scattered back in place

Every cost is O(U·D) per step, U ≤ B·W, whatever the number of rows. The unique ids are found on
the host, in the thread that prepares the next batch while this one trains (`row_batch`): a sort
inside the step cost as much as a tower's forward pass (doc/benchmarks.md, "Step profile").
Under Fleet every rank looks up the union of all ranks' ids, so the rows, their averaged
gradient and the update are the same on every rank, as for one process with the summed batch.

`RowOptimizer` holds the per-row optimizer state ("slots") beside each table, named
`<table var>_<kind>`, so checkpoints and resume carry it like any other optimizer state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import paddle
import paddle.nn as nn
from paddle import _C_ops

# The rules a `RowOptimizer` applies, and the slots each keeps per table.
ROW_OPTIMIZERS = {
    "lazy_adam": ("moment1", "moment2", "beta1_pow", "beta2_pow"),  # 2·D floats per row
    "rowwise_adagrad": ("accumulator",),  # one float per row (torchrec/FBGEMM's default)
    "adagrad": ("accumulator",),  # D floats per row
    "sgd": (),
}
ROW_IDS = "row_ids"  # the static train program's feed of a batch's unique ids


class RowBatch(NamedTuple):
    """A batch's ids as rows of its own: `uniq[local] == ids`, and `uniq[0] == 0` (padding)."""

    uniq: np.ndarray  # [U] int64, ascending
    local: np.ndarray  # [B, W] int64, 0 exactly where ids are padding


def row_batch(ids: np.ndarray, world=None) -> RowBatch:
    """The unique ids of `ids` [B, W] (of every rank's `ids` under an active Fleet `world`:
    a collective, so call it on the training thread there) and each id's position among them.

    Padding id 0 is always `uniq[0]`, so local id 0 means padding too: the embedding op's
    `padding_idx=0` then looks it up as zeros and gives its row no gradient."""
    flat = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if world is not None and world.active:
        # one buffer: this rank's ids in its own block, zeros elsewhere, summed over ranks
        # (every rank's batch has the same size: the data layer makes the shares equal)
        blocks = np.zeros((world.size, flat.size), np.int64)
        blocks[world.rank] = flat
        uniq, inverse = np.unique(world.all_reduce_sum(blocks), return_inverse=True)
        inverse = inverse.reshape(world.size, -1)[world.rank]
    else:
        uniq, inverse = np.unique(flat, return_inverse=True)
    if uniq.size == 0 or uniq[0] != 0:
        uniq, inverse = np.concatenate([np.zeros(1, np.int64), uniq]), inverse + 1
    return RowBatch(uniq.astype(np.int64, copy=False), inverse.reshape(ids.shape).astype(np.int64))


@dataclass
class RowLookup:
    """What one training step looked up: the table, its unique ids and the gathered rows."""

    table: paddle.Tensor  # [rows, D] parameter
    uniq: paddle.Tensor  # [U] int64
    rows: paddle.Tensor  # [U, D], the leaf the row gradient is taken of


class SparseEmbedding(nn.Embedding):
    """`nn.Embedding` (padding id 0) whose training forward gathers only the batch's rows.

    With `row_wise=False` it is exactly `nn.Embedding`: its table is a parameter of the dense
    optimizer. With `row_wise=True` the table takes no gradient, and a training forward takes
    a batch's *local* ids (`RowBatch.local`) after `set_row_ids` gave the table the batch's
    unique ids: it gathers those rows once per step, whatever the number of calls, and records
    a `RowLookup` in `self.lookup` for a `RowOptimizer` to update after the backward pass.
    Evaluation and exported models look up global ids with the plain embedding op either way.
    """

    def __init__(self, num_rows: int, dim: int, init_std: float, row_wise: bool):
        super().__init__(
            num_rows,
            dim,
            padding_idx=0,
            weight_attr=paddle.ParamAttr(initializer=nn.initializer.Normal(std=init_std)),
        )
        self.row_wise = row_wise
        self.init_std = init_std
        self.weight.stop_gradient = row_wise
        self.row_ids = None  # [U] int64: this step's unique ids (set_row_ids)
        self.lookup: RowLookup | None = None

    def fresh_weight(self, rng: np.random.Generator) -> np.ndarray:
        """A new table [rows, D] from the initial distribution, N(0, init_std²), drawn by `rng`
        (numpy, so that every rank and a resumed run draw the same table from the same seed)."""
        rows, dim = self.weight.shape
        return rng.standard_normal((rows, dim), dtype=np.float32) * np.float32(self.init_std)

    def forward(self, ids):
        if not (self.row_wise and self.training) or self.row_ids is None:
            # global ids; outside a training step (no set_row_ids) nothing is recorded, and
            # take_row_lookups says so
            return super().forward(ids)
        lookup = self.lookup
        if lookup is None or lookup.uniq is not self.row_ids:  # this step's first call
            rows = paddle.gather(self.weight, self.row_ids)  # [U, D]
            rows.stop_gradient = False
            lookup = self.lookup = RowLookup(self.weight, self.row_ids, rows)
        # a second call in the same step shares the rows: their gradient adds up both calls'.
        # The op itself: F.embedding checks padding_idx against the rows' static shape, which
        # a static program does not know ([-1, D])
        return _C_ops.embedding(ids, lookup.rows, 0, False)


def embedding_tables(layer: nn.Layer) -> dict:
    """{structured name of the table parameter: SparseEmbedding} of every table of `layer`."""
    return {
        f"{name}.weight" if name else "weight": sub
        for name, sub in layer.named_sublayers(include_self=True)
        if isinstance(sub, SparseEmbedding)
    }


def _row_wise(layer: nn.Layer) -> dict:
    """{structured name of the table parameter: SparseEmbedding} of `layer`'s row-wise tables."""
    return {name: sub for name, sub in embedding_tables(layer).items() if sub.row_wise}


def row_tables(layer: nn.Layer) -> dict:
    """{structured parameter name (a `state_dict` key): table} of `layer`'s row-wise tables."""
    return {name: sub.weight for name, sub in _row_wise(layer).items()}


def set_row_ids(layer: nn.Layer, uniq) -> None:
    """Give every row-wise table of `layer` the unique ids (`RowBatch.uniq`, a [U] int64 tensor,
    or the static program's feed) of the batch whose local ids its training forward gets."""
    for sub in _row_wise(layer).values():
        sub.row_ids = uniq


def take_row_lookups(layer: nn.Layer) -> list[RowLookup]:
    """The lookups of `layer`'s last training forward, one per row-wise table, and forget them
    and the step's unique ids (a later forward outside a step looks up global ids again)."""
    found = []
    for sub in _row_wise(layer).values():
        if sub.lookup is None:
            raise RuntimeError(
                f"{sub.full_name()}: no rows looked up since the last update (a training "
                "forward on local ids, after set_row_ids with the batch's unique ids)"
            )
        found.append(sub.lookup)
        sub.lookup = sub.row_ids = None
    return found


class RowOptimizer:
    """A row-wise optimizer for embedding tables: updates the looked-up rows and their slots only.

    - `lazy_adam`: Adam (Paddle's formula and defaults) on the rows a step touches; untouched
      rows keep their moments (TensorFlow's LazyAdam, Paddle's `lazy_mode`).
    - `rowwise_adagrad`: one accumulator per row, += mean(g²) over the row; w -= lr·g/(√acc + ε).
    - `adagrad`: an accumulator per weight; w -= lr·g/(√acc + ε).
    - `sgd`: w -= lr·g.

    `update` builds the same ops in both engines: eager in dygraph, into the current program in
    static mode (call it inside the train program's `program_guard`). The learning rate is a
    float (dygraph) or a fed `[1]` value (static); `next_lr()` gives it, one call per step.
    """

    def __init__(self, rule: str, schedule, beta1=0.9, beta2=0.999, epsilon=1e-8, initial=0.0):
        if rule not in ROW_OPTIMIZERS:
            raise ValueError(f"unknown row optimizer {rule!r}")
        self.rule = rule
        self.schedule = schedule  # a callable giving the learning rate of each step, in order
        self.beta1, self.beta2, self.epsilon, self.initial = beta1, beta2, epsilon, initial
        self.slots: dict[str, dict[str, paddle.Tensor]] = {}  # table var name -> kind -> slot

    def next_lr(self) -> float:
        return float(self.schedule())

    def initial_value(self, kind: str) -> float:
        """The value every element of a fresh slot of `kind` holds."""
        return {"beta1_pow": self.beta1, "beta2_pow": self.beta2, "accumulator": self.initial}.get(
            kind, 0.0
        )

    def create_slots(self, table):
        """Create (zero or initial-valued) slots for `table`; in static mode, in its startup."""
        rows, dim = table.shape
        shapes = {
            "moment1": [rows, dim],
            "moment2": [rows, dim],
            "beta1_pow": [1],
            "beta2_pow": [1],
            "accumulator": [rows, 1 if self.rule == "rowwise_adagrad" else dim],
        }
        slots = {}
        for kind in ROW_OPTIMIZERS[self.rule]:
            shape, value = shapes[kind], self.initial_value(kind)
            if paddle.in_dynamic_mode():
                slots[kind] = paddle.full(shape, value, "float32")
                continue
            # a persistable variable of the program, filled by its startup program; its name
            # puts it among the table's optimizer variables in checkpoints
            name = f"{table.name}_{kind}"
            slots[kind] = paddle.create_parameter(
                shape,
                "float32",
                name=name,
                attr=paddle.ParamAttr(
                    name=name, trainable=False, initializer=nn.initializer.Constant(value)
                ),
            )
            slots[kind].stop_gradient = True
        self.slots[table.name] = slots
        return slots

    def update(self, lookup: RowLookup, grad, lr):
        """Apply one step to the rows of `lookup` (grad [U, D]) and to their slots, in place."""
        uniq, rows = lookup.uniq, lookup.rows
        slots = self.slots.get(lookup.table.name) or self.create_slots(lookup.table)
        if self.rule == "sgd":
            new = rows - lr * grad
        elif self.rule == "lazy_adam":
            b1, b2 = self.beta1, self.beta2
            b1_pow, b2_pow = slots["beta1_pow"], slots["beta2_pow"]
            m1 = b1 * paddle.gather(slots["moment1"], uniq) + (1 - b1) * grad
            m2 = b2 * paddle.gather(slots["moment2"], uniq) + (1 - b2) * grad * grad
            correction = paddle.sqrt(1 - b2_pow)
            step = lr * correction / (1 - b1_pow)
            new = rows - step * m1 / (paddle.sqrt(m2) + self.epsilon * correction)
            _C_ops.scatter_(slots["moment1"], uniq, m1, True)
            _C_ops.scatter_(slots["moment2"], uniq, m2, True)
            paddle.assign(b1_pow * b1, output=b1_pow)
            paddle.assign(b2_pow * b2, output=b2_pow)
        else:
            square = grad * grad
            if self.rule == "rowwise_adagrad":
                square = square.mean(axis=1, keepdim=True)
            acc = paddle.gather(slots["accumulator"], uniq) + square
            new = rows - lr * grad / (paddle.sqrt(acc) + self.epsilon)
            _C_ops.scatter_(slots["accumulator"], uniq, acc, True)
        _C_ops.scatter_(lookup.table, uniq, new, True)

    def step(self, lookups: list[RowLookup], world=None):
        """Dygraph: update every lookup from its rows' gradient (averaged over ranks)."""
        lr = self.next_lr()
        with paddle.no_grad():
            for lookup in lookups:
                grad = lookup.rows.grad
                if world is not None and world.active:
                    paddle.distributed.all_reduce(grad)
                    grad = grad / world.size
                self.update(lookup, grad, lr)
