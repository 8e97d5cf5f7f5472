"""Scoring and reporting for tools/experiment.py: a comparison table from prediction CSVs.

Per run, from the predictions CSV of the test split (`sample_id`, the model's labels and
outputs), the model's declared metrics (`ModelSpec.metrics`, e.g. CVR AUC on clicked
impressions) are recomputed exactly. With a truth file (`sample_id` and true probabilities of
some outputs, the synthetic generator's `truth_test.csv`) the model's `truth_metrics` are added:
for every truth column `p`, `truth_p` is the probability and `truth_p_label` a label drawn
Bernoulli(p) with a fixed seed, so that every run of one data set is scored against the same
labels. The same metrics of a perfect model's outputs (`Model.outputs_from_truth`) are the
oracle row.
"""

from __future__ import annotations

import csv
import math

import numpy as np

from paddle_rec_zoo.errors import UserError

LABEL_SEED = 20180708  # fixed: every run of one data set is scored against the same labels


def read_csv_columns(path: str, columns: tuple[str, ...] | None = None) -> dict:
    """Numeric columns of a CSV with a header (all of them when `columns` is None), float64."""
    with open(path, newline="") as f:
        header = next(csv.reader(f))
        columns = tuple(header) if columns is None else columns
        missing = [c for c in columns if c not in header]
        if missing:
            raise UserError(f"{path}: no column(s) {missing} (header {header})")
        data = np.loadtxt(f, delimiter=",", ndmin=2)
    return {c: data[:, header.index(c)] for c in columns}


class Truth:
    """True probabilities of a test split, and labels drawn from them."""

    def __init__(self, path: str, label_seed: int = LABEL_SEED):
        cols = read_csv_columns(path)
        if "sample_id" not in cols:
            raise UserError(f"{path}: no sample_id column")
        order = np.argsort(cols["sample_id"], kind="stable")
        self.path = path
        self.sample_id = cols.pop("sample_id")[order].astype(np.int64)
        self.probs = {name: values[order] for name, values in cols.items()}
        # every column from the same uniform draws: a column's labels do not depend on which
        # other columns the file has (pcvr's are those earlier versions drew)
        self.labels = {
            name: (np.random.default_rng(label_seed).random(len(p)) < p).astype(np.float64)
            for name, p in self.probs.items()
        }

    def rows(self, sample_id: np.ndarray) -> np.ndarray:
        """Indices of `sample_id` in the truth file (every id must be there)."""
        pos = np.searchsorted(self.sample_id, sample_id)
        pos = np.clip(pos, 0, len(self.sample_id) - 1)
        if not np.array_equal(self.sample_id[pos], sample_id):
            raise UserError(f"{self.path}: does not hold every predicted sample_id")
        return pos

    def columns(self, sample_id: np.ndarray) -> dict:
        """`truth_<p>` and `truth_<p>_label` of the given samples."""
        rows = self.rows(sample_id.astype(np.int64))
        out = {f"truth_{k}": v[rows] for k, v in self.probs.items()}
        out.update({f"truth_{k}_label": v[rows] for k, v in self.labels.items()})
        return out


def table_metrics(spec, truth: Truth | None) -> list:
    """The metrics of the table: the declared AUCs, and the truth's metrics where there is one."""
    metrics = [m for m in spec.metrics if m.kind == "auc"]
    if truth is not None:
        have = {f"truth_{k}" for k in truth.probs} | {f"truth_{k}_label" for k in truth.probs}
        metrics += [m for m in spec.truth_metrics if set(m.labels) <= have]
    return metrics


def score(spec, preds: dict, truth: Truth | None = None) -> dict:
    """The table's metrics from prediction columns (arrays keyed like the predictions CSV)."""
    columns = dict(preds)
    if truth is not None:
        columns.update(truth.columns(preds["sample_id"]))
    return {m.name: m.compute(columns) for m in table_metrics(spec, truth)}


def oracle(spec, network, preds: dict, truth: Truth) -> dict:
    """`score` of a perfect model's outputs on the same impressions and labels; metrics of
    outputs the truth cannot give are left out."""
    rows = truth.rows(preds["sample_id"].astype(np.int64))
    perfect = network.outputs_from_truth(spec, {k: v[rows] for k, v in truth.probs.items()})
    scored = score(spec, {**preds, **perfect}, truth)
    return {m.name: scored[m.name] for m in table_metrics(spec, truth) if m.output in perfect}


def summarize(results: list[dict], metrics: list, key: str = "variant") -> dict:
    """{row name: {metric: (mean, std, n)}} over seeds (std: sample std, 0 for one run)."""
    out: dict = {}
    for name in dict.fromkeys(r[key] for r in results):
        runs = [r for r in results if r[key] == name]
        out[name] = {}
        for m in metrics:
            values = [r[m.name] for r in runs if m.name in r and not math.isnan(r[m.name])]
            if values:
                std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
                out[name][m.name] = (float(np.mean(values)), std, len(values))
    return out


def _value(kind: str, v: float) -> str:
    """AUC in % (the papers' unit), calibration and log loss as they are."""
    return f"{100 * v:.2f}" if kind == "auc" else f"{v:.3f}"


def _cell(metric, stat) -> str:
    if stat is None:
        return "—"
    mean, std, _ = stat
    return f"{_value(metric.kind, mean)} ± {_value(metric.kind, std)}"


def markdown_table(
    summary: dict, metrics: list, oracle_row: dict | None = None, n_seeds: int = 0, key="variant"
) -> str:
    """Markdown table, mean ± std over seeds: AUC in %, calibration (mean prediction / mean
    label or true probability; 1 is calibrated) as a ratio."""
    metrics = [m for m in metrics if any(m.name in s for s in summary.values())]
    lines = [
        f"| {key} | runs | " + " | ".join(m.title or m.name for m in metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for name, stats in summary.items():
        n = max((s[2] for s in stats.values()), default=n_seeds)
        lines.append(
            f"| {name} | {n} | " + " | ".join(_cell(m, stats.get(m.name)) for m in metrics) + " |"
        )
    if oracle_row:
        lines.append(
            "| oracle (true probabilities) | — | "
            + " | ".join(
                _value(m.kind, oracle_row[m.name]) if m.name in oracle_row else "—" for m in metrics
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: dict, metrics: list, path: str, oracle_row: dict | None = None, title=""):
    """Grouped bars of the AUCs (one group per metric, one bar per row) with ±std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in metrics if m.kind == "auc" and any(m.name in s for s in summary.values())]
    names = list(summary)
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(2.6 * len(metrics) + 1, 4.2))
    x = np.arange(len(metrics))
    for i, v in enumerate(names):
        means = [summary[v].get(m.name, (np.nan, 0, 0))[0] for m in metrics]
        stds = [summary[v].get(m.name, (np.nan, 0, 0))[1] for m in metrics]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, means, width, yerr=stds, label=v,
               capsize=3)  # fmt: skip
    oracle_row = {k: v for k, v in (oracle_row or {}).items() if k in {m.name for m in metrics}}
    for j, m in enumerate(metrics):
        if m.name in oracle_row:
            ax.hlines(oracle_row[m.name], j - 0.45, j + 0.45, colors="k", linestyles="dashed",
                      label="oracle" if j == 0 else None)  # fmt: skip
    values = [s[m.name][0] for s in summary.values() for m in metrics if m.name in s]
    low = min(values + list(oracle_row.values()) or [0.5])
    ax.set_ylim(max(0.0, low - 0.05), 1.0 if oracle_row else max(values + [0.5]) + 0.05)
    ax.set_xticks(x, [m.title or m.name for m in metrics])
    ax.set_ylabel("AUC (test)")
    ax.set_title(title or "mean ± std over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
