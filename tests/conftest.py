"""Shared test helpers. The package `paddle_rec_zoo` is installed (requirements.txt); the scripts
of `tools/` and `datasets/ali-ccp/` are run as commands, their code imported from the package."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from paddle_rec_zoo.run import cpu_math

# The math library's kernels for the whole session, chosen before any test loads Paddle, as the
# tools choose them (runner.cpu_math: auto): a run in this process and one in a child process
# then compute with the same kernels, so their numbers can be compared bit for bit. Otherwise the
# first test to compute fixes this process's kernels, whatever a later runtime.setup asks.
cpu_math.select("auto")


@functools.cache
def cuda_build() -> bool:
    """Whether this Paddle build has CUDA (checked in a child: importing Paddle here would fix
    this process's math kernels before a test chooses them)."""
    code = "import paddle; print(paddle.is_compiled_with_cuda())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return out.stdout.strip().endswith("True")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ESMM_DIR = os.path.join(ROOT, "models", "multitask", "esmm")
ESMM_CONFIG = os.path.join(ESMM_DIR, "config.yaml")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


# every model folder of models/multitask (a folder with a net.py), ESMM first: a new model is
# tested by test_zoo and the others without being listed here
ZOO = tuple(
    sorted(
        (e.name for e in os.scandir(os.path.join(ROOT, "models", "multitask"))
         if os.path.isfile(os.path.join(e.path, "net.py"))),
        key=lambda name: (name != "esmm", name),
    )
)  # fmt: skip


def model_dir(name: str) -> str:
    return os.path.join(ROOT, "models", "multitask", name)


def zoo_module(model: str, name: str):
    from paddle_rec_zoo.run.model_loader import load_model_module

    return load_model_module(model_dir(model), name)


def zoo_config(model: str, *overrides: str, config: str = "config.yaml"):
    from paddle_rec_zoo.run.config import load_config

    hyper = zoo_module(model, "dygraph_model").DygraphModel.hyper_parameters_class
    return load_config(os.path.join(model_dir(model), config), list(overrides), hyper)


def esmm_module(name: str):
    from paddle_rec_zoo.run.model_loader import load_model_module

    return load_model_module(ESMM_DIR, name)


def esmm_config(*overrides: str, path: str = ESMM_CONFIG):
    from paddle_rec_zoo.run.config import load_config

    hyper = esmm_module("net").HyperParameters
    return load_config(path, list(overrides), hyper)


def run_group(cmd, *, timeout: float, check: bool = False, **kwargs):
    """`subprocess.run(cmd, capture_output=True, text=True, ...)` in a process group of its own,
    which is killed whole when the command ends, times out or the test is interrupted: a
    launcher's workers or a tool's forked children never outlive their test."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    kwargs.setdefault("text", True)
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        _kill_group(proc.pid)
        proc.communicate()
        raise
    finally:
        _kill_group(proc.pid)  # anything the command left running
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check:
        result.check_returncode()
    return result


def _kill_group(pgid: int):
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def fleet_command(
    log_dir, tool: str, *overrides: str, config: str = ESMM_CONFIG, ranks: int = 2
) -> list[str]:
    """tools/<tool>.py on `config`, `ranks` data-parallel ranks (`paddle.distributed.launch`),
    each rank's output in `log_dir/workerlog.<rank>`."""
    return [
        *(sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(ranks)),
        *("--log_dir", str(log_dir), os.path.join(ROOT, "tools", f"{tool}.py")),
        *("-m", config, "-o", "runner.use_fleet=True", *overrides),
    ]


def launch_fleet(log_dir, tool: str, *overrides: str, config: str = ESMM_CONFIG, ranks: int = 2):
    """Run `fleet_command`; returns (the launcher's CompletedProcess, [each rank's log])."""
    cmd = fleet_command(log_dir, tool, *overrides, config=config, ranks=ranks)
    proc = run_group(cmd, timeout=300, cwd=ROOT)
    return proc, [(Path(log_dir) / f"workerlog.{r}").read_text() for r in range(ranks)]


def run_tool(tool: str, *args: str, cwd: str = ROOT, timeout: int = 300):
    """Run tools/<tool>.py as a user would; returns the CompletedProcess (text)."""
    script = os.path.join(ROOT, "tools", f"{tool}.py")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return run_group([sys.executable, script, *args], cwd=cwd, env=env, timeout=timeout)


@pytest.fixture(autouse=True)
def _dygraph_mode():
    """Every test ends in the mode it began in, dygraph: the engines and the tools give Paddle's
    global mode back (a test that switches it itself must switch it back)."""
    yield
    paddle = sys.modules.get("paddle")  # tests that never load Paddle do not import it
    if paddle is not None and not paddle.in_dynamic_mode():
        paddle.disable_static()
        pytest.fail("the test left Paddle in static mode")
