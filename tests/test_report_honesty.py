"""The report shows what the trials measured and nothing else, in a form a reader can take in.

A smoothed surface that covers the whole plane paints a value where no trial ran; Optuna's
default ticks and labels run into each other; a micro F1 hides the entity type a model misses;
and a report only its writer can open is no report for a team.
"""

from __future__ import annotations

import math
import os
import random
import re
import stat

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from views_helpers import TYPE_OFFSET, make_synthetic_study

from hpsearch.plots import figures, write_report
from hpsearch.plots.landscape import smooth_surface

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.fixture
def no_importances(monkeypatch):
    """fANOVA is the slow part of the views and none of these tests looks at it."""
    monkeypatch.setattr("hpsearch.plots.views._add_importances", lambda *a, **kw: None)


def section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert m, f"no section {sid}"
    return m.group(1)


def test_landscape_is_blank_where_no_trial_ran(tmp_path, no_importances):
    cfg, study = make_synthetic_study(tmp_path, 16, states="complete", lr_exp=(-3, -1),
                                      storage="journal")
    assert cfg.search_space["learning_rate"].low == 1e-5
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert min(t.params["learning_rate"] for t in done) > 1e-3
    fig = figures(study, cfg)["landscape"]
    contour = fig.data[0]
    gx, gy = np.asarray(contour.x), np.asarray(contour.y)
    z = np.asarray(contour.z, float)
    far = gx < 1e-4
    assert far.sum() >= 10
    assert np.isnan(z[:, far]).all(), "no value painted two decades away from every trial"
    assert np.isfinite(z).mean() > 0.25, "the sampled region still has a surface"
    assert "no completed trial nearby" in fig.layout.title.subtitle.text

    xr = [fig.layout.xaxis.range[0], fig.layout.xaxis.range[1]]
    yr = [fig.layout.yaxis.range[0], fig.layout.yaxis.range[1]]
    lrs, wds = [t.params["learning_rate"] for t in done], [t.params["weight_decay"] for t in done]
    _, _, full = smooth_surface(lrs, wds, [t.value for t in done], [10**v for v in xr],
                                [10**v for v in yr], True, True, radius=math.inf)
    assert np.isfinite(full).all()
    for lr, wd in zip(lrs, wds):
        i = int(np.abs(np.log10(gy) - math.log10(wd)).argmin())
        j = int(np.abs(np.log10(gx) - math.log10(lr)).argmin())
        assert z[i, j] == pytest.approx(full[i, j]), "a cell at a trial keeps its value"


def test_log_axes_label_each_decade_once(tmp_path, no_importances):
    cfg, study = make_synthetic_study(tmp_path, 12, states="complete", storage="journal")
    figs = figures(study, cfg)
    axes = [figs["landscape"].layout.xaxis, figs["landscape"].layout.yaxis]
    axes += list(figs["slice"].select_xaxes(selector={"type": "log"}))
    assert len(axes) == 4
    for ax in axes:
        assert ax.type == "log"
        assert ax.dtick == 1 and ax.exponentformat == "power", ax.title.text
        assert ax.minor.ticks == "outside" and not ax.minor.showgrid


LONG = {
    "per_device_train_batch_size": IntDistribution(8, 64),
    "gradient_accumulation_steps": IntDistribution(1, 8),
    "attention_probs_dropout_prob": FloatDistribution(0.0, 0.3),
    "label_smoothing_factor": FloatDistribution(0.0, 0.2),
    "hidden_dropout_prob": FloatDistribution(0.0, 0.3),
    "max_grad_norm": FloatDistribution(0.1, 5.0, log=True),
    "warmup_ratio": FloatDistribution(0.0, 0.3),
}


def _with_long_names(tmp_path, k: int):
    """The synthetic study's trials again, each with ``k`` more, long-named parameters."""
    cfg, study = make_synthetic_study(tmp_path, 8, states="complete", storage="journal")
    rng = random.Random(0)
    extra = dict(list(LONG.items())[:k])
    trials = []
    for t in study.get_trials():
        params, dists = dict(t.params), dict(t.distributions)
        for name, d in extra.items():
            int_param = isinstance(d, IntDistribution)
            params[name] = rng.randint(d.low, d.high) if int_param else rng.uniform(d.low, d.high)
            dists[name] = d
        trials.append(create_trial(value=t.value, params=params, distributions=dists))
    wide = optuna.create_study(direction="maximize")
    wide.add_trials(trials)
    return cfg, wide, ["f1", *sorted([*extra, "learning_rate", "weight_decay"])]


@pytest.mark.parametrize("k", [3, 7])
def test_parallel_coordinate_labels_do_not_overlap(tmp_path, k, no_importances):
    cfg, study, names = _with_long_names(tmp_path, k)
    fig = figures(study, cfg)["parallel"]
    ax = fig.layout.xaxis
    labels = list(ax.ticktext)
    assert [lab.replace("<br>", "") for lab in labels] == names, "whole names, none cut short"
    # Axes stand one unit apart over (n - 0.6) units of a plot area some 870 px wide in the
    # report; a character of 12 px text is about 7 px wide.
    spacing = 870 / (len(names) - 0.6)
    lines = [line for lab in labels for line in lab.split("<br>")]
    if not ax.tickangle:
        assert 7 * max(len(line) for line in lines) + 10 < spacing
        n_lines = max(lab.count("<br>") + 1 for lab in labels)
        assert fig.layout.margin.b >= 30 + 14 * n_lines
    else:
        assert abs(ax.tickangle) >= 30 and 16 / math.sin(math.radians(abs(ax.tickangle))) < spacing
        assert fig.layout.margin.b >= 0.5 * 7 * max(len(n) for n in names)
    assert ax.automargin


def test_report_gives_per_type_f1_of_the_best_and_of_every_trial(tmp_path):
    cfg, study = make_synthetic_study(tmp_path, 4, storage="journal")  # 3 complete, 1 pruned
    page = write_report(cfg).read_text(encoding="utf-8")
    best = study.best_trial
    per = best.user_attrs["best_scores"]["per_type"]
    summary = section(page, "summary")
    assert f"Best trial (#{best.number}) per entity type" in summary
    for typ, m in per.items():
        assert (f"<td>{typ}</td><td>{m['precision']:.4f}</td><td>{m['recall']:.4f}</td>"
                f"<td>{m['f1-score']:.4f}</td><td>{m['support']:.0f}</td>") in summary

    table = section(page, "trials")
    heads = re.findall(r"<th(?: [^>]*)?>(.*?)</th>", table)
    assert heads[:4] == ["#", "state", "f1", "F1 per type"]
    for t in study.get_trials():
        row = re.search(rf'<tr class="\w+"><td data-v="{t.number}">.*?</tr>', table).group(0)
        cell = re.findall(r'<td data-v="([^"]*)">([^<]*)</td>', row)[3]
        if t.state != TrialState.COMPLETE:
            assert cell == ("", "")
            continue
        f1s = {typ: m["f1-score"] for typ, m in t.user_attrs["best_scores"]["per_type"].items()}
        assert cell[1] == " ".join(f"{typ} {f1s[typ]:.2f}" for typ in sorted(f1s))
        assert float(cell[0]) == pytest.approx(min(f1s.values())), "sorts by the weakest type"
    assert min(TYPE_OFFSET.values()) < 0, "the types differ, so a wrong column shows"


def test_report_has_the_mode_of_any_file_the_user_writes(tmp_path):
    cfg, _ = make_synthetic_study(tmp_path, 3, storage="journal")
    old = os.umask(0o002)  # a shared group folder's umask: group may write too
    try:
        path = write_report(cfg)
        plain = path.parent / "plain.txt"
        with open(plain, "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == stat.S_IMODE(plain.stat().st_mode) == 0o664, oct(mode)


def test_a_pruned_trial_never_becomes_the_best_even_with_the_highest_last_value(tmp_path):
    """Pruned trials stopped early: their last report is not a finished trial's value, however
    high: `best` and the report's summary take the completed one."""
    import json

    from conftest import cli, write_study
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial
    from views_helpers import views_settings

    from hpsearch.plots import write_report

    cfg, study = make_synthetic_study(tmp_path, 3, states="complete")
    done_best = max(t.value for t in study.get_trials())
    dist = {"learning_rate": FloatDistribution(1e-5, 1e-1, log=True),
            "weight_decay": FloatDistribution(1e-4, 1e-1, log=True)}
    study.add_trial(create_trial(
        state=TrialState.PRUNED, params={"learning_rate": 1e-3, "weight_decay": 1e-2},
        distributions=dist, intermediate_values={100: 0.99}, value=0.99))
    assert max(t.value for t in study.get_trials() if t.value is not None) == 0.99

    study_file = write_study(tmp_path, file="views.yaml", **views_settings(tmp_path))
    r = cli("best", str(study_file), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["value"] == done_best
    page = write_report(cfg).read_text(encoding="utf-8")
    summary = page.split('<section id="summary">')[1].split("</section>")[0]
    assert "0.99" not in summary
