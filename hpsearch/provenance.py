"""Where a trial's result came from: its data, its model, the software and the machine.

A score in a study is only worth something if it can be traced back: months later, "trial 12
got 0.91" must say which bytes it trained on, which weights it started from, which code and
library versions ran it and on what. So every trial carries this as one user attribute
(``attrs.A_PROVENANCE``; one write, not fifteen, since each write is a database transaction).

The data fingerprint and the model hash are also kept on the study and compared on every run
(``study.check_unchanged``): trials trained on other data or another model are not comparable,
and mixing them under one study name silently would make the search's best trial meaningless.
Versions, device and host are recorded but never checked: workers on several machines, or a
library upgrade between runs, are legitimate.

Everything is computed once per process and memoised. The driver computes it before it forks
workers and trial processes, so they inherit it and a trial pays nothing; only the device is
asked in the trial's own process, since a parent must not touch CUDA before it forks.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

from hpsearch.config import StudyConfig
from hpsearch.trainer.data import fingerprint_files, stream_hash

#: Files of a model folder that decide what ``from_pretrained`` builds: the config, the
#: weights, and the tokenizer (another vocabulary under the same name changes every feature).
MODEL_FILES = ("config.json", "*.safetensors", "*.bin", "tokenizer.json", "tokenizer_config.json",
               "vocab.txt", "vocab.json", "merges.txt", "special_tokens_map.json", "*.model")

#: Libraries whose version can change a result: (the name on a trial, the distribution).
LIBRARIES = (("torch", "torch"), ("transformers", "transformers"), ("optuna", "optuna"),
             ("bayes_opt", "bayesian-optimization"), ("seqeval", "seqeval"))

_INPUTS: dict[tuple, dict[str, Any]] = {}
_SOFTWARE: dict[str, Any] = {}
_DEVICE: dict[str, dict[str, Any]] = {}
#: A model file's digest by (resolved path) -> (size, mtime_ns, inode, digest).
_FILE_CACHE: dict[str, list] = {}


# ----------------------------------------------------------------------------- hashing


def cached_file_hash(path: Path, cache_file: Path | None = None) -> str:
    """A model file's hash, trusted again while its size, mtime and inode stay the same.

    Weights are large and never edited in place without their mtime moving (save_pretrained
    writes a new file), so a stat decides whether to hash again; a stat-equal file costs
    nothing even in a new process when ``cache_file`` (the study's cache folder) holds it.
    """
    key = str(path.resolve())
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
    if cache_file is not None and key not in _FILE_CACHE:
        _FILE_CACHE.update(_read_cache(cache_file))
    hit = _FILE_CACHE.get(key)
    if hit is not None and list(hit[:3]) == stamp:
        return hit[3]
    digest = stream_hash(path)
    _FILE_CACHE[key] = [*stamp, digest]
    if cache_file is not None:
        _write_cache(cache_file)
    return digest


def _read_cache(cache_file: Path) -> dict[str, list]:
    try:
        got = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in got.items() if isinstance(v, list) and len(v) == 4} \
        if isinstance(got, dict) else {}


def _write_cache(cache_file: Path) -> None:
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".tmp-{os.getpid()}-{cache_file.name}")
        tmp.write_text(json.dumps({**_read_cache(cache_file), **_FILE_CACHE}), encoding="utf-8")
        os.replace(tmp, cache_file)
    except OSError:
        pass  # a cache that cannot be written costs a re-hash, nothing else


# ----------------------------------------------------------------------------- the inputs


def data_files(cfg: StudyConfig) -> tuple[Path, list[Path]]:
    """The data folder and the files a trial's data is read from (train and val, the tag set)."""
    from hpsearch.opening import data_dir

    root = data_dir(cfg)
    try:
        # Found without parsing them: a process that finds the features cache never parses.
        from hpsearch.trainer.inputs import data_files as files_of

        return root, list(files_of(root, cfg.trainer.data_format, ("train", "val")))
    except (ImportError, ValueError):  # a hub dataset: its files are those loading it reads
        from hpsearch.trainer.data import read_data

        columns = (cfg.trainer.hf_tokens_column, cfg.trainer.hf_tags_column)
        return root, list(read_data(root, cfg.trainer.data_format, ("train", "val"),
                                    columns=columns).files)


def data_fingerprint(cfg: StudyConfig) -> dict[str, Any]:
    """{"fingerprint", "files": {name: hash}}: every byte of the data, hashed every run.

    The data is read by the run anyway and a same-size edit keeps its mtime within a clock
    tick, so no stat cache here. The fingerprint is computed as ``NerData.fingerprint`` does,
    so a trial's fingerprint is also the data part of its features cache key.
    """
    root, files = data_files(cfg)
    own: dict[Path, str] = {}
    total = fingerprint_files(files, own)
    return {"fingerprint": total, "files": {_name(f, root): h for f, h in own.items()}}


def model_hash(cfg: StudyConfig) -> dict[str, Any]:
    """{"source", "hash", "files"}: what the trials' model starts from.

    ``scratch`` has no weights, only the architecture in the study file: its hash is that
    config's. A folder (or a hub model in the local cache) is its config, weights and tokenizer
    files. A hub model not downloaded yet has no hash (``None``): nothing to compare it with.
    """
    model = cfg.trainer.model
    if model == "scratch":
        spec = json.dumps(cfg.trainer.scratch.model_dump(mode="json"), sort_keys=True)
        return {"source": "scratch", "hash": _hash_text("scratch\n" + spec), "files": {}}
    from hpsearch.trainer.modeling import resolve_source

    try:
        source = resolve_source(model)
    except Exception:  # preflight and the trainer say what is wrong with it
        return {"source": model, "hash": None, "files": {}}
    folder, shown = Path(source), source
    if not folder.is_dir():
        folder, revision = _hub_snapshot(source)
        shown = source if revision is None else f"{source}@{revision}"
        if folder is None:
            return {"source": shown, "hash": None, "files": {}}
    files = sorted({p for pat in MODEL_FILES for p in folder.glob(pat) if p.is_file()})
    cache = cfg.out / "cache" / "file-hashes.json"
    per = {p.name: cached_file_hash(p, cache) for p in files}
    if "config.json" not in per:
        return {"source": shown, "hash": None, "files": per}
    return {"source": shown, "hash": _hash_text(json.dumps(per, sort_keys=True)), "files": per}


def _hub_snapshot(name: str) -> tuple[Path | None, str | None]:
    """The local cache's folder of a hub model and its commit, without asking the hub."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
    except Exception:
        return None, None
    if not isinstance(found, str):
        return None, None
    folder = Path(found).parent
    return folder, folder.name


def study_inputs(cfg: StudyConfig, *, fresh: bool = False) -> dict[str, Any]:
    """{"data": data_fingerprint, "model": model_hash}, once per process for one study's data.

    ``fresh``: hash again, for the check at the start of a run (a notebook may have edited the
    data since its last run); a trial takes what that check found. ``data`` is ``None`` for
    data that cannot be read: the trainer reports that in its own words.
    """
    key = (cfg.trainer.data_dir, cfg.trainer.data_format, str(cfg.out), cfg.trainer.model,
           cfg.trainer.scratch.model_dump_json())
    if fresh or key not in _INPUTS:
        try:
            data = data_fingerprint(cfg)
        except (OSError, ValueError):  # DataError is a ValueError
            data = None
        _INPUTS[key] = {"data": data, "model": model_hash(cfg)}
    return _INPUTS[key]


def input_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, str]:
    """What changed between two ``study_inputs``, as {"data"|"model": one phrase}.

    An unknown side (data unreadable, a hub model not downloaded) is no change: it cannot be
    told.
    """
    out: dict[str, str] = {}
    for part, label, key in (("data", "data fingerprint", "fingerprint"),
                             ("model", "model hash", "hash")):
        a, b = old.get(part) or {}, new.get(part) or {}
        if not a.get(key) or not b.get(key) or a[key] == b[key]:
            continue
        fa, fb = a.get("files") or {}, b.get("files") or {}
        which = [n for n in sorted(set(fa) | set(fb)) if fa.get(n) != fb.get(n)]
        where = f" ({', '.join(which)})" if which else ""
        source = ""
        if part == "model" and a.get("source") != b.get("source"):
            source = f", source {a.get('source')} -> {b.get('source')}"
        out[part] = f"{label} {a[key]} -> {b[key]}{where}{source}"
    return out


def _hash_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _name(f: Path, root: Path) -> str:
    try:
        return f.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(f)


# ----------------------------------------------------------------------------- the software


def software() -> dict[str, Any]:
    """hpsearch's version and commit, the libraries' versions, the host: once per process."""
    if not _SOFTWARE:
        from importlib.metadata import PackageNotFoundError, version

        def ver(dist: str) -> str | None:
            try:
                return version(dist)
            except PackageNotFoundError:
                return None

        commit, dirty = git_commit(Path(__file__).resolve().parent)
        _SOFTWARE.update({"hpsearch_version": ver("hpsearch"), "hpsearch_commit": commit,
                          "hpsearch_dirty": dirty})
        _SOFTWARE.update({f"{name}_version": ver(dist) for name, dist in LIBRARIES})
        _SOFTWARE["host"] = socket.gethostname()
    return dict(_SOFTWARE)


def git_commit(package_dir: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout hpsearch runs from, or (None, None) when it is installed.

    A site-packages inside some other project's checkout would give that project's commit, so
    the checkout counts only if it tracks this very package. Dirty as ``git describe --dirty``
    means it: tracked files changed, untracked ones ignored.
    """
    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(package_dir), *args], capture_output=True,
                               text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    if not git("ls-files", "--error-unmatch", "__init__.py"):
        return None, None
    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else bool(status)


def device_info(device: str) -> dict[str, Any]:
    """The device a trial trains on, and the CUDA and cuDNN it uses (None on a CPU build).

    Asked in the trial's own process: naming a GPU starts CUDA, which a process that forks
    afterwards must not have done.
    """
    if device not in _DEVICE:
        out: dict[str, Any] = {"device": None, "cuda_version": None, "cudnn_version": None}
        try:
            import torch

            from hpsearch.trainer.runtime import resolve_device

            dev = resolve_device(device)
            out["cuda_version"] = torch.version.cuda
            if dev.type == "cuda":
                out["device"] = torch.cuda.get_device_name(dev)
                out["cudnn_version"] = torch.backends.cudnn.version()
            else:
                out["device"] = f"cpu: {cpu_name()}"
        except Exception:  # a record is never worth failing a trial for
            pass
        _DEVICE[device] = out
    return dict(_DEVICE[device])


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


# ----------------------------------------------------------------------------- one trial


def trial_provenance(cfg: StudyConfig) -> dict[str, Any]:
    """The record a trial carries (``attrs.A_PROVENANCE``), flat so it reads as key: value."""
    inputs = study_inputs(cfg)
    data, model = inputs["data"] or {}, inputs["model"] or {}
    return {
        "data_fingerprint": data.get("fingerprint"),
        "model_source": model.get("source"),
        "model_hash": model.get("hash"),
        **software(),
        **device_info(cfg.trainer.device),
    }


def short_commit(rec: dict[str, Any]) -> str:
    """hpsearch's version and commit as one word: ``0.1.0@1dd041f+dirty``."""
    out = str(rec.get("hpsearch_version") or "?")
    if rec.get("hpsearch_commit"):
        out += "@" + str(rec["hpsearch_commit"])[:7] + ("+dirty" if rec.get("hpsearch_dirty")
                                                        else "")
    return out
