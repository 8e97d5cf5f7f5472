"""Throughput benchmark of the ESMM recipe: reader, compute-only steps, end-to-end training and
inference, and two baselines, all in one run: PaddleRec's line-by-line Python reader feeding our
network, and PaddleRec's own recipe (`tools/paddlerec_recipe.py`: its reader, network and trainer).

    python tools/benchmark.py                       # 400k train rows, 3 runs each (~15 min)
    python tools/benchmark.py --rows 20000 --runs 1 # a quick look
    python tools/benchmark.py --update-doc          # also rewrite the table in doc/benchmarks.md
    python tools/benchmark.py --scale               # raw data to test AUCs at 10M (bench/scale.py)
    python tools/benchmark.py --profile --code OLD  # time per part of a step (bench/step_profile.py)
    python tools/benchmark.py --zoo --code OLD      # every model's compute-only rate, OLD and now
    python tools/benchmark.py --kernels             # paddle.matmul GFLOP/s per MKL kernel choice
    python tools/benchmark.py --before OLD          # also OLD's trainers in the same runs

Data comes from the project's synthetic generator (`datasets/ali-ccp/synthetic.py`, default
preset, seed 1: real-length Ali-CCP lines, ~1.5 KB each), written once into `--workdir`.
Every end-to-end figure is the wall time of a whole `tools/*.py` process (Paddle's import,
reading, one epoch, checkpoint), measured `--runs` times; the table gives the median and the
spread (min-max). "cold" runs start from an empty parsed-data cache, "warm" runs find it built.
Compute-only rates run the engine's own `train_step`/`predict` on batches already in memory, so
"end-to-end / compute" shows how much of the data pipeline is hidden behind compute. The load
average is recorded with every run: the machine may be shared, so compare medians.
"""

from __future__ import annotations

import argparse
import importlib
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


def zoo(name: str):
    """Module `paddle_rec_zoo.<name>` (e.g. "run.engines") of the package being measured. Probes
    of another checkout (`--code OLD`, `--before OLD`) import its package; before the package was
    grouped into subpackages (b265f2e and older) its modules sat at the top. Which layout is told
    by the folders, not by a failed import: the editable install of this repository would supply
    a module the older package lacks."""
    import paddle_rec_zoo

    if not os.path.isdir(os.path.join(paddle_rec_zoo.__path__[0], name.partition(".")[0])):
        name = {"data.dataset": "data"}.get(name, name.rpartition(".")[2])
    return importlib.import_module(f"paddle_rec_zoo.{name}")


cpu_math = zoo("run.cpu_math")  # imports no Paddle

# the repository: the package is installed from it in place (requirements.txt: `-e .`)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.join(ROOT, "tools")
MODEL_DIR = os.path.join(ROOT, "models", "multitask", "esmm")
CONFIG = os.path.join(MODEL_DIR, "config.yaml")
GENERATOR = os.path.join(ROOT, "datasets", "ali-ccp", "synthetic.py")
DOC = os.path.join(ROOT, "doc", "benchmarks.md")
TABLE_BEGIN = "<!-- benchmark table: begin (written by tools/benchmark.py --update-doc) -->"
TABLE_END = "<!-- benchmark table: end -->"
PROBE_TAG = "BENCH-RESULT "
MKL_ENV = cpu_math.MKL_ENV
VOCAB_BEGIN = (
    "<!-- vocabulary table: begin (written by tools/benchmark.py --vocab ... --update-doc) -->"
)
VOCAB_END = "<!-- vocabulary table: end -->"
QUALITY_BEGIN = (
    "<!-- quality table: begin (written by tools/benchmark.py --quality --update-doc) -->"
)
QUALITY_END = "<!-- quality table: end -->"
# --quality: the embedding optimizers compared on the benchmark data (dygraph, one epoch)
QUALITY = [
    ("dense Adam (the recipe before row-wise updates)", "{class: dense}"),
    ("lazy_adam, optimizer's learning rate (default)", "{class: lazy_adam}"),
    ("rowwise_adagrad, learning rate 0.05", "{class: rowwise_adagrad, learning_rate: 0.05}"),
    ("rowwise_adagrad, learning rate 0.1", "{class: rowwise_adagrad, learning_rate: 0.1}"),
    ("rowwise_adagrad, learning rate 0.2", "{class: rowwise_adagrad, learning_rate: 0.2}"),
    ("lazy_adam, learning rate 0.01", "{class: lazy_adam, learning_rate: 0.01}"),
]

# (key, what is measured, unit); the order of the table
MEASUREMENTS = [
    ("baseline_train", "baseline: PaddleRec-style line-by-line reader, dygraph training", "wall"),
    ("baseline_eval", "baseline: same reader, dygraph evaluation", "wall"),
    (
        "paddlerec_train",
        "PaddleRec's own ESMM recipe (reader, network, trainer), whole process",
        "wall",
    ),
    ("reader_cold", "reader: parse text + write cache (cold)", "probe"),
    ("reader_warm", "reader: memory-map cache + gather every shuffled batch (warm)", "probe"),
    ("compute_dygraph", "compute only: dygraph train_step on in-memory batches", "probe"),
    ("compute_static", "compute only: static train_step on in-memory batches", "probe"),
    ("train_dygraph_cold", "trainer.py, 1 epoch, cold cache", "wall"),
    ("train_dygraph_warm", "trainer.py, 1 epoch, warm cache", "wall"),
    ("train_static_cold", "static_trainer.py, 1 epoch, cold cache", "wall"),
    ("train_static_warm", "static_trainer.py, 1 epoch, warm cache", "wall"),
    # runner.cpu_math: what a user's own MKL setting adds, and what the automatic one bought
    ("train_dygraph_warm_mkl5", "trainer.py, warm, the user sets MKL_DEBUG_CPU_TYPE=5", "wall"),
    (
        "train_static_warm_mkl5",
        "static_trainer.py, warm, the user sets MKL_DEBUG_CPU_TYPE=5",
        "wall",
    ),
    ("train_dygraph_warm_generic", "trainer.py, warm, runner.cpu_math=default", "wall"),
    ("train_static_warm_generic", "static_trainer.py, warm, runner.cpu_math=default", "wall"),
    # --before DIR: the same tools from another checkout (e.g. before an optimisation)
    ("train_dygraph_before", "trainer.py of --before, warm (its own code and config)", "wall"),
    (
        "train_static_before",
        "static_trainer.py of --before, warm (its own code and config)",
        "wall",
    ),
    ("compute_inference", "compute only: Paddle Inference predict on in-memory batches", "probe"),
    ("infer_inference_cold", "static_infer.py use_inference, cold cache", "wall"),
    ("infer_inference_warm", "static_infer.py use_inference, warm cache", "wall"),
    ("infer_dygraph_warm", "infer.py (dygraph eval), warm cache", "wall"),
    # the same static checkpoint as ONNX (tools/export.py, untimed), through ONNX Runtime
    ("compute_onnx", "compute only: ONNX Runtime predict on in-memory batches", "probe"),
    ("infer_onnx_warm", "static_infer.py use_onnx, warm cache", "wall"),
]


# ----------------------------------------------------------------------------- set-up
def load_avg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import paddle

        paddle_version = paddle.__version__
    except ImportError:
        paddle_version = "not installed"
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, Paddle {paddle_version}"
    )


def generate(rows: int, workdir: str) -> dict:
    """Synthetic Ali-CCP in slot format (train: rows, test: rows/4), reused when present."""
    data = os.path.join(workdir, "data")
    meta_path = os.path.join(data, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("n_train") == rows and meta.get("seed") == 1:
            return meta
        shutil.rmtree(data)
    cmd = [sys.executable, GENERATOR, "--n", str(rows), "--seed", "1", "--out", data, "--quiet"]
    subprocess.run(cmd, check=True)
    with open(meta_path) as f:
        return json.load(f)


def overrides(args, meta: dict, save: str) -> list[str]:
    data = os.path.join(args.workdir, "data")
    return [
        f"runner.train_data_dir={os.path.join(data, 'train_data')}",
        f"runner.test_data_dir={os.path.join(data, 'test_data')}",
        f"runner.model_save_path={save}",
        f"runner.cache_dir={os.path.join(args.workdir, 'cache')}",
        "runner.epochs=1",
        "runner.infer_start_epoch=0",
        "runner.infer_end_epoch=1",
        f"runner.train_batch_size={args.batch_size}",
        f"runner.infer_batch_size={args.infer_batch_size}",
        "runner.print_interval=1000000",
        "runner.overwrite=True",
        f"hyper_parameters.sparse_feature_number={meta['sparse_feature_number']}",
        *([f"runner.cpu_threads={args.cpu_threads}"] if args.cpu_threads is not None else []),
    ]


# ----------------------------------------------------------------------------- probes
def _probe_setup(args, static: bool = False, model_dir: str = MODEL_DIR):
    """Config, reader and datasets as the CLIs build them (inside a probe process), from
    `model_dir`'s config.yaml."""
    runtime, load_config = zoo("run.runtime"), zoo("run.config").load_config
    load_model_module = zoo("run.model_loader").load_model_module
    reader_class = zoo("run.model_loader").reader_class

    adapter = load_model_module(model_dir, "static_model" if static else "dygraph_model")
    cls = adapter.StaticModel if static else adapter.DygraphModel
    config_path = os.path.join(model_dir, "config.yaml")
    config = load_config(config_path, args.opts, cls.hyper_parameters_class)
    reader = reader_class(config)(config)
    place = runtime.setup(config, static=static)
    return adapter, config, reader, place


def _dataset(config, reader, split: str):
    data = zoo("data.dataset")
    folder = getattr(config.runner, f"{split}_data_dir")
    return data.Dataset.load(data.list_data_files(folder, split), reader, config.runner.cache_dir)


def _in_memory_batches(dataset, batch_size: int, limit: int, shuffle: bool):
    """`limit` batches gathered up front (a small data set is cycled to reach `limit`)."""
    plan = dataset.batch_indices(batch_size, shuffle, 1, 0)[:limit]
    batches = [dataset.gather(idx) for idx in plan]
    return [batches[i % len(batches)] for i in range(limit)]


def _timed_steps(step, batches, warmup: int) -> float:
    """Samples per second of `step` over `batches` after `warmup` untimed steps."""
    for batch in batches[:warmup]:
        step(batch)
    start = time.perf_counter()
    n = 0
    for batch in batches[warmup:]:
        step(batch)
        n += len(batch.labels)
    return n / (time.perf_counter() - start)


def probe(args) -> dict:
    name = args.probe
    if name == "reader_cold" or name == "reader_warm":
        _, config, reader, _ = _probe_setup(args)
        start = time.perf_counter()
        dataset = _dataset(config, reader, "train")
        load_s = time.perf_counter() - start
        if name == "reader_cold":
            size = sum(os.path.getsize(f) for f in dataset.files)
            return {
                "rate": len(dataset) / load_s,
                "seconds": load_s,
                "mb_per_s": size / load_s / 1e6,
            }
        r = config.runner
        start = time.perf_counter()
        n = sum(len(b.labels) for b in dataset.batches(r.train_batch_size, True, 1, 0))
        return {"rate": n / (time.perf_counter() - start + load_s), "seconds": load_s}
    if name.startswith("compute_") and name not in ("compute_inference", "compute_onnx"):
        static = name == "compute_static"
        adapter, config, reader, place = _probe_setup(args, static)
        from paddle_rec_zoo.run import engines

        dataset = _dataset(config, reader, "train")
        batches = _in_memory_batches(dataset, config.runner.train_batch_size, args.steps, True)
        if static:
            engine = engines.StaticEngine(adapter, config, training=True, place=place)
        else:
            engine = engines.DygraphEngine(adapter, config, training=True)
        return {"rate": _timed_steps(engine.train_step, batches, warmup=10)}
    if name in ("compute_inference", "compute_onnx"):
        adapter, config, reader, _ = _probe_setup(args, static=True)
        from paddle_rec_zoo.run import inference_engine, onnx_engine

        dataset = _dataset(config, reader, "test")
        batches = _in_memory_batches(
            dataset, config.runner.infer_batch_size, args.steps // 4, False
        )
        spec = adapter.StaticModel(config, reader.label_names).spec
        predictor = (
            onnx_engine.OnnxEngine if name == "compute_onnx" else inference_engine.InferenceEngine
        )
        engine = predictor(spec, config)
        engine.load(os.path.join(config.runner.model_save_path, "0"))
        return {"rate": _timed_steps(engine.predict, batches, warmup=2)}
    if name == "kernels":
        return kernel_rates()
    if name in ("baseline_train", "baseline_eval"):
        return baseline(args, train=name == "baseline_train")
    if name == "auc_metrics":
        adapter, config, _, _ = _probe_setup(args)
        spec = adapter.DygraphModel.network.spec(config.hyper_parameters)
        auc = [m for m in spec.metrics if m.kind == "auc"]
        return {"metrics": [(m.name, m.title or m.name) for m in auc]}
    raise SystemExit(f"unknown probe {name}")


def baseline(args, train: bool) -> dict:
    """PaddleRec's approach: per-line Python parsing in an IterableDataset, each batch fed to
    the same engine step as our tools' (the dygraph `train_step`, or `predict`), so the ratio
    to them is what our data path adds; the row batch is made on the training thread (this
    reader has no data thread to hide it in)."""
    import numpy as np

    adapter, config, reader, _ = _probe_setup(args)
    from paddle_rec_zoo.bench.baseline_reader import feeds, loader
    from paddle_rec_zoo.data.dataset import list_data_files
    from paddle_rec_zoo.run.engines import DygraphEngine
    from paddle_rec_zoo.schema import Batch

    hp = config.hyper_parameters
    split = "train" if train else "test"
    files = list_data_files(getattr(config.runner, f"{split}_data_dir"), split)
    engine = DygraphEngine(adapter, config, training=train, label_names=reader.label_names)
    step = engine.train_step if train else engine.predict
    n_fields = len(hp.fields)
    start = time.perf_counter()
    n = 0
    for batch in loader(files, list(hp.fields), hp.max_len, config.runner.train_batch_size):
        ids, columns = feeds(batch, n_fields)  # a line's label columns: the reader's order
        labels = np.concatenate([column.numpy() for column in columns], axis=1)
        step(Batch(ids.numpy(), labels, np.arange(len(labels))))
        n += len(labels)
    return {"rate": n / (time.perf_counter() - start), "rows": n}


# ----------------------------------------------------------------------------- --kernels
KERNEL_SHAPES = [(1024, 276, 256), (1024, 256, 64), (2048, 2048, 2048)]  # a tower's layers; large
# measured: MKL's own choice (None), then every kernel choice runner.cpu_math can make
KERNEL_CHOICES = [None, *cpu_math.KERNELS]
KERNELS_BEGIN = (
    "<!-- kernels table: begin (written by tools/benchmark.py --kernels --update-doc) -->"
)
KERNELS_END = "<!-- kernels table: end -->"


def kernel_rates(reps: int = 20) -> dict:
    """GFLOP/s of one-thread `paddle.matmul` per shape, with whatever MKL_DEBUG_CPU_TYPE this
    process was started with (no runner.cpu_math here), and of numpy's own BLAS."""
    import numpy as np
    import paddle

    paddle.set_device("cpu")
    paddle.base.core.set_num_threads(1)
    out = {}
    for m, k, n in KERNEL_SHAPES:
        a, b = paddle.randn([m, k]), paddle.randn([k, n])
        x, y = a.numpy(), b.numpy()
        products = {"paddle": (paddle.matmul, a, b), "numpy": (np.matmul, x, y)}
        for name, (product, left, right) in products.items():
            for _ in range(3):
                product(left, right)
            start = time.perf_counter()
            for _ in range(reps):
                product(left, right)
            seconds = (time.perf_counter() - start) / reps
            out[f"{name} {m}x{k}@{k}x{n}"] = 2 * m * k * n / seconds / 1e9
        ref = x.astype(np.float64) @ y.astype(np.float64)
        err = np.abs(paddle.matmul(a, b).numpy() - ref).max() / np.abs(ref).max()
        out[f"error {m}x{k}@{k}x{n}"] = float(err)
    return {"rate": 0.0, "gflops": out}


def run_kernels(args) -> str:
    """The --kernels table: every MKL_DEBUG_CPU_TYPE the processor supports, median of runs."""
    cpu = cpu_math.read_cpu()
    rows = []
    for kind in KERNEL_CHOICES:
        if kind is None:
            value, label = None, "default"
        elif cpu_math.supports(cpu, kind):
            value = cpu_math.KERNELS[kind][0]
            label = f"{value} ({cpu_math.KERNEL_NAMES[kind]})"
        else:
            continue  # would stop with SIGILL
        runs = []
        for run in range(args.runs):
            cmd = [sys.executable, "-m", __spec__.name, "--probe", "kernels"]
            log = os.path.join(args.workdir, f"kernels-{label.split()[0]}-{run}.log")
            _, _, text = run_process(cmd, log, {MKL_ENV: value} if value else None)
            runs.append(probe_result(text)["gflops"])
        rows.append((label, {k: statistics.median(r[k] for r in runs) for k in runs[0]}))
    shapes = [f"{m}x{k}@{k}x{n}" for m, k, n in KERNEL_SHAPES]
    lines = [
        f"`paddle.matmul`, one thread, GFLOP/s, median of {args.runs} process(es) per row "
        f"(largest relative error against float64 in brackets); {time.strftime('%Y-%m-%d')}; "
        f"{machine()}.",
        "",
        "| MKL_DEBUG_CPU_TYPE | " + " | ".join(shapes) + " |",
        "|---|" + "---|" * len(shapes),
    ]
    for label, r in rows:
        cells = [f"{r['paddle ' + sh]:.1f} ({r['error ' + sh]:.0e})" for sh in shapes]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    numpy_row = [f"{rows[0][1]['numpy ' + sh]:.1f}" for sh in shapes]
    lines.append(
        "| numpy's own BLAS (its default threads), for reference | " + " | ".join(numpy_row) + " |"
    )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- running
def run_process(
    cmd: list[str], log_path: str, env_extra=None, cwd: str = ROOT
) -> tuple[float, int, str]:
    """Run `cmd` with `env_extra` in its environment; returns (wall seconds, peak RSS in MB, its
    output). Raises on failure."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", GLOG_minloglevel="2")
    # every row measures the tools' own choice of MKL kernels, unless env_extra sets one
    for name in (MKL_ENV, cpu_math.OWN_ENV):
        env.pop(name, None)
    env.update(env_extra or {})
    with open(log_path, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    with open(log_path) as f:
        text = f.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text[-3000:]}")
    return wall, int(usage.ru_maxrss / 1024), text


def _last_number(pattern: str, text: str) -> float | None:
    found = re.findall(pattern, text)
    return float(found[-1].replace(",", "")) if found else None


def loop_rate(text: str, split: str) -> float | None:
    """The samples/s a tool's own log gives for its loop: a trainer's epoch (`split` train), an
    evaluation with its reading and metrics (`split` test)."""
    if split == "train":
        return _last_number(r"done in [\d.]+s \(([\d,]+) samples/s", text)
    return _last_number(r"; ([\d,]+) samples/s\)", text)


def probe_result(text: str) -> dict:
    """The result a probe process printed (its last `PROBE_TAG` line)."""
    line = [x for x in text.splitlines() if x.startswith(PROBE_TAG)][-1]
    return json.loads(line[len(PROBE_TAG) :])


def write_doc(table: str, argv: list[str], begin: str, end: str):
    """`update_doc` with the command that made `table`: this run's arguments but --update-doc."""
    shown = [a for a in argv if a != "--update-doc"]
    update_doc(table, " ".join(["python tools/benchmark.py", *shown]), DOC, begin, end)


class Bench:
    """Runs the measurements, each in a process of its own, and keeps their results."""

    def __init__(self, args, meta: dict):
        self.args = args
        self.meta = meta
        self.results: dict[str, list[dict]] = {}
        self.auc_metrics: list[tuple[str, str]] = []  # --quality: the model's (name, title)
        self.logs = os.path.join(args.workdir, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.rows = {
            "train": meta["splits"]["train"]["rows"],
            "test": meta["splits"]["test"]["rows"],
        }

    def opts(self, save: str) -> list[str]:
        return overrides(self.args, self.meta, os.path.join(self.args.workdir, save))

    def clear_cache(self):
        shutil.rmtree(os.path.join(self.args.workdir, "cache"), ignore_errors=True)

    def record(self, key: str, result: dict):
        self.results.setdefault(key, []).append(result)
        rate = result.get("rate")
        print(
            f"  {key}: {rate:,.0f} samples/s"
            + (f", wall {result['wall']:.1f}s" if "wall" in result else "")
            + f" (load {result['load']:.1f})",
            flush=True,
        )

    def run_probe(self, key: str, save: str, run: int, extra=()):
        """Run probe `key` (or the probe before the `@` of `key`) with `extra` config overrides."""
        load = load_avg()
        wall, rss, result = self.probe_process(key, save, run, extra)
        result.update(load=max(load, load_avg()), rss_mb=rss, process_wall=wall)
        if key.startswith("baseline"):  # whole-process rate, as for the CLIs
            split = "train" if key == "baseline_train" else "test"
            result["loop_rate"] = result["rate"]
            result["rate"] = self.rows[split] / wall
            result["wall"] = wall
        self.record(key, result)

    def probe_process(self, key: str, save: str, run: int, extra=()) -> tuple[float, int, dict]:
        """(wall seconds, peak RSS MB, result) of a process running the probe of `key`."""
        log_path = os.path.join(self.logs, f"{key}-{run}.log")
        cmd = [sys.executable, "-m", __spec__.name, "--probe", key.split("@")[0]]
        cmd += ["--steps", str(self.args.steps), "--opts", *self.opts(save), *extra]
        wall, rss, text = run_process(cmd, log_path)
        return wall, rss, probe_result(text)

    def run_tool(
        self, key: str, tool: str, save: str, run: int, extra=(), env=None, code: str = ROOT
    ):
        """`code`: the checkout whose tools, package and ESMM config run (its own process
        environment: no MKL setting of ours, its package first on the path)."""
        log_path = os.path.join(self.logs, f"{key}-{run}.log")
        load = load_avg()
        config = os.path.join(code, os.path.relpath(CONFIG, ROOT))
        cmd = [sys.executable, os.path.join(code, "tools", f"{tool}.py"), "-m", config]
        cmd += ["-o", *self.opts(save), *extra]
        if code != ROOT:
            env = {**(env or {}), "PYTHONPATH": code}
        wall, rss, text = run_process(cmd, log_path, env_extra=env, cwd=code)
        self.record_process(key, "train" if "trainer" in tool else "test", load, wall, rss, text)

    def record_process(self, key: str, split: str, load: float, wall: float, rss: int, text):
        """Record a whole process over `split`'s rows: its rate, and the rate its log gives."""
        result = {"wall": wall, "rate": self.rows[split] / wall, "rss_mb": rss}
        result["load"] = max(load, load_avg())
        result["loop_rate"] = loop_rate(text, split)
        self.record(key, result)

    def run_paddlerec(self, run: int):
        """tools/paddlerec_recipe.py on the training files, batch size and math threads of the
        tools, in an environment without our MKL settings (PaddleRec's users do not have them)."""
        a = self.args
        key = "paddlerec_train"
        threads = a.cpu_threads
        if threads is None:
            from paddle_rec_zoo.run.config import RunnerConfig

            threads = RunnerConfig.cpu_threads
        cmd = [sys.executable, os.path.join(TOOLS, "paddlerec_recipe.py")]
        cmd += ["--data", os.path.join(a.workdir, "data", "train_data")]
        cmd += ["--batch-size", str(a.batch_size), "--epochs", "1"]
        cmd += ["--save", os.path.join(a.workdir, "out-paddlerec")]
        cmd += ["--sparse-feature-number", str(self.meta["sparse_feature_number"])]
        cmd += ["--cpu-threads", str(threads)]
        load = load_avg()
        log_path = os.path.join(self.logs, f"{key}-{run}.log")
        wall, rss, text = run_process(cmd, log_path)  # no MKL setting
        self.record_process(key, "train", load, wall, rss, text)

    def run_all(self, only: set[str] | None):
        a = self.args

        def want(key):
            return only is None or key in only

        for run in range(a.runs):
            print(f"run {run + 1}/{a.runs}", flush=True)
            if want("baseline_train"):
                self.run_probe("baseline_train", "out-baseline", run)
            if want("baseline_eval"):
                self.run_probe("baseline_eval", "out-baseline", run)
            if want("paddlerec_train"):
                self.run_paddlerec(run)
            if want("reader_cold"):
                self.clear_cache()
                self.run_probe("reader_cold", "out-reader", run)
            if want("reader_warm"):
                self.run_probe("reader_warm", "out-reader", run)
            for engine, tool in (("dygraph", "trainer"), ("static", "static_trainer")):
                if want(f"compute_{engine}"):
                    self.run_probe(f"compute_{engine}", f"out-compute-{engine}", run)
                if want(f"train_{engine}_cold"):
                    self.clear_cache()
                    self.run_tool(f"train_{engine}_cold", tool, f"out-{engine}", run)
                if want(f"train_{engine}_warm"):
                    self.run_tool(f"train_{engine}_warm", tool, f"out-{engine}", run)
                save = f"out-{engine}-variants"
                if want(f"train_{engine}_warm_mkl5"):
                    mkl5 = {MKL_ENV: "5"}
                    self.run_tool(f"train_{engine}_warm_mkl5", tool, save, run, env=mkl5)
                if want(f"train_{engine}_warm_generic"):
                    generic = ["runner.cpu_math=default"]
                    self.run_tool(f"train_{engine}_warm_generic", tool, save, run, generic)
                if a.before and want(f"train_{engine}_before"):
                    self.run_tool(f"train_{engine}_before", tool, save, run, code=a.before)
            infer = ["runner.use_inference=True"]
            if want("compute_inference"):
                self.run_probe("compute_inference", "out-static", run)
            if want("infer_inference_cold"):
                self.clear_cache()
                self.run_tool("infer_inference_cold", "static_infer", "out-static", run, infer)
            if want("infer_inference_warm"):
                self.run_tool("infer_inference_warm", "static_infer", "out-static", run, infer)
            if want("infer_dygraph_warm"):
                self.run_tool("infer_dygraph_warm", "infer", "out-dygraph", run)
            if want("compute_onnx") or want("infer_onnx_warm"):
                self.export_onnx("out-static")
            if want("compute_onnx"):
                self.run_probe("compute_onnx", "out-static", run)
            if want("infer_onnx_warm"):
                onnx = ["runner.use_onnx=True"]
                self.run_tool("infer_onnx_warm", "static_infer", "out-static", run, onnx)

    def export_onnx(self, save: str):
        """tools/export.py on the static run's epoch 0, once (untimed: a deployment step)."""
        if os.path.exists(os.path.join(self.args.workdir, save, "0", "inference.onnx")):
            return
        cmd = [sys.executable, os.path.join(TOOLS, "export.py"), "-m", CONFIG]
        cmd += ["-o", *self.opts(save), "runner.infer_start_epoch=0"]
        run_process(cmd, os.path.join(self.logs, "export-onnx.log"))

    def run_vocab(self, sizes: list[int]):
        """Compute-only and whole-process training per table size, baseline in the same run."""
        for run in range(self.args.runs):
            print(f"run {run + 1}/{self.args.runs}", flush=True)
            self.run_probe("baseline_train", "out-baseline", run)
            for rows in sizes:
                extra = [f"hyper_parameters.sparse_feature_number={rows}"]
                for engine, tool in (("dygraph", "trainer"), ("static", "static_trainer")):
                    save = f"out-{engine}-{rows}"
                    self.run_probe(f"compute_{engine}@{rows}", save, run, extra)
                    self.run_tool(f"train_{engine}_warm@{rows}", tool, save, run, extra)
                    shutil.rmtree(os.path.join(self.args.workdir, save), ignore_errors=True)

    def run_quality(self):
        """Test AUCs after one epoch per embedding optimizer (seeded: one run each; the rates
        include the evaluation and are not a speed measurement). The AUCs are those the model
        declares (asked of a probe: this process imports no Paddle)."""
        self.auc_metrics = self.probe_process("auc_metrics", "out-quality-0", 0)[2]["metrics"]
        for i, (_, setting) in enumerate(QUALITY):
            save = os.path.join(self.args.workdir, f"out-quality-{i}")
            extra = [f"hyper_parameters.embedding_optimizer={setting}"]
            extra += ["runner.evaluate_each_epoch=True"]
            self.run_tool(f"quality@{i}", "trainer", f"out-quality-{i}", 0, extra)
            with open(os.path.join(save, "metrics.jsonl")) as f:
                test = [json.loads(x) for x in f if '"split": "test"' in x][-1]
            self.results[f"quality@{i}"][-1]["test"] = test

    def heading(self) -> str:
        """What was measured, how and where: the first line of every table."""
        a = self.args
        return (
            f"{self.rows['train']:,} train / {self.rows['test']:,} test rows "
            f"({self.meta.get('preset', 'default')} preset, seed 1), batch {a.batch_size}, "
            f"{a.runs} run(s) each, runner.cpu_threads="
            f"{a.cpu_threads if a.cpu_threads is not None else 'default'}, "
            f"{time.strftime('%Y-%m-%d')}; {machine()}."
        )

    def median(self, key: str, field: str = "rate") -> float | None:
        values = [r[field] for r in self.results.get(key, []) if r.get(field) is not None]
        return statistics.median(values) if values else None


# ----------------------------------------------------------------------------- tables


def speed_table(bench: Bench) -> str:
    """Every measurement: its rate, spread, wall time, in-loop rate, and against the baselines."""
    a = bench.args
    base_train = bench.median("baseline_train")
    base_eval = bench.median("baseline_eval")
    base_recipe = bench.median("paddlerec_train")
    lines = [
        bench.heading() + f" Inference batch {a.infer_batch_size}.",
        "",
        "| measurement | samples/s (median) | spread (min–max) | wall s | in-loop samples/s | "
        "vs baseline | vs PaddleRec recipe | peak RSS MB | load avg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, what, _ in MEASUREMENTS:
        runs = bench.results.get(key)
        if not runs:
            continue
        rates = [r["rate"] for r in runs]
        ratio = ""
        base = base_eval if "infer" in key or key == "baseline_eval" else base_train
        if base and not key.startswith(("reader", "compute")):
            ratio = f"{statistics.median(rates) / base:.1f}x"
        recipe = ""  # training rows only: the recipe trains, it does not evaluate
        if base_recipe and key.startswith(("train", "baseline_train", "paddlerec")):
            recipe = f"{statistics.median(rates) / base_recipe:.1f}x"
        loop = bench.median(key, "loop_rate")
        compute = bench.median("compute_" + key.split("_")[1]) if key.startswith("train") else None
        loop_text = f"{loop:,.0f}" if loop else ""
        if loop and compute:
            loop_text += f" ({loop / compute:.0%} of compute)"
        wall = bench.median(key, "wall")
        lines.append(
            f"| {what} | {statistics.median(rates):,.0f} | "
            f"{min(rates):,.0f}–{max(rates):,.0f} | {f'{wall:.1f}' if wall else ''} | "
            f"{loop_text} | {ratio} | {recipe} | "
            f"{max(r['rss_mb'] for r in runs):,} | "
            f"{min(r['load'] for r in runs):.1f}–{max(r['load'] for r in runs):.1f} |"
        )
    return "\n".join(lines) + "\n"


def vocab_table(bench: Bench, sizes: list[int], dim: int) -> str:
    """Compute-only and whole-process rates per table size, against the smallest table and
    the baseline."""
    base = bench.median("baseline_train")
    lines = [
        bench.heading(),
        "",
        "| table rows | engine | compute-only samples/s (median, min–max) | vs smallest "
        "table | trainer, whole process samples/s (median, min–max) | vs baseline | "
        "peak RSS MB | table + slots MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for engine in ("dygraph", "static"):
        first = bench.median(f"compute_{engine}@{sizes[0]}")
        for rows in sizes:
            compute = bench.results.get(f"compute_{engine}@{rows}", [])
            whole = bench.results.get(f"train_{engine}_warm@{rows}", [])
            if not compute or not whole:
                continue
            c = [r["rate"] for r in compute]
            w = [r["rate"] for r in whole]
            state_mb = rows * dim * 4 * 3 / 2**20  # table + lazy Adam's two moments
            lines.append(
                f"| {rows:,} | {engine} | {statistics.median(c):,.0f} ({min(c):,.0f}–"
                f"{max(c):,.0f}) | {statistics.median(c) / first:.0%} | "
                f"{statistics.median(w):,.0f} ({min(w):,.0f}–{max(w):,.0f}) | "
                f"{statistics.median(w) / base:.1f}x | "
                f"{max(r['rss_mb'] for r in whole):,} | {state_mb:,.0f} |"
            )
    lines.append(
        f"\nBaseline (PaddleRec-style line-by-line reader, dygraph, whole process): "
        f"{base:,.0f} samples/s (median). Load average during the runs: "
        f"{min(r['load'] for v in bench.results.values() for r in v):.1f}–"
        f"{max(r['load'] for v in bench.results.values() for r in v):.1f}."
    )
    return "\n".join(lines) + "\n"


def quality_table(bench: Bench) -> str:
    """Per embedding optimizer, the test value of each AUC the model declares."""
    metrics = bench.auc_metrics  # [(name, title)]
    lines = [
        bench.heading(),
        "",
        "| embedding optimizer | " + " | ".join(f"test {title}" for _, title in metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for i, (what, _) in enumerate(QUALITY):
        (r,) = bench.results[f"quality@{i}"]
        values = " | ".join(f"{r['test'][name]:.4f}" for name, _ in metrics)
        lines.append(f"| {what} | {values} |")
    return "\n".join(lines) + "\n"


def update_doc(
    table: str, command: str, path: str = DOC, begin: str = TABLE_BEGIN, end: str = TABLE_END
):
    """Replace the table between the markers in doc/benchmarks.md (other sections untouched)."""
    block = f"{begin}\nCommand: `{command}`\n\n{table}{end}"
    text = "# Benchmarks\n\n"
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=400_000, help="train rows (test: rows / 4)")
    parser.add_argument("--runs", type=int, default=3, help="runs of every measurement")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--infer-batch-size", type=int, default=8192)
    parser.add_argument(
        "--cpu-threads",
        type=int,
        help="runner.cpu_threads for every measurement, the baseline included (default: config)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        help="batches of compute-only probes (default 200; --profile and --zoo: 100)",
    )
    parser.add_argument(
        "--workdir", default=os.path.join(tempfile.gettempdir(), "paddle-rec-bench")
    )
    parser.add_argument("--only", nargs="+", metavar="KEY", help="run only these measurements")
    parser.add_argument(
        "--before",
        metavar="DIR",
        help="also run trainer.py and static_trainer.py of another checkout (e.g. a git worktree "
        "of an older commit), with its own package and ESMM config, in the same runs",
    )
    parser.add_argument(
        "--vocab",
        nargs="+",
        type=int,
        metavar="ROWS",
        help="instead: the table-size series (e.g. 300000 3000000 10000000 30000000): "
        "compute-only and whole-process training per size, both engines, and the baseline",
    )
    parser.add_argument(
        "--quality",
        action="store_true",
        help="instead: test AUCs after one epoch with each embedding optimizer",
    )
    parser.add_argument(
        "--scale",
        type=int,
        nargs="?",
        const=10_000_000,
        metavar="N",
        help="instead: the scale rehearsal at N train impressions (default 10M), raw data to "
        "test AUCs, and its projection to the full Ali-CCP (paddle_rec_zoo/bench/scale.py)",
    )
    parser.add_argument(
        "--kernels",
        action="store_true",
        help="instead: paddle.matmul GFLOP/s with each MKL kernel choice runner.cpu_math can make",
    )
    parser.add_argument("--table", help="write the Markdown table here (default WORKDIR/table.md)")
    parser.add_argument("--update-doc", action="store_true", help=f"rewrite the table in {DOC}")
    from paddle_rec_zoo.bench import step_profile as bench_profile

    bench_profile.add_arguments(parser)
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--opts", nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    argv = argv if argv is not None else sys.argv[1:]
    if args.steps is None:
        args.steps = 100 if args.profile or args.zoo else 200
    if args.profile or args.zoo:
        return bench_profile.main(args, argv)
    if args.probe:
        result = probe(args)
        print(PROBE_TAG + json.dumps(result), flush=True)
        return 0
    if args.kernels:
        os.makedirs(args.workdir, exist_ok=True)
        table = run_kernels(args)
        print(table)
        if args.update_doc:
            write_doc(table, argv, KERNELS_BEGIN, KERNELS_END)
        return 0
    if args.scale:
        from paddle_rec_zoo.bench import scale as bench_scale

        return bench_scale.main(args, argv)
    keys = {k for k, _, _ in MEASUREMENTS}
    if args.only and not set(args.only) <= keys:
        parser.error(f"--only: unknown {sorted(set(args.only) - keys)}; choose from {sorted(keys)}")
    os.makedirs(args.workdir, exist_ok=True)
    print(f"data: {args.rows:,} train rows in {args.workdir}/data", flush=True)
    meta = generate(args.rows, args.workdir)
    bench = Bench(args, meta)
    begin, end = TABLE_BEGIN, TABLE_END
    if args.vocab:
        bench.run_vocab(args.vocab)
        table = vocab_table(bench, args.vocab, dim=12)
        begin, end = VOCAB_BEGIN, VOCAB_END
    elif args.quality:
        bench.run_quality()
        table = quality_table(bench)
        begin, end = QUALITY_BEGIN, QUALITY_END
    else:
        bench.run_all(set(args.only) if args.only else None)
        table = speed_table(bench)
    print(table)
    table_path = args.table or os.path.join(args.workdir, "table.md")
    with open(table_path, "w") as f:
        f.write(table)
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump(bench.results, f, indent=1)
    if args.update_doc:
        write_doc(table, argv, begin, end)
    return 0


if __name__ == "__main__":
    sys.exit(main())
