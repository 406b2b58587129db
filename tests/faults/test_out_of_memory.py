"""Out of memory: the trial is recorded with reason oom; on_oom: halve_batch retries it once.

This machine has no GPU to exhaust, so the device's memory limit is imposed on the model: a
training forward pass over more than ``LIMIT`` tokens raises the error CUDA raises
(``torch.OutOfMemoryError``). Everything around it, the trainer, the study driver and the
worker processes, runs for real.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import ONE_EPOCH, cli, trials_of, write_study
from optuna.trial import TrialState
from transformers import BertForTokenClassification

LIMIT = 600  # tokens a training batch may hold; the study's budget is 1024

# Every test runs a study whose trials train until the limit is hit.
pytestmark = pytest.mark.slow


@pytest.fixture
def memory_limit(monkeypatch):
    forward = BertForTokenClassification.forward

    def limited(self, input_ids=None, **kw):
        if torch.is_grad_enabled() and input_ids is not None and input_ids.numel() > LIMIT:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate a batch of {input_ids.numel()} tokens")
        return forward(self, input_ids=input_ids, **kw)

    monkeypatch.setattr(BertForTokenClassification, "forward", limited)


def _study(tmp_path, demo_dir, **over):
    path = write_study(tmp_path, demo_dir, trainer={**ONE_EPOCH, "max_tokens": 1024}, **over)
    assert yaml.safe_load(path.read_text())["trainer"]["max_tokens"] > LIMIT
    return path


def test_oom_fails_the_trial_with_reason_oom_and_the_study_goes_on(tmp_path, demo_dir,
                                                                  memory_limit):
    path = _study(tmp_path, demo_dir, n_trials=2)
    r = cli("run", str(path))
    assert r.exit_code == 0, r.output
    ts = trials_of(path)
    assert [t.state for t in ts] == [TrialState.FAIL] * 2
    assert all(t.system_attrs["hpsearch:fail_reason"] == "oom" for t in ts)
    assert all("out of memory" in t.user_attrs["error"] for t in ts)
    assert cli("status", str(path)).output.count("oom: OutOfMemoryError") == 2


@pytest.mark.parametrize("workers", [None, "2"], ids=["one-process", "worker-pool"])
def test_halve_batch_retries_once_with_half_the_token_budget(tmp_path, demo_dir, memory_limit,
                                                             workers):
    path = _study(tmp_path, demo_dir, n_trials=2, on_oom="halve_batch")
    r = cli("run", str(path), *(["--workers", workers] if workers else []))
    assert r.exit_code == 0, r.output
    ts = trials_of(path)
    failed = [t for t in ts if t.state == TrialState.FAIL]
    done = [t for t in ts if t.state == TrialState.COMPLETE]
    assert len(failed) == 2 and len(done) == 2 and len(ts) == 4  # n_trials counts the retries
    for f in failed:
        assert f.system_attrs["hpsearch:fail_reason"] == "oom"
        retry = next(t for t in done if t.system_attrs["hpsearch:retry_of"] == f.number)
        assert retry.params == f.params
        assert retry.system_attrs["hpsearch:trainer_overrides"] == {"max_tokens": 512}
        assert retry.user_attrs["resumed_from_step"] is None  # a fresh start, smaller batches
    assert "2/2 trials" in r.output and "retried with max_tokens=512" in r.output


def test_a_retry_that_runs_out_of_memory_again_is_not_retried_twice(tmp_path, demo_dir,
                                                                    monkeypatch, memory_limit):
    monkeypatch.setattr(__import__(__name__), "LIMIT", 100)  # even half the budget is too much
    path = _study(tmp_path, demo_dir, n_trials=1, on_oom="halve_batch")
    r = cli("run", str(path))
    assert r.exit_code == 0, r.output
    ts = trials_of(path)
    assert [t.state for t in ts] == [TrialState.FAIL] * 2
    assert ts[1].system_attrs["hpsearch:retry_of"] == 0
    assert "hpsearch:retried" not in ts[1].system_attrs


def test_a_half_batch_retry_is_judged_after_as_many_sentences_as_the_others(
        tmp_path, demo_dir, monkeypatch):
    """Half the batch is twice the steps for the same data. The retry evaluates every
    2 x eval_every of its own steps and reports at the study's steps, so a pruner compares
    it with a full-batch trial at the same points of training, not after half the data."""
    over = {"n_trials": 1, "on_oom": "halve_batch"}
    trainer = {"train_limit": 600, "val_limit": 40, "max_epochs": 1, "max_tokens": 1024,
               "eval_every": 3}
    (tmp_path / "plain").mkdir()
    (tmp_path / "small").mkdir()
    plain = write_study(tmp_path / "plain", demo_dir, trainer=trainer, **over)
    assert cli("run", str(plain)).exit_code == 0
    (full,) = trials_of(plain)

    forward = BertForTokenClassification.forward

    def limited(self, input_ids=None, **kw):  # the memory_limit fixture, set up only now
        if torch.is_grad_enabled() and input_ids is not None and input_ids.numel() > LIMIT:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate")
        return forward(self, input_ids=input_ids, **kw)

    monkeypatch.setattr(BertForTokenClassification, "forward", limited)
    small = write_study(tmp_path / "small", demo_dir, trainer=trainer, **over)
    assert cli("run", str(small)).exit_code == 0
    failed, retry = trials_of(small)
    assert failed.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.system_attrs["hpsearch:trainer_overrides"] == {"max_tokens": 512}
    own_steps = retry.user_attrs["steps"]
    assert own_steps > 1.5 * full.user_attrs["steps"]  # it did take about twice the steps
    at = sorted(retry.intermediate_values)
    assert at[:-1] == list(range(3, 3 * len(at), 3))  # every 6 own steps, reported as 3
    assert at[-1] == round(own_steps / 2)  # the last one, at the end of the epoch
    common = [s for s in sorted(full.intermediate_values) if s % 3 == 0 and s <= at[-2]]
    assert len(common) >= 2 and set(common) <= set(at)  # the full batch's points of training
