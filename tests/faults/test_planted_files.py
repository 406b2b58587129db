"""Files planted in a study folder by someone else are data, never code."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import pytest
import yaml
from conftest import ONE_EPOCH, hpsearch, trials_of, write_study
from optuna.trial import TrialState

from hpsearch.config import load_study
from hpsearch.trainer import Interrupted, prepare, train
from hpsearch.trainer.checkpoint import list_checkpoints


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_planted_pickle_in_the_token_cache_is_never_loaded(tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir, n_trials=1, trainer=ONE_EPOCH)
    first = hpsearch("run", str(path))  # a new process: it writes the cache, not memory
    assert first.returncode == 0, first.stderr
    cache = load_study(path).out / "cache"
    planted = sorted(cache.glob("features-*.npz"))
    assert planted, "the first trial writes the token cache"
    marker = tmp_path / "pwned"
    for f in planted:
        f.write_bytes(pickle.dumps(Payload(marker)))

    d = yaml.safe_load(path.read_text())
    d["n_trials"] = 2
    path.write_text(yaml.safe_dump(d))
    r = hpsearch("run", str(path))  # a new process: nothing memoised, the cache is read
    assert r.returncode == 0, r.stderr
    assert not marker.exists()
    assert [t.state for t in trials_of(path)] == [TrialState.COMPLETE] * 2
    for f in planted:  # rebuilt from the data, not trusted
        assert f.read_bytes()[:2] == b"PK"


def test_planted_pickle_in_a_checkpoint_is_never_executed(tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir, trainer=ONE_EPOCH)
    cfg = load_study(path).trainer_for({"learning_rate": 3e-3})
    prep = prepare(cfg, demo_dir, tmp_path / "cache")
    with pytest.raises(Interrupted):
        train(cfg, prep, tmp_path / "t", should_stop=lambda: True)
    ckpt = list_checkpoints(tmp_path / "t" / "checkpoints")[-1]
    marker = tmp_path / "pwned"
    (ckpt / "training.pt").write_bytes(pickle.dumps(Payload(marker)))
    # The planter also fixes the manifest, so only the loader stands in the way.
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["training.pt"] = hashlib.sha256((ckpt / "training.pt").read_bytes()).hexdigest()
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Exception, match="(?i)weights_only|unpickl"):
        train(cfg, prep, tmp_path / "t")
    assert not marker.exists()
