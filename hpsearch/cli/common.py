"""What every command shares: one line and an exit code for each expected problem.

Every expected problem (a bad study file, bad data, a missing study) is one line on stderr (a
study file with several mistakes: one line each) and exit code 2; a Ctrl-C that checkpointed the
running trial exits 130.
"""

from __future__ import annotations

import functools
import json
import re
import sys

import click

from hpsearch.errors import ConfigError, DiskFull, StudyInterrupted, UserError, root_cause

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def errors(fn):
    """Turn known errors into one line and exit 2, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except KeyboardInterrupt:  # a second Ctrl-C: out now, the trial stays to be resumed
            click.echo("interrupted: stopped at once; run again to resume from the last "
                       "checkpoint", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as e:
            if _is_outage(e):
                click.echo(f"error: {_outage_line(e)}", err=True)
                sys.exit(EXIT_FAILED)
            if isinstance(e, UserError):
                for line in getattr(e, "lines", None) or [str(e)]:
                    click.echo(f"error: {line}", err=True)
                sys.exit(EXIT_USAGE)
            if isinstance(e, DiskFull):
                click.echo(f"error: {e}", err=True)
                sys.exit(EXIT_FAILED)
            if isinstance(e, StudyInterrupted):
                click.echo(f"interrupted: {e}", err=True)
                sys.exit(EXIT_INTERRUPTED)
            raise

    return wrapper


def _is_outage(e: BaseException) -> bool:
    storage = sys.modules.get("hpsearch.storage")
    return storage is not None and storage.is_outage(e)


def _outage_line(e: BaseException) -> str:
    """The database's own complaint, first line only: it names host and port, not passwords."""
    root = root_cause(e)
    first = (str(root).strip().splitlines() or [type(root).__name__])[0]
    first = re.sub(r"(password=)\S+", r"\1***", first)
    return f"the study database cannot be reached: {first}"


def fmt_params(params: dict) -> str:
    return " ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def parse_set(items: tuple[str, ...]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def with_devices_per_trial(cfg, study_file: str, n: int):
    """``--gpus-per-trial N`` (of `run`, `worker` and `submit`): the study's
    ``trainer.devices_per_trial``, checked like the file's (a fused study refuses it in one
    line)."""
    from pydantic import ValidationError

    from hpsearch.config import StudyConfig
    from hpsearch.config.loading import config_error, validation_problems

    data = cfg.model_dump(mode="json", exclude_unset=True)
    data.setdefault("trainer", {})["devices_per_trial"] = n
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as e:
        raise config_error(f"{study_file}: --gpus-per-trial {n}",
                           validation_problems(e)) from None
