"""Dygraph and static graph run the same layer: same weights, same outputs."""

import numpy as np
import paddle
from conftest import esmm_config, esmm_module
from test_net import batch_of, random_batch

from paddle_rec_zoo.run.engines import DygraphEngine, StaticEngine
from paddle_rec_zoo.schema import Batch


def test_dygraph_and_static_outputs_agree_from_the_same_weights(tmp_path):
    cfg = esmm_config("hyper_parameters.sparse_feature_number=500")
    ids, click, buy = random_batch(cfg, n=300, seed=3)
    batch = Batch(ids, np.concatenate([click, buy], axis=1), np.arange(300))
    paddle.seed(5)
    dy = DygraphEngine(esmm_module("dygraph_model"), cfg, training=True)
    for _ in range(3):  # move away from the initial weights
        dy.train_step(batch)
    dy_out = dy.predict(batch)
    dy.save(str(tmp_path))

    st = StaticEngine(esmm_module("static_model"), cfg, training=False)
    before = st.predict(batch)
    st.load(str(tmp_path))
    st_out = st.predict(batch)
    assert not np.allclose(before["pctr"], dy_out["pctr"], atol=1e-5)  # loading really happened
    for name in ("pctr", "pcvr", "pctcvr"):
        np.testing.assert_allclose(st_out[name], dy_out[name], atol=1e-5, rtol=0)


def assert_same_losses_in_both_engines(cfg, batch, steps: int, seed: int = 11):
    """Train `steps` steps on `batch` from the same seed in each engine; the losses must agree."""
    paddle.seed(seed)
    dy = DygraphEngine(esmm_module("dygraph_model"), cfg)
    dy_losses = [dy.train_step(batch)[0] for _ in range(steps)]
    paddle.seed(seed)
    st = StaticEngine(esmm_module("static_model"), cfg)
    st_losses = [st.train_step(batch)[0] for _ in range(steps)]
    np.testing.assert_allclose(st_losses, dy_losses, rtol=1e-4)


def test_same_seed_same_training_in_both_engines():
    cfg = esmm_config("hyper_parameters.sparse_feature_number=500", "runner.seed=11")
    assert_same_losses_in_both_engines(cfg, batch_of(cfg, n=128, seed=4), steps=5)
