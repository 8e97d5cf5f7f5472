"""The training and evaluation loops, one of each for every engine."""

from __future__ import annotations

import csv
import json
import math
import os
import time

import numpy as np

from utils import checkpoint, warm_start
from utils.data import Dataset, default_cache_dir, list_data_files
from utils.distributed import World
from utils.errors import UserError
from utils.metrics import Collector, fmt
from utils.plot import plot_curves
from utils.progress import log, progress, set_postfix

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "training_curves.png"
BEST_FILE = "best.json"
BEST_DIR = "best"


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


def train(config, engine, model, reader, world: World | None = None) -> list[dict]:
    """Train `engine` for `runner.epochs`, saving a checkpoint per epoch. Returns log records."""
    r = config.runner
    world = world or World()
    dataset = load_dataset(config, reader, "train")
    evaluate_each = r.evaluate_each_epoch or bool(r.keep_best)
    test_set = load_dataset(config, reader, "test") if evaluate_each else None
    metrics_path = os.path.join(r.model_save_path, METRICS_FILE)
    run = _start_or_resume(config, engine, world)
    if r.model_init_path and run["start_epoch"] == 0:  # a resumed run goes on from its own
        warm_start.load(config, engine)
    records, tests, best, step = run["records"], run["tests"], run["best"], run["step"]
    n_batches = dataset.num_batches(r.train_batch_size, world.rank, world.size, equal=True)
    log(
        f"training {engine.name}: epochs {run['start_epoch']}..{r.epochs - 1} x {n_batches} "
        f"batches of {r.train_batch_size}"
        + (f" on each of {world.size} ranks" if world.active else "")
        + f", checkpoints in {r.model_save_path}"
    )
    for epoch in range(run["start_epoch"], r.epochs):
        metrics = model.create_metrics()
        window = np.zeros(2)  # loss sum, samples since the last log line
        window_start = epoch_start = time.time()
        epoch_samples = 0
        batches = dataset.batches(
            r.train_batch_size, r.shuffle, r.seed, epoch, world.rank, world.size, equal=True
        )
        for i, batch in enumerate(progress(batches, n_batches, f"epoch {epoch}")):
            loss, outputs = engine.train_step(batch)
            step += 1
            if not math.isfinite(loss):
                raise UserError(
                    f"training diverged: loss is {loss} at epoch {epoch}, step {step}; lower "
                    "hyper_parameters.optimizer.learning_rate (checkpoints of earlier epochs "
                    "are kept)"
                )
            metrics.update(outputs, batch.labels)
            window += (loss * len(batch.labels), len(batch.labels))
            if (i + 1) % r.print_interval == 0 or i + 1 == n_batches:
                loss_sum, n = world.all_reduce_sum(window)
                elapsed = max(time.time() - window_start, 1e-9)
                record = {
                    "epoch": epoch,
                    "batch": i + 1,
                    "step": step,
                    "loss": loss_sum / n,
                    **world.merged_metrics(metrics).compute(),
                    "samples_per_s": n / elapsed,
                }
                epoch_samples += int(n)
                records.append(record)
                if world.is_main:
                    _append_jsonl(metrics_path, record)
                log(
                    f"epoch {epoch} batch {i + 1}/{n_batches}: "
                    + " ".join(
                        f"{k} {fmt(v)}" for k, v in record.items() if k == "loss" or _is_metric(k)
                    )
                    + f" {record['samples_per_s']:,.0f} samples/s"
                )
                set_postfix(loss=f"{record['loss']:.4f}")
                window[:] = 0
                window_start = time.time()
        seconds = time.time() - epoch_start
        meta = {
            "epoch": epoch,
            "step": step,
            "engine": engine.name,
            "seed": r.seed,
            "ranks": world.size,
            "train": {"epoch": epoch, "seconds": seconds, **records[-1]},
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "config": config.to_dict(),
        }
        if test_set is not None:
            result, _ = predict_dataset(engine, model, test_set, r.infer_batch_size, world=world)
            result = {"epoch": epoch, "step": step, "split": "test", **result}
            meta["test"] = result
            tests.append(result)
            if world.is_main:
                _append_jsonl(metrics_path, result)
            log(f"epoch {epoch} test: {metric_text(result)}")
        if world.is_main:
            folder = checkpoint.save(r.model_save_path, epoch, engine.save, meta)
            log(
                f"epoch {epoch} done in {seconds:.1f}s ({epoch_samples / seconds:,.0f} "
                f"samples/s); saved {folder}"
            )
            if r.keep_best:
                best = _keep_best(r, meta["test"], folder, best)
            plot_curves(
                records,
                os.path.join(r.model_save_path, CURVES_FILE),
                f"{engine.name} training",
                tests,
            )
    return records


def _append_jsonl(path: str, record: dict):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _start_or_resume(config, engine, world: World) -> dict:
    """Prepare the run folder; with `runner.resume`, load the last complete epoch.

    The data order needs no saved state: each epoch's permutation is seeded by (seed, epoch).
    """
    r = config.runner
    root = r.model_save_path
    run = {"records": [], "tests": [], "best": None, "step": 0, "start_epoch": 0}
    files = (METRICS_FILE, CURVES_FILE, BEST_FILE, BEST_DIR)
    done = checkpoint.saved_epochs(root) if r.resume else []
    if not done:
        if r.resume:
            log(f"runner.resume: no checkpoint in {root} yet; starting from epoch 0")
        if world.is_main:
            checkpoint.prepare_run_folder(root, r.overwrite or r.resume, files)
        return run
    last = done[-1]
    folder = checkpoint.epoch_dir(root, last)
    meta = checkpoint.read_meta(folder)
    _check_resumable(config, engine, meta, folder)
    engine.load_training_state(folder)
    run.update(start_epoch=last + 1, step=meta["step"])
    history = []
    metrics_path = os.path.join(root, METRICS_FILE)
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            history = [json.loads(line) for line in f if line.strip()]
    history = [h for h in history if h["epoch"] <= last]  # drop the interrupted epoch's lines
    run["records"] = [h for h in history if h.get("split") != "test"]
    run["tests"] = [h for h in history if h.get("split") == "test"]
    best_path = os.path.join(root, BEST_FILE)
    if r.keep_best and os.path.exists(best_path):
        with open(best_path) as f:
            run["best"] = json.load(f)
    if world.is_main:
        checkpoint.remove_unfinished(root, keep_through=last)
        tmp = metrics_path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in history)
        os.replace(tmp, metrics_path)
    log(f"resuming after epoch {last} (step {meta['step']}) from {folder}")
    return run


def _check_resumable(config, engine, meta: dict, folder: str):
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


def _keep_best(r, result: dict, folder: str, best: dict | None) -> dict:
    """Copy the epoch to `<model_save_path>/best/` when `runner.keep_best` improved."""
    metric = r.keep_best
    if metric not in result:
        names = ", ".join(k for k in result if _is_metric(k))
        raise UserError(f"runner.keep_best: unknown metric {metric!r}; choose one of {names}")
    value = result[metric]
    higher_is_better = not metric.startswith("logloss")
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
    engine, model, dataset, batch_size: int, desc: str = "eval", world: World | None = None
):
    """Predict every row (each rank its share); returns (global metrics, arrays of all rows)."""
    world = world or World()
    start = time.time()
    collected = Collector()
    n_batches = dataset.num_batches(batch_size, world.rank, world.size)
    batches = dataset.batches(batch_size, rank=world.rank, world=world.size)
    for batch in progress(batches, n_batches, desc):
        outputs = engine.predict(batch)
        collected.add(sample_id=batch.sample_id, **outputs, **label_columns(model, batch))
    arrays = world.gather_arrays(collected.arrays())
    result = model.evaluate(**_metric_args(model, arrays))
    result["samples_per_s"] = len(dataset) / max(time.time() - start, 1e-9)
    return result, arrays


def metric_text(result: dict) -> str:
    return " ".join(f"{k} {fmt(v)}" for k, v in result.items() if _is_metric(k)) + (
        f" (samples {result['samples']:,}, clicks {result['clicks']:,}, "
        f"buys {result['buys']:,}; {result['samples_per_s']:,.0f} samples/s)"
    )


def evaluate(config, engine, model, reader, world: World | None = None) -> list[dict]:
    """Evaluate every saved epoch in [infer_start_epoch, infer_end_epoch) on the test data."""
    r = config.runner
    if checkpoint.is_checkpoint(r.infer_load_path):  # one checkpoint folder, e.g. best/
        epochs = [checkpoint.read_meta(r.infer_load_path)["epoch"]]
        folders = [r.infer_load_path]
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
    for epoch, folder in zip(epochs, folders, strict=True):
        engine.load(folder)
        result, arrays = predict_dataset(
            engine, model, dataset, r.infer_batch_size, f"eval {epoch}", world
        )
        result = {"epoch": epoch, **result}
        results.append(result)
        log(f"epoch {epoch} [{engine.name}]: {metric_text(result)}")
    if r.save_predictions and (world is None or world.is_main):
        write_predictions(r.save_predictions, arrays, model)
        log(f"predictions of epoch {epochs[-1]} written to {r.save_predictions}")
    return results


def _is_metric(key: str) -> bool:
    return key.startswith(("auc", "logloss", "calibration"))


def label_columns(model, batch) -> dict:
    return {name: batch.labels[:, j] for j, name in enumerate(model.label_names)}


def _metric_args(model, arrays: dict) -> dict:
    return {k: arrays[k] for k in (*model.output_names, *model.label_names)}


def write_predictions(path: str, arrays: dict, model):
    """CSV `sample_id,<labels>,<outputs>`, one row per evaluated sample, written atomically."""
    columns = ["sample_id", *model.label_names, *model.output_names]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        n = len(arrays["sample_id"])
        for start in range(0, n, 65536):
            part = slice(start, start + 65536)
            rows = [arrays["sample_id"][part].astype(np.int64)]
            rows += [arrays[k][part].astype(np.int64) for k in model.label_names]
            rows += [np.char.mod("%.6g", arrays[k][part]) for k in model.output_names]
            writer.writerows(zip(*rows, strict=True))
    os.replace(tmp, path)
