"""Row-wise embedding updates (paddle_rec_zoo/sparse.py): the rules on hand-computed values, only the looked-up
rows and slots change, both engines agree, the dense path is gone from the static program."""

import numpy as np
import paddle
import pytest
from conftest import esmm_config, esmm_module
from test_net import batch_of
from test_parity import assert_same_losses_in_both_engines

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.nn.features import FeatureInput
from paddle_rec_zoo.nn.sparse import (
    ROW_OPTIMIZERS,
    RowLookup,
    RowOptimizer,
    SparseEmbedding,
    row_batch,
    set_row_ids,
    take_row_lookups,
)
from paddle_rec_zoo.run.engines import DygraphEngine, StaticEngine

TABLE = "input.embedding.weight"


def opts(rule: str, *extra):
    return esmm_config(
        "hyper_parameters.sparse_feature_number=500",
        f"hyper_parameters.embedding_optimizer.class={rule}",
        *extra,
    )


@pytest.mark.parametrize("size, padding", [(1, False), (7, True), (5000, True), (5000, False)])
def test_row_batch_gives_every_id_its_row_and_padding_row_zero(size, padding):
    rng = np.random.default_rng(size)
    low = 0 if padding else 1
    ids = rng.integers(low, max(size // 3, 2) + low, (size, 3)).astype(np.int64)
    uniq, local = row_batch(ids)
    assert uniq[0] == 0 and np.all(np.diff(uniq) > 0)  # padding first, then ascending, unique
    np.testing.assert_array_equal(uniq[local], ids)
    np.testing.assert_array_equal(local == 0, ids == 0)  # local 0 is padding, and only it
    assert set(uniq[1:]) == set(ids[ids != 0].ravel())


class _Ranks:
    """A Fleet world of `size` ranks seen from `rank`, whose all-reduce sums the given blocks."""

    def __init__(self, rank, per_rank_ids):
        self.rank, self.size, self.active = rank, len(per_rank_ids), True
        self.per_rank_ids = per_rank_ids

    def all_reduce_sum(self, blocks):
        total = np.zeros_like(blocks)
        for r, ids in enumerate(self.per_rank_ids):
            total[r] = ids.reshape(-1)
        return total


def test_row_batch_under_fleet_is_the_union_of_every_ranks_ids():
    a = np.array([[3, 0], [9, 3]], np.int64)
    b = np.array([[7, 7], [0, 2]], np.int64)
    for rank, ids in enumerate((a, b)):
        uniq, local = row_batch(ids, _Ranks(rank, [a, b]))
        np.testing.assert_array_equal(uniq, [0, 2, 3, 7, 9])  # the same on every rank
        np.testing.assert_array_equal(uniq[local], ids)


def test_a_table_looked_up_twice_in_one_step_updates_both_calls_rows():
    paddle.seed(0)
    emb = SparseEmbedding(20, 3, 0.1, row_wise=True)
    ids = np.array([[1, 2, 5, 6], [2, 3, 6, 7]], np.int64)
    rows = row_batch(ids)
    set_row_ids(emb, paddle.to_tensor(rows.uniq))
    local = paddle.to_tensor(rows.local)
    before = emb.weight.numpy().copy()
    loss = emb(local[:, :2]).sum() + 2 * emb(local[:, 2:]).sum()  # two calls, one step
    loss.backward()
    lookups = take_row_lookups(emb)
    assert len(lookups) == 1  # one set of rows per table and step
    RowOptimizer("sgd", lambda: 0.1).step(lookups)
    changed = np.flatnonzero(np.abs(emb.weight.numpy() - before).sum(axis=1))
    np.testing.assert_array_equal(changed, [1, 2, 3, 5, 6, 7])  # both calls' rows
    # d loss / d row = how often the row is looked up, times 1 or 2 by call
    counts = {1: 1, 2: 2, 3: 1, 5: 2, 6: 4, 7: 2}
    for row, count in counts.items():
        np.testing.assert_allclose(before[row] - emb.weight.numpy()[row], 0.1 * count, rtol=1e-5)
    # the step is over: a forward on global ids looks them up, not stale local rows
    after = emb.weight.numpy()
    np.testing.assert_array_equal(emb(paddle.to_tensor(ids)).numpy()[0, 2], after[5])


def test_a_forward_outside_a_training_step_looks_up_global_ids_and_records_nothing():
    paddle.seed(0)
    emb = SparseEmbedding(20, 3, 0.1, row_wise=True)
    ids = paddle.to_tensor(np.array([[1, 0]], np.int64))
    out = emb(ids).numpy()  # training mode, but no batch rows given
    np.testing.assert_array_equal(out[0, 0], emb.weight.numpy()[1])
    assert not out[0, 1].any()
    with pytest.raises(RuntimeError, match="no rows looked up since the last update"):
        take_row_lookups(emb)


def reference_steps(rule: str, w, grads, lr=0.1, b1=0.9, b2=0.999, eps=1e-8):
    """The rules written out in numpy, for one table row set updated by each gradient in turn."""
    w = w.copy()
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    acc = np.zeros((w.shape[0], 1) if rule == "rowwise_adagrad" else w.shape, np.float64)
    for t, g in enumerate(grads, start=1):
        if rule == "sgd":
            w -= lr * g
        elif rule == "lazy_adam":  # Paddle's Adam: bias corrections with beta^t
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            c = np.sqrt(1 - b2**t)
            w -= lr * c / (1 - b1**t) * m / (np.sqrt(v) + eps * c)
        else:
            acc += (g * g).mean(axis=1, keepdims=True) if rule == "rowwise_adagrad" else g * g
            w -= lr * g / (np.sqrt(acc) + eps)
    return w


@pytest.mark.parametrize("rule", list(ROW_OPTIMIZERS))
def test_each_rule_on_hand_computed_values_and_untouched_rows_stay(rule):
    rng = np.random.default_rng(0)
    start = rng.normal(size=(6, 3)).astype(np.float32)
    table = paddle.to_tensor(start)
    uniq = paddle.to_tensor(np.array([1, 4], np.int64))
    grads = [rng.normal(size=(2, 3)).astype(np.float32) for _ in range(3)]
    opt = RowOptimizer(rule, lambda: 0.1)
    with paddle.no_grad():
        for g in grads:
            rows = paddle.gather(table, uniq)
            opt.update(RowLookup(table, uniq, rows), paddle.to_tensor(g), opt.next_lr())
    got = table.numpy()
    want = reference_steps(rule, start[[1, 4]].astype(np.float64), grads)
    np.testing.assert_allclose(got[[1, 4]], want, rtol=1e-5, atol=1e-5)  # float32 vs 64
    np.testing.assert_array_equal(got[[0, 2, 3, 5]], start[[0, 2, 3, 5]])  # bit for bit
    slots = opt.slots[table.name]
    if rule == "rowwise_adagrad":
        assert slots["accumulator"].shape == [6, 1]  # one float per row
    for kind in ("moment1", "moment2", "accumulator"):
        if kind in slots:
            assert not slots[kind].numpy()[[0, 2, 3, 5]].any()


def test_lazy_adam_equals_dense_adam_when_every_row_is_touched():
    """Lazy and dense Adam differ only on rows a step does not touch."""
    cfg_lazy = esmm_config(
        "hyper_parameters.sparse_feature_number=40", "hyper_parameters.max_len=1"
    )
    cfg_dense = esmm_config(
        "hyper_parameters.sparse_feature_number=40",
        "hyper_parameters.max_len=1",
        "hyper_parameters.embedding_optimizer.class=dense",
    )
    width = cfg_lazy.hyper_parameters.layout().width
    rng = np.random.default_rng(1)
    from paddle_rec_zoo.schema import Batch

    ids = np.stack([rng.permutation(np.arange(1, 40))[:width] for _ in range(64)])
    ids[: 39 // width + 1].ravel()[:39] = np.arange(1, 40)  # every row 1..39 in the batch
    labels = (rng.random((64, 2)) < 0.3).astype(np.float32)
    batch = Batch(ids.astype(np.int64), labels, np.arange(64))
    assert set(np.unique(batch.ids)) == set(range(1, 40))
    params = {}
    for name, cfg in (("lazy", cfg_lazy), ("dense", cfg_dense)):
        paddle.seed(4)
        engine = DygraphEngine(esmm_module("dygraph_model"), cfg)
        for _ in range(4):
            engine.train_step(batch)
        params[name] = engine.get_params()
    for key in params["dense"]:
        np.testing.assert_allclose(params["lazy"][key], params["dense"][key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("engine_kind", ["dygraph", "static"])
def test_a_step_changes_only_the_looked_up_rows_and_their_slots(tmp_path, engine_kind):
    cfg = opts("lazy_adam")
    batch = batch_of(cfg, n=8, seed=3)
    batch.ids[:, :] = np.where(batch.ids % 5 == 0, 0, batch.ids)  # some padding too
    paddle.seed(2)
    if engine_kind == "dygraph":
        engine = DygraphEngine(esmm_module("dygraph_model"), cfg)
    else:
        engine = StaticEngine(esmm_module("static_model"), cfg)
    try:
        before = engine.get_params()[TABLE]
        engine.train_step(batch)
        after = engine.get_params()[TABLE]
        state = engine.optimizer_state()
    finally:
        paddle.disable_static()
    touched = np.unique(batch.ids)
    touched = touched[touched != 0]
    changed = np.flatnonzero(np.abs(after - before).sum(axis=1))
    np.testing.assert_array_equal(changed, touched)
    moment = next(v for k, v in state.items() if k.endswith("moment1") and v.shape == after.shape)
    np.testing.assert_array_equal(np.flatnonzero(np.abs(moment).sum(axis=1)), touched)


@pytest.mark.parametrize("rule", ["lazy_adam", "rowwise_adagrad"])
def test_both_engines_train_identically_with_row_wise_updates(rule):
    cfg = opts(rule, "runner.seed=11", "hyper_parameters.embedding_optimizer.learning_rate=0.05")
    assert_same_losses_in_both_engines(cfg, batch_of(cfg, n=128, seed=4), steps=5)


def test_the_static_program_has_no_dense_table_gradient_or_update():
    """What makes a step cost O(rows): a gradient of the table, or an optimizer op on it."""
    cfg = opts("lazy_adam")
    engine = StaticEngine(esmm_module("static_model"), cfg)
    try:
        ops = [op.name() for op in engine.train_program.global_block().ops]
        table = engine.param_names[TABLE]
        shapes = [
            (op.name(), list(res.shape))
            for op in engine.train_program.global_block().ops
            for res in op.results()
            if res.is_dense_tensor_type() and op.name() not in ("builtin.parameter", "pd_op.data")
        ]
    finally:
        paddle.disable_static()
    assert "pd_op.adam_" in ops  # the dense layers' Adam
    # the embedding op's gradient is of the batch's rows [U, D], never of the table
    grads = [shape for name, shape in shapes if name == "pd_op.embedding_grad"]
    assert grads and all(shape == [-1, 12] for shape in grads), grads
    assert ops.count("pd_op.scatter_") == 3  # table, moment1, moment2: in place
    full = [name for name, shape in shapes if shape[:1] == [500]]
    assert all(name == "pd_op.scatter_" for name in full), (table, full)  # nothing else is O(rows)


def test_optimizer_slots_and_schedule_survive_a_checkpoint(tmp_path):
    cfg = opts(
        "lazy_adam",
        "hyper_parameters.embedding_optimizer.learning_rate=0.01",
        "hyper_parameters.embedding_optimizer.schedule={decay: cosine, decay_steps: 4}",
    )
    batch = batch_of(cfg, n=64, seed=2)
    paddle.seed(3)
    first = DygraphEngine(esmm_module("dygraph_model"), cfg)
    for _ in range(3):
        first.train_step(batch)
    first.save(str(tmp_path))
    saved = first.optimizer_state()
    assert {f"{TABLE}:{k}" for k in ROW_OPTIMIZERS["lazy_adam"]} <= set(saved)
    assert saved["Embedding_LR_Scheduler"]["last_epoch"] == 3
    second = DygraphEngine(esmm_module("dygraph_model"), cfg)
    second.load_training_state(str(tmp_path))
    loaded = second.optimizer_state()
    for key, value in saved.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(loaded[key], value)
    assert loaded["Embedding_LR_Scheduler"] == saved["Embedding_LR_Scheduler"]
    assert first.train_step(batch)[0] == pytest.approx(second.train_step(batch)[0], rel=1e-6)


@pytest.mark.parametrize(
    "setting, message",
    [
        ("{class: adam}", "unknown embedding optimizer 'adam'; choose one of lazy_adam"),
        ("{schedule: {decay: cosine}}", "schedule needs hyper_parameters.embedding_optimizer"),
        ("{class: dense, learning_rate: 0.1}", "class dense trains the tables with optimizer"),
        ("{learning_rate: -1.0}", "learning_rate must be positive"),
        ("{beta1: 1.0}", "beta1 must be in [0, 1)"),
    ],
)
def test_embedding_optimizer_config_mistakes(setting, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace(")", r"\)")):
        esmm_config(f"hyper_parameters.embedding_optimizer={setting}")


def test_a_training_forward_on_local_ids_pools_what_evaluation_pools_on_global_ids():
    """Ragged fields (per-field max_len), mean and sum pooling: the row batch changes the ids a
    training forward sees, not the pooled embeddings."""
    cfg = opts(
        "lazy_adam",
        "hyper_parameters.pooling=mean",
        "hyper_parameters.field_options={'109_14': {max_len: 5}, '301': {pooling: sum}}",
    )
    paddle.seed(5)
    features = FeatureInput(cfg.hyper_parameters)
    batch = batch_of(cfg, n=16, seed=7)
    features.eval()
    want = features.pooled(paddle.to_tensor(batch.ids)).numpy()
    rows = row_batch(batch.ids)
    features.train()
    set_row_ids(features, paddle.to_tensor(rows.uniq))
    got = features.pooled(paddle.to_tensor(rows.local)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
