"""State a module keeps for the process: what it may change, and that it gives it back."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import esmm_config, zoo_module

from paddle_rec_zoo.report import progress
from paddle_rec_zoo.run.model_loader import forget_model, load_model_module


def test_importing_the_cli_leaves_the_environment_alone():
    code = (
        "import os, warnings\n"
        "before = dict(os.environ), list(warnings.filters)\n"
        "import paddle_rec_zoo.run.cli\n"
        "print(before == (dict(os.environ), list(warnings.filters)))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GLOG_", "FLAGS_"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "True", out.stderr


def test_a_static_engine_leaves_the_process_in_dygraph_mode():
    import paddle

    from paddle_rec_zoo.run.engines import StaticEngine

    assert paddle.in_dynamic_mode()
    engine = StaticEngine(zoo_module("esmm", "static_model"), esmm_config(), training=True)
    assert paddle.in_dynamic_mode()
    assert engine.get_params()  # and it still works from dygraph mode
    paddle.enable_static()  # a static tool's process stays static
    try:
        StaticEngine(zoo_module("esmm", "static_model"), esmm_config(), training=False)
        assert not paddle.in_dynamic_mode()
    finally:
        paddle.disable_static()


class _Terminal:
    """sys.stderr that says it is a terminal (tqdm bars only draw on one)."""

    def __init__(self):
        self.text = []

    def isatty(self):
        return True

    def write(self, s):
        self.text.append(s)

    def flush(self):
        pass


def test_a_nested_progress_bar_gives_the_outer_one_back(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stderr", _Terminal())
    console = progress.Console()
    outer = console.progress(range(3), total=3, desc="train")
    next(outer)
    outer_bar = console.bars[-1]
    inner = list(console.progress(range(2), total=2, desc="eval"))  # runs to its end
    assert inner == [0, 1] and console.bars == [outer_bar]
    console.set_postfix(loss="0.5")
    assert outer_bar.postfix and "0.5" in outer_bar.postfix
    console.log("after the evaluation")
    assert "after the evaluation" in capsys.readouterr().out
    assert list(outer) == [1, 2] and console.bars == []


def test_quiet_is_given_back(capsys):
    console = progress.Console()
    with console.quiet(True):
        console.log("hidden")
    console.log("shown")
    out = capsys.readouterr().out
    assert "hidden" not in out and "shown" in out


def test_a_model_folder_whose_code_changed_is_imported_afresh(tmp_path):
    (tmp_path / "helper.py").write_text("VALUE = 1\n")
    (tmp_path / "net.py").write_text("from .helper import VALUE\n")
    assert load_model_module(str(tmp_path), "net").VALUE == 1
    assert load_model_module(str(tmp_path), "net") is load_model_module(str(tmp_path), "net")
    time.sleep(0.01)
    (tmp_path / "helper.py").write_text("VALUE = 2\n")
    os.utime(tmp_path / "helper.py", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert load_model_module(str(tmp_path), "net").VALUE == 2
    registered = [n for n in sys.modules if str(tmp_path.name) in n]
    assert len({n.split(".")[0] for n in registered}) == 1  # the old package was forgotten
    forget_model(str(tmp_path))
    assert not [n for n in sys.modules if str(tmp_path.name) in n]


@pytest.mark.parametrize("tool", ["static_trainer"])
def test_a_static_tool_run_in_process_leaves_dygraph_mode(tool, tmp_path, capsys):
    import paddle

    from paddle_rec_zoo.run.cli import main

    config = os.path.join(os.path.dirname(__file__), "..", "models", "multitask", "esmm")
    status = main(
        tool,
        ["-m", os.path.join(config, "config.yaml"), "-o", "runner.epochs=1",
         f"runner.model_save_path={tmp_path}", "runner.train_batch_size=2048"],
    )  # fmt: skip
    assert status == 0, capsys.readouterr().err
    assert paddle.in_dynamic_mode()
