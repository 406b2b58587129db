"""What a new study checks before it writes anything: its model can be found, its data reads.

A typo in ``trainer.model`` or a broken data file found after the study database was created
left a study with no trial that refused the fixed file as "run with other settings". Checked
first, the mistake costs one line and nothing on disk. A hub name is looked up in the local
cache first and then asked of the hub once, with a short timeout and no retries: a machine
without hub access learns it in seconds, not after a minute of back-off.
"""

from __future__ import annotations

import os
from pathlib import Path

from hpsearch.config import StudyConfig
from hpsearch.errors import ConfigError, ModelSourceError

HUB_TIMEOUT = 5.0  # seconds for the one question asked of the hub


def preflight(cfg: StudyConfig) -> None:
    """Raise the one-line error a trial would raise later, before anything is written."""
    check_model_source(cfg.trainer.model)
    if cfg.trainer.data_dir == "demo":  # generated data cannot be broken
        return
    from hpsearch.trainer.data import read_data

    data = read_data(cfg.trainer.data_dir, cfg.trainer.data_format,
                     columns=(cfg.trainer.hf_tokens_column, cfg.trainer.hf_tags_column))
    if cfg.metric.startswith("f1:"):
        kind = cfg.metric.removeprefix("f1:")
        kinds = sorted({t[2:] for t in data.labels if t[:2] in ("B-", "I-")})
        if kind not in kinds:
            raise ConfigError(f"metric: no entity type '{kind}' in {cfg.trainer.data_dir} "
                              f"(its types: {', '.join(kinds)})")


def check_model_source(model: str) -> None:
    """A package, a folder with a config, or a hub name the cache or the hub knows."""
    if model == "scratch":
        return
    from hpsearch.trainer.modeling import resolve_source

    source = resolve_source(model)  # a package that is not there says so itself
    folder = Path(source)
    if folder.exists():
        if not (folder / "config.json").exists():
            raise ModelSourceError(f"trainer.model: '{model}' is a folder without config.json")
        return
    if not could_be_hub_name(source):
        raise ModelSourceError(f"trainer.model: no folder '{source}'")
    _check_hub(source)


def could_be_hub_name(name: str) -> bool:
    """``name`` or ``owner/name``; anything else is a path, and a missing path is not the hub's."""
    return not name.startswith((".", "/", "~")) and name.count("/") <= 1


def _check_hub(name: str) -> None:
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return  # in the local cache: from_pretrained finds it with or without the hub
    if constants.HF_HUB_OFFLINE:
        raise ModelSourceError(
            f"trainer.model: '{name}' is not in the local Hugging Face cache and HF_HUB_OFFLINE "
            "is set; download it where the hub is reachable, or point trainer.model at a folder")
    endpoint, status, reason = ask_hub("models", name)
    if status == 404:
        raise ModelSourceError(f"trainer.model: no model '{name}' on the hub ({endpoint}), "
                               "no folder and no package of that name")
    if status in (401, 403):
        raise ModelSourceError(f"trainer.model: '{name}' on {endpoint} needs a login "
                               "(huggingface-cli login) or access to a gated model")
    if status is None:
        raise ModelSourceError(
            f"trainer.model: '{name}' is no folder or package here, and the hub ({endpoint}) "
            f"cannot be reached ({reason}); download it where the hub is reachable and point "
            "trainer.model at the folder")
    # any other answer: let from_pretrained try


def ask_hub(kind: str, name: str) -> tuple[str, int | None, str]:
    """(endpoint, HTTP status, why no status) of one HEAD request for ``api/{kind}/{name}``.

    One question with a short timeout, where the hub clients retry for half a minute.
    """
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    endpoint = os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")
    url = f"{endpoint}/api/{kind}/{name}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                                    timeout=HUB_TIMEOUT) as r:
            return endpoint, r.status, ""
    except urllib.error.HTTPError as e:
        return endpoint, e.code, ""
    except (urllib.error.URLError, OSError) as e:
        return endpoint, None, str(getattr(e, "reason", e))
