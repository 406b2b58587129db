"""A model that cannot be found is one line naming it, exit 2, before anything is written;
without the hub (unreachable, or HF_HUB_OFFLINE) it says so in seconds, not after retries."""

from __future__ import annotations

import pytest
from conftest import assert_no_hub_fails_fast, write_study


@pytest.mark.slow
@pytest.mark.parametrize("offline", [False, True])
def test_an_unknown_hub_model_without_the_hub_fails_in_seconds_in_one_line(
        tmp_path, demo_dir, offline):
    path = write_study(tmp_path, demo_dir, trainer={"model": "no-such-org/no-such-model"})
    assert_no_hub_fails_fast(path, tmp_path, offline, "no-such-org/no-such-model")
