"""Typed configuration: YAML files with `base:` inheritance, `-o` overrides, strict validation.

A config file has two sections, `runner:` (generic, `RunnerConfig` below) and
`hyper_parameters:` (model specific: the model's adapter class names its dataclass in
`hyper_parameters_class`). Every key is checked against the dataclasses: an unknown key is an
error naming the key and the closest valid one, a value of the wrong type is an error naming the
key and the expected type. Defaults live in the dataclasses and nowhere else.

Paths (fields declared with `path_field`) written in a YAML file are relative to that file;
paths given with `-o` on the command line are relative to the current directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.run import cpu_math, model_loader, paddlerec_keys

_PATH = "path"


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `109_14` as the integer 10914; Ali-CCP field names look exactly like that.
    This loader keeps YAML's other rules but accepts only plain digits as integers."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:int"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?(0|[1-9][0-9]*)$"), list("-+0123456789")
)


def yaml_load(text):
    """`yaml.safe_load` with the integer rule above (no code execution, plain data only)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader


def path_field(default: Any = "", **kwargs) -> Any:
    """A dataclass field holding a file-system path (resolved against the file that sets it)."""
    return field(default=default, metadata={_PATH: True}, **kwargs)


@dataclass
class RunnerConfig:
    """The `runner:` section, shared by every model and all four tools."""

    train_data_dir: str = path_field()
    test_data_dir: str = path_field()
    # the data set's reader: ali_ccp (paddle_rec_zoo/ali_ccp.py), or a module of the model folder
    train_reader_path: str = "ali_ccp"
    infer_reader_path: str = ""  # the infer tools' reader; "" = train_reader_path
    model_save_path: str = path_field("output")
    infer_load_path: str = path_field()  # where infer tools find checkpoints; "" = model_save_path
    # start training from these weights: a checkpoint folder, or a run folder (its last epoch)
    model_init_path: str = path_field()
    model_init_optimizer: bool = False  # with model_init_path: also its optimizer state
    epochs: int = 1
    train_batch_size: int = 1024
    infer_batch_size: int = 4096
    print_interval: int = 100  # log every N training batches
    seed: int = 2018
    shuffle: bool = True  # shuffle training rows each epoch (seeded: same seed, same order)
    use_gpu: bool = False
    overwrite: bool = False  # allow a new run to replace checkpoints already in model_save_path
    resume: bool = False  # continue the run in model_save_path from its newest checkpoint
    save_steps: int = 0  # also checkpoint every N training steps, mid-epoch (0 = epoch ends only)
    keep_step_checkpoints: int = 2  # how many of those mid-epoch checkpoints to keep
    use_fleet: bool = False  # data-parallel over the processes of paddle.distributed.launch
    skip_bad_lines: bool = False  # count and skip malformed data lines instead of stopping
    evaluate_each_epoch: bool = False  # trainers: evaluate test_data_dir after every epoch
    keep_best: str = ""  # a test metric (e.g. auc_ctcvr): copy its best epoch to <save>/best/
    infer_start_epoch: int = 0
    infer_end_epoch: int = -1  # exclusive; -1 = `epochs`
    save_predictions: str = path_field()  # CSV of per-sample predictions for the last epoch
    use_inference: bool = False  # static_infer: evaluate the exported Paddle Inference model
    use_onnx: bool = False  # static_infer: evaluate the checkpoint's inference.onnx (ONNX Runtime)
    use_visual: bool = False  # trainers: also write VisualDL logs into model_save_path/visualdl
    cache_dir: str = path_field()  # parsed-data cache; "" = ~/.cache/paddle-rec-zoo
    use_cache: bool = True
    # math-library threads of the training step; 0 = all usable cores (shared among the Fleet
    # ranks of this machine). 1 by default: the other core prepares the next batch, and two math
    # threads trained no faster on the 2-core AMD machine (doc/benchmarks.md, "Threads")
    cpu_threads: int = 1
    # math threads of the Paddle Inference predictor (static_infer.py use_inference); 0 = as
    # cpu_threads' 0 (1.5x with 2 threads than with 1 here)
    inference_cpu_threads: int = 0
    # the math library's kernels: auto = the fastest this CPU supports (MKL's AVX2 or AVX-512
    # path on AMD, which it skips by default); default = MKL's own choice; avx2; avx512
    cpu_math: str = "auto"

    def validate(self, where: str):
        for key in ("epochs", "train_batch_size", "infer_batch_size", "print_interval"):
            if getattr(self, key) < 1:
                raise UserError(f"{where}.{key} must be at least 1, got {getattr(self, key)}")
        for key in ("save_steps", "cpu_threads", "inference_cpu_threads"):
            if getattr(self, key) < 0:
                raise UserError(
                    f"{where}.{key} must be 0 ({'off' if key == 'save_steps' else 'all cores'}) "
                    f"or more, got {getattr(self, key)}"
                )
        if self.cpu_math not in cpu_math.CHOICES:
            raise UserError(
                f"{where}.cpu_math: choose one of {', '.join(cpu_math.CHOICES)}, "
                f"not {self.cpu_math!r}"
            )
        if self.use_inference and self.use_onnx:
            raise UserError(
                f"{where}.use_inference and {where}.use_onnx: choose one predictor to evaluate"
            )
        if self.keep_step_checkpoints < 1:
            raise UserError(
                f"{where}.keep_step_checkpoints must be at least 1, got {self.keep_step_checkpoints}"
            )


@dataclass
class Config:
    runner: RunnerConfig
    hyper_parameters: Any
    config_path: str = ""  # the YAML file this was loaded from (absolute)
    notes: list[str] = field(default_factory=list)  # keys accepted without effect, and why

    @property
    def model_dir(self) -> str:
        return os.path.dirname(self.config_path)

    def to_dict(self) -> dict:
        return {
            "runner": dataclasses.asdict(self.runner),
            "hyper_parameters": dataclasses.asdict(self.hyper_parameters),
        }


# --------------------------------------------------------------------------- loading
def read_yaml(path: str) -> dict:
    """Read one YAML file (following `base:`, one file or a list merged in order) into a dict
    whose relative paths are resolved against the folder of the file that states them."""
    return _read_yaml(os.path.abspath(path), seen=())


def _read_yaml(path: str, seen: tuple) -> dict:
    if path in seen:
        raise UserError(f"{path}: `base:` chain loops back to itself")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml_load(f)
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping with runner: and hyper_parameters: sections")
    bases = data.pop("base", None)
    data = _resolve_paths(data, os.path.dirname(path))
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not bases or not all(isinstance(b, str) and b for b in bases):
        raise UserError(f"{path}: base: a config file, or a list of them, not {bases!r}")
    merged: dict = {}
    for base in bases:  # in order, each over the ones before; this file over them all
        base_path = os.path.join(os.path.dirname(path), os.path.expanduser(base))
        merged = deep_merge(merged, _read_yaml(os.path.abspath(base_path), seen + (path,)))
    return deep_merge(merged, data)


def deep_merge(base: dict, update: dict) -> dict:
    """`update` wins; nested mappings are merged key by key, lists and scalars are replaced."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _resolve_paths(data: dict, root: str) -> dict:
    """Make the runner's path values absolute against `root` (the YAML's folder or the cwd)."""
    runner = data.get("runner")
    if not isinstance(runner, dict):
        return data
    path_keys = {f.name for f in dataclasses.fields(RunnerConfig) if f.metadata.get(_PATH)}
    runner = dict(runner)
    for key in path_keys & runner.keys():
        value = runner[key]
        if isinstance(value, str) and value and not os.path.isabs(value):
            runner[key] = os.path.normpath(os.path.join(root, os.path.expanduser(value)))
    return {**data, "runner": runner}


def parse_overrides(items: list[str]) -> dict:
    """`["runner.epochs=3", "hyper_parameters.ctr_fc_sizes=[128,32]"]` -> nested dict.

    Values are parsed as YAML (so lists, numbers, booleans and null work); a value that is not
    valid YAML is taken as a string.
    """
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"-o {item!r}: expected section.key=value")
        try:
            value = yaml_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parts = key.split(".")
        if len(parts) < 2:
            raise UserError(
                f"-o {item!r}: name the section too, e.g. runner.{key}= or hyper_parameters.{key}="
            )
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"-o {item!r}: {key} is set twice with different shapes")
        node[parts[-1]] = value
    return out


def load_config(path: str, overrides: list[str] | None = None, hyper_cls: type | None = None):
    """Load, merge and validate a config. Returns `Config` (or the raw dict if `hyper_cls` is None)."""
    data = read_yaml(path)
    data = deep_merge(data, _resolve_paths(parse_overrides(overrides or []), os.getcwd()))
    data, notes, checked = paddlerec_keys.extract(data)
    unknown = set(data) - {"runner", "hyper_parameters"}
    for key in sorted(unknown):
        raise UserError(_unknown_key_message(key, ["runner", "hyper_parameters"], ""))
    runner = build_dataclass(RunnerConfig, data.get("runner") or {}, "runner")
    if hyper_cls is None:
        raise ValueError("hyper_cls is required")
    if runner.infer_end_epoch < 0:
        runner.infer_end_epoch = runner.epochs
    if not runner.infer_load_path:
        runner.infer_load_path = runner.model_save_path
    if not runner.infer_reader_path:
        runner.infer_reader_path = runner.train_reader_path
    cfg = Config(runner=runner, hyper_parameters=None, config_path=os.path.abspath(path))
    hyper_data = data.get("hyper_parameters") or {}
    if "fields" not in hyper_data and "fields" in {f.name for f in dataclasses.fields(hyper_cls)}:
        hyper_data = {**hyper_data, "fields": list(model_loader.reader_fields(cfg))}
    cfg.hyper_parameters = build_dataclass(hyper_cls, hyper_data, "hyper_parameters")
    cfg.notes.extend(notes)
    paddlerec_keys.check(cfg, checked)
    if runner.test_data_dir and runner.test_data_dir == runner.train_data_dir:
        cfg.notes.append(  # PaddleRec's own ESMM config.yaml does this
            "runner.test_data_dir is the training data: evaluation will measure fit, not "
            "generalisation"
        )
    return cfg


# --------------------------------------------------------------------------- validation
def _unknown_key_message(key: str, valid: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(valid)}"
    return f"unknown config key {prefix}{key}{hint}"


def _field_key(f: dataclasses.Field) -> str:
    # `class` is a Python keyword: the dataclass spells it `class_`, the YAML `class`.
    return f.name[:-1] if f.name.endswith("_") else f.name


def build_dataclass(cls: type, data: Any, where: str):
    """Build dataclass `cls` from a mapping, checking keys and types. `where` is the key path."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {_field_key(f): f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise UserError(_unknown_key_message(str(key), sorted(fields), f"{where}."))
        f = fields[key]
        kwargs[f.name] = _convert(value, hints[f.name], f"{where}.{key}")
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise UserError(f"{where}: {e}") from None
    check = getattr(obj, "validate", None)
    if check is not None:
        check(where)
    return obj


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if len(errors) == 1 else f"{where}: {value!r} is not a {tp}")
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = args or (Any,)
        return [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        key_tp, val_tp = args or (Any, Any)
        return {
            _convert(k, key_tp, where): _convert(v, val_tp, f"{where}.{k}")
            for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{where}: expected a string, got {value!r}")
    raise UserError(f"{where}: unsupported config type {_type_name(tp)}")
