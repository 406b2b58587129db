"""Writing the report (and PNGs of its figures) to disk."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import plotly.graph_objects as go

from hpsearch.config import StudyConfig
from hpsearch.errors import ExportError
from hpsearch.opening import open_study
from hpsearch.plots.common import snapshot
from hpsearch.plots.html import render_html
from hpsearch.plots.views import build_views


def write_report(
    cfg: StudyConfig, out: Path | None = None, *, png_dir: Path | None = None
) -> Path:
    """Write the HTML report (default ``<output_dir>/report.html``) and optionally PNGs.

    A study without completed trials still gets a report (summary and trial table), not an
    error. The HTML replaces any old report atomically, so a browser reloading it never sees a
    half-written file. PNGs come after the HTML: an :class:`ExportError` leaves the HTML there.
    """
    study = open_study(cfg)
    snap = snapshot(study)
    trials = snap.get_trials(deepcopy=False)
    views = build_views(snap, cfg)
    out = Path(out) if out is not None else cfg.out / "report.html"
    atomic_write_text(out, render_html(cfg, study.study_name, trials, views))
    if png_dir is not None:
        export_png(views.figures, Path(png_dir))
    return out


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` so that a reader of ``path`` sees the old file or the new one, never half.

    ``mkstemp`` makes its file private (0600); the report gets the mode any other file the user
    writes there gets (0666 less the umask), or a colleague sharing the folder cannot open it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    try:  # Linux says it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere it is read by setting it and put back at once: the report is written from one
    # thread, before any PNG export starts a browser.
    old = os.umask(0o022)
    os.umask(old)
    return old


def export_png(figs: dict[str, go.Figure], png_dir: Path) -> list[Path]:
    """``<key>.png`` per figure, through kaleido and a local Chrome/Chromium (one session)."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise ExportError(
            "PNG export needs kaleido and Chrome/Chromium: pip install kaleido "
            "(and e.g. apt-get install chromium)"
        ) from None
    import plotly.io as pio

    png_dir.mkdir(parents=True, exist_ok=True)
    paths = [png_dir / f"{key}.png" for key in figs]
    if not figs:
        return paths
    try:
        pio.write_images(list(figs.values()), paths, format="png", width=1100)
        # On a busy machine kaleido can drop a figure without raising: draw it once more.
        missing = [(fig, path) for fig, path in zip(figs.values(), paths) if not path.exists()]
        if missing:
            pio.write_images([f for f, _ in missing], [p for _, p in missing], format="png",
                             width=1100)
        still = [p.name for p in paths if not p.exists()]
        if still:
            raise ExportError(f"PNG export wrote no {', '.join(still)} (kaleido gave no reason)")
    except ExportError:
        raise
    except Exception as e:  # kaleido reports a missing browser in several exception types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(
            f"PNG export failed: {first} (kaleido draws with a local Chrome/Chromium: install one, "
            "e.g. apt-get install chromium, or set BROWSER_PATH to its executable)"
        ) from e
    return paths
