"""The multi-task zoo (models/multitask/*): every model on the same contract, and what each paper
adds on hand-computed values."""

import json
import os
import re

import numpy as np
import paddle
import pytest
from conftest import ZOO, launch_fleet, model_dir, run_tool, zoo_config, zoo_module

from paddle_rec_zoo.run.engines import DygraphEngine, StaticEngine
from paddle_rec_zoo.schema import Batch

NEW = [m for m in ZOO if m != "esmm"]


def small(model: str, *extra: str):
    return zoo_config(model, "hyper_parameters.sparse_feature_number=500", *extra)


def batch(cfg, n=128, seed=0) -> Batch:
    rng = np.random.default_rng(seed)
    width = cfg.hyper_parameters.layout().width
    ids = rng.integers(0, cfg.hyper_parameters.sparse_feature_number, (n, width))
    click = (rng.random(n) < 0.3).astype(np.float32)
    buy = click * (rng.random(n) < 0.5).astype(np.float32)
    return Batch(ids.astype(np.int64), np.stack([click, buy], axis=1), np.arange(n))


def network(model: str, cfg):
    return zoo_module(model, "dygraph_model").DygraphModel.network(cfg.hyper_parameters)


def _variants(model: str) -> list[str]:
    hp_class = zoo_module(model, "dygraph_model").DygraphModel.hyper_parameters_class
    return list(getattr(hp_class, "VARIANTS", [None]))


@pytest.mark.parametrize(
    "model, variant", [(m, v) for m in ZOO for v in _variants(m)], ids=lambda x: str(x)
)
def test_outputs_are_probabilities_and_pctcvr_is_the_product(model, variant):
    """Every model and variant: pctcvr = pctr · pcvr <= pctr, also where the towers saturate and
    disagree (weights scaled up, so a CTCVR head's probability exceeds pCTR on some rows)."""
    paddle.seed(1)
    cfg = small(model, *([f"hyper_parameters.variant={variant}"] if variant else []))
    net = network(model, cfg)
    net.eval()
    for p in net.parameters():
        p.set_value(p * 4.0)
    out = net(paddle.to_tensor(batch(cfg, n=256).ids))
    for name in ("pctr", "pcvr", "pctcvr"):
        assert out[name].shape == [256, 1]
        v = out[name].numpy()
        assert ((v >= 0) & (v <= 1)).all()
    pctr, pcvr, pctcvr = (out[k].numpy() for k in ("pctr", "pcvr", "pctcvr"))
    assert (pctcvr <= pctr * (1 + 1e-6)).all()
    np.testing.assert_allclose(pctcvr, pctr * pcvr, rtol=1e-6)
    if "p_ctcvr" in out:  # a CTCVR head: the case the clip exists for is exercised
        assert (out["p_ctcvr"].numpy() > pctr).any() and (out["p_ctcvr"].numpy() < pctr).any()


@pytest.mark.parametrize(
    "model, extra",
    [*((m, ()) for m in NEW), ("escm2", ("hyper_parameters.counterfactual=dr",))],
)
def test_loss_falls_on_a_tiny_set_with_row_wise_embeddings(model, extra):
    cfg = small(model, "hyper_parameters.optimizer.learning_rate=0.01", "runner.seed=3", *extra)
    b = batch(cfg, n=256, seed=1)
    paddle.seed(3)
    engine = DygraphEngine(zoo_module(model, "dygraph_model"), cfg)
    table = engine.net.parameters()[0]  # the first input's embedding table
    before = table.numpy().copy()
    losses = [engine.train_step(b)[0] for _ in range(40)]
    assert losses[-1] < 0.6 * losses[0]
    changed = np.flatnonzero(np.abs(table.numpy() - before).sum(axis=1))
    assert set(changed) <= set(np.unique(b.ids))  # only looked-up rows moved


@pytest.mark.parametrize(
    "model, extra",
    [*((m, ()) for m in NEW), ("escm2", ("hyper_parameters.counterfactual=dr",))],
)
def test_same_seed_same_training_in_both_engines(model, extra):
    cfg = small(model, "runner.seed=11", *extra)
    b = batch(cfg, seed=4)
    paddle.seed(11)
    dy = DygraphEngine(zoo_module(model, "dygraph_model"), cfg)
    dy_losses = [dy.train_step(b)[0] for _ in range(5)]
    dy_out = dy.predict(b)
    paddle.seed(11)
    st = StaticEngine(zoo_module(model, "static_model"), cfg)
    st_losses = [st.train_step(b)[0] for _ in range(5)]
    st_out = st.predict(b)
    np.testing.assert_allclose(st_losses, dy_losses, rtol=1e-4)
    for name in ("pctr", "pcvr", "pctcvr"):
        np.testing.assert_allclose(st_out[name], dy_out[name], atol=1e-5)


@pytest.mark.parametrize("model", NEW)
def test_resuming_from_a_checkpoint_continues_the_same_training(model, tmp_path):
    cfg = small(model, "runner.seed=5")
    b = batch(cfg, seed=2)
    paddle.seed(5)
    straight = DygraphEngine(zoo_module(model, "dygraph_model"), cfg)
    expected = [straight.train_step(b)[0] for _ in range(4)]
    paddle.seed(5)
    first = DygraphEngine(zoo_module(model, "dygraph_model"), cfg)
    got = [first.train_step(b)[0] for _ in range(2)]
    first.save(str(tmp_path))
    second = DygraphEngine(zoo_module(model, "dygraph_model"), cfg)
    second.load_training_state(str(tmp_path))
    got += [second.train_step(b)[0] for _ in range(2)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


# ----------------------------------------------------------------------- what each paper adds
def col(values):
    return paddle.to_tensor(np.array(values, np.float32).reshape(-1, 1))


def test_escm2_ips_risk_on_hand_computed_values():
    risk_of = zoo_module("escm2", "net").counterfactual_risk
    # cvr logit 0 (pCVR 1/2, BCE ln 2 either label); propensities 0.25 and 0.5 (clip 0.05);
    # row 3 is unclicked: no error term
    risk, imputation = risk_of(
        col([0.0, 0.0, 3.0]), col([1, 0, 0]), col([1, 1, 0]), col([0.25, 0.5, 0.9]), 0.05
    )
    ln2 = np.log(2.0)
    assert imputation is None
    assert float(risk) == pytest.approx((ln2 / 0.25 + ln2 / 0.5 + 0) / 3, rel=1e-6)
    # a propensity below the clip is raised to it
    risk, _ = risk_of(col([0.0]), col([1]), col([1]), col([0.01]), 0.05)
    assert float(risk) == pytest.approx(ln2 / 0.05, rel=1e-6)


def test_escm2_dr_risk_and_imputation_on_hand_computed_values():
    risk_of = zoo_module("escm2", "net").counterfactual_risk
    # row 1: clicked, bought, pCVR 1/2, imputed r 1/4 ; row 2: unclicked, pCVR 1/2, r 3/4
    r = col([0.25, 0.75])
    risk, imputation = risk_of(col([0.0, 0.0]), col([1, 0]), col([1, 0]), col([0.5, 0.2]), 0.05, r)
    ln2 = np.log(2.0)
    e_hat = ln2  # BCE(1/2, r) = ln 2 for any r: -(r ln 1/2 + (1-r) ln 1/2)
    e = ln2
    assert float(risk) == pytest.approx((e_hat + (e - e_hat) / 0.5 + e_hat) / 2, rel=1e-6)
    assert float(imputation) == pytest.approx(0.0, abs=1e-7)
    # pCVR 3/4 (logit ln 3): e = -ln 3/4 (bought), ê = -(1/4 ln 3/4 + 3/4 ln 1/4)
    risk, imputation = risk_of(col([np.log(3)]), col([1]), col([1]), col([0.5]), 0.05, col([0.25]))
    e, e_hat = -np.log(0.75), -(0.25 * np.log(0.75) + 0.75 * np.log(0.25))
    assert float(risk) == pytest.approx(e_hat + (e - e_hat) / 0.5, rel=1e-5)
    assert float(imputation) == pytest.approx((e - e_hat) ** 2 / 0.5, rel=1e-5)


def test_escm2_dr_pulls_unclicked_pcvr_towards_the_imputed_label():
    """The DR risk gives pCVR a gradient on unclicked impressions (IPS gives none)."""
    risk_of = zoo_module("escm2", "net").counterfactual_risk
    for imputed, expect_grad in ((col([0.9]), True), (None, False)):
        logit = paddle.to_tensor(np.zeros((1, 1), np.float32), stop_gradient=False)
        risk, _ = risk_of(logit, col([0]), col([0]), col([0.5]), 0.05, imputed)
        risk.backward()
        grad = float(logit.grad.numpy()[0, 0]) if logit.grad is not None else 0.0
        assert (grad < 0) if expect_grad else grad == 0  # raise pCVR towards r = 0.9


def test_escm2_none_is_esmm_and_the_risk_adds_with_its_weight():
    b = batch(small("escm2"), seed=6)
    labels = {"click": col(b.labels[:, 0]), "buy": col(b.labels[:, 1])}
    paddle.seed(2)
    net = network("escm2", small("escm2", "hyper_parameters.counterfactual=ips"))
    out = net(paddle.to_tensor(b.ids))
    total, parts = net.loss(out, labels)
    expect = parts["loss_ctr"] + parts["loss_ctcvr"] + 0.1 * parts["loss_cvr_ips"]
    assert float(total) == pytest.approx(float(expect), rel=1e-6)
    net.hp.counterfactual = "none"
    total, parts = net.loss(out, labels)
    assert set(parts) == {"loss_ctr", "loss_ctcvr"}


def test_aitm_calibrator_on_hand_computed_values():
    calibrator = zoo_module("aitm", "net").calibrator_loss
    # conversion above click on rows 1 and 3 only
    value = calibrator(col([0.3, 0.1, 0.5, 0.2]), col([0.2, 0.4, 0.25, 0.2]))
    assert float(value) == pytest.approx((0.1 + 0 + 0.25 + 0) / 4, rel=1e-6)


def test_aitm_loss_is_its_three_terms_and_pcvr_is_the_ratio():
    cfg = small("aitm", "hyper_parameters.calibrator_weight=2.0")
    b = batch(cfg, seed=7)
    paddle.seed(4)
    net = network("aitm", cfg)
    out = net(paddle.to_tensor(b.ids))
    total, parts = net.loss(out, {"click": col(b.labels[:, 0]), "buy": col(b.labels[:, 1])})
    expect = parts["loss_ctr"] + parts["loss_ctcvr"] + 2.0 * parts["calibrator"]
    assert float(total) == pytest.approx(float(expect), rel=1e-6)
    ratio = np.clip(out["p_ctcvr"].numpy() / out["pctr"].numpy(), 0, 1)
    np.testing.assert_allclose(out["pcvr"].numpy(), ratio, rtol=1e-5)


def test_ait_attention_weights_the_two_inputs_by_their_scores():
    ait = zoo_module("aitm", "net").AIT(2)
    for layer in (ait.h1, ait.h2, ait.h3):  # identity maps: score(u) = |u|² / √2, value u
        layer.weight.set_value(np.eye(2, dtype=np.float32))
        layer.bias.set_value(np.zeros(2, np.float32))
    p, q = np.array([[1.0, 0.0]], np.float32), np.array([[0.0, 2.0]], np.float32)
    out = ait(paddle.to_tensor(p), paddle.to_tensor(q)).numpy()
    s = np.array([1.0, 4.0]) / np.sqrt(2)
    w = np.exp(s) / np.exp(s).sum()
    np.testing.assert_allclose(out, w[0] * p + w[1] * q, rtol=1e-5)


def test_gates_mix_experts_with_softmax_weights():
    from paddle_rec_zoo.nn.experts import Gate

    gate = Gate(3, 2)
    gate.linear.weight.set_value(np.array([[1, 0], [0, 1], [0, 0]], np.float32))
    gate.linear.bias.set_value(np.zeros(2, np.float32))
    x = np.array([[2.0, 0.0, 5.0]], np.float32)
    experts = np.array([[[1.0, 1.0], [3.0, -1.0]]], np.float32)  # [B, n=2, d=2]
    out = gate(paddle.to_tensor(x), paddle.to_tensor(experts)).numpy()
    w = np.exp([2.0, 0.0]) / np.exp([2.0, 0.0]).sum()
    np.testing.assert_allclose(out[0], w[0] * experts[0, 0] + w[1] * experts[0, 1], rtol=1e-6)


def test_ple_levels_and_mmoe_experts_follow_the_config():
    ple = network("ple", small("ple", "hyper_parameters.num_levels=3"))
    assert len(ple.mixture.levels) == 3
    assert ple.mixture.levels[0].shared_gate is not None
    assert ple.mixture.levels[-1].shared_gate is None
    mmoe = network("mmoe", small("mmoe", "hyper_parameters.num_experts=5"))
    assert len(mmoe.mixture.experts.experts) == 5


@pytest.mark.parametrize(
    "model, override, message",
    [
        ("escm2", "counterfactual=snips", "hyper_parameters.counterfactual: choose one of"),
        ("aitm", "cvr_fc_sizes=[32]", "AITM's towers need the same"),
        ("mmoe", "num_experts=0", "hyper_parameters.num_experts must be at least 1"),
        ("ple", "cvr_loss=naive", "hyper_parameters.cvr_loss: choose one of"),
    ],
)
def test_bad_model_keys_name_the_key(model, override, message):
    from paddle_rec_zoo.errors import UserError

    with pytest.raises(UserError, match=re.escape(message)):
        small(model, f"hyper_parameters.{override}")


# ----------------------------------------------------------------------- the tools, end to end
EVAL = re.compile(r"epoch 0 \[(\w+)\]: auc_ctr (\S+) auc_cvr (\S+) auc_ctcvr (\S+)")


@pytest.mark.slow
@pytest.mark.parametrize("model", NEW)
def test_every_tool_runs_the_bundled_sample(model, tmp_path):
    config = os.path.join(model_dir(model), "config.yaml")
    save = tmp_path / "run"
    common = [
        f"runner.model_save_path={save}",
        f"runner.cache_dir={tmp_path / 'cache'}",
        "runner.epochs=1",
        "runner.infer_end_epoch=1",
    ]
    for tool in ("trainer", "static_trainer"):  # the static one last: it exports a model
        proc = run_tool(tool, "-m", config, "-o", *common, "runner.overwrite=True")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert (save / "0" / "rec.pdparams").exists() and (save / "training_curves.png").exists()
    assert (save / "0" / "inference.json").exists()
    found = {}
    preds = tmp_path / "preds.csv"
    for tool, extra in (
        ("infer", [f"runner.save_predictions={preds}"]),
        ("static_infer", []),
        ("static_infer", ["runner.use_inference=True"]),
    ):
        proc = run_tool(tool, "-m", config, "-o", *common, *extra)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        (engine, *values) = EVAL.search(proc.stdout + proc.stderr).groups()
        found[engine] = [float(v) for v in values]
    assert set(found) == {"dygraph", "static", "inference"}
    np.testing.assert_allclose(found["dygraph"], found["static"], atol=2e-4)
    np.testing.assert_allclose(found["inference"], found["static"], atol=2e-4)
    header = preds.read_text().splitlines()[0]
    assert header == "sample_id,click,buy,pctr,pcvr,pctcvr"


@pytest.mark.slow
@pytest.mark.parametrize("model", ["escm2"])
def test_two_fleet_ranks_train_the_model(model, tmp_path):
    """The models share the engines' Fleet path (tested with ESMM elsewhere); ESCM²'s DR has the
    most parameters that only its loss reaches."""
    save = tmp_path / "run"
    proc, logs = launch_fleet(
        tmp_path / "logs",
        "trainer",
        f"runner.model_save_path={save}",
        f"runner.cache_dir={tmp_path / 'cache'}",
        "runner.epochs=1",
        "hyper_parameters.counterfactual=dr",  # the imputation tower trains on both ranks too
        config=os.path.join(model_dir(model), "config.yaml"),
    )
    assert proc.returncode == 0, logs[0][-2000:] + logs[1][-2000:]
    meta = json.loads((save / "0" / "meta.json").read_text())
    assert meta["ranks"] == 2
    assert "on each of 2 ranks" in logs[0]


def test_the_adding_a_model_recipe_of_the_architecture_doc_runs():
    """doc/architecture.md's example network, as written there, builds, predicts and trains."""
    from conftest import ROOT

    with open(os.path.join(ROOT, "doc", "architecture.md")) as f:
        text = f.read()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec("\n".join(line[3:] for line in code.splitlines()), namespace)  # noqa: S102 - our doc
    hp = namespace["HyperParameters"](sparse_feature_number=100, fields=["101", "205", "210"])
    hp.validate("hyper_parameters")
    net = namespace["MyLayer"](hp)
    ids = np.random.default_rng(0).integers(0, 100, (8, hp.layout().width))
    out = net(paddle.to_tensor(ids))
    loss, parts = net.loss(out, {"click": col([1] * 8), "buy": col([0] * 8)})
    assert set(parts) == {"loss_ctr", "loss_ctcvr"} and np.isfinite(float(loss))
    assert "auc_cvr" in namespace["MyLayer"].spec(hp).metric_names
