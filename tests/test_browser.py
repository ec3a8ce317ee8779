"""The report and the dashboard in headless Chromium (Debian's, driven by Playwright).

Skipped where Chromium or Playwright is missing, unless SEARCH_REQUIRE_BROWSER=1 (as in .ci/run),
which turns a missing browser into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import search_command, tiny_space, tiny_study, toml
from test_dashboard import Dashboard

CHROMIUM = os.environ.get("SEARCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# As root in a sandbox without a network: no setuid sandbox, no GPU, no calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if os.environ.get("SEARCH_REQUIRE_BROWSER") == "1":
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), (
        f"SEARCH_REQUIRE_BROWSER=1 but there is no Chromium at {CHROMIUM}"
    )
else:
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    """A real small study: 8 trials of the tiny digits space, trained by the CLI."""
    return tiny_study(tmp_path_factory.mktemp("browser"), trials=8, pruner="median")


def _page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    return page, errors


CHART_STATE = """() => Array.from(document.querySelectorAll('.chart')).map(chart => {
  const plot = chart.querySelector('.js-plotly-plot');
  const box = plot ? plot.getBoundingClientRect() : {width: 0, height: 0};
  return {
    title: plot && plot.layout.title ? plot.layout.title.text : null,
    traces: plot && plot._fullData ? plot._fullData.filter(t => t.visible !== false).length : 0,
    drawn: plot ? plot.querySelectorAll('.trace, .point, .bars path, .gl-canvas').length : 0,
    width: box.width,
    height: box.height,
  };
})"""


def test_report_renders_every_chart_without_errors(browser, study_dir: Path) -> None:
    result = subprocess.run(
        [*search_command(), "report", "tiny"],
        cwd=study_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    path = study_dir / result.stdout.strip()
    assert path == study_dir / "reports" / "tiny.html"

    page, errors = _page(browser)
    page.goto(path.as_uri())
    page.wait_for_function(
        "() => { const charts = Array.from(document.querySelectorAll('.chart'));"
        " return charts.length > 0 && charts.every(c => c.querySelector('.main-svg')); }"
    )
    page.wait_for_timeout(500)
    charts = page.evaluate(CHART_STATE)
    assert errors == []
    assert len(charts) == 10, [c["title"] for c in charts]
    for chart in charts:
        assert chart["traces"] > 0 and chart["drawn"] > 0, chart
        assert chart["width"] > 300 and chart["height"] > 300, chart
    assert page.locator("table.trials tbody tr").count() == 8

    # Sorting the table by the metric, descending, puts the best trial first.
    header = page.locator("table.trials th", has_text="val accuracy")
    header.click()
    header.click()
    values = page.locator("table.trials tbody tr td:nth-child(3)").all_inner_texts()
    numbers = [float(v) for v in values if v]
    assert numbers == sorted(numbers, reverse=True)

    screenshot = study_dir / "report.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 50_000
    page.close()


def test_dashboard_shows_the_study_and_its_trials(browser, study_dir: Path) -> None:
    dashboard = Dashboard(study_dir, "tiny")
    try:
        page, errors = _page(browser)
        page.goto(dashboard.url)
        page.get_by_text("tiny (id=1)").wait_for()
        page.goto(dashboard.url + "/trials")
        page.get_by_text("Trial 7", exact=True).first.wait_for()
        for number in range(8):
            assert page.get_by_text(f"Trial {number}", exact=True).count() >= 1
        page.get_by_text("Trial 0", exact=True).first.click()
        page.get_by_text("val accuracy").first.wait_for()  # the trial's note, a table per epoch
        page.screenshot(path=str(study_dir / "dashboard.png"))
        assert errors == []
        page.close()
    finally:
        dashboard.stop()


def test_bench_report_draws_every_strategy_with_its_band(browser, tmp_path: Path) -> None:
    from test_bench_hpo import tiny_mnist1d

    (tmp_path / "mnist1d-tiny.toml").write_text(toml(tiny_mnist1d()))
    bench = "bench hpo --space mnist1d-tiny.toml --samplers random,tpe --pruners none,hyperband"
    result = subprocess.run(
        [*search_command(), *bench.split(), "--seeds", "2", "--trials", "3", "--jobs", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    page, errors = _page(browser)
    page.goto((tmp_path / "reports" / "bench-mnist1d-tiny.html").as_uri())
    page.wait_for_function(
        "() => { const charts = Array.from(document.querySelectorAll('.chart'));"
        " return charts.length === 3 && charts.every(c => c.querySelector('.main-svg')); }"
    )
    charts = page.evaluate(CHART_STATE)
    assert errors == []
    titles = [c["title"] for c in charts]
    assert titles[:2] == ["by cumulative cost", "by trial"], titles
    for chart in charts[:2]:
        assert chart["traces"] == 2 * 4, chart  # a band and a line per strategy
    for chart in charts:
        assert chart["drawn"] > 0 and chart["width"] > 300, chart
    # First the evidence, from random search unpruned: its ranks after 1 and 3 epochs.
    assert page.locator("table.trials").first.locator("tbody tr").count() == 2
    rows = page.locator("table.trials").nth(1).locator("tbody tr")
    assert rows.count() == 4
    assert "reached random+none's final accuracy" in page.inner_text("p.headline") or (
        "no strategy reached" in page.inner_text("p.headline")
    )
    page.locator("table.trials").nth(1).locator("th", has_text="final best").click()
    page.screenshot(path=str(tmp_path / "bench.png"), full_page=True)
    page.close()


def test_mlflow_ui_lists_the_study_run_and_its_trials(browser, tmp_path: Path, write_space) -> None:
    from mlflow.tracking import MlflowClient
    from mlflow_server import MlflowServer

    server = MlflowServer(tmp_path / "mlflow")
    try:
        space = write_space(tiny_space(epochs=1))
        run = subprocess.run(
            [*search_command(), "run", "--space", str(space), "--trials", "3"]
            + ["--mlflow", server.url],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        experiment = MlflowClient(server.url).get_experiment_by_name("tiny")
        page, errors = _page(browser)
        page.goto(f"{server.url}/#/experiments/{experiment.experiment_id}/runs")
        study_run = page.get_by_text("tiny", exact=True)
        study_run.first.wait_for()
        # The trials are nested under the study's run: open it.
        page.locator("[role=gridcell]", has=study_run).first.get_by_role("button").first.click()
        for number in range(3):
            page.get_by_text(f"trial-{number}", exact=True).wait_for()
        page.screenshot(path=str(tmp_path / "mlflow.png"))
        page.close()
        assert not [e for e in errors if "Failed to load resource" not in e], errors
    finally:
        server.stop()


def test_the_documentation_site_renders_without_errors(browser, tmp_path: Path) -> None:
    """The site as `search docs` builds it, served over HTTP as a reader's browser gets it."""
    import functools
    import http.server
    import threading

    site = tmp_path / "site"
    built = subprocess.run(
        [*search_command(), "docs", "--site", str(site)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        page, errors = _page(browser)
        page.goto(f"{base}/tutorial/", wait_until="networkidle")
        assert page.locator("h1").first.inner_text().startswith("Tutorial")
        assert page.locator("pre code").count() >= 6  # its commands, highlighted
        assert page.locator("nav.md-nav").count() > 0  # Material's navigation drawn

        page.goto(f"{base}/reference/cli/", wait_until="networkidle")
        headings = page.locator("article h2").all_inner_texts()
        assert any(h.startswith("search run") for h in headings), headings
        assert any(h.startswith("search bench hpo") for h in headings), headings
        run_help = page.locator("article pre").first.inner_text()
        assert "usage: search" in run_help and "--trials" in " ".join(
            page.locator("article pre").all_inner_texts()
        )

        # The search box, opened with its key as a reader would, finds the pages on a subject.
        page.keyboard.press("s")
        page.keyboard.type("successive halving")
        page.wait_for_selector(".md-search-result__item", timeout=10_000)
        assert page.locator(".md-search-result__item").count() > 0

        page.screenshot(path=str(tmp_path / "docs.png"), full_page=False)
        assert errors == [], errors
        page.close()
    finally:
        server.shutdown()
