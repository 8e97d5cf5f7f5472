import numpy as np
import paddle
import pytest
from conftest import esmm_config, esmm_module


def small_config(*extra):
    return esmm_config(
        "hyper_parameters.sparse_feature_number=500",
        "hyper_parameters.ctr_fc_sizes=[32,16]",
        "hyper_parameters.cvr_fc_sizes=[16]",
        *extra,
    )


def random_batch(cfg, n=64, seed=0):
    rng = np.random.default_rng(seed)
    width = cfg.hyper_parameters.layout().width
    ids = rng.integers(0, cfg.hyper_parameters.sparse_feature_number, (n, width))
    click = (rng.random((n, 1)) < 0.3).astype(np.float32)
    buy = click * (rng.random((n, 1)) < 0.5).astype(np.float32)
    return ids.astype(np.int64), click, buy


def batch_of(cfg, n=128, seed=0):
    """`random_batch` as the engines take it: a `Batch` with labels [n, 2]."""
    from paddle_rec_zoo.data import Batch

    ids, click, buy = random_batch(cfg, n=n, seed=seed)
    return Batch(ids, np.concatenate([click, buy], axis=1), np.arange(n))


def test_shapes_probabilities_and_pctcvr_is_the_product():
    paddle.seed(1)
    cfg = small_config()
    net = esmm_module("net").ESMMLayer(cfg.hyper_parameters)
    ids, _, _ = random_batch(cfg)
    out = net(paddle.to_tensor(ids))
    for name in ("pctr", "pcvr", "pctcvr"):
        assert out[name].shape == [64, 1]
        v = out[name].numpy()
        assert ((v >= 0) & (v <= 1)).all()
    np.testing.assert_allclose(
        out["pctcvr"].numpy(), out["pctr"].numpy() * out["pcvr"].numpy(), rtol=1e-6
    )


def test_padding_id_contributes_nothing():
    paddle.seed(1)
    cfg = small_config()
    net = esmm_module("net").ESMMLayer(cfg.hyper_parameters)
    width = cfg.hyper_parameters.layout().width
    ids = np.zeros((2, width), np.int64)
    ids[:, 0] = 7
    pooled = net.pooled_features(paddle.to_tensor(ids)).numpy()
    emb = net.embedding.weight.numpy()
    dim = cfg.hyper_parameters.sparse_feature_dim
    np.testing.assert_allclose(pooled[0, :dim], emb[7], rtol=1e-6)
    assert np.abs(pooled[0, dim:]).max() == 0


def test_loss_matches_definition_and_falls_on_a_fixed_batch():
    paddle.seed(2)
    cfg = small_config("hyper_parameters.optimizer.learning_rate=0.01")
    net_mod = esmm_module("net")
    net = net_mod.ESMMLayer(cfg.hyper_parameters)
    opt = net_mod.create_optimizer(cfg.hyper_parameters, net.parameters())
    ids, click, buy = random_batch(cfg, n=256)
    feeds = [paddle.to_tensor(x) for x in (ids, click, buy)]
    out = net(feeds[0])
    loss, _ = net_mod.esmm_loss(out, feeds[1], feeds[2])
    pctr, pctcvr = out["pctr"].numpy(), out["pctcvr"].numpy()
    y = click * buy

    def bce(p, t):
        return -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean()

    assert float(loss) == pytest.approx(bce(pctr, click) + bce(pctcvr, y), rel=1e-5)
    first = float(loss)
    for _ in range(30):
        loss, _ = net_mod.esmm_loss(net(feeds[0]), feeds[1], feeds[2])
        loss.backward()
        opt.step()
        opt.clear_grad()
    assert float(loss) < 0.5 * first


def test_loss_is_finite_when_pctcvr_underflows():
    net_mod = esmm_module("net")
    logits = paddle.to_tensor([[-60.0], [-60.0]])
    out = {"ctr_logit": logits, "cvr_logit": logits}
    loss, _ = net_mod.esmm_loss(
        out, paddle.to_tensor([[1.0], [0.0]]), paddle.to_tensor([[1.0], [0.0]])
    )
    # ctr: mean(60, ~0) = 30; ctcvr: log pctcvr = -120 exactly, mean(120, ~0) = 60
    assert float(loss) == pytest.approx(90.0, rel=1e-4)
