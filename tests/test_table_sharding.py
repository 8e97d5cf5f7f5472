"""Row-sharded embedding tables (`hyper_parameters.table_sharding: row`, doc/distributed.md).

Fast tests: ownership, the checkpoint files (written by N ranks, read on M or merged), the
sharded table's first draw. Slow tests: 2 launched ranks against one process with their summed
batch (`tests/test_reliability.py` does the same without sharding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
import pytest
from conftest import ESMM_CONFIG, ESMM_DIR, esmm_config, esmm_module, launch_fleet, run_tool

from paddle_rec_zoo.nn.sparse import RowShards, SparseEmbedding, row_batch, sharding
from paddle_rec_zoo.run import table_shards
from paddle_rec_zoo.run.engines import DygraphEngine, load_optimizer_file, load_params_file


def test_rows_are_owned_by_remainder_and_every_row_once():
    for num_rows in (1, 2, 7, 10):
        for size in (2, 3):
            counts = [RowShards(rank, size).rows(num_rows) for rank in range(size)]
            assert sum(counts) == num_rows
            assert counts == [len(range(rank, num_rows, size)) for rank in range(size)]
    uniq = np.array([0, 3, 4, 9, 10])
    assert RowShards(1, 2).owned(uniq).tolist() == [1, 3]  # ids 3 and 9
    batch = row_batch(np.array([[9, 0], [3, 4]]), shards=RowShards(1, 2))
    assert batch.uniq.tolist() == [0, 3, 4, 9]
    positions, shard_rows = batch.owned
    assert positions.tolist() == [1, 3] and shard_rows.tolist() == [1, 4]  # 3 // 2, 9 // 2


def _write_shards(folder, whole: dict, size: int):
    for key, array in whole.items():
        for rank in range(size):
            path = table_shards.shard_path(folder, key, rank, size)
            table_shards.write_array(path, paddle.to_tensor(array[rank::size]), chunk=2)
    table_shards.write_layout(folder, size, {k: v.shape for k, v in whole.items()})


@pytest.mark.parametrize("written_by, read_on", [(2, 3), (3, 2), (2, 2), (2, 1)])
def test_a_checkpoint_of_n_ranks_loads_on_m_ranks_and_merges_whole(tmp_path, written_by, read_on):
    rng = np.random.default_rng(0)
    whole = {
        "t.weight": rng.standard_normal((11, 4)).astype("float32"),
        "t.weight:accumulator": rng.random((11, 1)).astype("float32"),
    }
    _write_shards(str(tmp_path), whole, written_by)
    layout = table_shards.read_layout(str(tmp_path))
    assert layout == {"ranks": written_by, "arrays": {k: list(v.shape) for k, v in whole.items()}}
    for key, array in whole.items():
        np.testing.assert_array_equal(table_shards.merge(str(tmp_path), key, layout), array)
        for rank in range(read_on):
            rows = table_shards.read_rows(str(tmp_path), key, layout, RowShards(rank, read_on))
            np.testing.assert_array_equal(rows, array[rank::read_on])


def test_a_missing_rank_file_is_one_line_naming_the_shared_folder(tmp_path):
    from paddle_rec_zoo.errors import UserError

    _write_shards(str(tmp_path), {"t.weight": np.zeros((5, 2), "float32")}, 2)
    (tmp_path / "shards" / "t.weight.1-of-2.npy").unlink()
    with pytest.raises(UserError, match="must be one folder that all ranks share"):
        table_shards.check_complete(str(tmp_path), ["t.weight"], 2)


def test_each_rank_draws_its_rows_of_the_table_one_process_draws():
    """The sharded run starts from the unsharded table, and later layers draw the same."""
    paddle.seed(5)
    whole = SparseEmbedding(1001, 3, 0.01, row_wise=True)
    after = paddle.rand([4]).numpy()
    for rank in range(2):
        paddle.seed(5)
        with sharding(RowShards(rank, 2)):
            shard = SparseEmbedding(1001, 3, 0.01, row_wise=True)
        np.testing.assert_array_equal(shard.weight.numpy(), whole.weight.numpy()[rank::2])
        np.testing.assert_array_equal(paddle.rand([4]).numpy(), after)
        assert shard.num_rows == 1001 and shard.weight.no_sync


def test_sharding_needs_a_row_wise_embedding_optimizer():
    from paddle_rec_zoo.errors import UserError

    with pytest.raises(UserError, match="table_sharding: row needs a row-wise embedding_optim"):
        esmm_config(
            "hyper_parameters.table_sharding=row",
            "hyper_parameters.embedding_optimizer.class=dense",
        )
    with pytest.raises(UserError, match="table_sharding: choose none or row"):
        esmm_config("hyper_parameters.table_sharding=column")


def _common(tmp_path, *extra):
    return [
        f"runner.cache_dir={tmp_path / 'cache'}",
        "runner.epochs=2",
        "runner.shuffle=True",
        "runner.evaluate_each_epoch=True",
        "runner.print_interval=4",
        *extra,
    ]


def _assert_close(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, atol=2e-4, rtol=1e-3, err_msg=name)


def _train_one_process(tmp_path, save, *args, tool="trainer"):
    one = run_tool(
        tool, "-m", ESMM_CONFIG, "-o", *args, f"runner.model_save_path={save}",
        "runner.train_batch_size=256",
    )  # fmt: skip
    assert one.returncode == 0, one.stderr


def _metrics(log: str, marker: str) -> str:
    """The metrics of the last line of `log` holding `marker`, without counts and speed."""
    line = [x for x in log.splitlines() if marker in x][-1]
    return line.split(marker, 1)[1].split(" (")[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "tool, rule",
    [("trainer", "lazy_adam"), ("trainer", "rowwise_adagrad"), ("static_trainer", "lazy_adam")],
)
def test_two_sharded_ranks_equal_one_process_with_double_batch(tmp_path, tool, rule):
    args = _common(tmp_path, f"hyper_parameters.embedding_optimizer.class={rule}")
    samples = "1,000"
    if rule == "rowwise_adagrad":  # 501 test rows in batches of 250: rank 0 evaluates 2
        # batches, rank 1 one (and takes part in rank 0's second lookup without a batch)
        test = tmp_path / "test"
        test.mkdir()
        lines = Path(ESMM_DIR, "data", "test", "part-00000.txt").read_text().splitlines()
        (test / "part-00000.txt").write_text("\n".join(lines[:501]) + "\n")
        args += [f"runner.test_data_dir={test}", "runner.infer_batch_size=250"]
        args += ["runner.keep_best=auc_ctcvr"]  # best/ is a copy, shards included
        samples = "501"
    sharded = [*args, "hyper_parameters.table_sharding=row", "runner.train_batch_size=128"]
    proc, logs = launch_fleet(
        tmp_path / "log", tool, *sharded, f"runner.model_save_path={tmp_path / 'dp'}"
    )
    assert proc.returncode == 0, logs[0][-3000:] + logs[1][-3000:]
    _train_one_process(tmp_path, tmp_path / "one", *args, tool=tool)
    dp, one = tmp_path / "dp" / "1", tmp_path / "one" / "1"
    # each rank wrote its half of the table and of its row slots; the rest is rank 0's
    assert table_shards.read_layout(str(dp))["ranks"] == 2
    assert not [k for k in paddle.load(str(dp / "rec.pdparams")) if "embedding" in k]
    _assert_close(load_params_file(str(dp)), load_params_file(str(one)))
    if rule == "rowwise_adagrad":
        best = tmp_path / "dp" / "best"
        assert (best / "shards").is_dir()
        _assert_close(load_params_file(str(best)), load_params_file(str(one.parent / "best")))
    # the evaluation during training looked the sharded rows up on both ranks
    assert "epoch 1 test:" in logs[0] and f"(samples {samples}," in logs[0]
    trained = _metrics(logs[0], "test: ")
    if tool == "static_trainer":  # the exported model holds the whole table
        infer = run_tool(
            "static_infer", "-m", ESMM_CONFIG, "-o", *args, "runner.use_inference=True",
            f"runner.infer_load_path={tmp_path / 'dp'}", "runner.infer_start_epoch=1",
            "runner.infer_end_epoch=2",
        )  # fmt: skip
        assert infer.returncode == 0, infer.stderr
        assert _metrics(infer.stdout + infer.stderr, "[inference]: ") == trained
        from test_preemption import fleet_sigterm_then_resume

        fleet_sigterm_then_resume(tmp_path, tool, sharded, tmp_path / "dp")
        return
    slots = {k: v for k, v in load_optimizer_file(str(one)).items() if not isinstance(v, dict)}
    merged = load_optimizer_file(str(dp))
    _assert_close({k: merged[k] for k in slots}, slots)
    # one process, without sharding, evaluates the 2-rank checkpoint (tables merged) ...
    infer = run_tool(
        "infer", "-m", ESMM_CONFIG, "-o", *args, f"runner.infer_load_path={tmp_path / 'dp'}",
        "runner.infer_start_epoch=1", "runner.infer_end_epoch=2",
    )  # fmt: skip
    assert infer.returncode == 0, infer.stderr
    assert _metrics(infer.stdout + infer.stderr, "[dygraph]: ") == trained
    # ... and takes its training state (as a resume on one rank would)
    engine = DygraphEngine(esmm_module("dygraph_model"), esmm_config(*args))
    engine.load_training_state(str(dp))
    _assert_close(engine.get_params(), load_params_file(str(dp)))
    state = engine.optimizer_state()
    for key, value in merged.items():
        if not isinstance(value, dict):
            np.testing.assert_array_equal(state[key], value, err_msg=key)
    if rule == "lazy_adam":  # stopped by SIGTERM inside epoch 0, resumed: the same run
        from test_preemption import fleet_sigterm_then_resume

        fleet_sigterm_then_resume(tmp_path, tool, sharded, tmp_path / "dp")
        resumed = load_params_file(str(tmp_path / "stopped" / "1"))
        for name, value in load_params_file(str(dp)).items():
            np.testing.assert_array_equal(resumed[name], value, err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["trainer", "static_trainer"])
def test_warm_start_into_a_grown_sharded_table_with_hashed_ids_equals_one_process(tmp_path, tool):
    """A one-process checkpoint of 1000 rows (ids folded: hash_ids) warm-starts a 2-rank
    sharded run of 1200 rows, weights and optimizer state: each rank takes its rows of the old
    table and keeps its fresh draw of the new ones, as one process does."""
    base = tmp_path / "base"
    args = _common(tmp_path, "hyper_parameters.hash_ids=True")
    args = [a for a in args if a != "runner.epochs=2"] + ["runner.epochs=1"]
    _train_one_process(
        tmp_path, base, *args, "hyper_parameters.sparse_feature_number=1000", tool=tool
    )
    warm = [
        *args,
        "hyper_parameters.sparse_feature_number=1200",
        f"runner.model_init_path={base}",
        "runner.model_init_optimizer=True",
    ]
    proc, logs = launch_fleet(
        tmp_path / "log", tool, *warm, "hyper_parameters.table_sharding=row",
        "runner.train_batch_size=128", f"runner.model_save_path={tmp_path / 'dp'}",
    )  # fmt: skip
    assert proc.returncode == 0, logs[0][-3000:] + logs[1][-3000:]
    assert "embedding rows 1000 -> 1200, new rows fresh" in logs[0]
    _train_one_process(tmp_path, tmp_path / "one", *warm, tool=tool)
    dp, one = str(tmp_path / "dp" / "0"), str(tmp_path / "one" / "0")
    _assert_close(load_params_file(dp), load_params_file(one))
    if tool == "trainer":  # (the static engine keys its optimizer state by variable names)
        slots = {k: v for k, v in load_optimizer_file(one).items() if not isinstance(v, dict)}
        merged = load_optimizer_file(dp)
        _assert_close({k: merged[k] for k in slots}, slots)


@pytest.mark.slow
def test_a_checkpoint_of_two_sharded_ranks_is_evaluated_by_three(tmp_path):
    """Written by 2 ranks, read by 3: each of the 3 takes its rows (i % 3) out of the 2 ranks'
    files and the lookups run in lockstep; the metrics are the training run's own."""
    args = [*_common(tmp_path), "runner.epochs=1", "hyper_parameters.table_sharding=row"]
    save = f"runner.model_save_path={tmp_path / 'dp'}"
    proc, logs = launch_fleet(
        tmp_path / "train", "trainer", *args, save, "runner.train_batch_size=128"
    )
    assert proc.returncode == 0, logs[0][-3000:] + logs[1][-3000:]
    assert table_shards.read_layout(str(tmp_path / "dp" / "0"))["ranks"] == 2
    trained = _metrics(logs[0], "test: ")
    proc, logs = launch_fleet(
        tmp_path / "infer", "infer", *args, f"runner.infer_load_path={tmp_path / 'dp'}",
        "runner.infer_start_epoch=0", "runner.infer_end_epoch=1", ranks=3,
    )  # fmt: skip
    assert proc.returncode == 0, "\n".join(log[-2000:] for log in logs)
    assert _metrics(logs[0], "[dygraph]: ") == trained
