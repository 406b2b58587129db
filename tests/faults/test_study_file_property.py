"""Any mapping at all either loads into a valid study or is ConfigError lines, one per
problem, each naming the file: no traceback."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpsearch.config import ConfigError, StudyConfig, parse_study

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["optuna", "bayes", "tpe", "median", "float", "int", "categorical", "demo",
                     "scratch", "${HOME}", "${NOPE_NOT_SET}", "${X:-1}"]),
)
keys = st.one_of(
    st.sampled_from([
        "name", "n_trials", "storage", "direction", "metric", "timeout", "seed", "backend",
        "pruner", "search_space", "trainer", "output_dir", "keep", "type", "low", "high", "log",
        "choices", "learning_rate", "weight_decay", "model", "data_dir", "max_epochs", "sampler",
        "acquisition", "kappa", "wrapped", "step", "early_stopping", "patience",
    ]),
    st.text(max_size=8),
    st.integers(-3, 3),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(keys, inner, max_size=6)),
    max_leaves=25,
)
VALID = {
    "name": "p", "n_trials": 3,
    "search_space": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}},
    "trainer": {"data_dir": "demo"},
}


def _check(data) -> None:
    try:
        cfg = parse_study(data, "study.yaml")
    except ConfigError as e:
        lines = getattr(e, "lines", [str(e)])
        assert lines and str(e) == "\n".join(lines), str(e)
        for line in lines:  # every problem is one line of its own, naming the file
            assert line.startswith("study.yaml: ") and "\n" not in line, line
        return
    assert isinstance(cfg, StudyConfig)
    # What loads is a study of its own: written back out, it reads back the same...
    assert parse_study(cfg.model_dump(mode="json"), "study.yaml") == cfg
    # ...and holds what every later stage takes for granted.
    assert cfg.n_trials >= 1 and cfg.name
    for name, p in cfg.search_space.items():
        if hasattr(p, "low"):
            assert p.low < p.high, name
            assert not p.log or p.low > 0, name
        else:
            assert p.choices, name


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, values, max_size=8))
def test_any_mapping_loads_or_is_one_config_error_line(data):
    _check(data)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, values, max_size=4), st.sampled_from(sorted(VALID)))
def test_a_valid_study_with_any_field_replaced_loads_or_is_one_line(extra, drop):
    data = {k: v for k, v in VALID.items() if k != drop}
    data.update(extra)
    _check(data)


@given(values)
@settings(max_examples=60, deadline=None)
def test_any_top_level_value_is_one_line(data):
    _check(data)
