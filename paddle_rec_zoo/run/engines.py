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
    embedding_tables,
    row_batch,
    row_tables,
    take_row_lookups,
)
from paddle_rec_zoo.run.distributed import World
from paddle_rec_zoo.run.runtime import math_threads

PARAMS_FILE = "rec.pdparams"
OPT_FILE = "rec.pdopt"
INFERENCE_PREFIX = "inference"  # inference.json + inference.pdiparams
ROW_LR_STATE = "Embedding_LR_Scheduler"  # optimizer-state key of the embedding optimizer's schedule


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


def load_params_file(folder: str) -> dict:
    return {k: np.asarray(v) for k, v in _load_pickle(folder, PARAMS_FILE).items()}


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


def _with_rows(batch, row_wise: bool, world: World):
    """`batch` with its row batch for row-wise tables (`sparse.row_batch`), made here if the
    data thread did not (`prepare`); under Fleet it is always made here: it is a collective."""
    if not row_wise or batch.rows is not None:
        return batch
    return batch._replace(rows=row_batch(batch.ids, world))


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
        with paddle.utils.unique_name.guard():
            self.net = self.adapter.create_model()
            if training:
                self.optimizer = self.adapter.create_optimizer(self.net)
                self.row_optimizer = self.adapter.create_embedding_optimizer()
        # structured name -> table, slots made now so that resuming can fill them
        self.row_tables = row_tables(self.net) if self.row_optimizer is not None else {}
        for table in self.row_tables.values():
            self.row_optimizer.create_slots(table)
        # DataParallel broadcasts rank 0's weights, then all-reduces gradients in backward()
        self.world = world or World()
        self.train_net = _DataParallel(self.net) if self.world.active and training else self.net
        self.output_names = self.spec.outputs

    def prepare(self, batch):
        """Per-batch work that needs no model, done in the data thread (`Dataset.batches`)."""
        return _prepared(batch, bool(self.row_tables), self.world)

    def train_step(self, batch):
        self.net.train()
        batch = _with_rows(batch, bool(self.row_tables), self.world)
        loss, outputs = self.adapter.train_forward(self.train_net, batch)
        loss.backward()
        self.optimizer.step()
        if self.row_optimizer is not None:
            self.row_optimizer.step(take_row_lookups(self.net), self.world)
        self.optimizer.clear_grad()
        return float(loss), {k: outputs[k].numpy().ravel() for k in self.output_names}

    def predict(self, batch) -> dict:
        self.net.eval()
        with paddle.no_grad():
            outputs = self.adapter.infer_forward(self.net, batch)
        return {k: outputs[k].numpy().ravel() for k in self.output_names}

    def _params(self) -> dict:
        """{structured name: function returning a copy of the weight}."""
        return {k: v.numpy for k, v in self.net.state_dict().items()}

    def get_params(self) -> dict:
        return {k: fetch() for k, fetch in self._params().items()}

    def set_params(self, params: dict, source: str = "weights"):
        state = self.net.state_dict()
        _check_shapes({k: v.shape for k, v in state.items()}, params, source)
        self.net.set_state_dict({k: params[k] for k in state})

    def save(self, folder: str):
        _write_pickle(os.path.join(folder, PARAMS_FILE), self._params())
        if self.optimizer is not None:
            _write_pickle(os.path.join(folder, OPT_FILE), self._optimizer_state())

    def _optimizer_vars(self) -> dict:
        """The optimizer's state tensors, keyed `<structured param name>:<kind>` (e.g.
        `ctr_tower.0.weight:moment1`, `inputs.0.embedding.weight:moment2` for a table's slot).

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
        """{key: function returning a copy of the variable, or a schedule's state}."""
        state = {key: var.numpy for key, var in self._optimizer_vars().items()}
        state.update({key: s.state_dict() for key, s in self._schedules().items()})
        return state

    def optimizer_state(self) -> dict:
        return {k: v() if callable(v) else v for k, v in self._optimizer_state().items()}

    def set_optimizer_state(self, state: dict, source: str):
        params = [p for p in self.net.parameters() if p.trainable]
        block = paddle.static.default_main_program().global_block()  # unused in dygraph
        self.optimizer._create_accumulators(block, params)
        targets, schedules = self._optimizer_vars(), self._schedules()
        for key, value in state.items():
            if key in schedules:
                schedules[key].set_state_dict(value)
            elif key in targets:
                targets[key].set_value(np.asarray(value))
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
        self.set_params(load_params_file(folder), folder)

    def load_training_state(self, folder: str):
        """Weights and optimizer state, to resume training from `folder`."""
        self.load(folder)
        self.set_optimizer_state(_load_pickle(folder, OPT_FILE), folder)


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
        row_optimizer.update(lookup, grad, lr)
    return lr


class StaticEngine:
    """Train and infer programs share parameters by name in the global scope.

    Both programs are built under a fresh `unique_name.guard()`, so the same layer code gives
    the same parameter names (`sparse_embedding_0.w_0`, ...) in each.
    """

    name = "static"

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
        paddle.enable_static()
        self.config = config
        self.place = place or paddle.CPUPlace()
        self.exe = paddle.static.Executor(self.place)
        self.scope = paddle.static.global_scope()
        adapter_cls = adapter_module.StaticModel
        startup = paddle.static.Program()
        self.row_optimizer = self.optimizer = None
        if training:
            self.train_program = paddle.static.Program()
            train = adapter_cls(config, label_names)
            with paddle.utils.unique_name.guard():
                with paddle.static.program_guard(self.train_program, startup):
                    self.row_optimizer = train.create_embedding_optimizer()
                    row_ids = None
                    if self.row_optimizer is not None:  # row-wise tables: see sparse.py
                        row_ids = paddle.static.data(ROW_IDS, [None], "int64")
                    self.train_fetch = train.net(train.create_feeds(), row_ids=row_ids)
                    self.optimizer = train.create_optimizer()
                    self._row_lr = _append_update(
                        self.train_fetch["loss"],
                        train.layer,
                        self.optimizer,
                        self.row_optimizer,
                        world,
                    )
        self.infer_program = paddle.static.Program()
        self.adapter = adapter = adapter_cls(config, label_names)
        self.spec, self.output_names = adapter.spec, adapter.spec.outputs
        infer_startup = paddle.static.Program() if training else startup
        with paddle.utils.unique_name.guard():
            with paddle.static.program_guard(self.infer_program, infer_startup):
                self.infer_feeds = adapter.create_feeds(is_infer=True)
                self.infer_fetch = adapter.infer_net(self.infer_feeds)
                self._name_outputs()
        # structured name (layer.state_dict key) -> scope variable name
        self.param_names = {k: v.name for k, v in adapter.layer.state_dict().items()}
        self.exe.run(startup)
        if world.active:  # start every rank from rank 0's weights
            self.set_params(world.all_gather_object(self.get_params())[0], "rank 0")

    def _name_outputs(self):
        """Give every inference output its own name in exported models (not fetch_name_N)."""
        block = self.infer_program.global_block()
        for name in self.output_names:
            paddle.base.libpaddle.pir.append_shadow_output(
                self.infer_program, self.infer_fetch[name], name, len(block.ops)
            )

    def prepare(self, batch):
        """Per-batch work that needs no model, done in the data thread (`Dataset.batches`)."""
        return _prepared(batch, self.row_optimizer is not None, self.world)

    def train_step(self, batch):
        names = ["loss", *self.output_names]
        row_wise = self.row_optimizer is not None
        batch = _with_rows(batch, row_wise, self.world)
        feed = self.adapter.feed(batch)
        if row_wise:
            feed[ROW_IDS] = batch.rows.uniq
            feed[self._row_lr.name] = np.array([self.row_optimizer.next_lr()], "float32")
        values = self.exe.run(
            self.train_program,
            feed=feed,
            fetch_list=[self.train_fetch[n] for n in names],
        )
        out = dict(zip(names, values, strict=True))
        loss = float(np.asarray(out.pop("loss")))
        return loss, {k: np.asarray(v).ravel() for k, v in out.items()}

    def predict(self, batch) -> dict:
        values = self.exe.run(
            self.infer_program,
            feed=self.adapter.feed(batch, is_infer=True),
            fetch_list=[self.infer_fetch[n] for n in self.output_names],
        )
        return {k: np.asarray(v).ravel() for k, v in zip(self.output_names, values, strict=True)}

    def _tensor(self, var_name: str):
        return self.scope.find_var(var_name).get_tensor()

    def _fetch(self, var_name: str):
        """A function returning a copy of the scope variable `var_name`."""
        return lambda: np.array(self._tensor(var_name))

    def _params(self) -> dict:
        return {k: self._fetch(v) for k, v in self.param_names.items()}

    def get_params(self) -> dict:
        return {k: fetch() for k, fetch in self._params().items()}

    def set_params(self, params: dict, source: str = "weights"):
        shapes = {k: self._tensor(v).shape() for k, v in self.param_names.items()}
        _check_shapes(shapes, params, source)
        for k, var_name in self.param_names.items():
            self._tensor(var_name).set(np.asarray(params[k]), self.place)

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
        return [
            name
            for name in self.scope.local_var_names()
            if name.startswith(params) or name.startswith("learning_rate_")
        ]

    def _optimizer_state(self) -> dict:
        """{name: function returning a copy of the variable, or a schedule's state}."""
        state = {name: self._fetch(name) for name in self._optimizer_var_names()}
        state.update({key: s.state_dict() for key, s in self._schedules().items()})
        return state

    def optimizer_state(self) -> dict:
        """The optimizers' variables and the schedules' positions."""
        return {k: v() if callable(v) else v for k, v in self._optimizer_state().items()}

    def save(self, folder: str):
        _write_pickle(os.path.join(folder, PARAMS_FILE), self._params())
        _write_pickle(os.path.join(folder, OPT_FILE), self._optimizer_state())
        self.export_inference(os.path.join(folder, INFERENCE_PREFIX))

    def export_inference(self, prefix: str):
        paddle.static.save_inference_model(
            prefix,
            [self.infer_feeds[i.name] for i in self.spec.inputs],
            [self.infer_fetch[n] for n in self.output_names],
            self.exe,
            program=self.infer_program,
            skip_prune_program=True,  # pruning would drop the output names set above
        )

    def reset_embeddings(self, rng: np.random.Generator) -> list[str]:
        """As `DygraphEngine.reset_embeddings`, on the scope's variables: a table's optimizer
        variables are named after it (`<table var>_<kind>` for a row-wise slot,
        `<table var>_<kind>_<n>` for the dense optimizer's)."""
        tables = embedding_tables(self.adapter.layer)
        state = self._optimizer_var_names()
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
        self.set_params(load_params_file(folder), folder)

    def load_training_state(self, folder: str):
        self.load(folder)
        saved = _load_pickle(folder, OPT_FILE)
        schedules = self._schedules()
        current = {name: self._tensor(name).shape() for name in self._optimizer_var_names()}
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


class InferenceEngine:
    """Predicts with an exported model through `paddle.inference` (oneDNN on the CPU)."""

    name = "inference"

    def __init__(self, spec, config):
        """`spec`: the model's declarations (its inputs and outputs name the exported model's)."""
        self.spec = spec
        self.output_names = spec.outputs
        self.config = config
        self.predictor = None

    def load(self, folder: str):
        prefix = os.path.join(folder, INFERENCE_PREFIX)
        if not os.path.exists(prefix + ".json"):
            raise UserError(
                f"{folder}: no exported inference model ({INFERENCE_PREFIX}.json); "
                "static_trainer.py writes one per epoch"
            )
        cfg = paddle.inference.Config(prefix + ".json", prefix + ".pdiparams")
        cfg.disable_glog_info()
        if self.config.runner.use_gpu and paddle.is_compiled_with_cuda():
            # the GPU runtime.setup selected; inputs are copied host -> device by the predictor
            device_id = int(os.environ.get("FLAGS_selected_gpus", "0").split(",")[0])
            cfg.enable_use_gpu(256, device_id)
        else:
            cfg.disable_gpu()
            cfg.enable_mkldnn()
            threads = math_threads(self.config.runner.inference_cpu_threads)
            cfg.set_cpu_math_library_num_threads(threads)
        self.predictor = paddle.inference.create_predictor(cfg)
        missing = set(self.output_names) - set(self.predictor.get_output_names())
        if missing:
            raise UserError(f"{folder}: exported model lacks outputs {sorted(missing)}")

    def predict(self, batch) -> dict:
        for item in self.spec.inputs:
            value = getattr(batch, item.name)
            handle = self.predictor.get_input_handle(item.name)
            handle.reshape(value.shape)
            handle.copy_from_cpu(value)
        self.predictor.run()
        return {
            k: self.predictor.get_output_handle(k).copy_to_cpu().ravel() for k in self.output_names
        }
