"""Benchmark the raw Ali-CCP converter (convert_raw.py) and project it to the full data set.

    python datasets/ali-ccp/bench_convert.py [--users 2000] [--scales 1,2,4] [--runs 3]
        [--workers 2] [--work DIR] [--args ARGS] [--baseline ARGS]
        [--baseline-converter OTHER/convert_raw.py] [--markdown]

Writes raw fixtures shaped like the real files (its own writer, so the proportions are under
control): ``--users`` common-feature rows with 9 profile ids and ~420 history ids each (raw
~10 KB, like the real 730,599-row train file), and at scale 1 about 58 skeleton rows per user (as
42.3M / 730,599), ~15 item/context/cross ids each, 2% click=0,buy=1 noise. The common files stay
fixed while the skeletons grow 1x, 2x, 4x; the test split is a quarter of the train split.

Each scale is converted ``--runs`` times in a fresh subprocess (``convert_raw.py --workers N
ARGS``), interleaved with as many runs of the baseline (``--baseline``, default ``--format slot``;
with ``--baseline-converter``, run by another checkout's converter, e.g. the commit before a
change), after one untimed run; wall time and the peak RSS of the largest process
(``os.wait4``, which covers the workers too) are measured. Reports the median rows/s, MB/s of raw input, output MB/s, peak RSS,
the baseline's median and the speed-up, and a linear projection to the full conversion.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from paddle_rec_zoo.data.ali_ccp import (
    HISTORY_FIELDS,
    PROFILE_CARDINALITY,
    PROFILE_FIELDS,
    RAW_COMMON,
    RAW_SKELETON,
    RAW_SPLITS,
)

# the repository: the package is installed from it in place (requirements.txt: `-e .`)
ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "datasets" / "ali-ccp"
HISTORY_MEAN_LEN = {  # mean length of a user history list
    "150_14": 190,
    "127_14": 100,
    "109_14": 40,
    "110_14": 90,
}
SINGLE_ITEM = ("205", "206", "207", "216", "508", "509", "702", "301")
# Pool sizes of the fields' ids (ids are drawn skewed towards the head).
POOL = {"205": 100_000, "206": 5_000, "207": 50_000, "216": 20_000, "508": 2_000,
        "509": 200_000, "702": 150_000, "301": 3, "210": 30_000,
        "150_14": 30_000, "127_14": 20_000, "109_14": 5_000, "110_14": 50_000}  # fmt: skip
ROWS_PER_USER = 58  # 42.3M impressions / 730,599 common rows in the real train split
FULL = {"train_rows": 42_300_000, "test_rows": 43_000_000}


def _items(fields, ids, values):
    return "\x01".join(f"{f}\x02{i}\x03{v}" for f, i, v in zip(fields, ids, values, strict=True))


def _skewed(rng: np.random.Generator, pool: int, n: int) -> np.ndarray:
    """Ids in [0, pool) with a heavy head: floor(pool * u**3)."""
    return (pool * rng.random(n) ** 3).astype(np.int64)


def write_common(path: Path, keys: list[str], rng: np.random.Generator) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for key in keys:
            fields, ids, vals = ["101"], [int(rng.integers(1, 10**8))], ["1.0"]
            for f in PROFILE_FIELDS:
                fields.append(f)
                ids.append(int(rng.integers(1, PROFILE_CARDINALITY[f] + 1)) * 7919 + 13)
                vals.append("1.0")
            for f in HISTORY_FIELDS:
                mean = HISTORY_MEAN_LEN[f]
                n = int(rng.integers(0, 2 * mean + 1))
                fields += [f] * n
                ids += (_skewed(rng, POOL[f], n) * 15485863 + 101).tolist()
                vals += [f"{v:.5f}" for v in np.log1p(rng.integers(1, 50, n)).tolist()]
            fh.write(f"{key},{len(ids)},{_items(fields, ids, vals)}\n")


def write_skeleton(path: Path, keys: list[str], n_rows: int, rng: np.random.Generator) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        step = 50_000
        for s in range(0, n_rows, step):
            n = min(step, n_rows - s)
            users = np.sort(rng.integers(0, len(keys), n))  # impressions of a user come together
            click = rng.random(n) < 0.04
            buy = click & (rng.random(n) < 0.06)
            noise = rng.random(n) < 0.02
            click[noise], buy[noise] = False, True
            # Skewed draws from per-field pools (heavy repetition, as in click logs).
            item_ids = np.stack(
                [
                    _skewed(rng, POOL[f], n) * 7919 + 1_000_003 * (j + 1)
                    for j, f in enumerate(SINGLE_ITEM)
                ],
                axis=1,
            ).tolist()
            n_nodes = rng.integers(1, 8, n).tolist()
            nodes = (_skewed(rng, POOL["210"], n * 8) * 104729 + 17).reshape(n, 8).tolist()
            lines = []
            for r in range(n):
                k = n_nodes[r]
                fields = ["210"] * k + list(SINGLE_ITEM)
                ids = nodes[r][:k] + item_ids[r]
                body = _items(fields, ids, ["1.0"] * len(ids))
                lines.append(
                    f"{s + r + 1},{int(click[r])},{int(buy[r])},{keys[users[r]]},{len(ids)},{body}\n"
                )
            fh.write("".join(lines))


def write_fixture(out: Path, users: int, train_rows: int, seed: int = 0) -> dict:
    """Raw Tianchi-shaped files in `out`; common files are reused if already there."""
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for split, n_rows in (("train", train_rows), ("test", train_rows // 4)):
        rng = np.random.default_rng([seed, users, 0 if split == "train" else 1])
        keys = [f"{h:016x}" for h in rng.integers(0, 2**63, users).tolist()]
        common = out / RAW_COMMON.format(split)
        if not common.exists():
            write_common(common, keys, rng)
        skel = out / RAW_SKELETON.format(split)
        write_skeleton(skel, keys, n_rows, np.random.default_rng([seed, n_rows, len(split)]))
        sizes[split] = n_rows
    return sizes


BASELINE = "--format slot"  # the slot text


def run_once(raw: Path, out: Path, workers: int, extra=(), keep=False, script=None) -> dict:
    """Convert in a fresh subprocess: wall time and the peak RSS of its largest process.

    `os.wait4` returns the child's rusage including its own reaped children (the workers), so
    each run is measured alone (`RUSAGE_CHILDREN` of this process would keep the max of all runs).
    """
    if out.exists():
        shutil.rmtree(out)
    script = script or SCRIPTS / "convert_raw.py"
    cmd = [sys.executable, str(script), "--raw", str(raw), "--out", str(out)]
    cmd += ["--workers", str(workers), "--quiet", *extra]
    # Start with nothing dirty: a buffered run (the baseline) leaves gigabytes of dirty pages
    # that the kernel would write back while the next run works. Its own writeback is thus not
    # timed, which favours the baseline.
    os.sync()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"converter failed:\n{err.decode()}")
    meta = json.loads((out / "meta.json").read_text())
    out_bytes = sum(
        f.stat().st_size for d in ("train_data", "test_data") for f in (out / d).iterdir()
    )
    if not keep:
        shutil.rmtree(out)
    return {"wall": wall, "rss_mb": usage.ru_maxrss / 1024, "meta": meta, "out_bytes": out_bytes}


def _measured(cmd, env=None) -> tuple[str, float, float]:
    """Run `cmd`; (stdout, wall seconds, peak RSS MB of its largest process, via wait4)."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.stdout.close()
        if os.waitstatus_to_exitcode(status):
            err.seek(0)
            raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{err.read().decode()[-2000:]}")
    return out.decode(), wall, usage.ru_maxrss / 1024


def read_probe(folder: str, cache: str, n_ids: int) -> dict:
    """In this process: load the train split as the trainer does and gather every shuffled batch
    of 1024 of one epoch; print rows/s and seconds."""
    from paddle_rec_zoo.data.ali_ccp import Reader
    from paddle_rec_zoo.data.dataset import Dataset, list_data_files
    from paddle_rec_zoo.run.config import load_config
    from paddle_rec_zoo.run.model_loader import load_model_module

    model_dir = ROOT / "models" / "multitask" / "esmm"
    hyper = load_model_module(str(model_dir), "net").HyperParameters
    cfg = load_config(
        str(model_dir / "config.yaml"), [f"hyper_parameters.sparse_feature_number={n_ids}"], hyper
    )
    reader = Reader(cfg)
    t0 = time.perf_counter()
    ds = Dataset.load(list_data_files(folder, "train_data_dir"), reader, cache)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = sum(len(b.labels) for b in ds.batches(1024, True, 1, 0))
    gather_s = time.perf_counter() - t0
    return {"rows": n, "load_s": load_s, "gather_rows_per_s": n / gather_s}


def read_and_train(raw: Path, work: Path, workers: int, runs: int, train=True) -> list[dict]:
    """The data layer on both forms of the same data: load + shuffled gather (binary from a
    cold and a warm cache of its users' layout; slot from a cold and a warm parsed-data cache)
    and, with `train`, a one-epoch dygraph training run, each in a fresh process (peak RSS via
    wait4), interleaved `runs` times."""
    forms = {}
    for fmt in ("binary", "slot"):
        forms[fmt] = work / f"form-{fmt}"
        res = run_once(raw, forms[fmt], workers, ["--format", fmt], keep=True)
    n_ids = res["meta"]["sparse_feature_number"]
    here = [sys.executable, "-m", __spec__.name]
    rows = []
    for _ in range(runs):
        for kind in ("binary-cold", "binary-warm", "slot-cold", "slot-warm"):
            fmt = kind.split("-")[0]
            cache = work / "read-cache"
            if kind.endswith("cold"):
                shutil.rmtree(cache, ignore_errors=True)
            folder = forms[fmt] / "train_data"
            cmd = [*here, "--read-probe", str(folder), str(cache), str(n_ids)]
            out, wall, rss = _measured(cmd)
            rows.append({"what": f"read {kind}", "wall": wall, "rss_mb": rss, **json.loads(out)})
        for kind in ("binary-warm", "slot-warm") if train else ():
            fmt = kind.split("-")[0]
            save = work / "train-out"
            shutil.rmtree(save, ignore_errors=True)
            cmd = [sys.executable, str(ROOT / "tools" / "trainer.py"), "-m",
                   str(ROOT / "models" / "multitask" / "esmm" / "config.yaml"), "-o",
                   f"runner.train_data_dir={forms[fmt] / 'train_data'}",
                   f"runner.test_data_dir={forms[fmt] / 'test_data'}",
                   f"runner.model_save_path={save}", f"runner.cache_dir={work / 'read-cache'}",
                   "runner.epochs=1", "runner.train_batch_size=1024", "runner.print_interval=1000",
                   f"hyper_parameters.sparse_feature_number={n_ids}"]  # fmt: skip
            env = dict(os.environ, PYTHONWARNINGS="ignore")
            out, wall, rss = _measured(cmd, env)
            m = re.search(r"epoch 0 done in ([\d.]+)s \(([\d,]+) samples/s\)", out)
            rate = float(m.group(2).replace(",", "")) if m else float("nan")
            rows.append({"what": f"train {kind}", "wall": wall, "rss_mb": rss,
                         "train_samples_per_s": rate})  # fmt: skip
    for fmt in forms.values():
        shutil.rmtree(fmt, ignore_errors=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=2000, help="common-feature rows per split")
    ap.add_argument("--scales", default="1,2,4", help="skeleton sizes, multiples of 58 rows/user")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp folder)")
    ap.add_argument("--out-dir", default=None,
                    help="where the converter writes (default: in --work); e.g. /dev/shm to "
                    "take the disk out of the measurement")  # fmt: skip
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table too")
    ap.add_argument("--args", default="",
                    help="converter arguments of the measured runs (default: none, i.e. binary)")  # fmt: skip
    ap.add_argument("--baseline", default=BASELINE,
                    help=f"converter arguments of the baseline runs (default: {BASELINE!r})")  # fmt: skip
    ap.add_argument("--baseline-converter", default=None,
                    help="convert_raw.py of another checkout to run the baseline with "
                    "(default: this one)")  # fmt: skip
    ap.add_argument("--no-baseline", action="store_true", help="do not also time the baseline")
    ap.add_argument("--train", action="store_true",
                    help="also time the data layer on the binary and the slot form, and at the "
                    "largest scale a one-epoch training run on each (warm caches)")  # fmt: skip
    ap.add_argument("--read-probe", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.read_probe:
        folder, cache, n_ids = args.read_probe
        print(json.dumps(read_probe(folder, cache, int(n_ids))))
        return 0
    extra, baseline = args.args.split(), args.baseline.split()
    base_script = Path(args.baseline_converter).resolve() if args.baseline_converter else None
    scales = [float(s) for s in args.scales.split(",")]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-convert-"))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, numpy {np.__version__}; workers={args.workers}; "
        f"output to {args.out_dir or work}",
        flush=True,
    )
    results = []
    try:
        for scale in scales:
            raw = work / f"raw-x{scale:g}"
            train_rows = int(round(args.users * ROWS_PER_USER * scale))
            t0 = time.perf_counter()
            write_fixture(raw, args.users, train_rows)
            in_bytes = sum(f.stat().st_size for f in raw.iterdir())
            skel = sum((raw / RAW_SKELETON.format(s)).stat().st_size for s in RAW_SPLITS)
            print(f"x{scale:g}: fixture {in_bytes / 1e6:.1f} MB (skeletons {skel / 1e6:.1f} MB) "
                  f"written in {time.perf_counter() - t0:.1f}s", flush=True)  # fmt: skip
            out = (
                Path(args.out_dir) / f"bench-convert-out-{os.getpid()}"
                if args.out_dir
                else work / "out"
            )
            if not results:  # untimed: reads the fresh fixture into the page cache
                first = run_once(raw, out, args.workers, extra)["wall"]
                print(f"first run (not counted): {first:.2f}s")
            runs, base = [], []
            for _ in range(args.runs):  # interleaved, so both see the same machine
                runs.append(run_once(raw, out, args.workers, extra))
                if not args.no_baseline:
                    base.append(run_once(raw, out, args.workers, baseline, script=base_script))
            wall = statistics.median(r["wall"] for r in runs)
            base_wall = statistics.median(r["wall"] for r in base) if base else None
            meta = runs[0]["meta"]
            rows = meta["splits"]["train"]["input_rows"] + meta["splits"]["test"]["input_rows"]
            res = {
                "scale": scale,
                "input_mb": in_bytes / 1e6,
                "skeleton_mb": skel / 1e6,
                "rows": rows,
                "wall_s": wall,
                "walls": [round(r["wall"], 2) for r in runs],
                "rows_per_s": rows / wall,
                "mb_per_s": in_bytes / 1e6 / wall,
                "out_mb_per_s": runs[0]["out_bytes"] / 1e6 / wall,
                "out_mb": runs[0]["out_bytes"] / 1e6,
                "rss_mb": statistics.median(r["rss_mb"] for r in runs),
                "rss_max_mb": max(r["rss_mb"] for r in runs),
                "base_wall_s": base_wall,
                "base_walls": [round(r["wall"], 2) for r in base],
                "base_out_mb": base[0]["out_bytes"] / 1e6 if base else None,
                "base_rss_mb": statistics.median(r["rss_mb"] for r in base) if base else None,
            }
            same_format = "--format" not in extra + baseline
            if base and same_format and base[0]["out_bytes"] != runs[0]["out_bytes"]:
                raise SystemExit("the baseline wrote a different number of bytes")
            results.append(res)
            print(
                f"x{scale:g}: {rows} rows in {wall:.2f}s (runs {res['walls']}): "
                f"{res['rows_per_s']:,.0f} rows/s, {res['mb_per_s']:.1f} MB/s raw in, "
                f"{res['out_mb_per_s']:.0f} MB/s out ({res['out_mb']:.0f} MB), "
                f"peak RSS {res['rss_mb']:.0f} MB",
                flush=True,
            )
            if base:
                who = " ".join(baseline) + (f" by {base_script}" if base_script else "")
                print(
                    f"x{scale:g}: baseline ({who}) {base_wall:.2f}s "
                    f"(runs {res['base_walls']}): {in_bytes / 1e6 / base_wall:.1f} MB/s raw in, "
                    f"{res['base_out_mb']:.0f} MB out, peak RSS {res['base_rss_mb']:.0f} MB; "
                    f"speed-up {base_wall / wall:.2f}x",
                    flush=True,
                )
            if args.train:  # reading at every scale, training at the largest
                rows = read_and_train(raw, work, args.workers, args.runs, scale == scales[-1])
                for row in rows:
                    print(f"x{scale:g}: " + json.dumps({k: round(v, 3) if isinstance(v, float)
                          else v for k, v in row.items()}), flush=True)  # fmt: skip
            shutil.rmtree(raw)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    # Projection: time grows with rows at the largest scale's rate; RSS does not grow with rows.
    big = results[-1]
    full_rows = FULL["train_rows"] + FULL["test_rows"]
    secs = full_rows / big["rows_per_s"]
    bytes_per_row_in = big["input_mb"] * 1e6 / big["rows"]
    bytes_per_row_out = big["out_mb"] * 1e6 / big["rows"]
    rss_list = ", ".join(f"{r['rss_mb']:.0f}" for r in results)
    print(
        f"projection to the full data ({full_rows / 1e6:.1f}M rows): {secs / 3600:.1f} h, "
        f"~{full_rows * bytes_per_row_in / 1e9:.0f} GB in, ~{full_rows * bytes_per_row_out / 1e9:.0f} GB out; "
        f"peak RSS at x1..x{scales[-1]:g}: {rss_list} MB"
    )
    if args.markdown:
        print()
        print("| skeleton scale | rows (train+test) | raw input MB | wall s (median of runs) | rows/s "
              "| raw MB/s | output MB/s | peak RSS MB | baseline wall s | baseline raw MB/s "
              "| speed-up |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in results:
            b = r["base_wall_s"]
            tail = (f"{b:.2f} ({', '.join(map(str, r['base_walls']))}) | "
                    f"{r['input_mb'] / b:.1f} | {b / r['wall_s']:.2f}x" if b else "- | - | -")  # fmt: skip
            print(f"| x{r['scale']:g} | {r['rows']:,} | {r['input_mb']:.0f} | {r['wall_s']:.2f} "
                  f"({', '.join(map(str, r['walls']))}) | {r['rows_per_s']:,.0f} | "
                  f"{r['mb_per_s']:.1f} | {r['out_mb_per_s']:.0f} | {r['rss_mb']:.0f} | {tail} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
