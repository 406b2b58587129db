"""A wrong study file is one clear line naming the field, exit code 2, and nothing written."""

from __future__ import annotations

import pytest
from conftest import hpsearch, study_dict, write_study

from hpsearch.config import ConfigError, load_study, parse_study


def _err(tmp_path, demo_dir, **over) -> str:
    with pytest.raises(ConfigError) as e:
        parse_study(study_dict(tmp_path, demo_dir, **over), "s.yaml")
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_unset_study_fields_take_their_defaults(tmp_path, demo_dir):
    cfg = parse_study(study_dict(tmp_path, demo_dir))
    assert cfg.direction == "maximize" and cfg.metric == "f1"
    assert cfg.pruner.name == "none" and cfg.backend.name == "optuna"
    assert cfg.storage_url == f"sqlite:///{tmp_path / 'out' / 'study.db'}"
    trainer = cfg.trainer_for({"learning_rate": 1e-3})
    assert trainer.learning_rate == 1e-3 and trainer.seed == 0


def test_backend_and_pruner_given_by_name_alone_get_their_defaults(tmp_path, demo_dir):
    cfg = parse_study(study_dict(tmp_path, demo_dir, backend="bayes", pruner="median"))
    assert cfg.backend.name == "bayes" and cfg.backend.acquisition == "ucb"
    assert cfg.pruner.name == "median"


@pytest.mark.parametrize(
    "over, expected",
    [
        ({"colour": "blue"}, "s.yaml: colour: unknown key"),
        ({"trainer": {"lr": 1}}, "s.yaml: trainer.lr: unknown key"),
        ({"backend": {"name": "bayes", "kapa": 2}}, "s.yaml: backend.kapa: unknown key"),
        (
            {"search_space": {"learning_rate": {"type": "float", "low": -1e-5, "high": 1e-2,
                                                "log": True}}},
            "s.yaml: search_space.learning_rate: low (-1e-05) must be > 0 when log: true",
        ),
        (
            {"search_space": {"weight_decay": {"type": "float", "low": 0.1, "high": 0.01}}},
            "s.yaml: search_space.weight_decay: low (0.1) must be < high (0.01)",
        ),
        (
            {"search_space": {"hidden_size": {"type": "int", "low": 1, "high": 4}}},
            "search_space.hidden_size: not a tunable trainer field",
        ),
        ({"n_trials": 0}, "s.yaml: n_trials: Input should be greater than or equal to 1"),
        (
            {"backend": {"name": "skopt"}},
            "s.yaml: backend.name: 'skopt' is not one of optuna, bayes",
        ),
    ],
)
def test_each_bad_field_is_one_error_line_naming_it(tmp_path, demo_dir, over, expected):
    assert expected in _err(tmp_path, demo_dir, **over)


def test_missing_required_field_is_one_error_line_naming_it(tmp_path, demo_dir):
    d = study_dict(tmp_path, demo_dir)
    del d["n_trials"]
    with pytest.raises(ConfigError, match=r"^s\.yaml: n_trials: required field is missing$"):
        parse_study(d, "s.yaml")


def test_missing_data_dir_is_a_config_error_naming_the_field(tmp_path):
    path = write_study(tmp_path, tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"trainer\.data_dir: directory '.*nowhere' does not"):
        load_study(path)


def test_invalid_yaml_names_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: x\nn_trials: [1, 2\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: line \d+: invalid YAML"):
        load_study(path)


def test_storage_password_comes_from_the_environment_and_is_redacted(tmp_path, demo_dir,
                                                                     monkeypatch):
    monkeypatch.setenv("PGPASS", "s3cret")
    cfg = parse_study(
        study_dict(tmp_path, demo_dir, storage="postgresql+psycopg://u:${PGPASS}@127.0.0.1/db")
    )
    assert cfg.storage_url == "postgresql+psycopg://u:s3cret@127.0.0.1/db"
    from hpsearch.storage import redact

    assert redact(cfg.storage_url) == "postgresql+psycopg://u:***@127.0.0.1/db"
    monkeypatch.delenv("PGPASS")
    with pytest.raises(ConfigError, match=r"\$\{PGPASS\} is not set"):
        parse_study(study_dict(tmp_path, demo_dir, storage="postgresql://u:${PGPASS}@h/db"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "over, needle",
    [
        ({"search_space": {"learning_rate": {"type": "float", "low": -1, "high": 1,
                                             "log": True}}}, "must be > 0 when log: true"),
        ({"trainer": {"learning_rat": 1e-3}}, "trainer.learning_rat: unknown key"),
    ],
)
def test_cli_bad_study_exit_2_nothing_written(tmp_path, demo_dir, over, needle):
    path = write_study(tmp_path, demo_dir, **over)
    r = hpsearch("run", str(path))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and str(path) in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_missing_data_dir_is_exit_2_and_writes_nothing(tmp_path):
    path = write_study(tmp_path, tmp_path / "no-data", file="s.yaml")
    r = hpsearch("run", str(path))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "trainer.data_dir" in r.stderr
    assert not (tmp_path / "out").exists()
