"""Trials reported to TensorBoard and MLflow as they train (``report_to`` in the study file).

Each trial's reporting is a thread (follow.py) that follows the trial's ``metrics.jsonl`` and
forwards its new rows to the sinks (tensorboard.py, mlflow.py); at the trial's end it records
the trial's state, value and parameters there. The trainer knows nothing of it, so a solo
trial, a worker's trial process, a fused array's member and a continuation report alike. A
sink never raises into training: its first error is one warning, and the trial goes on.

    check(cfg)                       at study start: a missing package is one line
    open_trial(cfg, study, started)  after trial.start_trial: the thread starts
    TrialReport.close()              after trial.record_end: last rows, the end, sinks closed
    study_end(cfg, study)            at a run's end: the best model on the MLflow parent run

``report_to`` says where (``HPSEARCH_REPORT_TO=tensorboard,mlflow`` overrides it, empty for
none); ``HPSEARCH_REPORT_INTERVAL`` is how often, in seconds, the rows are read (default 2).
Nothing here imports tensorboard or mlflow unless the study reports there.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpsearch.attrs import A_ORIGIN, A_REASON, A_RETRY_OF, INTERRUPTED
from hpsearch.config.hints import did_you_mean
from hpsearch.errors import ConfigError

log = logging.getLogger("hpsearch.reporting")

ENV, ENV_INTERVAL = "HPSEARCH_REPORT_TO", "HPSEARCH_REPORT_INTERVAL"
#: Each target: the module it needs and the extra that installs it.
TARGETS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
#: In a trial folder: the TensorBoard run its curves go to, which a continuation carries on.
RUN_MARKER = "tensorboard-run"


def targets(cfg) -> list[str]:
    """Where the study reports: ``$HPSEARCH_REPORT_TO`` if set (empty: nowhere), else
    ``report_to``."""
    raw = os.environ.get(ENV)
    if raw is None:
        return list(dict.fromkeys(cfg.report_to))
    names = [n.lower() for n in re.split(r"[\s,]+", raw.strip()) if n]
    for n in names:
        if n not in TARGETS:
            raise ConfigError(f"${ENV}: {n!r} is not one of {', '.join(TARGETS)}"
                              f"{did_you_mean(n, list(TARGETS))}")
    return list(dict.fromkeys(names))


def missing(target: str) -> bool:
    return importlib.util.find_spec(TARGETS[target]) is None


def install_hint(target: str) -> str:
    return (f"report_to: {target} needs the {TARGETS[target]} package: "
            f"pip install 'hpsearch[{target}]'")


def check(cfg) -> None:
    """Before a study starts: ``report_to`` names only what can be reported to here."""
    for target in targets(cfg):
        if missing(target):
            raise ConfigError(install_hint(target))


def interval() -> float:
    try:
        return max(0.05, float(os.environ.get(ENV_INTERVAL, "2")))
    except ValueError:
        return 2.0


# ----------------------------------------------------------------------------- a trial's end


@dataclass
class TrialEnd:
    """How a trial ended, as its sinks record it."""

    number: int
    #: COMPLETE, PRUNED, FAIL, INTERRUPTED (a continuation carries it on) or UNKNOWN
    state: str
    value: float | None
    params: dict[str, Any] = field(default_factory=dict)
    pruned_step: int | None = None
    fail_reason: str | None = None
    error: str | None = None


def trial_end(study, tid: int, number: int) -> TrialEnd:
    """The trial's end as the study recorded it (UNKNOWN when it cannot be read)."""
    from hpsearch.optuna_compat import storage_of

    try:
        t = storage_of(study).get_trial(tid)
    except Exception:
        return TrialEnd(number, "UNKNOWN", None)
    state = t.state.name
    reason = t.system_attrs.get(A_REASON) or t.user_attrs.get("fail_reason")
    if state == "RUNNING" or (state == "FAIL" and reason == INTERRUPTED):
        state = "INTERRUPTED"
    return TrialEnd(t.number, state, t.value, dict(t.params),
                    pruned_step=t.user_attrs.get("pruned_step"),
                    fail_reason=reason if state == "FAIL" else None,
                    error=t.user_attrs.get("error") if state == "FAIL" else None)


# ----------------------------------------------------------------------------- a trial


@dataclass
class TrialInfo:
    """What the sinks know of a trial when it starts."""

    study: str
    number: int
    params: dict[str, Any]
    overrides: dict[str, Any]
    retry_of: int | None
    origin: int


class TrialReport:
    """One trial's reporting: its follower thread, started on creation."""

    def __init__(self, study, tid: int, number: int, follower):
        self.study, self.tid, self.number = study, tid, number
        self.follower = follower
        self.closed = False
        follower.start()

    def close(self, *, wait: bool = True, timeout: float = 60.0) -> None:
        """After the trial's end is recorded: forward the last rows, record the end, close.

        ``wait=False`` leaves that to the thread (a fused array's other members train on);
        :meth:`join` waits for it.
        """
        if not self.closed:
            self.closed = True
            self.follower.finish(trial_end(self.study, self.tid, self.number))
        if wait:
            self.join(timeout)

    def done(self) -> bool:
        """Closed, and its thread has finished."""
        return self.closed and not self.follower.is_alive()

    def join(self, timeout: float = 60.0) -> None:
        self.follower.join(timeout)
        if self.follower.is_alive():
            log.warning("warning: trial %d: its reporting did not finish within %.0fs; "
                        "left behind", self.number, timeout)

    def __enter__(self) -> TrialReport:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # A second Ctrl-C (KeyboardInterrupt) stops at once: no waiting on a slow server.
        self.close(timeout=2.0 if exc_type is KeyboardInterrupt else 60.0)


class _NoReport:
    def done(self) -> bool:
        return True

    def close(self, *, wait: bool = True, timeout: float = 60.0) -> None:
        pass

    def join(self, timeout: float = 60.0) -> None:
        pass

    def __enter__(self) -> _NoReport:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


NO_REPORT = _NoReport()


def open_trial(cfg, study, started) -> TrialReport | _NoReport:
    """Start reporting a trial that ``trial.start_trial`` started (nothing when report_to is
    empty). Never raises: a problem here is a warning and the trial trains unreported."""
    try:
        names = targets(cfg)
    except ConfigError as e:
        log.warning("warning: %s; trial %d is not reported", e, started.trial.number)
        return NO_REPORT
    if not names:
        return NO_REPORT
    try:
        return _open(cfg, study, started, names)
    except Exception as e:
        log.warning("warning: trial %d is not reported: %s: %s", started.trial.number,
                    type(e).__name__, e)
        return NO_REPORT


def _open(cfg, study, s, names: list[str]) -> TrialReport | _NoReport:
    from hpsearch.optuna_compat import trial_id
    from hpsearch.reporting.follow import Follower, Guarded
    from hpsearch.trainer.trial_dir import METRICS

    number = s.trial.number
    before = s.resume_from.parent if s.resume_from is not None else None
    if before is not None and before.resolve() == s.out.resolve():
        before = None
    info = TrialInfo(cfg.name, number, dict(s.params), dict(s.overrides),
                     s.attrs.get(A_RETRY_OF), int(s.attrs.get(A_ORIGIN, number)))
    sinks = []
    for name in names:
        if missing(name):
            log.warning("warning: %s; trial %d is not reported there", install_hint(name),
                        number)
            continue
        if name == "tensorboard":
            from hpsearch.reporting import tensorboard

            run = tensorboard_run(s.out, before, info)
            sinks.append(Guarded(name, number, lambda run=run: tensorboard.TensorBoardSink(
                cfg.out.resolve() / "tensorboard" / run, cfg.metric)))
        else:
            from hpsearch.reporting import mlflow

            sinks.append(Guarded(name, number, lambda: mlflow.MlflowSink(cfg, info)))
    if not sinks:
        return NO_REPORT
    follower = Follower(s.out / METRICS, sinks, before=before / METRICS if before else None,
                        interval=interval(), name=f"hpsearch-report-{number}")
    return TrialReport(study, trial_id(s.trial), number, follower)


def tensorboard_run(folder: Path, before: Path | None, info: TrialInfo) -> str:
    """The TensorBoard run a trial's curves go to: its own (``trial-NNNN``), or for a
    continuation the one its predecessor's went to, so the curve goes on where it stopped.
    Written down in the trial folder for the next continuation."""
    run = None
    if before is not None:
        try:
            run = (before / RUN_MARKER).read_text().strip() or None
        except OSError:
            run = f"trial-{info.origin:04d}"  # the predecessor reported nowhere
    run = run or f"trial-{info.number:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{RUN_MARKER}.tmp"
    tmp.write_text(run + "\n")
    os.replace(tmp, folder / RUN_MARKER)
    return run


# ----------------------------------------------------------------------------- the study


def study_end(cfg, study) -> None:
    """At the end of a run: the study's best model as an artifact of its MLflow parent run.
    Never raises."""
    try:
        names = targets(cfg)
    except ConfigError:
        return
    if "mlflow" in names and not missing("mlflow"):
        try:
            from hpsearch.reporting import mlflow

            mlflow.study_end(cfg, study)
        except Exception as e:
            log.warning("warning: mlflow: the study's end is not reported: %s: %s",
                        type(e).__name__, e)
