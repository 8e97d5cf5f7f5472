"""The training and evaluation loops, one of each for every engine."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import time
import zipfile
from dataclasses import dataclass, field

import numpy as np
import paddle

from paddle_rec_zoo.data.dataset import Dataset, default_cache_dir, list_data_files
from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.report import plot
from paddle_rec_zoo.report.metrics import Collector, TrainMetrics, fmt
from paddle_rec_zoo.report.metrics import evaluate as evaluate_metrics
from paddle_rec_zoo.report.progress import log, progress, set_postfix
from paddle_rec_zoo.run import checkpoint, signals, warm_start
from paddle_rec_zoo.run.distributed import World

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "training_curves.png"
BEST_FILE = "best.json"
BEST_DIR = "best"
RNG_FILE = "rng_state.pdstate"  # every rank's random-generator state (dropout), a pickle
STATE_FILE = "train_state.npz"  # mid-epoch checkpoints: every rank's training metrics so far
STOP_VOTE_STEPS = 10  # Fleet ranks agree on stopping every this many steps (see _stop_signal)


def load_dataset(config, reader, split: str) -> Dataset:
    key = f"runner.{split}_data_dir"
    folder = getattr(config.runner, f"{split}_data_dir")
    files = list_data_files(folder, key)
    cache_dir = None
    if config.runner.use_cache:
        cache_dir = config.runner.cache_dir or default_cache_dir()
    start = time.time()
    dataset = Dataset.load(files, reader, cache_dir)
    if len(dataset) == 0:
        raise UserError(f"{key}: {folder} holds no data rows")
    log(
        f"{split} data: {len(dataset):,} rows from {len(files)} file(s) in {folder} "
        f"({time.time() - start:.1f}s)"
    )
    for line in dataset.stats.summary():
        log(f"{split} data: {line}")
    return dataset


@dataclass
class _Run:
    """The state of a training run that outlives an epoch (and is restored on resume)."""

    records: list = field(default_factory=list)  # training log lines, as in metrics.jsonl
    tests: list = field(default_factory=list)  # per-epoch test results
    best: dict | None = None  # runner.keep_best's best epoch so far
    step: int = 0
    start_epoch: int = 0
    start_batch: int = 0  # resumed inside `start_epoch`: batches already trained
    folder: str | None = None  # the checkpoint resumed from
    position: dict | None = None  # a mid-epoch checkpoint's metrics state and loss window
    epoch_samples: int = 0


def train(config, engine, reader, world: World | None = None) -> list[dict]:
    """Train `engine` for `runner.epochs`, saving a checkpoint per epoch (and every
    `runner.save_steps` steps). SIGTERM/SIGINT stop it at the next step boundary with a
    checkpoint (`signals.Interrupted`). Returns log records."""
    r = config.runner
    world = world or World()
    dataset = load_dataset(config, reader, "train")
    evaluate_each = r.evaluate_each_epoch or bool(r.keep_best)
    test_set = load_dataset(config, reader, "test") if evaluate_each else None
    n_batches = dataset.num_batches(r.train_batch_size, world.rank, world.size, equal=True)
    run = _start_or_resume(config, engine, world, n_batches)
    if r.model_init_path and run.folder is None:  # a resumed run goes on from its own
        warm_start.load(config, engine)
    log(
        f"training {engine.name}: epochs {run.start_epoch}..{r.epochs - 1} x {n_batches} "
        f"batches of {r.train_batch_size}"
        + (f" on each of {world.size} ranks" if world.active else "")
        + f", checkpoints in {r.model_save_path}"
    )
    epoch_run = _Epoch(config, engine, reader, world, run, n_batches, test_set is None)
    if world.is_main:  # the rank that draws the curves at every epoch's end; only now that the
        plot.preload()  # data sets are read: their parsing forks, which must not meet an import
    with signals.stop.deferred():
        for epoch in range(run.start_epoch, r.epochs):
            # a run resumed inside this epoch already has its tables: the checkpoint holds them
            if epoch > 0 and not (epoch == run.start_epoch and run.start_batch):
                _reinit_embeddings(config, engine, epoch)
            seconds, epoch_samples = epoch_run.train(dataset, epoch)
            _end_epoch(config, engine, reader, world, run, epoch, seconds, epoch_samples, test_set)
            stopping = _stop_signal(world)  # also the barrier: the checkpoint is complete
            if stopping and epoch + 1 < r.epochs:
                folder = checkpoint.epoch_dir(r.model_save_path, epoch)
                raise _stopped(stopping, epoch, n_batches, n_batches, run.step, folder)
    return run.records


def _reinit_embeddings(config, engine, epoch: int):
    """`hyper_parameters.embedding_reinit`: the epoch starts from fresh embedding tables while
    the dense layers carry on (MEDA, Fan et al. 2024). A table that has seen the rows memorises
    them, and the dense layers, fitted to it, collapse in a second pass (doc/model.md, "More
    than one epoch"). The draw is seeded by (seed, epoch): every Fleet rank draws the same
    tables, and a run resumed at this epoch's start the ones the uninterrupted run drew."""
    if not config.hyper_parameters.embedding_reinit:
        return
    names = engine.reset_embeddings(np.random.default_rng([config.runner.seed, epoch]))
    if names:
        log(
            f"epoch {epoch}: embedding tables {', '.join(names)} start afresh "
            "(hyper_parameters.embedding_reinit; False keeps them)"
        )


class _Epoch:
    """One epoch's training loop: steps, log lines every `print_interval` batches, mid-epoch
    checkpoints (`save_steps`, or a stop signal)."""

    def __init__(self, config, engine, reader, world, run: _Run, n_batches: int, no_test: bool):
        self.config, self.engine, self.world, self.run = config, engine, world, run
        self.spec, self.label_names = engine.spec, reader.label_names
        self.n_batches, self.no_test = n_batches, no_test
        self.metrics_path = os.path.join(config.runner.model_save_path, METRICS_FILE)

    def train(self, dataset, epoch: int) -> tuple[float, int]:
        """Train one epoch; returns (seconds, samples)."""
        r, run, n_batches = self.config.runner, self.run, self.n_batches
        self.metrics = TrainMetrics(self.spec.train_metrics)
        self.window = np.zeros(2)  # loss sum, samples since the last log line
        self.window_start = epoch_start = time.time()
        self.epoch_samples = 0
        start = run.start_batch if epoch == run.start_epoch else 0
        if start:  # resumed inside this epoch: its metrics so far, as they were
            self.metrics.set_state_dict(run.position["metrics"], run.folder)
            self.window[:] = run.position["window"]
            self.epoch_samples = run.epoch_samples
        batches = dataset.batches(
            r.train_batch_size, r.shuffle, r.seed, epoch, self.world.rank, self.world.size, True,
            start, self.engine.prepare,
        )  # fmt: skip
        for i, batch in enumerate(
            progress(batches, n_batches - start, f"epoch {epoch}"), start=start
        ):
            self._step(batch, epoch)
            if (i + 1) % r.print_interval == 0 or i + 1 == n_batches:
                self._log_window(epoch, i + 1)
            self._checkpoint_if_due(epoch, i + 1)
        return time.time() - epoch_start, self.epoch_samples

    def _step(self, batch, epoch: int):
        loss, outputs = self.engine.train_step(batch)
        self.run.step += 1
        if not math.isfinite(loss):
            raise UserError(
                f"training diverged: loss is {loss} at epoch {epoch}, step {self.run.step}; "
                "lower hyper_parameters.optimizer.learning_rate (checkpoints of earlier epochs "
                "are kept)"
            )
        self.metrics.update(outputs, self.spec.label_columns(batch, self.label_names))
        self.window += (loss * len(batch.labels), len(batch.labels))

    def _log_window(self, epoch: int, batch: int):
        loss_sum, n = self.world.all_reduce_sum(self.window)
        elapsed = max(time.time() - self.window_start, 1e-9)
        running = self.world.merged_metrics(self.metrics).compute()
        record = {
            "epoch": epoch,
            "batch": batch,
            "step": self.run.step,
            "loss": loss_sum / n,
            **running,
            "samples_per_s": n / elapsed,
        }
        self.epoch_samples += int(n)
        self.run.records.append(record)
        if self.world.is_main:
            _append_jsonl(self.metrics_path, record)
        log(
            f"epoch {epoch} batch {batch}/{self.n_batches}: loss {fmt(record['loss'])} "
            + " ".join(f"{k} {fmt(v)}" for k, v in running.items())
            + f" {record['samples_per_s']:,.0f} samples/s"
        )
        set_postfix(loss=f"{record['loss']:.4f}")
        self.window[:] = 0
        self.window_start = time.time()

    def _checkpoint_if_due(self, epoch: int, batch: int):
        r, step = self.config.runner, self.run.step
        last = batch == self.n_batches
        stopping = _stop_signal(self.world, step)
        # stopping after the last batch: the epoch's own checkpoint follows, unless an
        # evaluation comes first (that one is saved as batch n_batches of n_batches)
        due = r.save_steps and step % r.save_steps == 0 and not last
        if due or (stopping and not (last and self.no_test)):
            state = {"metrics": self.metrics.state_dict(), "window": self.window}
            position = _save_position(
                self.config,
                self.engine,
                self.world,
                (epoch, batch, self.n_batches, step),
                state,
                self.epoch_samples,
                self.run.records,
            )
            if stopping:
                raise _stopped(stopping, epoch, batch, self.n_batches, step, position)


def _end_epoch(config, engine, reader, world, run: _Run, epoch, seconds, epoch_samples, test_set):
    """Evaluate (if asked), checkpoint the epoch, keep the best, redraw the curves."""
    r = config.runner
    meta = {
        "epoch": epoch,
        "step": run.step,
        "engine": engine.name,
        "seed": r.seed,
        "ranks": world.size,
        "train": {"epoch": epoch, "seconds": seconds, **run.records[-1]},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": config.to_dict(),
    }
    if test_set is not None:
        result, _ = predict_dataset(engine, reader, test_set, r.infer_batch_size, world=world)
        result = {"epoch": epoch, "step": run.step, "split": "test", **result}
        meta["test"] = result
        run.tests.append(result)
        if world.is_main:
            _append_jsonl(os.path.join(r.model_save_path, METRICS_FILE), result)
        log(f"epoch {epoch} test: {metric_text(result, engine.spec)}")
    folder = checkpoint.epoch_dir(r.model_save_path, epoch)
    rng = world.all_gather_object(paddle.get_rng_state())
    if not world.is_main:
        return
    checkpoint.save(r.model_save_path, epoch, _writer(engine, rng), meta)
    checkpoint.remove_steps(r.model_save_path, through=run.step)
    log(
        f"epoch {epoch} done in {seconds:.1f}s ({epoch_samples / seconds:,.0f} samples/s); "
        f"saved {folder}"
    )
    if r.keep_best:
        run.best = _keep_best(r, engine.spec, meta["test"], folder, run.best)
    plot.plot_curves(
        run.records,
        os.path.join(r.model_save_path, CURVES_FILE),
        f"{engine.name} training",
        run.tests,
        train_keys=[m.name for m in engine.spec.train_metrics],
        test_keys=[m.name for m in engine.spec.metrics if m.kind == "auc"],
    )


def _stop_signal(world: World, step: int | None = None) -> int:
    """The signal that asked this job to stop (0 if none), agreed by all ranks: every rank
    must stop after the same step, whichever of them was signalled. Ranks vote (one small
    all-reduce) every STOP_VOTE_STEPS steps, and at every call without `step`."""
    got = signals.stop.signum
    if not world.active:
        return got or 0
    if step is not None and step % STOP_VOTE_STEPS:
        return 0
    votes = np.array([got == signal.SIGTERM, got == signal.SIGINT], dtype=np.float64)
    votes = world.all_reduce_sum(votes)
    return signal.SIGTERM if votes[0] else signal.SIGINT if votes[1] else 0


def _stopped(signum, epoch, batch, n_batches, step, folder) -> signals.Interrupted:
    where = f"epoch {epoch} batch {batch}/{n_batches} (step {step})"
    return signals.Interrupted(
        signum,
        f"stopped by {signals.name(signum)} after {where}; saved {folder}; to continue, run "
        "the same command with -o runner.resume=True",
    )


def _save_position(config, engine, world: World, position, state, epoch_samples, records) -> str:
    """Checkpoint `model_save_path/steps/<step>/` of a position inside an epoch: the weights,
    the optimizer, and every rank's training metrics and loss window so far."""
    r = config.runner
    epoch, batch, n_batches, step = position
    states = world.all_gather_object({**state, "rng": paddle.get_rng_state()})
    folder = checkpoint.step_dir(r.model_save_path, step)
    if world.is_main:
        meta = {
            "epoch": epoch,
            "batch": batch,
            "batches": n_batches,
            "step": step,
            "engine": engine.name,
            "seed": r.seed,
            "ranks": world.size,
            "epoch_samples": epoch_samples,
            "train": records[-1] if records else None,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "config": config.to_dict(),
        }

        def write(tmp: str):
            _writer(engine, [s["rng"] for s in states])(tmp)
            arrays = {}
            for rank, s in enumerate(states):
                arrays[f"{rank}.window"] = s["window"]
                arrays.update({f"{rank}.metrics.{k}": v for k, v in s["metrics"].items()})
            with open(os.path.join(tmp, STATE_FILE), "wb") as f:
                np.savez(f, **arrays)

        checkpoint.save_step(r.model_save_path, step, write, meta, r.keep_step_checkpoints)
    world.all_reduce_sum(np.zeros(1))  # no rank goes on, or exits, before it is complete
    return folder


def _writer(engine, rng_states: list):
    """Writes the engine's files and every rank's random-generator state (dropout masks)."""

    def write(folder: str):
        engine.save(folder)
        paddle.save(rng_states, os.path.join(folder, RNG_FILE))

    return write


def _restore_rng(folder: str, rank: int):
    """Continue every random draw (dropout) where the run that saved `folder` was."""
    path = os.path.join(folder, RNG_FILE)
    if not os.path.exists(path):  # written before this file existed: dropout differs, no more
        return
    try:
        states = paddle.load(path)
    except Exception as e:  # truncated or foreign file: say which, not a pickle traceback
        raise UserError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    if rank < len(states):  # an epoch's end resumed on more ranks: their draws are new anyway
        paddle.set_rng_state(states[rank])


def _load_position(folder: str, rank: int) -> dict:
    """This rank's training metrics and loss window from a mid-epoch checkpoint."""
    path = os.path.join(folder, STATE_FILE)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    prefix = f"{rank}.metrics."
    if f"{rank}.window" not in arrays:
        raise UserError(f"{path}: holds no training state for rank {rank}")
    return {
        "window": arrays[f"{rank}.window"],
        "metrics": {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)},
    }


def _append_jsonl(path: str, record: dict):
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:  # a full disk: say which file (the write's error does not)
        raise UserError(f"{path}: cannot be written ({e.strerror})") from None


def _start_or_resume(config, engine, world: World, n_batches: int) -> _Run:
    """Prepare the run folder; with `runner.resume`, load the newest complete checkpoint: an
    epoch's end, or a position inside an epoch (`steps/<step>/`).

    The data order needs no saved state: each epoch's permutation is seeded by (seed, epoch), so
    a position is an epoch and a batch index.
    """
    r = config.runner
    root = r.model_save_path
    run = _Run()
    files = (METRICS_FILE, CURVES_FILE, BEST_FILE, BEST_DIR, checkpoint.STEPS_DIR)
    folder = checkpoint.latest(root) if r.resume else None
    if folder is None:
        if r.resume:
            log(f"runner.resume: no checkpoint in {root} yet; starting from epoch 0")
        if world.is_main:
            checkpoint.prepare_run_folder(root, r.overwrite or r.resume, files)
        return run
    meta = checkpoint.read_meta(folder)
    _check_resumable(config, engine, meta, folder, world, n_batches)
    engine.load_training_state(folder)
    _restore_rng(folder, world.rank)
    if "batch" in meta:  # inside an epoch
        epoch, batch = meta["epoch"], meta["batch"]
        run.position = _load_position(folder, world.rank)
        run.epoch_samples = meta["epoch_samples"]
        where = f"in epoch {epoch} after batch {batch}/{n_batches}"
    else:
        epoch, batch = meta["epoch"] + 1, 0
        where = f"after epoch {meta['epoch']}"
    run.start_epoch, run.start_batch, run.step, run.folder = epoch, batch, meta["step"], folder
    history = []
    metrics_path = os.path.join(root, METRICS_FILE)
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            history = [json.loads(line) for line in f if line.strip()]
    # drop the lines logged after the checkpoint
    history = [
        h
        for h in history
        if h["epoch"] < epoch or (h["epoch"] == epoch and "split" not in h and h["batch"] <= batch)
    ]
    run.records = [h for h in history if h.get("split") != "test"]
    run.tests = [h for h in history if h.get("split") == "test"]
    best_path = os.path.join(root, BEST_FILE)
    if r.keep_best and os.path.exists(best_path):
        with open(best_path) as f:
            run.best = json.load(f)
    if world.is_main:
        checkpoint.remove_unfinished(root, keep_through=epoch - 1, keep_steps_through=meta["step"])
        tmp = metrics_path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in history)
        os.replace(tmp, metrics_path)
    log(f"resuming {where} (step {meta['step']}) from {folder}")
    return run


def _check_resumable(config, engine, meta: dict, folder: str, world: World, n_batches: int):
    """The network, data order and step count must be the run's own, or resuming is a lie."""
    saved, now = meta["config"], config.to_dict()
    keys = [("hyper_parameters", k) for k in now["hyper_parameters"]]
    keys += [("runner", k) for k in ("seed", "shuffle", "train_batch_size", "train_data_dir")]
    for section, key in keys:
        if saved[section].get(key) != now[section].get(key):
            raise UserError(
                f"runner.resume: {section}.{key} was {saved[section].get(key)!r} in the run in "
                f"{folder}, now {now[section].get(key)!r}; resume with the same config or start "
                "a new run"
            )
    if meta["engine"] != engine.name:
        raise UserError(
            f"runner.resume: {folder} was trained by the {meta['engine']} engine; resume it with "
            "the same tool"
        )
    if "batch" in meta and (meta["ranks"], meta["batches"]) != (world.size, n_batches):
        raise UserError(
            f"runner.resume: {folder} stopped inside an epoch of {meta['batches']} batches on "
            f"{meta['ranks']} rank(s); resume it on as many ranks (now {world.size}), or remove "
            f"{os.path.dirname(folder)} to resume from the last epoch's end"
        )


def _keep_best(r, spec, result: dict, folder: str, best: dict | None) -> dict:
    """Copy the epoch to `<model_save_path>/best/` when `runner.keep_best` improved."""
    metric = r.keep_best
    if metric not in spec.metric_names:
        names = ", ".join(spec.metric_names)
        raise UserError(f"runner.keep_best: unknown metric {metric!r}; choose one of {names}")
    value = result[metric]
    higher_is_better = spec.metric(metric).higher_is_better
    if best is not None and not (
        value > best["value"] if higher_is_better else value < best["value"]
    ):
        return best
    best = {"metric": metric, "epoch": result["epoch"], "value": value}
    checkpoint.copy(folder, os.path.join(r.model_save_path, BEST_DIR))
    with open(os.path.join(r.model_save_path, BEST_FILE), "w") as f:
        json.dump(best, f)
    log(f"best so far by {metric}: epoch {best['epoch']} ({fmt(value)}), copied to {BEST_DIR}/")
    return best


def predict_dataset(
    engine, reader, dataset, batch_size: int, desc: str = "eval", world: World | None = None
):
    """Predict every row (each rank its share); returns (global metrics, arrays of all rows)."""
    world = world or World()
    spec = engine.spec
    start = time.time()
    collected = Collector()
    n_batches = dataset.num_batches(batch_size, world.rank, world.size)
    batches = dataset.batches(batch_size, rank=world.rank, world=world.size)
    for batch in progress(batches, n_batches, desc):
        outputs = engine.predict(batch)
        labels = spec.label_columns(batch, reader.label_names)
        collected.add(sample_id=batch.sample_id, **outputs, **labels)
    arrays = world.gather_arrays(collected.arrays())
    result = evaluate_metrics(spec.metrics, spec.counts, arrays)
    result["samples_per_s"] = len(dataset) / max(time.time() - start, 1e-9)
    return result, arrays


def metric_text(result: dict, spec) -> str:
    """The declared metrics of an evaluation, then its counts and speed."""
    counts = ", ".join(f"{k} {result[k]:,}" for k in ("samples", *spec.counts))
    return " ".join(f"{k} {fmt(result[k])}" for k in spec.metric_names) + (
        f" ({counts}; {result['samples_per_s']:,.0f} samples/s)"
    )


def evaluate(config, engine, reader, world: World | None = None) -> list[dict]:
    """Evaluate every saved epoch in [infer_start_epoch, infer_end_epoch) on the test data, or
    the one checkpoint folder `infer_load_path` names (e.g. best/, or a mid-epoch steps/<step>/)."""
    r = config.runner
    labels, extra = None, {}
    if checkpoint.is_checkpoint(r.infer_load_path):  # one checkpoint folder, e.g. best/
        meta = checkpoint.read_meta(r.infer_load_path)
        epochs = [meta["epoch"]]
        folders = [r.infer_load_path]
        if "batch" in meta:  # asked for a mid-epoch one by name
            extra = {"batch": meta["batch"], "step": meta["step"]}
            labels = [f"epoch {meta['epoch']} batch {meta['batch']}/{meta['batches']}"]
    else:
        epochs = list(range(r.infer_start_epoch, r.infer_end_epoch))
        if not epochs:
            raise UserError(
                f"runner.infer_start_epoch={r.infer_start_epoch} and "
                f"runner.infer_end_epoch={r.infer_end_epoch} select no epoch (the end is exclusive)"
            )
        folders = [checkpoint.require_epoch(r.infer_load_path, e) for e in epochs]
    if r.save_predictions and os.path.exists(r.save_predictions) and not r.overwrite:
        raise UserError(
            f"runner.save_predictions: {r.save_predictions} already exists; choose another "
            "path or pass -o runner.overwrite=True"
        )
    dataset = load_dataset(config, reader, "test")
    results = []
    labels = labels or [f"epoch {e}" for e in epochs]
    for epoch, label, folder in zip(epochs, labels, folders, strict=True):
        engine.load(folder)
        result, arrays = predict_dataset(
            engine, reader, dataset, r.infer_batch_size, f"eval {epoch}", world
        )
        result = {"epoch": epoch, **extra, **result}
        results.append(result)
        log(f"{label} [{engine.name}]: {metric_text(result, engine.spec)}")
    if r.save_predictions and (world is None or world.is_main):
        write_predictions(r.save_predictions, arrays, engine.spec)
        log(f"predictions of {labels[-1]} written to {r.save_predictions}")
    return results


def write_predictions(path: str, arrays: dict, spec):
    """CSV `sample_id,<labels>,<outputs>`, one row per evaluated sample, written atomically."""
    columns = ["sample_id", *spec.labels, *spec.outputs]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        n = len(arrays["sample_id"])
        for start in range(0, n, 65536):
            part = slice(start, start + 65536)
            rows = [arrays["sample_id"][part].astype(np.int64)]
            rows += [arrays[k][part].astype(np.int64) for k in spec.labels]
            rows += [np.char.mod("%.6g", arrays[k][part]) for k in spec.outputs]
            writer.writerows(zip(*rows, strict=True))
    os.replace(tmp, path)
