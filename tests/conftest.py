"""Shared test helpers. `tools/` and the repo root are on sys.path via pyproject.toml."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ESMM_DIR = os.path.join(ROOT, "models", "multitask", "esmm")
ESMM_CONFIG = os.path.join(ESMM_DIR, "config.yaml")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def esmm_module(name: str):
    from utils.model_loader import load_model_module

    return load_model_module(ESMM_DIR, name)


def esmm_config(*overrides: str, path: str = ESMM_CONFIG):
    from utils.config import load_config

    hyper = esmm_module("net").HyperParameters
    return load_config(path, list(overrides), hyper)


def run_tool(tool: str, *args: str, cwd: str = ROOT, timeout: int = 300):
    """Run tools/<tool>.py as a user would; returns the CompletedProcess (text)."""
    script = os.path.join(ROOT, "tools", f"{tool}.py")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(autouse=True)
def _dygraph_mode():
    """Static-engine tests switch Paddle's global mode; give every test dygraph back."""
    yield
    paddle = sys.modules.get("paddle")  # tests that never load Paddle do not import it
    if paddle is not None:
        paddle.disable_static()
