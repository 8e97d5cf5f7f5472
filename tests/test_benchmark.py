"""tools/benchmark.py runs end to end at a tiny size and writes its table (no timing checks)."""

import os
import sys

import benchmark  # tools/ is on the tests' path (pyproject.toml)
import pytest
from conftest import ROOT, run_group


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


def test_vocab_table_reports_each_size_against_the_smallest_and_the_baseline(tmp_path):
    args = benchmark.argparse.Namespace(
        workdir=str(tmp_path), runs=2, batch_size=1024, cpu_threads=None
    )
    meta = {"splits": {"train": {"rows": 4000}, "test": {"rows": 1000}}}
    bench = benchmark.Bench(args, meta)
    run = {"load": 1.0, "rss_mb": 500}
    bench.results = {
        "baseline_train": [{**run, "rate": 1000.0}, {**run, "rate": 1200.0}],
        "compute_dygraph@300000": [{**run, "rate": 30000.0}, {**run, "rate": 32000.0}],
        "compute_dygraph@10000000": [{**run, "rate": 27500.0}, {**run, "rate": 28500.0}],
        "train_dygraph_warm@300000": [{**run, "rate": 5500.0}] * 2,
        "train_dygraph_warm@10000000": [{**run, "rate": 2200.0, "rss_mb": 2300}] * 2,
    }
    text = bench.vocab_table([300000, 10000000], dim=12)
    rows = [line for line in text.splitlines() if line.startswith("| 1") or line.startswith("| 3")]
    assert rows[0].startswith("| 300,000 | dygraph | 31,000 (30,000–32,000) | 100% | 5,500")
    assert "| 5.0x |" in rows[0]  # 5,500 / median baseline 1,100
    assert rows[1].startswith("| 10,000,000 | dygraph | 28,000 (27,500–28,500) | 90% | 2,200")
    assert rows[1].endswith("| 2.0x | 2,300 | 1,373 |")  # 10M x 12 x 4 bytes x 3 = 1,373 MiB
    assert "static" not in text.split("Baseline")[0]  # no static results, no static rows
