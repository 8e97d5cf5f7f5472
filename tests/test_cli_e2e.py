"""End-to-end runs of the four CLIs on the bundled sample, as a user types them."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ESMM_CONFIG, ESMM_DIR, cuda_build, run_tool

pytestmark = pytest.mark.slow

METRIC = re.compile(r"epoch (\d+) \[(\w+)\]: (.*?) \(samples")


def parse_eval(stdout: str) -> dict:
    """{(epoch, engine): {metric: value}} from the infer tools' per-epoch lines."""
    out = {}
    for epoch, engine, body in METRIC.findall(stdout):
        pairs = body.split()
        out[(int(epoch), engine)] = {
            k: float(v) for k, v in zip(pairs[::2], pairs[1::2], strict=True)
        }
    return out


def ok(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e")


def common(work, name, epochs=2):
    return [
        f"runner.model_save_path={work / name}",
        f"runner.cache_dir={work / 'cache'}",
        f"runner.epochs={epochs}",
        f"runner.infer_end_epoch={epochs}",
    ]


@pytest.fixture(scope="module")
def dygraph_run(work):
    return ok(run_tool("trainer", "-m", ESMM_CONFIG, "-o", *common(work, "dy")))


@pytest.fixture(scope="module")
def static_run(work):
    return ok(run_tool("static_trainer", "-m", ESMM_CONFIG, "-o", *common(work, "st")))


@pytest.mark.parametrize("engine", ["dy", "st"])
def test_trainers_save_checkpoints_metrics_and_curves(work, dygraph_run, static_run, engine):
    proc = dygraph_run if engine == "dy" else static_run
    root = work / engine
    for epoch in (0, 1):
        files = set(os.listdir(root / str(epoch)))
        assert {"rec.pdparams", "rec.pdopt", "meta.json"} <= files
        meta = json.loads((root / str(epoch) / "meta.json").read_text())
        assert meta["epoch"] == epoch and meta["config"]["runner"]["epochs"] == 2
        if engine == "st":
            assert {"inference.json", "inference.pdiparams"} <= files
    records = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    assert records and {"loss", "auc_ctr", "auc_ctcvr", "samples_per_s", "step"} <= set(records[0])
    assert (root / "training_curves.png").stat().st_size > 10_000
    assert re.search(
        r"epoch 1 batch 16/16: loss [\d.]+ auc_ctr [\d.]+ auc_ctcvr [\d.]+ [\d,]+ samples/s",
        proc.stdout,
    )
    # our output is ours: no Paddle C++ log lines or Python warnings
    assert not re.search(r"^[IW]\d{4} ", proc.stdout + proc.stderr, re.M)
    assert "Warning" not in proc.stderr


def test_both_infer_tools_and_the_inference_model_agree(work, dygraph_run, static_run):
    preds = {}
    results = {}
    for tool, extra, key in [
        ("infer", [f"runner.infer_load_path={work / 'dy'}"], "dy"),
        ("static_infer", [f"runner.infer_load_path={work / 'dy'}"], "st-on-dy"),
        ("static_infer", [f"runner.infer_load_path={work / 'st'}"], "st"),
        (
            "static_infer",
            [f"runner.infer_load_path={work / 'st'}", "runner.use_inference=True"],
            "pi",
        ),
    ]:
        path = work / f"pred-{key}.csv"
        proc = ok(
            run_tool(
                tool,
                "-m",
                ESMM_CONFIG,
                "-o",
                *common(work, "x"),
                *extra,
                f"runner.save_predictions={path}",
            )
        )
        results[key] = parse_eval(proc.stdout)
        assert len(results[key]) == 2
        with open(path) as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["sample_id", "click", "buy", "pctr", "pcvr", "pctcvr"]
        preds[key] = np.array(rows[1:], dtype=np.float64)
    assert len(preds["dy"]) == 1000
    p = preds["dy"]
    assert ((p[:, 3:] >= 0) & (p[:, 3:] <= 1)).all()
    np.testing.assert_allclose(p[:, 5], p[:, 3] * p[:, 4], rtol=1e-4, atol=1e-7)
    # a dygraph checkpoint evaluated by the static engine gives the same numbers
    np.testing.assert_allclose(preds["st-on-dy"], preds["dy"], atol=2e-5)
    # the exported inference model reproduces the static engine
    np.testing.assert_allclose(preds["pi"], preds["st"], atol=2e-5)
    for key in results:
        for metrics in results[key].values():
            assert set(metrics) >= {
                "auc_ctr",
                "auc_cvr",
                "auc_ctcvr",
                "logloss_ctr",
                "logloss_ctcvr",
                "calibration_ctr",
                "calibration_ctcvr",
            }
    assert results["pi"][(1, "inference")]["auc_cvr"] == pytest.approx(
        results["st"][(1, "static")]["auc_cvr"], abs=1e-3
    )


def test_default_demo_learns_from_inside_the_model_folder(work):
    """The README's main job: default config, run PaddleRec-style from the model folder."""
    save = work / "demo"
    args = [
        "-m",
        "config.yaml",
        "-o",
        f"runner.model_save_path={save}",
        f"runner.cache_dir={work / 'cache'}",
    ]
    ok(run_tool("trainer", *args, cwd=ESMM_DIR))
    proc = ok(run_tool("infer", *args, cwd=ESMM_DIR))
    results = parse_eval(proc.stdout)
    last = results[(max(e for e, _ in results), "dygraph")]
    assert last["auc_ctr"] > 0.7 and last["auc_ctcvr"] > 0.65 and last["auc_cvr"] > 0.6, last


def test_refuses_to_overwrite_an_earlier_run_unless_asked(work, dygraph_run):
    before = (work / "dy" / "0" / "rec.pdparams").read_bytes()
    proc = run_tool("trainer", "-m", ESMM_CONFIG, "-o", *common(work, "dy", epochs=1))
    assert proc.returncode == 2
    assert "already holds checkpoints" in proc.stderr and "runner.overwrite=True" in proc.stderr
    assert (work / "dy" / "0" / "rec.pdparams").read_bytes() == before
    shutil.copytree(work / "dy", work / "dy2")
    ok(
        run_tool(
            "trainer",
            "-m",
            ESMM_CONFIG,
            "-o",
            *common(work, "dy2", epochs=1),
            "runner.overwrite=True",
        )
    )
    assert sorted(os.listdir(work / "dy2")) == ["0", "metrics.jsonl", "training_curves.png"]


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["-o", "runner.epoch=1"],
            "error: unknown config key runner.epoch; did you mean runner.epochs?",
        ),
        (
            ["-o", "runner.train_data_dir=/nonexistent"],
            "error: runner.train_data_dir: folder /nonexistent does not exist",
        ),
        (
            ["-o", "hyper_parameters.sparse_feature_number=100"],
            "is not below hyper_parameters.sparse_feature_number=100",
        ),
    ],
)
def test_user_mistakes_are_one_line_errors(work, args, message):
    proc = run_tool("trainer", "-m", ESMM_CONFIG, *args[:1], *args[1:], *common(work, "err"))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(cuda_build(), reason="a CUDA build runs use_gpu on its GPU")
def test_use_gpu_without_cuda_says_so_and_runs_on_cpu(work):
    proc = ok(
        run_tool(
            "trainer",
            "-m",
            ESMM_CONFIG,
            "-o",
            *common(work, "gpu", epochs=1),
            "runner.use_gpu=True",
        )
    )
    assert (
        "runner.use_gpu is set but this Paddle build has no CUDA; running on the CPU" in proc.stdout
    )


def test_keep_best_evaluates_each_epoch_and_infer_reads_the_best_folder(work):
    save = work / "best-run"
    opts = [*common(work, "best-run", epochs=3), "runner.keep_best=auc_ctcvr"]
    proc = ok(run_tool("trainer", "-m", ESMM_CONFIG, "-o", *opts))
    tests = [json.loads(x) for x in (save / "metrics.jsonl").read_text().splitlines()]
    tests = [t for t in tests if t.get("split") == "test"]
    assert [t["epoch"] for t in tests] == [0, 1, 2]
    best = json.loads((save / "best.json").read_text())
    top = max(tests, key=lambda t: t["auc_ctcvr"])
    assert best["epoch"] == top["epoch"] and best["value"] == pytest.approx(top["auc_ctcvr"])
    assert json.loads((save / "best" / "meta.json").read_text())["epoch"] == top["epoch"]
    assert f"epoch {top['epoch']} test: auc_ctr" in proc.stdout
    proc = ok(run_tool("infer", "-m", ESMM_CONFIG, "-o", f"runner.infer_load_path={save / 'best'}"))
    (result,) = parse_eval(proc.stdout).values()
    assert result["auc_ctcvr"] == pytest.approx(top["auc_ctcvr"], abs=1e-4)
    bad = run_tool(
        "trainer", "-m", ESMM_CONFIG, "-o", *common(work, "best-bad", 1), "runner.keep_best=auc"
    )
    assert bad.returncode == 2 and "runner.keep_best: unknown metric 'auc'" in bad.stderr


@pytest.mark.parametrize("launched, teardown", [("1", False), ("2", True)])
def test_a_tool_ends_with_its_status_and_its_output_flushed_skipping_teardown(launched, teardown):
    """cli.finish: the interpreter's teardown (atexit) is skipped, except in a launched job."""
    code = (
        "import atexit; from paddle_rec_zoo.run.cli import finish\n"
        "atexit.register(lambda: print('teardown'))\n"
        "print('done', end=''); finish(3)\n"
    )
    env = dict(os.environ, PADDLE_TRAINERS_NUM=launched)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 3
    assert proc.stdout.startswith("done") and ("teardown" in proc.stdout) == teardown
