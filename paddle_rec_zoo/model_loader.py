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
    digest = hashlib.sha1(model_dir.encode()).hexdigest()[:10]
    base = "".join(c if c.isalnum() else "_" for c in os.path.basename(model_dir))
    return f"_zoo_model_{base}_{digest}"


def load_model_module(model_dir: str, name: str) -> types.ModuleType:
    """Import `<model_dir>/<name>.py` as a submodule of the folder's private package."""
    model_dir = os.path.abspath(model_dir)
    if not name.isidentifier():
        raise UserError(f"model module name {name!r} is not a Python module name")
    path = os.path.join(model_dir, f"{name}.py")
    if not os.path.exists(path):
        raise UserError(f"{model_dir} has no {name}.py (the config's folder is the model folder)")
    package = _package_name(model_dir)
    if package not in sys.modules:
        module = types.ModuleType(package)
        module.__path__ = [model_dir]
        module.__file__ = os.path.join(model_dir, "__init__.py")
        sys.modules[package] = module
    return importlib.import_module(f"{package}.{name}")
