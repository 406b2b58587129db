"""The views as a browser sees them: the report in headless Chromium, and the dashboard's server.

Writing HTML that contains the right ids proves little; a plotly.js error, a figure that plotly
refuses, or a script that never runs all still leave a blank page. So a real Chromium opens the
report from disk (offline, as users do), driven over the DevTools protocol, and the test reads
its console, looks for drawn SVG in every plot, and screenshots the page.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, write_study
from views_helpers import make_synthetic_study, views_settings

from hpsearch.plots import write_report

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="SKIPPED LOUDLY: no chromium on PATH (Debian: apt-get install -y chromium); "
    "the report was not checked in a browser",
)

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--hide-scrollbars", "--mute-audio", "--window-size=1280,900",
    "--remote-debugging-port=0",
)

# Per plot div: how many SVG marks plotly drew (paths, points, bars) and how big it is.
PLOTS_JS = """
Array.from(document.querySelectorAll('.plot .js-plotly-plot')).map(function (d) {
  var r = d.getBoundingClientRect();
  return {id: d.id,
          marks: d.querySelectorAll('.main-svg g.trace path, .main-svg g.trace image').length,
          canvases: d.querySelectorAll('canvas').length,
          width: r.width, height: r.height};
})
"""

# Share of non-white pixels and distinct colours of a PNG, computed by the browser itself.
PIXELS_JS = """
new Promise(function (resolve) {
  var img = new Image();
  img.onload = function () {
    var c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
    var g = c.getContext('2d'); g.drawImage(img, 0, 0);
    var d = g.getImageData(0, 0, c.width, c.height).data, ink = 0, colours = new Set();
    for (var i = 0; i < d.length; i += 4 * 7) {
      if (d[i] < 240 || d[i + 1] < 240 || d[i + 2] < 240) ink++;
      colours.add((d[i] >> 3) + '/' + (d[i + 1] >> 3) + '/' + (d[i + 2] >> 3));
    }
    resolve({ink: ink / (d.length / (4 * 7)), colours: colours.size});
  };
  img.onerror = function () { resolve({ink: 0, colours: 0}); };
  img.src = 'data:image/png;base64,' + %s;
})
"""


class Chromium:
    """Just enough of the DevTools protocol: commands, events, console errors, screenshots."""

    def __init__(self, profile: Path):
        websocket = pytest.importorskip("websocket", reason="websocket-client is a dev dependency")
        profile.mkdir(parents=True, exist_ok=True)
        port_file = profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)  # a stale one from an earlier run names a dead port
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(
            page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True
        )
        self.events: list[dict] = []
        self._id = 0

    def call(self, method: str, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self.events.append(msg)

    def wait_event(self, method: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(method)
            self.events.append(json.loads(self.ws.recv()))

    def evaluate(self, expression: str, await_promise: bool = False):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                      awaitPromise=await_promise)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(d.get("exception", {}).get("description") or d.get("text", ""))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(p["entry"]["text"])
        return out

    def screenshot(self, path: Path, max_height: int = 12000) -> str:
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"],
                "height": min(size["height"], max_height), "scale": 1}
        data = self.call("Page.captureScreenshot", format="png", clip=clip,
                         captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return data

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def open_in_chromium(report: Path, tmp_path: Path, shot: Path, wait: float = 20) -> dict:
    """Load the report, wait until plotly has drawn every plot, screenshot it; return findings."""
    browser = Chromium(tmp_path / "chromium-profile")
    try:
        for domain in ("Runtime", "Log", "Page"):
            browser.call(f"{domain}.enable")
        browser.call("Page.navigate", url=report.resolve().as_uri())
        browser.wait_event("Page.loadEventFired", timeout=30)
        n_divs = browser.evaluate("document.querySelectorAll('.plot').length")
        deadline = time.monotonic() + wait
        while True:
            plots = browser.evaluate(PLOTS_JS)
            drawn = len(plots) == n_divs and all(p["marks"] > 0 for p in plots)
            if drawn or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        data = browser.screenshot(shot)
        return {
            "plots": plots,
            "n_divs": n_divs,
            "text": browser.evaluate("document.body.innerText"),
            "rows": browser.evaluate("document.querySelectorAll('#trial-table tbody tr').length"),
            "sorted": browser.evaluate(
                "document.querySelector('#trial-table th:nth-child(3)').click();"
                "document.querySelector('#trial-table th:nth-child(3)').click();"
                "Array.from(document.querySelectorAll('#trial-table tbody tr'))"
                ".map(function (r) { return r.cells[2].dataset.v; })"
            ),
            "pixels": browser.evaluate(PIXELS_JS % json.dumps(data), await_promise=True),
            "errors": browser.errors(),
        }
    finally:
        browser.close()


@pytest.mark.slow
@needs_chromium
def test_report_draws_every_plot_without_errors(tmp_path):
    cfg, _ = make_synthetic_study(tmp_path, 16)
    report = write_report(cfg)
    shot = tmp_path / "report.png"
    seen = open_in_chromium(report, tmp_path, shot)

    assert seen["errors"] == [], f"console errors: {seen['errors']}"
    assert seen["n_divs"] >= 6, seen["plots"]
    ids = {p["id"] for p in seen["plots"]}
    assert {"plot-history", "plot-learning-curves", "plot-landscape", "plot-parallel",
            "plot-slice", "plot-importances"} <= ids
    for p in seen["plots"]:
        assert p["marks"] > 0 and p["height"] > 200 and p["width"] > 300, p
    assert cfg.name in seen["text"] and "Learning curves" in seen["text"]
    assert seen["rows"] == 16
    values = [float(v) for v in seen["sorted"] if v]
    assert values == sorted(values, reverse=True), "a second click sorts descending"
    # A blank or garbled page is nearly all white or nearly one colour.
    assert shot.stat().st_size > 50_000
    assert seen["pixels"]["ink"] > 0.05 and seen["pixels"]["colours"] > 50, seen["pixels"]


@pytest.mark.slow
@needs_chromium
def test_report_without_completed_trials_renders(tmp_path):
    cfg, _ = make_synthetic_study(tmp_path, 3, states="pruned")
    report = write_report(cfg)
    seen = open_in_chromium(report, tmp_path, tmp_path / "pruned.png")
    assert seen["errors"] == [], f"console errors: {seen['errors']}"
    assert "No completed trials yet" in seen["text"]
    assert [p["id"] for p in seen["plots"]] == ["plot-learning-curves"]
    assert seen["plots"][0]["marks"] > 0


@pytest.mark.slow
@needs_chromium
def test_checks_notice_a_broken_page(tmp_path):
    """The checks above must be able to fail: a report whose plotly.js is gone is caught."""
    cfg, _ = make_synthetic_study(tmp_path, 6, states="complete")
    report = write_report(cfg)
    broken = tmp_path / "broken.html"
    page = report.read_text(encoding="utf-8")
    start = page.index("<script>", page.index("</style>"))
    end = page.index("</script>", start) + len("</script>")
    broken.write_text(page[:start] + page[end:], encoding="utf-8")
    seen = open_in_chromium(broken, tmp_path, tmp_path / "broken.png", wait=2)
    assert any("Plotly is not defined" in e for e in seen["errors"]), seen["errors"]
    assert all(p["marks"] == 0 for p in seen["plots"])


# ----------------------------------------------------------------------------- dashboard


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read().decode("utf-8", "replace")


@pytest.mark.slow
def test_dashboard_serves_the_study(tmp_path):
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is an optional extra")
    study_file = write_study(tmp_path, file="dash-study.yaml",
                             **views_settings(tmp_path, name="dash-study"))
    make_synthetic_study(tmp_path, 5, name="dash-study")
    port = free_port()
    code = ("import sys; from hpsearch.config import load_study; "
            "from hpsearch.dashboard import serve_dashboard; "
            "serve_dashboard(load_study(sys.argv[1]), port=int(sys.argv[2]))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(study_file), str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, page = _get(f"{base}/")
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail(f"dashboard did not start: {proc.communicate()[0][-2000:]}")
                time.sleep(0.2)
        assert status == 200 and "<html" in page.lower()
        status, body = _get(f"{base}/api/studies")
        studies = json.loads(body)["study_summaries"]
        assert status == 200 and [s["study_name"] for s in studies] == ["dash-study"]
        status, body = _get(f"{base}/api/studies/{studies[0]['study_id']}")
        assert status == 200 and len(json.loads(body)["trials"]) == 5
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_dashboard_missing_package_is_one_clear_line(tmp_path, monkeypatch):
    from hpsearch import dashboard

    cfg, _ = make_synthetic_study(tmp_path, 1)
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # import now fails
    with pytest.raises(dashboard.DashboardUnavailable, match="pip install optuna-dashboard"):
        dashboard.serve_dashboard(cfg, port=free_port())
