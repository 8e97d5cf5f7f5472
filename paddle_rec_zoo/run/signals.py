"""SIGTERM and SIGINT: stop training at a step boundary, with a checkpoint, instead of dying.

Paddle installs C++ handlers at import that print a "FatalError: Termination signal" block and a
C++ traceback; `installed()` keeps both signals blocked while Paddle is imported and replaces its
handlers with Python ones, so a signal sent at any moment reaches ours.

Outside training (loading data, building the model, the infer tools) there is nothing worth
saving: a signal raises `Interrupted` at once. Inside `stop.deferred()` (the training loop, its
end-of-epoch evaluation and checkpoint writes included) the first signal only sets `stop.signum`;
the loop checks it after every step, writes a checkpoint and raises `Interrupted`.
While it does, a repeated SIGTERM is ignored (launchers send it several times: Paddle's sends
three, 0.2 s apart, before its SIGKILL 30 s later), and a second SIGINT (Ctrl-C pressed again)
abandons the checkpoint being written; the folder is renamed into place only once complete, so
the last complete checkpoint stays loadable either way.
"""

from __future__ import annotations

import contextlib
import signal

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt, not an error
    """A stop by signal; `message` says where and how to go on. Exit status 128 + signum."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(signum, message)
        self.signum = signum
        self.message = message or f"interrupted by {name(signum)}"

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def name(signum: int) -> str:
    return signal.Signals(signum).name


class StopRequest:
    """What the handlers have seen; the one instance is `stop` below."""

    def __init__(self):
        self.signum: int | None = None
        self._deferring = False

    def handle(self, signum: int, frame=None):
        if not self._deferring:
            raise Interrupted(signum)
        if self.signum is None:
            self.signum = signum
        elif signum == signal.SIGINT:
            raise Interrupted(
                signum,
                f"interrupted again by {name(signum)}: stopped without finishing the checkpoint; "
                "the last complete one is kept",
            )

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @contextlib.contextmanager
    def deferred(self):
        """Signals inside only request a stop (see the module's docstring)."""
        self._deferring = True
        try:
            yield self
        finally:
            self._deferring = False

    def reset(self):
        self.signum = None
        self._deferring = False


stop = StopRequest()


@contextlib.contextmanager
def installed():
    """Block SIGTERM and SIGINT now; inside, import Paddle; on leaving, install our handlers
    (replacing Paddle's) and unblock, so a signal that came meanwhile is handled by them.

    The handlers stay installed until `restore()`."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        stop.reset()
        for s in SIGNALS:
            previous = signal.signal(s, stop.handle)
            _previous.setdefault(s, previous)  # the first one found, for restore()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


_previous: dict = {}


def restore():
    """Put back the handlers found before `installed()` (for callers that live on, e.g. tests)."""
    for s, handler in _previous.items():
        signal.signal(s, handler if handler is not None else signal.SIG_DFL)
    _previous.clear()
    stop.reset()
