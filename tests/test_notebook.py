"""notebooks/explore_study.ipynb runs top to bottom against a study, as a user would run it, and
the outputs saved in it are those of its code as it is (notebooks/save_outputs.py saves them)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import optuna
import pytest
from conftest import study_config, write_study
from optuna.trial import TrialState, create_trial
from views_helpers import make_synthetic_study, views_settings, write_metrics_logs

from hpsearch.attrs import A_DIR, A_FROM
from hpsearch.plots.curves import (
    metrics_rows,
    per_type_curves_figure,
    step_curves_figure,
    trial_folder,
)
from hpsearch.trainer.trial_dir import trial_dir

nbformat = pytest.importorskip("nbformat", reason="nbformat is a dev dependency")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "explore_study.ipynb"
PLOTLY = "application/vnd.plotly.v1+json"
#: optuna's six (history, learning curves, landscape, parallel, slices, importances), the top
#: trials step by step, the two trials side by side, the best trial's per-type F1.
FIGURES = 9

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def save_outputs():
    path = NOTEBOOK.parent / "save_outputs.py"
    spec = importlib.util.spec_from_file_location("save_outputs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def outputs(nb) -> tuple[str, list[str]]:
    """All printed text of the notebook, and the MIME types of its rich outputs."""
    text, mimes = [], []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                text.append(out["text"])
            elif out.get("output_type") == "error":
                text.append("\n".join(out["traceback"]))
            mimes += list(out.get("data", {}))
            text.append(out.get("data", {}).get("text/html", ""))
    return "\n".join(text), mimes


@pytest.mark.slow  # a Jupyter kernel starts and runs every cell
def test_notebook_runs_on_a_study(tmp_path, monkeypatch):
    pytest.importorskip("nbclient", reason="nbclient is a dev dependency")
    pytest.importorskip("ipykernel", reason="ipykernel is a dev dependency")
    pytest.importorskip("pandas", reason="the notebook's tables are pandas DataFrames")
    study_file = write_study(tmp_path, file="views.yaml", **views_settings(tmp_path))
    cfg, study = make_synthetic_study(tmp_path, 10)
    write_metrics_logs(cfg, study)
    monkeypatch.setenv("HPSEARCH_STUDY", str(study_file))
    monkeypatch.setenv("PLOTLY_RENDERER", "plotly_mimetype")  # what a bare Jupyter gets
    nb = nbformat.read(NOTEBOOK, as_version=4)
    import nbclient

    nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text, mimes = outputs(nb)
    assert "study 'views', 10 trials" in text
    assert "A new study created" not in text, "reading a study must not announce a new one"
    assert "best" in text and "f1 = " in text, "the summary table"
    assert "Traceback" not in text
    noise = [o.text for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert not noise, "warnings a reader would have to skip"
    assert mimes.count(PLOTLY) == FIGURES
    # the trials table: what the study records on the way, for pruned and failed trials
    for column in ("learning_rate", "weight_decay", "duration", "best_step", "pruned_step",
                   "fail_reason", "notes"):
        assert f"<th>{column}</th>" in text, column
    assert "no metrics.jsonl" not in text, "every completed trial of the study has its log"
    assert "F1 of type" in text and "difference" in text, "two trials side by side"
    for line in ("precision", "LOC", "ORG", "PER", "micro avg", "accuracy=", "loss="):
        assert line in text
    assert "oom" in text and "pruned at step" in text


def test_saved_outputs_come_from_the_code_as_it_is():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    saved = nb.metadata.get("hpsearch", {}).get("code_sha256")
    assert saved == save_outputs().code_hash(nb), (
        "a code cell changed since the outputs were saved: "
        ".venv/bin/python notebooks/save_outputs.py"
    )
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), \
        "saved from one run, top to bottom"
    for cell in code:
        assert cell.outputs, f"cell {cell.id} has no saved output"
        for out in cell.outputs:
            assert out.output_type != "error", f"cell {cell.id} saved an error"
            assert out.get("name") != "stderr", f"cell {cell.id} saved a warning: {out.text}"
        assert "execution" not in cell.metadata, "run times make every save a diff"
    text, mimes = outputs(nb)
    assert text.lstrip().startswith("studies/demo.yaml: study 'demo'"), "the demo study's"
    assert mimes.count(PLOTLY) == FIGURES
    assert NOTEBOOK.stat().st_size < 2_000_000


def _trial(number: int, **system_attrs) -> optuna.trial.FrozenTrial:
    t = create_trial(state=TrialState.COMPLETE, value=0.5, system_attrs=system_attrs)
    t.number = number
    return t


def _log(folder: Path, *rows: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_continued_trial_reads_as_one_run(tmp_path):
    cfg = study_config(tmp_path, **views_settings(tmp_path))
    first, second, third = (tmp_path / f"t{i}" for i in range(3))
    # trial 0 got to step 4 and checkpointed at 2; trial 1 went on from 2, to 5; trial 2 from 4.
    _log(first, *({"step": s, "loss": 1.0, "lr": 0.1} for s in range(1, 5)))
    _log(second, *({"step": s, "loss": 2.0, "lr": 0.1} for s in range(3, 6)))
    with open(second / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # still being written
    _log(third, {"step": 5, "loss": 3.0, "lr": 0.1})
    trials = [_trial(0, **{A_DIR: str(first)}),
              _trial(1, **{A_DIR: str(second), A_FROM: str(first)}),
              _trial(2, **{A_DIR: str(third), A_FROM: str(second)})]
    rows = metrics_rows(trials[2], cfg, trials)
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 1.0), (3, 2.0), (4, 2.0),
                                                      (5, 3.0)]
    assert [r["step"] for r in metrics_rows(trials[1], cfg, trials)] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in metrics_rows(trials[2], cfg)] == [3, 4, 5], \
        "without the study's trials, only the predecessor the trial names"


def test_a_trial_without_its_folder_has_no_rows_and_no_figure(tmp_path):
    cfg = study_config(tmp_path, **views_settings(tmp_path))
    t = _trial(3, **{A_DIR: "/elsewhere/trials/trial-0003"})
    assert trial_folder(t, cfg) == trial_dir(cfg.out, 3), "the study's own layout, here"
    assert metrics_rows(t, cfg) == []
    assert step_curves_figure({3: []}, cfg) is None
    assert per_type_curves_figure([], 3) is None


def test_long_logs_are_averaged_down_and_evaluations_kept(tmp_path):
    cfg = study_config(tmp_path, **views_settings(tmp_path))
    rows = [{"step": s, "loss": float(s % 2), "lr": 1e-3} for s in range(1, 2001)]
    rows += [{"step": s, "eval": True, "val_f1": s / 2000, "val_f1:PER": 0.5}
             for s in range(200, 2001, 200)]
    fig = step_curves_figure({0: rows}, cfg, max_points=100)
    loss, lr, f1 = fig.data
    assert len(loss.x) == 100 and set(loss.y) == {0.5}, "means of runs of steps"
    assert loss.x[-1] == 2000 and len(f1.x) == 10
    assert [t.showlegend for t in fig.data] == [True, False, False], "one legend entry a trial"
    per_type = per_type_curves_figure(rows, 0)
    assert [t.name for t in per_type.data] == ["PER", "micro F1"]
