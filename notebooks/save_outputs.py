"""Run explore_study.ipynb against the demo study and save it with its outputs.

    .venv/bin/python notebooks/save_outputs.py [--no-png]

The notebook is read on GitHub and in editors before anyone runs it, so it keeps the outputs of
the demo study (``studies/demo.yaml``; run here first when its database is missing). The saved
file records a hash of its code cells: tests/test_notebook.py fails when a code cell changed
since its outputs were saved. What changes from one save to the next without the notebook
changing (run times, the kernel's version) is left out, so a save after a code edit shows as
that edit and its outputs.

Figures are saved twice: as plotly's JSON, which Jupyter and VS Code draw interactively, and as
a PNG, which GitHub shows (it draws no plotly). The PNGs need kaleido and a local
Chrome/Chromium; ``--no-png`` saves without them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "explore_study.ipynb"
DEMO = "studies/demo.yaml"
#: Where the saved notebook says which code its outputs come from.
META = "hpsearch"


def code_hash(nb) -> str:
    """What the outputs depend on in the notebook itself: its code cells, in order."""
    sources = [c.source for c in nb.cells if c.cell_type == "code"]
    return hashlib.sha256(json.dumps(sources).encode()).hexdigest()


def ensure_demo_study() -> None:
    from hpsearch.config import load_study

    cfg = load_study(ROOT / DEMO)
    db = ROOT / cfg.out / "study.db"
    if not db.exists():
        print(f"no demo study at {db.relative_to(ROOT)}: running it (about a minute)")
        hpsearch = Path(sys.executable).with_name("hpsearch")
        subprocess.run([str(hpsearch), "run", DEMO], cwd=ROOT, check=True)


def check_png() -> None:
    """Fail before the run, with the way out, rather than after it with a kaleido traceback."""
    import plotly.graph_objects as go
    import plotly.io as pio

    try:
        pio.to_image(go.Figure(go.Scatter(x=[0, 1], y=[0, 1])), format="png")
    except Exception as e:
        sys.exit(f"cannot draw PNGs ({type(e).__name__}: {e}); install kaleido and "
                 "Chrome/Chromium (e.g. apt-get install chromium), or save with --no-png")


def strip_volatile(nb) -> None:
    nb.metadata.pop("widgets", None)
    nb.metadata["language_info"] = {"name": "python"}
    for cell in nb.cells:
        cell.metadata.pop("execution", None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-png", action="store_true", help="save figures as plotly JSON only")
    args = ap.parse_args(argv)

    import nbclient
    import nbformat

    ensure_demo_study()
    if not args.no_png:
        check_png()
    # The kernel inherits these: the notebook's own default study (the demo), and the figures'
    # formats.
    os.environ.pop("HPSEARCH_STUDY", None)
    os.environ["PLOTLY_RENDERER"] = "plotly_mimetype" + ("" if args.no_png else "+png")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", record_timing=False,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()
    strip_volatile(nb)
    nb.metadata[META] = {"code_sha256": code_hash(nb), "study": DEMO}
    nbformat.write(nb, NOTEBOOK)
    size = NOTEBOOK.stat().st_size
    print(f"saved {NOTEBOOK.relative_to(ROOT)}: {size / 1e6:.2f} MB, "
          f"ran in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
