"""The study file as a whole, and the derived things (folders, storage, a trial's trainer)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from hpsearch.config.backends import Backend, OptunaBackend
from hpsearch.config.base import Strict
from hpsearch.config.hints import did_you_mean
from hpsearch.config.pruners import NoPruner, Pruner
from hpsearch.config.space import CategoricalParam, FloatParam, IntParam, Param
from hpsearch.config.trainer import TUNABLE, UNFUSABLE, TrainerConfig

#: What a study can optimise, besides ``f1:TYPE``.
METRICS = ("f1", "macro_f1", "weighted_f1", "precision", "recall", "accuracy", "loss")


class MlflowSettings(Strict):
    """Where ``report_to: [mlflow]`` sends the trials (see hpsearch/reporting/)."""

    tracking_uri: str | None = Field(
        default=None, description="default: $MLFLOW_TRACKING_URI, else sqlite:///<output_dir>"
        "/mlflow.db")
    experiment: str | None = Field(default=None, description="default: the study's name")


class ConfirmSettings(Strict):
    """After the search, train the ``top_k`` best settings ``seeds`` more times (confirm.py)."""

    top_k: int = Field(ge=1, description="finalists: the best search trials trained again")
    seeds: int = Field(ge=1, description="more trainer seeds per finalist")
    select: Literal["mean", "min"] = Field(
        default="mean", description="the winner: best mean over its seeds, or best worst case")


class StudyConfig(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    storage: str | None = Field(
        default=None, description="Optuna storage URL; default sqlite under output_dir"
    )
    direction: Literal["maximize", "minimize"] = "maximize"
    metric: str = Field(
        default="f1",
        description="micro f1 (entity level), macro_f1, weighted_f1, precision, recall, "
        "accuracy (tokens), loss, or f1:TYPE, one entity type's F1 (e.g. f1:PER)",
    )
    n_trials: int = Field(ge=1, description="total across runs and workers")
    timeout: float | None = Field(default=None, gt=0, description="seconds for one run")
    seed: int = 0
    backend: Backend = Field(default_factory=OptunaBackend)
    pruner: Pruner = Field(default_factory=lambda: NoPruner(name="none"))
    search_space: dict[str, Param] = Field(min_length=1)
    trainer: TrainerConfig
    output_dir: str | None = Field(default=None, description="default runs/<name>")
    keep: Literal["best", "all", "none"] = "best"
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list, description="points evaluated first, in order (e.g. the HF "
        "defaults): each a mapping of search-space parameters to values")
    on_oom: Literal["fail", "halve_batch"] = Field(
        default="fail", description="halve_batch: retry an out-of-memory trial once, half batch"
    )
    # How a run is watched, not what it computes: not part of study_fingerprint, so it may
    # change between runs of one study. $HPSEARCH_REPORT_TO overrides report_to.
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list, description="where each trial's curves and end are reported: "
        "tensorboard (<output_dir>/tensorboard), mlflow")
    mlflow: MlflowSettings | None = None
    # Not part of study_fingerprint either: raising top_k later runs only what is new.
    confirm: ConfirmSettings | None = None

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if v in METRICS or re.fullmatch(r"f1:[^\s:]+", v):
            return v
        raise ValueError(f"{v!r} is not one of {', '.join(METRICS)}, or f1:TYPE (one entity "
                         f"type's F1, e.g. f1:PER){did_you_mean(v, METRICS)}")

    @field_validator("backend", mode="before")
    @classmethod
    def _backend_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("pruner", mode="before")
    @classmethod
    def _pruner_shorthand(cls, v: Any) -> Any:
        if v is None:
            return {"name": "none"}
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _space_names(self) -> StudyConfig:
        for name, param in self.search_space.items():
            if name not in TUNABLE:
                raise ValueError(
                    f"search_space.{name}: not a tunable trainer field "
                    f"(tunable: {', '.join(sorted(TUNABLE))}){did_you_mean(name, sorted(TUNABLE))}"
                )
            try:
                self.trainer.model_validate(
                    {**self.trainer.model_dump(), name: _probe_value(param)}
                )
            except ValidationError as e:
                raise ValueError(f"search_space.{name}: {e.errors()[0]['msg']}") from None
        self.check_fusable()
        for i, point in enumerate(self.enqueue):
            check_point(point, self.search_space, f"enqueue[{i}]")
        return self

    def check_fusable(self) -> None:
        """Members of a fused array share batch shapes and which weights train; the fused
        loop takes one forward and backward per update and keeps every activation."""
        fuse = self.trainer.fuse
        if fuse == 1:
            return
        for name in self.search_space:
            if name in UNFUSABLE:
                raise ValueError(
                    f"search_space.{name}: it changes the batches or the weights that train, "
                    f"so trials cannot be fused (trainer.fuse: {fuse}); use fuse: 1 to search it"
                )
        t = self.trainer
        if t.devices_per_trial > 1:
            raise ValueError(f"trainer.devices_per_trial: fused trials (trainer.fuse: {fuse}) "
                             "run on one device; use fuse: 1 with devices_per_trial")
        fixed = {"gradient_accumulation_steps": t.gradient_accumulation_steps > 1,
                 "gradient_checkpointing": t.gradient_checkpointing}
        for name, is_set in fixed.items():
            if name in self.search_space or is_set:
                where = "search_space" if name in self.search_space else "trainer"
                raise ValueError(
                    f"{where}.{name}: fused trials (trainer.fuse: {fuse}) train without it; "
                    f"use fuse: 1 with {name}"
                )

    # Derived locations: one place decides where a study keeps its things.
    @property
    def out(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.name)

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out / 'study.db').as_posix()}"

    def trainer_for(self, params: dict[str, Any]) -> TrainerConfig:
        """The trainer config of one trial: the study's defaults with the sampled values in.

        Step counts in a study file are steps at the study's own batch size. A trial with
        half the batch (a searched ``max_tokens``, an out-of-memory retry) takes twice the
        steps for the same data, so its evaluations, checkpoints and step limit come at twice
        the steps: every trial is evaluated after the same amount of data.
        """
        merged = {**self.trainer.model_dump(), **params}
        if merged.get("seed") is None:
            merged["seed"] = self.seed
        trial = TrainerConfig.model_validate(merged)
        scale = self.step_scale(trial)
        if scale == 1:
            return trial
        return trial.model_copy(update={
            k: max(1, round(getattr(trial, k) * scale))
            for k in ("eval_every", "checkpoint_every", "max_steps")
            if getattr(trial, k) and k not in params
        })

    def step_scale(self, trial: TrainerConfig) -> float:
        """A trial's optimizer steps per step of the study's batch size (1: the same batches)."""
        base = self.trainer
        if base.batch_size and trial.batch_size:
            return base.batch_size / trial.batch_size
        if base.batch_size is None and trial.batch_size is None:
            return base.max_tokens / trial.max_tokens
        return 1.0  # fixed rows against a token budget: no common measure


def _probe_value(param: FloatParam | IntParam | CategoricalParam) -> Any:
    """A value inside the declared range, to check its type against the trainer field."""
    if isinstance(param, CategoricalParam):
        return param.choices[0]
    return param.low


def check_point(point: dict[str, Any], space: dict[str, Any], where: str) -> None:
    """A point to evaluate: searched parameters only, each inside its declared range."""
    for name, value in point.items():
        param = space.get(name)
        if param is None:
            raise ValueError(f"{where}.{name}: not in the search space "
                             f"({', '.join(space)})")
        if isinstance(param, CategoricalParam):
            if value not in param.choices:
                raise ValueError(f"{where}.{name}: {value!r} is not one of {param.choices}")
        elif not isinstance(value, (int, float)) or isinstance(value, bool) or \
                not param.low <= value <= param.high:
            raise ValueError(f"{where}.{name}: {value!r} is outside [{param.low}, {param.high}]")
