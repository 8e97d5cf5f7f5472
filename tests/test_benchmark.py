"""tools/benchmark.py runs end to end at a tiny size and writes its table (no timing checks)."""

import os
import sys

import pytest
from conftest import ROOT, run_group

sys.path.insert(0, os.path.join(ROOT, "tools"))
import benchmark  # noqa: E402


def test_update_doc_replaces_only_the_table(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nintro\n\n## Raw Ali-CCP conversion\n\ntheirs\n")
    benchmark.update_doc("| a |\n", "python tools/benchmark.py", str(doc))
    benchmark.update_doc("| b |\n", "python tools/benchmark.py --runs 5", str(doc))
    text = doc.read_text()
    assert "## Raw Ali-CCP conversion\n\ntheirs" in text and "intro" in text
    assert "| b |" in text and "| a |" not in text and "--runs 5" in text
    assert text.count(benchmark.TABLE_BEGIN) == 1


@pytest.mark.slow
def test_benchmark_runs_every_measurement_and_writes_its_table(tmp_path):
    table = tmp_path / "table.md"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "--rows", "1500"]
    cmd += ["--runs", "1", "--steps", "12", "--workdir", str(tmp_path / "w")]
    cmd += ["--table", str(table)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = run_group(cmd, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = table.read_text()
    for _, what, _ in benchmark.MEASUREMENTS:
        assert what in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == len(benchmark.MEASUREMENTS) + 1  # and the header
    assert "1.0x" in text  # the baseline against itself
    assert os.path.exists(tmp_path / "w" / "results.json")
