"""Scale rehearsal: the whole path from raw logs to test AUCs at N impressions, and its projection
to the full Ali-CCP. Run through `tools/benchmark.py`:

    python tools/benchmark.py --scale                    # 10M train impressions (~40 min, 2 cores)
    python tools/benchmark.py --scale 200000 --workdir /tmp/s   # a quick look
    python tools/benchmark.py --scale --update-doc       # also rewrite doc/benchmarks.md's table

Stages, each a separate process timed by its wall time and peak RSS (`os.wait4`, the largest of
the process and the children it waited for):

1. raw generation: `datasets/ali-ccp/synthetic.py --format raw`, N train impressions and a test
   split of the real proportion (43.0M / 42.3M, so N x 1.017);
2. conversion: `sh datasets/ali-ccp/run.sh --raw RAW --out DATA` (the binary data set);
3. one epoch of `tools/trainer.py`, then of `tools/static_trainer.py`, with
   `config_bigdata.yaml` on the converted data (its schedule decays over that one epoch);
4. evaluation of the static run's export with `tools/static_infer.py -o runner.use_inference=True`
   and of the dygraph run's checkpoint with `tools/infer.py`.

Everything is written under WORKDIR/scale/, emptied first (every stage starts cold: no users'
layout in the cache, nothing from an earlier run). How the projection is computed is in
doc/benchmarks.md ("Scale rehearsal") and in `project_rss` below.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time

from paddle_rec_zoo.bench import benchmark  # its run_process, machine() and update_doc()
from paddle_rec_zoo.data.ali_ccp import RAW_FILES

ROOT = benchmark.ROOT
CONFIG = os.path.join(benchmark.MODEL_DIR, "config_bigdata.yaml")
RUN_SH = os.path.join(ROOT, "datasets", "ali-ccp", "run.sh")
BEGIN = "<!-- scale table: begin (written by tools/benchmark.py --scale ... --update-doc) -->"
END = "<!-- scale table: end -->"

# The full Ali-CCP (doc/data.md, ARCHITECTURE): impressions and common-feature rows per split.
FULL_ROWS = {"train": 42_300_000, "test": 43_000_000}
FULL_COMMON_ROWS = {"train": 730_599, "test": 884_211}
# The four raw files' size: doc/data.md's estimate from fixtures shaped like the real files
# (~27 GB), not a measured size; conversion time is projected by it and by rows.
FULL_RAW_BYTES = 27e9
TEST_RATIO = FULL_ROWS["test"] / FULL_ROWS["train"]
SEED = 1
# Conversion memory that grows with the data: per vocabulary key its int64 key and count,
# twice while counts are merged; per common-feature row its hash, order, size and use count
# (int64 each). Everything else the converter holds is per task (64 MB of skeleton): flat.
CONVERT_BYTES_PER_KEY = 32
CONVERT_BYTES_PER_COMMON_ROW = 32
# Training memory per train impression: the epoch's permutation (int64) and its per-batch sorted
# copies (paddle_rec_zoo.data.dataset.Dataset.batch_indices).
TRAIN_BYTES_PER_ROW = 16
# Evaluation memory per test impression: the collected sample ids, outputs and labels, their
# concatenation and the exact AUC's sort (paddle_rec_zoo.run.evaluate.predict_dataset); peak measured
# with tracemalloc over Collector + metrics.evaluate on 1M rows of ESMM outputs: 116 B.
EVAL_BYTES_PER_ROW = 116
# Copies of the embedding table (dim float32 a row) at the peak (doc/benchmarks.md, "Memory, and
# how large a table fits"): training holds the table, lazy Adam's two moments and one array in
# flight while the checkpoint is written; evaluation the live table and the one being loaded.
TRAIN_TABLE_COPIES = 4
EVAL_TABLE_COPIES = 2
MB = 2**20

# (key, stage, split whose rows it processes: train, test or all)
STAGES = [
    ("generate", "raw generation: `synthetic.py --format raw`", "all"),
    ("convert", "conversion: `run.sh --raw` (binary data set)", "all"),
    ("train_dygraph", "training: `trainer.py`, 1 epoch", "train"),
    ("train_static", "training: `static_trainer.py`, 1 epoch", "train"),
    ("infer_inference", "evaluation: `static_infer.py -o runner.use_inference=True`", "test"),
    ("infer_dygraph", "evaluation: `infer.py`", "test"),
]
# An evaluation's log line: `<label> [<engine>]: <metric> <value> ... (samples N, ...)`, one pair
# per metric the model declares (paddle_rec_zoo.run.loop.metric_text).
EVAL_METRICS = re.compile(r"\[\w+\]: ((?:[^\s(]\S* (?:-?[\d.]+|nan)(?: |$))+)", re.M)


def eval_metrics(text: str) -> dict[str, float]:
    """{name: value} of the last evaluation a tool logged (empty if none)."""
    found = EVAL_METRICS.findall(text)
    words = found[-1].split() if found else []
    return {name: float(value) for name, value in zip(words[::2], words[1::2], strict=True)}


def disk_bytes(path: str) -> int:
    """Bytes allocated on disk under `path` (files' blocks, not their apparent size)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            # a temporary file may be renamed or removed meanwhile
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total


class DiskPeak:
    """The largest `disk_bytes(path)` seen while the block runs, sampled every `interval` s
    (the converter's temporary files live only during its run)."""

    def __init__(self, path: str, interval: float = 0.5):
        self.path, self.interval, self.peak = path, interval, 0
        self._stop = threading.Event()

    def _sample(self):
        while True:
            self.peak = max(self.peak, disk_bytes(self.path))
            if self._stop.wait(self.interval):
                return

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, disk_bytes(self.path))


def read_settings() -> dict:
    """config_bigdata.yaml's batch size, embedding width, ids per row and the AUCs its model
    declares, resolved as the tools resolve them (imports Paddle: call it in a child process, see `bigdata_settings`)."""
    from paddle_rec_zoo.run.config import load_config
    from paddle_rec_zoo.run.model_loader import load_model_module

    adapter = load_model_module(benchmark.MODEL_DIR, "dygraph_model")
    config = load_config(CONFIG, [], adapter.DygraphModel.hyper_parameters_class)
    hp = config.hyper_parameters
    spec = adapter.DygraphModel.network.spec(hp)
    return {
        "batch_size": config.runner.train_batch_size,
        "dim": hp.sparse_feature_dim,
        "width": hp.layout().width,
        "auc_metrics": [m.name for m in spec.metrics if m.kind == "auc"],
    }


def bigdata_settings() -> dict:
    """`read_settings()` from a child process. A child's peak RSS (`wait4`) starts from its
    parent's RSS at the fork, so this process must not load Paddle before the stages have run:
    with Paddle loaded here (~300 MB), a 3,000-row generation reported 301 MB."""
    code = (
        "import json; from paddle_rec_zoo.bench import scale; "
        "print(json.dumps(scale.read_settings()))"
    )
    env = dict(os.environ, PYTHONWARNINGS="ignore", GLOG_minloglevel="2")
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


class Rehearsal:
    def __init__(self, n: int, workdir: str, settings: dict | None = None):
        self.n = n
        self.dir = os.path.join(workdir, "scale")
        self.raw = os.path.join(self.dir, "raw")
        self.data = os.path.join(self.dir, "data")
        self.cache = os.path.join(self.dir, "cache")
        self.logs = os.path.join(self.dir, "logs")
        self.results: dict[str, dict] = {}
        self.meta: dict = {}
        settings = settings or bigdata_settings()
        self.batch_size = settings["batch_size"]
        self.dim = settings["dim"]
        self.width = settings["width"]
        self.auc_names = settings.get("auc_metrics", [])  # reported of every evaluation

    # ------------------------------------------------------------------ running
    def run(self):
        if os.path.exists(self.dir):
            shutil.rmtree(self.dir)
        os.makedirs(self.logs)
        py = sys.executable
        self.stage(
            "generate",
            [py, benchmark.GENERATOR, "--format", "raw", "--n", str(self.n), "--seed", str(SEED)]
            + ["--test-ratio", f"{TEST_RATIO:.4f}", "--out", self.raw, "--quiet"],
        )
        self.raw_bytes = sum(
            os.path.getsize(os.path.join(self.raw, f))
            for f in os.listdir(self.raw)
            if f in RAW_FILES
        )
        # run.sh runs the converter with $PYTHON: this interpreter, not whichever is on PATH
        convert = ["env", f"PYTHON={py}", "sh", RUN_SH, "--raw", self.raw, "--out", self.data]
        self.stage("convert", convert + ["--quiet"])
        with open(os.path.join(self.data, "meta.json")) as f:
            self.meta = json.load(f)
        for key, tool, save in (
            ("train_dygraph", "trainer", "out-dygraph"),
            ("train_static", "static_trainer", "out-static"),
            ("infer_inference", "static_infer", "out-static"),
            ("infer_dygraph", "infer", "out-dygraph"),
        ):
            extra = ["runner.use_inference=True"] if key == "infer_inference" else []
            cmd = [py, os.path.join(benchmark.TOOLS, f"{tool}.py"), "-m", CONFIG, "-o"]
            self.stage(key, cmd + self.overrides(save) + extra)
        self.sizes = {
            "raw": disk_bytes(self.raw),
            "converted": disk_bytes(self.data),
            "cache": disk_bytes(self.cache),
            "checkpoints": sum(
                disk_bytes(os.path.join(self.dir, d)) for d in ("out-dygraph", "out-static")
            ),
        }

    def overrides(self, save: str) -> list[str]:
        train_rows = self.meta["rows"]["train"]
        return [
            f"runner.train_data_dir={os.path.join(self.data, 'train_data')}",
            f"runner.test_data_dir={os.path.join(self.data, 'test_data')}",
            f"runner.model_save_path={os.path.join(self.dir, save)}",
            f"runner.cache_dir={self.cache}",
            "runner.epochs=1",
            "runner.infer_start_epoch=0",
            "runner.infer_end_epoch=1",
            f"hyper_parameters.sparse_feature_number={self.meta['sparse_feature_number']}",
            # config_bigdata's cosine schedule decays over exactly one epoch of its data
            "hyper_parameters.optimizer.schedule.decay_steps="
            f"{math.ceil(train_rows / self.batch_size)}",
        ]

    def stage(self, key: str, cmd: list[str]):
        print(f"{key}: {' '.join(cmd)}", flush=True)
        load = benchmark.load_avg()
        with DiskPeak(self.dir) as disk:
            wall, rss, text = benchmark.run_process(cmd, os.path.join(self.logs, f"{key}.log"))
        load = max(load, benchmark.load_avg())
        result = {"wall": wall, "rss_mb": rss, "disk_peak": disk.peak, "load": load}
        if key.startswith("train"):
            result["loop_rate"] = benchmark.loop_rate(text, "train")
        elif key.startswith("infer"):
            result["loop_rate"] = benchmark.loop_rate(text, "test")
            metrics = eval_metrics(text)
            if self.auc_names and all(name in metrics for name in self.auc_names):
                result["auc"] = [metrics[name] for name in self.auc_names]
        self.results[key] = result
        print(f"  {wall:.1f} s, peak RSS {rss:,} MB", flush=True)

    # ------------------------------------------------------------------ report
    def rows(self, split: str) -> int:
        rows = self.meta["rows"]
        return rows["train"] + rows["test"] if split == "all" else rows[split]

    def project_wall(self, key: str, split: str) -> str:
        """Wall time at full scale, linear in the rows the stage processes (start-up included,
        so a small run overstates it); conversion also by raw bytes."""
        if key == "generate":
            return "— (the real files come from Tianchi)"
        text = _duration(self.full_wall(key, split))
        if key == "convert":
            by_bytes = self.results[key]["wall"] * FULL_RAW_BYTES / self.raw_bytes
            text += f" ({_duration(by_bytes)} by raw bytes)"
        return text

    def full_vocab(self) -> int:
        """The vocabulary at 42.3M train impressions: in proportion to the train rows, as the
        generator's world grows (users, items and cross buckets are all proportional to N). The
        real data's vocabulary at min_count 1 is not known here."""
        return round(self.meta["sparse_feature_number"] * FULL_ROWS["train"] / self.rows("train"))

    def project_rss(self, key: str) -> int | None:
        """Peak RSS at full scale: the measured peak plus what grows with the data, each term
        at its full size; what is per batch, per task or per process (Paddle, the programs, the
        converter's 64 MB tasks, the binary columns' mapped pages, dropped every 64 batches)
        does not grow.

        - conversion: the vocabulary (CONVERT_BYTES_PER_KEY a key) and the per-user arrays
          (CONVERT_BYTES_PER_COMMON_ROW a common-feature row, both splits);
        - training: TRAIN_TABLE_COPIES of the embedding table (dim x 4 B a row each), the
          train users' layout ([users, width] int32, mapped from the cache, every row touched
          in a shuffled epoch) and the epoch's plan (TRAIN_BYTES_PER_ROW an impression);
        - evaluation: EVAL_TABLE_COPIES of the table, the test users' layout and the collected
          predictions with the exact metrics (EVAL_BYTES_PER_ROW an impression).
        """
        if key == "generate":
            return None
        d_vocab = self.full_vocab() - self.meta["sparse_feature_number"]
        common = self.meta["common_rows"]
        d_common = {s: FULL_COMMON_ROWS[s] - common[s] for s in ("train", "test")}
        d_rows = {s: FULL_ROWS[s] - self.rows(s) for s in ("train", "test")}
        if key == "convert":
            grow = d_vocab * CONVERT_BYTES_PER_KEY
            grow += sum(d_common.values()) * CONVERT_BYTES_PER_COMMON_ROW
        elif key.startswith("train"):
            grow = d_vocab * self.dim * 4 * TRAIN_TABLE_COPIES
            grow += d_common["train"] * self.width * 4
            grow += d_rows["train"] * TRAIN_BYTES_PER_ROW
        else:
            grow = d_vocab * self.dim * 4 * EVAL_TABLE_COPIES
            grow += d_common["test"] * self.width * 4
            grow += d_rows["test"] * EVAL_BYTES_PER_ROW
        return round(self.results[key]["rss_mb"] + grow / MB)

    def table(self) -> str:
        meta = self.meta
        lines = [
            f"Scale rehearsal at **{self.rows('train'):,} train / {self.rows('test'):,} test "
            f"impressions** (synthetic, default preset, seed {SEED}; "
            f"{sum(meta['common_rows'].values()):,} common-feature rows, vocabulary "
            f"{meta['sparse_feature_number']:,}), config_bigdata.yaml (batch {self.batch_size}), "
            f"{time.strftime('%Y-%m-%d')}; {benchmark.machine()}. Load average "
            f"{min(r['load'] for r in self.results.values()):.1f}–"
            f"{max(r['load'] for r in self.results.values()):.1f}.",
            "",
            "| stage | rows | input MB | wall s | rows/s | in-loop samples/s | peak RSS MB | "
            f"test {' / '.join(self.auc_names) or 'AUCs'} | full Ali-CCP: wall | "
            "full Ali-CCP: peak RSS MB |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        inputs = {
            "convert": self.raw_bytes,
            "train_dygraph": self.data_bytes("train"),
            "train_static": self.data_bytes("train"),
            "infer_inference": self.data_bytes("test"),
            "infer_dygraph": self.data_bytes("test"),
        }
        for key, what, split in STAGES:
            r = self.results.get(key)
            if r is None:
                continue
            rows = self.rows(split)
            size = inputs.get(key)
            loop = r.get("loop_rate")
            auc = " / ".join(f"{x:.4f}" for x in r["auc"]) if "auc" in r else ""
            rss = self.project_rss(key)
            lines.append(
                f"| {what} | {rows:,} | {_mb(size) if size else ''} | "
                f"{r['wall']:,.1f} | {rows / r['wall']:,.0f} | {f'{loop:,.0f}' if loop else ''} | "
                f"{r['rss_mb']:,} | {auc} | {self.project_wall(key, split)} | "
                f"{f'{rss:,}' if rss is not None else '—'} |"
            )
        lines += ["", self.disk_line(), "", self.projection_line()]
        return "\n".join(lines) + "\n"

    def data_bytes(self, split: str) -> int:
        return disk_bytes(os.path.join(self.data, f"{split}_data"))

    def disk_line(self) -> str:
        s = self.sizes
        peak = max(r["disk_peak"] for r in self.results.values())
        rows = self.rows("all")
        return (
            f"Disk: raw {_mb(s['raw'])} MB (the four files {_mb(self.raw_bytes)} MB, "
            f"{self.raw_bytes / rows:,.0f} B an impression; the rest the generator's truth "
            f"files), converted {_mb(s['converted'])} MB ({s['converted'] / rows:,.0f} B an "
            f"impression), users' layout cache {_mb(s['cache'])} MB, checkpoints of both "
            f"trainers {_mb(s['checkpoints'])} MB; peak of the work folder {_mb(peak)} MB "
            "(sampled every 0.5 s, the converter's temporary files included)."
        )

    def full_wall(self, key: str, split: str) -> float:
        full = sum(FULL_ROWS.values()) if split == "all" else FULL_ROWS[split]
        return self.results[key]["wall"] * full / self.rows(split)

    def projection_line(self) -> str:
        convert = self.full_wall("convert", "all")
        static = convert + self.full_wall("train_static", "train")
        static += self.full_wall("infer_inference", "test")
        dygraph = convert + self.full_wall("train_dygraph", "train")
        dygraph += self.full_wall("infer_dygraph", "test")
        share = self.rows("train") / FULL_ROWS["train"]
        return (
            f"Projection to the full Ali-CCP ({FULL_ROWS['train'] / 1e6:.1f}M train / "
            f"{FULL_ROWS['test'] / 1e6:.1f}M test impressions, ~{FULL_RAW_BYTES / 1e9:.0f} GB "
            f"raw; vocabulary taken as {self.full_vocab():,}, in proportion to the train rows): "
            f"raw files to test AUCs (conversion, static_trainer.py, static_infer.py) "
            f"**~{_duration(static)}**, with trainer.py and infer.py instead ~{_duration(dygraph)}. "
            f"Times scale linearly from this run's rows ({share:.2%} of the train split), "
            "start-up included."
        )


def _mb(size: float) -> str:
    return f"{size / MB:.1f}" if size < 10 * MB else f"{size / MB:,.0f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def main(args, argv) -> int:
    """`tools/benchmark.py --scale N`: run the rehearsal, print and save its table."""
    rehearsal = Rehearsal(args.scale, args.workdir)
    rehearsal.run()
    table = rehearsal.table()
    print(table)
    table_path = args.table or os.path.join(rehearsal.dir, "table.md")
    with open(table_path, "w") as f:
        f.write(table)
    results = {"results": rehearsal.results, "sizes": rehearsal.sizes, "meta": rehearsal.meta}
    with open(os.path.join(rehearsal.dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    if args.update_doc:
        benchmark.write_doc(table, argv, BEGIN, END)
    return 0
