"""optuna-dashboard on a study's own storage: live views while the workers are still running.

The HTML report (:mod:`hpsearch.plots`) is a snapshot to keep or send; the dashboard is for
watching a search as it runs, and it reads the same database the workers write to.
"""

from __future__ import annotations

from hpsearch.config import StudyConfig
from hpsearch.errors import DashboardUnavailable
from hpsearch.opening import open_study
from hpsearch.storage import open_storage, redact

__all__ = ["DashboardUnavailable", "serve_dashboard"]


def serve_dashboard(cfg: StudyConfig, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve optuna-dashboard for the study's storage until interrupted (blocks).

    Safe next to running workers: browsing only reads, with short SQL queries, so workers keep
    writing. The dashboard writes only when someone in the UI asks it to: notes on a study or
    trial, renaming, creating or deleting a study, telling or skipping a trial, and, for an old
    RDB schema, the migration button. It never starts trials and never marks running ones
    failed (its storage has no heartbeat, so it cannot take a live trial for a dead one).

    Binds to 127.0.0.1 by default: the dashboard has no authentication, so exposing it on a
    shared network (``host="0.0.0.0"``) lets anyone there delete studies.
    """
    try:
        import optuna_dashboard
    except ImportError:
        raise DashboardUnavailable(
            "optuna-dashboard is not installed: pip install optuna-dashboard "
            "(or pip install 'hpsearch[dashboard]')"
        ) from None
    open_study(cfg)  # a missing study is a one-line ConfigError, not an empty dashboard
    storage = open_storage(cfg.storage_url, heartbeat=False)
    print(f"optuna-dashboard for study '{cfg.name}' ({redact(cfg.storage_url)}) "
          f"on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    optuna_dashboard.run_server(storage, host=host, port=port)
