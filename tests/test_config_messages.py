"""A study file with several mistakes: every one on its own line, in the words the user wrote.

A misspelt key comes with the name it was meant to be, and a wrong backend, sampler, pruner or
parameter type with the names that exist, so one edit fixes the whole file.
"""

from __future__ import annotations

import pickle

import pytest
import yaml
from click.testing import CliRunner
from conftest import study_dict

from hpsearch.cli import main
from hpsearch.config import ConfigError, parse_study

PRUNERS = "none, median, percentile, successive_halving, hyperband, threshold, wilcoxon, patient"


def _lines(d: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_study(d, "s.yaml")
    return str(e.value).split("\n")


def test_three_typos_are_three_lines_each_naming_the_file_and_the_key(tmp_path):
    d = study_dict(tmp_path, "demo")
    d["n_trail"] = d.pop("n_trials")
    d["pruner"] = {"name": "medain"}
    d["trainer"]["learnin_rate"] = 1e-3
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(d), encoding="utf-8")

    r = CliRunner().invoke(main, ["run", str(path)])

    assert r.exit_code == 2, r.output
    assert sorted(r.stderr.splitlines()) == sorted([
        f"error: {path}: n_trail: unknown key; did you mean n_trials?",
        f"error: {path}: pruner.name: 'medain' is not one of {PRUNERS}; did you mean median?",
        f"error: {path}: trainer.learnin_rate: unknown key; did you mean learning_rate?",
    ])
    assert r.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


def test_several_problems_keep_their_lines_apart(tmp_path):
    d = study_dict(tmp_path, "demo", metric="F1", colour="blue")
    with pytest.raises(ConfigError) as e:
        parse_study(d, "s.yaml")
    assert e.value.lines == [
        "s.yaml: metric: 'F1' is not one of f1, macro_f1, weighted_f1, precision, recall, "
        "accuracy, loss, or f1:TYPE (one entity type's F1, e.g. f1:PER); did you mean f1?",
        "s.yaml: colour: unknown key",
    ]
    assert str(e.value) == "\n".join(e.value.lines)
    again = pickle.loads(pickle.dumps(e.value))
    assert type(again) is type(e.value) and again.lines == e.value.lines


def test_a_misspelt_key_is_not_also_reported_as_the_missing_field_it_meant(tmp_path):
    d = study_dict(tmp_path, "demo")
    d["n_trail"] = d.pop("n_trials")
    assert _lines(d) == ["s.yaml: n_trail: unknown key; did you mean n_trials?"]


def test_an_unknown_key_like_no_field_leaves_the_missing_field_reported(tmp_path):
    d = study_dict(tmp_path, "demo")
    d["count"] = d.pop("n_trials")
    assert _lines(d) == ["s.yaml: n_trials: required field is missing",
                         "s.yaml: count: unknown key"]


@pytest.mark.parametrize(
    "over, expected",
    [
        ({"pruner": "medain"},
         f"pruner.name: 'medain' is not one of {PRUNERS}; did you mean median?"),
        ({"pruner": {"name": "patient", "wrapped": {"name": "percentil"}}},
         "pruner.wrapped.name: 'percentil' is not one of none, median, percentile, "
         "successive_halving, hyperband, threshold, wilcoxon; did you mean percentile?"),
        ({"pruner": {"nmae": "median"}}, "pruner.nmae: unknown key; did you mean name?"),
        ({"backend": "bayse"}, "backend.name: 'bayse' is not one of optuna, bayes; "
                               "did you mean bayes?"),
        ({"backend": {"name": "skopt"}}, "backend.name: 'skopt' is not one of optuna, bayes"),
        ({"backend": {"name": "optuna", "sampler": "tp"}},
         "backend.sampler: 'tp' is not one of tpe, random, gp, cmaes, qmc; did you mean tpe?"),
        ({"backend": {"name": "bayes", "kapa": 2}},
         "backend.kapa: unknown key; did you mean kappa?"),
        ({"search_space": {"learning_rate": {"type": "flot", "low": 1e-4, "high": 1e-2}}},
         "search_space.learning_rate.type: 'flot' is not one of float, int, categorical; "
         "did you mean float?"),
        ({"search_space": {"learning_rate": {"tpye": "float", "low": 1e-4, "high": 1e-2}}},
         "search_space.learning_rate.tpye: unknown key; did you mean type?"),
        ({"search_space": {"learning_rate": {"low": 1e-4, "high": 1e-2}}},
         "search_space.learning_rate.type: required field is missing "
         "(one of float, int, categorical)"),
        ({"search_space": {"learnin_rate": {"type": "float", "low": 1e-4, "high": 1e-2}}},
         "; did you mean learning_rate?"),
        ({"pruner": {"name": "hyperband", "min_resource": 0}},
         "pruner.min_resource: Input should be greater than or equal to 1 or 'auto'"),
        ({"trainer": {"data_dir": "demo", "scrach": {}}},
         "trainer.scrach: unknown key; did you mean scratch?"),
    ],
)
def test_names_that_do_not_exist_are_said_in_plain_words(tmp_path, over, expected):
    lines = _lines(study_dict(tmp_path, "demo", **over))
    assert len(lines) == 1
    assert lines[0].startswith("s.yaml: ") and lines[0].endswith(expected)
    assert "tag" not in lines[0] and "discriminator" not in lines[0]


def test_a_trainer_checked_on_its_own_reports_every_problem(tmp_path):
    from pydantic import ValidationError

    from hpsearch.config import TrainerConfig, validation_problems

    with pytest.raises(ValidationError) as e:
        TrainerConfig.model_validate({"data_dir": "demo", "learnin_rate": 1e-3,
                                      "weight_decay": -1})
    assert validation_problems(e.value) == [
        "weight_decay: Input should be greater than or equal to 0",
        "learnin_rate: unknown key; did you mean learning_rate?",
    ]
