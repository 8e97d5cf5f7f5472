"""Compare models, or one model's variants, over seeds: train, evaluate, tabulate.

    # models of the zoo on generated data with ground truth (or --data DIR [DIR ...])
    python tools/experiment.py --models esmm escm2 aitm mmoe ple --seeds 3 [--rows 1000000]
    # one model's variants (hyper_parameters.variant), on its config's data
    python tools/experiment.py -m models/multitask/esmm/config_bigdata.yaml \
        --variants esmm base division esmm_ns --seeds 5

Each (model or variant, seed) is trained by the engine's trainer tool and its last epoch (or
`best/` with `--checkpoint best`, or every epoch with `--every-epoch`: a row per epoch, e.g.
"esmm, epoch 2") evaluated by the infer tool, both as subprocesses (Paddle's
static mode is process-global), with `runner.seed` set; with several `--data` folders, on each
of them (a row's mean and spread are then over every data set and seed). A model is the folder
`models/*/<name>/` and its `config_bigdata.yaml` (`--config-name`). The predictions are scored with each model's
declared metrics (`paddle_rec_zoo/experiment_table.py`); the outputs in `--out`:

    results.jsonl   one line per run          results.md   the table (AUC %, mean ± std)
    results.png     bars with ±std            runs/<name>[-d<k>]-s<seed>/   checkpoints, logs, ...

A truth file (`truth_test.csv` beside the test data folder, or `--truth`) adds the model's
truth metrics (e.g. entire-space CVR AUC and calibration) and an oracle row. Runs whose
predictions exist are reused unless `--rerun`.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore", message="No ccache found")  # printed by Paddle's import

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS_DIR)
SYNTHETIC = os.path.join(ROOT, "datasets", "ali-ccp", "synthetic.py")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="experiment.py", description=__doc__.split("\n\n")[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--models", nargs="+", metavar="NAME", help="model folders to compare")
    what.add_argument("-m", "--config", help="one model's config YAML (with --variants)")
    p.add_argument("--variants", nargs="+", default=None,
                   help="with -m: values of hyper_parameters.variant (default: all)")  # fmt: skip
    p.add_argument("--config-name", default="config_bigdata.yaml",
                   help="with --models: the config file of each model folder")  # fmt: skip
    p.add_argument("--data", nargs="+", default=[],
                   help="with --models: folders holding train_data/, test_data/, meta.json (and "
                   "truth_test.csv); default: generate synthetic data in --out")  # fmt: skip
    p.add_argument("--rows", type=int, default=1_000_000,
                   help="training impressions of the generated data (test: a quarter)")  # fmt: skip
    p.add_argument("--data-seed", type=int, default=1, help="seed of the generated data")
    p.add_argument("--seeds", type=int, default=5, help="runs per row (runner.seed 1..N)")
    p.add_argument("--engine", choices=("static", "dygraph"), default="static")
    p.add_argument(
        "--out",
        default=os.path.join(tempfile.gettempdir(), "zoo-experiment"),
        help="output folder (default: %(default)s; checkpoints of every run go there too)",
    )
    p.add_argument("--truth", default="", help="truth CSV (sample_id,pctr,pcvr) of the test split")
    p.add_argument("--checkpoint", choices=("last", "best"), default="last",
                   help="evaluate the last epoch, or best/ (needs runner.keep_best)")  # fmt: skip
    p.add_argument("--every-epoch", action="store_true",
                   help="evaluate every epoch's checkpoint: a row per (model or variant, epoch)")  # fmt: skip
    p.add_argument("--rerun", action="store_true", help="retrain runs that already have results")
    p.add_argument("-o", "--opt", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides for every run, as for the trainers")  # fmt: skip
    return p.parse_args(argv)


def run_tool(tool: str, config: str, overrides: list[str], log_path: str):
    cmd = [sys.executable, os.path.join(TOOLS_DIR, f"{tool}.py"), "-m", config, "-o", *overrides]
    with open(log_path, "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read().splitlines()[-15:]
        from paddle_rec_zoo.errors import UserError

        raise UserError(f"{tool} failed (see {log_path}):\n" + "\n".join(tail))


def main(argv=None) -> int:
    args = parse_args(argv)
    from paddle_rec_zoo.errors import UserError

    try:
        return run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def model_config(name: str, config_name: str) -> str:
    """`models/*/<name>/<config_name>`: a model of the zoo by its folder's name."""
    from paddle_rec_zoo.errors import UserError

    found = sorted(glob.glob(os.path.join(ROOT, "models", "*", name, config_name)))
    if not found:
        names = sorted(
            os.path.basename(os.path.dirname(p))
            for p in glob.glob(os.path.join(ROOT, "models", "*", "*", config_name))
        )
        raise UserError(f"--models: no model {name!r} with a {config_name} (models: {names})")
    return found[0]


def data_folder(args, folder: str) -> tuple[str, list[str]]:
    """A data folder of `--models` runs (generated if missing): its test folder and overrides."""
    from paddle_rec_zoo.errors import UserError
    from paddle_rec_zoo.report.progress import log

    meta_path = os.path.join(folder, "meta.json")
    if not os.path.exists(meta_path):
        if os.path.exists(os.path.join(folder, "train_data")):
            raise UserError(f"--data: {folder} has no meta.json (sparse_feature_number)")
        log(f"generating {args.rows:,} synthetic impressions (seed {args.data_seed}) in {folder}")
        cmd = [sys.executable, SYNTHETIC, "--n", str(args.rows), "--out", folder]
        subprocess.run([*cmd, "--seed", str(args.data_seed)], check=True, capture_output=True)
    with open(meta_path) as f:
        meta = json.load(f)
    overrides = [
        f"runner.train_data_dir={os.path.join(folder, 'train_data')}",
        f"runner.test_data_dir={os.path.join(folder, 'test_data')}",
        f"hyper_parameters.sparse_feature_number={meta['sparse_feature_number']}",
    ]
    return os.path.join(folder, "test_data"), overrides


def plan(args, out: str):
    """(row title, [(row name, config path, overrides)], [(run suffix, test folder, overrides)])."""
    from paddle_rec_zoo.errors import UserError
    from paddle_rec_zoo.run.config import load_config

    if args.models:
        folders = [os.path.abspath(d) for d in args.data] or [os.path.join(out, "data")]
        data = [data_folder(args, f) for f in folders]
        suffixes = [f"-d{k + 1}" for k in range(len(data))] if len(data) > 1 else [""]
        rows = [(m, model_config(m, args.config_name), []) for m in args.models]
        for _, path, _ in rows:  # every override and config valid before training
            for _, opts in data:
                load_config(path, [*opts, *args.opt], network(path).hyper_parameters_class)
        return "model", rows, [(s, t, o) for s, (t, o) in zip(suffixes, data, strict=True)]
    if args.data:
        raise UserError("--data goes with --models; with -m the config names its data")
    hyper = network(args.config).hyper_parameters_class
    config = load_config(args.config, args.opt, hyper)
    choices = getattr(hyper, "VARIANTS", None)
    if choices is None:
        raise UserError(f"{args.config}: this model has no variants (hyper_parameters.variant)")
    variants = args.variants or list(choices)
    for v in variants:
        if v not in choices:
            raise UserError(f"--variants: {v!r} is not one of {', '.join(choices)}")
    rows = [(v, args.config, [f"hyper_parameters.variant={v}"]) for v in variants]
    return "variant", rows, [("", config.runner.test_data_dir, [])]


def train_and_predict(args, config_path, config, spec, opts, seed, run_dir, name) -> dict:
    """Train one run and predict the test split (or reuse its predictions): {epoch (0-based,
    or "best"): prediction columns}, of the last epoch, or of each with --every-epoch."""
    from paddle_rec_zoo.report import experiment_table as table
    from paddle_rec_zoo.report.progress import log

    trainer, infer = (
        ("static_trainer", "static_infer") if args.engine == "static" else ("trainer", "infer")
    )
    common = [*opts, f"runner.seed={seed}", f"runner.model_save_path={run_dir}",
              "runner.overwrite=True"]  # fmt: skip
    epochs = config.runner.epochs
    if args.checkpoint == "best":
        loads = {"best": [f"runner.infer_load_path={os.path.join(run_dir, 'best')}"]}
    else:
        loads = {
            e: [f"runner.infer_start_epoch={e}", f"runner.infer_end_epoch={e + 1}"]
            for e in (range(epochs) if args.every_epoch else [epochs - 1])
        }
    # the last epoch's (or best's) predictions keep the name they had before --every-epoch
    paths = {
        e: os.path.join(
            run_dir, "predictions.csv" if e in ("best", epochs - 1) else f"predictions-{e}.csv"
        )
        for e in loads
    }
    if args.rerun or not all(os.path.exists(p) for p in paths.values()):
        os.makedirs(run_dir, exist_ok=True)
        log(f"{name} seed {seed}: training ({args.engine}, {epochs} epoch(s)) in {run_dir}")
        run_tool(trainer, config_path, common, os.path.join(run_dir, "train.log"))
        for e, load in loads.items():
            run_tool(
                infer,
                config_path,
                [*common, *load, f"runner.save_predictions={paths[e]}"],
                os.path.join(run_dir, f"infer-{e}.log" if len(loads) > 1 else "infer.log"),
            )
    columns = ("sample_id", *spec.labels, *spec.outputs)
    return {e: table.read_csv_columns(path, columns) for e, path in paths.items()}


def network(config_path: str):
    from paddle_rec_zoo.run.model_loader import load_model_module

    model_dir = os.path.dirname(os.path.abspath(config_path))
    return load_model_module(model_dir, "dygraph_model").DygraphModel.network


def run(args) -> int:
    from paddle_rec_zoo.errors import UserError
    from paddle_rec_zoo.report import experiment_table as table
    from paddle_rec_zoo.report.progress import log
    from paddle_rec_zoo.run.config import load_config

    if args.seeds < 1:
        raise UserError("--seeds must be at least 1")
    if args.every_epoch and args.checkpoint == "best":
        raise UserError("--every-epoch evaluates every epoch; --checkpoint best only one")
    out = os.path.abspath(args.out)
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    key, rows, datasets = plan(args, out)
    truths = []
    for _, test_dir, _ in datasets:
        path = args.truth or os.path.join(
            os.path.dirname(os.path.normpath(test_dir)), "truth_test.csv"
        )
        truths.append(table.Truth(path) if (args.truth or os.path.exists(path)) else None)
        log(f"truth: {path}" if truths[-1] else "no truth file: no truth metrics, no oracle")
    results, oracles, metrics = [], {}, []
    for name, config_path, row_opts in rows:
        net = network(config_path)
        for k, ((suffix, _, data_opts), truth) in enumerate(zip(datasets, truths, strict=True)):
            opts = [*row_opts, *data_opts, *args.opt]
            config = load_config(config_path, opts, net.hyper_parameters_class)
            if args.checkpoint == "best" and not config.runner.keep_best:
                raise UserError(
                    "--checkpoint best needs runner.keep_best (e.g. -o runner.keep_best=auc_ctcvr)"
                )
            spec = net.spec(config.hyper_parameters)
            for m in table.table_metrics(spec, truth):
                if m.name not in {x.name for x in metrics}:
                    metrics.append(m)
            for seed in range(1, args.seeds + 1):
                run_dir = os.path.join(out, "runs", f"{name}{suffix}-s{seed}")
                start = time.time()
                predicted = train_and_predict(
                    args, config_path, config, spec, opts, seed, run_dir, name
                )
                for epoch, cols in predicted.items():
                    row = f"{name}, epoch {epoch + 1}" if args.every_epoch else name
                    result = {key: row, "seed": seed, **table.score(spec, cols, truth)}
                    if args.every_epoch:
                        result["epoch"] = epoch + 1
                    if suffix:
                        result["data"] = int(suffix[2:])
                    result["seconds"] = round(time.time() - start, 1)
                    results.append(result)
                    if truth is not None and k not in oracles:  # one per data set
                        oracles[k] = {key: "oracle", **table.oracle(spec, net, cols, truth)}
                    log(
                        f"{name}{suffix} seed {seed}"
                        + (f" epoch {epoch + 1}: " if args.every_epoch else ": ")
                        + " ".join(
                            f"{m.name} {result[m.name]:.4f}" for m in metrics if m.name in result
                        )
                    )
    oracles = [oracles[k] for k in sorted(oracles)]  # in the order of the data sets
    oracle_row = None
    if oracles:
        summary = table.summarize(oracles, metrics, key)["oracle"]
        oracle_row = {k: v[0] for k, v in summary.items()}
    with open(os.path.join(out, "results.jsonl"), "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
        for oracle in oracles:
            f.write(json.dumps(oracle) + "\n")
    summary = table.summarize(results, metrics, key)
    md = table.markdown_table(summary, metrics, oracle_row, args.seeds, key)
    what = " ".join(args.models) if args.models else args.config
    if len(datasets) > 1:
        what += f", on {len(datasets)} data sets ({' '.join(args.data)})"
    header = (
        f"Test metrics, mean ± std over {args.seeds} seed(s) x {len(datasets)} data set(s) "
        f"(AUC in %); {what}"
        + (f" -o {' '.join(args.opt)}" if args.opt else "")
        + f"; engine {args.engine}, {args.checkpoint} checkpoint.\n\n"
    )
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(header + md)
    table.plot(summary, metrics, os.path.join(out, "results.png"), oracle_row)
    print(md, end="")
    log(f"wrote {out}/results.md, results.png, results.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
