"""The package's layout is its architecture: imports run one way between its subpackages, and
nothing edits the module search path."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "paddle_rec_zoo"

# What each part of the package may import of the package (besides itself). `errors` and
# `schema` are the shared vocabulary; building blocks, data and reporting never reach up into
# the runner; nothing but the benchmarks' own modules imports `bench`.
ALLOWED = {
    "errors": set(),
    "schema": {"errors"},
    "report": {"errors"},
    "nn": {"errors", "schema", "report"},
    "data": {"errors", "schema", "report"},
    "run": {"errors", "schema", "report", "nn", "data"},
    "bench": {"errors", "schema", "report", "nn", "data", "run", ""},  # "": the top
}


def _part(module: str) -> str | None:
    """`paddle_rec_zoo.nn.features` -> "nn"; None outside the package."""
    parts = module.split(".")
    if parts[0] != "paddle_rec_zoo":
        return None
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in `path`, in functions too, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    here = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    package = package.removesuffix(".__init__")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base == "paddle_rec_zoo":  # `from paddle_rec_zoo import nn` names a part
                found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, base))
    return found


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "egg-info" not in str(p))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_one_way(path):
    rel = path.relative_to(PACKAGE)
    own = rel.parts[0] if len(rel.parts) > 1 else rel.stem
    if own == "__init__":
        return  # the top: the names a model author imports, loaded lazily
    assert own in ALLOWED, f"{rel}: a new part of the package; add it to ALLOWED"
    bad = [
        f"{rel}:{line}: imports {module}"
        for line, module in _imports(path)
        if (part := _part(module)) not in (None, own) and part not in ALLOWED[own]
    ]
    assert not bad, "\n".join(bad)


def test_the_check_sees_a_wrong_import(tmp_path):
    """The checker itself: a building block importing the runner is caught."""
    bad = PACKAGE / "nn" / "_layout_probe.py"
    bad.write_text("from paddle_rec_zoo.run import engines\nfrom ..data import dataset\n")
    try:
        found = [m for _, m in _imports(bad) if _part(m) not in ALLOWED["nn"] | {"nn"}]
    finally:
        bad.unlink()
    assert found == ["paddle_rec_zoo.run", "paddle_rec_zoo.data"]


def test_nothing_edits_the_module_search_path():
    files = [*ROOT.glob("*.toml"), *ROOT.rglob("*.py"), *ROOT.rglob("*.md")]
    pattern = re.compile(
        r"sys\.path\.(insert|append)|^pythonpath\s*=|PYTHONPATH=\S*(tools|datasets)"
    )
    hits = [
        f"{f.relative_to(ROOT)}:{n}"
        for f in files
        if ".git" not in f.parts and "egg-info" not in str(f) and f.name != "test_layout.py"
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits


def test_the_top_gives_a_model_author_its_names_without_loading_paddle():
    code = (
        "import sys, paddle_rec_zoo as z\n"
        "assert 'paddle' not in sys.modules\n"
        "from paddle_rec_zoo import FeatureInput, MultiTaskModel, Metric, UserError, adapters\n"
        "assert FeatureInput.__module__ == 'paddle_rec_zoo.nn.features'\n"
        "assert adapters.__name__ == 'paddle_rec_zoo.run.adapters'\n"
        "print(sorted(z.__all__) == sorted(z._EXPORTS))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
