"""The README's viewing commands, from the command line: plot --png and --open, dashboard on
127.0.0.1 only, demo-data, and evaluate on the test split unless told otherwise."""

from __future__ import annotations

import json
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ONE_EPOCH, cli, free_port, spawn_hpsearch, write_study
from views_helpers import make_synthetic_study, views_settings

pytestmark = [pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
              pytest.mark.filterwarnings("ignore:Heartbeat of storage")]


def _views_study(tmp_path: Path) -> Path:
    make_synthetic_study(tmp_path, 8)
    return write_study(tmp_path, file="views.yaml", **views_settings(tmp_path))


def _out(study: Path) -> Path:
    from hpsearch.config import load_study

    return load_study(study).out


def test_plot_open_hands_the_report_to_the_users_browser(tmp_path, monkeypatch):
    """--open goes through the browser the user configured (BROWSER, as webbrowser reads it)."""
    study = _views_study(tmp_path)
    seen = tmp_path / "browser-was-given"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > {seen}\n')
    browser.chmod(0o755)
    monkeypatch.setenv("BROWSER", str(browser))
    r = cli("plot", str(study), "--open")
    assert r.exit_code == 0, r.output
    deadline = time.time() + 10
    while not seen.exists():  # webbrowser may start it in the background
        assert time.time() < deadline, "the browser was never started"
        time.sleep(0.05)
    report = _out(study) / "report.html"
    assert seen.read_text().strip() == report.resolve().as_uri()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                    reason="SKIPPED LOUDLY: no chromium on PATH (kaleido draws PNGs with it)")
def test_plot_png_writes_every_figure_from_the_command_line(tmp_path):
    study = _views_study(tmp_path)
    r = cli("plot", str(study), "--png", str(tmp_path / "png"))
    assert r.exit_code == 0, r.output
    pngs = sorted(p.name for p in (tmp_path / "png").glob("*.png"))
    assert "history.png" in pngs and "landscape.png" in pngs and len(pngs) >= 5
    assert all((tmp_path / "png" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def _other_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent: it only picks a route
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if addr.startswith("127.") else addr


@pytest.mark.slow
def test_dashboard_serves_the_study_on_loopback_only(tmp_path):
    study = _views_study(tmp_path)
    port = free_port()
    proc = spawn_hpsearch("dashboard", str(study), "--port", str(port))
    try:
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                            timeout=2) as resp:
                    studies = json.loads(resp.read())["study_summaries"]
                break
            except OSError:
                assert time.time() < deadline, "the dashboard never answered"
                time.sleep(0.2)
        assert [s["study_name"] for s in studies] == ["views"]
        other = _other_address()
        if other is not None:  # bound to 127.0.0.1: the machine's other address has nothing
            with pytest.raises(OSError):
                socket.create_connection((other, port), timeout=2).close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_demo_data_writes_a_data_set_hpsearch_reads(tmp_path):
    from hpsearch.trainer.data import read_data

    r = cli("demo-data", str(tmp_path / "d"), "--seed", "3")
    assert r.exit_code == 0, r.output
    data = read_data(tmp_path / "d", splits=("train", "val", "test"))
    assert all(len(data.splits[s]) > 0 for s in ("train", "val", "test"))
    assert {"B-PER", "B-LOC", "B-ORG"} <= set(data.labels)


@pytest.mark.slow
def test_evaluate_scores_the_test_split_unless_told_otherwise(tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir, n_trials=1, trainer=ONE_EPOCH)
    assert cli("run", str(path)).exit_code == 0
    scores = {}
    for args in ((), ("--split", "test"), ("--split", "val")):
        r = cli("evaluate", str(path), "--json", *args)
        assert r.exit_code == 0, r.output
        scores[args] = json.loads(r.stdout)
    assert scores[()] == scores[("--split", "test")]
    assert scores[()] != scores[("--split", "val")]
