"""Binary-classification metrics in numpy, shared by both engines.

`auc` is exact (rank based, ties count one half: the same number as scikit-learn's
`roc_auc_score`). `StreamingAUC` is the cheap running estimate used in training logs: a histogram
of predictions in fixed buckets, O(1) memory, mergeable across processes by adding histograms.
`Collector` keeps every prediction of an evaluation so exact metrics can be computed at the end.
"""

from __future__ import annotations

import math

import numpy as np

_EPS = 1e-7


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
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), _EPS, 1 - _EPS)
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


def metrics_state(metrics) -> dict[str, np.ndarray]:
    """The running state of a training-metrics object as named arrays, to resume it exactly.

    An object with `state_dict()` / `set_state_dict(state)` gives its own; otherwise its
    attributes are taken: `StreamingAUC` histograms, numpy arrays and numbers.
    """
    if hasattr(metrics, "state_dict"):
        return {k: np.asarray(v) for k, v in metrics.state_dict().items()}
    state = {}
    for name, value in vars(metrics).items():
        if isinstance(value, StreamingAUC):
            state[f"{name}.pos"], state[f"{name}.neg"] = value.pos.copy(), value.neg.copy()
        elif isinstance(value, (np.ndarray, int, float)):
            state[name] = np.array(value)
        else:
            raise TypeError(
                f"{type(metrics).__name__}.{name}: cannot save a {type(value).__name__}; give "
                "the metrics class state_dict() and set_state_dict()"
            )
    return state


def load_metrics_state(metrics, state: dict, source: str):
    """Put `metrics_state` output back into a fresh metrics object of the same class."""
    if hasattr(metrics, "set_state_dict"):
        metrics.set_state_dict(state)
        return
    expected = metrics_state(metrics)
    if set(expected) != set(state) or any(
        expected[k].shape != np.shape(state[k]) for k in expected
    ):
        from paddle_rec_zoo.errors import UserError

        raise UserError(
            f"{source}: the saved training metrics ({', '.join(sorted(state))}) do not fit "
            f"{type(metrics).__name__} ({', '.join(sorted(expected))})"
        )
    for key, value in state.items():
        name, _, part = key.partition(".")
        target = getattr(metrics, name)
        if part:
            getattr(target, part)[...] = value
        elif isinstance(target, np.ndarray):
            target[...] = value
        else:
            setattr(metrics, name, type(target)(value))
