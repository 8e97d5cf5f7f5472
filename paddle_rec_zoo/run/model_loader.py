"""Load a model folder's modules (dygraph_model.py, static_model.py, reader.py, ...) by path.

The folder is registered as a package under a private name, so its modules import each other
relatively (`from .net import ESMMLayer`) and nothing is added to `sys.path`.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import types

from paddle_rec_zoo.errors import UserError


def _package_name(model_dir: str) -> str:
    """The folder's private package name: its path and the state of its Python files, so a
    folder whose code changed (a test or a notebook rewriting a net.py) is imported afresh."""
    files = sorted(f for f in os.listdir(model_dir) if f.endswith(".py"))
    state = [(f, os.stat(os.path.join(model_dir, f)).st_mtime_ns) for f in files]
    digest = hashlib.sha1(repr((model_dir, state)).encode()).hexdigest()[:10]
    return f"{_folder_prefix(model_dir)}{digest}"


def _folder_prefix(model_dir: str) -> str:
    base = "".join(c if c.isalnum() else "_" for c in os.path.basename(model_dir))
    folder = hashlib.sha1(model_dir.encode()).hexdigest()[:6]
    return f"_zoo_model_{base}_{folder}_"


def forget_model(model_dir: str):
    """Drop every package this process registered for `model_dir` (and their modules)."""
    prefix = _folder_prefix(os.path.abspath(model_dir))
    for name in [n for n in sys.modules if n.startswith(prefix)]:
        del sys.modules[name]


def load_model_module(model_dir: str, name: str) -> types.ModuleType:
    """Import `<model_dir>/<name>.py` as a submodule of the folder's private package. The
    package stays registered, so the folder's modules import each other relatively and load
    once (one `net` module, one class per layer) until the folder's code changes; then the
    old package is forgotten and the new code imported."""
    model_dir = os.path.abspath(model_dir)
    if not name.isidentifier():
        raise UserError(f"model module name {name!r} is not a Python module name")
    path = os.path.join(model_dir, f"{name}.py")
    if not os.path.exists(path):
        raise UserError(f"{model_dir} has no {name}.py (the config's folder is the model folder)")
    package = _package_name(model_dir)
    if package not in sys.modules:
        forget_model(model_dir)
        module = types.ModuleType(package)
        module.__path__ = [model_dir]
        module.__file__ = os.path.join(model_dir, "__init__.py")
        sys.modules[package] = module
    return importlib.import_module(f"{package}.{name}")


# The data sets' readers in this package, by the name a config gives them
# (`runner.train_reader_path` / `infer_reader_path`). `reader` is the name older configs used.
DATASET_READERS = {
    "ali_ccp": "paddle_rec_zoo.data.ali_ccp",
    "reader": "paddle_rec_zoo.data.ali_ccp",
}


READER_KEYS = {"train": "train_reader_path", "infer": "infer_reader_path"}


def _reader_module(config, name: str):
    if os.path.exists(os.path.join(config.model_dir, f"{name}.py")):
        return load_model_module(config.model_dir, name)
    if name in DATASET_READERS:
        return importlib.import_module(DATASET_READERS[name])
    return None


def check_reader_keys(config):
    """Both reader keys must name a data set reader or a module of the model folder. PaddleRec's
    configs name their own `esmm_reader`: say which reader to use instead, as the one edit such
    a config needs."""
    r = config.runner
    bad = [k for k in READER_KEYS.values() if _reader_module(config, getattr(r, k)) is None]
    if not bad:
        return
    choices = ", ".join(sorted(set(DATASET_READERS) - {"reader"}))
    names = " and ".join(f"runner.{k}" for k in bad)
    fix = ", ".join(f"runner.{k}: ali_ccp" for k in bad)
    raise UserError(
        f"{names}: {' / '.join(sorted({getattr(r, k) for k in bad}))} is neither a data set "
        f"reader ({choices}) nor a module of {config.model_dir}; set {fix} in "
        f"{os.path.basename(config.config_path)} (a config copied from PaddleRec needs only this "
        "edit)"
    )


def reader_class(config, job: str = "train") -> type:
    """The `Reader` class the config chooses for `job` (train or infer): a module of the model
    folder of that name (a custom reader), else one of the package's data sets."""
    check_reader_keys(config)
    return _reader_module(config, getattr(config.runner, READER_KEYS[job])).Reader


def reader_fields(config) -> tuple[str, ...]:
    """The fields of the training reader's data set (its module's `FIELDS`): the models' default
    `hyper_parameters.fields`, so the building blocks need not know any data set. A reader key
    that names no reader (PaddleRec's `esmm_reader`, which reads Ali-CCP) gets Ali-CCP's fields
    here, so the rest of the config is checked; the tools then refuse the key itself."""
    name = config.runner.train_reader_path
    module = _reader_module(config, name) or importlib.import_module(DATASET_READERS["ali_ccp"])
    fields = getattr(module, "FIELDS", None)
    if not fields:
        raise UserError(
            f"hyper_parameters.fields is not set and the reader {name} has no default "
            f"(a module-level FIELDS); list the fields in {os.path.basename(config.config_path)}"
        )
    return tuple(fields)


def check_labels(spec, label_names: tuple[str, ...]):
    """Every label column the model uses must be one the reader gives (`label_names`)."""
    for label in spec.labels:
        if label not in label_names:
            key = spec.label_keys.get(label, "hyper_parameters")
            raise UserError(
                f"{key}: {label!r} is not a label column of the reader ({', '.join(label_names)})"
            )
