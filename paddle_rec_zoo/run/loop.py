"""The training loop: epoch after epoch of steps, their log lines and checkpoints, and each
epoch's end (evaluation, checkpoint, best epoch, curves).

Where a run starts is `resume`'s, what its folder holds `checkpoint`'s, evaluation `evaluate`'s.
"""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import paddle

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.report import plot
from paddle_rec_zoo.report.metrics import TrainMetrics, fmt
from paddle_rec_zoo.report.progress import log, progress, set_postfix
from paddle_rec_zoo.report.visual import open_visual_log
from paddle_rec_zoo.run import checkpoint, keep_best, resume, signals, warm_start
from paddle_rec_zoo.run.distributed import World
from paddle_rec_zoo.run.evaluate import (
    metric_text,
    predict_dataset,
)
from paddle_rec_zoo.run.splits import load_dataset
from paddle_rec_zoo.run.stopping import agreed_signal, stopped


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
    run = resume.start_or_resume(config, engine, world, n_batches)
    if world.is_main and r.use_visual:
        folder = checkpoint.visual_dir(r.model_save_path)
        run.visual = open_visual_log(folder, engine.spec, run.records, run.tests)
    if r.model_init_path and run.folder is None:  # a resumed run goes on from its own
        warm_start.load(config, engine)
    log(
        f"training {engine.name}: epochs {run.start_epoch}..{r.epochs - 1} x {n_batches} "
        f"batches of {r.train_batch_size}"
        + (f" on each of {world.size} ranks" if world.active else "")
        + f", checkpoints in {r.model_save_path}"
    )
    epochs = _Epochs(config, engine, reader, world, run, n_batches, test_set)
    if world.is_main:  # the rank that draws the curves at every epoch's end; only now that the
        plot.preload()  # data sets are read: their parsing forks, which must not meet an import
    with signals.stop.deferred(), contextlib.ExitStack() as stack:
        if run.visual is not None:
            stack.callback(run.visual.close)
        for epoch in range(run.start_epoch, r.epochs):
            # a run resumed inside this epoch already has its tables: the checkpoint holds them
            if epoch > 0 and not (epoch == run.start_epoch and run.start_batch):
                _reinit_embeddings(config, engine, epoch)
            seconds = epochs.train(dataset, epoch)
            epochs.end(epoch, seconds)
            signum = agreed_signal(world)  # also the barrier: the checkpoint is complete
            if signum and epoch + 1 < r.epochs:
                folder = checkpoint.epoch_dir(r.model_save_path, epoch)
                raise stopped(signum, (epoch, n_batches, n_batches, run.step), folder)
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


class _Epochs:
    """One epoch after another: its steps, a log line every `print_interval` batches, mid-epoch
    checkpoints (`save_steps`, or a stop signal), and its end."""

    def __init__(self, config, engine, reader, world, run, n_batches: int, test_set):
        self.config, self.engine, self.reader, self.world = config, engine, reader, world
        self.run: resume.RunState = run
        self.root, self.spec = config.runner.model_save_path, engine.spec
        self.n_batches, self.test_set = n_batches, test_set

    def train(self, dataset, epoch: int) -> float:
        """Train one epoch; returns its seconds."""
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
        return time.time() - epoch_start

    def _step(self, batch, epoch: int):
        loss, outputs = self.engine.train_step(batch)
        self.run.step += 1
        if not math.isfinite(loss):
            raise UserError(
                f"training diverged: loss is {loss} at epoch {epoch}, step {self.run.step}; "
                "lower hyper_parameters.optimizer.learning_rate (checkpoints of earlier epochs "
                "are kept)"
            )
        self.metrics.update(outputs, self.spec.label_columns(batch, self.reader.label_names))
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
            checkpoint.append_record(self.root, record)
            if self.run.visual is not None:
                self.run.visual.train(record)
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
        signum = agreed_signal(self.world, step)
        # stopping after the last batch: the epoch's own checkpoint follows, unless an
        # evaluation comes first (that one is saved as batch n_batches of n_batches)
        due = r.save_steps and step % r.save_steps == 0 and not last
        if due or (signum and not (last and self.test_set is None)):
            position = (epoch, batch, self.n_batches, step)
            folder = self._save_position(position)
            if signum:
                raise stopped(signum, position, folder)

    def _save_position(self, position: tuple) -> str:
        """Checkpoint a position inside an epoch: the weights, the optimizer, and every rank's
        training metrics and loss window so far."""
        epoch, batch, n_batches, step = position
        state = {"metrics": self.metrics.state_dict(), "window": self.window}
        states = self.world.all_gather_object({**state, "rng": paddle.get_rng_state()})
        folder = checkpoint.step_dir(self.root, step)
        shards = checkpoint.stage_shards(self.engine, self.world, self.root, f"step-{step}")
        if self.world.is_main:
            last = self.run.records[-1] if self.run.records else None
            where = {"batch": batch, "batches": n_batches, "epoch_samples": self.epoch_samples}
            meta = self._describe(epoch, last, **where)
            keep = self.config.runner.keep_step_checkpoints
            checkpoint.save_position(self.root, self.engine, states, meta, keep, shards)
        self.world.all_reduce_sum(np.zeros(1))  # no rank goes on, or exits, before it is complete
        return folder

    def _describe(self, epoch: int, train, **position) -> dict:
        return checkpoint.describe(
            self.config, self.engine.name, self.world.size, epoch, self.run.step, train, **position
        )

    def end(self, epoch: int, seconds: float):
        """Evaluate (if asked), checkpoint the epoch, keep the best, redraw the curves."""
        test = self._evaluate(epoch) if self.test_set is not None else None
        meta = self._describe(epoch, {"epoch": epoch, "seconds": seconds, **self.run.records[-1]})
        if test is not None:
            meta["test"] = test
        rng = self.world.all_gather_object(paddle.get_rng_state())
        shards = checkpoint.stage_shards(self.engine, self.world, self.root, f"epoch-{epoch}")
        if not self.world.is_main:
            return
        folder = checkpoint.save_epoch(self.root, self.engine, rng, meta, shards)
        checkpoint.remove_steps(self.root, through=self.run.step)
        log(
            f"epoch {epoch} done in {seconds:.1f}s ({self.epoch_samples / seconds:,.0f} "
            f"samples/s); saved {folder}"
        )
        metric = self.config.runner.keep_best
        if metric:
            best = keep_best.update(self.root, self.spec, metric, test, folder, self.run.best)
            self.run.best = best
        self._draw_curves()

    def _evaluate(self, epoch: int) -> dict:
        """The epoch's test metrics, logged and appended to metrics.jsonl."""
        r = self.config.runner
        result, _ = predict_dataset(
            self.engine, self.reader, self.test_set, r.infer_batch_size, world=self.world
        )
        result = {"epoch": epoch, "step": self.run.step, "split": "test", **result}
        self.run.tests.append(result)
        if self.world.is_main:
            checkpoint.append_record(self.root, result)
            if self.run.visual is not None:
                self.run.visual.test(result)
        log(f"epoch {epoch} test: {metric_text(result, self.spec)}")
        return result

    def _draw_curves(self):
        plot.plot_curves(
            self.run.records,
            checkpoint.curves_path(self.root),
            f"{self.engine.name} training",
            self.run.tests,
            train_keys=[m.name for m in self.spec.train_metrics],
            test_keys=[m.name for m in self.spec.metrics if m.kind == "auc"],
        )
