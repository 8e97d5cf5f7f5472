import os

import pytest
from conftest import ESMM_CONFIG, esmm_config

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.run.config import parse_overrides, yaml_load


def test_defaults_and_paths_relative_to_config_file():
    cfg = esmm_config()
    model_dir = os.path.dirname(ESMM_CONFIG)
    assert cfg.runner.train_data_dir == os.path.join(model_dir, "data", "train")
    assert cfg.runner.test_data_dir == os.path.join(model_dir, "data", "test")
    assert "test" in cfg.runner.test_data_dir and "train" not in os.path.basename(
        cfg.runner.test_data_dir
    )
    assert cfg.hyper_parameters.ctr_fc_sizes == [256, 64]
    assert cfg.hyper_parameters.optimizer.class_ == "Adam"
    assert len(cfg.hyper_parameters.fields) == 23


def test_overrides_are_yaml_typed_lists_and_nested():
    cfg = esmm_config(
        "runner.epochs=2",
        "hyper_parameters.ctr_fc_sizes=[128,32]",
        "hyper_parameters.optimizer.learning_rate=1e-2",
        "runner.use_gpu=True",
    )
    assert cfg.runner.epochs == 2
    assert cfg.hyper_parameters.ctr_fc_sizes == [128, 32]
    assert cfg.hyper_parameters.optimizer.learning_rate == pytest.approx(0.01)
    assert cfg.runner.use_gpu is True


def test_override_paths_are_relative_to_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = esmm_config("runner.model_save_path=out", "runner.save_predictions=p.csv")
    assert cfg.runner.model_save_path == str(tmp_path / "out")
    assert cfg.runner.save_predictions == str(tmp_path / "p.csv")
    assert cfg.runner.infer_load_path == str(tmp_path / "out")


@pytest.mark.parametrize(
    "override, message",
    [
        ("runner.epoch=2", "unknown config key runner.epoch; did you mean runner.epochs?"),
        (
            "hyper_parameters.ctr_fc_size=[1]",
            "did you mean hyper_parameters.ctr_fc_sizes?",
        ),
        ("hyper_parameters.optimizer.lr=1", "hyper_parameters.optimizer.lr"),
        ("runer.epochs=1", "did you mean runner?"),
        ("runner.epochs=two", "runner.epochs: expected an integer, got 'two'"),
        ("hyper_parameters.ctr_fc_sizes=5", "expected a list"),
        ("runner.use_gpu=maybe", "expected true or false"),
        ("hyper_parameters.optimizer.class=Adamax", "unknown optimizer 'Adamax'"),
        ("epochs=3", "name the section too"),
        ("runner.train_batch_size=0", "runner.train_batch_size must be at least 1, got 0"),
        ("runner.epochs=-1", "runner.epochs must be at least 1, got -1"),
        ("runner.inference_cpu_threads=-2", "must be 0 (all cores) or more, got -2"),
    ],
)
def test_bad_keys_and_values_are_one_line_errors(override, message):
    with pytest.raises(UserError) as err:
        esmm_config(override)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_field_names_with_underscores_stay_strings():
    assert yaml_load("[101, 109_14, 1_000]") == [101, "109_14", "1_000"]
    cfg = esmm_config("hyper_parameters.fields=[101,109_14]")
    assert cfg.hyper_parameters.fields == ["101", "109_14"]


def test_parse_overrides_nests_and_keeps_strings():
    assert parse_overrides(["a.b.c=1", "a.b.d=x y", "a.e=[1, 2]"]) == {
        "a": {"b": {"c": 1, "d": "x y"}, "e": [1, 2]}
    }


def test_base_inheritance(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {ESMM_CONFIG}\nrunner:\n  epochs: 7\n  train_data_dir: mine\n")
    cfg = esmm_config(path=str(child))
    assert cfg.runner.epochs == 7
    assert cfg.runner.train_data_dir == str(tmp_path / "mine")  # relative to child.yaml
    assert cfg.runner.test_data_dir.endswith(os.path.join("esmm", "data", "test"))  # from base
    assert cfg.hyper_parameters.sparse_feature_dim == 12


def test_bigdata_config_only_states_differences():
    path = os.path.join(os.path.dirname(ESMM_CONFIG), "config_bigdata.yaml")
    cfg = esmm_config(path=path)
    assert cfg.runner.train_data_dir.endswith(os.path.join("datasets", "ali-ccp", "train_data"))
    assert cfg.runner.test_data_dir.endswith(os.path.join("datasets", "ali-ccp", "test_data"))
    assert cfg.runner.train_batch_size == 512  # the tuned recipe (doc/model.md)
    assert cfg.hyper_parameters.ctr_fc_sizes == [256, 64]


def test_base_takes_a_list_merged_in_order(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.yaml").write_text("runner:\n  epochs: 3\n  train_data_dir: a\n")
    (tmp_path / "b.yaml").write_text("runner:\n  epochs: 4\n  print_interval: 9\n")
    child = tmp_path / "child.yaml"
    child.write_text(f"base: [{ESMM_CONFIG}, sub/a.yaml, b.yaml]\nrunner:\n  print_interval: 5\n")
    cfg = esmm_config(path=str(child))
    assert cfg.runner.epochs == 4  # b over a over the ESMM config
    assert cfg.runner.print_interval == 5  # the file itself over its bases
    assert cfg.runner.train_data_dir == str(tmp_path / "sub" / "a")  # relative to a.yaml
    for bad in ("[]", "[1]", "{x: 1}"):
        child.write_text(f"base: {bad}\n")
        with pytest.raises(UserError, match="base: a config file, or a list"):
            esmm_config(path=str(child))


def test_the_zoo_shares_one_full_data_recipe():
    """Every model's config_bigdata.yaml is its config.yaml plus ../bigdata.yaml plus its own
    save path: the recipe is stated once."""
    from conftest import ZOO, model_dir, zoo_config

    recipes = set()
    for model in ZOO:
        with open(os.path.join(model_dir(model), "config_bigdata.yaml")) as f:
            own = yaml_load(f)
        assert own["base"] == ["config.yaml", "../bigdata.yaml"]
        assert own["runner"] == {"model_save_path": f"output_model_{model}_all"}
        cfg = zoo_config(model, config="config_bigdata.yaml")
        r, hp = cfg.runner, cfg.hyper_parameters
        recipes.add((r.epochs, r.train_batch_size, r.train_data_dir, repr(hp.optimizer)))
    assert len(recipes) == 1


def test_invalid_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("runner:\n  epochs: [1,\n")
    with pytest.raises(UserError) as err:
        esmm_config(path=str(bad))
    assert str(bad) in str(err.value) and "not valid YAML" in str(err.value)
