"""What a new user meets on the command line: status that tells a dead trial, points to start
from, and a manual training run whose model `evaluate` takes."""

from __future__ import annotations

import json
import os
import socket

import pytest
from click.testing import CliRunner
from conftest import cli, study_config, write_study

from hpsearch.cli import main


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_status_tells_a_running_trial_whose_process_is_gone(tmp_path, demo_dir):
    from hpsearch.study import start_study

    path = write_study(tmp_path, demo_dir)
    study = start_study(study_config(tmp_path, demo_dir))
    alive, gone = study.ask(), study.ask()
    for trial, pid in ((alive, os.getpid()), (gone, _dead_pid())):
        trial.storage.set_trial_system_attr(trial._trial_id, "hpsearch:host", socket.gethostname())
        trial.storage.set_trial_system_attr(trial._trial_id, "hpsearch:pid", pid)
    out = CliRunner().invoke(main, ["status", str(path)]).output.splitlines()
    rows = {int(line.split()[0]): line for line in out[1:3]}
    assert "process gone; resumes on the next run" in rows[gone.number]
    assert "process gone" not in rows[alive.number]


def test_enqueue_queues_a_point_once_and_status_marks_it(tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir)
    runner = CliRunner()
    args = ["enqueue", str(path), "--set", "learning_rate=5e-3", "--set", "weight_decay=0.01"]
    first, again = runner.invoke(main, args), runner.invoke(main, args)
    assert first.exit_code == 0 and "queued: learning_rate=0.005" in first.output
    assert again.exit_code == 0 and "already in the study" in again.output
    status = runner.invoke(main, ["status", str(path)]).output
    assert "enqueued (hpsearch enqueue)" in status
    bad = runner.invoke(main, ["enqueue", str(path), "--set", "learning_rate=7"])
    assert bad.exit_code == 2 and "learning_rate: 7 is outside" in bad.output


@pytest.mark.slow
def test_trains_model_folder_is_what_evaluate_takes_with_averages_and_strict_mode(
        tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir)
    out = tmp_path / "manual"
    r = cli("train", str(path), "--set", "learning_rate=3e-3", "--out", str(out))
    assert r.exit_code == 0, r.output
    model = out / "model"
    assert f"model: {model}" in r.stdout
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in model.iterdir()}
    labels = set(json.loads((model / "config.json").read_text())["id2label"].values())
    assert {"O", "B-PER", "I-PER", "B-LOC", "B-ORG"} <= labels
    e = cli("evaluate", str(path), "--model", str(model), "--split", "val")
    assert e.exit_code == 0, e.output
    assert "macro avg" in e.stdout and "weighted avg" in e.stdout
    scores = {mode: json.loads(cli("evaluate", str(path), "--model", str(model), "--split",
                                   "val", "--mode", mode, "--json").stdout)
              for mode in ("default", "strict")}
    # this model opens some entities with I-: the two modes count them differently
    assert scores["strict"]["f1"] != scores["default"]["f1"]
    assert not (tmp_path / "out" / "study.db").exists()
