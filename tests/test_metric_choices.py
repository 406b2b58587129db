"""What a study can optimise and how entities are scored: micro, macro, weighted, one type's
F1, and seqeval's strict IOB2 mode."""

from __future__ import annotations

import pytest
from conftest import cli, study_dict, trials_of, write_study

from hpsearch.config import ConfigError, parse_study
from hpsearch.trainer.metrics import format_report, ner_scores

GOLD = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O"]]
# The person opens with I-: the default mode (like conlleval) reads it as B-, strict does not.
PRED = [["I-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O"]]


def test_strict_iob2_misses_an_entity_opened_by_i_where_the_default_mode_finds_it():
    default, strict = ner_scores(GOLD, PRED), ner_scores(GOLD, PRED, "strict")
    assert default["f1"] == 1.0 and default["f1:PER"] == 1.0
    assert strict["f1:PER"] == 0.0 and strict["f1"] < 1.0
    assert strict["f1:LOC"] == strict["f1:ORG"] == 1.0


def test_scores_carry_macro_weighted_and_each_types_f1_and_the_report_prints_them():
    pred = [["B-PER", "I-PER", "O", "O"], ["O", "B-ORG", "I-ORG", "O"]]  # LOC missed
    s = ner_scores(GOLD, pred)
    assert s["f1:LOC"] == 0.0 and s["f1:PER"] == s["f1:ORG"] == 1.0
    assert s["macro_f1"] == pytest.approx(2 / 3)
    assert s["weighted_f1"] == pytest.approx(2 / 3)  # one entity of each type
    assert s["f1"] == pytest.approx(0.8)  # 2 of 3 found, both right
    report = format_report(s)
    assert "macro avg" in report and "weighted avg" in report
    assert report.splitlines()[-3].split()[-1] == "3"  # micro avg support: 3 entities


@pytest.mark.parametrize("metric", ["f1", "macro_f1", "weighted_f1", "f1:PER", "loss"])
def test_study_files_take_the_metrics_users_optimise(tmp_path, metric):
    assert parse_study(study_dict(tmp_path, tmp_path, metric=metric)).metric == metric


@pytest.mark.parametrize("metric", ["f2", "f1:", "macro", "f1:PER LOC"])
def test_a_metric_that_is_none_of_them_is_one_error_line(tmp_path, metric):
    with pytest.raises(ConfigError, match="metric"):
        parse_study(study_dict(tmp_path, tmp_path, metric=metric))


def test_a_type_the_data_does_not_have_is_refused_before_anything_is_written(
        tmp_path, demo_dir):
    from hpsearch.study import start_study

    cfg = parse_study(study_dict(tmp_path, demo_dir, metric="f1:GPE"))
    with pytest.raises(ConfigError, match="no entity type 'GPE'.*PER"):
        start_study(cfg)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_study_on_one_types_f1_picks_the_trial_best_at_that_type(tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir, n_trials=3, metric="f1:PER",
                       trainer={"seqeval_mode": "strict"})
    r = cli("run", str(path))
    assert r.exit_code == 0, r.stderr
    trials = trials_of(path)
    per = {t.number: t.user_attrs["best_scores"]["per_type"]["PER"]["f1-score"] for t in trials}
    assert {t.number: t.value for t in trials} == per
    best = max(per, key=per.get)
    assert f"best trial #{best}: f1:PER={per[best]:.4f}" in r.stdout
