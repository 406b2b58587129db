"""A study file's study in its database, and the data it trains on.

Every command needs these, the driver and the views alike; keeping them out of the driver
lets ``hpsearch status``, the report and the dashboard open a study without importing it.
"""

from __future__ import annotations

from pathlib import Path

import optuna

from hpsearch.backends import make_sampler
from hpsearch.config import StudyConfig
from hpsearch.errors import ConfigError
from hpsearch.pruners import make_pruner
from hpsearch.storage import local_file, open_storage, redact


def data_dir(cfg: StudyConfig) -> Path:
    """The study's data folder; ``demo`` is generated (once) under the output folder."""
    if cfg.trainer.data_dir == "demo":
        from hpsearch.demo_data import generate_demo_data

        return Path(generate_demo_data(cfg.out / "demo-data"))
    return Path(cfg.trainer.data_dir)


def open_study(cfg: StudyConfig, *, create: bool = False) -> optuna.Study:
    """The Optuna study behind a study file; only ``create`` may make a new one."""
    storage = open_storage(cfg.storage_url)
    sampler, pruner = make_sampler(cfg), make_pruner(cfg.pruner)
    if create:
        return optuna.create_study(
            storage=storage, study_name=cfg.name, direction=cfg.direction, sampler=sampler,
            pruner=pruner, load_if_exists=True,
        )
    try:
        return optuna.load_study(study_name=cfg.name, storage=storage, sampler=sampler,
                                 pruner=pruner)
    except KeyError:
        raise ConfigError(
            f"no study named '{cfg.name}' in {redact(cfg.storage_url)} (run it first)"
        ) from None


def study_exists(cfg: StudyConfig) -> bool:
    """Whether the study is already in its database, found without creating the database."""
    path = local_file(cfg.storage_url)
    if path is not None and not path.exists():
        return False
    try:
        open_storage(cfg.storage_url, heartbeat=False).get_study_id_from_name(cfg.name)
    except KeyError:
        return False
    return True
