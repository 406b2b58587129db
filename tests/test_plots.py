"""The HTML report and the figures: every study shape a user can have, and the speed at 500."""

from __future__ import annotations

import json
import re
import sys
import time

import optuna
import plotly.graph_objects as go
import pytest
from conftest import study_config, study_dict, write_study
from plotly.offline import get_plotlyjs
from views_helpers import make_synthetic_study, views_settings

from hpsearch import plots
from hpsearch.config import ConfigError, parse_study
from hpsearch.opening import open_study
from hpsearch.plots import ExportError, figures, write_report

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

PLOT_SECTIONS = ("history", "learning-curves", "landscape", "parallel", "slice", "importances")


def section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert m, f"no section {sid}"
    return m.group(1)


def test_mixed_study_has_every_section_and_plot(tmp_path):
    cfg, study = make_synthetic_study(tmp_path, 16)
    path = write_report(cfg)
    assert path == cfg.out / "report.html"
    page = path.read_text(encoding="utf-8")
    for sid, _ in plots.SECTIONS:
        assert f'<section id="{sid}">' in page
    for sid in PLOT_SECTIONS:
        assert f'id="plot-{sid}"' in section(page, sid)
    summary = section(page, "summary")
    for text in ("views", "optuna", "median", "f1, maximize", "10 complete", "4 pruned",
                 "2 fail", "compute time", "per trial", "best params"):
        assert text in summary
    table = section(page, "trials")
    assert table.count("<tr class=") == 16
    assert "oom; OutOfMemoryError" in table and "continues #2" in table
    assert "pruned at step 100" in table
    assert not list(path.parent.glob(".report.html.*")), "the temp file was renamed away"


def test_page_is_self_contained_with_plotly_js_once(tmp_path):
    cfg, _ = make_synthetic_study(tmp_path, 8)
    page = write_report(cfg).read_text(encoding="utf-8")
    assert page.count(get_plotlyjs()[:300]) == 1
    assert page.count("Plotly.newPlot(") == len(PLOT_SECTIONS)
    assert not re.search(r'<script[^>]+src=|<link[^>]+href="http', page), "nothing from the net"
    assert "addEventListener('click'" in page, "the trial table sorts on a header click"


def test_no_trials_writes_a_summary_that_says_so(tmp_path):
    cfg = study_config(tmp_path, **views_settings(tmp_path))
    open_study(cfg, create=True)
    out = tmp_path / "elsewhere" / "r.html"
    assert write_report(cfg, out) == out
    page = out.read_text(encoding="utf-8")
    assert "No completed trials yet" in section(page, "summary")
    assert "Plotly.newPlot(" not in page and len(page) < 50_000, "no figures, no plotly.js"
    assert "No trial has reported intermediate values" in section(page, "learning-curves")
    assert "0 (n_trials 10)" in page


@pytest.mark.parametrize("states", ["complete", "mixed"])
def test_a_single_trial_report_explains_the_missing_importances_and_landscape(tmp_path, states):
    cfg, study = make_synthetic_study(tmp_path, 1, states=states)
    page = write_report(cfg).read_text(encoding="utf-8")
    assert "best params" in section(page, "summary")
    assert "Importances need at least 4 completed trials" in section(page, "importances")
    assert "only the samples are shown" in section(page, "landscape")
    assert set(figures(study, cfg)) == {"history", "learning-curves", "landscape", "parallel",
                                        "slice"}


def test_only_pruned_trials_draw_learning_curves_and_nothing_else(tmp_path):
    cfg, study = make_synthetic_study(tmp_path, 5, states="pruned")
    page = write_report(cfg).read_text(encoding="utf-8")
    assert "No completed trials yet" in section(page, "summary")
    assert 'id="plot-learning-curves"' in page
    for sid in ("history", "landscape", "parallel", "slice", "importances"):
        assert "No completed trial yet" in section(page, sid)
    assert list(figures(study, cfg)) == ["learning-curves"]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_running_trial_is_listed(tmp_path):
    cfg, study = make_synthetic_study(tmp_path, 4, states="complete")
    study.ask()
    table = section(write_report(cfg).read_text(encoding="utf-8"), "trials")
    assert '<tr class="running">' in table


def test_learning_curves_tell_pruned_trials_apart(tmp_path):
    cfg, study = make_synthetic_study(tmp_path, 12)
    fig = figures(study, cfg)["learning-curves"]
    by_name = {t.name: t for t in fig.data}
    assert by_name["completed"].line.dash is None
    assert by_name["pruned"].line.dash == "dash" and by_name["pruned"].line.color == "#d62728"
    assert by_name["pruned here"].marker.symbol == "x"
    assert any(name.startswith("best (trial") for name in by_name)
    assert fig.layout.showlegend is not False


def test_landscape_is_log_lr_by_wd_coloured_by_metric(tmp_path):
    cfg, study = make_synthetic_study(tmp_path, 12)
    fig = figures(study, cfg)["landscape"]
    assert fig.layout.xaxis.title.text == "learning_rate" and fig.layout.xaxis.type == "log"
    assert fig.layout.yaxis.title.text == "weight_decay" and fig.layout.yaxis.type == "log"
    contour, completed = fig.data[0], fig.data[1]
    assert contour.type == "contour" and contour.z.shape == (plots.LANDSCAPE_GRID,) * 2
    assert completed.marker.coloraxis == contour.coloraxis == "coloraxis"
    assert {t.name for t in fig.data} == {"smoothed", "completed", "pruned"}


def test_landscape_falls_back_to_the_first_two_float_params(tmp_path):
    d = study_dict(tmp_path, **views_settings(tmp_path))
    d["search_space"] = {
        "max_epochs": {"type": "int", "low": 1, "high": 5},
        "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.3},
    }
    cfg = parse_study(d)
    assert plots.landscape_axes(cfg) == ("learning_rate", "warmup_ratio")
    study = open_study(cfg, create=True)
    study.optimize(
        lambda t: t.suggest_float("learning_rate", 1e-5, 1e-2, log=True)
        * t.suggest_float("warmup_ratio", 0.0, 0.3) + t.suggest_int("max_epochs", 1, 5),
        n_trials=6,
    )
    fig = figures(study, cfg)["landscape"]
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "linear"
    d["search_space"] = {"max_epochs": d["search_space"]["max_epochs"],
                         "warmup_ratio": d["search_space"]["warmup_ratio"]}
    assert plots.landscape_axes(parse_study(d)) is None


def test_importances_need_two_varied_params(tmp_path):
    cfg = study_config(tmp_path, **views_settings(tmp_path))
    study = open_study(cfg, create=True)
    for i in range(6):  # weight_decay never varies
        study.enqueue_trial({"learning_rate": 10 ** (-5 + i / 2), "weight_decay": 1e-3})
    study.optimize(lambda t: t.suggest_float("learning_rate", 1e-5, 1e-1, log=True)
                   + t.suggest_float("weight_decay", 1e-4, 1e-1, log=True), n_trials=6)
    page = write_report(cfg).read_text(encoding="utf-8")
    assert "2 varied parameters (have 6 completed, 1 varied)" in section(page, "importances")


def test_importance_failure_becomes_a_note(tmp_path, monkeypatch):
    cfg, study = make_synthetic_study(tmp_path, 10, states="complete")

    def boom(*a, **kw):
        raise RuntimeError("degenerate sample")

    monkeypatch.setattr(optuna.visualization, "plot_param_importances", boom)
    page = write_report(cfg).read_text(encoding="utf-8")
    assert "could not be computed: degenerate sample" in section(page, "importances")
    assert "importances" not in figures(study, cfg)


def test_figures_gives_every_plot_with_a_title_for_a_notebook(tmp_path):
    cfg, study = make_synthetic_study(tmp_path, 10)
    figs = figures(study, cfg)
    assert list(figs) == list(PLOT_SECTIONS)
    assert all(isinstance(f, go.Figure) and f.layout.title.text for f in figs.values())


def test_missing_study_is_a_config_error(tmp_path):
    cfg = study_config(tmp_path, **views_settings(tmp_path, name="never-ran"))
    with pytest.raises(ConfigError, match="no study named 'never-ran'"):
        write_report(cfg)


@pytest.mark.slow
def test_500_trials_under_five_seconds(tmp_path):
    cfg, _ = make_synthetic_study(tmp_path, 500, storage="journal")
    # CPU seconds of this process: what the report costs, whatever else the machine runs.
    t0, c0 = time.perf_counter(), time.process_time()
    page = write_report(cfg).read_text(encoding="utf-8")
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert cpu < 5.0, f"500-trial report took {cpu:.2f} s of CPU ({seconds:.2f} s wall)"
    assert section(page, "trials").count("<tr class=") == 500
    n_done = page.count('<tr class="complete">')
    assert n_done > plots.IMPORTANCE_MAX_TRIALS
    assert (f"Computed on {plots.IMPORTANCE_MAX_TRIALS} of {n_done} completed trials"
            in section(page, "importances"))


@pytest.mark.slow
def test_plot_command_on_500_trials_draws_importances_beside_the_rest(tmp_path):
    """The command a user types, in its own process: fANOVA runs in a forked child there."""
    from conftest import hpsearch

    path = write_study(tmp_path, file="views.yaml", **views_settings(tmp_path, storage="journal"))
    make_synthetic_study(tmp_path, 500, storage="journal")
    r = hpsearch("plot", str(path), "--out", str(tmp_path / "r.html"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    importances = section(page, "importances")
    assert 'id="plot-importances"' in importances and "learning_rate" in importances
    assert f"Computed on {plots.IMPORTANCE_MAX_TRIALS} of" in importances


# ----------------------------------------------------------------------------- PNG


def _kaleido_and_browser() -> bool:
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    import shutil

    return any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome"))


@pytest.mark.slow
@pytest.mark.skipif(not _kaleido_and_browser(), reason="PNG export needs kaleido and Chromium")
def test_png_export_writes_every_figure(tmp_path):
    cfg, _ = make_synthetic_study(tmp_path, 8)
    png_dir = tmp_path / "png"
    write_report(cfg, png_dir=png_dir)
    pngs = sorted(p.name for p in png_dir.iterdir())
    assert pngs == sorted(f"{k}.png" for k in PLOT_SECTIONS)
    for p in png_dir.iterdir():
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_png_export_without_kaleido_is_one_clear_line(tmp_path, monkeypatch):
    cfg, _ = make_synthetic_study(tmp_path, 3)
    monkeypatch.setitem(sys.modules, "kaleido", None)
    with pytest.raises(ExportError, match="pip install kaleido") as e:
        write_report(cfg, png_dir=tmp_path / "png")
    assert "\n" not in str(e.value)
    assert (cfg.out / "report.html").exists(), "the HTML is written before the PNGs"


@pytest.mark.skipif(not _kaleido_and_browser(), reason="needs kaleido to reach the browser step")
def test_png_export_without_browser_is_one_clear_line(tmp_path, monkeypatch):
    cfg, _ = make_synthetic_study(tmp_path, 3)
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))
    with pytest.raises(ExportError, match="Chrome") as e:
        write_report(cfg, png_dir=tmp_path / "png")
    assert "\n" not in str(e.value)


def test_gradient_norms_are_drawn_from_the_trials_logs_and_explained_when_absent(tmp_path):
    cfg, study = make_synthetic_study(tmp_path, 6, states="mixed")
    page = write_report(cfg).read_text(encoding="utf-8")
    assert "No trial has logged gradient norms" in section(page, "gradient-norms")

    from hpsearch.plots.curves import health_trials, trial_folder

    trials = study.get_trials(deepcopy=False)
    drawn = health_trials(trials, cfg)
    for t in trials:
        folder = trial_folder(t, cfg)
        folder.mkdir(parents=True, exist_ok=True)
        rows = [{"step": s, "loss": 1.0, "lr": 1e-3, "grad_norm/global": 2.0 ** (s / 10)}
                for s in range(10, 101, 10)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fig = figures(study, cfg)["gradient-norms"]
    assert sorted(tr.name for tr in fig.data) == sorted(f"trial {t.number}" for t in drawn)
    assert list(fig.data[0].x) == list(range(10, 101, 10))
    assert fig.layout.yaxis.type == "log"
    assert 'id="plot-gradient-norms"' in write_report(cfg).read_text(encoding="utf-8")
