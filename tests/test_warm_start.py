"""runner.model_init_path: a new run starts from an earlier run's weights (and optimizer state)."""

import os

import numpy as np
import paddle
import pytest
from conftest import esmm_config, esmm_module
from test_net import batch_of

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.run import checkpoint, warm_start
from paddle_rec_zoo.run.engines import DygraphEngine, StaticEngine

ROWS = 300
TABLE = "input.embedding.weight"


def config(*overrides, rows=ROWS):
    return esmm_config(
        f"hyper_parameters.sparse_feature_number={rows}",
        "hyper_parameters.ctr_fc_sizes=[16]",
        "hyper_parameters.cvr_fc_sizes=[16]",
        *overrides,
    )


def build(kind, cfg, seed=3):
    paddle.seed(seed)
    if kind == "dygraph":
        return DygraphEngine(esmm_module("dygraph_model"), cfg)
    return StaticEngine(esmm_module("static_model"), cfg)


def trained_run(tmp_path, kind, steps=3) -> str:
    """A run folder with one checkpoint of `kind` after a few steps; returns the run folder."""
    cfg = config()
    engine = build(kind, cfg)
    for i in range(steps):
        engine.train_step(batch_of(cfg, n=64, seed=i))
    meta = {"epoch": 0, "step": steps, "engine": engine.name, "config": cfg.to_dict()}
    root = str(tmp_path / f"run-{kind}")
    checkpoint.save(root, 0, engine.save, meta)
    return root


def table_name(params):
    (name,) = [k for k in params if k.endswith("embedding.weight")]
    return name


@pytest.mark.parametrize("src, dst", [("dygraph", "static"), ("static", "dygraph")])
def test_weights_load_across_engines_and_a_grown_table_keeps_old_rows(tmp_path, src, dst):
    root = trained_run(tmp_path, src)
    saved = checkpoint.read_meta(checkpoint.epoch_dir(root, 0))
    from paddle_rec_zoo.run.engines import load_params_file

    old = load_params_file(checkpoint.epoch_dir(root, 0))
    cfg = config(f"runner.model_init_path={root}", rows=ROWS + 50)
    engine = build(dst, cfg, seed=5)
    fresh = engine.get_params()
    warm_start.load(cfg, engine)
    now = engine.get_params()
    name = table_name(now)
    assert now[name].shape == (ROWS + 50, 12)
    np.testing.assert_array_equal(now[name][:ROWS], old[name])  # yesterday's ids, same rows
    np.testing.assert_array_equal(now[name][ROWS:], fresh[name][ROWS:])  # new rows: fresh init
    assert fresh[name][ROWS:].std() > 0  # (and the fresh init is not zeros)
    for key in now:
        if key != name:
            np.testing.assert_array_equal(now[key], old[key])
    assert saved["engine"] == src


@pytest.mark.parametrize("kind", ["dygraph", "static"])
def test_optimizer_state_only_when_asked_and_its_new_rows_start_at_zero(tmp_path, kind):
    root = trained_run(tmp_path, kind)
    save = f"runner.model_save_path={tmp_path / 'warm'}"
    cfg = config(
        f"runner.model_init_path={root}/0", "runner.model_init_optimizer=True", save, rows=320
    )
    engine = build(kind, cfg)
    warm_start.load(cfg, engine)
    state = engine.optimizer_state()
    moments = [v for k, v in state.items() if "moment1" in k and np.shape(v)[0] == 320]
    assert moments, sorted(state)
    (m,) = moments
    assert np.abs(m[:ROWS]).sum() > 0  # carried over
    assert not m[ROWS:].any()  # the new rows' moments start at zero
    assert os.listdir(tmp_path / "warm") == []  # its scratch folder is gone
    # without model_init_optimizer the moments are a fresh optimizer's (all zero)
    cold_cfg = config(f"runner.model_init_path={root}", rows=320)
    cold = build(kind, cold_cfg)
    warm_start.load(cold_cfg, cold)
    fresh = [v for k, v in cold.optimizer_state().items() if "moment1" in k]
    assert all(not np.asarray(v).any() for v in fresh)
    # and training on goes on from there
    loss, _ = engine.train_step(batch_of(cfg, n=64, seed=9))
    assert np.isfinite(loss)


@pytest.mark.parametrize(
    "overrides, rows, kind, message",
    [
        ([], ROWS - 1, "dygraph", "may grow (a vocabulary extended since), never shrink"),
        (["hyper_parameters.sparse_feature_dim=8"], ROWS, "dygraph", "has shape [300, 12] but"),
        (["runner.model_init_optimizer=True"], ROWS, "dygraph", "trained by the static engine"),
        (
            ["hyper_parameters.optimizer.class=SGD", "runner.model_init_optimizer=True"],
            ROWS,
            "static",
            "was trained with Adam, this run uses SGD",
        ),
        (
            [
                "hyper_parameters.embedding_optimizer.class=rowwise_adagrad",
                "runner.model_init_optimizer=True",
            ],
            ROWS,
            "static",
            "was trained with lazy_adam, this run uses rowwise_adagrad",
        ),
    ],
)
def test_mismatches_are_one_line_errors(tmp_path, overrides, rows, kind, message):
    root = trained_run(tmp_path, "static")
    save = f"runner.model_save_path={tmp_path / 'warm'}"
    cfg = config(f"runner.model_init_path={root}", *overrides, save, rows=rows)
    engine = build(kind, cfg)
    with pytest.raises(UserError) as err:
        warm_start.load(cfg, engine)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_or_empty_folder_is_explained(tmp_path):
    cfg = config(f"runner.model_init_path={tmp_path / 'nope'}")
    with pytest.raises(UserError, match="runner.model_init_path: .*nope does not exist"):
        warm_start.load(cfg, build("dygraph", cfg))
    (tmp_path / "empty").mkdir()
    cfg = config(f"runner.model_init_path={tmp_path / 'empty'}")
    with pytest.raises(UserError, match="holds no checkpoint"):
        warm_start.load(cfg, build("dygraph", cfg))
