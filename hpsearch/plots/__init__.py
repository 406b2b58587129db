"""The study as pictures: plotly figures for a notebook and one offline HTML report.

The report is one file with plotly.js inside it, so it can be mailed, attached to a ticket or
opened on a cluster node with no internet. It reads the study once into memory and draws every
view from that snapshot: the views agree with each other even while workers keep adding trials,
and a 500-trial study on SQLite costs one read instead of one per plot.

Optuna's own plots are used where they already say the right thing (history with the running
best, parallel coordinates, slices, importances). Learning curves and the learning-rate x
weight-decay landscape are drawn here: Optuna's intermediate-values plot does not tell pruned
trials apart, and its contour grid grows with the square of the number of distinct values
(a 365 x 365 grid and 1.6 MB for 500 trials) while leaving the sampled points uncoloured.
"""

from hpsearch.errors import ExportError
from hpsearch.plots.common import IMPORTANCE_MAX_TRIALS, LANDSCAPE_GRID, Views, snapshot
from hpsearch.plots.html import SECTIONS, summary_html, trial_notes
from hpsearch.plots.landscape import landscape_axes
from hpsearch.plots.report import write_report
from hpsearch.plots.views import build_views, figures

__all__ = [
    "IMPORTANCE_MAX_TRIALS", "LANDSCAPE_GRID", "SECTIONS", "ExportError", "Views", "build_views",
    "figures", "landscape_axes", "snapshot", "summary_html", "trial_notes", "write_report",
]
