"""Embedding tables whose training step costs what the batch touches, not the whole table.

A plain `nn.Embedding` has a dense gradient `[rows, dim]`, and Adam then rewrites the table and
both moment tables on every step: the step time grows with the vocabulary (about 10x slower at
10M rows than at 300k here). Paddle's own sparse path does not help under PIR: on Paddle 3.3.1
`nn.Embedding(sparse=True)` still builds a dense `embedding_grad` in a static program, and
`Adam(lazy_mode=True)` has nothing sparse to be lazy about. So the update is built here, from
Paddle ops that run the same in both engines:

    ids [B, W] ─► unique ─► uniq [U], inverse [B·W]
    rows = table[uniq]          [U, D], a leaf that takes a gradient (the table itself does not)
    embeddings = rows[inverse]  [B, W, D]   (padding id 0 looks up zeros)
    backward:   d loss / d rows [U, D]
    update:     rows, slots[uniq] ─► the optimizer's rule ─► scattered back in place

Every cost is O(U·D) per step, U ≤ B·W, whatever the number of rows. Under Fleet every rank looks
up the union of all ranks' ids (all-reduced into one buffer), so the rows, their averaged gradient
and the update are the same on every rank, as for one process with the summed batch.

`RowOptimizer` holds the per-row optimizer state ("slots") beside each table, named
`<table var>_<kind>`, so checkpoints and resume carry it like any other optimizer state.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def unique_ids(flat):
    """[N] int64 -> (uniq [U] ascending, inverse [N] with uniq[inverse] == flat).

    One sort: `paddle.unique(return_inverse=True)` searches for every id to make its inverse,
    which grows with ids x unique ids (seconds for one batch of tens of thousands of ids). `_C_ops.argsort` returns the sorted values with
    the order (`paddle.argsort` drops them, which would cost a gather); not
    `unique_consecutive`, whose inverse PIR declares float32 while it holds int64.
    """
    ordered, order = _C_ops.argsort(flat, -1, False, False)
    first = paddle.concat([paddle.ones([1], "bool"), ordered[1:] != ordered[:-1]])
    group = paddle.cumsum(first.astype("int64")) - 1  # [N] index into uniq, in sorted order
    inverse = paddle.scatter(paddle.zeros_like(group), order, group)
    return paddle.masked_select(ordered, first), inverse


@dataclass
class RowLookup:
    """What one training forward looked up: the table, its unique ids and the gathered rows."""

    table: paddle.Tensor  # [rows, D] parameter
    uniq: paddle.Tensor  # [U] int64
    rows: paddle.Tensor  # [U, D], the leaf the row gradient is taken of


class SparseEmbedding(nn.Embedding):
    """`nn.Embedding` (padding id 0) whose training forward gathers only the batch's rows.

    With `row_wise=False` it is exactly `nn.Embedding`: its table is a parameter of the dense
    optimizer. With `row_wise=True` the table takes no gradient; a training forward records a
    `RowLookup` in `self.lookup`, for a `RowOptimizer` to update after the backward pass.
    Evaluation and exported models look up rows with the plain embedding op either way.
    """

    def __init__(self, num_rows: int, dim: int, init_std: float, row_wise: bool):
        super().__init__(
            num_rows,
            dim,
            padding_idx=0,
            weight_attr=paddle.ParamAttr(initializer=nn.initializer.Normal(std=init_std)),
        )
        self.row_wise = row_wise
        self.weight.stop_gradient = row_wise
        self.lookup: RowLookup | None = None

    def forward(self, ids):
        if not (self.row_wise and self.training):
            return super().forward(ids)
        flat = ids.reshape([-1])
        size = paddle.distributed.get_world_size() if paddle.distributed.is_initialized() else 1
        if size > 1:  # a rank of a collective job (Fleet): the union of every rank's ids
            rank = paddle.distributed.get_rank()
            # one buffer: this rank's ids in its own block, zeros elsewhere, summed over ranks
            # (every rank's batch has the same size: the data layer makes the shares equal)
            blocks = [flat if r == rank else paddle.zeros_like(flat) for r in range(size)]
            everyone = paddle.concat(blocks)
            paddle.distributed.all_reduce(everyone)
            uniq, inverse = unique_ids(everyone)
            inverse = inverse.reshape([size, -1])[rank]
        else:
            uniq, inverse = unique_ids(flat)
        rows = paddle.gather(self.weight, uniq)  # [U, D]
        rows.stop_gradient = False
        self.lookup = RowLookup(self.weight, uniq, rows)
        # padding id 0 looks up zeros and its row takes no gradient, as with padding_idx
        kept = rows * (uniq != 0).astype(rows.dtype).unsqueeze(1)
        return paddle.gather(kept, inverse).reshape([-1, *ids.shape[1:], self._embedding_dim])


def _row_wise(layer: nn.Layer) -> dict:
    """{structured name of the table parameter: SparseEmbedding} of `layer`'s row-wise tables."""
    return {
        f"{name}.weight" if name else "weight": sub
        for name, sub in layer.named_sublayers(include_self=True)
        if isinstance(sub, SparseEmbedding) and sub.row_wise
    }


def row_tables(layer: nn.Layer) -> dict:
    """{structured parameter name (a `state_dict` key): table} of `layer`'s row-wise tables."""
    return {name: sub.weight for name, sub in _row_wise(layer).items()}


def take_row_lookups(layer: nn.Layer) -> list[RowLookup]:
    """The lookups of `layer`'s last training forward, one per row-wise table, and forget them."""
    found = []
    for sub in _row_wise(layer).values():
        if sub.lookup is None:
            raise RuntimeError(f"{sub.full_name()}: no training forward since the last update")
        found.append(sub.lookup)
        sub.lookup = None
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

    def create_slots(self, table):
        """Create (zero or initial-valued) slots for `table`; in static mode, in its startup."""
        rows, dim = table.shape
        init = {
            "moment1": ([rows, dim], 0.0),
            "moment2": ([rows, dim], 0.0),
            "beta1_pow": ([1], self.beta1),
            "beta2_pow": ([1], self.beta2),
            "accumulator": ([rows, 1 if self.rule == "rowwise_adagrad" else dim], self.initial),
        }
        slots = {}
        for kind in ROW_OPTIMIZERS[self.rule]:
            shape, value = init[kind]
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
