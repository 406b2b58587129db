"""Reading a study file: YAML, ${ENV} expansion, and one ConfigError line for any problem."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from hpsearch.config.study import StudyConfig
from hpsearch.config.trainer import RUN_ONLY
from hpsearch.errors import ConfigError

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
        exclude={"trainer": set(RUN_ONLY)},
    )


def with_fuse(cfg: StudyConfig, fuse: int, source: str) -> StudyConfig:
    """The study with ``trainer.fuse`` set from the command line, checked like the file."""
    data = cfg.model_dump(mode="json", exclude_unset=True)
    data.setdefault("trainer", {})["fuse"] = fuse
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: --fuse {fuse}: {format_validation_error(e)}") from None
