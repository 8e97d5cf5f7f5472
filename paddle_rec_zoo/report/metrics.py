"""Binary-classification metrics in numpy, shared by both engines.

`auc` is exact (rank based, ties count one half: the same number as scikit-learn's
`roc_auc_score`). `StreamingAUC` is the cheap running estimate used in training logs: a histogram
of predictions in fixed buckets, O(1) memory, mergeable across processes by adding histograms.
`Collector` keeps every prediction of an evaluation so exact metrics can be computed at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EPS = 1e-7  # the floor of a probability in a log: log loss here, the models' losses


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact ROC AUC; NaN when only one class is present."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel() > 0.5
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    # average rank of each run of tied scores (1-based)
    starts = np.flatnonzero(np.concatenate(([True], sorted_scores[1:] != sorted_scores[:-1])))
    ends = np.concatenate((starts[1:], [len(scores)]))
    avg_rank = (starts + ends + 1) / 2.0
    ranks = np.repeat(avg_rank, ends - starts)
    pos_rank_sum = ranks[labels[order]].sum()
    return float((pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(probs: np.ndarray, labels: np.ndarray) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), EPS, 1 - EPS)
    y = np.asarray(labels, dtype=np.float64).ravel()
    if len(y) == 0:
        return float("nan")
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def calibration(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean prediction / observed rate (1.0 = calibrated); NaN when there are no positives."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    if len(y) == 0 or y.sum() == 0:
        return float("nan")
    return float(np.asarray(probs, dtype=np.float64).mean() / y.mean())


class StreamingAUC:
    """AUC over a histogram of `num_buckets` equal-width prediction buckets on [0, 1]."""

    def __init__(self, num_buckets: int = 1 << 12):
        self.num_buckets = num_buckets
        self.pos = np.zeros(num_buckets, np.int64)
        self.neg = np.zeros(num_buckets, np.int64)

    def update(self, probs: np.ndarray, labels: np.ndarray):
        b = np.clip((np.asarray(probs).ravel() * self.num_buckets).astype(np.int64), 0, None)
        b = np.minimum(b, self.num_buckets - 1)
        y = np.asarray(labels).ravel() > 0.5
        self.pos += np.bincount(b[y], minlength=self.num_buckets)
        self.neg += np.bincount(b[~y], minlength=self.num_buckets)

    def compute(self) -> float:
        n_pos, n_neg = self.pos.sum(), self.neg.sum()
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        neg_below = np.cumsum(self.neg) - self.neg  # negatives in lower buckets
        wins = (self.pos * (neg_below + 0.5 * self.neg)).sum()
        return float(wins / (n_pos * n_neg))

    def reset(self):
        self.pos[:] = 0
        self.neg[:] = 0


class Collector:
    """Keeps named 1-D arrays batch by batch; `arrays()` concatenates them."""

    def __init__(self):
        self._parts: dict[str, list[np.ndarray]] = {}

    def add(self, **columns: np.ndarray):
        for name, value in columns.items():
            self._parts.setdefault(name, []).append(np.asarray(value).ravel())

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self._parts.items()}


def fmt(value: float) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.4f}"


# ------------------------------------------------------------------------ declared metrics
# Each kind with its perfect value: a value nearer it is better. One rule for every sense of
# best: AUC (at most 1) is better higher, log loss (at least 0) lower, calibration nearest 1.
_KINDS = {
    "auc": (auc, 1.0),
    "logloss": (logloss, 0.0),
    "calibration": (calibration, 1.0),
}
KINDS = tuple(_KINDS)


@dataclass(frozen=True)
class Metric:
    """One metric a model declares: `kind` of output `output` against the product of the label
    columns `labels`, over the rows where every column of `where` is 1 (`~name`: is 0); all
    rows when `where` is empty. `title` names it in tables.

    `Metric("auc", "auc_cvr", "pcvr", ("buy",), where=("click",))` is ESMM's CVR AUC on clicked
    impressions; `Metric("auc", "auc_ctcvr", "pctcvr", ("click", "buy"))` its CTCVR AUC.
    """

    kind: str
    name: str
    output: str
    labels: tuple[str, ...]
    where: tuple[str, ...] = ()
    title: str = ""

    def distance_from_best(self, value: float) -> float:
        """How far `value` is from this kind's perfect value; infinite for NaN (an evaluation
        without positives, say), so a NaN is never the best of a run."""
        if value is None or math.isnan(value):
            return math.inf
        return abs(value - _KINDS[self.kind][1])

    def is_better(self, value: float, than: float) -> bool:
        """`value` strictly better than `than` by this kind's sense of best (a tie is not)."""
        return self.distance_from_best(value) < self.distance_from_best(than)

    def target(self, columns: dict) -> np.ndarray:
        return _product(columns, self.labels)

    def mask(self, columns: dict) -> np.ndarray | None:
        if not self.where:
            return None
        keep = np.ones(len(columns[self.output]), bool)
        for name in self.where:
            if name.startswith("~"):
                keep &= np.asarray(columns[name[1:]]) <= 0.5
            else:
                keep &= np.asarray(columns[name]) > 0.5
        return keep

    def select(self, columns: dict) -> tuple[np.ndarray, np.ndarray]:
        """(scores, target) of the rows `where` keeps."""
        scores, target, mask = columns[self.output], self.target(columns), self.mask(columns)
        if mask is not None:
            scores, target = scores[mask], target[mask]
        return scores, target

    def compute(self, columns: dict) -> float:
        """From 1-D arrays of outputs and labels, keyed by name."""
        return _KINDS[self.kind][0](*self.select(columns))


def _product(columns: dict, names: tuple[str, ...]) -> np.ndarray:
    out = np.asarray(columns[names[0]], dtype=np.float64)
    for name in names[1:]:
        out = out * columns[name]
    return out


def evaluate(metrics, counts: dict, columns: dict) -> dict:
    """Exact values of the declared `metrics`, then `samples` and each count of `counts`
    ({name: label columns whose product is counted}, e.g. {"clicks": ("click",)})."""
    out = {m.name: m.compute(columns) for m in metrics}
    first = next(iter(columns.values()))
    out["samples"] = int(len(first))
    out.update({name: int(_product(columns, labels).sum()) for name, labels in counts.items()})
    return out


class TrainMetrics:
    """Running AUCs of training logs (histograms, not stored predictions), one per declared
    `Metric` of kind auc. `histograms()` lists what a data-parallel job sums over its ranks."""

    def __init__(self, metrics):
        self.metrics = [m for m in metrics if m.kind == "auc"]
        self.aucs = {m.name: StreamingAUC() for m in self.metrics}

    def update(self, outputs: dict, labels: dict):
        """`outputs`, `labels`: 1-D arrays keyed by name."""
        columns = {**labels, **outputs}
        for m in self.metrics:
            self.aucs[m.name].update(*m.select(columns))

    def compute(self) -> dict:
        return {name: s.compute() for name, s in self.aucs.items()}

    def histograms(self) -> dict[str, np.ndarray]:
        """Every count array, by name: the state to merge (sum) across ranks and to save."""
        out = {}
        for name, s in self.aucs.items():
            out[f"{name}.pos"], out[f"{name}.neg"] = s.pos, s.neg
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.histograms().items()}

    def set_state_dict(self, state: dict, source: str = "metrics"):
        own = self.histograms()
        if set(own) != set(state) or any(own[k].shape != np.shape(state[k]) for k in own):
            from paddle_rec_zoo.errors import UserError

            raise UserError(
                f"{source}: the saved training metrics ({', '.join(sorted(state))}) do not fit "
                f"this model's ({', '.join(sorted(own))})"
            )
        for key, value in state.items():
            own[key][...] = value
