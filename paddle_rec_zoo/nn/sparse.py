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

With `hyper_parameters.table_sharding: row` under Fleet, each rank holds only the rows i with
i % ranks == rank (at index i // ranks of its shard, `RowShards`) and their slots. A step then
gathers this rank's rows among the union, every rank's rows are summed into [U, D] by one
all-reduce (each row comes from exactly one rank, so the sum is exact), the network runs as
above, the averaged row gradient is all-reduced as without sharding, and each rank updates only
its own rows. The traffic per table and step is one more [U, D] all-reduce; nothing is
[rows, D]-sized. (gloo has no all-to-all: doc/distributed.md.)

`RowOptimizer` holds the per-row optimizer state ("slots") beside each table, named
`<table var>_<kind>`, so checkpoints and resume carry it like any other optimizer state.
"""

from __future__ import annotations

import contextlib
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
# sharded tables: the static programs' feeds of this rank's rows among them (ShardedRowBatch)
ROW_OWNED = ("row_owned_positions", "row_owned_shard_rows")


class RowShards(NamedTuple):
    """Tables whose rows are spread over `size` ranks (`table_sharding: row`): row i lives on
    rank i % size, at index i // size of that rank's shard. By remainder rather than in ranges,
    so that every rank holds as many of the frequent (low) ids of a vocabulary sorted by
    frequency, and a table that grows (warm start) keeps every old row on its rank."""

    rank: int
    size: int

    def rows(self, num_rows: int, rank: int | None = None) -> int:
        """The rows of `rank`'s (default: this rank's) shard of a table of `num_rows` rows."""
        rank = self.rank if rank is None else rank
        return (num_rows - rank + self.size - 1) // self.size

    def owned(self, uniq: np.ndarray) -> np.ndarray:
        """Positions in `uniq` of the ids whose rows this rank holds."""
        return np.flatnonzero(uniq % self.size == self.rank)


_building_shards: RowShards | None = None  # set by `sharding` while a network is built


@contextlib.contextmanager
def sharding(shards: RowShards | None):
    """Row-wise tables built inside hold only the rows `shards` gives this rank."""
    global _building_shards
    before, _building_shards = _building_shards, shards
    try:
        yield
    finally:
        _building_shards = before


class RowBatch(NamedTuple):
    """A batch's ids as rows of its own: `uniq[local] == ids`, and `uniq[0] == 0` (padding)."""

    uniq: np.ndarray  # [U] int64, ascending
    local: np.ndarray  # [B, W] int64, 0 exactly where ids are padding


class ShardedRowBatch(NamedTuple):
    """A `RowBatch` for row-sharded tables (`RowShards`): also this rank's rows among `uniq`."""

    uniq: np.ndarray  # [U] int64, ascending
    local: np.ndarray  # [B, W] int64
    owned: tuple[np.ndarray, np.ndarray]  # ([K] positions in uniq, [K] rows of this rank's shard)


def row_batch(
    ids: np.ndarray, world=None, shards: RowShards | None = None, equal=True
) -> RowBatch | ShardedRowBatch:
    """The unique ids of `ids` [B, W] (of every rank's `ids` under an active Fleet `world`:
    a collective, so call it on the training thread there) and each id's position among them;
    with `shards`, also which of them this rank's shards hold. `equal=False`: the ranks'
    batches may differ in size (evaluation), at the cost of a second, small collective.

    Padding id 0 is always `uniq[0]`, so local id 0 means padding too: the embedding op's
    `padding_idx=0` then looks it up as zeros and gives its row no gradient."""
    flat = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if world is not None and world.active:
        size = flat.size
        if not equal:
            size = int(world.all_reduce_sum(_one_hot(flat.size, world)).max())
        # one buffer: this rank's ids in its own block, zeros elsewhere, summed over ranks
        # (in training every rank's batch has the same size: the data layer makes the
        # shares equal)
        blocks = np.zeros((world.size, size), np.int64)
        blocks[world.rank, : flat.size] = flat
        uniq, inverse = np.unique(world.all_reduce_sum(blocks), return_inverse=True)
        inverse = inverse.reshape(world.size, -1)[world.rank, : flat.size]
    else:
        uniq, inverse = np.unique(flat, return_inverse=True)
    if uniq.size == 0 or uniq[0] != 0:
        uniq, inverse = np.concatenate([np.zeros(1, np.int64), uniq]), inverse + 1
    uniq = uniq.astype(np.int64, copy=False)
    local = inverse.reshape(ids.shape).astype(np.int64)
    if shards is None:
        return RowBatch(uniq, local)
    positions = shards.owned(uniq)
    return ShardedRowBatch(uniq, local, (positions, uniq[positions] // shards.size))


def _one_hot(value: int, world) -> np.ndarray:
    out = np.zeros(world.size, np.int64)
    out[world.rank] = value
    return out


@dataclass
class RowLookup:
    """What one training step looked up: the table, its unique ids and the gathered rows."""

    table: paddle.Tensor  # [rows, D] parameter (this rank's shard of it, with RowShards)
    uniq: paddle.Tensor  # [U] int64
    rows: paddle.Tensor  # [U, D], the leaf the row gradient is taken of
    owned: tuple | None = None  # sharded: ([K] positions in uniq, [K] rows of `table`) of this rank

    def own(self, grad) -> tuple[RowLookup, paddle.Tensor]:
        """This lookup and `grad` [U, D] cut to the rows this rank holds: the update's input."""
        if self.owned is None:
            return self, grad
        positions, shard_rows = self.owned
        mine = RowLookup(self.table, shard_rows, paddle.gather(self.rows, positions))
        return mine, paddle.gather(grad, positions)


class SparseEmbedding(nn.Embedding):
    """`nn.Embedding` (padding id 0) whose training forward gathers only the batch's rows.

    With `row_wise=False` it is exactly `nn.Embedding`: its table is a parameter of the dense
    optimizer. With `row_wise=True` the table takes no gradient, and a training forward takes
    a batch's *local* ids (`RowBatch.local`) after `set_row_ids` gave the table the batch's
    unique ids: it gathers those rows once per step, whatever the number of calls, and records
    a `RowLookup` in `self.lookup` for a `RowOptimizer` to update after the backward pass.
    Evaluation and exported models look up global ids with the plain embedding op either way.
    """

    def __init__(
        self,
        num_rows: int,
        dim: int,
        init_std: float,
        row_wise: bool,
        shards: RowShards | None = None,
    ):
        """`shards` (row-wise tables only): hold only this rank's rows (`RowShards`); a
        training or evaluation forward then needs `set_row_ids` with the rows' owners, every
        rank in step (the lookup is a collective)."""
        self.num_rows = num_rows
        shards = shards or _building_shards
        self.shards = shards if row_wise and shards is not None and shards.size > 1 else None
        init = nn.initializer.Normal(std=init_std)
        if self.shards is not None:  # its rows of the whole table's draw: first_rows
            init = nn.initializer.Constant(0.0)
        rows = num_rows if self.shards is None else self.shards.rows(num_rows)
        super().__init__(rows, dim, padding_idx=0, weight_attr=paddle.ParamAttr(initializer=init))
        self.row_wise = row_wise
        self.init_std = init_std
        self.weight.stop_gradient = row_wise
        self.row_ids = None  # [U] int64: this step's unique ids (set_row_ids)
        self.owned = None  # sharded: this step's ([K] positions in row_ids, [K] shard rows)
        self.lookup: RowLookup | None = None
        # nn.Embedding zeroes the padding row in dygraph only (a static startup leaves it drawn)
        self.padding_zeroed = paddle.in_dynamic_mode()
        if self.shards is not None and paddle.in_dynamic_mode():  # static: once its startup ran
            # every rank's own shard: DataParallel must not broadcast rank 0's over it
            self.weight.no_sync = True
            if self.weight.place.is_cpu_place():
                self.first_rows(out=np.from_dlpack(self.weight))  # in place: no second copy
            else:
                self.weight.set_value(self.first_rows())

    def first_rows(self, out: np.ndarray | None = None, chunk: int = 1 << 20) -> np.ndarray:
        """This rank's rows [shard rows, D] of the table `nn.Embedding` would draw now, from
        the global generator, which it advances as that draw would (into `out` if given). The
        whole table is drawn in chunks of rows, which gives the same numbers as one draw (so
        the dense layers drawn after it are the same too), and each chunk's rows of this rank
        are kept: memory of a chunk, time of the whole table (0.65 s per million rows of 12
        here)."""
        chunk -= chunk % (2 * self.shards.size)  # an even count of normals: pairs stay aligned
        init = nn.initializer.Normal(std=self.init_std)

        def draw(n: int) -> np.ndarray:
            block = paddle.empty([n, self._embedding_dim])
            init(block)
            return block.numpy()

        static = not paddle.in_dynamic_mode()
        if static:
            paddle.disable_static()
        try:
            out = self._own_rows_of_draw(draw, chunk, out)
        finally:
            if static:
                paddle.enable_static()
        if self.shards.rank == 0 and self.padding_zeroed:
            out[0] = 0.0  # the padding row, as nn.Embedding sets it
        return out

    def fresh_weight(self, rng: np.random.Generator, chunk: int = 1 << 20) -> np.ndarray:
        """A new table from the initial distribution, N(0, init_std²), drawn by `rng` (numpy, so
        that every rank and a resumed run draw the same table from the same seed): [rows, D],
        or, for a row-sharded table, this rank's rows of that same whole-table draw (drawn
        `chunk` rows at a time: the same numbers, the memory of a chunk)."""
        dim, scale = self._embedding_dim, np.float32(self.init_std)

        def draw(n: int) -> np.ndarray:
            return rng.standard_normal((n, dim), dtype=np.float32) * scale

        if self.shards is None:
            return draw(self.num_rows)
        return self._own_rows_of_draw(draw, chunk)

    def _own_rows_of_draw(self, draw, chunk: int, out: np.ndarray | None = None) -> np.ndarray:
        """This rank's rows of a whole table drawn `chunk` rows at a time by `draw(n)` (an
        [n, D] array): the same numbers as one draw, the memory of a chunk (into `out` if
        given)."""
        size, rank = self.shards.size, self.shards.rank
        if out is None:
            out = np.empty((self.shards.rows(self.num_rows), self._embedding_dim), np.float32)
        for start in range(0, self.num_rows, chunk):
            block = draw(min(chunk, self.num_rows - start))
            first = (rank - start) % size  # the block's first row of this rank
            mine = block[first::size]
            at = (start + first) // size
            out[at : at + len(mine)] = mine
        return out

    def forward(self, ids):
        if self.shards is None and (not (self.row_wise and self.training) or self.row_ids is None):
            # global ids; outside a training step (no set_row_ids) nothing is recorded, and
            # take_row_lookups says so
            return super().forward(ids)
        if self.row_ids is None:
            raise RuntimeError(
                f"{self.full_name()}: a row-sharded table looks up local ids only, after "
                "set_row_ids with the batch's unique ids and this rank's rows among them"
            )
        lookup = self.lookup
        if lookup is None or lookup.uniq is not self.row_ids:  # this step's first call
            if self.shards is not None:
                rows = self._sharded_rows()
            else:
                rows = paddle.gather(self.weight, self.row_ids)  # [U, D]
            rows.stop_gradient = False
            lookup = self.lookup = RowLookup(self.weight, self.row_ids, rows, self.owned)
        # a second call in the same step shares the rows: their gradient adds up both calls'.
        # The op itself: F.embedding checks padding_idx against the rows' static shape, which
        # a static program does not know ([-1, D])
        return _C_ops.embedding(ids, lookup.rows, 0, False)

    def _sharded_rows(self):
        """[U, D]: the rows of `row_ids`, from whichever rank holds each (one all-reduce)."""
        positions, shard_rows = self.owned
        mine = paddle.gather(self.weight, shard_rows)  # [K, D]
        if paddle.in_dynamic_mode():
            shape = [self.row_ids.shape[0], self._embedding_dim]
        else:  # U is known when the program runs
            shape = paddle.concat(
                [paddle.shape(self.row_ids), paddle.to_tensor([self._embedding_dim])]
            )
        rows = paddle.zeros(shape, mine.dtype)
        rows = paddle.scatter(rows, positions, mine, overwrite=True)
        paddle.distributed.all_reduce(rows)
        return rows


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


def set_row_ids(layer: nn.Layer, uniq, owned=None) -> None:
    """Give every row-wise table of `layer` the unique ids (`RowBatch.uniq`, a [U] int64 tensor,
    or the static program's feed) of the batch whose local ids its training forward gets;
    sharded tables also this rank's rows among them: ([K] positions in `uniq`, [K] rows of its
    shard), `ShardedRowBatch.owned`."""
    for sub in _row_wise(layer).values():
        sub.row_ids = uniq
        sub.owned = owned if sub.shards is not None else None


def sharded_tables(layer: nn.Layer) -> dict:
    """{structured parameter name: SparseEmbedding} of `layer`'s row-sharded tables."""
    return {name: sub for name, sub in _row_wise(layer).items() if sub.shards is not None}


def forget_row_ids(layer: nn.Layer) -> None:
    """Drop the ids and rows an evaluation forward of sharded tables looked up."""
    for sub in _row_wise(layer).values():
        sub.lookup = sub.row_ids = sub.owned = None


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
        sub.lookup = sub.row_ids = sub.owned = None
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
                self.update(*lookup.own(grad), lr)
