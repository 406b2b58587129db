"""MLflow: one parent run per study, one nested run per trial.

The tracking URI is ``mlflow.tracking_uri`` in the study file, else ``$MLFLOW_TRACKING_URI``,
else an SQLite store ``<output_dir>/mlflow.db`` (artifacts beside it in
``<output_dir>/mlflow-artifacts``). The experiment is ``mlflow.experiment``, else the study's
name. A trial's run has its parameters, its curves by step (the names TensorBoard shows:
``train/loss``, ``eval/f1``, ...), its value under the study's metric (``f1``, ``f1_PER``)
and tags: ``state``, ``pruned_step``, ``fail_reason``, ``trial_number``, ``retry_of``. At the
end of a run the parent gets the exported best model (``best-model/``) as an artifact.

The parent is found by its tags (``hpsearch.study``, ``hpsearch.role: study``) and created under
the study's lock, so workers starting at once make one. The client gives up quickly (two
retries within about 3 s, 10 s a request, unless ``MLFLOW_HTTP_REQUEST_*`` say otherwise): a
server that is down costs a warning per trial, and the trials go on.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from hpsearch.reporting.follow import clean_tag, scalars
from hpsearch.storage import redact

ROLE, STUDY = "hpsearch.role", "hpsearch.study"
#: What a down server may cost a request, unless the user's environment says otherwise.
QUICK = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
         "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}

_LOCK = threading.Lock()
#: (uri, experiment, study) -> (client, experiment id, parent run id), per process.
_STUDIES: dict[tuple[str, str, str], tuple[Any, str, str]] = {}
#: After the server failed to answer, the next trials of this process skip it for a while
#: instead of each waiting out its retries again.
COOL_DOWN = 60.0
_DOWN: dict[str, float] = {}


def tracking_uri(cfg) -> str:
    if cfg.mlflow is not None and cfg.mlflow.tracking_uri:
        return cfg.mlflow.tracking_uri
    return os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{(cfg.out.resolve() / 'mlflow.db').as_posix()}"


def experiment_name(cfg) -> str:
    return (cfg.mlflow.experiment if cfg.mlflow is not None else None) or cfg.name


def study_run(cfg) -> tuple[Any, str, str]:
    """The client, experiment id and parent run id of the study (found or created)."""
    uri, name = tracking_uri(cfg), experiment_name(cfg)
    key = (uri, name, cfg.name)
    with _LOCK:
        if key in _STUDIES:
            return _STUDIES[key]
        with _server(uri):
            _STUDIES[key] = _open_study_run(cfg, uri, name)
        return _STUDIES[key]


@contextlib.contextmanager
def _server(uri: str) -> Iterator[None]:
    """Calls to the tracking server; one that fails makes the next ones skip it a while."""
    if time.monotonic() < _DOWN.get(uri, 0.0):
        raise RuntimeError(f"{redact(uri)} failed less than {COOL_DOWN:.0f}s ago; skipped")
    try:
        yield
    except Exception:
        _DOWN[uri] = time.monotonic() + COOL_DOWN
        raise


def _open_study_run(cfg, uri: str, name: str) -> tuple[Any, str, str]:
    from hpsearch.storage import study_lock

    for k, v in QUICK.items():
        os.environ.setdefault(k, v)
    from mlflow import MlflowClient

    local = uri.startswith("sqlite:")
    if local:  # the first client creates the database's tables: one process at a time
        cfg.out.mkdir(parents=True, exist_ok=True)
        with study_lock(cfg.storage_url, cfg.name):
            client = MlflowClient(tracking_uri=uri)
    else:
        client = MlflowClient(tracking_uri=uri)
    exp_id = _experiment(client, cfg, name, local)
    parent = _find_parent(client, exp_id, cfg.name)
    if parent is None:
        with study_lock(cfg.storage_url, cfg.name):
            parent = _find_parent(client, exp_id, cfg.name) or _new_parent(client, exp_id, cfg)
    return client, exp_id, parent


def _experiment(client, cfg, name: str, local: bool) -> str:
    from hpsearch.storage import study_lock

    exp = client.get_experiment_by_name(name)
    if exp is None:
        with study_lock(cfg.storage_url, cfg.name):
            exp = client.get_experiment_by_name(name)
            if exp is None:
                where = (cfg.out.resolve() / "mlflow-artifacts").as_uri() if local else None
                return client.create_experiment(name, artifact_location=where)
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def _find_parent(client, exp_id: str, study: str) -> str | None:
    runs = client.search_runs(
        [exp_id], filter_string=f"tags.`{ROLE}` = 'study' and tags.`{STUDY}` = '{study}'",
        order_by=["attributes.start_time ASC"], max_results=1)
    return runs[0].info.run_id if runs else None


def _new_parent(client, exp_id: str, cfg) -> str:
    from mlflow.entities import Param

    run = client.create_run(exp_id, run_name=cfg.name, tags={ROLE: "study", STUDY: cfg.name})
    params = {"n_trials": cfg.n_trials, "metric": cfg.metric, "direction": cfg.direction,
              "backend": cfg.backend.name, "pruner": cfg.pruner.name,
              "search_space": ",".join(cfg.search_space)}
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


def _ms() -> int:
    return int(time.time() * 1000)


class MlflowSink:
    """A trial's nested run under the study's parent run."""

    fills_gaps = False

    def __init__(self, cfg, info):
        self.metric = clean_tag(cfg.metric)
        self.client, exp_id, parent = study_run(cfg)
        self.uri = tracking_uri(cfg)
        with _server(self.uri):
            self._start(exp_id, parent, info)

    def _start(self, exp_id: str, parent: str, info) -> None:
        from mlflow.entities import Param
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        tags = {MLFLOW_PARENT_RUN_ID: parent, ROLE: "trial", STUDY: info.study,
                "trial_number": str(info.number), "state": "RUNNING"}
        if info.retry_of is not None:
            tags["retry_of"] = str(info.retry_of)
        if info.origin != info.number:
            tags["origin"] = str(info.origin)
        run = self.client.create_run(exp_id, run_name=f"trial-{info.number:04d}", tags=tags)
        self.run_id = run.info.run_id
        params = {**info.params, **info.overrides}
        self.client.log_batch(self.run_id,
                              params=[Param(k, str(v)) for k, v in params.items()])
        status = self.client.get_run(parent).info.status
        if status != "RUNNING":  # a finished study given more trials
            self.client.update_run(parent, status="RUNNING")

    def last_steps(self) -> dict[str, int]:
        return {}

    def rows(self, rows: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        now = _ms()
        metrics = [Metric(tag, value, now, row["step"])
                   for row in rows for tag, value in scalars(row).items()]
        with _server(self.uri):
            for i in range(0, len(metrics), 1000):  # MLflow's limit per batch
                self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def end(self, end) -> None:
        from mlflow.entities import Metric, RunTag

        tags = {"state": end.state}
        if end.pruned_step is not None:
            tags["pruned_step"] = str(end.pruned_step)
        if end.fail_reason:
            tags["fail_reason"] = end.fail_reason
        if end.error:
            tags["error"] = end.error[:4000]
        metrics = [Metric(self.metric, float(end.value), _ms(), 0)] \
            if end.value is not None else []
        with _server(self.uri):
            self.client.log_batch(self.run_id, metrics=metrics,
                                  tags=[RunTag(k, v) for k, v in tags.items()])
            self.client.set_terminated(self.run_id, status=STATUS.get(end.state, "KILLED"))

    def close(self) -> None:
        pass


def study_end(cfg, study) -> None:
    """The parent run at the end of a run: the best trial, and its exported model."""
    from hpsearch.confirm import chosen

    best = chosen(study, cfg)
    client, _, parent = study_run(cfg)
    with _server(tracking_uri(cfg)):
        _study_end(cfg, study, client, parent, best)


def _study_end(cfg, study, client, parent: str, best) -> None:
    from mlflow.entities import Metric, RunTag
    from optuna.trial import TrialState

    from hpsearch.attrs import work_left

    if best is not None:
        client.log_batch(parent, metrics=[Metric(f"best_{clean_tag(cfg.metric)}",
                                                 float(best.value), _ms(), best.number)],
                         tags=[RunTag("best_trial", str(best.number))])
        model = cfg.out / "best-model"
        if model.is_dir():
            client.log_artifacts(parent, str(model), "best-model")
    live = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    if not live and not work_left(study, cfg.n_trials):
        client.set_terminated(parent, status="FINISHED")
