"""Preemptible training (issue 12): SIGTERM/SIGINT stop at a step boundary with a checkpoint,
mid-epoch checkpoints, exact resume, and environmental failures that say what failed."""

import contextlib
import errno
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ESMM_CONFIG, ROOT, fleet_command, launch_fleet
from test_reliability import metric_lines, params, train_in_process

from paddle_rec_zoo.run import checkpoint, engines
from paddle_rec_zoo.run.checkpoint import META_FILE, PARAMS_FILE

# the bundled sample: 4000 rows, batches of 256 -> 16 batches per epoch
BATCHES = 16


def common(tmp_path, *more):
    return [
        f"runner.cache_dir={tmp_path / 'cache'}",
        "runner.epochs=2",
        "runner.print_interval=4",
        *more,
    ]


def signal_at_step(monkeypatch, engine_cls, step: int, signum: int):
    """Make the `step`-th training step (1-based) of this process send itself `signum`."""
    original = engine_cls.train_step
    calls = [0]

    def train_step(self, batch):
        calls[0] += 1
        if calls[0] == step:
            os.kill(os.getpid(), signum)
        return original(self, batch)

    monkeypatch.setattr(engine_cls, "train_step", train_step)


def assert_same_run(got, want, last_epoch=1):
    assert metric_lines(got) == metric_lines(want)
    expected = params(want / str(last_epoch))
    actual = params(got / str(last_epoch))
    for name, value in expected.items():
        np.testing.assert_array_equal(actual[name], value, err_msg=name)


def test_sigterm_inside_an_epoch_saves_it_and_resume_ends_as_the_uninterrupted_run(
    tmp_path, capsys, monkeypatch
):
    ref, save = tmp_path / "ref", tmp_path / "run"
    args = common(tmp_path, "runner.save_steps=6", "runner.keep_step_checkpoints=2")
    args += ["hyper_parameters.cvr_tower.dropout=0.3"]  # random masks continue where they were
    code, _, err = train_in_process(capsys, *args, f"runner.model_save_path={ref}")
    assert code == 0, err
    assert not (ref / "steps").exists()  # mid-epoch checkpoints go once their epoch is saved
    # inside epoch 1, after a periodic checkpoint (18) that stays and before the next (24)
    stop = BATCHES + 7
    epoch, batch = divmod(stop, BATCHES)
    with monkeypatch.context() as m:
        signal_at_step(m, engines.DygraphEngine, stop, signal.SIGTERM)
        code, out, err = train_in_process(capsys, *args, f"runner.model_save_path={save}")
    where = f"stop at step {stop}"
    assert code == 128 + signal.SIGTERM, (where, err)
    assert err == (
        f"stopped by SIGTERM after epoch {epoch} batch {batch}/{BATCHES} (step {stop}); saved "
        f"{save}/steps/{stop}; to continue, run the same command with -o runner.resume=True\n"
    ), where
    assert checkpoint.saved_epochs(save) == [0]
    # the periodic ones of epoch 1 before the stop, at most 2 kept, and the stop's own
    periodic = [s for s in range(BATCHES + 1, stop) if s % 6 == 0][-2:]
    assert checkpoint.saved_steps(save) == sorted({*periodic[-1:], stop}), where
    meta = checkpoint.read_meta(save / "steps" / str(stop))
    assert (meta["epoch"], meta["batch"], meta["step"]) == (epoch, batch, stop)
    # the infer tools evaluate epochs only, unless a mid-epoch checkpoint is named
    code, out, err = train_in_process(capsys, *args, f"runner.model_save_path={save}", tool="infer")
    assert code == 2 and "no checkpoint for epoch 1 in" in err
    code, out, err = train_in_process(
        capsys, *args, f"runner.infer_load_path={save}/steps/{stop}", tool="infer"
    )
    assert code == 0 and f"epoch {epoch} batch {batch}/{BATCHES} [dygraph]: auc_ctr" in out
    # resume: the same weights and logged metrics as the run that was never stopped
    code, out, err = train_in_process(
        capsys, *args, f"runner.model_save_path={save}", "runner.resume=True"
    )
    assert code == 0, err
    assert f"resuming in epoch {epoch} after batch {batch}/{BATCHES} (step {stop})" in out
    assert_same_run(save, ref)
    assert not (save / "steps").exists()


def test_sigint_after_an_epochs_last_step_saves_before_its_evaluation(
    tmp_path, capsys, monkeypatch
):
    """Static engine; the stop lands between the last step and the epoch's evaluation."""
    ref, save = tmp_path / "ref", tmp_path / "run"
    args = common(tmp_path, "runner.evaluate_each_epoch=True", "runner.epochs=1")
    code, _, err = train_in_process(
        capsys, *args, f"runner.model_save_path={ref}", tool="static_trainer"
    )
    assert code == 0, err
    with monkeypatch.context() as m:
        signal_at_step(m, engines.StaticEngine, BATCHES, signal.SIGINT)
        code, out, err = train_in_process(
            capsys, *args, f"runner.model_save_path={save}", tool="static_trainer"
        )
    assert code == 130, err
    assert f"stopped by SIGINT after epoch 0 batch {BATCHES}/{BATCHES}" in err
    assert "epoch 0 test:" not in out and checkpoint.saved_epochs(save) == []
    code, out, err = train_in_process(
        capsys,
        *args,
        f"runner.model_save_path={save}",
        "runner.resume=True",
        tool="static_trainer",
    )
    assert code == 0, err
    assert "epoch 0 test:" in out
    assert_same_run(save, ref, last_epoch=0)


@pytest.mark.parametrize("again", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_during_the_write_corrupts_nothing(tmp_path, capsys, monkeypatch, again):
    """A repeated SIGTERM (launchers send several) is ignored; a second SIGINT abandons the
    checkpoint being written. Either way the last complete checkpoint stays loadable."""
    save = tmp_path / "run"
    args = common(tmp_path, "runner.save_steps=4", f"runner.model_save_path={save}")
    original = engines.DygraphEngine.save

    def save_then_signal(self, folder):
        original(self, folder)  # weights written, meta.json not yet: the checkpoint is open
        if checkpoint.saved_steps(save) == [4]:
            os.kill(os.getpid(), again)

    monkeypatch.setattr(engines.DygraphEngine, "save", save_then_signal)
    signal_at_step(monkeypatch, engines.DygraphEngine, 6, signal.SIGTERM)
    code, _, err = train_in_process(capsys, *args)
    if again == signal.SIGTERM:
        assert code == 143 and "saved" in err and checkpoint.saved_steps(save) == [4, 6]
    else:
        assert code == 130 and err.startswith("interrupted again by SIGINT")
        assert checkpoint.saved_steps(save) == [4]
        assert not [n for n in os.listdir(save / "steps") if n.startswith(".")]
    assert params(save / "steps" / "4")  # loadable
    assert checkpoint.latest(str(save)) == str(save / "steps" / str(6 if code == 143 else 4))


def test_disk_full_while_checkpointing_names_the_checkpoint_and_keeps_the_earlier(
    tmp_path, capsys, monkeypatch
):
    save = tmp_path / "run"
    original = engines.DygraphEngine.save

    def save_until_full(self, folder):
        if checkpoint.saved_epochs(save) == [0]:  # the disk fills while epoch 1 is written
            with open(os.path.join(folder, PARAMS_FILE), "wb") as f:
                f.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        original(self, folder)

    monkeypatch.setattr(engines.DygraphEngine, "save", save_until_full)
    code, _, err = train_in_process(capsys, *common(tmp_path), f"runner.model_save_path={save}")
    assert code == 2
    size = checkpoint.folder_bytes(save / "0") / 1e6
    assert re.fullmatch(
        re.escape(
            f"error: checkpoint {save}/1: No space left on device; it needs about {size:,.1f} MB "
            f"(the size of {save}/0), "
        )
        + r"[0-9,.]+ MB"
        + re.escape(
            " are free there; free some space or choose another runner.model_save_path; the "
            f"last complete checkpoint, {save}/0, is kept\n"
        ),
        err,
    ), err
    assert sorted(os.listdir(save)) == ["0", "metrics.jsonl", "training_curves.png"]
    assert params(save / "0")


@pytest.mark.parametrize(
    "name, keep", [("rec.pdopt", 100), ("meta.json", 10), ("train_state.npz", 50)]
)
def test_a_truncated_checkpoint_names_its_file(tmp_path, capsys, monkeypatch, name, keep):
    save = tmp_path / "run"
    args = common(tmp_path, f"runner.model_save_path={save}")
    with monkeypatch.context() as m:
        signal_at_step(m, engines.DygraphEngine, 5, signal.SIGTERM)
        assert train_in_process(capsys, *args)[0] == 143
    path = save / "steps" / "5" / name
    path.write_bytes(path.read_bytes()[:keep])
    code, _, err = train_in_process(capsys, *args, "runner.resume=True")
    assert code == 2
    assert err.startswith(f"error: {path}: cannot be read (") and err.count("\n") == 1, err


def test_a_signal_before_training_starts_ends_at_once_with_one_line(tmp_path, capsys, monkeypatch):
    from paddle_rec_zoo.run import loop

    def load_dataset(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("not reached: the handler raises")

    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(loop, "load_dataset", load_dataset)
    code, _, err = train_in_process(capsys, *common(tmp_path), f"runner.model_save_path={tmp_path}")
    assert (code, err) == (143, "interrupted by SIGTERM\n")
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored for the next user


def spawn(tool, *overrides):
    return subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, "tools", f"{tool}.py"),
            "-m",
            ESMM_CONFIG,
            "-o",
            *overrides,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )


def wait_for(path, proc, timeout=120):
    deadline = time.time() + timeout
    while not os.path.exists(path) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)


def signal_at_log_line(proc, signum, text: str) -> str:
    """Send `signum` to `proc` as soon as it logs a line containing `text`; returns its output
    so far."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if text in line:
            proc.send_signal(signum)
            break
    return "".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["trainer", "static_trainer"])
def test_kill_9_then_sigterm_inside_epochs_and_resume_ends_as_the_uninterrupted_run(
    tmp_path, capsys, tool
):
    args = common(tmp_path, "runner.save_steps=3")
    ref, save = tmp_path / "ref", tmp_path / "run"
    code, _, err = train_in_process(capsys, *args, f"runner.model_save_path={ref}", tool=tool)
    assert code == 0, err
    # kill -9 inside epoch 0, once steps/9 is complete (so there is one to resume, and a step or
    # two later the run is still in epoch 0: epoch 1 is left to the SIGTERM below)
    proc = spawn(tool, *args, f"runner.model_save_path={save}")
    wait_for(save / "steps" / "9", proc)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL  # killed, not finished
    latest = checkpoint.latest(str(save))
    assert latest, os.listdir(save)
    for epoch in checkpoint.saved_epochs(str(save)):  # whatever exists is complete
        assert checkpoint.read_meta(save / str(epoch))["epoch"] == epoch and params(
            save / str(epoch)
        )
    for step in checkpoint.saved_steps(str(save)):
        assert checkpoint.read_meta(save / "steps" / str(step))["step"] == step
        assert params(save / "steps" / str(step))
    # resume it, and SIGTERM that in epoch 1 (12 batches before its end, so the signal always
    # lands inside the run): one line, 143, no Paddle FatalError block
    proc = spawn(tool, *args, f"runner.model_save_path={save}", "runner.resume=True")
    head = signal_at_log_line(proc, signal.SIGTERM, f"epoch 1 batch 4/{BATCHES}:")
    out, err = proc.communicate(timeout=120)
    assert "resuming " in head, head + out + err
    assert proc.returncode == 143, head + out + err  # the SIGTERM branch, always taken
    assert re.fullmatch(
        r"stopped by SIGTERM after epoch 1 batch \d+/16 \(step \d+\); saved .*\n", err
    )
    code, _, err = train_in_process(  # in this process: one start-up less
        capsys, *args, f"runner.model_save_path={save}", "runner.resume=True", tool=tool
    )
    assert code == 0, err
    assert_same_run(save, ref, last_epoch=1)
    assert not [n for n in os.listdir(save) if n.startswith(".")]


# A trainer whose checkpoint write of folder argv[1] stops after the engine's files (weights,
# optimizer, random state) are in its temporary folder and before meta.json and the rename; it
# writes that folder's name to argv[2] and waits there to be killed.
BLOCKED_WRITE = """
import os, sys, time
from paddle_rec_zoo.run import checkpoint
from paddle_rec_zoo.run.cli import main

target, marker = sys.argv[1], sys.argv[2]
save = checkpoint._save

def blocking_save(final, write_files, meta):
    def write(tmp):
        write_files(tmp)
        if final == target:
            with open(marker + ".tmp", "w") as f:
                f.write(tmp)
            os.rename(marker + ".tmp", marker)  # whole when it appears
            time.sleep(600)
    return save(final, write, meta)

checkpoint._save = blocking_save
sys.exit(main("trainer", sys.argv[3:]))
"""


def kill_inside_the_write_of(target, tmp_path, *overrides) -> str:
    """Run the trainer until it is inside the checkpoint write of `target`, SIGKILL it there;
    returns the temporary folder it was writing."""
    marker = tmp_path / "writing"
    marker.unlink(missing_ok=True)
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", BLOCKED_WRITE, str(target), str(marker)]
            + ["-m", ESMM_CONFIG, "-o", *overrides],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONWARNINGS="ignore"),
        )
        try:
            wait_for(marker, proc, timeout=300)
            assert proc.poll() is None and marker.exists(), log.read_text()[-3000:]
        finally:
            proc.kill()  # SIGKILL: asleep inside the write, or whatever went wrong
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    tmp = marker.read_text()
    written = os.listdir(tmp)  # half a checkpoint: weights without meta.json
    assert PARAMS_FILE in written and META_FILE not in written, written
    return tmp


def test_sigkill_inside_a_checkpoint_write_keeps_the_previous_one_and_resume_ends_as_uninterrupted(
    tmp_path, capsys
):
    """Killed while a mid-epoch and then an epoch checkpoint is half written (files in its
    temporary folder, no meta.json, not renamed): the checkpoint before it stays the latest, the
    half-written one is never taken, and resuming ends with the uninterrupted run's weights."""
    ref, save = tmp_path / "ref", tmp_path / "run"
    args = common(tmp_path, "runner.save_steps=6", "hyper_parameters.cvr_tower.dropout=0.3")
    code, _, err = train_in_process(capsys, *args, f"runner.model_save_path={ref}")
    assert code == 0, err
    run = [*args, f"runner.model_save_path={save}"]
    # steps/6, steps/12, epoch 0 (step 16, which drops those), then killed writing steps/18
    first = kill_inside_the_write_of(save / "steps" / "18", tmp_path, *run)
    assert os.path.dirname(first) == str(save / "steps")
    assert not (save / "steps" / "18").exists()
    assert checkpoint.saved_steps(save) == [] and checkpoint.saved_epochs(save) == [0]
    assert checkpoint.latest(str(save)) == str(save / "0")
    # resumed from epoch 0: steps/18 again, steps/24, steps/30, then killed writing epoch 1
    second = kill_inside_the_write_of(save / "1", tmp_path, *run, "runner.resume=True")
    assert "resuming after epoch 0 (step 16)" in (tmp_path / "killed.log").read_text()
    assert not os.path.exists(first)  # the first kill's leftover went when the run resumed
    assert os.path.dirname(second) == str(save) and not (save / "1").exists()
    assert checkpoint.saved_epochs(save) == [0] and checkpoint.saved_steps(save) == [24, 30]
    assert checkpoint.latest(str(save)) == str(save / "steps" / "30")
    code, out, err = train_in_process(capsys, *run, "runner.resume=True")
    assert code == 0, err
    assert "resuming in epoch 1 after batch 14/16 (step 30)" in out
    assert_same_run(save, ref)
    assert not (save / "steps").exists()
    assert not [n for n in os.listdir(save) if n.startswith(".")]


def fleet_sigterm_then_resume(tmp_path, tool, args, reference):
    """Called by test_reliability's 2-rank test, whose run is the uninterrupted `reference`.

    SIGTERM to the launcher, which passes it on to both ranks; they agree on a step (they vote
    every 10: the signal comes after step 4 of 16), rank 0 saves it, both exit 143; resuming
    with 2 ranks ends exactly as the uninterrupted run."""
    save, logs_dir = tmp_path / "stopped", tmp_path / "log-stopped"
    popen = subprocess.Popen(
        fleet_command(logs_dir, tool, *args, f"runner.model_save_path={save}"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        log0 = logs_dir / "workerlog.0"
        deadline = time.time() + 120
        while popen.poll() is None and time.time() < deadline:
            if log0.exists() and "batch 4/16" in log0.read_text():
                break
            time.sleep(0.01)
        popen.send_signal(signal.SIGTERM)
        popen.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
    logs = [(logs_dir / f"workerlog.{r}").read_text() for r in (0, 1)]
    stops = [line for log in logs for line in log.splitlines() if line.startswith("stopped by")]
    assert (
        stops
        == [
            f"stopped by SIGTERM after epoch 0 batch 10/16 (step 10); saved {save}/steps/10; to "
            "continue, run the same command with -o runner.resume=True"
        ]
        * 2
    ), logs[0][-2000:] + logs[1][-2000:]
    assert "FatalError" not in logs[0] + logs[1]
    proc, logs = launch_fleet(
        tmp_path / "resumed" / f"log-{tool}",
        tool,
        *args,
        f"runner.model_save_path={save}",
        "runner.resume=True",
    )
    assert proc.returncode == 0, logs[0][-2000:]
    assert "resuming in epoch 0 after batch 10/16 (step 10)" in logs[0]
    assert_same_run(save, reference, last_epoch=0)


@pytest.mark.parametrize(
    "override, message",
    [
        ("runner.save_steps=-1", "runner.save_steps must be 0 (off) or more, got -1"),
        (
            "runner.keep_step_checkpoints=0",
            "runner.keep_step_checkpoints must be at least 1, got 0",
        ),
    ],
)
def test_checkpoint_keys_are_checked(tmp_path, capsys, override, message):
    code, _, err = train_in_process(capsys, override, f"runner.model_save_path={tmp_path}")
    assert (code, err) == (2, f"error: {message}\n")


def test_a_warm_started_run_resumes_from_its_own_checkpoint_not_the_initial_weights(
    tmp_path, capsys, monkeypatch
):
    args = common(tmp_path, "runner.epochs=1")
    init = tmp_path / "init"
    assert train_in_process(capsys, *args, f"runner.model_save_path={init}")[0] == 0
    warm = [*args, f"runner.model_init_path={init}"]
    ref, save = tmp_path / "ref", tmp_path / "run"
    assert train_in_process(capsys, *warm, f"runner.model_save_path={ref}")[0] == 0
    with monkeypatch.context() as m:
        signal_at_step(m, engines.DygraphEngine, 5, signal.SIGTERM)
        assert train_in_process(capsys, *warm, f"runner.model_save_path={save}")[0] == 143
    code, out, err = train_in_process(
        capsys, *warm, f"runner.model_save_path={save}", "runner.resume=True"
    )
    assert code == 0, err
    assert_same_run(save, ref, last_epoch=0)
