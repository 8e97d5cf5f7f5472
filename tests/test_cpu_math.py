"""runner.cpu_math (paddle_rec_zoo/cpu_math.py): which MKL kernels each processor gets."""

import os
import subprocess
import sys

import pytest

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.run import cpu_math

AVX2 = {"sse4_2", "avx", "avx2", "fma"}
AVX512 = AVX2 | {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
KNL = AVX2 | {"avx512f", "avx512cd", "avx512er", "avx512pf"}  # Xeon Phi: no BW/DQ/VL


def cpu(vendor, flags, model="a CPU"):
    return {"vendor": vendor, "model": model, "flags": set(flags)}


@pytest.mark.parametrize(
    "vendor, flags, expected",
    [
        ("AuthenticAMD", AVX512, "7"),  # Zen 4/5: MKL's AVX-512 kernels
        ("AuthenticAMD", AVX2, "5"),  # Zen 1-3
        ("HygonGenuine", AVX2, "5"),  # any non-Intel x86 gets the same treatment
        ("AuthenticAMD", KNL, "5"),  # AVX-512 without BW/DQ/VL: never Phi's type 6
        ("AuthenticAMD", {"sse4_2", "avx"}, None),  # no AVX2+FMA: MKL's own path
        ("GenuineIntel", AVX512, None),  # MKL dispatches well on Intel by itself
        ("", set(), None),  # not x86 or no /proc/cpuinfo
    ],
)
def test_auto_picks_the_fastest_kernels_the_processor_has(vendor, flags, expected):
    env = {}
    line = cpu_math.select("auto", env, cpu(vendor, flags))
    assert env.get(cpu_math.MKL_ENV) == expected
    assert line.startswith("cpu math: ") and "\n" not in line
    if expected:
        assert f"MKL_DEBUG_CPU_TYPE={expected}" in line and "runner.cpu_math: default" in line


def test_a_users_own_setting_wins_and_default_changes_nothing():
    env = {cpu_math.MKL_ENV: "5"}
    line = cpu_math.select("auto", env, cpu("AuthenticAMD", AVX512))
    assert env == {cpu_math.MKL_ENV: "5"} and "from the environment" in line
    env = {}
    assert "MKL's own choice" in cpu_math.select("default", env, cpu("AuthenticAMD", AVX512))
    assert env == {}


def test_a_value_set_by_a_parent_process_is_decided_again():
    """A benchmark or Fleet parent set it through this module; the child's config decides."""
    env = {}
    cpu_math.select("auto", env, cpu("AuthenticAMD", AVX512))
    child = dict(env)
    cpu_math.select("default", child, cpu("AuthenticAMD", AVX512))
    assert cpu_math.MKL_ENV not in child
    child = dict(env)
    cpu_math.select("avx2", child, cpu("AuthenticAMD", AVX512))
    assert child[cpu_math.MKL_ENV] == "5"


def test_asking_for_kernels_the_processor_lacks_is_one_clear_error():
    with pytest.raises(UserError, match="avx512 needs CPU flags avx512bw, avx512dq, avx512vl"):
        cpu_math.select("avx512", {}, cpu("AuthenticAMD", KNL, "Old CPU"))
    with pytest.raises(UserError, match="runner.cpu_math: choose one of auto, default"):
        cpu_math.select("fast", {}, cpu("AuthenticAMD", AVX2))


def test_reads_this_machines_processor():
    info = cpu_math.read_cpu()
    if os.path.exists("/proc/cpuinfo"):
        assert info["vendor"] and info["flags"]


def test_the_tools_apply_it_before_the_math_library_runs(tmp_path):
    """The trainer's first log line says which kernels run, and the process's environment
    holds the value when the network first computes."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os, sys\n"
        "from paddle_rec_zoo.run import runtime\n"
        "from paddle_rec_zoo.run.config import load_config\n"
        "from paddle_rec_zoo.run.model_loader import load_model_module\n"
        "m = load_model_module(sys.argv[1], 'dygraph_model')\n"
        "cfg = load_config(sys.argv[1] + '/config.yaml', [], m.DygraphModel.hyper_parameters_class)\n"
        "runtime.setup(cfg)\n"
        "print('ENV', os.environ.get('MKL_DEBUG_CPU_TYPE'))\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    model = os.path.join(root, "models", "multitask", "esmm")
    env = {k: v for k, v in os.environ.items() if not k.endswith("MKL_DEBUG_CPU_TYPE")}
    out = subprocess.run(
        [sys.executable, str(probe), model], env=env, capture_output=True, text=True, check=True
    ).stdout
    value, _ = cpu_math.choose("auto", cpu_math.read_cpu(), {})
    assert f"ENV {value}" in out
    assert "cpu math: " in out
