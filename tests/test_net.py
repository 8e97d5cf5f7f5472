import numpy as np
import paddle
import pytest
from conftest import esmm_config, esmm_module

from paddle_rec_zoo.nn import optim
from paddle_rec_zoo.nn.layers import Linear


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
    from paddle_rec_zoo.schema import Batch

    ids, click, buy = random_batch(cfg, n=n, seed=seed)
    return Batch(ids, np.concatenate([click, buy], axis=1), np.arange(n))


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
    opt = optim.create_optimizer(cfg.hyper_parameters, net.parameters())
    ids, click, buy = random_batch(cfg, n=256)
    feeds = [paddle.to_tensor(x) for x in (ids, click, buy)]
    out = net(feeds[0])
    loss, _ = net.loss(out, {"click": feeds[1], "buy": feeds[2]})
    pctr, pctcvr = out["pctr"].numpy(), out["pctcvr"].numpy()
    y = click * buy

    def bce(p, t):
        return -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean()

    assert float(loss) == pytest.approx(bce(pctr, click) + bce(pctcvr, y), rel=1e-5)
    first = float(loss)
    for _ in range(30):
        loss, _ = net.loss(net(feeds[0]), {"click": feeds[1], "buy": feeds[2]})
        loss.backward()
        opt.step()
        opt.clear_grad()
    assert float(loss) < 0.5 * first


def esmm_loss(logits, click, buy):
    """ESMM's loss of [ctr_logit, cvr_logit] pairs, through the network's own `loss`."""
    net = esmm_module("net").ESMMLayer(small_config().hyper_parameters)
    col = lambda v: paddle.to_tensor(np.array(v, np.float32).reshape(-1, 1))  # noqa: E731
    out = {"ctr_logit": col([a for a, _ in logits]), "cvr_logit": col([b for _, b in logits])}
    return net.loss(out, {"click": col(click), "buy": col(buy)})


def test_loss_is_the_cross_entropy_definition_on_hand_computed_values():
    # logits 0, 0: pctr = pcvr = 1/2, pctcvr = 1/4. Row 1 clicked and bought, row 2 neither:
    # CTR: -ln(1/2) both rows; CTCVR: -ln(1/4) and -ln(3/4)
    loss, parts = esmm_loss([(0.0, 0.0), (0.0, 0.0)], [1, 0], [1, 0])
    ln2, ln4, ln43 = 0.6931471805599453, 1.3862943611198906, 0.2876820724517809
    assert float(parts["loss_ctr"]) == pytest.approx(ln2, rel=1e-6)
    assert float(parts["loss_ctcvr"]) == pytest.approx((ln4 + ln43) / 2, rel=1e-6)
    assert float(loss) == pytest.approx(ln2 + (ln4 + ln43) / 2, rel=1e-6)
    # logit ln 3 (pctr 3/4), logit -ln 3 (pcvr 1/4): pctcvr 3/16; clicked, not bought
    loss, parts = esmm_loss([(np.log(3), -np.log(3))], [1], [0])
    assert float(parts["loss_ctr"]) == pytest.approx(-np.log(0.75), rel=1e-6)
    assert float(parts["loss_ctcvr"]) == pytest.approx(-np.log(13 / 16), rel=1e-5)


def test_loss_is_finite_when_pctcvr_underflows():
    loss, _ = esmm_loss([(-60.0, -60.0), (-60.0, -60.0)], [1, 0], [1, 0])
    # ctr: mean(60, ~0) = 30; ctcvr: log pctcvr = -120 exactly, mean(120, ~0) = 60
    assert float(loss) == pytest.approx(90.0, rel=1e-4)


def test_linear_adds_its_bias_as_a_product_in_training_with_nn_linears_values_and_gradients():
    paddle.seed(3)
    ours = Linear(7, 5)
    plain = paddle.nn.Linear(7, 5)
    plain.set_state_dict(ours.state_dict())
    x = np.random.default_rng(0).normal(size=(9, 7)).astype(np.float32)
    for layer in (ours, plain):
        layer.train()
        out = layer(paddle.to_tensor(x))
        (out * out).sum().backward()
    np.testing.assert_allclose(
        ours(paddle.to_tensor(x)).numpy(), plain(paddle.to_tensor(x)).numpy(), rtol=1e-6
    )
    np.testing.assert_allclose(ours.bias.grad.numpy(), plain.bias.grad.numpy(), rtol=1e-5)
    np.testing.assert_allclose(ours.weight.grad.numpy(), plain.weight.grad.numpy(), rtol=1e-5)
    assert list(ours.state_dict()) == ["weight", "bias"]  # checkpoints as nn.Linear's
