"""What reading dropped, added up over files and over the byte ranges of one file."""

from __future__ import annotations


class ReadStats:
    """What reading dropped: malformed lines (when skipping them) and rows a reader filtered.

    The one place where the counts of several files, or of the byte ranges of one file, are
    added up. A reader reports them as an `info` dict (`info()`'s keys), which is also what a
    cache entry's meta.json keeps.
    """

    def __init__(self, rows: int = 0):
        self.rows = rows
        self.bad_lines = 0
        self.bad_examples: list[str] = []
        self.filtered: dict[str, int] = {}

    def add(self, info: dict):
        self.rows += info["rows"]
        self.bad_lines += info["bad_lines"]
        self.bad_examples += info["bad_examples"][: max(0, 5 - len(self.bad_examples))]
        for k, v in info["filtered"].items():
            self.filtered[k] = self.filtered.get(k, 0) + v

    def info(self) -> dict:
        return {
            "rows": self.rows,
            "bad_lines": self.bad_lines,
            "bad_examples": list(self.bad_examples),
            "filtered": dict(self.filtered),
        }

    def summary(self) -> list[str]:
        lines = [f"dropped {v} {k}" for k, v in self.filtered.items() if v]
        if self.bad_lines:
            lines.append(f"skipped {self.bad_lines} malformed lines, e.g. {self.bad_examples[0]}")
        return lines
