"""training_curves.png: loss and AUCs against the global step, from metrics.jsonl records."""

from __future__ import annotations

import importlib
import os
import threading

_FIGURE = "matplotlib.figure"  # drawn with its own canvas: no pyplot, no global backend


def preload() -> threading.Thread:
    """Import matplotlib in a background thread while training runs: the import alone took about
    half a second here, paid at the first epoch's end otherwise (doc/benchmarks.md). Drawing then
    finds it imported, or waits for the import to finish."""
    thread = threading.Thread(
        target=importlib.import_module, args=(_FIGURE,), name="import-matplotlib", daemon=True
    )
    thread.start()
    return thread


def plot_curves(
    records: list[dict],
    path: str,
    title: str = "",
    tests: list[dict] = (),
    train_keys: list[str] = (),
    test_keys: list[str] = (),
):
    """Loss, and the running AUCs `train_keys` of `records`; `tests`: per-epoch test results
    (with "step"), whose AUCs `test_keys` are drawn as markers on the AUC panel."""
    from matplotlib.figure import Figure

    steps = [r["step"] for r in records]
    keys = [k for k in train_keys if any(k in r for r in records)]
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_auc = fig.subplots(1, 2)
    ax_loss.plot(steps, [r["loss"] for r in records], color="tab:red")
    ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
    for key in keys:
        ax_auc.plot(steps, [r.get(key, float("nan")) for r in records], label=f"train {key}")
    for key, marker in zip(test_keys, "os^vD<>p*h", strict=False):
        if tests and all(key in t for t in tests):
            ax_auc.plot(
                [t["step"] for t in tests],
                [t[key] for t in tests],
                marker=marker,
                ls="--",
                label=f"test {key}",
            )
    ax_auc.set(xlabel="step", ylabel="AUC", title="AUC (train: running, this epoch)")
    if ax_auc.get_legend_handles_labels()[0]:
        ax_auc.legend()
    for ax in (ax_loss, ax_auc):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
