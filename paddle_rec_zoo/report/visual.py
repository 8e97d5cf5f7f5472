"""`runner.use_visual`: the run's log lines as VisualDL scalars, beside metrics.jsonl.

Training's lines (loss, running AUCs, samples/s: one point per `print_interval`, x = training
step) go to `train/<key>`, each evaluation of `evaluate_each_epoch` or `keep_best` to
`test/<metric>` (x = epoch). The logs are in `<model_save_path>/visualdl/`. VisualDL reads only
the newest record file of a folder, so a resumed run writes the whole history again into a new
one (and removes the old), from the metrics.jsonl lines it kept.
"""

from __future__ import annotations

import glob
import os

from paddle_rec_zoo.report.progress import log

# fields of a metrics.jsonl line that place it (the x axis) or count rows: not plotted
_NOT_PLOTTED = ("epoch", "batch", "step", "split", "samples", "seconds")


class VisualLog:
    def __init__(self, writer, counts: tuple[str, ...] = ()):
        """`counts`: the model's count fields of an evaluation (clicks, buys), not plotted."""
        self.writer = writer
        self.skip = frozenset((*_NOT_PLOTTED, *counts))

    def train(self, record: dict):
        """One training log line (metrics.jsonl)."""
        self._scalars("train", record, record["step"])

    def test(self, result: dict):
        """One epoch's evaluation (metrics.jsonl's `"split": "test"` line)."""
        self._scalars("test", result, result["epoch"])

    def _scalars(self, group: str, record: dict, step: int):
        for key, value in record.items():
            if key not in self.skip and isinstance(value, (int, float)):
                self.writer.add_scalar(tag=f"{group}/{key}", value=float(value), step=int(step))
        self.writer.flush()  # the tools end with os._exit: nothing may wait in the queue

    def close(self):
        self.writer.close()


def open_visual_log(folder: str, spec, records: list, tests: list) -> VisualLog | None:
    """A `VisualLog` in `folder` holding `records` and `tests` (a resumed run's history), or
    None when visualdl is not installed (said in one line)."""
    try:
        from visualdl import LogWriter
    except ImportError:
        log("runner.use_visual: visualdl is not installed (pip install visualdl); training goes on")
        return None
    os.makedirs(folder, exist_ok=True)
    for old in glob.glob(os.path.join(folder, "vdlrecords.*")):
        os.remove(old)
    visual = VisualLog(LogWriter(logdir=folder), spec.counts)
    for record in records:
        visual.train(record)
    for result in tests:
        visual.test(result)
    log(f"VisualDL logs in {folder}: visualdl --logdir {folder}, then http://localhost:8040")
    return visual
