"""`runner.use_visual`: VisualDL logs of a training run, with visualdl installed and without."""

import json
import os
import sys

import pytest
from conftest import ESMM_CONFIG

from paddle_rec_zoo.run.checkpoint import VISUAL_DIR
from paddle_rec_zoo.run.cli import main as cli_main


def train(capsys, tmp_path, *more):
    code = cli_main(
        "trainer",
        [
            *("-m", ESMM_CONFIG, "-o", f"runner.model_save_path={tmp_path / 'run'}"),
            *(f"runner.cache_dir={tmp_path / 'cache'}", "runner.epochs=2"),
            *("runner.use_visual=True", "runner.evaluate_each_epoch=True", *more),
        ],
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def scalars(folder) -> dict:
    """{tag: [(step, value)]} of the one VisualDL record file in `folder`."""
    from visualdl import LogReader

    (name,) = [n for n in os.listdir(folder) if n.startswith("vdlrecords.")]
    reader = LogReader(file_path=os.path.join(folder, name))
    return {
        tag: [(s.id, s.value) for s in reader.get_data("scalar", tag)]
        for tag in reader.get_tags()["scalar"]
    }


def test_use_visual_logs_what_metrics_jsonl_holds(tmp_path, capsys):
    pytest.importorskip("visualdl")
    out = train(capsys, tmp_path)
    folder = tmp_path / "run" / VISUAL_DIR
    assert f"VisualDL logs in {folder}: visualdl --logdir {folder}" in out
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "split" not in x]
    tests = [x for x in lines if x.get("split") == "test"]
    logged = scalars(folder)
    for key in ("loss", "auc_ctr", "auc_ctcvr", "samples_per_s"):
        expected = [(x["step"], x[key]) for x in train_lines]
        assert [s for s, _ in logged[f"train/{key}"]] == [s for s, _ in expected]
        assert [v for _, v in logged[f"train/{key}"]] == pytest.approx([v for _, v in expected])
    assert len(tests) == 2
    for key in ("auc_ctr", "auc_cvr", "auc_ctcvr", "logloss_ctr"):
        expected = [(x["epoch"], x[key]) for x in tests]
        assert logged[f"test/{key}"] == [(e, pytest.approx(v)) for e, v in expected]
    assert "test/clicks" not in logged and "train/step" not in logged  # counts, the x axis


def test_a_resumed_run_logs_its_whole_history_in_one_file(tmp_path, capsys):
    pytest.importorskip("visualdl")
    train(capsys, tmp_path, "runner.epochs=1", "runner.infer_end_epoch=1")
    train(capsys, tmp_path, "runner.resume=True")
    logged = scalars(tmp_path / "run" / VISUAL_DIR)  # one file: VisualDL reads only the newest
    assert [e for e, _ in logged["test/auc_ctcvr"]] == [0, 1]
    steps = [s for s, _ in logged["train/loss"]]
    assert steps == sorted(set(steps)) and steps[-1] == 32


def test_without_visualdl_training_says_how_to_install_it_and_goes_on(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "visualdl", None)  # `import visualdl` raises ImportError
    out = train(capsys, tmp_path)
    (line,) = [x for x in out.splitlines() if "use_visual" in x]
    assert line.endswith(
        "runner.use_visual: visualdl is not installed (pip install visualdl); training goes on"
    )
    assert not (tmp_path / "run" / VISUAL_DIR).exists()
    assert (tmp_path / "run" / "1" / "meta.json").exists()


def test_use_visual_is_no_longer_a_paddlerec_key_without_effect():
    from paddle_rec_zoo.run import paddlerec_keys

    assert "runner.use_visual" not in paddlerec_keys.NO_EFFECT
