"""A thread that follows one trial's ``metrics.jsonl`` and forwards its new rows to the sinks.

The trainer writes one JSON row per logged step (``step, loss, lr, grad_norm, tokens_per_s,
epoch``) and one per evaluation (``eval: true``, ``val_*`` scores, ``val_f1:TYPE`` per entity
type) to the trial folder (trainer/trial_dir.py ``MetricsLog``). Reading that file, every
``interval`` seconds and once more at the end, keeps the training loop untouched: a solo trial,
a worker's trial process, a fused array's members and a continuation are followed alike.

A sink never raises into training: :class:`Guarded` catches its first error, warns once and
leaves it out for the rest of the trial.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("hpsearch.reporting")

#: Row keys that are not a curve.
_NOT_SCALARS = frozenset({"step", "eval"})
#: What an evaluation row carries besides its scores (trainer/monitor.py), by curve name.
_EVAL_HEALTH = {"eval_ms_per_sentence": "ms_per_sentence", "peak_memory_mb": "peak_memory_mb"}
_BAD_TAG = re.compile(r"[^-/\w.]")


class Sink(Protocol):
    #: Whether it takes a predecessor's rows too (a continuation's TensorBoard run is its
    #: origin's, whose curve the killed predecessor may have left unfinished).
    fills_gaps: bool

    def last_steps(self) -> dict[str, int]: ...
    def rows(self, rows: list[dict[str, Any]]) -> None: ...
    def end(self, end: Any) -> None: ...
    def close(self) -> None: ...


def clean_tag(text: str) -> str:
    """A name TensorBoard and MLflow both take as it is (``f1:PER`` -> ``f1_PER``)."""
    return _BAD_TAG.sub("_", text)


def kind_of(row: dict[str, Any]) -> str:
    return "eval" if row.get("eval") else "train"


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """A row's numbers by curve name: ``train/loss``, ``eval/f1``, ``eval/f1_PER``, ..."""
    out: dict[str, float] = {}
    ev = bool(row.get("eval"))
    for k, v in row.items():
        if k in _NOT_SCALARS or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if ev:
            if k.startswith("val_"):
                out[f"eval/{clean_tag(k[4:])}"] = float(v)
            elif k in _EVAL_HEALTH:
                out[f"eval/{_EVAL_HEALTH[k]}"] = float(v)
            # (its epoch is the step rows' already)
        else:
            out[f"train/{clean_tag(k)}"] = float(v)
    return out


class Tail:
    """The complete rows appended to a JSON-lines file since the last read.

    A file cut back or replaced (a resumed trial truncates its log to the checkpoint) is read
    again from its start; the sinks skip the steps they already have.
    """

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.inode: int | None = None

    def read(self) -> list[dict[str, Any]]:
        try:
            st = self.path.stat()
        except OSError:
            return []
        if st.st_ino != self.inode or st.st_size < self.offset:
            self.inode, self.offset = st.st_ino, 0
        if st.st_size == self.offset:
            return []
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(st.st_size - self.offset)
        except OSError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []  # a row still being written
        self.offset += end + 1
        rows = []
        for line in data[:end].splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
        return rows


class Guarded:
    """One sink of one trial: opened in the follower's thread, its errors a single warning.

    Rows reach the sink once per step and kind (a step row and an evaluation share a step):
    only steps after the last one it has, so a continuation adds to a curve, never repeats it.
    """

    def __init__(self, name: str, trial: int, make: Callable[[], Sink]):
        self.name, self.trial, self._make = name, trial, make
        self.sink: Sink | None = None
        self.failed = False
        self.last = {"train": -1, "eval": -1}

    @property
    def fills_gaps(self) -> bool:
        return self.sink is not None and self.sink.fills_gaps

    def _guard(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        if self.failed:
            return None
        try:
            return fn(*args)
        except Exception as e:
            self.failed = True
            first = (str(e).strip().splitlines() or [""])[0][:300]
            log.warning("warning: %s: trial %d is not reported there any more (%s failed: "
                        "%s: %s); the trial goes on", self.name, self.trial, what,
                        type(e).__name__, first)
            return None

    def open(self) -> None:
        self.sink = self._guard("opening", self._make)
        if self.sink is None:
            self.failed = True
            return
        last = self._guard("reading its last step", self.sink.last_steps)
        if last:
            self.last.update(last)

    def rows(self, rows: list[dict[str, Any]]) -> None:
        if self.failed or self.sink is None:
            return
        new = []
        for row in rows:
            kind = kind_of(row)
            if row["step"] > self.last[kind]:
                self.last[kind] = row["step"]
                new.append(row)
        if new:
            self._guard("sending steps", self.sink.rows, new)

    def end(self, end: Any) -> None:
        if self.sink is not None and end is not None:
            self._guard("recording the end", self.sink.end, end)

    def close(self) -> None:
        if self.sink is not None:
            sink, self.sink = self.sink, None
            try:
                sink.close()
            except Exception:
                pass


class Follower(threading.Thread):
    """Opens the sinks, forwards new rows every ``interval`` seconds, and at ``finish``
    forwards the last rows, records the trial's end and closes the sinks."""

    def __init__(self, metrics: Path, sinks: list[Guarded], *, before: Path | None,
                 interval: float, name: str):
        super().__init__(name=name, daemon=True)
        self.tail = Tail(metrics)
        self.before = before
        self.sinks = sinks
        self.interval = interval
        self._done = threading.Event()
        self._end: Any = None

    def finish(self, end: Any) -> None:
        self._end = end
        self._done.set()

    def _forward(self, rows: list[dict[str, Any]], sinks: list[Guarded]) -> None:
        if rows:
            for sink in sinks:
                sink.rows(rows)

    def run(self) -> None:
        try:
            for sink in self.sinks:
                sink.open()
            if self.before is not None:  # what a killed predecessor wrote after our last read
                self._forward(Tail(self.before).read(), [s for s in self.sinks if s.fills_gaps])
            while not self._done.wait(self.interval):
                self._forward(self.tail.read(), self.sinks)
            self._forward(self.tail.read(), self.sinks)
            for sink in self.sinks:
                sink.end(self._end)
        except Exception as e:  # a bug here must not take the trial with it
            log.warning("warning: reporting trial metrics stopped: %s: %s", type(e).__name__, e)
        finally:
            for sink in self.sinks:
                sink.close()
