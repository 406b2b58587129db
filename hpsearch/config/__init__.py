"""The study file (study.yaml): typed, strict, and checked before anything is written.

A study runs for hours; a typo found after the first trial costs that trial. Every model here
forbids unknown keys, and :func:`load_study` turns every problem into one line that names the
file and the field (a :class:`ConfigError`, or :class:`ConfigProblems` for several), so the CLI
can print them all and exit 2 without a traceback.
"""

from hpsearch.config.backends import Backend, BayesBackend, OptunaBackend
from hpsearch.config.loading import (
    ConfigProblems,
    check_data_dir,
    config_error,
    expand_env,
    format_validation_error,
    load_study,
    parse_study,
    study_fingerprint,
    validation_problems,
    with_fuse,
    with_overrides,
)
from hpsearch.config.pruners import (
    HyperbandPruner,
    MedianPruner,
    NoPruner,
    PatientPruner,
    PercentilePruner,
    Pruner,
    SuccessiveHalvingPruner,
    ThresholdPruner,
    WilcoxonPruner,
)
from hpsearch.config.space import CategoricalParam, FloatParam, IntParam, Param
from hpsearch.config.study import StudyConfig
from hpsearch.config.trainer import TUNABLE, EarlyStopping, ScratchModel, TrainerConfig
from hpsearch.errors import ConfigError

__all__ = [
    "Backend",
    "BayesBackend",
    "CategoricalParam",
    "ConfigError",
    "ConfigProblems",
    "EarlyStopping",
    "FloatParam",
    "HyperbandPruner",
    "IntParam",
    "MedianPruner",
    "NoPruner",
    "OptunaBackend",
    "Param",
    "PatientPruner",
    "PercentilePruner",
    "Pruner",
    "ScratchModel",
    "StudyConfig",
    "SuccessiveHalvingPruner",
    "TUNABLE",
    "ThresholdPruner",
    "TrainerConfig",
    "WilcoxonPruner",
    "check_data_dir",
    "config_error",
    "expand_env",
    "format_validation_error",
    "load_study",
    "parse_study",
    "study_fingerprint",
    "validation_problems",
    "with_fuse",
    "with_overrides",
]
