"""Bad input, interrupted and resumed runs, determinism, divergence (issue: reliability)."""

import json
import os
from pathlib import Path

import numpy as np
import paddle
import pytest
from conftest import ESMM_CONFIG, ESMM_DIR, launch_fleet, run_tool

from paddle_rec_zoo.run.cli import main as cli_main

SAMPLE_TRAIN = os.path.join(ESMM_DIR, "data", "train", "part-00000.txt")
SAMPLE_TEST = os.path.join(ESMM_DIR, "data", "test", "part-00000.txt")


def train_in_process(capsys, *overrides, tool="trainer"):
    code = cli_main(tool, ["-m", ESMM_CONFIG, "-o", *overrides])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_epoch_on(folder, save, tmp_path) -> list[str]:
    """Overrides for a one-epoch run on `folder`, saving to `save`, caching under tmp_path."""
    return [
        f"runner.train_data_dir={folder}",
        f"runner.model_save_path={save}",
        f"runner.cache_dir={tmp_path / 'cache'}",
        "runner.epochs=1",
    ]


def data_dir(tmp_path, text: bytes, name="part-0.txt"):
    folder = tmp_path / "train"
    folder.mkdir(exist_ok=True)
    head = Path(SAMPLE_TRAIN).read_bytes().splitlines(keepends=True)[:40]
    (folder / name).write_bytes(b"".join(head[:20]) + text + b"".join(head[20:]))
    return folder


# line 21 of the file is the bad one (20 good lines come first)
BAD_LINES = [
    (
        "fewer than three columns",
        b"77,1\n",
        "expected at least 3 comma-separated columns (sample_id,click,buy), found 2",
    ),
    ("click not 0/1", b"77,2,0,101:5\n", "click must be 0 or 1, got '2'"),
    ("buy not 0/1", b"77,1,yes,101:5\n", "buy must be 0 or 1, got 'yes'"),
    (
        "feasign not an integer",
        b"77,1,0,101:abc\n",
        "field 101: feasign 'abc' is not a non-negative integer",
    ),
    (
        "negative feasign",
        b"77,1,0,205:-4\n",
        "field 205: feasign '-4' is not a non-negative integer",
    ),
    (
        "feasign too large",
        b"77,1,0,205:99999999\n",
        "field 205: feasign 99999999 is not below hyper_parameters.sparse_feature_number=1395; "
        "raise hyper_parameters.sparse_feature_number to at least 100000000",
    ),
    ("binary garbage", b"\x00\x9c\xff\x10PK\x03\x04\n", "binary data, not a slot text line"),
    (
        "sample id not an integer",
        b"x77,1,0,101:5\n",
        "sample_id 'x77' is not a non-negative integer",
    ),
]


@pytest.mark.parametrize("case, line, message", BAD_LINES, ids=[c[0] for c in BAD_LINES])
def test_bad_data_line_is_one_line_error_with_file_line_field(
    tmp_path, capsys, case, line, message
):
    folder = data_dir(tmp_path, line)
    save = tmp_path / "out"
    code, out, err = train_in_process(
        capsys,
        *one_epoch_on(folder, save, tmp_path),
    )
    assert code == 2
    assert err == f"error: {folder / 'part-0.txt'}:21: {message}" + (
        " (or set hyper_parameters.hash_ids: True to fold large ids into the table)\n"
        if case == "feasign too large"
        else "\n"
    )
    assert not save.exists() or not os.listdir(save)  # nothing half-written
    # runner.skip_bad_lines: skipped, counted, summarised, and training goes on
    code, out, err = train_in_process(
        capsys,
        *one_epoch_on(folder, save, tmp_path),
        "runner.skip_bad_lines=True",
    )
    assert code == 0, err
    assert "train data: 40 rows" in out
    assert f"skipped 1 malformed lines, e.g. {folder / 'part-0.txt'}:21: {message}" in out


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["runner.train_data_dir={tmp}/missing"],
            "runner.train_data_dir: folder {tmp}/missing does not exist",
        ),
        (
            ["runner.train_data_dir={tmp}/empty"],
            "runner.train_data_dir: folder {tmp}/empty holds no data files",
        ),
        (
            ["runner.train_data_dir={tmp}/blank"],
            "runner.train_data_dir: {tmp}/blank holds no data rows",
        ),
        (["runner.epochss=2"], "unknown config key runner.epochss; did you mean runner.epochs?"),
        (
            ["hyper_parameters.sparse_feature_dim=twelve"],
            "hyper_parameters.sparse_feature_dim: expected an integer, got 'twelve'",
        ),
        (["runner.infer_end_epoch=x"], "runner.infer_end_epoch: expected an integer, got 'x'"),
    ],
)
def test_folder_and_config_mistakes(tmp_path, capsys, overrides, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "part-0.txt").write_text("\n\n")
    overrides = [o.format(tmp=tmp_path) for o in overrides]
    code, out, err = train_in_process(
        capsys, *overrides, f"runner.model_save_path={tmp_path / 'o'}"
    )
    assert code == 2
    assert err.strip() == "error: " + message.format(tmp=tmp_path)


def test_crlf_last_line_without_newline_and_noise_rows(tmp_path, capsys):
    lines = Path(SAMPLE_TRAIN).read_bytes().splitlines()[:50]
    noise = b"99999,0,1," + lines[0].split(b",", 3)[3]
    body = b"\r\n".join(lines[:25] + [noise] + lines[25:])  # CRLF, no final newline
    folder = tmp_path / "train"
    folder.mkdir()
    (folder / "part-0.txt").write_bytes(body)
    code, out, err = train_in_process(
        capsys,
        *one_epoch_on(folder, tmp_path / "o", tmp_path),
    )
    assert code == 0, err
    assert "train data: 50 rows" in out
    assert "dropped 1 click=0,buy=1 rows" in out


def test_hash_ids_folds_large_ids_into_the_table(tmp_path, capsys):
    folder = data_dir(tmp_path, b"77,1,0,205:99999999,101:1394\n")
    code, out, err = train_in_process(
        capsys,
        *one_epoch_on(folder, tmp_path / "o", tmp_path),
        "hyper_parameters.hash_ids=True",
    )
    assert code == 0, err
    assert "train data: 41 rows" in out


def metric_lines(save):
    """metrics.jsonl without the timing fields."""
    rows = [json.loads(x) for x in Path(save, "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rows]


def params(folder):
    return {k: np.asarray(v) for k, v in paddle.load(os.path.join(folder, "rec.pdparams")).items()}


def test_same_seed_same_metrics_and_resume_equals_an_uninterrupted_run(tmp_path, capsys):
    base = [f"runner.cache_dir={tmp_path / 'cache'}", "runner.epochs=3", "runner.print_interval=4"]
    for name in ("a", "b"):
        code, _, err = train_in_process(capsys, *base, f"runner.model_save_path={tmp_path / name}")
        assert code == 0, err
    assert metric_lines(tmp_path / "a") == metric_lines(tmp_path / "b")  # determinism
    # interrupted after epoch 0 (simulated: a 1-epoch run), then resumed to 3 epochs
    short = [
        *base[:1],
        "runner.epochs=1",
        "runner.print_interval=4",
        f"runner.model_save_path={tmp_path / 'r'}",
    ]
    assert train_in_process(capsys, *short)[0] == 0
    code, out, err = train_in_process(
        capsys, *base, f"runner.model_save_path={tmp_path / 'r'}", "runner.resume=True"
    )
    assert code == 0, err
    assert "resuming after epoch 0 (step 16)" in out
    assert metric_lines(tmp_path / "r") == metric_lines(tmp_path / "a")
    for name, value in params(tmp_path / "a" / "2").items():
        np.testing.assert_array_equal(params(tmp_path / "r" / "2")[name], value)
    # resuming with a different network is refused
    code, _, err = train_in_process(
        capsys,
        *base,
        f"runner.model_save_path={tmp_path / 'r'}",
        "runner.resume=True",
        "hyper_parameters.sparse_feature_dim=8",
    )
    assert code == 2 and "runner.resume: hyper_parameters.sparse_feature_dim was 12" in err


@pytest.mark.parametrize("engine", ["dygraph", "static"])
def test_resume_continues_the_learning_rate_schedule(tmp_path, engine):
    """A resumed engine continues the schedule where it stopped (config_bigdata uses one)."""
    from conftest import esmm_config, esmm_module
    from test_net import batch_of

    from paddle_rec_zoo.run.engines import DygraphEngine, StaticEngine

    cfg = esmm_config(
        "hyper_parameters.sparse_feature_number=500",
        "hyper_parameters.optimizer={learning_rate: 0.01, schedule: {decay: cosine, "
        "decay_steps: 4, decay_rate: 0.1, warmup_steps: 2}}",
    )
    batch = batch_of(cfg, n=64, seed=2)

    def build():
        paddle.seed(3)
        if engine == "dygraph":
            return DygraphEngine(esmm_module("dygraph_model"), cfg)
        return StaticEngine(esmm_module("static_model"), cfg)

    straight = build()
    expected = [straight.train_step(batch)[0] for _ in range(6)]
    first = build()
    losses = [first.train_step(batch)[0] for _ in range(3)]
    first.save(str(tmp_path))
    second = build()
    second.load_training_state(str(tmp_path))
    losses += [second.train_step(batch)[0] for _ in range(3)]
    paddle.disable_static()
    np.testing.assert_allclose(losses, expected, rtol=1e-6)


def test_divergence_stops_with_the_step_number(tmp_path, capsys):
    code, out, err = train_in_process(
        capsys,
        f"runner.model_save_path={tmp_path / 'o'}",
        f"runner.cache_dir={tmp_path / 'cache'}",
        "runner.epochs=1",
        "hyper_parameters.optimizer.class=SGD",
        "hyper_parameters.optimizer.learning_rate=1e30",
    )
    assert code == 2
    assert err.startswith("error: training diverged: loss is ") and "at epoch 0, step " in err
    assert not (tmp_path / "o" / "0").exists()


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["trainer", "static_trainer"])
def test_two_process_data_parallel_equals_one_process_with_double_batch(tmp_path, tool):
    common = [
        f"runner.cache_dir={tmp_path / 'cache'}",
        "runner.epochs=1",
        "runner.shuffle=True",
        "runner.evaluate_each_epoch=True",
        "runner.print_interval=4",
    ]
    proc, logs = launch_fleet(
        tmp_path / f"log-{tool}",
        tool,
        *common,
        f"runner.model_save_path={tmp_path / 'dp'}",
        "runner.train_batch_size=128",
    )
    assert proc.returncode == 0, logs[0][-3000:] + logs[1][-3000:]
    if tool == "trainer":  # one engine is enough for the agreement of ranks; both cost a minute
        from test_preemption import fleet_sigterm_then_resume

        fleet_sigterm_then_resume(
            tmp_path, tool, [*common, "runner.train_batch_size=128"], tmp_path / "dp"
        )
    assert "on each of 2 ranks" in logs[0]
    assert "epoch 0 test:" in logs[0] and "(samples 1,000," in logs[0]  # global evaluation
    assert "epoch 0 test:" not in logs[1]  # rank 1 is quiet and writes nothing
    single = run_tool(
        tool,
        "-m",
        ESMM_CONFIG,
        "-o",
        *common,
        f"runner.model_save_path={tmp_path / 'one'}",
        "runner.train_batch_size=256",
    )
    assert single.returncode == 0, single.stderr
    dp, one = params(tmp_path / "dp" / "0"), params(tmp_path / "one" / "0")
    for name in one:
        np.testing.assert_allclose(dp[name], one[name], atol=2e-4, rtol=1e-3)
    dp_test = [r for r in metric_lines(tmp_path / "dp") if r.get("split") == "test"][0]
    one_test = [r for r in metric_lines(tmp_path / "one") if r.get("split") == "test"][0]
    assert dp_test["samples"] == one_test["samples"] == 1000
    assert dp_test["auc_ctcvr"] == pytest.approx(one_test["auc_ctcvr"], abs=2e-3)


def test_use_fleet_without_the_launcher_is_explained(tmp_path, capsys):
    code, out, err = train_in_process(
        capsys, f"runner.model_save_path={tmp_path / 'o'}", "runner.use_fleet=True"
    )
    assert code == 2 and "python -m paddle.distributed.launch --nproc_per_node N" in err


def test_parameter_server_launch_is_refused_with_the_reason(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PADDLE_PSERVERS_IP_PORT_LIST", "127.0.0.1:6170")
    code, out, err = train_in_process(capsys, f"runner.model_save_path={tmp_path / 'o'}")
    assert code == 2 and "parameter-server training" in err and "CommContext is missing" in err
    # the reason, checked against the installed wheel: if this starts failing, Paddle ships the
    # parameter-server runtime again and doc/distributed.md should be revisited
    assert not hasattr(paddle.base.core, "CommContext")


def data_folder_listing() -> dict:
    """{path: (size, mtime)} of every file under the model's data folders."""
    listing = {}
    for split in ("train", "test"):
        folder = Path(ESMM_DIR, "data", split)
        listing.update(
            {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}
        )
    return listing


def test_training_and_evaluating_leave_the_sample_data_folders_untouched(tmp_path, capsys):
    """Reading, caching (cache on) and evaluating the bundled sample write nothing beside it.
    The test runs its own training rather than relying on the tests before it (run alone, it
    checked nothing)."""
    before = data_folder_listing()
    assert sorted(Path(p).name for p in before) == ["part-00000.txt"] * 2
    save = tmp_path / "o"
    code, _, err = train_in_process(
        capsys,
        f"runner.model_save_path={save}",
        f"runner.cache_dir={tmp_path / 'cache'}",
        "runner.use_cache=True",
        "runner.epochs=1",
        "runner.evaluate_each_epoch=True",
    )
    assert code == 0, err
    assert (save / "0").is_dir() and any((tmp_path / "cache").iterdir())  # it read and cached
    assert data_folder_listing() == before
