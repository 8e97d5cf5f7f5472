"""Which kernels Paddle's bundled MKL runs on this CPU (`runner.cpu_math`).

Paddle's CPU wheel ships Intel's MKL (`libmklml_intel.so`), whose dispatcher picks its fast
kernels only on Intel processors: on AMD (and other non-Intel x86) it runs a generic SSE path.
That MKL still honours `MKL_DEBUG_CPU_TYPE`, read once when it first computes, so setting it
before the first matrix product selects the kernels the processor really supports:

    5: AVX2 + FMA kernels           7: AVX-512 kernels (F, CD, BW, DQ, VL: Skylake-X and later)

(6 is Xeon Phi's AVX-512 and stops with SIGILL on other processors; it is never chosen.)
Measured on a 2-core AMD EPYC (Zen 5, AVX-512), one thread, `paddle.matmul` 1024x276 @ 276x256:
45 GFLOP/s by default, 113 with 5, 211 with 7 (doc/benchmarks.md). On Intel processors MKL
already picks its best path, so `auto` leaves them alone.

This module imports nothing from Paddle: the setting must be made before MKL first runs.
"""

from __future__ import annotations

import os
import platform

from paddle_rec_zoo.errors import UserError

CHOICES = ("auto", "default", "avx2", "avx512")
MKL_ENV = "MKL_DEBUG_CPU_TYPE"
# set beside MKL_ENV when this module set it, so that a child process (a benchmark's, a Fleet
# rank's) tells a value it inherited from us, which its own config may change, from a user's
OWN_ENV = "PADDLE_REC_ZOO_MKL_DEBUG_CPU_TYPE"
# the kernels each choice selects, and the CPU flags they need
KERNELS = {
    "avx2": ("5", ("avx2", "fma")),
    "avx512": ("7", ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")),
}
KERNEL_NAMES = {"avx2": "AVX2", "avx512": "AVX-512"}
INTEL = "GenuineIntel"


def read_cpu(path: str = "/proc/cpuinfo") -> dict:
    """{'vendor', 'model', 'flags' (a set)} of the first processor; empty values off Linux."""
    info = {"vendor": "", "model": platform.processor() or "", "flags": set()}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "vendor_id":
                    info["vendor"] = value
                elif key == "model name":
                    info["model"] = value
                elif key == "flags":
                    info["flags"] = set(value.split())
                elif not key and info["flags"]:  # the blank line after the first processor
                    break
    except OSError:
        pass
    return info


def supports(cpu: dict, kernels: str) -> bool:
    """Whether `cpu` (`read_cpu()`) has every flag the `kernels` of KERNELS need."""
    return set(KERNELS[kernels][1]) <= cpu["flags"]


def choose(setting: str, cpu: dict, environ: dict) -> tuple[str | None, str]:
    """(value for MKL_DEBUG_CPU_TYPE or None to leave it, one line saying what runs and why)."""
    if setting not in CHOICES:
        raise UserError(f"runner.cpu_math: choose one of {', '.join(CHOICES)}, not {setting!r}")
    name = cpu["model"] or "this CPU"
    if MKL_ENV in environ:
        value = environ[MKL_ENV]
        return None, f"cpu math: {MKL_ENV}={value} from the environment (runner.cpu_math ignored)"
    if setting == "default":
        return None, f"cpu math: MKL's own choice of kernels on {name} (runner.cpu_math: default)"
    if setting == "auto":
        if not cpu["vendor"] or cpu["vendor"] == INTEL:
            return None, f"cpu math: MKL's own choice of kernels on {name}"
        found = [k for k in ("avx512", "avx2") if supports(cpu, k)]
        if not found:
            return None, f"cpu math: MKL's own choice of kernels on {name} (no AVX2+FMA)"
        setting = found[0]
    elif not supports(cpu, setting):
        missing = sorted(set(KERNELS[setting][1]) - cpu["flags"])
        raise UserError(
            f"runner.cpu_math: {setting} needs CPU flags {', '.join(missing)}, which {name} "
            "lacks; use auto"
        )
    value = KERNELS[setting][0]
    return value, (
        f"cpu math: MKL's {KERNEL_NAMES[setting]} kernels on {name} ({MKL_ENV}={value}; "
        "runner.cpu_math: default turns this off)"
    )


def select(setting: str, environ=None, cpu: dict | None = None) -> str:
    """Apply `runner.cpu_math` to `environ` (os.environ) before MKL first runs; returns the line
    to log."""
    environ = os.environ if environ is None else environ
    own = environ.pop(OWN_ENV, None)
    if own is not None and environ.get(MKL_ENV) == own:
        del environ[MKL_ENV]  # set by this module in a parent process: this config decides
    value, line = choose(setting, cpu if cpu is not None else read_cpu(), environ)
    if value is not None:
        environ[MKL_ENV] = environ[OWN_ENV] = value
    return line
