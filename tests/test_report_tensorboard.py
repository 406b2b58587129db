"""report_to: [tensorboard], read back with TensorBoard's own event reader: every trial's
curves at the steps it trained, a killed and resumed trial's curve without a repeated step,
and the HParams summaries that let TensorBoard compare the trials."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import free_port, spawn_hpsearch, study_dict, trials_of, write_study

from hpsearch.cli import main
from hpsearch.config import ConfigError, load_study, parse_study, study_fingerprint
from hpsearch.trainer.checkpoint import list_checkpoints

# Slow enough to be caught mid-trial: ~50 optimizer steps, each logged, a checkpoint every 10
# (eight steps after each for the test to see TensorBoard ahead of the newest checkpoint).
# ~200 steps: the kill lands mid-trial. With one epoch (~66 steps, a second) a loaded machine's
# reporter caught up only as the trial ended, and the kill came after it had completed.
SLOW = {"train_limit": 400, "max_tokens": 256, "max_epochs": 3, "checkpoint_every": 10,
        "eval_every": 10}


def test_report_to_is_how_a_run_is_watched_not_part_of_the_study(tmp_path, monkeypatch):
    from hpsearch import reporting

    monkeypatch.delenv("HPSEARCH_REPORT_TO", raising=False)
    plain = parse_study(study_dict(tmp_path, "demo"))
    watched = parse_study(study_dict(tmp_path, "demo", report_to=["tensorboard", "mlflow"],
                                     mlflow={"tracking_uri": "http://127.0.0.1:1"}))
    assert plain.report_to == [] and reporting.targets(plain) == []
    assert study_fingerprint(plain) == study_fingerprint(watched)  # no --allow-changes needed
    assert reporting.targets(watched) == ["tensorboard", "mlflow"]
    monkeypatch.setenv("HPSEARCH_REPORT_TO", "")
    assert reporting.targets(watched) == []
    monkeypatch.setenv("HPSEARCH_REPORT_TO", "mlflow, tensorboard")
    assert reporting.targets(plain) == ["mlflow", "tensorboard"]
    monkeypatch.setenv("HPSEARCH_REPORT_TO", "tensorbord")
    with pytest.raises(ConfigError, match="did you mean tensorboard"):
        reporting.targets(plain)
    with pytest.raises(ConfigError, match="report_to"):
        parse_study(study_dict(tmp_path, "demo", report_to=["wandb"]))
    with pytest.raises(ConfigError, match="mlflow.tracking_url: unknown key"):
        parse_study(study_dict(tmp_path, "demo", mlflow={"tracking_url": "x"}))


def test_a_missing_package_is_one_line_before_anything_is_written(tmp_path, demo_dir,
                                                                  monkeypatch):
    from hpsearch import reporting

    monkeypatch.delenv("HPSEARCH_REPORT_TO", raising=False)
    monkeypatch.setattr(reporting, "missing", lambda target: target == "tensorboard")
    path = write_study(tmp_path, demo_dir, report_to=["tensorboard"])
    r = CliRunner().invoke(main, ["run", str(path)])
    assert r.exit_code == 2, r.output
    assert r.stderr.strip() == ("error: report_to: tensorboard needs the tensorboard package: "
                                "pip install 'hpsearch[tensorboard]'")
    assert not (tmp_path / "out").exists()


def test_the_follower_forwards_whole_rows_once_even_from_a_file_cut_back(tmp_path):
    from hpsearch.reporting.follow import Guarded, Tail, scalars

    class Sink:
        fills_gaps = False

        def __init__(self):
            self.got = []

        def last_steps(self):
            return {"train": 1}

        def rows(self, rows):
            self.got += [(r["step"], bool(r.get("eval"))) for r in rows]

    log = tmp_path / "metrics.jsonl"
    tail, sink = Tail(log), Sink()
    guarded = Guarded("test", 0, lambda: sink)
    guarded.open()
    assert tail.read() == []  # no file yet
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 2, "eval": tr')
    guarded.rows(tail.read())
    assert sink.got == [(2, False)]  # step 1 was there already; the torn row waits
    with open(log, "a") as f:
        f.write('ue, "val_f1": 0.5, "val_f1:PER": 0.25, "epoch": 0}\n')
    guarded.rows(tail.read())
    assert sink.got == [(2, False), (2, True)]
    tmp = tmp_path / "cut"  # a resume cuts the log back to its checkpoint, then goes on
    tmp.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.4}\n{"step": 3, "loss": 1.2}\n')
    tmp.replace(log)
    guarded.rows(tail.read())
    assert sink.got == [(2, False), (2, True), (3, False)]
    assert scalars({"step": 2, "eval": True, "val_f1": 0.5, "val_f1:PER": 0.25, "epoch": 0}) \
        == {"eval/f1": 0.5, "eval/f1_PER": 0.25}
    assert scalars({"step": 3, "loss": 1.2, "grad_norm": None, "lr": 1e-3}) == \
        {"train/loss": 1.2, "train/lr": 1e-3}
    # the health signals (trainer/monitor.py) come along
    assert scalars({"step": 10, "loss": 1.0, "grad_norm/layer.0": 2.0, "act/layer.0/std": 0.9}) \
        == {"train/loss": 1.0, "train/grad_norm/layer.0": 2.0, "train/act/layer.0/std": 0.9}
    assert scalars({"step": 10, "eval": True, "val_f1": 0.5, "eval_ms_per_sentence": 3.0,
                    "peak_memory_mb": 900.0}) == {"eval/f1": 0.5, "eval/ms_per_sentence": 3.0,
                                                  "eval/peak_memory_mb": 900.0}


# ----------------------------------------------------------------------------- a real study


def _state(run: Path) -> dict | None:
    try:
        return json.loads((run / "hpsearch-last-step.json").read_text())
    except (OSError, ValueError):
        return None


def _rows(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]


def _steps(rows: list[dict], ev: bool) -> list[int]:
    return sorted({r["step"] for r in rows if bool(r.get("eval")) == ev})


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, demo_dir):
    """A two-trial study killed (SIGKILL) in its first trial after TensorBoard got steps past
    the last checkpoint, then run again: the continuation replays those steps."""
    from hpsearch import study as driver

    tmp = tmp_path_factory.mktemp("tb")
    path = write_study(tmp, demo_dir, n_trials=2, trainer=SLOW, report_to=["tensorboard"])
    env = {"HPSEARCH_REPORT_INTERVAL": "0.1"}
    run0 = tmp / "out" / "tensorboard" / "trial-0000"
    proc = spawn_hpsearch("run", str(path), env=env)
    try:
        deadline = time.time() + 180
        while True:
            assert time.time() < deadline, "no checkpoint with later steps reported"
            assert proc.poll() is None, proc.communicate()
            ckpts = list_checkpoints(tmp / "out" / "trials" / "trial-0000" / "checkpoints")
            state = _state(run0)
            if ckpts and state and state["train"] >= int(ckpts[-1].name.split("-")[1]) + 2:
                break
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    written = _state(run0)

    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("HPSEARCH_REPORT_TO", raising=False)
        driver.run(load_study(path))
    return path, tmp / "out", written


@pytest.mark.slow
def test_every_trial_has_its_curves_at_its_steps_and_a_resumed_one_repeats_none(resumed):
    from optuna.trial import TrialState
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path, out, written = resumed
    trials = trials_of(path)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE,
                                         TrialState.COMPLETE]
    cont = trials[1]
    assert cont.system_attrs["hpsearch:retry_of"] == 0
    # The continuation trained again steps TensorBoard already had: they must not repeat.
    assert cont.user_attrs["resumed_from_step"] < written["train"]
    assert (out / "trials" / "trial-0001" / "tensorboard-run").read_text().strip() == \
        "trial-0000"
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == ["trial-0000",
                                                                      "trial-0002"]
    curves = {"trial-0000": _rows(out / "trials" / "trial-0000")
              + _rows(out / "trials" / "trial-0001"),
              "trial-0002": _rows(out / "trials" / "trial-0002")}
    for run, rows in curves.items():
        acc = EventAccumulator(str(out / "tensorboard" / run))
        acc.Reload()
        for tag, ev in (("train/loss", False), ("train/lr", False), ("eval/f1", True),
                        ("eval/loss", True), ("eval/f1_PER", True)):
            steps = [e.step for e in acc.Scalars(tag)]
            assert steps == _steps(rows, ev), (run, tag)  # each step once, in order
        last_eval = max((r for r in rows if r.get("eval")), key=lambda r: r["step"])
        assert acc.Scalars("eval/f1")[-1].value == pytest.approx(last_eval["val_f1"])


@pytest.mark.slow
def test_the_hparams_summary_lists_each_trials_parameters_state_and_value(resumed):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    path, out, _ = resumed
    trials = trials_of(path)
    for run, trial in (("trial-0000", trials[1]), ("trial-0002", trials[2])):
        acc = EventAccumulator(str(out / "tensorboard" / run))
        acc.Reload()
        content = acc.PluginTagToContent("hparams")
        exp = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
        assert {h.name for h in exp.hparam_infos} == {"learning_rate", "weight_decay", "state"}
        assert [m.name.tag for m in exp.metric_infos] == ["hparams/f1"]
        start = HParamsPluginData.FromString(
            content["_hparams_/session_start_info"]).session_start_info
        assert start.hparams["learning_rate"].number_value == trial.params["learning_rate"]
        assert start.hparams["weight_decay"].number_value == trial.params["weight_decay"]
        assert start.hparams["state"].string_value == "COMPLETE"
        assert acc.Scalars("hparams/f1")[-1].value == pytest.approx(trial.value)


@pytest.mark.slow
def test_hpsearch_tensorboard_serves_the_study_on_this_machine(resumed):
    path, _, _ = resumed
    port = free_port()
    proc = spawn_hpsearch("tensorboard", str(path), "--port", str(port))
    try:
        deadline, runs = time.time() + 120, None
        while time.time() < deadline and runs != ["trial-0000", "trial-0002"]:
            assert proc.poll() is None, proc.communicate()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs",
                                            timeout=5) as r:
                    runs = sorted(json.load(r))
            except OSError:
                time.sleep(0.3)
        assert runs == ["trial-0000", "trial-0002"]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"on http://127.0.0.1:{port}/" in out
