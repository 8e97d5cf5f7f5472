"""The one command-line front end behind trainer.py, infer.py, static_trainer.py, static_infer.py.

    python tools/trainer.py -m CONFIG [-o section.key=value ...]

A `UserError` (bad config, bad data, missing checkpoint) is printed as one line and exits 2.
SIGTERM or SIGINT prints one line and exits 128 + the signal's number; while training, it first
saves a checkpoint of the step it stopped at (`paddle_rec_zoo.run.signals`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings

TOOLS = {
    "trainer": ("dygraph", "train"),
    "infer": ("dygraph", "infer"),
    "static_trainer": ("static", "train"),
    "static_infer": ("static", "infer"),
    "export": ("static", "export"),
}
DESCRIPTIONS = {
    "train": "Train a model ({engine} engine) from its config.yaml.",
    "infer": "Evaluate a model ({engine} engine) from its config.yaml.",
    "export": "Write a checkpoint's inference.onnx (and its Paddle Inference model if missing).",
}


def parse_args(tool: str, argv=None) -> argparse.Namespace:
    engine, job = TOOLS[tool]
    parser = argparse.ArgumentParser(
        prog=f"{tool}.py",
        description=DESCRIPTIONS[job].format(engine=engine),
    )
    parser.add_argument("-m", "--config", required=True, help="the model's config YAML")
    parser.add_argument(
        "-o",
        "--opt",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config values, e.g. -o runner.epochs=2 hyper_parameters.ctr_fc_sizes=[128,32]",
    )
    return parser.parse_args(argv)


def finish(status: int):
    """End a tool's process with `status` once its work is done: output flushed, then without
    the interpreter's teardown of Paddle's objects, which took 0.3-0.5 s of every run here (a
    fifth of a 1.6 s evaluation; doc/benchmarks.md). Every file the tools write is complete
    and closed by then. Ranks of a launched job exit normally, as the launcher expects."""
    sys.stdout.flush()
    sys.stderr.flush()
    from paddle_rec_zoo.run.distributed import launched_size

    if launched_size() > 1:
        sys.exit(status)
    os._exit(status)


def quiet_paddle():
    """Keep Paddle's C++ INFO logging and its own warnings off our console. Before Paddle is
    imported (it reads GLOG_* then); a value the user set wins."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("FLAGS_call_stack_level", "0")
    warnings.filterwarnings("ignore", message="No ccache found")
    # Raised inside Paddle's own PIR backward pass (optimizer.minimize), not by our code.
    warnings.filterwarnings("ignore", message="Tensor do not have 'place' interface")


def main(tool: str, argv=None) -> int:
    args = parse_args(tool, argv)
    quiet_paddle()
    from paddle_rec_zoo.errors import UserError
    from paddle_rec_zoo.run import signals

    try:
        return run(tool, args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permission denied, ...: the environment, not a bug
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except signals.Interrupted as e:
        print(e.message, file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        signals.restore()


def run(tool: str, args) -> int:
    from paddle_rec_zoo.run import signals

    with signals.installed():  # Paddle's import installs its C++ handlers; ours replace them
        import paddle  # noqa: F401

    from paddle_rec_zoo.run import runtime
    from paddle_rec_zoo.run.config import load_config
    from paddle_rec_zoo.run.model_loader import load_model_module, reader_class

    engine_kind, job = TOOLS[tool]
    model_dir = os.path.dirname(os.path.abspath(args.config))
    adapter = load_model_module(
        model_dir, "dygraph_model" if engine_kind == "dygraph" else "static_model"
    )
    model_cls = adapter.DygraphModel if engine_kind == "dygraph" else adapter.StaticModel
    config = load_config(args.config, args.opt, model_cls.hyper_parameters_class)
    reader_cls = reader_class(config, "train" if job == "train" else "infer")

    from paddle_rec_zoo.report import progress
    from paddle_rec_zoo.run import distributed, evaluate, loop

    world = distributed.init(config.runner.use_fleet)
    with progress.quiet(not world.is_main):
        for note in config.notes:
            progress.log(note)
        static = engine_kind == "static"
        place = runtime.setup(config, static=static)
        reader = reader_cls(config)
        # a static tool runs in static mode throughout; run in-process, it leaves the mode it found
        with runtime.static_mode() if static else contextlib.nullcontext():
            if job == "export":
                from paddle_rec_zoo.run import onnx_export

                epoch = _epoch_asked(config, args.opt)
                onnx_export.export(config, adapter, reader.label_names, epoch)
                return 0
            engine = _engine(engine_kind, job, adapter, model_cls, config, reader, world, place)
            if job == "train":
                loop.train(config, engine, reader, world)
            else:
                evaluate.evaluate(config, engine, reader, world)
    return 0


def _engine(engine_kind, job, adapter, model_cls, config, reader, world, place):
    """The tool's engine over the model."""
    from paddle_rec_zoo.run import engines
    from paddle_rec_zoo.run.inference_engine import InferenceEngine

    training = job == "train"
    kwargs = {"training": training, "world": world, "label_names": reader.label_names}
    if engine_kind == "dygraph":
        return engines.DygraphEngine(adapter, config, **kwargs)
    if not training and config.runner.use_onnx:
        from paddle_rec_zoo.run.onnx_engine import OnnxEngine

        return OnnxEngine(model_cls(config, reader.label_names).spec, config)
    if not training and config.runner.use_inference:
        return InferenceEngine(model_cls(config, reader.label_names).spec, config)
    return engines.StaticEngine(adapter, config, place=place, **kwargs)


def _epoch_asked(config, overrides: list[str]) -> int | None:
    """The epoch export.py converts: `runner.infer_start_epoch` when the command line sets it,
    else None (the newest). A config's own value is where its evaluations start, not a choice."""
    asked = any(o.startswith("runner.infer_start_epoch=") for o in overrides)
    return config.runner.infer_start_epoch if asked else None
