"""The dashboard in a real Chromium against a real server and real worker processes: launch a
BatchNorm-on and a BatchNorm-off run from the form, watch their charts grow live, zoom and hide
a trace, stop the runs from the list, reload the page to get the same comparison back from the
URL, then unselect and delete one. Plus the form's 422 messages and api.js's resume by seq."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from .browserkit import (  # noqa: F401 - fixtures
    LIVE,
    browser_fixture,
    open_dashboard,
    page_fixture,
    screenshot_whole_page,
)

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
# Points plotted on the loss chart, summed over its traces (Plotly keeps them on the div).
LOSS_POINTS = "(document.getElementById('chart-loss').data || []).reduce((n, t) => n + t.x.length, 0)"
# The loss chart's runs: one legend entry each (a smoothed line; its faint raw line has none).
LOSS_RUNS = "document.getElementById('chart-loss').data.filter(t => t.showlegend !== false)"


def launch(page: Any, name: str, batchnorm: bool, steps: int) -> None:
    page.fill("#name", name)
    page.set_checked("#batchnorm", batchnorm)
    page.fill("#steps", str(steps))
    page.click("#start")
    page.locator("#runs tr[data-run-id]", has_text=name).wait_for()


def test_dashboard_compares_bn_runs_live(live_server: Any, page: Any, tmp_path: Path) -> None:
    open_dashboard(page, live_server)
    page.click("#more summary")  # steps lives in the collapsed "more settings"
    # Long enough that both are still training while we look (however busy the machine);
    # we stop them at the end.
    launch(page, "bn-on", batchnorm=True, steps=100_000)
    launch(page, "bn-off", batchnorm=False, steps=100_000)

    rows = page.locator("#runs tr[data-run-id]")
    assert rows.count() == 2
    by_name = {r["name"]: r for r in live_server.client.get("/api/runs").json()}
    assert by_name["bn-on"]["config"]["batchnorm"] is True
    assert by_name["bn-off"]["config"]["batchnorm"] is False

    # New runs are selected: one loss trace each, and points arrive while they run.
    page.wait_for_function(f"{LOSS_RUNS}.length === 2")
    page.wait_for_function(f"{LOSS_POINTS} > 0", timeout=60_000)
    first = page.evaluate(LOSS_POINTS)
    # The table redraws on its own ~10 Hz clock, so wait for it rather than read it at once.
    page.wait_for_function("[...document.querySelectorAll('#runs .badge')].some(b => b.textContent === 'running')")
    page.wait_for_function(f"{LOSS_POINTS} > {first}", timeout=60_000)
    second = page.evaluate(LOSS_POINTS)
    assert second > first

    # The per-layer picture: weights only by default, one point per weight matrix (depth 4 and
    # the output layer) for both; every parameter on request, and BN adds some, so the two
    # profiles then differ in length. The heatmap has one row per weight of its run.
    page.wait_for_function("document.getElementById('chart-layers').data.length === 2")
    lengths = page.evaluate("document.getElementById('chart-layers').data.map(t => t.x.length)")
    assert lengths == [5, 5], lengths
    page.uncheck("#weights-only")
    page.wait_for_function("new Set(document.getElementById('chart-layers').data.map(t => t.x.length)).size === 2")
    page.check("#weights-only")
    page.locator("#chart-heatmap").scroll_into_view_if_needed()  # a figure out of view is drawn when seen
    page.wait_for_function("(document.getElementById('chart-heatmap').data[0]?.z || []).length > 0")

    save = bool(os.environ.get("GRADWATCH_SAVE_SCREENSHOT"))
    if save:  # the README's picture: let the curves take shape first, loss on a log axis
        page.wait_for_function(f"{LOSS_POINTS} >= 400", timeout=120_000)
        page.click("[data-scale=log]")
    page.click("#more summary")  # fold the form back for the picture
    shot = tmp_path / "dashboard.png"
    screenshot_whole_page(page, shot)
    if save:  # the README shows the top of the page, down to the per-layer gradient norms
        bottom = page.evaluate("document.getElementById('chart-layers').getBoundingClientRect().bottom + 12")
        page.screenshot(path=str(shot), clip={"x": 0, "y": 0, "width": 1400, "height": bottom})
        shutil.copyfile(shot, ROOT / "docs" / "screenshot.png")
        page.click("[data-scale=linear]")
    page.set_viewport_size({"width": 1400, "height": 1250})
    page.evaluate("window.scrollTo(0, 0)")

    # The person's zoom and legend-hidden traces survive live updates (extendTraces) and
    # rebuilt traces (react: focusing a run redraws its line thicker).
    loss = "document.getElementById('chart-loss')"
    page.locator("#chart-loss g.traces").filter(has_text="bn-on").locator(".legendtoggle").click()
    page.wait_for_function(f"{loss}.data.find(t => t.name === 'bn-on').visible === 'legendonly'")
    plot = page.locator("#chart-loss .nsewdrag").bounding_box()
    page.mouse.move(plot["x"] + 10, plot["y"] + 10)
    page.mouse.down()
    page.mouse.move(plot["x"] + plot["width"] / 3, plot["y"] + plot["height"] - 10, steps=4)
    page.mouse.up()
    page.wait_for_function(f"{loss}.layout.xaxis.autorange === false")
    zoom = page.evaluate(f"{loss}.layout.xaxis.range")
    shown = page.evaluate(LOSS_POINTS)
    page.wait_for_function(f"{LOSS_POINTS} > {shown}", timeout=60_000)
    rows.filter(has_text="bn-on").locator("button.focus").click()
    page.wait_for_function(f"{loss}.data.find(t => t.name === 'bn-on').line.width > 2")
    assert page.evaluate(f"{loss}.layout.xaxis.range") == zoom
    assert page.evaluate(f"{loss}.data.find(t => t.name === 'bn-on').visible") == "legendonly"

    # Stop both from the list; the rows say so.
    for name in ("bn-on", "bn-off"):
        row = rows.filter(has_text=name)
        if row.locator(".stop").is_visible():
            row.locator(".stop").click()
    page.wait_for_function(  # (`stalled`: a worker starved of CPU for a while; it has Stop too)
        "[...document.querySelectorAll('#runs .badge')]"
        ".every(b => !['queued', 'running', 'stalled'].includes(b.textContent))", timeout=60_000)

    # The URL holds the comparison: a reload draws both runs again, from history.
    assert "runs=" in page.url
    page.reload()
    page.wait_for_function(LIVE)
    page.wait_for_function(f"{LOSS_RUNS}.filter(t => t.x.length > 0).length === 2")
    page.wait_for_function("document.querySelectorAll('#runs input.select:checked').length === 2")

    # Unselecting removes the run's traces (and its id from the URL); deleting takes two clicks.
    bn_off = rows.filter(has_text="bn-off")
    bn_off.locator("input.select").uncheck()
    page.wait_for_function(f"{LOSS_RUNS}.length === 1")
    assert bn_off.get_attribute("data-run-id") not in page.url
    bn_off.locator(".delete").click()
    assert rows.count() == 2  # armed, not yet deleted
    bn_off.locator(".delete").click()
    page.wait_for_function("document.querySelectorAll('#runs tr[data-run-id]').length === 1")
    assert [r["name"] for r in live_server.client.get("/api/runs").json()] == ["bn-on"]

    assert page.errors == []


def test_bad_config_shows_the_server_reason_next_to_the_field(live_server: Any, page: Any) -> None:
    open_dashboard(page, live_server)
    before = len(live_server.client.get("/api/runs").json())
    page.click("#more summary")
    page.fill("#depth", "100")  # the server allows 1..64
    page.click("#start")
    error = page.locator('.field-error[data-for="depth"]')
    error.wait_for()
    assert "64" in error.text_content()
    assert page.get_attribute("#depth", "aria-invalid") == "true"
    assert len(live_server.client.get("/api/runs").json()) == before
    # Chromium logs the 422 response itself as a console error; nothing else may appear.
    assert [e for e in page.errors if "422" not in e] == []


# Drives api.js's Stream with a fake REST client whose /metrics answers the test releases by
# hand, so the interleavings that matter happen in a fixed order: live events arriving while
# history is in flight, duplicates of what history held, and a `resync`.
STREAM_SCENARIO = """async () => {
  const { Stream } = await import('/static/js/api.js');
  const calls = [], live = [], history = [];
  let release;
  const api = {
    metrics: (id, since) => { calls.push(since); return new Promise(r => { release = r; }); },
  };
  const stream = new Stream(api, {
    run() {}, history: (id, cols) => history.push(cols.seq), event: m => live.push(m.seq),
  });
  const metrics = seq => stream.receive({ type: 'metrics', run_id: 'r1', seq, step: seq });
  const tick = () => new Promise(r => setTimeout(r, 0));

  stream.setWatched(['r1']);              // fetch since 0 starts
  metrics(3); metrics(4);                 // live, while history is in flight: held back
  release({ seq: [2, 3], events: [{ type: 'run.started', seq: 1 }] });
  await tick();
  metrics(4); metrics(5);                 // 4 was delivered already
  stream.receive({ type: 'resync', run_id: null, seq: null });  // fetch since 5
  metrics(7); metrics(8);                 // held back again
  release({ seq: [6, 7], events: [] });
  await tick();
  stream.receive({ type: 'metrics', run_id: 'other', seq: 9 });  // not watched
  return { calls, live, history };
}"""


def test_stream_resumes_by_seq_without_gaps_or_duplicates(live_server: Any, page: Any) -> None:
    open_dashboard(page, live_server)
    result = page.evaluate(STREAM_SCENARIO)
    assert result["calls"] == [0, 5]                  # from the start, then from the last seq seen
    assert result["history"] == [[2, 3], [6, 7]]
    assert result["live"] == [4, 5, 8]                # each seq once, in order, after history
    assert page.errors == []
