"""Step profile of ESMM's training step, and the zoo's compute-only throughput, before and after a
change. Run through `tools/benchmark.py`:

    python tools/benchmark.py --profile                      # this code: ESMM, both engines
    python tools/benchmark.py --profile --code OLD           # OLD (a checkout) and this code
    python tools/benchmark.py --zoo --code OLD [NEW]         # every model's samples/s, OLD vs NEW
    python tools/benchmark.py --profile --code OLD --update-doc   # also rewrite the doc's tables

`--code OLD [NEW]` names source trees (git checkouts of this project; NEW defaults to this one):
each probe runs as its own process with `PYTHONPATH=DIR` and DIR's own model folder, so one
command measures the code before and after, interleaved run by run. Probes run without
`MKL_DEBUG_CPU_TYPE` (what users have; the new code's `runner.cpu_math` sets it itself) unless
`--env KEY=VALUE` asks for it. The probes use only engine APIs both trees have (`train_step`,
`spec`, `adapter`; `prepare` where it exists).

**--profile**: per engine, ESMM's `config.yaml` on the benchmark data (the overrides of
`benchmark.overrides`, batch `--batch-size`) trains on in-memory batches (prepared by
`engine.prepare` where the engine has it, as the data thread does), each step followed by the
loop's running-AUC update (`TrainMetrics.update`). After `WARMUP` steps, `--steps` steps are timed
without the profiler (samples/s), then the same steps run under `paddle.profiler` (CPU), whose
chrome trace is cut into the parts of `PARTS`:

- host regions (exact: the wall time of a Python region, everything in it): `RecordEvent`s the
  probe wraps around the engine's parts. Dygraph: feeding (`adapter.create_feeds`), the forward
  of each `FeatureInput` (lookup & pooling) and of the towers (the network's other direct
  sublayers), the rest of the network's forward and the loss (`adapter.create_loss`), the dense
  optimizer (`optimizer.step`, `clear_grad`), the row-wise update (`row_optimizer.step`); both
  engines: the running AUCs, and feeding of the static engine (`adapter.feed`, the Python side).
- op events outside host regions (the dygraph backward pass; everything inside the static
  executor): `op_part`, by the op's name (`NAMED_OPS`, `OPTIMIZER_OPS`, `SMALL_OPS`) and, for a
  name that could belong to several parts (add, multiply, reshape, scale, gather, sum, ...), by
  its position in the step: the forward pass runs input, towers, head in order and the backward
  pass the reverse, so an op before the towers' first matrix product of its pass (after their
  last, in the backward pass) is lookup & pooling, and so on (`position_part`).
- Python/framework overhead: the step's wall time minus all of the above.

The data thread's work (`engine.prepare`, the row batch) is timed per batch on its own, outside
the step. The profiler itself slows the step (an event per op): the table gives the unprofiled
step beside the profiled one.

**--zoo**: every `models/multitask/*/config.yaml` of each tree, overridden like ESMM's, both
engines: `benchmark._timed_steps(engine.train_step)` on prepared in-memory batches.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

try:  # its generate(), overrides(), probes' helpers, run_process(), update_doc()
    from paddle_rec_zoo.bench import benchmark
except ModuleNotFoundError:  # a probe (this file run by path) of a checkout before bench/ existed
    import benchmark

# paddle_rec_zoo.run.runtime.SERIAL_FLAG; importing runtime would load Paddle into the orchestrator,
# whose memory its children's peak RSS would then include
SERIAL_FLAG = "FLAGS_new_executor_serial_run"

ROOT = benchmark.ROOT
HERE = os.path.abspath(__file__)
WARMUP = 20
ENGINES = ("dygraph", "static")
PROFILE_BEGIN = (
    "<!-- profile table: begin (written by tools/benchmark.py --profile ... --update-doc) -->"
)
PROFILE_END = "<!-- profile table: end -->"
ZOO_BEGIN = "<!-- zoo table: begin (written by tools/benchmark.py --zoo ... --update-doc) -->"
ZOO_END = "<!-- zoo table: end -->"

# (key, what the row holds); the order of the table
PARTS = [
    ("feeding", "feeding: batch arrays to tensors / feed dict"),
    ("lookup_fwd", "lookup & pooling, forward"),
    ("towers_fwd", "towers, forward"),
    ("loss_fwd", "loss & outputs, forward"),
    ("loss_bwd", "loss & outputs, backward"),
    ("towers_bwd", "towers, backward"),
    ("lookup_bwd", "lookup & pooling, backward"),
    ("optimizer", "dense optimizer (Adam)"),
    ("row_update", "row-wise update (embedding rows and their slots)"),
    ("small_ops", "other small ops (constants, shapes, fetches, gradient accumulation)"),
    ("metrics", "metrics: running AUCs (TrainMetrics.update)"),
    ("overhead", "Python/framework overhead (the rest of the step)"),
]
PART_NAMES = dict(PARTS)
REGION = "part:"  # RecordEvent names of the host regions: part:<key>
STEP = "step"  # RecordEvent around one step and its metrics

# Ops that always belong to one part, by their forward name: a forward pass's `<name>`, a
# backward pass's `<name>_grad`; a `_grad` entry holds for the gradient only. Other names are
# placed by position (`position_part`), as are forward names met in a backward pass (the static
# program's gradient sums, add_n).
NAMED_OPS = {
    "embedding": "lookup",
    "add_n": "lookup",  # the slot-by-slot pooling (dygraph: add_n_grad)
    "argsort": "lookup",  # 60f4341's unique ids inside the step (sparse.unique_ids)
    "cumsum": "lookup",
    "masked_select": "lookup",
    "matmul": "towers",
    "relu": "towers",
    "unsqueeze_grad": "towers",  # the bias of layers.Linear's ones @ b (forward: also masks)
    "sigmoid": "loss",
    "logsigmoid": "loss",
    "sigmoid_cross_entropy_with_logits": "loss",
    "exp": "loss",
    "log": "loss",
    "clip": "loss",
    "mean": "loss",
    "mean_all": "loss",
}
OPTIMIZER_OPS = {"adam", "adamw", "sgd", "momentum", "adagrad", "rmsprop", "lamb", "merged_adam"}
# constants, shapes and bookkeeping: wherever they run
SMALL_OPS = {
    "full",
    "full_like",
    "full_int_array",
    "full_with_tensor",
    "assign_value",
    "shape",
    "shape64",
    "slice",
    "stack",
    "fetch",
    "feed",
    "data",
    "builtin_combine",
    "builtin_split",
    "grad_accumulation",
}


# ----------------------------------------------------------------------------- attribution
def op_name(event_name: str) -> str:
    """An op's name from its trace event, the same in both engines: `matmul dygraph[1.2 ms]`
    and `pd_op.matmul` -> matmul; `Global_MatmulGradNode` and `pd_op.matmul_grad` ->
    matmul_grad; `Global_AddNGradNodeFinal` -> add_n_grad; in-place `relu_grad_` -> relu_grad;
    `Global_GradNodeAccumulation` (a leaf's gradient) -> grad_accumulation."""
    name = re.sub(r"\[[^\]]*\]$", "", event_name).strip()
    name = name.removesuffix(" dygraph").removeprefix("pd_op.").removesuffix("_instruction")
    if name == "Global_GradNodeAccumulation":
        return "grad_accumulation"
    node = re.fullmatch(r"Global_(\w+?)GradNode(?:Final)?", name)
    if node:
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", node.group(1)).lower() + "_grad"
    return name.rstrip("_")


def is_grad(name: str) -> bool:
    return name.endswith("_grad")


def position_part(phase: str, where: str) -> str:
    """The part of an op by where it runs in its pass: `where` is before, within or after the
    towers (the span from the pass's first to its last matrix product)."""
    if phase == "forward":
        return {"before": "lookup_fwd", "within": "towers_fwd", "after": "loss_fwd"}[where]
    return {"before": "loss_bwd", "within": "towers_bwd", "after": "lookup_bwd"}[where]


def op_part(name: str, phase: str, where: str | None) -> str:
    """The part of an op outside host regions: `phase` forward, backward or update (the ops
    from the first optimizer op on); `where` its position (`position_part`), None when the
    pass has no matrix product."""
    if name in SMALL_OPS:
        return "small_ops"
    if phase == "update":
        return "optimizer" if name in OPTIMIZER_OPS else "row_update"
    if phase == "forward":
        named = None if is_grad(name) else NAMED_OPS.get(name)
    elif is_grad(name):
        named = NAMED_OPS.get(name) or NAMED_OPS.get(name.removesuffix("_grad"))
    else:
        named = None
    if named is not None:
        return f"{named}_{'fwd' if phase == 'forward' else 'bwd'}"
    if where is None:
        return "small_ops"
    return position_part(phase, where)


def _phases(names: list[str]) -> list[str]:
    """Each op's pass in program order: forward until the first gradient op, backward until the
    first optimizer op, then update."""
    phase, out = "forward", []
    for name in names:
        if phase == "forward" and is_grad(name):
            phase = "backward"
        if phase != "update" and name in OPTIMIZER_OPS:
            phase = "update"
        out.append(phase)
    return out


def _positions(names: list[str], phases: list[str]) -> list[str | None]:
    """before / within / after the span of matrix products of the op's own pass."""
    anchor = {"forward": "matmul", "backward": "matmul_grad"}
    first, last = {}, {}
    for i, (name, phase) in enumerate(zip(names, phases, strict=True)):
        if anchor.get(phase) == name:
            first.setdefault(phase, i)
            last[phase] = i
    out = []
    for i, phase in enumerate(phases):
        if phase not in first:
            out.append(None)
        elif i < first[phase]:
            out.append("before")
        elif i <= last[phase]:
            out.append("within")
        else:
            out.append("after")
    return out


def _base(event_name: str) -> str:
    return re.sub(r"\[[^\]]*\]$", "", event_name).strip()


def _inside(e: dict, outer: dict) -> bool:
    return outer["ts"] <= e["ts"] and e["ts"] + e["dur"] <= outer["ts"] + outer["dur"] + 1e-3


def _top_level(events: list[dict]) -> list[dict]:
    """Events not nested in another of the list (per thread), in time order."""
    kept, open_by_tid = [], {}
    for e in sorted(events, key=lambda e: (e["ts"], -e["dur"])):
        outer = open_by_tid.get(e.get("tid"))
        if outer is not None and _inside(e, outer):
            continue
        open_by_tid[e.get("tid")] = e
        kept.append(e)
    return kept


def attribute(trace_events: list[dict]) -> dict:
    """Cut a chrome trace (`traceEvents` of `paddle.profiler`) into `PARTS`, per step (the
    `step` RecordEvents). Returns ms per step: {"step_ms", "steps", "parts": {part: ms},
    "ops": {part: {op: ms}} (ops inside host regions too), "regions": parts timed by a host
    region}."""
    events = [e for e in trace_events if e.get("ph") == "X" and "dur" in e]
    user = [e for e in events if e.get("cat") == "PythonUserDefined"]
    steps = sorted((e for e in user if _base(e["name"]) == STEP), key=lambda e: e["ts"])
    regions = [e for e in user if _base(e["name"]).startswith(REGION)]
    ops = _top_level([e for e in events if e.get("cat") == "Operator"])
    parts = dict.fromkeys((k for k, _ in PARTS), 0.0)
    by_op: dict[str, dict[str, float]] = {}
    timed_by_region = set()
    for step in steps:
        inner = sorted((r for r in regions if _inside(r, step)), key=lambda e: (e["ts"], -e["dur"]))
        accounted = 0.0
        stack: list[dict] = []
        for r in inner:  # exclusive time: a region's own minus its direct sub-regions'
            while stack and not _inside(r, stack[-1]):
                stack.pop()
            part = _base(r["name"])[len(REGION) :]
            parts[part] += r["dur"]
            timed_by_region.add(part)
            if stack:
                parts[_base(stack[-1]["name"])[len(REGION) :]] -= r["dur"]
            else:
                accounted += r["dur"]
            stack.append(r)
        loose = []
        for e in (o for o in ops if _inside(o, step)):
            holder = [r for r in inner if _inside(e, r)]
            if holder:  # shown among the region's ops, timed by the region
                part = _base(holder[-1]["name"])[len(REGION) :]
                by_op.setdefault(part, {}).setdefault(op_name(e["name"]), 0.0)
                by_op[part][op_name(e["name"])] += e["dur"]
            else:
                loose.append(e)
        names = [op_name(e["name"]) for e in loose]
        phases = _phases(names)
        for e, name, phase, where in zip(
            loose, names, phases, _positions(names, phases), strict=True
        ):
            part = op_part(name, phase, where)
            parts[part] += e["dur"]
            accounted += e["dur"]
            by_op.setdefault(part, {}).setdefault(name, 0.0)
            by_op[part][name] += e["dur"]
        parts["overhead"] += step["dur"] - accounted
    n = max(len(steps), 1)
    return {
        "steps": len(steps),
        "step_ms": sum(s["dur"] for s in steps) / n / 1e3,
        "parts": {k: v / n / 1e3 for k, v in parts.items()},
        "ops": {p: {k: v / n / 1e3 for k, v in d.items()} for p, d in by_op.items()},
        "regions": sorted(timed_by_region),
    }


# ----------------------------------------------------------------------------- the probe
class _Regions:
    """`RecordEvent` host regions around an engine's parts (installed on one engine object)."""

    def __init__(self):
        import paddle.profiler as profiler

        self.profiler = profiler
        self.open: list = []

    def begin(self, name: str):
        event = self.profiler.RecordEvent(name)
        event.begin()
        self.open.append(event)

    def end(self):
        self.open.pop().end()

    def wrap(self, owner, attribute: str, part: str):
        """Replace `owner.attribute` (a method) by one timed as region part:<part>."""
        inner = getattr(owner, attribute)

        def timed(*args, **kwargs):
            self.begin(REGION + part)
            try:
                return inner(*args, **kwargs)
            finally:
                self.end()

        setattr(owner, attribute, timed)

    def hook(self, layer, part: str):
        layer.register_forward_pre_hook(lambda *_: self.begin(REGION + part))
        layer.register_forward_post_hook(lambda *_: self.end())

    def install(self, engine, static: bool):
        if static:
            self.wrap(engine.adapter, "feed", "feeding")
            return
        FeatureInput = benchmark.zoo("nn.features").FeatureInput

        self.wrap(engine.adapter, "create_feeds", "feeding")
        self.wrap(engine.adapter, "create_loss", "loss_fwd")
        self.wrap(engine.optimizer, "step", "optimizer")
        self.wrap(engine.optimizer, "clear_grad", "optimizer")
        if engine.row_optimizer is not None:
            self.wrap(engine.row_optimizer, "step", "row_update")
        net = engine.net
        self.hook(net, "loss_fwd")  # what the network computes besides inputs and towers
        for _, sub in net.named_sublayers():
            if isinstance(sub, FeatureInput):
                self.hook(sub, "lookup_fwd")
        for _, child in net.named_children():
            inputs = [s for s in child.sublayers(include_self=True) if isinstance(s, FeatureInput)]
            if not inputs:
                self.hook(child, "towers_fwd")


def _engine(adapter, config, place, static: bool):
    engines = benchmark.zoo("run.engines")
    if static:
        return engines.StaticEngine(adapter, config, training=True, place=place)
    return engines.DygraphEngine(adapter, config, training=True)


def probe(args) -> dict:
    """One engine of one tree (this process imports the tree's paddle_rec_zoo)."""
    import paddle_rec_zoo

    static = args.engine == "static"
    adapter, config, reader, place = benchmark._probe_setup(args, static, args.model_dir)
    dataset = benchmark._dataset(config, reader, "train")
    batches = benchmark._in_memory_batches(
        dataset, config.runner.train_batch_size, args.warmup + args.steps, True
    )
    engine = _engine(adapter, config, place, static)
    result = {
        "package": os.path.dirname(os.path.abspath(paddle_rec_zoo.__file__)),
        "mkl": os.environ.get(benchmark.MKL_ENV),
        "batch": config.runner.train_batch_size,
    }
    if hasattr(engine, "prepare"):  # the data thread's per-batch work, timed apart
        start = time.perf_counter()
        batches = [engine.prepare(b) for b in batches]
        result["prepare_ms"] = (time.perf_counter() - start) / len(batches) * 1e3
    if args.probe == "zoo":
        result["rate"] = benchmark._timed_steps(engine.train_step, batches, args.warmup)
        return result
    import paddle.profiler as profiler

    TrainMetrics = benchmark.zoo("report.metrics").TrainMetrics

    metrics = TrainMetrics(engine.spec.train_metrics)
    spec, label_names = engine.spec, reader.label_names

    def step(batch):  # run/loop.py's _Epochs._step: the step, then the running AUCs
        _, outputs = engine.train_step(batch)
        metrics.update(outputs, spec.label_columns(batch, label_names))

    result["rate"] = benchmark._timed_steps(step, batches, args.warmup)
    regions = _Regions()
    regions.install(engine, static)
    regions.wrap(metrics, "update", "metrics")
    # on_trace_ready: not Paddle's default, which writes ./profiler_log/ on stop()
    prof = profiler.Profiler(targets=[profiler.ProfilerTarget.CPU], on_trace_ready=lambda _: None)
    prof.start()
    for batch in batches[args.warmup :]:
        regions.begin(STEP)
        step(batch)
        regions.end()
        prof.step()
    prof.stop()
    prof.export(args.trace, format="json")
    with open(args.trace) as f:
        result.update(attribute(json.load(f)["traceEvents"]))
    return result


def probe_main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="one profile or zoo probe (run by benchmark.py)")
    parser.add_argument("--probe", choices=("profile", "zoo"), required=True)
    parser.add_argument("--engine", choices=ENGINES, required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=WARMUP)
    parser.add_argument("--trace", help="where the chrome trace goes (--probe profile)")
    parser.add_argument("--opts", nargs="*", default=[])
    args = parser.parse_args(argv)
    print(benchmark.PROBE_TAG + json.dumps(probe(args)), flush=True)
    return 0


# ----------------------------------------------------------------------------- running
def add_arguments(parser: argparse.ArgumentParser):
    """The options of --profile and --zoo, on benchmark.py's parser."""
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead: the step profile of ESMM (both engines), time per part of a step "
        "(paddle_rec_zoo/bench/step_profile.py)",
    )
    parser.add_argument(
        "--zoo",
        action="store_true",
        help="instead: compute-only samples/s of every model in models/multitask, both engines",
    )
    parser.add_argument(
        "--code",
        nargs="+",
        metavar="DIR",
        help="with --profile/--zoo: OLD [NEW] source trees to measure, before and after "
        "(NEW: this repository); default: this repository only",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --profile/--zoo: set in every probe's environment (MKL_DEBUG_CPU_TYPE is "
        "otherwise removed)",
    )


def code_trees(code: list[str] | None) -> list[str]:
    """The trees to measure, in table order: [this repository], or [OLD, NEW or this one]."""
    if not code:
        return [ROOT]
    if len(code) > 2:
        raise SystemExit("--code takes OLD and optionally NEW")
    trees = [os.path.abspath(d) for d in code]
    for tree in trees:
        if not os.path.isdir(os.path.join(tree, "paddle_rec_zoo")):
            raise SystemExit(f"--code {tree}: no paddle_rec_zoo package there")
    return trees if len(trees) == 2 else [trees[0], ROOT]


def label(tree: str) -> str:
    """A tree's commit (`*` if its measured code, the package and the models, has uncommitted
    changes), or its folder's name."""
    try:
        commit = subprocess.run(
            ["git", "-C", tree, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", tree, "status", "--porcelain", "--", "paddle_rec_zoo", "models"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.path.basename(tree)
    return commit + ("*" if dirty else "")


def probe_env(tree: str, extra: list[str], serial: bool = False) -> dict:
    """What a probe's environment adds to this one (`benchmark.run_process` removes MKL
    settings first): the tree's package on the path, with `serial` a static executor that runs
    every kernel on the calling thread, and the `--env KEY=VALUE` items.

    A profiled static step runs serially: ops the executor overlaps on its own threads cannot
    be attributed to parts, and Paddle's profiler recording from those threads has stopped a
    probe with a heap corruption (doc/benchmarks.md)."""
    env = {"PYTHONPATH": tree}
    if serial:
        env[SERIAL_FLAG] = "1"
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--env {item}: expected KEY=VALUE")
        env[key] = value
    return env


def models(tree: str) -> list[str]:
    """The model folders of a tree: models/multitask/<name>/ with a config.yaml."""
    base = os.path.join(tree, "models", "multitask")
    return sorted(
        name for name in os.listdir(base) if os.path.exists(os.path.join(base, name, "config.yaml"))
    )


class Runner:
    """Probes of every tree, engine (and model), interleaved run by run."""

    def __init__(self, args, meta: dict):
        self.args, self.meta = args, meta
        self.trees = code_trees(args.code)
        self.labels = [label(t) for t in self.trees]
        self.dir = os.path.join(args.workdir, "profile")
        os.makedirs(self.dir, exist_ok=True)
        self.results: dict[str, list[dict]] = {}

    def opts(self, tree: str) -> list[str]:
        i = self.trees.index(tree)
        opts = benchmark.overrides(self.args, self.meta, os.path.join(self.dir, f"out-{i}"))
        # a cache per tree: the trees' readers need not agree on its layout
        cache = f"runner.cache_dir={os.path.join(self.args.workdir, f'cache-{i}')}"
        return [cache if o.startswith("runner.cache_dir=") else o for o in opts]

    def run_probe(self, kind: str, tree: str, engine: str, model: str, run: int) -> dict:
        i = self.trees.index(tree)
        static = engine == "static"
        key = f"{kind}-{model}-{engine}-{i}"
        trace = os.path.join(self.dir, f"{key}.json")
        cmd = [sys.executable, HERE, "--probe", kind, "--engine", engine]
        cmd += ["--model-dir", os.path.join(tree, "models", "multitask", model)]
        cmd += ["--steps", str(self.args.steps), "--trace", trace, "--opts", *self.opts(tree)]
        load = benchmark.load_avg()
        log_path = os.path.join(self.dir, f"{key}-{run}.log")
        _, rss, text = benchmark.run_process(
            cmd, log_path, env_extra=probe_env(tree, self.args.env, kind == "profile" and static)
        )
        result = benchmark.probe_result(text)
        if os.path.realpath(result["package"]) != os.path.realpath(
            os.path.join(tree, "paddle_rec_zoo")
        ):
            raise RuntimeError(f"{key}: imported {result['package']}, not {tree}'s package")
        result.update(load=max(load, benchmark.load_avg()), rss_mb=rss)
        self.results.setdefault(key, []).append(result)
        print(
            f"  {key}: {result['rate']:,.0f} samples/s"
            + (f", profiled step {result['step_ms']:.2f} ms" if "step_ms" in result else "")
            + f" (load {result['load']:.1f})",
            flush=True,
        )
        return result

    def run_profile(self):
        for run in range(self.args.runs):
            print(f"run {run + 1}/{self.args.runs}", flush=True)
            for engine in ENGINES:
                for tree in self.trees:
                    self.run_probe("profile", tree, engine, "esmm", run)

    def zoo_models(self) -> list[str]:
        found: list[str] = []
        for tree in self.trees:
            found += [m for m in models(tree) if m not in found]
        return found

    def run_zoo(self):
        for run in range(self.args.runs):
            print(f"run {run + 1}/{self.args.runs}", flush=True)
            for model in self.zoo_models():
                for engine in ENGINES:
                    for tree in self.trees:
                        if model in models(tree):
                            self.run_probe("zoo", tree, engine, model, run)

    # ------------------------------------------------------------------ report
    def heading(self, what: str) -> str:
        a = self.args
        loads = [r["load"] for v in self.results.values() for r in v]
        trees = "; ".join(
            f"{lab} = `{os.path.relpath(t, ROOT) if t != ROOT else '.'}` ({self._mkl(t)})"
            for t, lab in zip(self.trees, self.labels, strict=True)
        )
        env = f", `--env {' '.join(a.env)}`" if a.env else ""
        return (
            f"{what}: {self.meta['splits']['train']['rows']:,} train rows (default preset, "
            f"seed 1, table of {self.meta['sparse_feature_number']:,} rows), batch "
            f"{a.batch_size}, {a.steps} steps after {WARMUP} of warm-up, median of {a.runs} "
            f"run(s), runner.cpu_threads="
            f"{a.cpu_threads if a.cpu_threads is not None else 'default'}{env}; load average "
            f"{min(loads):.1f}–{max(loads):.1f}; {time.strftime('%Y-%m-%d')}; "
            f"{benchmark.machine()}. Code: {trees}."
        )

    def _mkl(self, tree: str) -> str:
        i = self.trees.index(tree)
        values = {r.get("mkl") for k, v in self.results.items() if k.endswith(f"-{i}") for r in v}
        value = values.pop() if len(values) == 1 else None
        return "no MKL_DEBUG_CPU_TYPE" if value is None else f"MKL_DEBUG_CPU_TYPE={value}"

    def _median(self, key: str, get) -> float | None:
        values = [get(r) for r in self.results.get(key, [])]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    def profile_table(self) -> str:
        lines = [self.heading("Step profile of ESMM's training step"), ""]
        for engine in ENGINES:
            lines += self._engine_table(engine) + [""]
        return "\n".join(lines)

    def _engine_table(self, engine: str) -> list[str]:
        keys = [f"profile-esmm-{engine}-{i}" for i in range(len(self.trees))]
        head = "| part | " + " | ".join(f"{lab}: ms/step | share" for lab in self.labels)
        head += " | " + " | ".join(f"{lab}: largest ops, ms/step" for lab in self.labels)
        lines = [f"**{engine}**", "", head + " | attributed by |"]
        lines.append("|---" * (2 + 3 * len(keys)) + "|")

        def row(what: str, cells: list[tuple[str, str]], ops=None, how: str = "") -> str:
            ops = ops or [""] * len(keys)
            values = " | ".join(f"{a} | {b}" for a, b in cells)
            return f"| {what} | {values} | {' | '.join(ops)} | {how} |"

        steps = [self._median(k, lambda r: r["step_ms"]) for k in keys]
        regions = set().union(*(set(r["regions"]) for k in keys for r in self.results[k]))
        for part, what in PARTS:
            cells = []
            for key, step in zip(keys, steps, strict=True):
                ms = self._median(key, lambda r, p=part: r["parts"][p])
                cells.append((f"{ms:.2f}", f"{ms / step:.0%}"))
            how = "host region (exact)" if part in regions else "op name / position"
            if part == "overhead":
                how = "step − the parts above"
            ops = [self._largest_ops(key, part) for key in keys]
            lines.append(row(what, cells, ops, how))
        lines.append(row("**step, profiled**", [(f"**{s:.2f}**", "100%") for s in steps]))
        rates = [self._median(k, lambda r: r["rate"]) for k in keys]
        batch = self.args.batch_size
        lines.append(
            row(
                "step without the profiler (batch / samples/s)",
                [(f"{batch / r * 1e3:.2f}", "") for r in rates],
            )
        )
        ratio = f"after / before: {rates[-1] / rates[0]:.2f}x" if len(rates) > 1 else ""
        lines.append(
            row(
                "samples/s without the profiler (step + running AUCs)",
                [(f"{r:,.0f}", "") for r in rates],
                how=ratio,
            )
        )
        towers = [
            self._median(k, lambda r: r["parts"]["towers_fwd"] + r["parts"]["towers_bwd"])
            for k in keys
        ]
        lines.append(
            row(
                "towers (forward + backward)",
                [(f"{t:.2f}", f"{t / s:.0%}") for t, s in zip(towers, steps, strict=True)],
            )
        )
        prep = [self._median(k, lambda r: r.get("prepare_ms")) for k in keys]
        lines.append(
            row(
                "data thread: row batch (off the step's thread)",
                [(f"{p:.2f}" if p is not None else "—", "") for p in prep],
                how="timed apart, per batch",
            )
        )
        return lines

    def _largest_ops(self, key: str, part: str, n: int = 3) -> str:
        totals: dict[str, list[float]] = {}
        for r in self.results[key]:
            for op, ms in r["ops"].get(part, {}).items():
                totals.setdefault(op, []).append(ms)
        runs = len(self.results[key])
        means = {op: sum(v) / runs for op, v in totals.items()}
        top = sorted(means.items(), key=lambda x: -x[1])[:n]
        return ", ".join(f"{op} {ms:.2f}" for op, ms in top if ms >= 0.005)

    def zoo_table(self) -> str:
        lines = [self.heading("Compute-only training throughput of every model"), ""]
        if len(self.trees) == 2:
            before, after = self.labels
            lines += [
                f"| model | engine | samples/s {before} | samples/s {after} | after / before |",
                "|---|---|---|---|---|",
            ]
        else:
            lines += [f"| model | engine | samples/s {self.labels[0]} |", "|---|---|---|"]
        for model in self.zoo_models():
            for engine in ENGINES:
                rates = [
                    self._median(f"zoo-{model}-{engine}-{i}", lambda r: r["rate"])
                    for i in range(len(self.trees))
                ]
                cells = [f"{r:,.0f}" if r is not None else "—" for r in rates]
                if len(rates) == 2:
                    cells.append(f"{rates[1] / rates[0]:.2f}x" if None not in rates else "")
                lines.append(f"| {model} | {engine} | {' | '.join(cells)} |")
        return "\n".join(lines) + "\n"


def main(args, argv) -> int:
    """`tools/benchmark.py --profile` or `--zoo`: run the probes, print and save the table."""
    os.makedirs(args.workdir, exist_ok=True)
    print(f"data: {args.rows:,} train rows in {args.workdir}/data", flush=True)
    meta = benchmark.generate(args.rows, args.workdir)
    runner = Runner(args, meta)
    if args.profile:
        runner.run_profile()
        table, begin, end = runner.profile_table(), PROFILE_BEGIN, PROFILE_END
    else:
        runner.run_zoo()
        table, begin, end = runner.zoo_table(), ZOO_BEGIN, ZOO_END
    print(table)
    name = "profile" if args.profile else "zoo"
    table_path = args.table or os.path.join(runner.dir, f"{name}.md")
    with open(table_path, "w") as f:
        f.write(table)
    with open(os.path.join(runner.dir, f"{name}.json"), "w") as f:
        json.dump(runner.results, f, indent=1)
    if args.update_doc:
        benchmark.write_doc(table, argv, begin, end)
    return 0


if __name__ == "__main__":
    sys.exit(probe_main())
