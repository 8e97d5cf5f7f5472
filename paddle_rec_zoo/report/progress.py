"""Console output: timestamped log lines, and a tqdm bar when stderr is a terminal."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

_bar = None
_quiet = False


def set_quiet(quiet: bool):
    """Silence this process's log lines and bars (ranks other than 0 of a distributed job)."""
    global _quiet
    _quiet = quiet


def log(message: str):
    if _quiet:
        return
    line = f"[{time.strftime('%H:%M:%S')}] {message}"
    if _bar is not None:
        _bar.write(line, file=sys.stdout)
    else:
        print(line, flush=True)


def progress(iterable, total: int, desc: str):
    """Wrap `iterable` in a progress bar on a terminal; plain iteration otherwise."""
    global _bar
    if _quiet or not sys.stderr.isatty():
        yield from iterable
        return
    _bar = tqdm(iterable, total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
    try:
        yield from _bar
    finally:
        _bar.close()
        _bar = None


def set_postfix(**values):
    if _bar is not None:
        _bar.set_postfix(values, refresh=False)
