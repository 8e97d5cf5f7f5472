"""Console output: timestamped log lines, and tqdm bars when stderr is a terminal.

One `Console` per process (`CONSOLE`; the functions below use it) holds what the output needs to
know: whether this process is silenced (ranks other than 0) and the bars open now. Bars nest:
an inner bar (an evaluation inside a training epoch) gets its own line, and when it closes, log
lines and postfixes go to the outer bar again.
"""

from __future__ import annotations

import contextlib
import sys
import time

from tqdm import tqdm


class Console:
    def __init__(self):
        self.silenced = False
        self.bars: list[tqdm] = []  # open bars, innermost last

    @contextlib.contextmanager
    def quiet(self, silenced: bool = True):
        """Silence log lines and bars inside the block (a rank other than 0 of a launched job)."""
        before, self.silenced = self.silenced, silenced
        try:
            yield
        finally:
            self.silenced = before

    def log(self, message: str):
        if self.silenced:
            return
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        if self.bars:
            self.bars[-1].write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def progress(self, iterable, total: int, desc: str):
        """Wrap `iterable` in a progress bar on a terminal; plain iteration otherwise."""
        if self.silenced or not sys.stderr.isatty():
            yield from iterable
            return
        bar = tqdm(
            iterable,
            total=total,
            desc=desc,
            unit="batch",
            leave=False,
            dynamic_ncols=True,
            position=len(self.bars),
        )
        self.bars.append(bar)
        try:
            yield from bar
        finally:
            bar.close()
            self.bars.remove(bar)

    def set_postfix(self, **values):
        """Show `values` beside the innermost bar."""
        if self.bars:
            self.bars[-1].set_postfix(values, refresh=False)


CONSOLE = Console()
log = CONSOLE.log
progress = CONSOLE.progress
set_postfix = CONSOLE.set_postfix
quiet = CONSOLE.quiet
