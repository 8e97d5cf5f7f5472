"""Engine settings that need no training: the Paddle Inference predictor, the static executor."""

import os
import subprocess
import sys

import paddle
import pytest
from conftest import esmm_config, esmm_module

from paddle_rec_zoo.data.parallel_parse import usable_cores
from paddle_rec_zoo.run import engines
from paddle_rec_zoo.run.inference_engine import InferenceEngine


class RecordingConfig:
    def __init__(self, *files):
        self.files, self.calls = files, {}

    def __getattr__(self, name):
        return lambda *args: self.calls.setdefault(name, args)


@pytest.mark.parametrize("setting, expected", [("0", usable_cores()), ("3", 3)])
def test_predictor_threads_follow_inference_cpu_threads(tmp_path, monkeypatch, setting, expected):
    (tmp_path / f"{engines.INFERENCE_PREFIX}.json").write_text("{}")
    made = []

    class Predictor:
        def get_output_names(self):
            return ["pctr", "pcvr", "pctcvr"]

    def create(cfg):
        made.append(cfg)
        return Predictor()

    monkeypatch.setattr(paddle.inference, "Config", RecordingConfig)
    monkeypatch.setattr(paddle.inference, "create_predictor", create)
    cfg = esmm_config(f"runner.inference_cpu_threads={setting}", "runner.cpu_threads=1")
    engine = InferenceEngine(esmm_module("net").ESMMLayer.spec(cfg.hyper_parameters), cfg)
    engine.load(str(tmp_path))
    (pcfg,) = made
    assert pcfg.files[0] == os.path.join(str(tmp_path), f"{engines.INFERENCE_PREFIX}.json")
    assert pcfg.calls["set_cpu_math_library_num_threads"] == (expected,)
    assert "enable_mkldnn" in pcfg.calls and "disable_gpu" in pcfg.calls


def test_math_threads_zero_shares_the_cores_among_local_ranks(monkeypatch):
    from paddle_rec_zoo.run.runtime import math_threads

    monkeypatch.delenv("PADDLE_LOCAL_SIZE", raising=False)
    assert math_threads(0) == usable_cores()
    assert math_threads(3) == 3
    monkeypatch.setenv("PADDLE_LOCAL_SIZE", str(usable_cores() * 4))
    assert math_threads(0) == 1  # never zero
    monkeypatch.setenv("PADDLE_LOCAL_SIZE", "1")
    assert math_threads(0) == usable_cores()


@pytest.mark.parametrize(
    "env, threads, serial",
    [({}, 1, False), ({}, 2, True), ({"PADDLE_LOCAL_SIZE": "2"}, 1, True),
     ({"FLAGS_new_executor_serial_run": "1"}, 1, True)],
)  # fmt: skip
def test_the_static_executor_runs_serially_unless_one_thread_of_one_process(env, threads, serial):
    """One math thread in one process: the executor schedules ops on its own threads; more
    threads or ranks: every kernel on the calling thread; a user's own flag wins."""
    code = (
        "import paddle\nfrom conftest import esmm_config\nfrom paddle_rec_zoo.run import runtime\n"
        f"runtime.setup(esmm_config('runner.cpu_threads={threads}'), static=True)\n"
        "print('SERIAL', paddle.get_flags(['FLAGS_new_executor_serial_run'])"
        "['FLAGS_new_executor_serial_run'])\n"
    )
    tests = os.path.dirname(os.path.abspath(__file__))
    full_env = {**os.environ, **env, "PYTHONPATH": tests}
    out = subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, check=True
    ).stdout
    assert f"SERIAL {serial}" in out
