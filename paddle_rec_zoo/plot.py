"""training_curves.png: loss and AUCs against the global step, from metrics.jsonl records."""

from __future__ import annotations

import os


def plot_curves(records: list[dict], path: str, title: str = "", tests: list[dict] = ()):
    """`tests`: per-epoch test results (with "step"), drawn as markers on the AUC panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    keys = [k for k in ("auc_ctr", "auc_ctcvr") if any(k in r for r in records)]
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(steps, [r["loss"] for r in records], color="tab:red")
    ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
    for key in keys:
        ax_auc.plot(steps, [r.get(key, float("nan")) for r in records], label=f"train {key}")
    for key, marker in (("auc_ctr", "o"), ("auc_cvr", "s"), ("auc_ctcvr", "^")):
        if tests:
            ax_auc.plot(
                [t["step"] for t in tests],
                [t[key] for t in tests],
                marker=marker,
                ls="--",
                label=f"test {key}",
            )
    ax_auc.set(xlabel="step", ylabel="AUC", title="AUC (train: running, this epoch)")
    ax_auc.legend()
    for ax in (ax_loss, ax_auc):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
