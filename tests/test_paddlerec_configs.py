"""PaddleRec's own ESMM configs (tests/fixtures/paddlerec/, verbatim) run with our four tools.

A user coming from PaddleRec copies its config.yaml into our model folder. The one edit it may
need is pointing the reader keys at our reader; every other PaddleRec key is honoured or
accepted with one line saying why it has no effect.
"""

import os
import shutil

import pytest
from conftest import ESMM_DIR, FIXTURES, cuda_build, esmm_config

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.run import paddlerec_keys
from paddle_rec_zoo.run.cli import main as cli_main

PADDLEREC = os.path.join(FIXTURES, "paddlerec")
CUDA = cuda_build()  # use_gpu: True runs on the GPU there, with no message
CONFIGS = ["paddlerec_esmm_config.yaml", "paddlerec_esmm_config_bigdata.yaml"]


def model_folder(tmp_path) -> str:
    """A copy of our ESMM folder (code and bundled data) with PaddleRec's configs beside ours."""
    dst = tmp_path / "esmm"
    shutil.copytree(ESMM_DIR, dst, ignore=shutil.ignore_patterns("output*", "__pycache__"))
    for name in CONFIGS:
        shutil.copy(os.path.join(PADDLEREC, name), dst / name)
    return str(dst)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_paddlerec_key_is_honoured_or_explained(name):
    cfg = esmm_config(path=os.path.join(PADDLEREC, name))
    r = cfg.runner
    assert r.infer_reader_path == "esmm_reader" and r.use_inference is False
    assert cfg.hyper_parameters.optimizer.class_ == "adam"
    assert cfg.hyper_parameters.sparse_feature_number == 737946
    noted = {note.split(" ")[0] for note in cfg.notes}
    expected = {
        "runner.use_auc",
        "runner.auc_num",
        "runner.save_inference_feed_varnames",
        "runner.save_inference_fetch_varnames",
        "hyper_parameters.optimizer.strategy",
    }
    if name == "paddlerec_esmm_config.yaml":  # its test_data_dir is data/train
        expected.add("runner.test_data_dir")
    assert noted == expected
    assert all("has no effect here: " in n for n in cfg.notes if "PaddleRec" in n)


@pytest.mark.parametrize(
    "override, message",
    [
        ("hyper_parameters.num_field=22", "hyper_parameters.num_field is 22 but "),
        ("runner.use_aux=True", "unknown config key runner.use_aux; did you mean runner.use_gpu?"),
        ("runner.epoch=1", "did you mean runner.epochs?"),
        ("hyper_parameters.optimizer.stratgy=async", "unknown config key hyper_parameters.opt"),
    ],
)
def test_num_field_is_checked_and_our_own_typos_still_fail(override, message):
    with pytest.raises(UserError, match=None) as err:
        esmm_config(override, path=os.path.join(PADDLEREC, CONFIGS[0]))
    assert message in str(err.value)


def test_known_paddlerec_keys_never_get_a_did_you_mean():
    for key in paddlerec_keys.KNOWN:
        section, _, rest = key.partition(".")
        value = "async" if rest.endswith("strategy") else 23 if rest == "num_field" else "x"
        cfg = esmm_config(f"{key}={value}")
        assert cfg is not None


def test_reader_keys_error_says_it_is_the_one_edit(tmp_path, capsys):
    folder = model_folder(tmp_path)
    code = cli_main("trainer", ["-m", os.path.join(folder, CONFIGS[0])])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "runner.train_reader_path and runner.infer_reader_path" in err
    assert "set runner.train_reader_path: ali_ccp, runner.infer_reader_path: ali_ccp" in err
    assert "needs only this edit" in err


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_all_four_tools_run_a_paddlerec_config_with_only_the_reader_edit(tmp_path, capsys, name):
    folder = model_folder(tmp_path)
    path = os.path.join(folder, name)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:  # the one edit
        f.write(text.replace('"esmm_reader"', '"ali_ccp"'))
    # Speed and place only: one epoch of bigger batches; big data read from the bundled sample
    fast = [
        "runner.epochs=1",
        "runner.infer_end_epoch=1",
        "runner.train_batch_size=1000",
        "runner.infer_batch_size=1000",
        f"runner.cache_dir={tmp_path / 'cache'}",
    ]
    if "bigdata" in name:
        fast += ["runner.train_data_dir=" + os.path.join(folder, "data", "train")]
        fast += ["runner.test_data_dir=" + os.path.join(folder, "data", "test")]
    results = {}
    for tool, save in [
        ("trainer", "dy"),
        ("infer", "dy"),
        ("static_trainer", "st"),
        ("static_infer", "st"),
    ]:
        where = [f"runner.model_save_path={tmp_path / save}"]
        where += [f"runner.infer_load_path={tmp_path / save}"]
        code = cli_main(tool, ["-m", path, "-o", *fast, *where])
        out = capsys.readouterr()
        assert code == 0, out.err
        assert "Traceback" not in out.err
        results[tool] = out.out
    assert "runner.use_auc (a PaddleRec key) has no effect here" in results["trainer"]
    assert "epoch 0 [dygraph]: auc_ctr" in results["infer"]
    assert "epoch 0 [static]: auc_ctr" in results["static_infer"]
    if "bigdata" in name and not CUDA:  # use_gpu: True on a CPU build
        assert "runner.use_gpu is set but this Paddle build has no CUDA" in results["trainer"]
