"""What hpsearch writes on a trial besides its parameters and values: why it failed, whom it
continues, and so whether it counts toward ``n_trials``.

These keys are how any process, on any machine, tells a live trial from a dead one, finds a
trial's folder, follows a line of continuations and counts the study; the report and the
dashboard read them too. Importing this module costs nothing: the views need only the names.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

# Who runs a trial and whether it is still alive.
A_HOST, A_PID, A_BEAT = "hpsearch:host", "hpsearch:pid", "hpsearch:heartbeat"
A_WORKER, A_WORKER_PID = "hpsearch:worker", "hpsearch:worker_pid"
A_GPU = "hpsearch:cuda_visible_devices"  # what a trial process could see, for the record
A_SAMPLER = "hpsearch:sampler"  # the sampler class that proposed the trial's parameters
#: The Slurm job (``JOB_TASK`` for an array task) a trial ran in, and how often Slurm had
#: requeued that task by then (slurm.py).
A_SLURM_JOB, A_SLURM_RESTARTS = "hpsearch:slurm_job", "hpsearch:slurm_restarts"
# Where its files are, and the folder whose checkpoints a continuation loads.
A_DIR, A_FROM = "hpsearch:trial_dir", "hpsearch:resumed_from_dir"
# How it ended, and the line of trials it belongs to.
A_REASON, A_RETRY_OF = "hpsearch:fail_reason", "hpsearch:retry_of"
#: The number of the first trial of a line of continuations: a continuation carries it on, so
#: anything keyed by trial number (Hyperband's bracket) keeps treating the line as one trial.
A_ORIGIN = "hpsearch:origin"
# A trial another one takes over (it does not count), and what that one trains differently.
A_RETRIED, A_OVERRIDES, A_OOM_RETRY = "hpsearch:retried", "hpsearch:trainer_overrides", \
    "hpsearch:oom_retry"
# The study's settings, data fingerprint and model hash, to refuse mixing two searches under
# one name (study user attributes; see provenance.py).
A_CONFIG, A_DATA, A_MODEL = "hpsearch:config", "hpsearch:data", "hpsearch:model"
#: A trial's user attribute: what it was trained on and with (provenance.trial_provenance).
A_PROVENANCE = "provenance"
#: A confirmation run (confirm.py): the search trial it trains again, and its trainer seed.
A_CONFIRMS, A_SEED = "hpsearch:confirms", "hpsearch:seed"

# Failure reasons (besides the trainer's own: nan_loss, checkpoint_mismatch, config, ...).
INTERRUPTED, DISK_FULL, OOM, CRASHED, ERROR = "interrupted", "disk_full", "oom", "crashed", \
    "error"


def origin_of(trial: FrozenTrial) -> int:
    return int(trial.system_attrs.get(A_ORIGIN, trial.number))


def taken_over(t: FrozenTrial) -> bool:
    """Another trial goes on in its place: an interrupted trial's continuation, an
    out-of-memory trial's retry."""
    return t.system_attrs.get(A_REASON) == INTERRUPTED or bool(t.system_attrs.get(A_RETRIED))


def counts_toward_total(t: FrozenTrial) -> bool:
    """Every trial counts once, except one taken over by another: that one counts instead.
    Confirmation runs of the finalists (confirm.py) are not search trials and never count."""
    return not taken_over(t) and A_CONFIRMS not in t.system_attrs


def n_counted(study: optuna.Study) -> int:
    return sum(counts_toward_total(t) for t in study.get_trials(deepcopy=False))


def work_left(study: optuna.Study, n_trials: int) -> bool:
    """Queued continuations run even when the total is reached: they are already counted."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return True
    return sum(counts_toward_total(t) for t in trials) < n_trials
