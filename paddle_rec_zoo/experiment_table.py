"""Scoring and reporting for tools/experiment.py: the paper's Table 2 from prediction CSVs.

Per run, from `sample_id,click,buy,pctr,pcvr,pctcvr` predictions of the test split:
- `auc_ctr`, `auc_ctcvr` over all impressions, `auc_cvr` over clicked impressions (the paper's);
- with a truth file (`sample_id,pctr,pcvr`, the synthetic generator's `truth_test.csv`):
  `auc_cvr_entire`, pCVR of every impression against labels drawn Bernoulli(true pCVR) with a
  fixed seed, the CVR quality ESMM is about (the model is used on every impression, not only
  clicked ones). The same metrics of the true probabilities are the oracle.
"""

from __future__ import annotations

import csv
import math

import numpy as np

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.metrics import auc

METRICS = ("auc_ctr", "auc_cvr", "auc_ctcvr", "auc_cvr_entire")
TITLES = {
    "auc_ctr": "CTR AUC",
    "auc_cvr": "CVR AUC (clicked)",
    "auc_ctcvr": "CTCVR AUC",
    "auc_cvr_entire": "CVR AUC (entire space)",
}
LABEL_SEED = 20180708  # fixed: every run of one data set is scored against the same labels


def read_csv_columns(path: str, columns: tuple[str, ...]) -> dict:
    """Numeric columns of a CSV with a header, as float64 arrays."""
    with open(path, newline="") as f:
        header = next(csv.reader(f))
        missing = [c for c in columns if c not in header]
        if missing:
            raise UserError(f"{path}: no column(s) {missing} (header {header})")
        data = np.loadtxt(f, delimiter=",", ndmin=2)
    return {c: data[:, header.index(c)] for c in columns}


class Truth:
    """True probabilities of a test split, and entire-space CVR labels drawn from them."""

    def __init__(self, path: str, label_seed: int = LABEL_SEED):
        cols = read_csv_columns(path, ("sample_id", "pctr", "pcvr"))
        order = np.argsort(cols["sample_id"], kind="stable")
        self.path = path
        self.sample_id = cols["sample_id"][order].astype(np.int64)
        self.pctr = cols["pctr"][order]
        self.pcvr = cols["pcvr"][order]
        rng = np.random.default_rng(label_seed)
        self.cvr_label = (rng.random(len(self.pcvr)) < self.pcvr).astype(np.float64)

    def rows(self, sample_id: np.ndarray) -> np.ndarray:
        """Indices of `sample_id` in the truth file (every id must be there)."""
        pos = np.searchsorted(self.sample_id, sample_id)
        pos = np.clip(pos, 0, len(self.sample_id) - 1)
        if not np.array_equal(self.sample_id[pos], sample_id):
            raise UserError(f"{self.path}: does not hold every predicted sample_id")
        return pos


def score(preds: dict, truth: Truth | None = None) -> dict:
    """The table's metrics from prediction columns (arrays keyed like the predictions CSV)."""
    click, buy = preds["click"], preds["buy"]
    clicked = click > 0.5
    out = {
        "auc_ctr": auc(preds["pctr"], click),
        "auc_cvr": auc(preds["pcvr"][clicked], buy[clicked]),
        "auc_ctcvr": auc(preds["pctcvr"], click * buy),
    }
    if truth is not None:
        rows = truth.rows(preds["sample_id"].astype(np.int64))
        out["auc_cvr_entire"] = auc(preds["pcvr"], truth.cvr_label[rows])
    return out


def oracle(preds: dict, truth: Truth) -> dict:
    """`score` of the true probabilities on the same impressions and labels."""
    rows = truth.rows(preds["sample_id"].astype(np.int64))
    true = dict(preds, pctr=truth.pctr[rows], pcvr=truth.pcvr[rows])
    true["pctcvr"] = true["pctr"] * true["pcvr"]
    return score(true, truth)


def summarize(results: list[dict]) -> dict:
    """{variant: {metric: (mean, std, n)}} over seeds (std: sample std, 0 for one run)."""
    out: dict = {}
    for variant in dict.fromkeys(r["variant"] for r in results):
        runs = [r for r in results if r["variant"] == variant]
        out[variant] = {}
        for m in METRICS:
            values = [r[m] for r in runs if m in r and not math.isnan(r[m])]
            if values:
                std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
                out[variant][m] = (float(np.mean(values)), std, len(values))
    return out


def _cell(stat) -> str:
    if stat is None:
        return "—"
    mean, std, _ = stat
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def markdown_table(summary: dict, oracle_row: dict | None = None, n_seeds: int = 0) -> str:
    """Markdown table, AUC in % as mean ± std over seeds (the paper's units)."""
    metrics = [m for m in METRICS if any(m in s for s in summary.values())]
    lines = [
        "| variant | seeds | " + " | ".join(TITLES[m] for m in metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for variant, stats in summary.items():
        n = max((s[2] for s in stats.values()), default=n_seeds)
        lines.append(
            f"| {variant} | {n} | " + " | ".join(_cell(stats.get(m)) for m in metrics) + " |"
        )
    if oracle_row:
        lines.append(
            "| oracle (true probabilities) | — | "
            + " | ".join(f"{100 * oracle_row[m]:.2f}" if m in oracle_row else "—" for m in metrics)
            + " |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: str, oracle_row: dict | None = None, title: str = ""):
    """Grouped bars (one group per metric, one bar per variant) with ±std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if any(m in s for s in summary.values())]
    variants = list(summary)
    width = 0.8 / max(len(variants), 1)
    fig, ax = plt.subplots(figsize=(2.6 * len(metrics) + 1, 4.2))
    x = np.arange(len(metrics))
    for i, v in enumerate(variants):
        means = [summary[v].get(m, (np.nan, 0, 0))[0] for m in metrics]
        stds = [summary[v].get(m, (np.nan, 0, 0))[1] for m in metrics]
        ax.bar(x + (i - (len(variants) - 1) / 2) * width, means, width, yerr=stds, label=v,
               capsize=3)  # fmt: skip
    if oracle_row:
        for j, m in enumerate(metrics):
            if m in oracle_row:
                ax.hlines(oracle_row[m], j - 0.45, j + 0.45, colors="k", linestyles="dashed",
                          label="oracle" if j == 0 else None)  # fmt: skip
    values = [s[m][0] for s in summary.values() for m in metrics if m in s]
    low = min(values + list((oracle_row or {}).values()) or [0.5])
    ax.set_ylim(max(0.0, low - 0.05), 1.0 if oracle_row else max(values + [0.5]) + 0.05)
    ax.set_xticks(x, [TITLES[m] for m in metrics])
    ax.set_ylabel("AUC (test)")
    ax.set_title(title or "variants: mean ± std over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
