"""A model that cannot be found is one line naming it, exit 2, before anything is written;
without the hub (unreachable, or HF_HUB_OFFLINE) it says so in seconds, not after retries."""

from __future__ import annotations

import time

import pytest
from conftest import free_port, hpsearch, write_study


@pytest.mark.slow
@pytest.mark.parametrize("offline", [False, True])
def test_an_unknown_hub_model_without_the_hub_fails_in_seconds_in_one_line(
        tmp_path, demo_dir, offline):
    path = write_study(tmp_path, demo_dir, trainer={"model": "no-such-org/no-such-model"})
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HOME": str(tmp_path / "hf")}
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    t0 = time.perf_counter()
    r = hpsearch("run", str(path), env=env)
    assert time.perf_counter() - t0 < 10
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "no-such-org/no-such-model" in line
    assert ("HF_HUB_OFFLINE" if offline else "cannot be reached") in line
    assert not (tmp_path / "out").exists()
