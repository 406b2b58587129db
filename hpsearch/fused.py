"""A study's trials trained ``trainer.fuse`` at a time as one fused array, in one process.

The array (trainer/fused_loop.py) asks this module for a trial whenever a slot is free, and
hands back each trial's end; every trial is claimed, started and recorded through trial.py,
exactly as a solo trial is, so counting, continuations, pruning and the report do not know
the difference. Claims are made for all free slots at once under the study lock, so the
samplers' constant liar sees every trial of the array as pending.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import optuna

from hpsearch import reporting
from hpsearch.attrs import DISK_FULL
from hpsearch.config import StudyConfig
from hpsearch.errors import StudyInterrupted
from hpsearch.export import tidy
from hpsearch.optuna_compat import trial_id
from hpsearch.recovery import Heartbeat, interrupt
from hpsearch.trial import (
    Started,
    TrialOutcome,
    claim_trials,
    record_end,
    start_trial,
    use_compile_cache,
)


class _StudyFeed:
    """Trials for the array's slots, claimed from the study, and their ends recorded there."""

    def __init__(self, study: optuna.Study, cfg: StudyConfig, beat: Heartbeat,
                 stop: Callable[[], bool], deadline: float | None, worker: str | None,
                 worker_pid: int | None,
                 on_trial: Callable[[TrialOutcome, optuna.Study], None] | None):
        self.study, self.cfg, self.beat, self.stop = study, cfg, beat, stop
        self.deadline, self.worker, self.worker_pid = deadline, worker, worker_pid
        self.on_trial = on_trial
        self.on_recovered: Callable[[list[int]], None] | None = None
        self.active: dict[int, Started] = {}
        self.reports: dict[int, reporting.TrialReport] = {}  # by trial id, until joined
        self.claimed: list[optuna.Trial] = []
        self.outcomes: list[TrialOutcome] = []
        self.recovered: list[int] = []
        self.disk_full: TrialOutcome | None = None

    def _closed(self) -> bool:
        return (self.stop() or self.disk_full is not None
                or (self.deadline is not None and time.time() >= self.deadline))

    def next_job(self):
        from hpsearch.trainer.fused_loop import Job

        while not self._closed():
            if not self.claimed:
                free = self.cfg.trainer.fuse - len(self.active)
                self.claimed, more = claim_trials(self.study, self.cfg, max(1, free),
                                                  self.worker, self.worker_pid)
                self.recovered += more
                if more and self.on_recovered is not None:
                    self.on_recovered(more)
                if not self.claimed:
                    return None
            s = start_trial(self.study, self.claimed.pop(0), self.cfg)
            self.reports[trial_id(s.trial)] = reporting.open_trial(self.cfg, self.study, s)
            try:
                tcfg = s.trainer_config(self.cfg)
            except Exception as e:  # its parameters do not make a trainer: it fails alone
                self._record(record_end(self.study, s, self.cfg, error=e))
                self._report_end(trial_id(s.trial))
                continue
            self.active[trial_id(s.trial)] = s
            self.beat.add(trial_id(s.trial))
            return Job(tcfg, s.out, s.reporter(self.cfg), s.resume_from, tag=s)
        return None

    def done(self, job, result, error: Exception | None) -> None:
        self.end(job.tag, result, error)

    def end(self, s: Started, result, error: Exception | None) -> None:
        """Record a started trial's end and let go of it."""
        tid = trial_id(s.trial)
        self.active.pop(tid, None)
        self.beat.discard(tid)
        self._record(record_end(self.study, s, self.cfg, result, error))
        self._report_end(tid)

    def _report_end(self, tid: int) -> None:
        """The trial's last rows and end go to its sinks from its own thread: the array's
        other members train on meanwhile (``join_reports`` waits for them)."""
        report = self.reports.get(tid)
        if report is not None:
            report.close(wait=False)
        self.reports = {k: r for k, r in self.reports.items() if not r.done()}

    def join_reports(self) -> None:
        """Close every report (an interrupted member's too) and wait for their threads."""
        reports, self.reports = self.reports, {}
        for report in reports.values():
            report.close(wait=False)
        for report in reports.values():
            report.join()

    def _record(self, outcome: TrialOutcome) -> None:
        self.outcomes.append(outcome)
        if outcome.reason == DISK_FULL:  # every next trial would fail the same way
            self.disk_full = outcome
        else:
            tidy(self.study, self.cfg)
        if self.on_trial is not None:
            self.on_trial(outcome, self.study)

    def release_unstarted(self) -> None:
        """Trials claimed but never given a slot go back to the queue, to run later."""
        for trial in self.claimed:
            interrupt(self.study, trial_id(trial))
        self.claimed = []


def run_fused(
    study: optuna.Study,
    cfg: StudyConfig,
    prep,
    stop: Callable[[], bool],
    *,
    on_trial: Callable[[TrialOutcome, optuna.Study], None] | None = None,
    deadline: float | None = None,
    worker: str | None = None,
    worker_pid: int | None = None,
    on_recovered: Callable[[list[int]], None] | None = None,
) -> _StudyFeed:
    """Train the study's trials as fused arrays until it needs no more (or a stop, the
    deadline, a full disk); returns what ran. A stop raises ``StudyInterrupted`` once every
    member has checkpointed and been queued to resume."""
    from hpsearch.trainer import Interrupted
    from hpsearch.trainer.fused_loop import train_fused

    use_compile_cache(cfg)
    with Heartbeat(study) as beat:
        feed = _StudyFeed(study, cfg, beat, stop, deadline, worker, worker_pid, on_trial)
        feed.on_recovered = on_recovered
        try:
            train_fused(cfg.trainer, prep, cfg.trainer.fuse, feed, should_stop=stop,
                        metric=cfg.metric, maximize=cfg.direction == "maximize")
        except Interrupted as e:
            for tid in list(feed.active):
                interrupt(study, tid)
            raise StudyInterrupted(f"{len(feed.active)} fused trial(s) checkpointed; "
                                   "run again to resume") from e
        except Exception as e:  # the array itself failed (out of memory, say): all of it
            for s in list(feed.active.values()):
                feed.end(s, None, e)
            del e
        finally:
            feed.release_unstarted()
            feed.join_reports()
    return feed
