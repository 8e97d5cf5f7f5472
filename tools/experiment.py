"""The paper's comparison (Table 2), reproducible: train and evaluate variants over seeds.

    python tools/experiment.py -m models/multitask/esmm/config_bigdata.yaml \
        --variants esmm base division esmm_ns --seeds 5 [--engine static|dygraph] [--out DIR] \
        [-o runner.train_data_dir=... runner.test_data_dir=...]

Each (variant, seed) is trained by the engine's trainer tool and its last epoch (or `best/` with
`--checkpoint best`) evaluated by the infer tool, both as subprocesses (Paddle's static mode is
process-global), with `hyper_parameters.variant` and `runner.seed` set. The predictions are
scored by `paddle_rec_zoo/experiment_table.py`; the outputs in `--out`:

    results.jsonl   one line per run          results.md   the table (AUC %, mean ± std)
    results.png     bars with ±std            runs/<variant>-s<seed>/   checkpoints, logs, predictions

A truth file (`truth_test.csv` beside the test data folder, or `--truth`) adds the entire-space
CVR AUC and an oracle row. Runs whose predictions exist are reused unless `--rerun`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("esmm", "base", "division", "esmm_ns")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="experiment.py", description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--config", required=True, help="the model's config YAML")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--seeds", type=int, default=5, help="runs per variant (runner.seed 1..N)")
    p.add_argument("--engine", choices=("static", "dygraph"), default="static")
    p.add_argument(
        "--out",
        default=os.path.join(tempfile.gettempdir(), "esmm-experiment"),
        help="output folder (default: %(default)s; checkpoints of every run go there too)",
    )
    p.add_argument("--truth", default="", help="truth CSV (sample_id,pctr,pcvr) of the test split")
    p.add_argument("--checkpoint", choices=("last", "best"), default="last",
                   help="evaluate the last epoch, or best/ (needs runner.keep_best)")  # fmt: skip
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


def run(args) -> int:
    from paddle_rec_zoo import experiment_table as table
    from paddle_rec_zoo.config import load_config
    from paddle_rec_zoo.errors import UserError
    from paddle_rec_zoo.model_loader import load_model_module
    from paddle_rec_zoo.progress import log

    model_dir = os.path.dirname(os.path.abspath(args.config))
    hyper_cls = load_model_module(model_dir, "dygraph_model").DygraphModel.hyper_parameters_class
    config = load_config(args.config, args.opt, hyper_cls)  # validates the overrides up front
    if args.seeds < 1:
        raise UserError("--seeds must be at least 1")
    if args.checkpoint == "best" and not config.runner.keep_best:
        raise UserError(
            "--checkpoint best needs runner.keep_best (e.g. -o runner.keep_best=auc_ctcvr)"
        )
    truth_path = args.truth or os.path.join(
        os.path.dirname(os.path.normpath(config.runner.test_data_dir)), "truth_test.csv"
    )
    truth = table.Truth(truth_path) if (args.truth or os.path.exists(truth_path)) else None
    log(f"truth: {truth_path}" if truth else "no truth file: no entire-space CVR AUC, no oracle")

    out = os.path.abspath(args.out)
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    trainer, infer = (
        ("static_trainer", "static_infer") if args.engine == "static" else ("trainer", "infer")
    )
    epochs = config.runner.epochs
    results, oracle_row = [], None
    for variant in args.variants:
        for seed in range(1, args.seeds + 1):
            run_dir = os.path.join(out, "runs", f"{variant}-s{seed}")
            preds_path = os.path.join(run_dir, "predictions.csv")
            common = [
                *args.opt,
                f"hyper_parameters.variant={variant}",
                f"runner.seed={seed}",
                f"runner.model_save_path={run_dir}",
                "runner.overwrite=True",
            ]
            start = time.time()
            if args.rerun or not os.path.exists(preds_path):
                os.makedirs(run_dir, exist_ok=True)
                log(f"{variant} seed {seed}: training ({args.engine}, {epochs} epoch(s))")
                run_tool(trainer, args.config, common, os.path.join(run_dir, "train.log"))
                load = (
                    [f"runner.infer_load_path={os.path.join(run_dir, 'best')}"]
                    if args.checkpoint == "best"
                    else [
                        f"runner.infer_start_epoch={epochs - 1}",
                        f"runner.infer_end_epoch={epochs}",
                    ]
                )
                run_tool(
                    infer,
                    args.config,
                    [*common, *load, f"runner.save_predictions={preds_path}"],
                    os.path.join(run_dir, "infer.log"),
                )
            cols = table.read_csv_columns(
                preds_path, ("sample_id", "click", "buy", "pctr", "pcvr", "pctcvr")
            )
            result = {"variant": variant, "seed": seed, **table.score(cols, truth)}
            result["seconds"] = round(time.time() - start, 1)
            results.append(result)
            if truth is not None and oracle_row is None:
                oracle_row = table.oracle(cols, truth)
            log(
                f"{variant} seed {seed}: "
                + " ".join(f"{k} {result[k]:.4f}" for k in table.METRICS if k in result)
            )
    with open(os.path.join(out, "results.jsonl"), "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
        if oracle_row:
            f.write(json.dumps({"variant": "oracle", **oracle_row}) + "\n")
    summary = table.summarize(results)
    md = table.markdown_table(summary, oracle_row, args.seeds)
    header = (
        f"Test AUC (%), mean ± std over {args.seeds} seed(s); config {args.config}"
        + (f" -o {' '.join(args.opt)}" if args.opt else "")
        + f"; engine {args.engine}, {epochs} epoch(s), {args.checkpoint} checkpoint.\n\n"
    )
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(header + md)
    table.plot(summary, os.path.join(out, "results.png"), oracle_row)
    print(md, end="")
    log(f"wrote {out}/results.md, results.png, results.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
