"""The page with many and foreign runs, in a real Chromium against a real server (issue 17): a run
from a person's own loop (gradwatch.connect, config {"lr": 0.1}) compared with a built-in run
shows only the config each has and never widens the page; hovering a line chart reads every shown
run's value at that step; dark mode follows the system; a run keeps its color across selections;
a fresh page's first selection lasts only until the person picks; a live step rewrites only the
cells that changed."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from .browserkit import LIVE, browser_fixture, open_dashboard, page_fixture  # noqa: F401 - fixtures
from .conftest import LiveServer, wait_for

pytestmark = pytest.mark.browser

BUILT_IN = {"dataset": "synthetic", "depth": 2, "width": 16, "steps": 40, "eval_every": 0, "device": "cpu"}
STEPS = 40


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = LiveServer(tmp_path_factory.mktemp("page") / "data").start()
    yield s
    s.stop()


def own_loop(server: LiveServer, name: str, steps: int = STEPS, until: threading.Event | None = None,
             started: list | None = None) -> str:
    """A person's own loop in this process: a tiny model trained for `steps` steps (or, with
    `until`, until it is set: its run id goes into `started` at once), streamed with
    gradwatch.connect, which sends only the config it is given."""
    import torch
    from gradwatch import connect
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long()
    run = connect(server.url, token=server.token, name=name, config={"lr": 0.1})
    run.watch(model, optimizer)
    if started is not None:
        started.append(run.id)
    step = 0
    while (step < steps) if until is None else not until.wait(0.02):  # a live run: ~50 steps/s at most
        step += 1
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        run.record(loss, (logits.argmax(1) == y).float().mean())
        optimizer.step()
    assert run.finish(timeout=60), run.error
    return run.id


@pytest.fixture(scope="module")
def pair(server: LiveServer) -> dict[str, dict]:
    """A built-in run and a run from a person's own loop, both ended, with STEPS steps each."""
    built_in = server.create_run(BUILT_IN, name="built-in")
    own = own_loop(server, "my loop")
    built_in = server.wait_status(built_in["id"], ("completed",), timeout=240)  # a busy 2-core machine
    return {"built_in": built_in, "own": server.wait_status(own, ("completed",))}


CHIPS = """() => [...document.querySelectorAll('#chips .chip')].map(c => ({
  id: c.dataset.runId, text: c.textContent, diffs: [...c.querySelectorAll('.diff')].map(d => d.textContent) }))"""
WIDTH = "[document.documentElement.scrollWidth, innerWidth]"
LOSS_RUNS_DRAWN = ("document.getElementById('chart-loss').data"
                   ".filter(t => t.showlegend !== false && t.x.length > 0).length")


@pytest.mark.parametrize("width", [1400, 800])
def test_an_own_loop_run_beside_a_built_in_one_shows_only_the_config_each_has(
        server: LiveServer, pair: dict, page: Any, width: int) -> None:
    page.set_viewport_size({"width": width, "height": 1000})
    b, o = pair["built_in"], pair["own"]
    open_dashboard(page, server, f"&runs={b['id']},{o['id']}&focus={o['id']}")
    page.wait_for_function("document.querySelectorAll('#chips .chip').length === 2")
    page.wait_for_function(f"{LOSS_RUNS_DRAWN} === 2")
    # What the two configs share and where they differ, from the server's records.
    shared = [k for k in b["config"] if k in o["config"]]
    differ = [k for k in shared if b["config"][k] != o["config"][k]]
    assert differ == ["lr"] and o["config"] == {"lr": 0.1}
    chips = {c["id"]: c for c in page.evaluate(CHIPS)}
    assert chips[o["id"]]["diffs"] == ["lr 0.1"]
    assert chips[b["id"]]["diffs"] == [f"lr {b['config']['lr']:g}"]
    assert not any("undefined" in c["text"] for c in chips.values())
    note = page.text_content("#chips .chips-note")
    unshared = len(set(b["config"]) ^ set(o["config"]))
    assert note == f"differ in: lr ({unshared} fields not in every run)"
    # The details of the own-loop run: the config it sent, nothing more.
    page.wait_for_function("document.querySelector('#detail .config').textContent === 'lr=0.1'")
    assert "undefined" not in page.text_content("#detail")
    # Nothing widens the page past the window, with every figure in view drawn.
    for fig in ("chart-loss", "chart-layers", "chart-heatmap"):
        page.locator(f"#{fig}").scroll_into_view_if_needed()
    page.wait_for_function("gradwatch.charts.jobs.filter(j => j.visible).every(j => j.draws > 0)")
    scroll, inner = page.evaluate(WIDTH)
    assert inner == width and scroll <= inner, f"the page is {scroll} px wide in a {inner} px window"
    assert page.errors == []


# Where step `step` is on the loss chart (x), halfway up its plot area (y), in page pixels.
AT_STEP = """(step) => {
  const gd = document.getElementById('chart-loss'), L = gd._fullLayout, box = gd.getBoundingClientRect();
  return [box.left + L._size.l + L.xaxis.l2p(step), box.top + L._size.t + L._size.h / 2];
}"""
HOVER_BOX = """() => {
  const box = document.querySelector('#chart-loss .hoverlayer .legend');
  if (!box) return null;
  return { title: box.querySelector('.legendtitletext')?.textContent ?? '',
           rows: [...box.querySelectorAll('.legendtext')].map(t => t.textContent) };
}"""


def test_hovering_a_line_chart_reads_every_shown_run_at_that_step(server: LiveServer, pair: dict, page: Any) -> None:
    b, o = pair["built_in"], pair["own"]
    open_dashboard(page, server, f"&runs={b['id']},{o['id']}&smooth=0&scale=linear")
    page.wait_for_function(f"{LOSS_RUNS_DRAWN} === 2")
    page.wait_for_function("document.getElementById('chart-loss').data.filter(t => t.showlegend !== false)"
                           f".every(t => t.x.length === {STEPS})")
    names = {b["id"]: b["name"], o["id"]: o["name"]}
    for step in (12, 31):
        page.mouse.move(*page.evaluate(AT_STEP, step))
        page.wait_for_function(f"({HOVER_BOX})()?.title === 'step {step}'")
        rows = page.evaluate(HOVER_BOX)["rows"]
        shown = dict(re.fullmatch(r"(.+): (\S+)", r).groups() for r in rows)
        assert set(shown) == set(names.values()), rows
        for run_id, name in names.items():
            hist = server.client.get(f"/api/runs/{run_id}/metrics").json()
            want = hist["loss"][hist["step"].index(step)]
            assert float(shown[name]) == pytest.approx(want, rel=1e-3), (name, step, rows)
        page.mouse.move(5, 5)  # away: the box goes
        page.wait_for_function(f"({HOVER_BOX})() === null")
    assert page.errors == []


COLORS = """() => {
  const gd = document.getElementById('chart-loss'), css = el => getComputedStyle(el);
  return { page: css(document.documentElement).backgroundColor,
           card: css(document.querySelector('.card')).backgroundColor,
           text: css(document.body).color, paper: gd._fullLayout.paper_bgcolor, plot: gd._fullLayout.plot_bgcolor,
           font: gd._fullLayout.font.color,
           drawn: gd.querySelector('.main-svg .bg')?.style.fill ?? css(gd.querySelector('.main-svg')).backgroundColor };
}"""


def luminance(color: str) -> float:
    """0 (black) to 1 (white), of "#rrggbb", "#rgb" or "rgb(r, g, b)"."""
    if color.startswith("#"):
        h = color[1:] if len(color) == 7 else "".join(c * 2 for c in color[1:4])
        r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    else:
        r, g, b = (float(v) for v in re.findall(r"[\d.]+", color)[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


def test_dark_mode_follows_the_system_setting(server: LiveServer, pair: dict, browser: Any, page: Any) -> None:
    b, o = pair["built_in"], pair["own"]
    query = f"&runs={b['id']},{o['id']}"
    open_dashboard(page, server, query)  # the default: light
    page.wait_for_function(f"{LOSS_RUNS_DRAWN} === 2")
    light = {k: luminance(v) for k, v in page.evaluate(COLORS).items()}
    dark_page = browser.new_page(viewport={"width": 1400, "height": 1000}, bypass_csp=True, color_scheme="dark")
    errors: list[str] = []
    dark_page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    dark_page.set_default_timeout(30_000)
    try:
        open_dashboard(dark_page, server, query)
        dark_page.wait_for_function(f"{LOSS_RUNS_DRAWN} === 2")
        dark = {k: luminance(v) for k, v in dark_page.evaluate(COLORS).items()}
    finally:
        dark_page.close()
    surfaces = ("page", "card", "paper", "plot", "drawn")
    assert all(light[k] > 0.8 for k in surfaces) and light["text"] < 0.3 and light["font"] < 0.3, light
    # Dark surfaces (the chart's paper and plot area, as drawn, too) under light text.
    assert all(dark[k] < 0.15 for k in surfaces) and dark["text"] > 0.7 and dark["font"] > 0.7, dark
    assert errors == [] and page.errors == []


COLOR_OF = """(id) => ({
  chip: document.querySelector(`#chips .chip[data-run-id="${id}"]`)?.style.getPropertyValue('--run'),
  line: document.getElementById('chart-loss').data
    .find(t => t.legendgroup === id && t.showlegend !== false)?.line.color })"""
HASH_COLORS = "async ids => { const m = await import('/static/js/colors.js'); return ids.map(m.hashColor); }"
# The color the second of two clashing runs gets beside the first, from nothing remembered.
SECOND_COLOR = "async ([a, b]) => (await import('/static/js/colors.js')).assignColors([], [a, b]).get(b)"


def test_a_run_keeps_its_color_in_every_selection(server: LiveServer, pair: dict, page: Any) -> None:
    """Two runs whose ids hash to the same palette slot (found among a few made for it): the one
    shown first keeps its color when the other joins, and both keep theirs in other selections.

    The third run (the built-in one, whose chart line is drawn too) has a color of its own, found
    first: a pair is only used if neither of its colors is that one, since a run joining one that
    holds its color is rightly told apart (that rule has its own assertion in the unit tests)."""
    open_dashboard(page, server)
    made: list[str] = []
    other = pair["built_in"]["id"]
    page.wait_for_function(f"gradwatch.runs.has('{other}')")

    def show(ids: list[str]) -> dict[str, str]:
        page.evaluate(f"gradwatch.state.set({{selected: {ids!r}}})")
        # These runs' chips, not the last selection's (two selections in a row have two chips).
        page.wait_for_function(f"[...document.querySelectorAll('#chips .chip')].map(c => c.dataset.runId)"
                               f".sort().join() === {','.join(sorted(ids))!r}")
        page.wait_for_function(f"({COLOR_OF})('{other}').line !== undefined" if other in ids else "true")
        got = {i: page.evaluate(COLOR_OF, i) for i in ids}
        for i, c in got.items():
            if c["line"] is not None:
                assert c["line"] == c["chip"], (i, c)  # the chart and the chip agree
        return {i: c["chip"] for i, c in got.items()}

    try:
        own = show([other])[other]
        clash = None
        while clash is None:  # a pair of ids among 10 colors, neither color the third run's: ~6 ids
            assert len(made) < 40
            r = server.client.post("/api/runs", json={"name": f"color-{len(made)}", "external": True, "config": {}})
            assert r.status_code == 201, r.text
            made.append(r.json()["id"])
            colors = page.evaluate(HASH_COLORS, made)
            for a, b in ((a, b) for i, a in enumerate(made) for j, b in enumerate(made)
                         if i < j and colors[i] == colors[j] != own):
                if page.evaluate(SECOND_COLOR, [a, b]) != own:
                    clash = (a, b)
                    break
        older, newer = clash
        page.wait_for_function(f"gradwatch.runs.has('{older}') && gradwatch.runs.has('{newer}')")
        first = show([newer])[newer]
        both = show([newer, older])
        assert both[newer] == first  # not recolored by the older run joining it
        assert both[older] != first  # and the two are told apart
        assert show([older, other]) == {older: both[older], other: own}
        assert show([other, newer]) == {other: own, newer: first}
        # A reload remembers them (this browser's storage).
        page.reload()
        page.wait_for_function(LIVE)
        page.wait_for_function("gradwatch.listed")
        assert show([older])[older] == both[older]
    finally:
        for run_id in made:
            server.client.delete(f"/api/runs/{run_id}")
    assert page.errors == []


SELECTED = "gradwatch.state.get().selected"


def test_a_fresh_page_s_first_selection_lasts_until_the_person_picks(server: LiveServer, pair: dict, page: Any) -> None:
    open_dashboard(page, server)
    arrival = page.evaluate(SELECTED)
    assert arrival  # what is running, else the newest run
    page.wait_for_function("document.querySelector('#chips .chips-note').textContent.startsWith('shown on arrival')")
    picks = [r["id"] for r in (pair["own"], pair["built_in"]) if r["id"] not in arrival]
    assert picks
    # The first run the person ticks starts their comparison: the arrival's runs leave it.
    page.locator(f"#runs tr[data-run-id='{picks[0]}'] input.select").check()
    page.wait_for_function(f"JSON.stringify({SELECTED}) === JSON.stringify(['{picks[0]}'])")
    page.wait_for_function(f"location.search.includes('runs={picks[0]}') && !location.search.includes('{arrival[-1]}')")
    # The next ones join it.
    other = next(r for r in server.client.get("/api/runs").json() if r["id"] != picks[0])["id"]
    page.locator(f"#runs tr[data-run-id='{other}'] input.select").check()
    page.wait_for_function(f"JSON.stringify({SELECTED}) === JSON.stringify(['{picks[0]}', '{other}'])")
    assert not page.text_content("#chips .chips-note").startswith("shown on arrival")
    assert page.errors == []


MUTATIONS = """() => {
  window.seen = [];
  const where = node => {
    const el = node.nodeType === 1 ? node : node.parentElement;
    const tr = el?.closest('tr');
    return { run: tr?.dataset.runId ?? null, cell: el?.closest('td')?.className ?? null, what: el?.className ?? '' };
  };
  window.collect = records => {
    for (const r of records) {
      seen.push({ type: r.type, attr: r.attributeName, added: [...r.addedNodes].map(n => n.nodeName),
                  removed: [...r.removedNodes].map(n => n.nodeName), ...where(r.target) });
    }
  };
  window.observer = new MutationObserver(collect);
  observer.observe(document.querySelector('#runs tbody'),
                   { subtree: true, childList: true, attributes: true, characterData: true });
}"""
STEP_CELL = "(id) => parseInt(document.querySelector(`#runs tr[data-run-id=\"${id}\"] td.step`)?.textContent)"


def test_a_live_step_rewrites_only_the_cells_that_changed(server: LiveServer, pair: dict, page: Any) -> None:
    stop, started = threading.Event(), []
    loop = threading.Thread(target=own_loop, args=(server, "streaming"),
                            kwargs={"until": stop, "started": started}, daemon=True)
    loop.start()
    try:
        live = wait_for(lambda: started and started[0], timeout=30, what="the loop to connect")
        ended = [pair["built_in"]["id"], pair["own"]["id"]]
        open_dashboard(page, server, f"&runs={live},{ended[0]}")
        page.wait_for_function(f"({STEP_CELL})('{live}') > 0")
        page.evaluate(MUTATIONS)
        start = page.evaluate(STEP_CELL, live)
        page.wait_for_function(f"({STEP_CELL})('{live}') >= {start + 10}", timeout=60_000)
        seen = page.evaluate("(() => { collect(observer.takeRecords()); observer.disconnect(); return seen; })()")
    finally:
        stop.set()
        loop.join(90)
    # Rows are neither added, removed nor moved, and the ended runs' rows are not touched at all.
    assert not [m for m in seen if m["type"] == "childList" and "TR" in m["added"] + m["removed"]]
    assert not [m for m in seen if m["run"] in ended], [m for m in seen if m["run"] in ended][:5]
    # The streaming run's row: its step and loss cells changed (its accuracy may not have); its
    # name, checkbox and buttons did not (a whole-row rewrite would touch them every step).
    mine = [m for m in seen if m["run"] == live]
    cells = {m["cell"] for m in mine}
    assert {"num step", "num loss"} <= cells, cells
    assert cells <= {"num step", "num loss", "num acc", "num best", "num alerts", "status"}, cells
    assert server.wait_status(live, ("completed",))["summary"]["step"] > start
    assert page.errors == []


def test_a_preset_s_runs_are_compared_only_with_its_own_variants(server: LiveServer, pair: dict, page: Any) -> None:
    """The person compares a run of theirs, then starts two variants of a preset: the preset's
    first run replaces the comparison, its second joins the first."""
    open_dashboard(page, server)
    own = pair["own"]["id"]
    page.locator(f"#runs tr[data-run-id='{own}'] input.select").check()
    page.wait_for_function(f"JSON.stringify({SELECTED}) === JSON.stringify(['{own}'])")
    page.select_option("#preset", "explosion")
    variants = page.locator("#preset-about button.variant")
    assert variants.count() >= 2
    made = []
    try:
        for k in range(2):
            variants.nth(k).click()
            if not page.is_visible("#steps"):
                page.click("#more summary")
            page.fill("#steps", "5")  # a short run: the selection is what is looked at
            before = len(server.client.get("/api/runs").json())
            page.click("#start")
            run = wait_for(lambda before=before: (lambda rs: rs[0] if len(rs) > before else None)(
                sorted(server.client.get("/api/runs").json(), key=lambda r: -r["created"])), timeout=30,
                what="the preset's run")
            assert run["preset"]["name"] == "explosion"
            made.append(run["id"])
            page.wait_for_function(f"JSON.stringify({SELECTED}) === JSON.stringify({made!r})")
    finally:
        for run_id in made:  # 5 steps; whatever is left of them is not looked at
            server.client.post(f"/api/runs/{run_id}/stop")
    assert page.errors == []
