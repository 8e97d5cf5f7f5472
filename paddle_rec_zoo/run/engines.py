"""Three ways to run one model, behind one small interface used by the training/eval loops.

- `DygraphEngine`: eager Paddle, over the model's `DygraphModel` adapter.
- `StaticEngine`: a `paddle.static.Program` under PIR, over the model's `StaticModel` adapter.
- `InferenceEngine`: an exported Paddle Inference model (`paddle.inference` predictor).

Each holds the model's declarations as `spec` (`paddle_rec_zoo.nn.model.ModelSpec`): the inputs
it feeds, the outputs it returns, the labels and metrics the loops compute.

All three exchange numpy: `train_step(batch) -> (loss, outputs)`, `predict(batch) -> outputs`,
and weights as `{structured parameter name: array}` (the layer's `state_dict` keys), so a
checkpoint written by one engine loads in the other.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import paddle

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.nn.optim import StepSchedule, initial_accumulator
from paddle_rec_zoo.nn.sparse import (
    ROW_IDS,
    ROW_OWNED,
    RowShards,
    embedding_tables,
    row_batch,
    row_tables,
    sharded_tables,
    sharding,
    take_row_lookups,
)
from paddle_rec_zoo.run import table_shards
from paddle_rec_zoo.run.checkpoint import INFERENCE_PREFIX, OPT_FILE, PARAMS_FILE
from paddle_rec_zoo.run.distributed import World
from paddle_rec_zoo.run.runtime import in_static_mode

# builtin.shadow_output: the op that gives a PIR value a name. Our export used it to name the
# outputs pctr, pcvr, pctcvr; paddle2onnx 2.1.0 has no converter for it and aborted on it
# ("Due to the unsupported operators, the conversion is aborted"). The fetch ops name the
# outputs by themselves, so the exported program leaves it out (`drop_output_aliases`).
ALIAS_OP = "builtin.shadow_output"
ROW_LR_STATE = "Embedding_LR_Scheduler"  # optimizer-state key of the embedding optimizer's schedule
ROW_SLOTS = ("moment1", "moment2", "accumulator")  # row-wise slots with one row per table row


def _check_shapes(shapes: dict, loaded: dict, source: str):
    """`shapes`: {name: shape} of this run's weights; `loaded`: {name: array}."""
    missing = sorted(set(shapes) - set(loaded))
    if missing:
        raise UserError(
            f"{source}: no weights for {', '.join(missing[:5])}; wrong model or config?"
        )
    for name, shape in shapes.items():
        if tuple(shape) != tuple(loaded[name].shape):
            raise UserError(
                f"{source}: {name} has shape {list(loaded[name].shape)} but the config builds "
                f"{list(shape)}; train and infer with the same hyper_parameters"
            )


def _load_pickle(folder: str, name: str):
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        raise UserError(f"{folder}: no {name} (not a complete checkpoint folder)")
    try:
        return paddle.load(path, return_numpy=True)
    except Exception as e:  # truncated or foreign file: say which, not a pickle traceback
        raise UserError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None


def load_params_file(folder: str, merge: bool = True) -> dict:
    """{structured name: array} of a checkpoint's weights; a row-sharded checkpoint's tables
    merged whole from every rank's file (`merge=False`: left out)."""
    params = {k: np.asarray(v) for k, v in _load_pickle(folder, PARAMS_FILE).items()}
    return table_shards.merged(folder, params, _is_param) if merge else params


def load_optimizer_file(folder: str, merge: bool = True) -> dict:
    """A checkpoint's optimizer state; a row-sharded checkpoint's row slots merged whole."""
    state = _load_pickle(folder, OPT_FILE)
    return table_shards.merged(folder, state, lambda key: not _is_param(key)) if merge else state


def _is_param(sharded_key: str) -> bool:
    return ":" not in sharded_key  # `<table>:<slot kind>` is an optimizer slot


def table_sharding(config, world: World, training: bool) -> RowShards | None:
    """This rank's share of row-sharded tables (`hyper_parameters.table_sharding: row` while
    training on several ranks), or None: whole tables."""
    wanted = getattr(config.hyper_parameters, "table_sharding", "none") == "row"
    return RowShards(world.rank, world.size) if wanted and training and world.active else None


def drop_output_aliases(model_file: str) -> bool:
    """Remove the `builtin.shadow_output` ops from the PIR program saved in `model_file` (a
    `.json` of `save_inference_model`), in place. The outputs keep their names: Paddle
    Inference and paddle2onnx read them from the fetch ops. Returns whether any was removed."""
    program = paddle.static.Program()
    trainable = paddle.base.core.deserialize_pir_program(model_file, program)
    block = program.global_block()
    aliases = [op for op in block.ops if op.name() == ALIAS_OP]
    for op in aliases:
        block.remove_op(op)
    if aliases:
        tmp = f"{model_file}.tmp-{os.getpid()}"
        paddle.base.core.serialize_pir_program(program, tmp, True, False, trainable)
        os.replace(tmp, model_file)
    return bool(aliases)


class _Fetched:
    """An array copied out of Paddle only while it is being written (see `_write_pickle`)."""

    def __init__(self, fetch):
        self.fetch = fetch

    def __reduce_ex__(self, protocol):
        return self.fetch().__reduce_ex__(protocol)


def _write_pickle(path: str, values: dict):
    """Write `values` as `paddle.save` would (a pickled dict that `paddle.load` reads), holding
    at most one copy of one array at a time: a value may be a function returning the array.

    `paddle.save` pickles with protocol 4, for which numpy copies an array into a bytes object,
    after `get_params()` has copied every tensor: an embedding table and its optimizer slots
    (1.4 GB at 10M rows x 12 dims with lazy Adam) would be held two to three times over. Protocol
    5 writes an array's own buffer, and without the pickler's memo each one is freed when written.
    """
    with open(path, "wb") as f:
        pickler = pickle.Pickler(f, protocol=5)
        pickler.fast = True  # no memo: nothing written stays referenced
        pickler.dump({k: _Fetched(v) if callable(v) else v for k, v in values.items()})


def _row_feeds(shards: RowShards | None) -> tuple:
    """A static program's feeds of a batch's unique ids and, for sharded tables, of this
    rank's rows among them (`ShardedRowBatch`)."""
    row_ids = paddle.static.data(ROW_IDS, [None], "int64")
    if shards is None:
        return row_ids, None
    return row_ids, tuple(paddle.static.data(name, [None], "int64") for name in ROW_OWNED)


def _row_feed(rows) -> dict:
    """The arrays of `_row_feeds` from a row batch."""
    feed = {ROW_IDS: rows.uniq}
    owned = getattr(rows, "owned", None)
    if owned is not None:
        feed.update(zip(ROW_OWNED, owned, strict=True))
    return feed


def _name_outputs(program, fetch: dict, names):
    """Give every inference output its own name in exported models (not fetch_name_N)."""
    block = program.global_block()
    for name in names:
        paddle.base.libpaddle.pir.append_shadow_output(program, fetch[name], name, len(block.ops))


def _given_shapes(shapes: dict, sharded: dict, params: dict, skip_missing=False) -> dict:
    """The shapes `params` must have: a sharded table's whole shape, or this rank's as held
    (`shapes`: this engine's own); `skip_missing`: sharded tables `params` lacks stay as
    they are."""
    out = dict(shapes)
    for name, table in sharded.items():
        if name not in params and skip_missing:
            del out[name]
        elif np.shape(params.get(name))[:1] != tuple(shapes[name])[:1]:
            out[name] = [table.num_rows, *shapes[name][1:]]
    return out


def _own_rows(sharded: dict, shards, key: str, value):
    """`value` of `key`; of a sharded array given whole, this rank's rows."""
    table = sharded.get(key.split(":")[0])
    value = np.asarray(value)
    if table is None or value.shape[0] != table.num_rows:
        return value
    return value[shards.rank :: shards.size]


def _own_view(folder: str, values: dict, which, keys, shards) -> dict:
    """`values` with this rank's rows of the sharded arrays `keys` (`which(key)`: those that
    belong in `values`): read from the checkpoint's shard files (whichever number of ranks
    wrote them), or cut from the whole arrays of an unsharded checkpoint."""
    if shards is None:
        return values
    layout = table_shards.read_layout(folder)
    out = dict(values)
    for key in keys:
        if not which(key):
            continue
        if layout is not None and key in layout["arrays"]:
            out[key] = table_shards.read_rows(folder, key, layout, shards)
        elif key in out:
            out[key] = np.asarray(out[key])[shards.rank :: shards.size]
    return out


def _with_rows(batch, row_wise: bool, world: World, shards: RowShards | None = None):
    """`batch` with its row batch for row-wise tables (`sparse.row_batch`), made here if the
    data thread did not (`prepare`); under Fleet it is always made here: it is a collective."""
    if not row_wise or batch.rows is not None:
        return batch
    return batch._replace(rows=row_batch(batch.ids, world, shards))


def _prepared(batch, row_wise: bool, world: World):
    """An engine's `prepare`: the per-batch work that needs no model, for the data thread."""
    if world.active:
        return batch
    return _with_rows(batch, row_wise, world)


def _fresh_value(engine, kind: str) -> float:
    """The initial value of a table's optimizer variable `kind`: a row-wise slot, or the dense
    optimizer's accumulator when the tables are its parameters (`embedding_optimizer: dense`)."""
    if engine.row_optimizer is not None:
        return engine.row_optimizer.initial_value(kind)
    return initial_accumulator(engine.optimizer, kind)


def _restart_table_schedule(engine, dense_schedule):
    """The learning-rate schedule the tables follow starts again: the embedding optimizer's own
    (a copy of the dense one's unless it has its own), or, for tables trained by the dense
    optimizer, that optimizer's (the dense layers' schedule then restarts too)."""
    schedule = engine.row_optimizer.schedule if engine.row_optimizer is not None else dense_schedule
    if isinstance(schedule, StepSchedule):
        schedule.restart()


class _DataParallel(paddle.DataParallel):
    """DataParallel that also exposes the wrapped layer's own attributes (e.g. `net.loss`), so
    model adapters work the same with and without it."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._layers, name)


class DygraphEngine:
    name = "dygraph"

    def __init__(
        self,
        adapter_module,
        config,
        training: bool = True,
        world: World | None = None,
        label_names: tuple[str, ...] | None = None,
    ):
        """`label_names`: the reader's label columns (default: those of the config's reader)."""
        self.config = config
        self.adapter = adapter_module.DygraphModel(config, label_names)
        self.spec = self.adapter.spec
        # fresh parameter names (sparse_embedding_0.w_0, ...) whatever ran before in this process:
        # the optimizer's saved state is keyed by them
        self.optimizer = self.row_optimizer = None
        self.world = world or World()
        self.shards = table_sharding(config, self.world, training)
        with paddle.utils.unique_name.guard(), sharding(self.shards):
            self.net = self.adapter.create_model()
            if training:
                self.optimizer = self.adapter.create_optimizer(self.net)
                self.row_optimizer = self.adapter.create_embedding_optimizer()
        # structured name -> table, slots made now so that resuming can fill them
        self.row_tables = row_tables(self.net) if self.row_optimizer is not None else {}
        for table in self.row_tables.values():
            self.row_optimizer.create_slots(table)
        # {structured name: SparseEmbedding} of the tables whose rows are spread over the ranks
        self.sharded = sharded_tables(self.net)
        # predict() is a collective with sharded tables: every rank calls it as often (idle())
        self.lockstep = bool(self.sharded)
        # DataParallel broadcasts rank 0's weights (not the shards: `no_sync`), then
        # all-reduces gradients in backward()
        self.train_net = _DataParallel(self.net) if self.world.active and training else self.net
        self.output_names = self.spec.outputs

    def prepare(self, batch):
        """Per-batch work that needs no model, done in the data thread (`Dataset.batches`)."""
        return _prepared(batch, bool(self.row_tables), self.world)

    def train_step(self, batch):
        self.net.train()
        batch = _with_rows(batch, bool(self.row_tables), self.world, self.shards)
        loss, outputs = self.adapter.train_forward(self.train_net, batch)
        loss.backward()
        self.optimizer.step()
        if self.row_optimizer is not None:
            self.row_optimizer.step(take_row_lookups(self.net), self.world)
        self.optimizer.clear_grad()
        return float(loss), {k: outputs[k].numpy().ravel() for k in self.output_names}

    def predict(self, batch) -> dict:
        self.net.eval()
        if self.sharded:  # looked up like a training step: the rows come from their ranks
            batch = batch._replace(rows=row_batch(batch.ids, self.world, self.shards, False))
        with paddle.no_grad():
            outputs = self.adapter.infer_forward(self.net, batch)
        return {k: outputs[k].numpy().ravel() for k in self.output_names}

    def idle(self, batch):
        """Take part in the collectives of one `predict` (sharded tables) without a batch of
        one's own: an evaluation's ranks may have one batch more or less (`batch`: any batch
        of this data, for its columns' shapes)."""
        self.predict(batch._replace(ids=np.zeros((1, *batch.ids.shape[1:]), batch.ids.dtype)))

    def _params(self) -> dict:
        """{structured name: function returning a copy of the weight}; sharded tables apart
        (`write_shards`)."""
        return {k: v.numpy for k, v in self.net.state_dict().items() if k not in self.sharded}

    def get_params(self) -> dict:
        """{structured name: array}; of a sharded table, this rank's rows (`RowShards`)."""
        return {k: v.numpy() for k, v in self.net.state_dict().items()}

    def upgrade_state(self, state: dict) -> dict:
        """Weights or optimizer slots of an older checkpoint under this version's names."""
        return self.net.upgrade_state(state)

    def set_params(self, params: dict, source: str = "weights"):
        """Whole weights (`get_params` of an unsharded engine, `load_params_file`); a sharded
        table takes its rows of the whole table, or this rank's rows as they are."""
        params = self.upgrade_state(params)
        state = self.net.state_dict()
        shapes = _given_shapes({k: list(v.shape) for k, v in state.items()}, self.sharded, params)
        _check_shapes(shapes, params, source)
        self.net.set_state_dict(
            {k: _own_rows(self.sharded, self.shards, k, params[k]) for k in state}
        )

    def save(self, folder: str):
        """Write the checkpoint files; with sharded tables, on rank 0, after every rank's
        `write_shards` (moved into `folder` by the loop)."""
        _write_pickle(os.path.join(folder, PARAMS_FILE), self._params())
        if self.optimizer is not None:
            _write_pickle(os.path.join(folder, OPT_FILE), self._optimizer_state())
        if self.sharded:
            table_shards.write_layout(folder, self.world.size, self.shard_shapes())

    def _shard_arrays(self) -> dict:
        """{sharded key: this rank's tensor}: the sharded tables and their row slots."""
        found = {}
        for name, table in self.sharded.items():
            found[name] = table.weight
            slots = (
                self.row_optimizer.slots.get(table.weight.name, {}) if self.row_optimizer else {}
            )
            found.update({f"{name}:{k}": v for k, v in slots.items() if k in ROW_SLOTS})
        return found

    def shard_shapes(self) -> dict:
        """{sharded key: whole shape}."""
        return {
            key: [self.sharded[key.split(":")[0]].num_rows, *value.shape[1:]]
            for key, value in self._shard_arrays().items()
        }

    def write_shards(self, folder: str):
        """This rank's rows of every sharded table and row slot, as `.npy` files (every rank,
        before rank 0 writes the checkpoint; `table_shards`)."""
        for key, value in self._shard_arrays().items():
            path = table_shards.shard_path(folder, key, self.world.rank, self.world.size)
            table_shards.write_array(path, value)

    def _optimizer_vars(self) -> dict:
        """The optimizer's state tensors, keyed `<structured param name>:<kind>` (e.g.
        `ctr_tower.0.weight:moment1`, `input.embedding.weight:moment2` for a table's slot).

        Paddle's own `state_dict()` keys them by generated variable names with counters
        (`linear_3.w_0_moment1_7`) that differ from process to process.
        """
        structured = {p.name: k for k, p in self.net.named_parameters()}
        found = {
            f"{structured[pname]}:{kind}": var
            for kind, accumulators in self.optimizer._accumulators.items()
            for pname, var in accumulators.items()
        }
        for name, table in self.row_tables.items():
            for kind, var in self.row_optimizer.slots[table.name].items():
                found[f"{name}:{kind}"] = var
        return found

    def _schedules(self) -> dict:
        """{state key: learning-rate schedule} of the optimizers that have one."""
        found = {"LR_Scheduler": self.optimizer._learning_rate}
        if self.row_optimizer is not None:
            found[ROW_LR_STATE] = self.row_optimizer.schedule
        return {k: v for k, v in found.items() if isinstance(v, paddle.optimizer.lr.LRScheduler)}

    def _optimizer_state(self) -> dict:
        """{key: function returning a copy of the variable, or a schedule's state}; the row
        slots of sharded tables apart (`write_shards`)."""
        sharded = self._shard_arrays()
        state = {
            key: var.numpy for key, var in self._optimizer_vars().items() if key not in sharded
        }
        state.update({key: s.state_dict() for key, s in self._schedules().items()})
        return state

    def optimizer_state(self) -> dict:
        return {k: v() if callable(v) else v for k, v in self._optimizer_state().items()}

    def set_optimizer_state(self, state: dict, source: str):
        params = [p for p in self.net.parameters() if p.trainable]
        block = paddle.static.default_main_program().global_block()  # unused in dygraph
        self.optimizer._create_accumulators(block, params)
        targets, schedules = self._optimizer_vars(), self._schedules()
        for key, value in self.upgrade_state(state).items():
            if key in schedules:
                schedules[key].set_state_dict(value)
            elif key in targets:
                targets[key].set_value(_own_rows(self.sharded, self.shards, key, value))
            else:
                raise UserError(
                    f"{source}: optimizer state {key} does not fit this model or optimizer; "
                    "resume with the config the run was started with"
                )

    def reset_embeddings(self, rng: np.random.Generator) -> list[str]:
        """Start the embedding tables afresh, the dense layers untouched: new tables drawn by
        `rng` from their initial distribution, their optimizer state as it was before the first
        step, the schedule they follow from its start (`hyper_parameters.embedding_reinit`).
        Returns the tables' structured names."""
        tables = embedding_tables(self.net)
        for sub in tables.values():
            table = sub.weight
            table.set_value(sub.fresh_weight(rng))
            if self.row_optimizer is not None:
                slots = self.row_optimizer.slots[table.name]
            else:
                slots = {
                    kind: accumulators[table.name]
                    for kind, accumulators in self.optimizer._accumulators.items()
                    if table.name in accumulators
                }
            for kind, var in slots.items():
                var.set_value(np.full(var.shape, _fresh_value(self, kind), np.float32))
        _restart_table_schedule(self, self.optimizer._learning_rate)
        return list(tables)

    def load(self, folder: str):
        self.set_params(self.checkpoint_params(folder), folder)

    def load_training_state(self, folder: str):
        """Weights and optimizer state, to resume training from `folder`."""
        self.load(folder)
        self.set_optimizer_state(self.checkpoint_optimizer_state(folder), folder)

    def checkpoint_params(self, folder: str) -> dict:
        """The weights of checkpoint `folder` as this engine holds them: whole, or this rank's
        rows of sharded tables (whichever number of ranks wrote them, sharded or not)."""
        params = load_params_file(folder, merge=not self.sharded)
        return _own_view(folder, params, _is_param, self.shard_shapes(), self.shards)

    def checkpoint_optimizer_state(self, folder: str) -> dict:
        """The optimizer state of checkpoint `folder`, like `checkpoint_params`."""
        state = load_optimizer_file(folder, merge=not self.sharded)
        slots = lambda key: not _is_param(key)  # noqa: E731
        return _own_view(folder, state, slots, self.shard_shapes(), self.shards)


def _append_update(loss, layer, optimizer, row_optimizer, world: World):
    """Append one training step to the current static program: one backward pass for the
    dense parameters and the looked-up embedding rows, the gradients' average over the ranks
    (Fleet), the dense optimizer, then the row-wise update. Returns the embedding learning-rate
    feed (None without a row optimizer)."""
    lookups = take_row_lookups(layer) if row_optimizer is not None else []
    params = [p for p in layer.parameters() if not p.stop_gradient]
    grads = paddle.static.gradients([loss], params + [lookup.rows for lookup in lookups])
    if world.active:
        # PIR programs do not accept fleet.distributed_optimizer (it clones them for test);
        # one all-reduce per gradient on the collective communicator of init_parallel_env()
        for grad in grads:
            paddle.distributed.all_reduce(grad)
        grads = [paddle.scale(grad, 1.0 / world.size) for grad in grads]
    # minimize() would set this in its backward(); without it, PIR rejects the learning-rate
    # variable apply_gradients() creates (its dtype would be the string "float32")
    optimizer._dtype = loss.dtype
    schedule = optimizer._learning_rate
    position = schedule.state_dict() if hasattr(schedule, "state_dict") else None
    optimizer.apply_gradients(list(zip(params, grads[: len(params)], strict=True)))
    if position is not None:
        schedule.set_state_dict(position)  # building read the schedule once: undo that read
    if not lookups:
        return None
    lr = paddle.static.data("embedding_learning_rate", [1], "float32")
    for lookup, grad in zip(lookups, grads[len(params) :], strict=True):
        row_optimizer.update(*lookup.own(grad), lr)  # sharded: this rank's rows
    return lr


class StaticEngine:
    """Train and infer programs share parameters by name in the global scope.

    Both programs are built under a fresh `unique_name.guard()`, so the same layer code gives
    the same parameter names (`sparse_embedding_0.w_0`, ...) in each.
    """

    name = "static"

    @in_static_mode
    def __init__(
        self,
        adapter_module,
        config,
        training: bool = True,
        place=None,
        world: World | None = None,
        label_names: tuple[str, ...] | None = None,
    ):
        """`label_names`: the reader's label columns (default: those of the config's reader)."""
        world = self.world = world or World()
        self.config = config
        self.place = place or paddle.CPUPlace()
        self.exe = paddle.static.Executor(self.place)
        self.scope = paddle.static.global_scope()
        adapter_cls = adapter_module.StaticModel
        startup = paddle.static.Program()
        self.row_optimizer = self.optimizer = None
        self.shards = table_sharding(config, world, training)
        self.sharded = {}  # {structured name: SparseEmbedding} of row-sharded tables
        if training:
            self.train_program = paddle.static.Program()
            train = adapter_cls(config, label_names)
            with paddle.utils.unique_name.guard(), sharding(self.shards):
                with paddle.static.program_guard(self.train_program, startup):
                    self.row_optimizer = train.create_embedding_optimizer()
                    row_ids = owned = None
                    if self.row_optimizer is not None:  # row-wise tables: see sparse.py
                        row_ids, owned = _row_feeds(self.shards)
                    self.train_fetch = train.net(train.create_feeds(), row_ids=row_ids, owned=owned)
                    self.optimizer = train.create_optimizer()
                    self._row_lr = _append_update(
                        self.train_fetch["loss"],
                        train.layer,
                        self.optimizer,
                        self.row_optimizer,
                        world,
                    )
            self.sharded = sharded_tables(train.layer)
        # predict() is a collective with sharded tables: every rank calls it as often (idle())
        self.lockstep = bool(self.sharded)
        self.infer_program = paddle.static.Program()
        self.adapter = adapter = adapter_cls(config, label_names)
        self.spec, self.output_names = adapter.spec, adapter.spec.outputs
        infer_startup = paddle.static.Program() if training else startup
        with paddle.utils.unique_name.guard(), sharding(self.shards):
            with paddle.static.program_guard(self.infer_program, infer_startup):
                self.infer_feeds = adapter.create_feeds(is_infer=True)
                row_ids, owned = _row_feeds(self.shards) if self.sharded else (None, None)
                self.infer_fetch = adapter.infer_net(self.infer_feeds, row_ids, owned)
                _name_outputs(self.infer_program, self.infer_fetch, self.output_names)
        # structured name (layer.state_dict key) -> scope variable name
        self.param_names = {k: v.name for k, v in adapter.layer.state_dict().items()}
        if self.sharded:
            self._build_export_program(adapter_cls, config, label_names)
        # sharded tables: this rank's rows of the table an unsharded startup would draw first
        # (where the zoo's networks create it), drawn before the startup draws the rest
        first_rows = {name: table.first_rows() for name, table in self.sharded.items()}
        self.exe.run(startup)
        for name, rows in first_rows.items():
            self._tensor(self.param_names[name]).set(rows, self.place)
        del first_rows
        if world.active:  # start every rank from rank 0's weights (each keeps its own rows)
            mine = {k: fetch() for k, fetch in self._params().items()}  # sharded tables apart
            self.set_params(world.all_gather_object(mine)[0])

    def _build_export_program(self, adapter_cls, config, label_names):
        """The inference program of whole tables (the exported model's), beside the sharded
        one of this engine's evaluation; its weights live in a scope of their own when saved."""
        self.export_program, self.export_startup = paddle.static.Program(), paddle.static.Program()
        export = adapter_cls(config, label_names)
        with paddle.utils.unique_name.guard():
            with paddle.static.program_guard(self.export_program, self.export_startup):
                self.export_feeds = export.create_feeds(is_infer=True)
                self.export_fetch = export.infer_net(self.export_feeds)
                _name_outputs(self.export_program, self.export_fetch, self.output_names)

    def prepare(self, batch):
        """Per-batch work that needs no model, done in the data thread (`Dataset.batches`)."""
        return _prepared(batch, self.row_optimizer is not None, self.world)

    @in_static_mode
    def train_step(self, batch):
        names = ["loss", *self.output_names]
        row_wise = self.row_optimizer is not None
        batch = _with_rows(batch, row_wise, self.world, self.shards)
        feed = self.adapter.feed(batch)
        if row_wise:
            feed.update(_row_feed(batch.rows))
            feed[self._row_lr.name] = np.array([self.row_optimizer.next_lr()], "float32")
        values = self.exe.run(
            self.train_program,
            feed=feed,
            fetch_list=[self.train_fetch[n] for n in names],
        )
        out = dict(zip(names, values, strict=True))
        loss = float(np.asarray(out.pop("loss")))
        return loss, {k: np.asarray(v).ravel() for k, v in out.items()}

    @in_static_mode
    def predict(self, batch) -> dict:
        if self.sharded:  # looked up like a training step: the rows come from their ranks
            batch = batch._replace(rows=row_batch(batch.ids, self.world, self.shards, False))
        feed = self.adapter.feed(batch, is_infer=True)
        if self.sharded:
            feed.update(_row_feed(batch.rows))
        values = self.exe.run(
            self.infer_program,
            feed=feed,
            fetch_list=[self.infer_fetch[n] for n in self.output_names],
        )
        return {k: np.asarray(v).ravel() for k, v in zip(self.output_names, values, strict=True)}

    def idle(self, batch):
        """As `DygraphEngine.idle`."""
        self.predict(batch._replace(ids=np.zeros((1, *batch.ids.shape[1:]), batch.ids.dtype)))

    def _tensor(self, var_name: str):
        return self.scope.find_var(var_name).get_tensor()

    def _fetch(self, var_name: str):
        """A function returning a copy of the scope variable `var_name`."""
        return lambda: np.array(self._tensor(var_name))

    def _params(self) -> dict:
        """{structured name: function returning a copy}; sharded tables apart (`write_shards`)."""
        return {k: self._fetch(v) for k, v in self.param_names.items() if k not in self.sharded}

    def get_params(self) -> dict:
        """{structured name: array}; of a sharded table, this rank's rows (`RowShards`)."""
        return {k: self._fetch(v)() for k, v in self.param_names.items()}

    def upgrade_state(self, state: dict) -> dict:
        """Weights of an older checkpoint under this version's structured names (the optimizer
        state of this engine is keyed by scope variable names, which did not change)."""
        return self.adapter.layer.upgrade_state(state)

    def set_params(self, params: dict, source: str = "weights"):
        """As `DygraphEngine.set_params`; without a sharded table's key, it is left as it is."""
        params = self.upgrade_state(params)
        shapes = {k: self._tensor(v).shape() for k, v in self.param_names.items()}
        shapes = _given_shapes(shapes, self.sharded, params, skip_missing=True)
        _check_shapes(shapes, params, source)
        for k in shapes:
            value = _own_rows(self.sharded, self.shards, k, params[k])
            self._tensor(self.param_names[k]).set(value, self.place)

    def _shard_vars(self) -> dict:
        """{sharded key: scope variable}: the sharded tables and their row slots."""
        found = {}
        for name in self.sharded:
            var = self.param_names[name]
            found[name] = var
            for kind in ROW_SLOTS:
                if self.scope.find_var(f"{var}_{kind}") is not None:
                    found[f"{name}:{kind}"] = f"{var}_{kind}"
        return found

    def shard_shapes(self) -> dict:
        """{sharded key: whole shape}."""
        return {
            key: [self.sharded[key.split(":")[0]].num_rows, *self._tensor(var).shape()[1:]]
            for key, var in self._shard_vars().items()
        }

    def write_shards(self, folder: str):
        """As `DygraphEngine.write_shards`."""
        for key, var in self._shard_vars().items():
            path = table_shards.shard_path(folder, key, self.world.rank, self.world.size)
            table_shards.write_array(path, np.array(self._tensor(var)))

    def _schedules(self) -> dict:
        """{state key: the Python-side learning-rate schedules of the train program}: the dense
        optimizer's (the executor advances it on every run), the embedding optimizer's."""
        found = {
            "LR_Scheduler": getattr(getattr(self, "train_program", None), "lr_scheduler", None)
        }
        if self.row_optimizer is not None:
            found[ROW_LR_STATE] = self.row_optimizer.schedule
        return {k: v for k, v in found.items() if isinstance(v, paddle.optimizer.lr.LRScheduler)}

    def _optimizer_var_names(self) -> list[str]:
        """The optimizers' variables: moments, beta powers (`<param var>_<kind>_<n>`), embedding
        slots (`<table var>_<kind>`) and the learning rate."""
        params = tuple(f"{v}_" for v in self.param_names.values())
        sharded = set(self._shard_vars().values())  # written by write_shards
        return [
            name
            for name in self.scope.local_var_names()
            if (name.startswith(params) or name.startswith("learning_rate_"))
            and name not in sharded
        ]

    def _every_optimizer_var(self) -> list[str]:
        """`_optimizer_var_names` and the row slots of sharded tables (`write_shards`'s)."""
        slots = [v for k, v in self._shard_vars().items() if not _is_param(k)]
        return self._optimizer_var_names() + slots

    def _optimizer_state(self) -> dict:
        """{name: function returning a copy of the variable, or a schedule's state}."""
        state = {name: self._fetch(name) for name in self._optimizer_var_names()}
        state.update({key: s.state_dict() for key, s in self._schedules().items()})
        return state

    def optimizer_state(self) -> dict:
        """The optimizers' variables and the schedules' positions."""
        return {k: v() if callable(v) else v for k, v in self._optimizer_state().items()}

    @in_static_mode  # the export program's startup and save_inference_model need it
    def save(self, folder: str):
        """As `DygraphEngine.save`; and the inference model, of whole tables (with sharded
        tables, merged from every rank's files in `folder`: rank 0 holds the whole tables
        while it writes it)."""
        _write_pickle(os.path.join(folder, PARAMS_FILE), self._params())
        _write_pickle(os.path.join(folder, OPT_FILE), self._optimizer_state())
        if not self.sharded:
            self.export_inference(os.path.join(folder, INFERENCE_PREFIX))
            return
        table_shards.write_layout(folder, self.world.size, self.shard_shapes())
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            self.exe.run(self.export_startup)
            layout = table_shards.read_layout(folder)
            for name, var in self.param_names.items():
                if name in self.sharded:
                    value = table_shards.merge(folder, name, layout)
                else:
                    value = np.array(self._tensor(var))
                scope.find_var(var).get_tensor().set(value, self.place)
                del value
            self._save_inference(
                os.path.join(folder, INFERENCE_PREFIX),
                self.export_program, self.export_feeds, self.export_fetch,
            )  # fmt: skip

    @in_static_mode
    def export_inference(self, prefix: str):
        self._save_inference(prefix, self.infer_program, self.infer_feeds, self.infer_fetch)

    def _save_inference(self, prefix: str, program, feeds: dict, fetch: dict):
        paddle.static.save_inference_model(
            prefix,
            [feeds[i.name] for i in self.spec.inputs],
            [fetch[n] for n in self.output_names],
            self.exe,
            program=program,
            skip_prune_program=True,  # pruning would drop the output names set above
        )
        # The fetch ops now carry the names; the aliases that gave them stop paddle2onnx
        drop_output_aliases(prefix + ".json")

    def reset_embeddings(self, rng: np.random.Generator) -> list[str]:
        """As `DygraphEngine.reset_embeddings`, on the scope's variables: a table's optimizer
        variables are named after it (`<table var>_<kind>` for a row-wise slot,
        `<table var>_<kind>_<n>` for the dense optimizer's)."""
        tables = embedding_tables(self.adapter.layer)
        state = self._every_optimizer_var()
        for name, sub in tables.items():
            var = self.param_names[name]
            self._tensor(var).set(sub.fresh_weight(rng), self.place)
            for slot in (n for n in state if n.startswith(f"{var}_")):
                kind = slot[len(var) + 1 :]
                if self.row_optimizer is None:
                    kind = kind.rsplit("_", 1)[0]  # the dense optimizer's counter suffix
                tensor = self._tensor(slot)
                value = np.full(tensor.shape(), _fresh_value(self, kind), np.float32)
                tensor.set(value, self.place)
        _restart_table_schedule(self, getattr(self.train_program, "lr_scheduler", None))
        return list(tables)

    def load(self, folder: str):
        self.set_params(self.checkpoint_params(folder), folder)

    def checkpoint_params(self, folder: str) -> dict:
        """As `DygraphEngine.checkpoint_params`."""
        params = load_params_file(folder, merge=not self.sharded)
        return _own_view(folder, params, _is_param, self.shard_shapes(), self.shards)

    def checkpoint_optimizer_state(self, folder: str) -> dict:
        """The optimizer state of checkpoint `folder` keyed as this engine's scope variables,
        with this rank's rows of sharded row slots."""
        saved = load_optimizer_file(folder, merge=not self.sharded)
        layout = table_shards.read_layout(folder) if self.sharded else None
        for key, var in self._shard_vars().items():
            if _is_param(key):
                continue
            if layout is not None and key in layout["arrays"]:
                saved[var] = table_shards.read_rows(folder, key, layout, self.shards)
            elif var in saved:  # an unsharded checkpoint's whole slot
                saved[var] = np.asarray(saved[var])[self.shards.rank :: self.shards.size]
        # a sharded checkpoint's row slots merged whole (into an unsharded engine) are keyed
        # `<table>:<kind>`, as in its shard files; this scope's variables `<table var>_<kind>`
        for key in [k for k in saved if ":" in k]:
            table, kind = key.split(":")
            if table in self.param_names:
                saved[f"{self.param_names[table]}_{kind}"] = saved.pop(key)
        return saved

    def load_training_state(self, folder: str):
        self.load(folder)
        self.set_optimizer_state(self.checkpoint_optimizer_state(folder), folder)

    def set_optimizer_state(self, saved: dict, folder: str):
        """Set the optimizers' variables and schedules from `saved` (`optimizer_state`)."""
        schedules = self._schedules()
        current = {name: self._tensor(name).shape() for name in self._every_optimizer_var()}
        current.update(dict.fromkeys(schedules))
        if not set(current) <= set(saved):
            missing = sorted(set(current) - set(saved))
            raise UserError(
                f"{folder}: optimizer state lacks {', '.join(missing[:3])}; resume with the "
                "config the run was started with"
            )
        for name, shape in current.items():
            if name in schedules:
                schedules[name].set_state_dict(saved[name])
                continue
            value = np.asarray(saved.pop(name))  # dropped here: one loaded array less at a time
            if list(value.shape) != list(shape):
                raise UserError(
                    f"{folder}: optimizer state {name} has shape {list(value.shape)}, this run "
                    f"{list(shape)}; resume with the config the run was started with"
                )
            self._tensor(name).set(value, self.place)
