"""tools/benchmark.py runs end to end at a tiny size and writes its table (no timing checks)."""

import ast
import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

import paddle
import pytest
from conftest import ROOT, ZOO, run_group

from paddle_rec_zoo.bench import benchmark
from paddle_rec_zoo.bench import scale as bench_scale
from paddle_rec_zoo.bench import step_profile as bench_profile
from paddle_rec_zoo.run import runtime


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
    cmd += ["--table", str(table), "--before", ROOT]  # this checkout stands in for an older one
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
    text = benchmark.vocab_table(bench, [300000, 10000000], dim=12)
    rows = [line for line in text.splitlines() if line.startswith("| 1") or line.startswith("| 3")]
    assert rows[0].startswith("| 300,000 | dygraph | 31,000 (30,000–32,000) | 100% | 5,500")
    assert "| 5.0x |" in rows[0]  # 5,500 / median baseline 1,100
    assert rows[1].startswith("| 10,000,000 | dygraph | 28,000 (27,500–28,500) | 90% | 2,200")
    assert rows[1].endswith("| 2.0x | 2,300 | 1,373 |")  # 10M x 12 x 4 bytes x 3 = 1,373 MiB
    assert "static" not in text.split("Baseline")[0]  # no static results, no static rows


def test_paddlerec_recipe_trains_an_epoch_and_saves_it(tmp_path):
    save = tmp_path / "out"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "paddlerec_recipe.py")]
    cmd += ["--data", os.path.join(ROOT, "models", "multitask", "esmm", "data", "train")]
    cmd += ["--batch-size", "256", "--epochs", "1", "--save", str(save), "--print-interval", "5"]
    cmd += ["--sparse-feature-number", "1395", "--cpu-threads", "1"]  # data/meta.json
    env = dict(os.environ, PYTHONWARNINGS="ignore", GLOG_minloglevel="2")
    proc = run_group(cmd, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    done = re.search(r"done in [\d.]+s \(([\d,]+) samples/s\); ([\d,]+) samples, loss (\S+)", out)
    assert done, out[-2000:]
    assert float(done.group(1).replace(",", "")) > 0
    assert done.group(2) == "3,840"  # 4000 rows, drop_last as PaddleRec: 15 batches of 256
    logged = [float(x) for x in re.findall(r"batch_id: \d+, .*?loss:([\d.]+),", out)]
    assert len(logged) == 3 and math.isfinite(float(done.group(3)))  # batches 0, 5, 10
    assert float(done.group(3)) < logged[0]  # it learns: the last batch's loss below the first
    params = paddle.load(str(save / "0" / "rec.pdparams"))
    assert list(params["embedding.weight"].shape) == [1395, 12]
    assert {k for k in params if k.endswith(".weight") and "tower" in k} == {
        f"{t}_tower.{i}.weight" for t in ("ctr", "cvr") for i in (0, 2, 4)
    }  # both towers 276-256-64-2, ReLU between
    assert (save / "0" / "rec.pdopt").exists()


def test_paddlerec_recipe_imports_nothing_of_the_project():
    with open(os.path.join(ROOT, "tools", "paddlerec_recipe.py")) as f:
        tree = ast.parse(f.read())
    imported = {
        a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {
        "__future__",
        "argparse",
        "logging",
        "math",
        "os",
        "sys",
        "time",
        "numpy",
        "paddle",
    }


def test_quality_table_has_a_column_per_declared_auc_and_names_no_metric_itself(tmp_path):
    args = benchmark.argparse.Namespace(
        workdir=str(tmp_path), runs=1, batch_size=1024, cpu_threads=None
    )
    bench = benchmark.Bench(args, {"splits": {"train": {"rows": 40}, "test": {"rows": 10}}})
    bench.auc_metrics = [("auc_a", "A AUC"), ("auc_b", "B AUC (clicked)")]  # a model's spec
    for i in range(len(benchmark.QUALITY)):
        bench.results[f"quality@{i}"] = [{"test": {"auc_a": 0.5 + i / 100, "auc_b": 0.6}}]
    lines = benchmark.quality_table(bench).splitlines()
    assert lines[2] == "| embedding optimizer | test A AUC | test B AUC (clicked) |"
    assert lines[3] == "|---|---|---|"
    assert lines[5] == f"| {benchmark.QUALITY[1][0]} | 0.5100 | 0.6000 |"
    # the labels and metrics come from the model's spec and the reader (doc/architecture.md)
    for module in (benchmark, bench_scale):
        source = Path(module.__file__).read_text()
        for name in ("click", "buy", "auc_ctr", "auc_cvr", "auc_ctcvr", "pctr", "pcvr"):
            assert name not in source, (module.__name__, name)


def test_paddlerec_recipe_runs_on_the_tools_data_and_threads_without_mkl_settings(
    tmp_path, monkeypatch
):
    args = benchmark.argparse.Namespace(
        workdir=str(tmp_path), runs=1, batch_size=512, cpu_threads=2
    )
    meta = {"splits": {"train": {"rows": 4000}, "test": {"rows": 1000}}}
    bench = benchmark.Bench(args, {**meta, "sparse_feature_number": 777})
    calls = []

    def fake_run(cmd, log_path, env_extra=None):
        calls.append((cmd, env_extra or {}))
        return 2.0, 300, "epoch 0 done in 1.5s (2,560 samples/s); 3,584 samples, loss 0.5\n"

    monkeypatch.setattr(benchmark, "run_process", fake_run)
    bench.run_paddlerec(0)
    ((cmd, env),) = calls
    assert cmd[1].endswith("paddlerec_recipe.py") and "MKL_DEBUG_CPU_TYPE" not in env
    flags = dict(zip(cmd[2::2], cmd[3::2], strict=True))  # every flag has a value
    assert flags["--data"] == os.path.join(str(tmp_path), "data", "train_data")
    assert flags["--batch-size"] == "512" and flags["--epochs"] == "1"
    assert flags["--cpu-threads"] == "2" and flags["--sparse-feature-number"] == "777"
    (result,) = bench.results["paddlerec_train"]
    assert result["rate"] == 2000.0 and result["loop_rate"] == 2560.0  # rows / whole process


def test_runs_measure_the_tools_own_kernel_choice_unless_a_row_sets_one(tmp_path, monkeypatch):
    monkeypatch.setenv("MKL_DEBUG_CPU_TYPE", "5")  # the benchmark user's own setting
    show = [sys.executable, "-c", "import os; print(os.environ.get('MKL_DEBUG_CPU_TYPE'))"]
    _, _, text = benchmark.run_process(show, str(tmp_path / "a.log"))
    assert text.strip() == "None"
    _, _, text = benchmark.run_process(show, str(tmp_path / "b.log"), {"MKL_DEBUG_CPU_TYPE": "7"})
    assert text.strip() == "7"


def test_table_gives_training_rows_against_both_baselines(tmp_path):
    args = benchmark.argparse.Namespace(
        workdir=str(tmp_path), runs=1, batch_size=1024, infer_batch_size=8192, cpu_threads=None
    )
    bench = benchmark.Bench(args, {"splits": {"train": {"rows": 4000}, "test": {"rows": 1000}}})
    run = {"load": 1.0, "rss_mb": 500}
    bench.results = {
        "baseline_train": [{**run, "rate": 2000.0}],
        "baseline_eval": [{**run, "rate": 4000.0}],
        "paddlerec_train": [{**run, "rate": 1000.0}],
        "train_dygraph_warm": [{**run, "rate": 7000.0}],
        "infer_dygraph_warm": [{**run, "rate": 20000.0}],
    }
    rows = {
        line.split(" | ")[0][2:]: line.split(" | ")
        for line in benchmark.speed_table(bench).splitlines()
    }
    header = rows["measurement"]
    vs_base, vs_recipe = header.index("vs baseline"), header.index("vs PaddleRec recipe")
    trainer = rows["trainer.py, 1 epoch, warm cache"]
    assert (trainer[vs_base], trainer[vs_recipe]) == ("3.5x", "7.0x")
    recipe = rows["PaddleRec's own ESMM recipe (reader, network, trainer), whole process"]
    assert (recipe[vs_base], recipe[vs_recipe]) == ("0.5x", "1.0x")
    baseline = rows["baseline: PaddleRec-style line-by-line reader, dygraph training"]
    assert baseline[vs_recipe] == "2.0x"
    infer = rows["infer.py (dygraph eval), warm cache"]
    assert (infer[vs_base], infer[vs_recipe]) == ("5.0x", "")  # the recipe does not evaluate


def _rehearsal_with(tmp_path, results: dict, **meta):
    """A scale rehearsal's report over given results (no stage is run)."""
    settings = {"batch_size": 512, "dim": 12, "width": 69}
    r = bench_scale.Rehearsal(1000, str(tmp_path), settings)
    r.meta = {
        "rows": {"train": 1_000_000, "test": 1_000_000},
        "common_rows": {"train": 20_000, "test": 20_000},
        "sparse_feature_number": 100_000,
        **meta,
    }
    r.raw_bytes = 600_000_000
    r.results = {k: {"load": 1.0, "disk_peak": 0, **v} for k, v in results.items()}
    return r


def test_scale_projection_is_linear_in_rows_and_adds_what_grows(tmp_path):
    r = _rehearsal_with(
        tmp_path,
        {
            "convert": {"wall": 100.0, "rss_mb": 200},
            "train_static": {"wall": 60.0, "rss_mb": 500},
            "infer_dygraph": {"wall": 10.0, "rss_mb": 400},
        },
    )
    # 85.3M rows / 2M = 42.65x of 100 s; by bytes 27 GB / 0.6 GB = 45x
    assert r.project_wall("convert", "all") == "71 min (75 min by raw bytes)"
    assert r.project_wall("train_static", "train") == "42 min"  # 60 s x 42.3
    assert r.project_wall("generate", "all").startswith("—")
    assert r.full_vocab() == 4_230_000  # in proportion to the train rows
    d_vocab = 4_130_000
    train = d_vocab * 12 * 4 * 4 + (730_599 - 20_000) * 69 * 4 + 41_300_000 * 16
    assert r.project_rss("train_static") == round(500 + train / 2**20)
    test = d_vocab * 12 * 4 * 2 + (884_211 - 20_000) * 69 * 4 + 42_000_000 * 116
    assert r.project_rss("infer_dygraph") == round(400 + test / 2**20)
    assert r.project_rss("generate") is None
    assert round(bench_scale.TEST_RATIO, 4) == 1.0165  # 43.0M / 42.3M, the real splits


def test_scale_table_goes_between_its_own_markers_of_the_doc(tmp_path):
    with open(benchmark.DOC) as f:
        real = f.read()
    assert real.count(bench_scale.BEGIN) == 1 and real.count(bench_scale.END) == 1
    doc = tmp_path / "benchmarks.md"
    doc.write_text(real)
    cmd = "python tools/benchmark.py --scale 3000"
    benchmark.update_doc("| new scale table |\n", cmd, str(doc), bench_scale.BEGIN, bench_scale.END)
    text = doc.read_text()
    head, rest = real.split(bench_scale.BEGIN)
    assert text.startswith(head) and text.endswith(rest.split(bench_scale.END, 1)[1])
    block = text.split(bench_scale.BEGIN)[1].split(bench_scale.END)[0]
    assert "| new scale table |" in block and f"`{cmd}`" in block
    assert text.count(benchmark.TABLE_BEGIN) == 1  # the throughput table untouched


@pytest.mark.slow
def test_scale_rehearsal_runs_every_stage_and_leaves_the_doc_alone(tmp_path):
    with open(benchmark.DOC, "rb") as f:
        doc_before = f.read()
    table = tmp_path / "table.md"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "--scale", "3000"]
    cmd += ["--workdir", str(tmp_path / "w"), "--table", str(table)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = run_group(cmd, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = table.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == len(bench_scale.STAGES) + 1  # and the header
    for (_, what, _), row in zip(bench_scale.STAGES, rows[1:], strict=True):
        assert row.startswith(f"| {what} | ")
    assert "3,000 train / 3,050 test impressions" in text
    assert "Projection to the full Ali-CCP" in text and "Disk: raw" in text
    with open(tmp_path / "w" / "scale" / "results.json") as f:
        results = json.load(f)["results"]
    assert set(results) == {key for key, _, _ in bench_scale.STAGES}
    for key, r in results.items():
        assert r["wall"] > 0 and r["rss_mb"] > 0, key
    for key in ("infer_inference", "infer_dygraph"):  # the AUCs each evaluation printed
        assert len(results[key]["auc"]) == 3 and all(0 <= a <= 1 for a in results[key]["auc"])
    header = next(line for line in text.splitlines() if line.startswith("| stage |"))
    assert "| test auc_ctr / auc_cvr / auc_ctcvr |" in header  # ESMM's, as its spec declares
    assert results["train_static"]["loop_rate"] > 0
    with open(benchmark.DOC, "rb") as f:
        assert f.read() == doc_before  # no --update-doc, no change


def test_scale_reads_the_declared_metrics_of_the_last_evaluation():
    text = (
        "epoch 0 [static]: auc_a 0.7000 auc_b nan (samples 1,000, buys 3)\n"
        "epoch 1 [static]: auc_a 0.7435 loss_b 0.1200 (samples 1,000, buys 3)\n"
    )
    assert bench_scale.eval_metrics(text) == {"auc_a": 0.7435, "loss_b": 0.12}
    assert bench_scale.eval_metrics("no evaluation\n") == {}


def _op(name, ts, dur, cat="Operator"):
    return {"name": f"{name}[{dur} us]", "cat": cat, "ph": "X", "ts": ts, "dur": dur, "tid": 1}


def _region(name, ts, dur):
    return _op(name, ts, dur, cat="PythonUserDefined")


def test_op_names_are_the_same_in_both_engines():
    names = {
        "matmul dygraph[1.2 ms]": "matmul",
        "pd_op.matmul": "matmul",
        "Global_MatmulGradNode[3 us]": "matmul_grad",
        "pd_op.matmul_grad": "matmul_grad",
        "Global_AddNGradNodeFinal": "add_n_grad",
        "Global_SigmoidCrossEntropyWithLogitsGradNode": "sigmoid_cross_entropy_with_logits_grad",
        "pd_op.sigmoid_cross_entropy_with_logits_grad_": "sigmoid_cross_entropy_with_logits_grad",
        "pd_op.relu_grad_": "relu_grad",
        "adam_ dygraph": "adam",
        "Global_GradNodeAccumulation[1 us]": "grad_accumulation",
        "builtin_combine_instruction": "builtin_combine",
    }
    assert {k: bench_profile.op_name(k) for k in names} == names


def test_profile_attributes_a_dygraph_step_by_its_host_regions_and_backward_ops():
    events = [
        _region("step", 0, 1000),
        _region("part:feeding", 10, 20),
        _region("part:loss_fwd", 40, 360),  # the network, holding the input and the towers
        _region("part:lookup_fwd", 50, 100),
        _op("embedding dygraph", 60, 40),  # inside a region: timed by the region
        _region("part:towers_fwd", 160, 200),
        _op("matmul dygraph", 170, 130),
        # backward, outside regions: by name, else by position around the matmul_grads
        _op("Global_SigmoidCrossEntropyWithLogitsGradNode", 410, 10),  # named: loss
        _op("Global_AddGradNode", 420, 10),  # before the towers: loss
        _op("Global_MatmulGradNode", 430, 170),
        _op("Global_ReluGradNode", 600, 20),
        _op("Global_MatmulGradNode", 625, 75),
        _op("Global_UnsqueezeGradNode", 700, 5),  # named: the towers' bias
        _op("Global_MultiplyGradNode", 705, 5),  # after the towers: lookup & pooling
        _op("Global_EmbeddingGradNode", 710, 40),
        _op("Global_GradNodeAccumulation", 750, 2),  # a leaf's gradient: small ops
        _region("part:optimizer", 760, 40),
        _op("adam_ dygraph", 765, 30),
        _region("part:row_update", 800, 50),
        _region("part:metrics", 860, 40),
    ]
    out = bench_profile.attribute(events)
    parts = {k: round(v * 1e3, 6) for k, v in out["parts"].items()}  # back to us
    assert parts == {
        "feeding": 20,
        "lookup_fwd": 100,
        "towers_fwd": 200,
        "loss_fwd": 60,  # the network's own 360 minus its input's and towers'
        "loss_bwd": 20,
        "towers_bwd": 270,
        "lookup_bwd": 45,
        "optimizer": 40,
        "row_update": 50,
        "small_ops": 2,
        "metrics": 40,
        "overhead": 1000 - 20 - 360 - 20 - 270 - 45 - 2 - 40 - 50 - 40,
    }
    assert out["steps"] == 1 and out["step_ms"] == 1.0
    assert out["ops"]["lookup_fwd"] == {"embedding": 0.04}  # an op of the region, for display
    assert out["ops"]["towers_bwd"] == {
        "matmul_grad": 0.245,
        "relu_grad": 0.02,
        "unsqueeze_grad": 0.005,
    }
    assert set(out["regions"]) == {
        "feeding", "loss_fwd", "lookup_fwd", "towers_fwd", "optimizer", "row_update", "metrics"
    }  # fmt: skip


def test_profile_attributes_a_static_program_by_op_name_and_position():
    ops = [
        ("pd_op.gather", 10, "lookup_fwd"),  # before the first matmul
        ("pd_op.embedding", 10, "lookup_fwd"),
        ("pd_op.add_n", 10, "lookup_fwd"),
        ("pd_op.full", 10, "small_ops"),
        ("pd_op.matmul", 10, "towers_fwd"),
        ("pd_op.add", 10, "towers_fwd"),  # between the matmuls
        ("pd_op.sigmoid", 10, "loss_fwd"),  # between them too, but named
        ("pd_op.matmul", 10, "towers_fwd"),
        ("pd_op.add", 10, "loss_fwd"),  # after the last matmul
        ("pd_op.mean_all", 10, "loss_fwd"),
        ("pd_op.mean_all_grad", 10, "loss_bwd"),  # the first gradient op: backward
        ("pd_op.add_grad", 10, "loss_bwd"),
        ("pd_op.matmul_grad", 10, "towers_bwd"),
        ("pd_op.relu_grad_", 10, "towers_bwd"),
        ("pd_op.matmul_grad", 10, "towers_bwd"),
        ("pd_op.unsqueeze_grad_", 10, "towers_bwd"),
        ("pd_op.add_n", 10, "lookup_bwd"),  # a gradient sum after the towers
        ("pd_op.embedding_grad", 10, "lookup_bwd"),
        ("pd_op.adam_", 10, "optimizer"),  # the first optimizer op: update
        ("pd_op.scale", 10, "row_update"),
        ("pd_op.scatter_", 10, "row_update"),
        ("pd_op.fetch", 10, "small_ops"),
    ]
    events = [_region("step", 0, 400), _region("part:feeding", 1, 9)]
    expected = dict.fromkeys(dict(bench_profile.PARTS), 0)
    for i, (name, dur, part) in enumerate(ops):
        events.append(_op(name, 10 + i * 15, dur))
        expected[part] += dur
    events.append(_op("pd_op.inner", 71, 2))  # nested in the first matmul: not counted again
    expected["feeding"] = 9
    expected["overhead"] = 400 - 9 - 10 * len(ops)
    out = bench_profile.attribute(events)
    assert {k: round(v * 1e3, 6) for k, v in out["parts"].items()} == expected
    assert out["regions"] == ["feeding"]


def test_profile_and_zoo_probes_run_without_the_mkl_setting_unless_asked():
    """run_process removes MKL settings (test above); a probe adds only its tree and --env."""
    env = bench_profile.probe_env("/some/tree", ["OMP_NUM_THREADS=1"])
    assert env == {"PYTHONPATH": "/some/tree", "OMP_NUM_THREADS": "1"}
    assert bench_profile.probe_env("/t", ["MKL_DEBUG_CPU_TYPE=7"])["MKL_DEBUG_CPU_TYPE"] == "7"
    # a profiled static step runs serially (the executor's overlapping threads), unless asked
    assert bench_profile.probe_env("/t", [], serial=True)[runtime.SERIAL_FLAG] == "1"
    assert (
        bench_profile.probe_env("/t", [f"{runtime.SERIAL_FLAG}=0"], serial=True)[
            runtime.SERIAL_FLAG
        ]
        == "0"
    )
    assert bench_profile.code_trees(None) == [ROOT]
    assert bench_profile.code_trees([ROOT + "/tests/.."])[-1] == ROOT  # NEW: this repository


def _copy_tree(dest, models=("esmm",)):
    """A tree like an older checkout: the package and some model folders (not a git checkout)."""
    shutil.copytree(os.path.join(ROOT, "paddle_rec_zoo"), dest / "paddle_rec_zoo")
    for model in models:
        source = os.path.join(ROOT, "models", "multitask", model)
        shutil.copytree(
            source,
            dest / "models" / "multitask" / model,
            ignore=shutil.ignore_patterns("data", "*.png", "__pycache__"),
        )
    return dest


def _run_bench(tmp_path, *flags):
    cmd = [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), *flags]
    cmd += ["--rows", "3000", "--steps", "5", "--runs", "1", "--workdir", str(tmp_path / "w")]
    cmd += ["--table", str(tmp_path / "table.md")]
    proc = run_group(cmd, timeout=600, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return (tmp_path / "table.md").read_text()


@pytest.mark.slow
def test_profile_measures_both_trees_and_writes_a_table_per_engine(tmp_path):
    old = _copy_tree(tmp_path / "old")
    text = _run_bench(tmp_path, "--profile", "--code", str(old))
    assert "**dygraph**" in text and "**static**" in text
    assert "| old: ms/step | share |" in text  # the copy, by its folder's name
    for _, what in bench_profile.PARTS:
        assert text.count(f"| {what} |") == 2  # a row per engine
    steps = re.findall(
        r"\| \*\*step, profiled\*\* \| \*\*([\d.]+)\*\* \| 100% \| \*\*([\d.]+)", text
    )
    assert len(steps) == 2 and all(float(x) > 0 for pair in steps for x in pair)
    assert text.count("after / before: ") == 2
    results = json.loads((tmp_path / "w" / "profile" / "profile.json").read_text())
    run = results["profile-esmm-dygraph-1"][0]
    assert run["steps"] == 5 and run["prepare_ms"] > 0
    assert sum(run["parts"].values()) == pytest.approx(run["step_ms"])  # the parts make the step


@pytest.mark.slow
def test_zoo_measures_every_model_of_either_tree(tmp_path):
    old = _copy_tree(tmp_path / "old", models=("esmm", "mmoe"))
    text = _run_bench(tmp_path, "--zoo", "--code", str(old))
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| model | engine | samples/s old | samples/s ")
    assert len(rows) == 1 + 2 * len(ZOO)  # every model of this tree, both engines
    for model in ZOO:
        for engine in ("dygraph", "static"):
            (row,) = [r for r in rows if r.startswith(f"| {model} | {engine} |")]
            cells = [c.strip() for c in row.strip("|").split("|")]
            if model in ("esmm", "mmoe"):
                assert cells[4].endswith("x")  # after / before
            else:
                assert cells[2] == "—" and cells[4] == ""  # not in the old tree


def test_profile_and_zoo_tables_go_between_their_own_markers_of_the_doc(tmp_path):
    with open(benchmark.DOC) as f:
        original = f.read()
    for begin, end in (
        (bench_profile.PROFILE_BEGIN, bench_profile.PROFILE_END),
        (bench_profile.ZOO_BEGIN, bench_profile.ZOO_END),
    ):
        assert original.count(begin) == 1 and original.count(end) == 1
    doc = tmp_path / "benchmarks.md"
    doc.write_text(original)
    begin, end = bench_profile.PROFILE_BEGIN, bench_profile.PROFILE_END
    benchmark.update_doc(
        "| new profile |\n", "python tools/benchmark.py --profile", str(doc), begin, end
    )
    text = doc.read_text()
    assert text.count("| new profile |") == 1
    assert text.split(begin)[0] == original.split(begin)[0]  # the rest untouched
    assert text.split(end)[1] == original.split(end)[1]


@pytest.mark.slow
def test_kernels_measures_every_mkl_choice_the_processor_supports(tmp_path):
    """--kernels: a row per MKL_DEBUG_CPU_TYPE runner.cpu_math may set, none it would refuse."""
    cmd = [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "--kernels"]
    proc = run_group([*cmd, "--runs", "1", "--workdir", str(tmp_path)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cpu = benchmark.cpu_math.read_cpu()
    expected = ["default"]
    for value, kind in (("5", "avx2"), ("7", "avx512")):
        if benchmark.cpu_math.supports(cpu, kind):
            expected.append(value)
    rows = re.findall(r"^\| (default|5|7)\b", proc.stdout, re.M)
    assert rows == expected
    rates = re.findall(r"\| ([\d.]+) \((\d)e-0(\d)\)", proc.stdout)
    assert rates and all(float(r) > 0 and int(exp) >= 5 for r, _, exp in rates)  # error <= 1e-5
