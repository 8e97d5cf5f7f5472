"""Row-sharded tables against whole tables on 2 Fleet ranks: peak RSS per rank, step time and
the bytes each rank all-reduces per step (doc/benchmarks.md, "Sharded tables").

    python -m paddle_rec_zoo.bench.sharding --train DIR --test DIR [--rows 10000000 30000000]

For every table size, `tools/trainer.py` trains one epoch of `--train` (batch 1024 per rank,
the default `lazy_adam`) with `table_sharding: none`, then `row`, one launch after the other.
Each rank runs the trainer inside this module (`--rank-run`), which counts what passes through
`paddle.distributed.all_reduce` (the ids' union, the looked-up rows, their gradient) and then
prints its peak RSS (`ru_maxrss`: the epoch, the evaluation and the checkpoint included). The
dense layers' gradients are all-reduced by `paddle.DataParallel` in C++, outside that count:
their size is added from the parameters'.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time

RESULT = "SHARDING_BENCH "  # the line each rank prints its measurements on
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "models", "multitask", "esmm", "config.yaml")


def rank_run(argv: list[str]) -> int:
    """Under the launcher: the trainer, counting all-reduced bytes by kind; then one result line."""
    import numpy as np
    import paddle

    from paddle_rec_zoo.run import cli, engines

    counts: dict[str, list[int]] = {}  # kind -> [calls, bytes]
    all_reduce = paddle.distributed.all_reduce

    def counted(tensor, *args, **kwargs):
        shape = list(tensor.shape)
        nbytes = int(np.prod(shape)) * (8 if tensor.dtype == paddle.int64 else 4)
        kind = "ids" if tensor.dtype == paddle.int64 and len(shape) == 2 else "other"
        if tensor.dtype == paddle.float32 and len(shape) == 2 and shape[1] < 64:
            kind = "rows"  # [U, D]: looked-up rows (sharded) and their gradient
        entry = counts.setdefault(kind, [0, 0])
        entry[0] += 1
        entry[1] += nbytes
        return all_reduce(tensor, *args, **kwargs)

    paddle.distributed.all_reduce = counted
    built = []
    init = engines.DygraphEngine.__init__

    def keep(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.append(self)

    engines.DygraphEngine.__init__ = keep
    code = cli.main("trainer", argv)
    trainable = [p for p in built[0].net.parameters() if not p.stop_gradient]
    dense = sum(int(np.prod(p.shape)) * 4 for p in trainable)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(RESULT + json.dumps({"peak_mb": peak, "counts": counts, "dense": dense}), flush=True)
    return code


def _launch(workdir: str, name: str, args, rows: int, sharding: str) -> dict:
    log_dir = os.path.join(workdir, f"log-{name}")
    save = os.path.join(workdir, f"out-{name}")
    shutil.rmtree(save, ignore_errors=True)
    cmd = [
        *(sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2"),
        *("--log_dir", log_dir, os.path.abspath(__file__), "--rank-run"),
        *("-m", CONFIG, "-o", "runner.use_fleet=True", f"runner.train_data_dir={args.train}"),
        *(f"runner.test_data_dir={args.test}", f"runner.cache_dir={workdir}/cache"),
        *(f"runner.model_save_path={save}", "runner.epochs=1", "runner.print_interval=50"),
        *("runner.train_batch_size=1024", f"hyper_parameters.sparse_feature_number={rows}"),
        f"hyper_parameters.table_sharding={sharding}",
    ]
    start = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    wall = time.time() - start
    logs = []
    for rank in (0, 1):
        with open(os.path.join(log_dir, f"workerlog.{rank}")) as f:
            logs.append(f.read())
    if proc.returncode:
        raise SystemExit(f"{name}: exit {proc.returncode}\n{logs[0][-3000:]}")
    results = [json.loads(log.split(RESULT, 1)[1].splitlines()[0]) for log in logs]
    batches, seconds = _epoch(logs[0])
    checkpoint = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(save) for f in fs)
    shutil.rmtree(save, ignore_errors=True)
    return {"wall": wall, "ranks": results, "batches": batches, "epoch_s": seconds,
            "checkpoint_bytes": checkpoint}  # fmt: skip


def _epoch(log: str) -> tuple[int, float]:
    batches = int(re.search(r"x (\d+) batches of", log).group(1))
    seconds = float(re.search(r"epoch 0 done in ([\d.]+)s", log).group(1))
    return batches, seconds


def _row(rows: int, sharding: str, r: dict) -> str:
    steps = r["batches"]
    # the training steps' all-reduces: the ids' union and the [U, D] rows; the evaluation's
    # are a few batches more, left in (they are small)
    counts = r["ranks"][0]["counts"]
    ids = counts.get("ids", [0, 0])[1] / steps
    rows_bytes = counts.get("rows", [0, 0])[1] / steps
    dense = r["ranks"][0]["dense"]
    peaks = " / ".join(f"{x['peak_mb']:,.0f}" for x in r["ranks"])
    return (
        f"| {rows / 1e6:.0f}M | {sharding} | {peaks} | {1000 * r['epoch_s'] / steps:.1f} | "
        f"{ids / 1e3:,.0f} kB | {rows_bytes / 1e3:,.0f} kB | {dense / 1e3:,.0f} kB | "
        f"{r['checkpoint_bytes'] / 1e9:.2f} GB |"
    )


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--rank-run":
        return rank_run(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="slot-text training folder")
    parser.add_argument("--test", required=True, help="slot-text test folder")
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000_000, 30_000_000])
    parser.add_argument("--workdir", default="/tmp/sharding-bench")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    lines = [
        "| table rows | table_sharding | peak RSS rank 0 / 1 (MB) | ms per step | ids all-reduced "
        "per step | rows all-reduced per step | dense gradients per step | checkpoint |",
        "|---|---|---|---|---|---|---|---|",
    ]
    raw = {}
    for rows in args.rows:
        for sharding in ("none", "row"):
            result = _launch(args.workdir, f"{rows}-{sharding}", args, rows, sharding)
            raw[f"{rows}-{sharding}"] = result
            lines.append(_row(rows, sharding, result))
            print(lines[-1], flush=True)
    print("\n".join(lines))
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump(raw, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
