"""The study file (study.yaml): typed, strict, and checked before anything is written.

A study runs for hours; a typo found after the first trial costs that trial. Every model here
forbids unknown keys, and :func:`load_study` turns any problem into one :class:`ConfigError` line
that names the file and the field, so the CLI can print it and exit 2 without a traceback.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hpsearch.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- search space


class FloatParam(_Strict):
    type: Literal["float"] = "float"
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> FloatParam:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite numbers")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low:g}) must be < high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"low ({self.low:g}) must be > 0 when log: true")
        if self.log and self.step is not None:
            raise ValueError("step cannot be combined with log: true")
        if self.step is not None and self.step <= 0:
            raise ValueError("step must be > 0")
        return self


class IntParam(_Strict):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _bounds(self) -> IntParam:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"low ({self.low}) must be > 0 when log: true")
        if self.log and self.step != 1:
            raise ValueError("step cannot be combined with log: true")
        if self.step <= 0:
            raise ValueError("step must be > 0")
        return self


class CategoricalParam(_Strict):
    type: Literal["categorical"]
    choices: list[bool | int | float | str] = Field(min_length=1)


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


# --------------------------------------------------------------------------- backends


class OptunaBackend(_Strict):
    """Optuna's own samplers; `tpe` is the default because it copes with pruned trials well."""

    name: Literal["optuna"] = "optuna"
    sampler: Literal["tpe", "random", "gp", "cmaes", "qmc"] = "tpe"
    n_startup_trials: int | None = Field(default=None, ge=0)
    multivariate: bool = True


class BayesBackend(_Strict):
    """The bayesian-optimization package's GP, seen by Optuna as a sampler."""

    name: Literal["bayes"]
    acquisition: Literal["ucb", "ei", "poi"] = "ucb"
    kappa: float = Field(default=2.576, gt=0)
    xi: float = Field(default=0.01, ge=0)
    exploration_decay: float | None = Field(default=None, gt=0, le=1)
    exploration_decay_delay: int | None = Field(default=None, ge=0)
    n_random_init: int = Field(default=5, ge=1)
    pruned_trials: Literal["last_value", "ignore"] = "last_value"
    constant_liar: bool = True


Backend = Annotated[OptunaBackend | BayesBackend, Field(discriminator="name")]


# --------------------------------------------------------------------------- pruners


class NoPruner(_Strict):
    name: Literal["none"]


class MedianPruner(_Strict):
    name: Literal["median"]
    n_startup_trials: int = Field(default=3, ge=0)
    n_warmup_steps: int = Field(default=0, ge=0)
    interval_steps: int = Field(default=1, ge=1)
    n_min_trials: int = Field(default=1, ge=1)


class PercentilePruner(_Strict):
    name: Literal["percentile"]
    percentile: float = Field(default=25.0, ge=0, le=100)
    n_startup_trials: int = Field(default=3, ge=0)
    n_warmup_steps: int = Field(default=0, ge=0)
    interval_steps: int = Field(default=1, ge=1)
    n_min_trials: int = Field(default=1, ge=1)


class SuccessiveHalvingPruner(_Strict):
    name: Literal["successive_halving"]
    min_resource: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    reduction_factor: int = Field(default=3, ge=2)
    min_early_stopping_rate: int = Field(default=0, ge=0)


class HyperbandPruner(_Strict):
    name: Literal["hyperband"]
    min_resource: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    max_resource: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    reduction_factor: int = Field(default=3, ge=2)


class ThresholdPruner(_Strict):
    name: Literal["threshold"]
    lower: float | None = None
    upper: float | None = None
    n_warmup_steps: int = Field(default=0, ge=0)
    interval_steps: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _one_bound(self) -> ThresholdPruner:
        if self.lower is None and self.upper is None:
            raise ValueError("give lower and/or upper")
        return self


class WilcoxonPruner(_Strict):
    name: Literal["wilcoxon"]
    p_threshold: float = Field(default=0.1, gt=0, lt=1)
    n_startup_steps: int = Field(default=2, ge=0)


_InnerPruner = Annotated[
    NoPruner
    | MedianPruner
    | PercentilePruner
    | SuccessiveHalvingPruner
    | HyperbandPruner
    | ThresholdPruner
    | WilcoxonPruner,
    Field(discriminator="name"),
]


class PatientPruner(_Strict):
    name: Literal["patient"]
    wrapped: _InnerPruner | None = None
    patience: int = Field(default=2, ge=0)
    min_delta: float = Field(default=0.0, ge=0)


Pruner = Annotated[_InnerPruner | PatientPruner, Field(discriminator="name")]


# --------------------------------------------------------------------------- trainer


class ScratchModel(_Strict):
    """A BERT built from a config, with a WordPiece vocabulary learnt from the training data.

    Lets a study (and the test suite) run with no downloaded weights at all.
    """

    hidden_size: int = Field(default=64, ge=8)
    num_hidden_layers: int = Field(default=2, ge=1)
    num_attention_heads: int = Field(default=2, ge=1)
    intermediate_size: int = Field(default=128, ge=8)
    vocab_size: int = Field(default=2000, ge=100)
    max_position_embeddings: int = Field(default=512, ge=16)
    hidden_dropout_prob: float = Field(default=0.1, ge=0, lt=1)
    attention_probs_dropout_prob: float = Field(default=0.1, ge=0, lt=1)
    lowercase: bool = False

    @model_validator(mode="after")
    def _heads(self) -> ScratchModel:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        return self


class EarlyStopping(_Strict):
    patience: int = Field(ge=1)
    min_delta: float = Field(default=0.0, ge=0)
    min_epochs: int = Field(default=0, ge=0)


class TrainerConfig(_Strict):
    """Everything one trial's training run needs; searched parameters override these fields."""

    model: str = Field(
        default="scratch",
        description="'scratch', a hub name, a local HF folder, or 'package:NAME' for a model "
        "folder shipped inside an installed Python package",
    )
    scratch: ScratchModel = Field(default_factory=ScratchModel)
    data_dir: str = Field(description="a data folder, or 'demo' for the generated demo set")
    data_format: Literal["auto", "bert-ner", "conll"] = "auto"
    train_limit: int | None = Field(default=None, ge=1, description="use the first N sentences")
    val_limit: int | None = Field(default=None, ge=1)
    max_length: int = Field(default=128, ge=8, description="sub-word tokens per window")

    learning_rate: float = Field(default=5e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.1, ge=0, le=1)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    adam_beta1: float = Field(default=0.9, gt=0, lt=1)
    adam_beta2: float = Field(default=0.999, gt=0, lt=1)
    adam_epsilon: float = Field(default=1e-8, gt=0)
    dropout: float | None = Field(default=None, ge=0, lt=1)
    full_finetuning: bool = True

    max_epochs: int = Field(default=3, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    max_tokens: int = Field(default=4096, ge=16, description="token budget of one batch")
    batch_size: int | None = Field(
        default=None, ge=1, description="fixed sentences per batch instead of a token budget"
    )
    eval_every: int | None = Field(default=None, ge=1, description="steps; default once an epoch")
    checkpoint_every: int | None = Field(
        default=None, ge=1, description="steps between checkpoints, besides one at every eval"
    )
    eval_batch_tokens: int = Field(default=16384, ge=16)
    early_stopping: EarlyStopping | None = None

    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    compile: bool = False
    fast_path: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="CUDA: static shapes (windows padded to `buckets`, fixed rows per bucket) "
        "and torch.compile(mode='reduce-overhead'), i.e. CUDA graphs. CPU: dropout masks from a "
        "faster generator and leaner attention (trainer/kernels.py); `on` adds the buckets. "
        "auto = graphs on CUDA, kernels on CPU; off = the model exactly as transformers runs it",
    )
    buckets: list[Annotated[int, Field(ge=8)]] = Field(
        default=[64, 128, 256], min_length=1, description="padded widths of the fast path"
    )
    num_threads: int | None = Field(default=None, ge=1)
    seed: int | None = None
    progress: bool = True


#: Trainer fields a search space may tune; the rest describe the run, not its hyperparameters.
TUNABLE = frozenset(
    {
        "learning_rate",
        "weight_decay",
        "warmup_ratio",
        "schedule",
        "max_grad_norm",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "dropout",
        "max_epochs",
        "max_tokens",
        "batch_size",
        "full_finetuning",
    }
)


# --------------------------------------------------------------------------- study


class StudyConfig(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    storage: str | None = Field(
        default=None, description="Optuna storage URL; default sqlite under output_dir"
    )
    direction: Literal["maximize", "minimize"] = "maximize"
    metric: Literal["f1", "precision", "recall", "accuracy", "loss"] = "f1"
    n_trials: int = Field(ge=1, description="total across runs and workers")
    timeout: float | None = Field(default=None, gt=0, description="seconds for one run")
    seed: int = 0
    backend: Backend = Field(default_factory=OptunaBackend)
    pruner: Pruner = Field(default_factory=lambda: NoPruner(name="none"))
    search_space: dict[str, Param] = Field(min_length=1)
    trainer: TrainerConfig
    output_dir: str | None = Field(default=None, description="default runs/<name>")
    keep: Literal["best", "all", "none"] = "best"
    on_oom: Literal["fail", "halve_batch"] = Field(
        default="fail", description="halve_batch: retry an out-of-memory trial once, half batch"
    )

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
                    f"(tunable: {', '.join(sorted(TUNABLE))})"
                )
            try:
                self.trainer.model_validate(
                    {**self.trainer.model_dump(), name: _probe_value(param)}
                )
            except ValidationError as e:
                raise ValueError(f"search_space.{name}: {e.errors()[0]['msg']}") from None
        return self

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


# --------------------------------------------------------------------------- loading

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, where: str) -> str:
    """`${VAR}` / `${VAR:-default}`: passwords and machine-specific paths stay out of files."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable ${{{name}}} is not set")

    return _ENV.sub(sub, text)


def _key(k: Any) -> str:
    """A key as the user can find it again: plain names as they are, odd ones quoted."""
    text = str(k)
    return text if text.isprintable() and text.strip() == text and text else repr(k)


def _expand_all(data: Any, where: str) -> Any:
    if isinstance(data, str):
        return expand_env(data, where)
    if isinstance(data, dict):
        return {k: _expand_all(v, f"{where}.{_key(k)}" if where else _key(k))
                for k, v in data.items()}
    if isinstance(data, list):
        return [_expand_all(v, where) for v in data]
    return data


def _loc(loc: tuple[Any, ...]) -> str:
    # pydantic puts the discriminator's tag in the location (backend.bayes.kappa); users
    # wrote backend.kappa, so tags of tagged unions are dropped.
    parts = [_key(p) for p in loc if not (isinstance(p, str) and p in _UNION_TAGS)]
    return ".".join(parts)


_UNION_TAGS = {
    "float", "int", "categorical", "optuna", "bayes", "none", "median", "percentile",
    "successive_halving", "hyperband", "threshold", "wilcoxon", "patient",
}


def format_validation_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = _loc(err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    if err["type"] == "missing":
        return f"{where}: required field is missing"
    msg = err["msg"].removeprefix("Value error, ")
    more = f" (and {len(e.errors()) - 1} more problem(s))" if len(e.errors()) > 1 else ""
    return f"{where}: {msg}{more}" if where else f"{msg}{more}"


def parse_study(data: Any, source: str = "<study>") -> StudyConfig:
    """Validate an already-parsed mapping; every failure is one ConfigError line."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of study settings at the top level")
    try:
        data = {k: _expand_all(v, _key(k)) for k, v in data.items()}
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    try:
        cfg = StudyConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {format_validation_error(e)}") from None
    except (TypeError, ValueError, RecursionError) as e:  # e.g. non-string keys deep inside
        raise ConfigError(f"{source}: {e}") from None
    env_storage = os.environ.get("HPSEARCH_STORAGE")
    if env_storage:
        cfg.storage = env_storage
    return cfg


def load_study(path: str | Path, *, check_paths: bool = True) -> StudyConfig:
    """Read and validate a study file. Nothing is created on disk."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such study file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{line}: invalid YAML: {problem}") from None
    cfg = parse_study(data, str(path))
    if check_paths:
        check_data_dir(cfg, str(path))
    return cfg


def check_data_dir(cfg: StudyConfig, source: str) -> None:
    d = cfg.trainer.data_dir
    if d == "demo":
        return
    if not Path(d).is_dir():
        raise ConfigError(f"{source}: trainer.data_dir: directory '{d}' does not exist")


def study_fingerprint(cfg: StudyConfig) -> dict[str, Any]:
    """What must not change between runs of one study: the space, the trainer, the objective.

    n_trials, timeout, storage and output_dir may change freely: raising n_trials is how a user
    asks for more trials.
    """
    return cfg.model_dump(
        mode="json",
        include={"direction", "metric", "search_space", "trainer", "backend"},
        exclude={"trainer": {"progress", "num_threads", "device", "fast_path", "buckets"}},
    )
