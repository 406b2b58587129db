"""notebooks/explore_study.ipynb runs top to bottom against a study, as a user would run it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_study
from views_helpers import make_synthetic_study, views_settings

nbformat = pytest.importorskip("nbformat", reason="nbformat is a dev dependency")
nbclient = pytest.importorskip("nbclient", reason="nbclient is a dev dependency")
pytest.importorskip("ipykernel", reason="ipykernel is a dev dependency")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore_study.ipynb"

pytestmark = [
    pytest.mark.slow,  # a Jupyter kernel starts and runs every cell
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
]


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


def test_notebook_runs_on_a_study(tmp_path, monkeypatch):
    study_file = write_study(tmp_path, file="views.yaml", **views_settings(tmp_path))
    make_synthetic_study(tmp_path, 10)
    monkeypatch.setenv("HPSEARCH_STUDY", str(study_file))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text, mimes = outputs(nb)
    assert "study 'views', 10 trials" in text
    assert "A new study created" not in text, "reading a study must not announce a new one"
    assert "best" in text and "f1 = " in text, "the summary table"
    assert "Traceback" not in text
    assert mimes.count("application/vnd.plotly.v1+json") == 6, "six figures"
    for line in ("precision", "LOC", "ORG", "PER", "micro avg", "accuracy=", "loss="):
        assert line in text
    assert "oom" in text and "pruned at step" in text
