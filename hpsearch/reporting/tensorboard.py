"""TensorBoard: one run folder per trial, ``<output_dir>/tensorboard/trial-NNNN/``.

Scalars per logged step (``train/loss``, ``train/lr``, ``train/grad_norm``,
``train/tokens_per_s``, ``train/epoch``) and per evaluation (``eval/f1``, ``eval/precision``,
``eval/recall``, ``eval/accuracy``, ``eval/loss``, ``eval/macro_f1``, ``eval/weighted_f1``,
``eval/f1_TYPE`` per entity type); at the trial's end the HParams plugin's summaries (its
parameters, its state, and its value as ``hparams/METRIC``), so TensorBoard's HParams tab
compares the trials of a study. A continuation writes to its predecessor's run: the last step
written there is kept in ``hpsearch-last-step.json`` (replaced atomically before and after each
flush), and only later steps are added, so a resumed curve goes on without repeating a step. A
process killed during a flush leaves that file marked unclean: the next one reads the steps
back from the event files themselves.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from hpsearch.errors import ConfigError
from hpsearch.reporting.follow import clean_tag, kind_of, scalars

LAST_STEP = "hpsearch-last-step.json"
#: The trial states in the HParams tab's filter.
STATES = ["COMPLETE", "PRUNED", "FAIL"]


class TensorBoardSink:
    fills_gaps = True

    def __init__(self, run_dir: Path, metric: str):
        from torch.utils.tensorboard import SummaryWriter

        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir, self.metric = run_dir, metric
        self.last = {"train": -1, "eval": -1}
        try:
            saved = json.loads((run_dir / LAST_STEP).read_text())
        except (OSError, ValueError):
            saved = None
        if isinstance(saved, dict) and saved.get("clean", True):
            self.last.update({k: int(saved[k]) for k in self.last if k in saved})
        elif saved is not None:  # killed while writing: what made it to disk says
            self.last.update(steps_written(run_dir))
        # Flushed by us after each batch of rows, before the last step is written down.
        self.writer = SummaryWriter(log_dir=str(run_dir), max_queue=10_000, flush_secs=3600)

    def last_steps(self) -> dict[str, int]:
        return dict(self.last)

    def rows(self, rows: list[dict[str, Any]]) -> None:
        self._save_last(clean=False)
        for row in rows:
            step = row["step"]
            for tag, value in scalars(row).items():
                self.writer.add_scalar(tag, value, step)
            kind = kind_of(row)
            self.last[kind] = max(self.last[kind], step)
        self.writer.flush()
        self._save_last(clean=True)

    def _save_last(self, clean: bool) -> None:
        tmp = self.run_dir / f".{LAST_STEP}.tmp"
        tmp.write_text(json.dumps({**self.last, "clean": clean}))
        os.replace(tmp, self.run_dir / LAST_STEP)

    def end(self, end) -> None:
        """The HParams summaries: the trial's parameters and state, its value as a metric."""
        if end.state not in STATES:
            return  # interrupted: its continuation writes them when it ends
        from torch.utils.tensorboard.summary import hparams

        tag = f"hparams/{clean_tag(self.metric)}"
        hp = {k: _hparam(v) for k, v in end.params.items()}
        hp["state"] = end.state
        exp, ssi, _ = hparams(hp, {tag: 0.0}, hparam_domain_discrete={"state": STATES})
        step = max(0, *self.last.values())
        if end.value is not None:
            self.writer.add_scalar(tag, float(end.value), step)
        for summary in (exp, ssi, _session_end(end.state)):
            self.writer.file_writer.add_summary(summary, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def steps_written(run_dir: Path) -> dict[str, int]:
    """The last step of each kind (``train/``, ``eval/`` curves) in a run's event files."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    last = {"train": -1, "eval": -1}
    for path in run_dir.glob("events.out.tfevents.*"):
        try:
            for event in EventFileLoader(str(path)).Load():
                for v in event.summary.value:
                    kind = v.tag.split("/", 1)[0]
                    if kind in last:
                        last[kind] = max(last[kind], event.step)
        except Exception:  # a torn record ends what can be read of that file
            continue
    return last


def _hparam(v: Any) -> Any:
    return v if isinstance(v, (bool, int, float, str)) else str(v)


def _session_end(state: str):
    """The session-end summary with the trial's status (torch's always says success)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

    status = api_pb2.Status.Value("STATUS_FAILURE" if state == "FAIL" else "STATUS_SUCCESS")
    content = HParamsPluginData(session_end_info=SessionEndInfo(status=status),
                                version=metadata.PLUGIN_DATA_VERSION)
    smd = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=smd)])


def serve(cfg, port: int = 6006) -> None:
    """TensorBoard on ``<output_dir>/tensorboard``, on 127.0.0.1, until interrupted (blocks)."""
    logdir = cfg.out / "tensorboard"
    try:
        from tensorboard import main as tb_main
    except ImportError:
        raise ConfigError("hpsearch tensorboard needs the tensorboard package: "
                          "pip install 'hpsearch[tensorboard]'") from None
    if not logdir.is_dir():
        raise ConfigError(f"{logdir}: no TensorBoard runs yet; run the study with "
                          "report_to: [tensorboard] (or HPSEARCH_REPORT_TO=tensorboard)")
    print(f"TensorBoard for study '{cfg.name}' ({logdir}) on http://127.0.0.1:{port}/ "
          "(Ctrl-C to stop)", flush=True)
    sys.argv = ["tensorboard", "--logdir", str(logdir), "--host", "127.0.0.1",
                "--port", str(port)]
    tb_main.run_main()
