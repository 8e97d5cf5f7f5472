"""The exported model as ONNX, for serving stacks that do not run Paddle (doc/inference.md).

`convert` turns a checkpoint's Paddle Inference model (`inference.json` + `.pdiparams`) into
`inference.onnx` through paddle2onnx, with the same interface: input `ids` (int64, [batch,
width]), outputs `pctr`, `pcvr`, `pctcvr` ([batch, 1] float32). `export` is tools/export.py.
`onnx_engine.OnnxEngine` predicts with the file through ONNX Runtime. Both libraries are optional
(requirements-optional.txt).

paddle2onnx runs in a child process: on a program it cannot convert it aborts the process
(a C++ assertion, SIGABRT) instead of raising, which would end the tool without a word.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import types

import numpy as np

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.report.progress import log
from paddle_rec_zoo.run import checkpoint
from paddle_rec_zoo.run.checkpoint import INFERENCE_PREFIX
from paddle_rec_zoo.run.engines import StaticEngine, drop_output_aliases
from paddle_rec_zoo.run.inference_engine import InferenceEngine
from paddle_rec_zoo.run.onnx_engine import INSTALL, ONNX_FILE, OnnxEngine, require

OPSET = 13  # ONNX Runtime has run opset 13 since 1.7; our program needs nothing newer
BATCH_DIM = "batch"  # the name of the dynamic first dimension in the ONNX model
TOLERANCE = 1e-5  # largest |ONNX Runtime - Paddle Inference| accepted


def convert(prefix: str, onnx_path: str):
    """Write `onnx_path` from the Paddle Inference model `prefix`.json/.pdiparams.

    A model exported before its output aliases were dropped is converted from a corrected
    copy; the checkpoint's own files are left as they are."""
    convert_many([(prefix, onnx_path)])


def convert_many(jobs: list[tuple[str, str]]):
    """`convert` for each (prefix, onnx_path), in one child process (one Paddle import)."""
    require("paddle2onnx", "ONNX export")
    with tempfile.TemporaryDirectory(prefix="onnx-export-") as tmp:
        args = []
        for i, (prefix, onnx_path) in enumerate(jobs):
            model_file = os.path.join(tmp, f"{i}.json")
            shutil.copyfile(prefix + ".json", model_file)
            try:
                if not drop_output_aliases(model_file):
                    model_file = prefix + ".json"
            except ValueError as e:  # not a PIR program: say which file, not Paddle's trace
                raise UserError(f"{prefix}.json: not a Paddle program ({e})") from None
            args += [model_file, prefix + ".pdiparams", onnx_path]
        done = run_paddle2onnx(args)
    if done.returncode != 0:
        said = [
            line.strip()
            for line in (done.stdout + done.stderr).splitlines()
            if "Paddle2ONNX" in line or line.startswith("error:")
        ]
        how = f"signal {-done.returncode}" if done.returncode < 0 else f"status {done.returncode}"
        names = ", ".join(f"{prefix}.json" for prefix, _ in jobs)
        raise UserError(
            f"paddle2onnx could not convert {names} ({how}): "
            + (" | ".join(said[-3:]) or done.stderr.strip()[-500:])
        )


def run_paddle2onnx(args: list[str]) -> subprocess.CompletedProcess:
    """The child process: paddle2onnx on each (model .json, .pdiparams, .onnx) of `args`."""
    cmd = [sys.executable, "-m", __name__, *args]
    env = {**os.environ, "GLOG_minloglevel": "2", "FLAGS_call_stack_level": "0"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def _convert_here(model_file: str, params_file: str, onnx_path: str):
    """The child's work: paddle2onnx, the batch dimension named, the model checked, written
    atomically."""
    import onnx
    import paddle2onnx

    # save_file=None returns the model instead of writing it: paddle2onnx's own writer would
    # fold constants with polygraphy, which pip-installs onnx-graphsurgeon at run time if it is
    # missing. ONNX Runtime folds them when it loads the model anyway.
    data = paddle2onnx.export(model_file, params_file, save_file=None, opset_version=OPSET)
    model = onnx.load_from_string(data)
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = BATCH_DIM
    onnx.checker.check_model(model)
    tmp = f"{onnx_path}.tmp-{os.getpid()}"
    onnx.save(model, tmp)
    os.replace(tmp, onnx_path)


def export(config, adapter_module, label_names, epoch: int | None = None) -> str:
    """tools/export.py: write `inference.onnx` into a checkpoint folder of `runner.infer_load_path`
    (that folder itself if it is one; else its epoch `epoch`, by default the newest), and the
    Paddle Inference model beside it if the checkpoint lacks one (the dygraph trainer writes
    none). Checks the ONNX model against Paddle Inference when onnxruntime is installed.
    Returns the ONNX file's path."""
    require("paddle2onnx", "tools/export.py")  # before any work
    root = config.runner.infer_load_path
    if checkpoint.is_checkpoint(root):
        folder = root
    elif epoch is not None:
        folder = checkpoint.require_epoch(root, epoch)
    else:
        epochs = checkpoint.saved_epochs(root)
        if not epochs:
            raise UserError(f"runner.infer_load_path: {root} holds no epoch checkpoint")
        folder = checkpoint.epoch_dir(root, epochs[-1])
    prefix = os.path.join(folder, INFERENCE_PREFIX)
    spec = adapter_module.StaticModel(config, label_names).spec
    if not os.path.exists(prefix + ".json"):
        engine = StaticEngine(adapter_module, config, training=False, label_names=label_names)
        engine.load(folder)
        engine.export_inference(prefix)
        log(f"wrote the Paddle Inference model {prefix}.json (+ .pdiparams)")
    onnx_path = os.path.join(folder, ONNX_FILE)
    convert(prefix, onnx_path)
    inputs = ", ".join(f"{i.name} ({i.dtype}, [{BATCH_DIM}, {i.width}])" for i in spec.inputs)
    log(
        f"wrote {onnx_path}: input {inputs}, outputs {', '.join(spec.outputs)} "
        f"(float32, [{BATCH_DIM}, 1]); opset {OPSET}"
    )
    if importlib.util.find_spec("onnxruntime") is None:
        log(f"onnxruntime is not installed: the ONNX model was not checked ({INSTALL})")
        return onnx_path
    rows = 512
    diff = max_difference(folder, spec, config, rows)
    if diff > TOLERANCE:
        raise UserError(
            f"{onnx_path}: ONNX Runtime and Paddle Inference differ by {diff:.3g} "
            f"(more than {TOLERANCE}) on {rows} random rows"
        )
    log(f"checked: ONNX Runtime = Paddle Inference on {rows} random rows (max |diff| {diff:.1e})")
    return onnx_path


def max_difference(folder: str, spec, config, rows: int = 512, seed: int = 0) -> float:
    """The largest |ONNX Runtime - Paddle Inference| over the outputs of the models in
    `folder`, on `rows` random rows: ids below the table's size, a third of them padding."""
    rng = np.random.default_rng(seed)
    columns = {}
    for item in spec.inputs:
        ids = rng.integers(1, config.hyper_parameters.sparse_feature_number, (rows, item.width))
        ids[rng.random(ids.shape) < 1 / 3] = 0
        columns[item.name] = ids.astype(item.dtype)
    batch = types.SimpleNamespace(**columns)
    outputs = []
    for engine in (InferenceEngine(spec, config), OnnxEngine(spec, config)):
        engine.load(folder)
        outputs.append(engine.predict(batch))
    return max(float(np.abs(outputs[0][k] - outputs[1][k]).max()) for k in spec.outputs)


if __name__ == "__main__":  # the child process of `convert`
    try:
        for i in range(1, len(sys.argv), 3):
            _convert_here(*sys.argv[i : i + 3])
    except Exception as e:  # paddle2onnx logs its Python errors and fails later; say the first
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
