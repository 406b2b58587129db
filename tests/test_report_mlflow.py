"""report_to: [mlflow] against a real `mlflow server` on 127.0.0.1, read back with MlflowClient:
one parent run per study, one nested run per trial with its parameters, curves and value, the
best model on the parent; and a server that goes away costs warnings, never a trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, spawn_hpsearch, study_config, trials_of, write_study
from optuna.trial import TrialState


class Server:
    """A real tracking server: SQLite backend, artifacts proxied to a folder."""

    def __init__(self, root: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(root / "server.log", "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts")],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 180
        while True:
            assert self.proc.poll() is None, (root / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            assert time.time() < deadline, "the mlflow server did not answer /health"
            time.sleep(0.3)

    def stop(self) -> None:
        """Gone at once, workers included: what a crashed server looks like to a client."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("mlflow-server"))
    yield s
    s.stop()


@pytest.fixture
def quick_client(monkeypatch):
    """hpsearch's own short retries, set the way it sets them, undone after the test."""
    from hpsearch.reporting.mlflow import QUICK

    for k, v in QUICK.items():
        monkeypatch.setenv(k, os.environ.get(k, v))
    monkeypatch.delenv("HPSEARCH_REPORT_TO", raising=False)


def test_the_tracking_uri_is_the_study_files_else_the_environments_else_sqlite_beside_it(
        tmp_path, monkeypatch):
    from hpsearch.reporting.mlflow import experiment_name, tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    plain = study_config(tmp_path, "demo", report_to=["mlflow"])
    assert tracking_uri(plain) == f"sqlite:///{(tmp_path / 'out').resolve()}/mlflow.db"
    assert experiment_name(plain) == "t"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5001")
    assert tracking_uri(plain) == "http://127.0.0.1:5001"
    named = study_config(tmp_path, "demo", mlflow={"tracking_uri": "http://127.0.0.1:5002",
                                                   "experiment": "ner"})
    assert tracking_uri(named) == "http://127.0.0.1:5002" and experiment_name(named) == "ner"


def _rows(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_fused_study_is_one_parent_run_with_a_child_per_trial_and_the_best_model(
        tmp_path, demo_dir, server, quick_client):
    from mlflow import MlflowClient

    from hpsearch import study as driver

    cfg = study_config(tmp_path, demo_dir, n_trials=2, report_to=["mlflow"],
                       mlflow={"tracking_uri": server.url, "experiment": "ner-search"},
                       trainer={"fuse": 2})
    summary = driver.run(cfg)
    trials = trials_of(cfg)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2

    client = MlflowClient(tracking_uri=server.url)
    exp = client.get_experiment_by_name("ner-search")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("hpsearch.role") == "study"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == "t" and parent.info.status == "FINISHED"
    assert parent.data.tags["best_trial"] == str(summary.best_number)
    assert parent.data.metrics["best_f1"] == pytest.approx(summary.best_value)
    children = {int(r.data.tags["trial_number"]): r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == [t.number for t in trials]
    for t in trials:
        run = children[t.number]
        assert run.info.run_name == f"trial-{t.number:04d}" and run.info.status == "FINISHED"
        assert {k: float(v) for k, v in run.data.params.items()} == t.params
        assert run.data.metrics["f1"] == pytest.approx(t.value)
        assert run.data.tags["state"] == "COMPLETE"
        rows = _rows(cfg.out / "trials" / f"trial-{t.number:04d}")
        history = client.get_metric_history(run.info.run_id, "eval/f1")
        assert [(m.step, m.value) for m in history] == \
            [(r["step"], pytest.approx(r["val_f1"])) for r in rows if r.get("eval")]
        loss_steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert loss_steps == [r["step"] for r in rows if not r.get("eval")]
    files = {Path(f.path).name for f in client.list_artifacts(parent.info.run_id, "best-model")}
    assert {"model.safetensors", "config.json", "hpsearch-trial.json"} <= files


def _trials_so_far(path: Path) -> list:
    try:
        return trials_of(path)
    except KeyError:  # the study is not created yet
        return []


# Last in the file: it stops the module's server.
@pytest.mark.slow
def test_a_server_stopped_halfway_costs_warnings_and_every_trial_completes(tmp_path, demo_dir,
                                                                         server):
    path = write_study(tmp_path, demo_dir, n_trials=3, report_to=["mlflow"],
                       mlflow={"tracking_uri": server.url})
    proc = spawn_hpsearch("run", str(path), env={"HPSEARCH_REPORT_INTERVAL": "0.2"})
    try:
        deadline = time.time() + 300
        while not any(t.state == TrialState.COMPLETE for t in _trials_so_far(path)):
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "no trial completed"
            time.sleep(0.1)
        server.stop()
        stopped = time.time()
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    trials = trials_of(path)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert trials[-1].datetime_start.timestamp() > stopped - 1  # trained with no server at all
    assert "warning: mlflow:" in err and "the trial goes on" in err
    assert "3/3 trials" in out
