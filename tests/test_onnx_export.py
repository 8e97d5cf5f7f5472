"""The ONNX export (tools/export.py, paddle_rec_zoo.run.onnx_export): what paddle2onnx refused, the
ONNX model's interface, and ONNX Runtime's predictions equal to Paddle Inference's on the whole
bundled test file for every zoo model."""

import json
import os
import re
from pathlib import Path

import numpy as np
import paddle
import pytest
from conftest import ROOT, ZOO, zoo_config, zoo_module

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.run import engines, onnx_engine, onnx_export
from paddle_rec_zoo.run.evaluate import predict_dataset
from paddle_rec_zoo.run.inference_engine import InferenceEngine
from paddle_rec_zoo.run.model_loader import reader_class
from paddle_rec_zoo.run.runtime import static_mode
from paddle_rec_zoo.run.splits import load_dataset

# every model of the zoo, and ESMM's division variant, whose pctcvr Paddle Inference's inplace
# pass used to overwrite (InferenceEngine deletes that pass)
MODELS = [(m, ()) for m in ZOO] + [("esmm", ("hyper_parameters.variant=division",))]


def exported(model: str, overrides, folder) -> tuple:
    """A static engine of `model` with fresh seeded weights, its Paddle Inference model written
    into `folder` as a checkpoint's; returns (config, engine)."""
    cfg = zoo_config(model, *overrides)
    paddle.seed(7)
    engine = engines.StaticEngine(zoo_module(model, "static_model"), cfg, training=False)
    os.makedirs(folder, exist_ok=True)
    engine.export_inference(os.path.join(folder, engines.INFERENCE_PREFIX))
    return cfg, engine


def program_ops(model_file) -> list[str]:
    program = paddle.static.Program()
    paddle.base.core.deserialize_pir_program(str(model_file), program)
    return [op.name() for op in program.global_block().ops]


def test_the_exported_program_names_its_outputs_without_aliases(tmp_path):
    _, engine = exported("esmm", (), tmp_path)
    ops = program_ops(tmp_path / "inference.json")
    assert engines.ALIAS_OP not in ops and "pd_op.fetch" in ops
    config = paddle.inference.Config(str(tmp_path / "inference.json"), "")
    config.set_params_file(str(tmp_path / "inference.pdiparams"))
    config.disable_glog_info()
    predictor = paddle.inference.create_predictor(config)
    assert predictor.get_input_names() == ["ids"]
    assert predictor.get_output_names() == ["pctr", "pcvr", "pctcvr"]


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory):
    """{index of MODELS: (config, engine, folder)} with inference.onnx written by one child."""
    pytest.importorskip("paddle2onnx")
    root = tmp_path_factory.mktemp("onnx")
    made, jobs = {}, []
    for i, (model, overrides) in enumerate(MODELS):
        folder = str(root / str(i))
        cfg, engine = exported(model, overrides, folder)
        made[i] = (cfg, engine, folder)
        jobs.append(
            (os.path.join(folder, "inference"), os.path.join(folder, onnx_engine.ONNX_FILE))
        )
    onnx_export.convert_many(jobs)
    paddle.disable_static()
    return made


def test_the_onnx_model_has_the_paddle_inference_interface(onnx_models):
    onnx = pytest.importorskip("onnx")
    _, engine, folder = onnx_models[0]
    model = onnx.load(os.path.join(folder, onnx_engine.ONNX_FILE))
    (ids,) = model.graph.input
    assert ids.name == "ids" and ids.type.tensor_type.elem_type == onnx.TensorProto.INT64
    dims = ids.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == engine.spec.inputs[0].width
    assert [o.name for o in model.graph.output] == ["pctr", "pcvr", "pctcvr"]
    for out in model.graph.output:
        assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.opset_import[0].version == onnx_export.OPSET


@pytest.mark.parametrize("index", range(len(MODELS)), ids=[" ".join((m, *o)) for m, o in MODELS])
def test_onnx_runtime_equals_paddle_inference_on_the_test_file(onnx_models, index):
    pytest.importorskip("onnxruntime")
    cfg, engine, folder = onnx_models[index]
    reader = reader_class(cfg, "infer")(cfg)
    dataset = load_dataset(cfg, reader, "test")
    predicted = []
    for predictor in (InferenceEngine, onnx_engine.OnnxEngine):
        p = predictor(engine.spec, cfg)
        p.load(folder)
        _, arrays = predict_dataset(p, reader, dataset, cfg.runner.infer_batch_size)
        predicted.append(arrays)
    paddle_inference, onnx_runtime = predicted
    assert len(onnx_runtime["pctr"]) == len(dataset) == 1000
    for name in engine.spec.outputs:
        assert np.abs(onnx_runtime[name] - paddle_inference[name]).max() <= 1e-5, name
    assert np.abs(onnx_runtime["pctr"] - onnx_runtime["pcvr"]).max() > 1e-3  # not one output


def test_the_clients_of_doc_inference_run_and_agree(onnx_models, monkeypatch):
    pytest.importorskip("onnxruntime")
    text = Path(ROOT, "doc", "inference.md").read_text()
    setup, *clients = re.findall(r"```python\n(.*?)```", text[text.index("## Clients") :], re.S)
    assert '"output_model_esmm/7"' in setup and len(clients) == 2
    _, _, folder = onnx_models[0]  # ESMM with config.yaml's hyper_parameters
    monkeypatch.chdir(ROOT)
    pcvr = []
    for client in clients:
        scope = {}
        exec(setup.replace('"output_model_esmm/7"', repr(folder)), scope)
        exec(client, scope)
        assert scope["pcvr"].shape == (1000, 1)  # the bundled test file, one batch
        pcvr.append(scope["pcvr"])
    assert np.abs(pcvr[0] - pcvr[1]).max() <= 1e-5


@pytest.mark.slow  # two paddle2onnx processes: about 8 s
def test_paddle2onnx_aborts_on_output_aliases_and_convert_drops_them(tmp_path, monkeypatch):
    """The refusal of the issue, reproduced: a program exported as before (outputs named by
    builtin.shadow_output) kills paddle2onnx's process; `convert` takes a corrected copy."""
    pytest.importorskip("paddle2onnx")
    _, engine = exported("esmm", (), tmp_path / "fresh")
    prefix = str(tmp_path / "inference")
    with static_mode():  # as the engine exported before: the program as built
        paddle.static.save_inference_model(
            prefix,
            [engine.infer_feeds["ids"]],
            [engine.infer_fetch[n] for n in engine.output_names],
            engine.exe,
            program=engine.infer_program,
            skip_prune_program=True,
        )
    before = (tmp_path / "inference.json").read_bytes()
    assert engines.ALIAS_OP in program_ops(prefix + ".json")
    with monkeypatch.context() as m:  # convert as it was: the program as saved
        m.setattr(onnx_export, "drop_output_aliases", lambda path: False)
        with pytest.raises(UserError) as failed:
            onnx_export.convert(prefix, prefix + ".onnx")
    # SIGABRT: no Python exception to catch in-process, hence the child process
    assert "(signal 6): " in str(failed.value)
    assert "Due to the unsupported operators, the conversion is aborted" in str(failed.value)
    assert "\n" not in str(failed.value)
    onnx_export.convert(prefix, prefix + ".onnx")
    assert os.path.getsize(prefix + ".onnx") > 1000
    assert (tmp_path / "inference.json").read_bytes() == before  # the checkpoint's file kept


def test_a_file_that_is_not_a_program_is_one_user_error(tmp_path):
    pytest.importorskip("paddle2onnx")
    (tmp_path / "inference.json").write_text(json.dumps({"not": "a program"}))
    with pytest.raises(UserError, match=r"inference\.json: not a Paddle program \("):
        onnx_export.convert(str(tmp_path / "inference"), str(tmp_path / onnx_engine.ONNX_FILE))
    assert not (tmp_path / onnx_engine.ONNX_FILE).exists()


def test_missing_optional_packages_are_named_in_one_line(tmp_path, monkeypatch):
    real = onnx_engine.importlib.util.find_spec
    monkeypatch.setattr(
        onnx_engine.importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("paddle2onnx", "onnxruntime") else real(name, *a),
    )
    with pytest.raises(UserError, match="needs paddle2onnx, which is not installed: pip install"):
        onnx_export.convert(str(tmp_path / "inference"), str(tmp_path / "x.onnx"))
    (tmp_path / onnx_engine.ONNX_FILE).write_bytes(b"")
    cfg = zoo_config("esmm")
    spec = zoo_module("esmm", "net").ESMMLayer.spec(cfg.hyper_parameters)
    with pytest.raises(UserError, match="runner.use_onnx needs onnxruntime, which is not"):
        onnx_engine.OnnxEngine(spec, cfg).load(str(tmp_path))


def test_onnx_engine_says_how_to_write_a_missing_model(tmp_path):
    cfg = zoo_config("esmm")
    spec = zoo_module("esmm", "net").ESMMLayer.spec(cfg.hyper_parameters)
    with pytest.raises(UserError, match=r"no inference\.onnx; write it with python tools/export"):
        onnx_engine.OnnxEngine(spec, cfg).load(str(tmp_path))


def test_use_inference_and_use_onnx_exclude_each_other():
    with pytest.raises(UserError, match="choose one predictor"):
        zoo_config("esmm", "runner.use_inference=True", "runner.use_onnx=True")


@pytest.mark.slow  # three tool processes on the bundled sample: about 20 s
def test_export_tool_on_a_dygraph_run_then_static_infer_use_onnx(tmp_path):
    """The issue's commands: a dygraph run has no Paddle Inference model; export.py writes it and
    inference.onnx into the newest epoch, and static_infer.py evaluates the ONNX model with the
    metrics and predictions of the static engine on the same checkpoint."""
    pytest.importorskip("paddle2onnx")
    pytest.importorskip("onnxruntime")
    from conftest import ESMM_CONFIG, run_tool

    run = tmp_path / "dy"
    common = [
        f"runner.cache_dir={tmp_path / 'cache'}",
        "runner.epochs=2",
        "runner.infer_end_epoch=2",
    ]
    train = run_tool("trainer", "-m", ESMM_CONFIG, "-o", *common, f"runner.model_save_path={run}")
    assert train.returncode == 0, train.stderr
    assert not (run / "1" / "inference.json").exists()
    done = run_tool("export", "-m", ESMM_CONFIG, "-o", f"runner.infer_load_path={run}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and not done.stderr.strip(), done.stderr
    for name in ("inference.json", "inference.pdiparams", onnx_engine.ONNX_FILE):
        assert (run / "1" / name).exists() and not (run / "0" / name).exists()
    assert "checked: ONNX Runtime = Paddle Inference on 512 random rows" in done.stdout
    results = {}
    for key, extra in (("static", []), ("onnx", ["runner.use_onnx=True"])):
        proc = run_tool(
            "static_infer",
            *("-m", ESMM_CONFIG, "-o", *common, f"runner.infer_load_path={run}"),
            *("runner.infer_start_epoch=1", f"runner.save_predictions={tmp_path / key}.csv"),
            *extra,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        line = next(x for x in proc.stdout.splitlines() if "epoch 1 [" in x)
        assert f"[{key}]" in line
        results[key] = (
            line.split("]: ")[1].split(" (")[0],
            np.loadtxt(tmp_path / f"{key}.csv", delimiter=",", skiprows=1),
        )
    assert results["onnx"][0] == results["static"][0]  # the same metrics, as printed
    np.testing.assert_allclose(results["onnx"][1], results["static"][1], atol=1e-5)


def test_export_picks_the_newest_epoch_the_asked_one_or_the_named_folder(tmp_path, monkeypatch):
    """Which checkpoint tools/export.py converts, and the Paddle Inference model it writes for a
    checkpoint without one (a dygraph run's); paddle2onnx and the check are stubbed out."""
    from paddle_rec_zoo.run import checkpoint

    cfg, engine = exported("esmm", (), tmp_path / "unused")
    run = tmp_path / "run"
    for epoch in (0, 1, 2):
        checkpoint.save(str(run), epoch, engine.save, {"epoch": epoch, "step": epoch})
    (run / "2" / "inference.json").unlink()  # as the dygraph trainer leaves it
    converted = []
    monkeypatch.setattr(onnx_export, "convert", lambda prefix, path: converted.append(path))
    monkeypatch.setattr(onnx_export, "max_difference", lambda *a, **k: 0.0)
    monkeypatch.setattr(onnx_export, "require", lambda *a: None)  # runs without paddle2onnx
    adapter = zoo_module("esmm", "static_model")
    for load_path, epoch, expected in (
        (run, None, run / "2"),
        (run, 0, run / "0"),
        (run / "1", None, run / "1"),
    ):
        cfg.runner.infer_load_path = str(load_path)
        onnx_export.export(cfg, adapter, ("click", "buy"), epoch)
        assert converted[-1] == str(expected / onnx_engine.ONNX_FILE)
    assert engines.ALIAS_OP not in program_ops(run / "2" / "inference.json")
    cfg.runner.infer_load_path = str(run)
    with pytest.raises(UserError, match=r"no checkpoint for epoch 5 in .*\(it has epochs 0\.\.2\)"):
        onnx_export.export(cfg, adapter, ("click", "buy"), 5)
    cfg.runner.infer_load_path = str(tmp_path / "empty")
    with pytest.raises(UserError, match="empty holds no epoch checkpoint"):
        onnx_export.export(cfg, adapter, ("click", "buy"), None)
