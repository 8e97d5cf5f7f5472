"""`runner.keep_best`: a copy of the best epoch so far, by a declared metric's own sense of best
(`Metric.is_better`: AUC higher, log loss lower, calibration nearest 1; a NaN never best)."""

from __future__ import annotations

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.report.metrics import fmt
from paddle_rec_zoo.report.progress import log
from paddle_rec_zoo.run import checkpoint


def update(root: str, spec, metric_name: str, result: dict, folder: str, best: dict | None):
    """Copy epoch checkpoint `folder` to `<root>/best/` when its evaluation `result` is better by
    `metric_name` than `best` (best.json's record so far); returns the best record now."""
    metric = _declared(spec, metric_name)
    value = result[metric_name]
    if best is not None and not metric.is_better(value, best["value"]):
        return best
    best = {"metric": metric_name, "epoch": result["epoch"], "value": value}
    checkpoint.save_best(root, folder, best)
    log(
        f"best so far by {metric_name}: epoch {best['epoch']} ({fmt(value)}), copied to "
        f"{checkpoint.BEST_DIR}/"
    )
    return best


def _declared(spec, name: str):
    if name not in spec.metric_names:
        names = ", ".join(spec.metric_names)
        raise UserError(f"runner.keep_best: unknown metric {name!r}; choose one of {names}")
    return spec.metric(name)
