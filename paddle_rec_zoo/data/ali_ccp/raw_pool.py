"""Running the converter's tasks on forked worker processes, with progress and clean failures.

A task function is called as ``fn(task, progress)``; the workers are forked, so `fn` (with what
it is bound to) is inherited, not pickled, and only results travel back. A bad input line
(`TaskError`) or a failed write becomes one `UserError` line naming the file; after any failure
the workers are killed and reaped, so nothing is left running or half-written.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import signal
import sys
import time
import traceback
from pathlib import Path

from paddle_rec_zoo.data.ali_ccp.raw_parse import line_number
from paddle_rec_zoo.errors import UserError


class TaskError(Exception):
    """A malformed input line met by a task: the file, the line's byte offset, the problem."""

    def __init__(self, path, offset, message):
        super().__init__(message)
        self.path, self.offset, self.message = path, offset, message


def io_message(e: OSError) -> str:
    return f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)


def _raise_bad(path, offset, message):
    raise UserError(f"{Path(path).name}:{line_number(path, offset)}: {message}")


def _worker(fn, tasks, inq, outq):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    # a forked worker inherits the parent's SIGTERM handler (ours from main(), or one a library
    # such as Paddle installed); the parent's terminate() must simply end it
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def progress(n):
        outq.put(("progress", None, n))

    while True:
        i = inq.get()
        if i is None:
            return
        try:
            outq.put(("done", i, fn(tasks[i], progress)))
        except TaskError as e:
            outq.put(("bad", i, (e.path, e.offset, e.message)))
        except OSError as e:  # disk full, permissions, ...: one line for the user
            outq.put(("io", i, io_message(e)))
            return
        except BaseException:  # a bug: hand the traceback to the parent
            outq.put(("crash", i, traceback.format_exc()))
            return


def run_tasks(fn, tasks, workers, bar, on_result=None):
    """Run fn(task, progress) for every task; results in task order.

    With `on_result(value)`, results are handed over as they arrive (in any order) and not kept,
    so folding them (sums, merged counts) needs no memory per task.
    """
    results = [None] * len(tasks)

    def done(i, val):
        if on_result is None:
            results[i] = val
        else:
            on_result(val)

    if workers <= 1 or len(tasks) <= 1:
        for i, t in enumerate(tasks):
            try:
                done(i, fn(t, bar.update))
            except TaskError as e:
                _raise_bad(e.path, e.offset, e.message)
            except OSError as e:
                raise UserError(io_message(e)) from None
        return results
    ctx = mp.get_context("fork")
    inq, outq = ctx.Queue(), ctx.Queue()
    for i in range(len(tasks)):
        inq.put(i)
    procs = []
    for _ in range(min(workers, len(tasks))):
        inq.put(None)
        p = ctx.Process(target=_worker, args=(fn, tasks, inq, outq), daemon=True)
        p.start()
        procs.append(p)
    left = len(tasks)
    try:
        while left:
            try:
                kind, i, val = outq.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a worker died (exit code {dead[0].exitcode})") from None
                continue
            if kind == "progress":
                bar.update(val)
            elif kind == "done":
                done(i, val)
                left -= 1
            elif kind == "bad":
                _raise_bad(*val)
            elif kind == "io":
                raise UserError(val)
            else:
                raise RuntimeError("a worker failed:\n" + val)
    finally:
        _stop_workers(procs, (inq, outq), finished=not left)
    return results


def _stop_workers(procs, queues, finished: bool):
    """Reap the workers. After a failure (or Ctrl-C) nobody drains the queues any more: a worker
    may be blocked writing to a full pipe, even on its way out, and so may this process's own
    queue feeder; kill the workers and do not wait for the queues to flush."""
    if not finished:
        for p in procs:
            if p.is_alive():
                p.kill()
        for q in queues:
            q.cancel_join_thread()
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():  # finished, yet stuck on its way out: nothing of it is needed
            p.kill()
            p.join()
    for q in queues:
        q.close()


class Progress:
    """tqdm bar on a terminal; otherwise a plain line every ~10% (logs stay readable)."""

    def __init__(self, desc, total, enabled=True):
        self.desc, self.total, self.n, self.enabled = desc, max(int(total), 1), 0, enabled
        self.t0, self.next_pct, self.bar = time.time(), 10, None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr)

    def update(self, n):
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled:
            pct = 100 * self.n // self.total
            if pct >= self.next_pct and pct < 100:
                self._line(f"{pct}%")
                self.next_pct = (pct // 10 + 1) * 10

    def _line(self, what):
        dt = max(time.time() - self.t0, 1e-9)
        print(
            f"{self.desc}: {what} ({self.n / 1e6:.1f} MB, {self.n / 1e6 / dt:.1f} MB/s)",
            file=sys.stderr,
            flush=True,
        )

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._line(f"done in {time.time() - self.t0:.1f}s")
