"""The zoo's shared package.

    nn/      model building blocks (layers, features, sparse tables, optimizers, towers, experts,
             the model contract)
    data/    readers and formats (slot text, binary, the data layer, the Ali-CCP data set)
    run/     config, CLI, engines, loops, checkpoints, warm start, distributed, signals
    report/  metrics, progress, curves, experiment tables
    bench/   the benchmarks
    schema   the batch contract; errors: UserError

A model author imports the few names below from here (`from paddle_rec_zoo import FeatureInput`);
they load on first use, so importing the package itself costs nothing (and no Paddle).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "UserError": "errors",
    "Linear": "nn.layers",
    "dnn": "nn.layers",
    "mlp": "nn.layers",
    "FeatureInput": "nn.features",
    "FeatureHyperParameters": "nn.features",
    "Model": "nn.model",
    "ModelSpec": "nn.model",
    "Input": "nn.model",
    "MultiTaskModel": "nn.multitask",
    "MultiTaskHyperParameters": "nn.multitask",
    "entire_space_outputs": "nn.multitask",
    "division_outputs": "nn.multitask",
    "ExpertsModel": "nn.experts",
    "ExpertsHyperParameters": "nn.experts",
    "MMoE": "nn.experts",
    "PLE": "nn.experts",
    "Metric": "report.metrics",
    "EPS": "report.metrics",
    "adapters": "run.adapters",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'paddle_rec_zoo' has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
    value = module if name == _EXPORTS[name].rpartition(".")[2] else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
