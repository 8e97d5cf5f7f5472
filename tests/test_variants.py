"""The configurable network: variants, feature groups, towers, regularisation, pooling, schedule.

Every key of `hyper_parameters` must change behaviour; these tests prove the important ones do,
and that both engines build the same network for every variant.
"""

import os

import numpy as np
import paddle
import pytest
from conftest import ESMM_DIR, esmm_config, esmm_module
from test_net import batch_of, random_batch
from test_net import small_config as small
from test_parity import assert_same_losses_in_both_engines

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.nn import optim
from paddle_rec_zoo.report.metrics import auc, evaluate
from paddle_rec_zoo.run.engines import DygraphEngine, StaticEngine

VARIANTS = ["esmm", "esmm_ns", "base", "division"]
GROUPS = (
    "hyper_parameters.feature_groups=["
    "{name: user, fields: ['101','121','122','124','125','126','127','128','129','109_14',"
    "'110_14','127_14','150_14'], hidden_units: [16, 8]},"
    "{name: item, fields: ['205','206','207','210','216'], hidden_units: [12]},"
    "{name: combo, fields: ['508','509','702','853','301']}]"
)


def net_of(cfg, seed=1):
    paddle.seed(seed)
    return esmm_module("net").ESMMLayer(cfg.hyper_parameters)


def loss_of(net, cfg, seed=0):
    ids, click, buy = random_batch(cfg, n=128, seed=seed)
    out = net(paddle.to_tensor(ids))
    loss, parts = net.loss(out, {"click": paddle.to_tensor(click), "buy": paddle.to_tensor(buy)})
    return float(loss), {k: float(v) for k, v in parts.items()}, out


# --------------------------------------------------------------------------- variants
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_trains_in_both_engines_with_parity(variant, tmp_path):
    cfg = small(f"hyper_parameters.variant={variant}")
    batch = batch_of(cfg, n=200, seed=3)
    paddle.seed(5)
    dy = DygraphEngine(esmm_module("dygraph_model"), cfg)
    losses = [dy.train_step(batch)[0] for _ in range(4)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    dy_out = dy.predict(batch)
    dy.save(str(tmp_path))
    st = StaticEngine(esmm_module("static_model"), cfg)
    st.train_step(batch)  # the static train program runs too
    st.load(str(tmp_path))
    st_out = st.predict(batch)
    for name in ("pctr", "pcvr", "pctcvr"):
        assert ((dy_out[name] >= 0) & (dy_out[name] <= 1)).all()
        np.testing.assert_allclose(st_out[name], dy_out[name], atol=1e-5, rtol=0)


def test_everything_configured_trains_identically_in_both_engines():
    """Groups, towers, weights, l2, embedding regularisation, mean pooling, per-field max_len
    and a warm-up + decay schedule: the same seed gives the same losses in both engines."""
    cfg = small(
        GROUPS,
        "hyper_parameters.ctr_fc_sizes=null",
        "hyper_parameters.ctr_tower={hidden_units: [8], weight: 0.5}",
        "hyper_parameters.cvr_tower.weight=2.0",
        "hyper_parameters.l2_regularization=1e-3",
        "hyper_parameters.embedding_regularization=1e-2",
        "hyper_parameters.pooling=mean",
        "hyper_parameters.field_options={'109_14': {max_len: 5}, '301': {pooling: sum}}",
        "hyper_parameters.optimizer={learning_rate: 0.01, schedule: "
        "{decay: cosine, decay_steps: 3, decay_rate: 0.1, warmup_steps: 2}}",
        "runner.seed=11",
    )
    assert_same_losses_in_both_engines(cfg, batch_of(cfg, n=128, seed=4), steps=6)


def test_base_cvr_loss_ignores_unclicked_rows():
    cfg = small("hyper_parameters.variant=base")
    net = net_of(cfg)
    ids, click, buy = random_batch(cfg, n=128, seed=2)
    out = net(paddle.to_tensor(ids))
    labels = {"click": paddle.to_tensor(click), "buy": paddle.to_tensor(buy)}
    _, parts = net.loss(out, labels)
    # a different buy label or CVR logit on unclicked rows changes nothing
    flipped = np.where(click > 0, buy, 1.0 - buy).astype(np.float32)
    noisy = dict(out, cvr_logit=out["cvr_logit"] + paddle.to_tensor(5.0 * (1.0 - click)))
    _, parts2 = net.loss(noisy, {"click": labels["click"], "buy": paddle.to_tensor(flipped)})
    assert float(parts2["loss_cvr"]) == pytest.approx(float(parts["loss_cvr"]), rel=1e-6)
    # ... while on clicked rows it does
    flipped_clicked = np.where(click > 0, 1.0 - buy, buy).astype(np.float32)
    _, parts3 = net.loss(out, {"click": labels["click"], "buy": paddle.to_tensor(flipped_clicked)})
    assert abs(float(parts3["loss_cvr"]) - float(parts["loss_cvr"])) > 1e-3
    # and the loss is BCE(pcvr, buy) averaged over clicked rows only
    p = out["pcvr"].numpy()
    m = click > 0
    expect = -(buy[m] * np.log(p[m]) + (1 - buy[m]) * np.log(1 - p[m])).mean()
    assert float(parts["loss_cvr"]) == pytest.approx(expect, rel=1e-4)


def test_division_pcvr_is_clipped_to_one():
    cfg = small("hyper_parameters.variant=division")
    net = net_of(cfg)
    net.ctr_tower[-1].bias.set_value(paddle.to_tensor([-6.0]))
    net.ctcvr_tower[-1].bias.set_value(paddle.to_tensor([6.0]))  # pctcvr > pctr
    out = net(paddle.to_tensor(random_batch(cfg)[0]))
    pcvr = out["pcvr"].numpy()
    assert ((pcvr >= 0) & (pcvr <= 1)).all() and np.allclose(pcvr, 1.0)
    assert (out["p_ctcvr"].numpy() > out["pctr"].numpy()).all()  # unclipped division would be > 1
    np.testing.assert_allclose(out["pctcvr"].numpy(), out["pctr"].numpy(), rtol=1e-6)  # pctr·1


def test_variants_own_or_share_embeddings():
    shapes = {
        v: dict(net_of(small(f"hyper_parameters.variant={v}")).state_dict()) for v in VARIANTS
    }
    assert "input.embedding.weight" in shapes["esmm"]
    assert "cvr_input.embedding.weight" not in shapes["esmm"]
    for v in ("esmm_ns", "base", "division"):
        assert "cvr_input.embedding.weight" in shapes[v]
    assert (
        "ctcvr_tower.0.weight" in shapes["division"]
        and "cvr_tower.0.weight" not in shapes["division"]
    )


# --------------------------------------------------------------------------- groups and towers
def test_feature_groups_and_towers_shape_the_network():
    cfg = small(
        GROUPS,
        "hyper_parameters.cvr_fc_sizes=null",
        "hyper_parameters.cvr_tower.hidden_units=[7, 5]",
    )
    params = {k: tuple(v.shape) for k, v in net_of(cfg).state_dict().items()}
    dim = cfg.hyper_parameters.sparse_feature_dim
    assert params["input.group_dnns.0.0.weight"] == (13 * dim, 16)
    assert params["input.group_dnns.0.2.weight"] == (16, 8)
    assert params["input.group_dnns.1.0.weight"] == (5 * dim, 12)
    assert not any(k.startswith("input.group_dnns.2.") for k in params)  # combo: no DNN
    tower_in = 8 + 12 + 5 * dim
    assert params["ctr_tower.0.weight"] == (tower_in, 32)
    assert params["cvr_tower.0.weight"] == (tower_in, 7)
    assert params["cvr_tower.2.weight"] == (7, 5)
    assert params["cvr_tower.4.weight"] == (5, 1)
    # without groups: all fields concatenated, as PaddleRec
    plain = {k: tuple(v.shape) for k, v in net_of(small()).state_dict().items()}
    assert plain["ctr_tower.0.weight"] == (23 * dim, 32)


def test_tower_weights_scale_the_losses():
    base_loss, parts, _ = loss_of(net_of(small()), small())
    cfg = small("hyper_parameters.ctr_tower.weight=0.5", "hyper_parameters.cvr_tower.weight=3")
    loss, parts2, _ = loss_of(net_of(cfg), cfg)
    assert parts2["loss_ctr"] == pytest.approx(parts["loss_ctr"], rel=1e-6)
    assert loss == pytest.approx(0.5 * parts["loss_ctr"] + 3 * parts["loss_ctcvr"], rel=1e-5)
    assert base_loss == pytest.approx(parts["loss_ctr"] + parts["loss_ctcvr"], rel=1e-5)


def test_tower_label_names_choose_the_label_columns():
    cfg = small()
    swapped = small(
        "hyper_parameters.ctr_tower.label_name=buy", "hyper_parameters.cvr_tower.label_name=click"
    )
    _, parts, _ = loss_of(net_of(cfg), cfg)
    _, parts2, _ = loss_of(net_of(swapped), swapped)
    assert parts2["loss_ctr"] != pytest.approx(parts["loss_ctr"], rel=1e-3)


def test_regularisation_adds_exactly_its_terms():
    plain_loss, _, _ = loss_of(net_of(small()), small())
    cfg = small("hyper_parameters.l2_regularization=0.01")
    net = net_of(cfg)
    loss, parts, _ = loss_of(net, cfg)
    kernels = [
        p.numpy()
        for name, p in net.named_parameters()
        if "tower" in name and name.endswith("weight")
    ]
    expect = 0.01 * 0.5 * sum((w.astype(np.float64) ** 2).sum() for w in kernels)
    assert parts["l2_reg"] == pytest.approx(expect, rel=1e-4)
    assert loss == pytest.approx(plain_loss + expect, rel=1e-5)

    cfg = small("hyper_parameters.embedding_regularization=0.5")
    net = net_of(cfg)
    loss, parts, _ = loss_of(net, cfg)
    ids = random_batch(cfg, n=128, seed=0)[0]
    pooled = net.pooled_features(paddle.to_tensor(ids)).numpy().astype(np.float64)  # [B, F*D]
    assert parts["embedding_reg"] == pytest.approx(0.5 * 0.5 * (pooled**2).sum(), rel=1e-4)
    assert loss == pytest.approx(plain_loss + parts["embedding_reg"], rel=1e-5)
    net.eval()  # not part of inference
    assert net(paddle.to_tensor(ids))["embedding_reg"] is None


def test_dropout_acts_in_training_only():
    cfg = small("hyper_parameters.ctr_tower.dropout=0.5")
    net = net_of(cfg)
    ids = paddle.to_tensor(random_batch(cfg)[0])
    train_a, train_b = net(ids)["pctr"].numpy(), net(ids)["pctr"].numpy()
    assert not np.allclose(train_a, train_b)
    net.eval()
    np.testing.assert_array_equal(net(ids)["pctr"].numpy(), net(ids)["pctr"].numpy())


def test_mean_pooling_and_per_field_max_len():
    cfg = small(
        "hyper_parameters.pooling=mean", "hyper_parameters.field_options={'109_14': {max_len: 5}}"
    )
    hp = cfg.hyper_parameters
    layout = hp.layout()
    assert layout.max_lens[1] == 5 and layout.width == 22 * 3 + 5
    net = net_of(cfg)
    ids = np.zeros((1, layout.width), np.int64)
    ids[0, 0:2] = [7, 8]  # field 101: two ids of 3 slots
    ids[0, 3:8] = [9, 10, 11, 12, 13]  # field 109_14: all 5 slots
    pooled = net.pooled_features(paddle.to_tensor(ids)).numpy()
    emb = net.embedding.weight.numpy()
    d = hp.sparse_feature_dim
    np.testing.assert_allclose(pooled[0, :d], emb[[7, 8]].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(pooled[0, d : 2 * d], emb[9:14].mean(axis=0), rtol=1e-5)
    summed = net_of(small("hyper_parameters.field_options={'109_14': {max_len: 5}}"))
    pooled_sum = summed.pooled_features(paddle.to_tensor(ids)).numpy()
    emb_s = summed.embedding.weight.numpy()
    np.testing.assert_allclose(pooled_sum[0, :d], emb_s[[7, 8]].sum(axis=0), rtol=1e-5)


def test_tower_metrics_choose_what_evaluation_reports():
    cfg = small(
        "hyper_parameters.ctr_tower.metrics=[auc]", "hyper_parameters.cvr_tower.metrics=[logloss]"
    )
    spec = esmm_module("net").ESMMLayer.spec(cfg.hyper_parameters)
    rng = np.random.default_rng(0)
    click = (rng.random(200) < 0.5).astype(float)
    buy = click * (rng.random(200) < 0.5)
    p = rng.random(200)
    out = evaluate(
        spec.metrics, spec.counts, dict(pctr=p, pcvr=p, pctcvr=p * p, click=click, buy=buy)
    )
    assert {k for k in out if k.startswith(("auc", "logloss", "calibration"))} == {
        "auc_ctr",
        "logloss_ctcvr",
    }


def test_label_name_changes_what_metrics_are_computed_on():
    """A tower's label_name is the column its metrics read: swapping them swaps the values."""
    rng = np.random.default_rng(1)
    click = (rng.random(400) < 0.4).astype(float)
    buy = (rng.random(400) < 0.5).astype(float)  # independent, so both subsets hold both classes
    p, q = rng.random(400), rng.random(400)
    cols = dict(pctr=p, pcvr=q, pctcvr=p * q, click=click, buy=buy)
    plain = esmm_module("net").ESMMLayer.spec(small().hyper_parameters)
    swapped = esmm_module("net").ESMMLayer.spec(
        small(
            "hyper_parameters.ctr_tower.label_name=buy",
            "hyper_parameters.cvr_tower.label_name=click",
        ).hyper_parameters
    )
    a = evaluate(plain.metrics, plain.counts, cols)
    b = evaluate(swapped.metrics, swapped.counts, cols)
    assert a["auc_ctr"] == pytest.approx(auc(p, click))
    assert b["auc_ctr"] == pytest.approx(auc(p, buy))
    assert a["auc_cvr"] == pytest.approx(auc(q[click > 0.5], buy[click > 0.5]))
    assert b["auc_cvr"] == pytest.approx(auc(q[buy > 0.5], click[buy > 0.5]))
    assert a["auc_ctcvr"] == b["auc_ctcvr"]  # the product of both labels either way
    assert a["clicks"] == int(click.sum()) and b["clicks"] == int(buy.sum())


def test_a_label_the_reader_lacks_names_the_key():
    cfg = small("hyper_parameters.cvr_tower.label_name=pay")
    with pytest.raises(
        UserError, match=r"hyper_parameters.cvr_tower.label_name: 'pay' is not a la"
    ):
        DygraphEngine(esmm_module("dygraph_model"), cfg)


# --------------------------------------------------------------------------- optimizer
def test_schedule_warms_up_and_decays_once_per_step():
    cfg = small(
        "hyper_parameters.optimizer.schedule={decay: exponential, decay_steps: 2, "
        "decay_rate: 0.25, warmup_steps: 2}"
    )
    net = net_of(cfg)
    opt = optim.create_optimizer(cfg.hyper_parameters, net.parameters())
    seen = []
    for _ in range(5):
        seen.append(opt._learning_rate.last_lr)  # the rate the next step uses
        out = net(paddle.to_tensor(random_batch(cfg)[0]))
        (out["pctr"].mean()).backward()
        opt.step()
        opt.clear_grad()
    np.testing.assert_allclose(seen, [5e-4, 1e-3, 1e-3, 5e-4, 2.5e-4], rtol=1e-6)
    constant = optim.create_optimizer(small().hyper_parameters, net.parameters())
    assert isinstance(constant._learning_rate, float)


def test_optimizer_class_and_learning_rate_change_training():
    cfg = small()
    batch = batch_of(cfg)
    results = {}
    for name, extra in [
        ("adam", []),
        ("sgd", ["hyper_parameters.optimizer.class=SGD"]),
        ("adam_fast", ["hyper_parameters.optimizer.learning_rate=0.01"]),
    ]:
        c = small(*extra)
        paddle.seed(3)
        dy = DygraphEngine(esmm_module("dygraph_model"), c)
        results[name] = [dy.train_step(batch)[0] for _ in range(3)][-1]
    assert len({round(v, 6) for v in results.values()}) == 3


# --------------------------------------------------------------------------- config errors
@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["hyper_parameters.feature_groups=[{name: u, fields: ['101', 'nope']}]"],
            "hyper_parameters.feature_groups[0].fields: 'nope' is not in hyper_parameters.fields",
        ),
        (
            [
                "hyper_parameters.feature_groups=[{name: u, fields: ['101']}, {name: i, fields: ['101']}]"
            ],
            "hyper_parameters.feature_groups[1].fields: '101' is already in group 'u'",
        ),
        (
            ["hyper_parameters.feature_groups=[{name: u, fields: []}]"],
            "hyper_parameters.feature_groups[0] (u): fields is empty",
        ),
        (
            ["hyper_parameters.feature_groups=[{name: u, fields: ['101']}]"],
            "are read but in no group",
        ),
        (
            ["hyper_parameters.feature_groups=[{fields: ['101']}]"],
            "hyper_parameters.feature_groups[0]",
        ),
        (
            ["hyper_parameters.ctr_tower.hidden_units=[8]"],
            "hyper_parameters.ctr_fc_sizes and hyper_parameters.ctr_tower.hidden_units both set",
        ),
        (["hyper_parameters.variant=mmoe"], "hyper_parameters.variant: choose one of"),
        (["hyper_parameters.pooling=max"], "hyper_parameters.pooling"),
        (
            ["hyper_parameters.field_options={'999': {max_len: 2}}"],
            "hyper_parameters.field_options.999",
        ),
        (["hyper_parameters.ctr_tower.metrics=[gauc]"], "hyper_parameters.ctr_tower.metrics"),
        (
            ["hyper_parameters.optimizer.schedule={decay: step}"],
            "hyper_parameters.optimizer.schedule.decay",
        ),
        (["hyper_parameters.ctr_tower.dropout=1.5"], "hyper_parameters.ctr_tower.dropout"),
    ],
)
def test_bad_config_names_the_key(overrides, message):
    with pytest.raises(UserError) as e:
        esmm_config(*overrides)
    assert message in str(e.value)


def test_easyrec_config_loads_as_documented():
    import os

    cfg = esmm_config(path=os.path.join(ESMM_DIR, "config_easyrec.yaml"))
    hp = cfg.hyper_parameters
    assert [g.name for g in hp.feature_groups] == ["user", "item", "combo"]
    assert [g.hidden_units for g in hp.feature_groups] == [
        [256, 128, 96, 64],
        [256, 128, 96, 64],
        [128, 96, 64, 32],
    ]
    assert hp.tower_units("ctr") == hp.tower_units("cvr") == [128, 96, 64, 32, 16]
    assert hp.l2_regularization == pytest.approx(1e-6)
    assert hp.embedding_regularization == pytest.approx(5e-5)
    params = {k: tuple(v.shape) for k, v in esmm_module("net").ESMMLayer(hp).state_dict().items()}
    assert params["ctr_tower.0.weight"] == (64 + 64 + 32, 128)


def test_training_with_fewer_tower_metrics_evaluates_and_plots_what_is_declared(tmp_path, capsys):
    """Once a KeyError from plot.py: the tools know only the metrics the model declares."""
    from paddle_rec_zoo.run.cli import main

    code = main(
        "trainer",
        ["-m", os.path.join(ESMM_DIR, "config.yaml"), "-o", "runner.evaluate_each_epoch=True",
         "hyper_parameters.cvr_tower.metrics=[logloss]", "runner.epochs=1",
         f"runner.model_save_path={tmp_path}", f"runner.cache_dir={tmp_path / 'cache'}"],
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = captured.out + captured.err
    test_line = next(line for line in out.splitlines() if "epoch 0 test:" in line)
    assert "auc_ctr" in test_line and "logloss_ctcvr" in test_line and "auc_cvr" not in test_line
    assert (tmp_path / "training_curves.png").stat().st_size > 10_000


def _as_written_before(folder, old_names: dict):
    """Rewrite a checkpoint's weight and optimizer files with the names an older version gave
    (`old_names`: {new prefix: old prefix})."""
    for name in ("rec.pdparams", "rec.pdopt"):
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            continue
        state = paddle.load(path)
        renamed = {}
        for key, value in state.items():
            new = next((p for p in old_names if key.startswith(p)), None)
            renamed[old_names[new] + key[len(new) :] if new else key] = value
        paddle.save(renamed, path)


@pytest.mark.parametrize("kind", ["dygraph", "static"])
def test_checkpoints_with_the_old_input_names_still_load(tmp_path, kind):
    """ESMM named its inputs `inputs.0`/`inputs.1`, the other models `input`: all use `input`
    (and `cvr_input`) now, and checkpoints written with the old names load, with their
    optimizer state, into both engines."""
    cfg = small("hyper_parameters.variant=esmm_ns")
    module = esmm_module("dygraph_model" if kind == "dygraph" else "static_model")
    engine_cls = DygraphEngine if kind == "dygraph" else StaticEngine
    paddle.seed(1)
    trained = engine_cls(module, cfg)
    trained.train_step(batch_of(cfg, n=64, seed=1))
    trained.save(str(tmp_path))
    want = trained.get_params()
    batch = batch_of(cfg, n=64, seed=2)
    next_loss = trained.train_step(batch)[0]  # before a second engine: static ones share a scope
    _as_written_before(tmp_path, {"input.": "inputs.0.", "cvr_input.": "inputs.1."})
    saved = paddle.load(str(tmp_path / "rec.pdparams"))
    assert "inputs.1.embedding.weight" in saved and "cvr_input.embedding.weight" not in saved
    paddle.seed(2)
    fresh = engine_cls(module, cfg)
    fresh.load_training_state(str(tmp_path))
    got = fresh.get_params()
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # and it goes on as the saved run did: the optimizer state came too
    assert fresh.train_step(batch)[0] == pytest.approx(next_loss, rel=1e-6)
