"""Engines over a model file a checkpoint holds: Paddle Inference's exported program
(`InferenceEngine`, `runner.use_inference`) and, in `onnx_engine`, its ONNX conversion."""

from __future__ import annotations

import os

import paddle

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.run.checkpoint import INFERENCE_PREFIX
from paddle_rec_zoo.run.runtime import math_threads, selected_gpu


class ExportedModelEngine:
    """Predicts with a model file a checkpoint holds (Paddle Inference's, ONNX): the model's
    declarations (`spec`) name its inputs and outputs. Subclasses `load` and `predict`."""

    name = ""

    def __init__(self, spec, config):
        self.spec = spec
        self.output_names = spec.outputs
        self.config = config

    @staticmethod
    def _require_file(folder: str, path: str, how_to_write: str):
        if not os.path.exists(path):
            raise UserError(f"{folder}: no {os.path.basename(path)}; {how_to_write}")

    def _check_outputs(self, where: str, names):
        missing = set(self.output_names) - set(names)
        if missing:
            raise UserError(f"{where}: the exported model lacks outputs {sorted(missing)}")


class InferenceEngine(ExportedModelEngine):
    """Predicts with an exported model through `paddle.inference` (oneDNN on the CPU)."""

    name = "inference"
    predictor = None

    def load(self, folder: str):
        prefix = os.path.join(folder, INFERENCE_PREFIX)
        self._require_file(folder, prefix + ".json", "static_trainer.py writes one per epoch")
        cfg = paddle.inference.Config(prefix + ".json", prefix + ".pdiparams")
        cfg.disable_glog_info()
        # The inplace pass let an op write into a value that is also an output: the division
        # variant's pcvr = pctcvr / pctr overwrote the pctcvr returned (by up to 0.9)
        cfg.delete_pass("inplace_pass")
        if self.config.runner.use_gpu and paddle.is_compiled_with_cuda():
            # the GPU runtime.setup selected; inputs are copied host -> device by the predictor
            cfg.enable_use_gpu(256, selected_gpu())
        else:
            cfg.disable_gpu()
            cfg.enable_mkldnn()
            threads = math_threads(self.config.runner.inference_cpu_threads)
            cfg.set_cpu_math_library_num_threads(threads)
        self.predictor = paddle.inference.create_predictor(cfg)
        self._check_outputs(folder, self.predictor.get_output_names())

    def predict(self, batch) -> dict:
        for item in self.spec.inputs:
            value = getattr(batch, item.name)
            handle = self.predictor.get_input_handle(item.name)
            handle.reshape(value.shape)
            handle.copy_from_cpu(value)
        self.predictor.run()
        return {
            k: self.predictor.get_output_handle(k).copy_to_cpu().ravel() for k in self.output_names
        }
