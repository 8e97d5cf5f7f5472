"""Evaluation: predict a data set and compute the model's declared metrics; evaluate saved
checkpoints (the infer tools); write the predictions CSV."""

from __future__ import annotations

import csv
import os
import time

import numpy as np

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.report.metrics import Collector, fmt
from paddle_rec_zoo.report.metrics import evaluate as evaluate_metrics
from paddle_rec_zoo.report.progress import log, progress
from paddle_rec_zoo.run import checkpoint
from paddle_rec_zoo.run.distributed import World
from paddle_rec_zoo.run.splits import load_dataset

_CSV_ROWS = 65536  # rows formatted at a time: numpy's string kernels, in bounded memory


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
    batch = None
    for batch in progress(batches, n_batches, desc):
        outputs = engine.predict(batch)
        labels = spec.label_columns(batch, reader.label_names)
        collected.add(sample_id=batch.sample_id, **outputs, **labels)
    if getattr(engine, "lockstep", False) and world.active:
        # predict is a collective (sharded tables): every rank calls it as often as the rank
        # with the most batches (the shares differ by at most a row)
        most = max(dataset.num_batches(batch_size, r, world.size) for r in range(world.size))
        for _ in range(most - n_batches):
            engine.idle(batch if batch is not None else next(iter(dataset.batches(1))))
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
    checkpoints = _checkpoints_to_evaluate(r)
    _refuse_to_overwrite(r)
    dataset = load_dataset(config, reader, "test")
    results = []
    for epoch, label, folder, extra in checkpoints:
        engine.load(folder)
        result, arrays = predict_dataset(
            engine, reader, dataset, r.infer_batch_size, f"eval {epoch}", world
        )
        result = {"epoch": epoch, **extra, **result}
        results.append(result)
        log(f"{label} [{engine.name}]: {metric_text(result, engine.spec)}")
    if r.save_predictions and (world is None or world.is_main):
        write_predictions(r.save_predictions, arrays, engine.spec)
        log(f"predictions of {checkpoints[-1][1]} written to {r.save_predictions}")
    return results


def _checkpoints_to_evaluate(r) -> list[tuple[int, str, str, dict]]:
    """(epoch, label, folder, fields added to its result) of each checkpoint to evaluate."""
    if checkpoint.is_checkpoint(r.infer_load_path):  # one checkpoint folder, e.g. best/
        meta = checkpoint.read_meta(r.infer_load_path)
        if "batch" in meta:  # asked for a mid-epoch one by name
            label = f"epoch {meta['epoch']} batch {meta['batch']}/{meta['batches']}"
            extra = {"batch": meta["batch"], "step": meta["step"]}
            return [(meta["epoch"], label, r.infer_load_path, extra)]
        return [(meta["epoch"], f"epoch {meta['epoch']}", r.infer_load_path, {})]
    epochs = list(range(r.infer_start_epoch, r.infer_end_epoch))
    if not epochs:
        raise UserError(
            f"runner.infer_start_epoch={r.infer_start_epoch} and "
            f"runner.infer_end_epoch={r.infer_end_epoch} select no epoch (the end is exclusive)"
        )
    folders = [checkpoint.require_epoch(r.infer_load_path, e) for e in epochs]
    return [(e, f"epoch {e}", folder, {}) for e, folder in zip(epochs, folders, strict=True)]


def _refuse_to_overwrite(r):
    if r.save_predictions and os.path.exists(r.save_predictions) and not r.overwrite:
        raise UserError(
            f"runner.save_predictions: {r.save_predictions} already exists; choose another "
            "path or pass -o runner.overwrite=True"
        )


def write_predictions(path: str, arrays: dict, spec):
    """CSV `sample_id,<labels>,<outputs>`, one row per evaluated sample, written atomically."""
    columns = ["sample_id", *spec.labels, *spec.outputs]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        n = len(arrays["sample_id"])
        for start in range(0, n, _CSV_ROWS):
            part = slice(start, start + _CSV_ROWS)
            rows = [arrays["sample_id"][part].astype(np.int64)]
            rows += [arrays[k][part].astype(np.int64) for k in spec.labels]
            rows += [np.char.mod("%.6g", arrays[k][part]) for k in spec.outputs]
            writer.writerows(zip(*rows, strict=True))
    os.replace(tmp, path)
