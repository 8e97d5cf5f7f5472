"""The one command-line front end behind trainer.py, infer.py, static_trainer.py, static_infer.py.

    python tools/trainer.py -m CONFIG [-o section.key=value ...]

A `UserError` (bad config, bad data, missing checkpoint) is printed as one line and exits 2.
SIGTERM or SIGINT prints one line and exits 128 + the signal's number; while training, it first
saves a checkpoint of the step it stopped at (`paddle_rec_zoo.signals`).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

# Before Paddle is imported: keep its C++ INFO logging off our console.
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("FLAGS_call_stack_level", "0")
warnings.filterwarnings("ignore", message="No ccache found")
# Raised inside Paddle's own PIR backward pass (optimizer.minimize), not by our code.
warnings.filterwarnings("ignore", message="Tensor do not have 'place' interface")

TOOLS = {
    "trainer": ("dygraph", "train"),
    "infer": ("dygraph", "infer"),
    "static_trainer": ("static", "train"),
    "static_infer": ("static", "infer"),
}


def parse_args(tool: str, argv=None) -> argparse.Namespace:
    engine, job = TOOLS[tool]
    parser = argparse.ArgumentParser(
        prog=f"{tool}.py",
        description=f"{'Train' if job == 'train' else 'Evaluate'} a model ({engine} engine) "
        "from its config.yaml.",
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


def main(tool: str, argv=None) -> int:
    args = parse_args(tool, argv)
    from paddle_rec_zoo import signals
    from paddle_rec_zoo.errors import UserError

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


def check_reader_keys(config):
    """Both reader keys must name a module of the model folder. PaddleRec's configs name their
    own `esmm_reader`: say which module to use instead, as the one edit such a config needs."""
    from paddle_rec_zoo.errors import UserError

    r, folder = config.runner, config.model_dir
    keys = ("train_reader_path", "infer_reader_path")
    bad = [k for k in keys if not os.path.exists(os.path.join(folder, f"{getattr(r, k)}.py"))]
    if not bad:
        return
    readers = sorted(
        name[:-3]
        for name in os.listdir(folder)
        if name.endswith(".py") and "class Reader" in Path(folder, name).read_text()
    )
    names = " and ".join(f"runner.{k}" for k in bad)
    missing = sorted({f"{getattr(r, k)}.py" for k in bad})
    fix = (
        ", ".join(f"runner.{k}: {readers[0]}" for k in bad)
        if readers
        else "the name of a module that defines Reader"
    )
    raise UserError(
        f"{names}: {folder} has no {' or '.join(missing)}; set {fix} in "
        f"{os.path.basename(config.config_path)} (a config copied from PaddleRec needs only this "
        "edit)"
    )


def run(tool: str, args) -> int:
    from paddle_rec_zoo import signals

    with signals.installed():  # Paddle's import installs its C++ handlers; ours replace them
        import paddle  # noqa: F401

    from paddle_rec_zoo import runtime
    from paddle_rec_zoo.config import load_config
    from paddle_rec_zoo.model_loader import load_model_module

    engine_kind, job = TOOLS[tool]
    model_dir = os.path.dirname(os.path.abspath(args.config))
    adapter = load_model_module(
        model_dir, "dygraph_model" if engine_kind == "dygraph" else "static_model"
    )
    model_cls = adapter.DygraphModel if engine_kind == "dygraph" else adapter.StaticModel
    config = load_config(args.config, args.opt, model_cls.hyper_parameters_class)
    check_reader_keys(config)
    reader_key = "train_reader_path" if job == "train" else "infer_reader_path"
    reader_module = load_model_module(model_dir, getattr(config.runner, reader_key))

    from paddle_rec_zoo import distributed, engines, loop, progress

    world = distributed.init(config.runner.use_fleet)
    progress.set_quiet(not world.is_main)
    for note in config.notes:
        progress.log(note)
    place = runtime.setup(config, static=engine_kind == "static")
    reader = reader_module.Reader(config)
    training = job == "train"
    if engine_kind == "dygraph":
        engine = engines.DygraphEngine(adapter, config, training=training, world=world)
        model = engine.model
    else:
        model = model_cls(config)
        if not training and config.runner.use_inference:
            engine = engines.InferenceEngine(model_cls.output_names, config)
        else:
            engine = engines.StaticEngine(
                adapter, config, training=training, place=place, world=world
            )
    if training:
        loop.train(config, engine, model, reader, world)
    else:
        loop.evaluate(config, engine, model, reader, world)
    return 0
