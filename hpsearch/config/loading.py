"""Reading a study file: YAML, ${ENV} expansion, and one ConfigError line per problem."""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from hpsearch.config.hints import closest, did_you_mean
from hpsearch.config.study import StudyConfig
from hpsearch.config.trainer import RECORDED_IF_SET, RUN_ONLY, TrainerConfig
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


class ConfigProblems(ConfigError):
    """Several problems in one study file, one line each, so that one edit fixes them all.

    ``lines`` holds the lines to print; ``str()`` is the same lines joined with newlines, and
    is accepted back in their place (that is how a pickled error, from a worker, comes back).
    """

    def __init__(self, lines: list[str] | str):
        if isinstance(lines, str):
            lines = lines.split("\n")
        self.lines = [" ".join(str(line).splitlines()) for line in lines]
        super().__init__(self.lines[0])
        self.args = ("\n".join(self.lines),)


def config_error(prefix: str, problems: list[str]) -> ConfigError:
    """One problem as the one line it always was; several as :class:`ConfigProblems`."""
    lines = [f"{prefix}: {p}" if prefix else p for p in problems]
    return ConfigError(lines[0]) if len(lines) == 1 else ConfigProblems(lines)


# The models a ValidationError can come from, by the title pydantic gives it.
_ROOTS: dict[str, type[BaseModel]] = {m.__name__: m for m in (StudyConfig, TrainerConfig)}

# The fields that tell the members of a tagged union apart (backend, pruner, a space's param).
_TAG_FIELDS = ("name", "type")

_UNION_TAGS = {
    "float", "int", "categorical", "optuna", "bayes", "none", "median", "percentile",
    "successive_halving", "hyperband", "threshold", "wilcoxon", "patient",
}


def _members(tp: Any) -> list[Any]:
    """The alternatives of an annotation: Annotated and Optional unwrapped, unions flattened."""
    if get_origin(tp) is Annotated:
        return _members(get_args(tp)[0])
    if get_origin(tp) in (Union, UnionType):
        return [m for a in get_args(tp) for m in _members(a) if m is not type(None)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _tags(tp: Any) -> list[str]:
    """The tags of a tagged union of models, in the order they are declared."""
    out: list[str] = []
    for m in _members(tp):
        for name in _TAG_FIELDS if _is_model(m) else ():
            field = m.model_fields.get(name)
            if field is not None and get_origin(field.annotation) is Literal:
                out += [str(a) for a in get_args(field.annotation)]
                break
    return out


def _step(tp: Any, part: Any) -> tuple[Any, bool]:
    """The annotation one location part further down, and whether the user never wrote that
    part: pydantic puts a tagged union's tag (backend.bayes.kappa) or a plain union's branch
    (min_resource.constrained-int) into the location, where users wrote backend.kappa."""
    members = _members(tp)
    if len(members) > 1:
        for m in members:
            if _is_model(m) and str(part) in _tags(m):
                return m, True
        return None, True
    tp = members[0]
    if _is_model(tp):
        field = tp.model_fields.get(part) if isinstance(part, str) else None
        return (field.annotation if field else None), False
    if get_origin(tp) is dict:
        return get_args(tp)[1], False
    if get_origin(tp) is list:
        return get_args(tp)[0], False
    return None, False


def _walk(root: type[BaseModel] | None, loc: tuple[Any, ...]) -> tuple[list[str], Any]:
    """The location as the user wrote it, and the annotation found there (None if unknown)."""
    shown: list[str] = []
    tp: Any = root
    for part in loc:
        if tp is None:  # off the known models: fall back to dropping the known tags
            if not (isinstance(part, str) and part in _UNION_TAGS):
                shown.append(_key(part))
            continue
        tp, hidden = _step(tp, part)
        if not hidden:
            shown.append(_key(part))
    return shown, tp


def _fields(tp: Any) -> list[str]:
    return list(tp.model_fields) if _is_model(tp) else []


def _choices(values: list[str]) -> str:
    return ", ".join(values)


def _problem(err: dict[str, Any], root: type[BaseModel] | None) -> tuple[list[str], str]:
    """One pydantic error as (the location the user wrote, the message in plain words)."""
    shown, tp = _walk(root, err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        _, parent = _walk(root, err["loc"][:-1])
        return shown, "unknown key" + did_you_mean(str(err["loc"][-1]), _fields(parent))
    if kind == "missing":
        return shown, "required field is missing"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag_field = str(err.get("ctx", {}).get("discriminator", "name")).strip("'")
        tags = _tags(tp)
        given = err.get("input")
        if kind == "union_tag_invalid" and tags:
            tag = err["ctx"]["tag"]
            return shown + [tag_field], (f"{tag!r} is not one of {_choices(tags)}"
                                         + did_you_mean(tag, tags))
        if kind == "union_tag_not_found" and tags and isinstance(given, dict):
            near = closest(tag_field, [k for k in given if isinstance(k, str)])
            if near is not None:
                return shown + [_key(near)], f"unknown key; did you mean {tag_field}?"
            return shown + [tag_field], f"required field is missing (one of {_choices(tags)})"
    if kind == "literal_error" and get_origin(tp) is Literal:
        options = [str(a) for a in get_args(tp)]
        given = err.get("input")
        hint = did_you_mean(given, options) if isinstance(given, str) else ""
        return shown, f"{given!r} is not one of {_choices(options)}{hint}"
    return shown, err["msg"].removeprefix("Value error, ")


def _merge(msgs: list[str]) -> str:
    """The messages of a plain union's branches: `Input should be >= 1 or 'auto'`."""
    head = "Input should be "
    if len(msgs) > 1 and all(m.startswith(head) for m in msgs):
        return head + " or ".join(m.removeprefix(head) for m in msgs)
    return "; ".join(dict.fromkeys(msgs))


def validation_problems(e: ValidationError) -> list[str]:
    """Every problem pydantic found, one `location: message` line each, as the user wrote it.

    A misspelt key shows up twice in pydantic's list: as an unknown key and as the required
    field it was meant to be. Only the first is a problem to the user, with the hint to fix it.
    """
    root = _ROOTS.get(e.title)
    found: dict[str, list[str]] = {}
    missing: list[tuple[list[str], str]] = []
    meant: set[str] = set()
    for err in e.errors():
        shown, msg = _problem(err, root)
        if err["type"] == "missing":
            missing.append((shown, msg))
        elif err["type"] == "extra_forbidden":
            _, parent = _walk(root, err["loc"][:-1])
            best = closest(str(err["loc"][-1]), _fields(parent))
            if best is not None:
                meant.add(".".join([*shown[:-1], best]))
        found.setdefault(".".join(shown), []).append(msg)
    for shown, _msg in missing:
        if ".".join(shown) in meant:
            found.pop(".".join(shown), None)
    return [f"{where}: {_merge(msgs)}" if where else _merge(msgs)
            for where, msgs in found.items()]


def format_validation_error(e: ValidationError) -> str:
    """Every problem of ``e``, one line each (see :func:`validation_problems`)."""
    return "\n".join(validation_problems(e))


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
        raise config_error(source, validation_problems(e)) from None
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
    if d == "demo" or cfg.trainer.data_format == "hf":  # hf: a hub name is no folder
        return
    if not Path(d).is_dir():
        raise ConfigError(f"{source}: trainer.data_dir: directory '{d}' does not exist")


def study_fingerprint(cfg: StudyConfig) -> dict[str, Any]:
    """What must not change between runs of one study: the space, the trainer, the objective.

    n_trials, timeout, storage and output_dir may change freely: raising n_trials is how a user
    asks for more trials.
    """
    at_default = {k for k in RECORDED_IF_SET
                  if getattr(cfg.trainer, k) == TrainerConfig.model_fields[k].default}
    return cfg.model_dump(
        mode="json",
        include={"direction", "metric", "search_space", "trainer", "backend"},
        exclude={"trainer": set(RUN_ONLY) | at_default},
    )


def with_overrides(cfg: StudyConfig, source: str, *, n_trials: int | None = None,
                   fuse: int | None = None) -> StudyConfig:
    """The study with command-line values in place of the file's, checked like the file.

    ``n_trials`` is the study's total for this run (``--n-trials``), ``fuse`` its
    ``trainer.fuse`` (``--fuse``); None keeps the file's value.
    """
    flags = [f"--n-trials {n_trials}"] if n_trials is not None else []
    flags += [f"--fuse {fuse}"] if fuse is not None else []
    if not flags:
        return cfg
    data = cfg.model_dump(mode="json", exclude_unset=True)
    if n_trials is not None:
        data["n_trials"] = n_trials
    if fuse is not None:
        data.setdefault("trainer", {})["fuse"] = fuse
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as e:
        raise config_error(f"{source}: {' '.join(flags)}", validation_problems(e)) from None


def with_fuse(cfg: StudyConfig, fuse: int, source: str) -> StudyConfig:
    """The study with ``trainer.fuse`` set from the command line, checked like the file."""
    return with_overrides(cfg, source, fuse=fuse)
