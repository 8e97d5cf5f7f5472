"""`runner.use_onnx`: predictions of a checkpoint's `inference.onnx` (written by tools/export.py,
`onnx_export`) through ONNX Runtime on the CPU, an optional package (requirements-optional.txt)."""

from __future__ import annotations

import importlib.util
import os

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.run.inference_engine import ExportedModelEngine
from paddle_rec_zoo.run.runtime import math_threads

ONNX_FILE = "inference.onnx"
INSTALL = "pip install -r requirements-optional.txt"


def require(module: str, purpose: str):
    """Stop with one line naming the optional package `module` when it is not installed."""
    if importlib.util.find_spec(module) is None:
        raise UserError(f"{purpose} needs {module}, which is not installed: {INSTALL}")


class OnnxEngine(ExportedModelEngine):
    """Predicts with a checkpoint's `inference.onnx` through ONNX Runtime (CPU)."""

    name = "onnx"
    session = None

    def load(self, folder: str):
        path = os.path.join(folder, ONNX_FILE)
        how = f"write it with python tools/export.py -m CONFIG -o runner.infer_load_path={folder}"
        self._require_file(folder, path, how)
        self.session = onnx_session(path, self.config.runner.inference_cpu_threads)
        self._check_outputs(path, [o.name for o in self.session.get_outputs()])

    def predict(self, batch) -> dict:
        feed = {i.name: getattr(batch, i.name) for i in self.spec.inputs}
        values = self.session.run(list(self.output_names), feed)
        return {k: v.ravel() for k, v in zip(self.output_names, values, strict=True)}


def onnx_session(path: str, threads: int = 0):
    """An ONNX Runtime session of `path` on the CPU with `threads` math threads (0 = as
    `runner.inference_cpu_threads`' 0: this process's share of the usable cores)."""
    require("onnxruntime", "runner.use_onnx")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = math_threads(threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
