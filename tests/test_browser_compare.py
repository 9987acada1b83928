"""Compare and intervene, in a real Chromium against a real server and real workers (issue 4):
the "Ablate BN × L2" button starts four runs that train live side by side in the group view;
changing L2 on a running run draws a marker on each of its charts; a reload (or the copied
link) restores the comparison from the URL; export and PNG download files. Plus the pure
modules behind the charts (smoothing, config diff, the group grid, markers, URL state)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .browserkit import (  # noqa: F401 - fixtures
    browser_fixture,
    open_dashboard,
    page_fixture,
    screenshot_whole_page,
)
from .conftest import LiveServer, wait_for

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parent.parent

FAST = {"dataset": "synthetic", "depth": 2, "width": 16, "eval_every": 20}
# Traces of a figure that carry a legend entry / belong to a run (uid "t-<run id>-...").
RUNS_OF = "(id) => document.getElementById(id).data.filter(t => t.showlegend !== false)"
POINTS_OF_RUN = """([fig, run]) => document.getElementById(fig).data
    .filter(t => (t.uid || '').startsWith('t-' + run + '-')).reduce((n, t) => n + t.x.length, 0)"""
LABELS = "(id) => (document.getElementById(id).layout.annotations || []).map(a => a.text)"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # Four workers at once: the four cells of the ablation train side by side. A run is idle
    # after 2 s without a step (30 s by default), for the "no step for" note.
    s = LiveServer(tmp_path_factory.mktemp("compare") / "data",
                   env={"GRADWATCH_MAX_CONCURRENT": "4", "GRADWATCH_IDLE_NOTE_S": "2"}).start()
    yield s
    s.stop()


def fill_form(page: Any, name: str, steps: int, l2: str = "0", batchnorm: bool = False) -> None:
    page.fill("#name", name)
    page.set_checked("#batchnorm", batchnorm)
    page.fill("#l2", l2)
    if not page.is_visible("#steps"):
        page.click("#more summary")
    page.select_option("#dataset", FAST["dataset"])
    page.fill("#depth", str(FAST["depth"]))
    page.fill("#width", str(FAST["width"]))
    page.fill("#eval_every", str(FAST["eval_every"]))
    page.fill("#steps", str(steps))


def stop_all(server: LiveServer) -> None:
    for run in server.client.get("/api/runs").json():
        if run["status"] in ("queued", "running"):
            server.client.post(f"/api/runs/{run['id']}/stop")


def test_ablation_button_starts_four_runs_that_train_live_in_the_group_view(server: LiveServer, page: Any) -> None:
    open_dashboard(page, server)
    fill_form(page, "abl", steps=100_000, l2="0")
    page.click("#ablate")

    # The group: BatchNorm off/on x L2 0 / 0.01 (the form said 0), one run each.
    page.locator("#group tbody tr").nth(3).wait_for()
    groups = server.client.get("/api/groups").json()
    assert len(groups) == 1
    group = server.client.get(f"/api/groups/{groups[0]['id']}").json()
    cells = {(r["config"]["batchnorm"], r["config"]["l2"]): r["id"] for r in group["runs"]}
    assert set(cells) == {(False, 0), (False, 0.01), (True, 0), (True, 0.01)}
    assert all(r["config"]["width"] == 16 and r["config"]["dataset"] == "synthetic" for r in group["runs"])
    # The URL names the group and its four runs.
    page.wait_for_function(f"location.search.includes('group={group['id']}')")
    assert all(run_id in page.url for run_id in cells.values())

    # All four train at once: the summary table says so, and each cell's panel of the small
    # multiples and its line on the main charts grow while we watch.
    page.wait_for_function(
        "[...document.querySelectorAll('#group tbody .badge')].filter(b => b.textContent === 'running').length === 4",
        timeout=60_000)
    counts = {}
    for run_id in cells.values():
        page.wait_for_function(f"({POINTS_OF_RUN})(['chart-group', '{run_id}']) > 0", timeout=60_000)
        counts[run_id] = page.evaluate(f"({POINTS_OF_RUN})(['chart-group', '{run_id}'])")
    for run_id, before in counts.items():
        page.wait_for_function(f"({POINTS_OF_RUN})(['chart-group', '{run_id}']) > {before}", timeout=60_000)
        page.wait_for_function(f"({POINTS_OF_RUN})(['chart-loss', '{run_id}']) > 0")
    assert page.evaluate(f"({RUNS_OF})('chart-loss').length") == 4
    # Panels sit on the BN x L2 grid: rows BatchNorm off/on, columns L2 0/0.01.
    titles = page.evaluate("document.getElementById('chart-group').layout.annotations"
                           ".filter(a => a.name === 'panel-title').map(a => a.text)")
    assert titles == ["batchnorm off · l2 0", "batchnorm off · l2 0.01",
                      "batchnorm on · l2 0", "batchnorm on · l2 0.01"]
    # The chips name only what differs between the four (their names say it already, so the
    # chips do not repeat it).
    page.wait_for_function("document.querySelectorAll('#chips .chip').length === 4")
    assert page.text_content("#chips .chips-note") == "differ in: batchnorm, l2"
    assert page.evaluate("[...document.querySelectorAll('#chips .chip b')].map(b => b.textContent).sort()") == [
        "batchnorm=off l2=0", "batchnorm=off l2=0.01", "batchnorm=on l2=0", "batchnorm=on l2=0.01"]
    # The summary table fills in as they go.
    page.wait_for_function(
        "[...document.querySelectorAll('#group tbody td.step')].every(td => Number(td.textContent) > 0)")

    stop_all(server)
    page.wait_for_function(
        "[...document.querySelectorAll('#group tbody .badge')].every(b => b.textContent === 'stopped')", timeout=60_000)
    # Then each row says what its run's recorded history says: the last step, its loss, the best
    # validation accuracy, the alerts, no divergence.
    for run_id in cells.values():
        hist = server.client.get(f"/api/runs/{run_id}/metrics", params={"max_points": 100_000}).json()
        row = f"#group tbody tr[data-run-id='{run_id}']"
        page.wait_for_function(f"document.querySelector(\"{row} td.step\").textContent === '{hist['step'][-1]}'")
        cell = {c: page.text_content(f"{row} td.{c}") for c in ("diverged", "alerts", "loss", "best")}
        assert cell["diverged"] == "—" and cell["alerts"] == str(sum(e["type"] == "alert" for e in hist["events"]))
        assert float(cell["loss"]) == pytest.approx(hist["loss"][-1], rel=5e-3), (cell, hist["loss"][-1])  # 3-4 digits
        best = max(hist["val"]["accuracy"], default=None)
        assert cell["best"] == ("—" if best is None else f"{100 * best:.1f}%"), (cell, hist["val"])
    assert page.errors == []


def test_changing_l2_on_a_running_run_draws_a_marker_on_its_charts(server: LiveServer, page: Any) -> None:
    open_dashboard(page, server)
    fill_form(page, "live-l2", steps=100_000, l2="0")
    page.click("#start")
    run_id = wait_for(lambda: next((r["id"] for r in server.client.get("/api/runs").json()
                                    if r["name"] == "live-l2"), None), what="the run")
    # A new run is selected and focused: its details panel offers the live change.
    live = page.locator("#detail form.live")
    live.wait_for()
    page.wait_for_function(f"({POINTS_OF_RUN})(['chart-loss', '{run_id}']) > 5", timeout=60_000)
    live.locator("input[name=l2]").fill("0.5")
    live.locator(".apply").click()

    iv = wait_for(lambda: [e for e in server.client.get(f"/api/runs/{run_id}/metrics").json()["events"]
                           if e["type"] == "intervention"], what="the intervention event")
    step = iv[0]["step"]
    # Every step-indexed chart of the run draws it: a dashed line at its step, labelled.
    for fig in ("chart-loss", "chart-acc", "chart-gnorm", "chart-dead", "chart-heatmap"):
        page.locator(f"#{fig}").scroll_into_view_if_needed()  # a figure out of view is drawn when seen
        page.wait_for_function(f"({LABELS})('{fig}').includes('l2 0→0.5')", timeout=30_000)
        shapes = page.evaluate(f"document.getElementById('{fig}').layout.shapes")
        assert any(s["name"] == "intervention l2 0→0.5" and s["x0"] == step and s["line"]["dash"] == "dash"
                   for s in shapes), (fig, shapes)
    # The scrubber's timeline too, and the details panel lists it.
    page.wait_for_function("document.querySelectorAll('#scrubber .tick.intervention').length === 1")
    page.locator("#detail .events li", has_text="l2 0 → 0.5").wait_for()
    # The live inputs now hold the new value.
    page.wait_for_function("document.querySelector('#detail form.live input[name=l2]').value === '0.5'")

    stop_all(server)
    assert page.errors == []


Y_OF_RUN = """([fig, run]) => document.getElementById(fig).data
    .filter(t => (t.uid || '').startsWith('t-' + run + '-')).flatMap(t => t.y).filter(v => v != null)"""
FINITE_OF_RUN = f"(args) => ({Y_OF_RUN})(args).length"


def test_effective_learning_rate_and_dead_units_are_drawn_live(server: LiveServer, page: Any) -> None:
    """The every-10-steps statistics: lr/||w||^2 of the weights feeding a BN (BN runs only) and
    the dead ReLU fraction, for each selected run, from history and then live."""
    base = {**FAST, "steps": 100_000, "stats_every": 10}
    bn = server.create_run({**base, "batchnorm": True, "l2": 0.01}, name="stats-bn")
    plain = server.create_run({**base, "batchnorm": False}, name="stats-plain")
    for run in (bn, plain):  # some history before the page opens
        wait_for(lambda run=run: server.run(run["id"])["summary"].get("step", 0) > 30, timeout=60,
                 what="the run to train")
    open_dashboard(page, server, f"&runs={bn['id']},{plain['id']}&focus={bn['id']}")
    # Below the fold and not drawn yet: it says so (not "select a run": two are selected).
    page.wait_for_function("[...document.querySelectorAll('#chart-dead .annotation-text')]"
                           ".some(e => e.textContent === 'drawn when scrolled into view')", timeout=10_000)
    for fig in ("chart-efflr", "chart-dead"):
        page.locator(f"#{fig}").scroll_into_view_if_needed()
    page.wait_for_function(f"({FINITE_OF_RUN})(['chart-efflr', '{bn['id']}']) > 2", timeout=30_000)
    page.wait_for_function(f"({FINITE_OF_RUN})(['chart-dead', '{plain['id']}']) > 2", timeout=30_000)
    # The values are the server's: the first point is the median eff. lr at step 1.
    first = server.client.get(f"/api/runs/{bn['id']}/metrics").json()["stats"]
    eff1 = sorted(first["eff_lr"][0])
    assert first["step"][0] == 1 and len(eff1) == FAST["depth"]
    expected = (eff1[0] + eff1[1]) / 2  # depth 2: the median of two
    drawn = page.evaluate(f"({Y_OF_RUN})(['chart-efflr', '{bn['id']}'])")
    assert drawn[0] == pytest.approx(expected, rel=1e-5)
    assert page.evaluate(f"({FINITE_OF_RUN})(['chart-efflr', '{plain['id']}'])") == 0  # no BN
    assert all(0 <= v <= 1 for v in page.evaluate(f"({Y_OF_RUN})(['chart-dead', '{bn['id']}'])"))
    # Live: more points while we watch.
    before = page.evaluate(f"({FINITE_OF_RUN})(['chart-efflr', '{bn['id']}'])")
    page.wait_for_function(f"({FINITE_OF_RUN})(['chart-efflr', '{bn['id']}']) > {before}", timeout=30_000)
    # The heatmap shows the same statistics per activation: dead units, drawn linear (0 to 1).
    page.select_option("#heatmap-stat", "dead_frac")
    page.locator("#chart-heatmap").scroll_into_view_if_needed()
    page.wait_for_function("JSON.stringify(document.getElementById('chart-heatmap').data[0]?.y) === "
                           "JSON.stringify(['act1', 'act2'])", timeout=30_000)
    assert page.evaluate("document.getElementById('chart-heatmap').data[0].zmax") == 1
    assert "stat=dead_frac" in page.url
    # Only the plain run selected: the chart says why it is empty.
    page.click(f"#runs tr[data-run-id='{bn['id']}'] input.select")
    page.locator("#chart-efflr").scroll_into_view_if_needed()  # the click scrolled up to the list
    page.wait_for_function(f"({LABELS})('chart-efflr').some(t => t.includes('no BatchNorm'))", timeout=30_000)
    stop_all(server)
    assert page.errors == []


def test_a_live_run_without_steps_says_so_until_its_next_step(server: LiveServer, page: Any) -> None:
    import torch
    from gradwatch import connect

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        run.record(loss)
        opt.step()

    run = connect(server.url, token=server.token, name="stuck-loop")
    try:
        run.watch(model, opt)
        for _ in range(3):
            step()
        open_dashboard(page, server)
        # The loop stops stepping; its sender thread beats on, so the run stays running...
        idle = page.locator(f"#runs tr[data-run-id='{run.id}'] .idle")
        page.wait_for_function(f"document.querySelector(\"#runs tr[data-run-id='{run.id}'] .idle\")"
                               "?.textContent.startsWith('no step for')", timeout=30_000)
        record = server.run(run.id)
        assert record["status"] == "running" and record["idle_s"] >= 2
        assert record["summary"]["step"] == 3
        # ...and the note counts on, on the page's clock, with no message from the server.
        first = idle.text_content()
        page.wait_for_function(f"document.querySelector(\"#runs tr[data-run-id='{run.id}'] .idle\")"
                               f".textContent !== {first!r}", timeout=10_000)
        step()  # a step: the note goes
        page.wait_for_function(f"document.querySelector(\"#runs tr[data-run-id='{run.id}'] .idle\")"
                               ".textContent === ''", timeout=30_000)
        assert server.run(run.id)["idle_s"] is None
    finally:
        run.finish()
    assert server.wait_status(run.id, ("completed",))["summary"]["step"] == 4
    assert page.errors == []


def test_weights_only_profiles_drop_biases_and_batchnorm_and_survive_a_reload(server: LiveServer, page: Any) -> None:
    run = server.create_run({**FAST, "steps": 30, "batchnorm": True}, name="profiles-bn")
    server.wait_status(run["id"], ("completed",))
    open_dashboard(page, server, f"&runs={run['id']}&layers=all")
    x_of = "(id) => document.getElementById(id).data.flatMap(t => t.x)"
    # Out of view once the module's runs fill the list above it, and a figure out of view waits.
    page.locator("#chart-layers").scroll_into_view_if_needed()
    page.wait_for_function(f"({x_of})('chart-layers').includes('bn1.weight')")
    every = page.evaluate(f"({x_of})('chart-layers')")
    assert every[:4] == ["fc1.weight", "bn1.weight", "bn1.bias", "fc2.weight"], every
    page.check("#weights-only")  # the default (issue 11), so it leaves the URL
    page.wait_for_function("!location.search.includes('layers=')")
    weights = ["fc1.weight", "fc2.weight", "out.weight"]  # no biases, no BatchNorm γ/β
    for fig in ("chart-layers", "chart-weights", "chart-updates"):
        page.locator(f"#{fig}").scroll_into_view_if_needed()
        page.wait_for_function(f"JSON.stringify(({x_of})('{fig}')) === '{json.dumps(weights, separators=(',', ':'))}'")
    # the values are the same ones, fewer of them
    y_all = server.client.get(f"/api/runs/{run['id']}/metrics").json()["grad_norm"][-1]
    y = page.evaluate("document.getElementById('chart-layers').data[0].y")
    assert y == pytest.approx([y_all[every.index(name)] for name in weights], rel=1e-6)
    page.reload()
    page.wait_for_function("document.querySelector('#weights-only').checked")
    page.locator("#chart-layers").scroll_into_view_if_needed()
    page.wait_for_function(f"({x_of})('chart-layers').length === 3")
    assert page.errors == []


def test_a_reload_or_the_copied_link_restores_the_comparison(server: LiveServer, browser: Any, page: Any) -> None:
    a = server.create_run({**FAST, "steps": 60, "batchnorm": False}, name="cmp-bn-off")
    b = server.create_run({**FAST, "steps": 60, "batchnorm": True}, name="cmp-bn-on")
    for r in (a, b):
        server.wait_status(r["id"], ("completed",))
    open_dashboard(page, server)
    rows = page.locator("#runs tr[data-run-id]")
    # Whatever was selected on arrival, compare exactly these two, focus one, and set the views.
    page.evaluate("gradwatch.state.set({selected: []})")
    for r in (a, b):
        rows.filter(has_text=r["name"]).locator("input.select").check()
    rows.filter(has_text="cmp-bn-on").locator("button.focus").click()
    page.wait_for_function(f"({RUNS_OF})('chart-loss').filter(t => t.x.length > 0).length === 2")
    page.evaluate("""() => { const s = document.getElementById('smooth');
                             s.value = '0.9'; s.dispatchEvent(new Event('input', {bubbles: true})); }""")
    page.click("[data-scale=log]")
    page.evaluate("""() => { const s = document.getElementById('scrub');
                             s.value = '30'; s.dispatchEvent(new Event('input', {bubbles: true})); }""")
    page.select_option("#heatmap-stat", "update_ratio")
    page.wait_for_function("location.search.includes('stat=update_ratio')")
    url = page.url
    for part in (f"runs={a['id']},{b['id']}", f"focus={b['id']}", "smooth=0.9", "scale=log", "step=30"):
        assert part in url, (part, url)

    def same_view(p: Any) -> None:
        p.wait_for_function(f"({RUNS_OF})('chart-loss').filter(t => t.x.length > 0).length === 2")
        p.wait_for_function("document.querySelectorAll('#runs input.select:checked').length === 2")
        checked = p.evaluate("[...document.querySelectorAll('#runs input.select:checked')]"
                             ".map(c => c.closest('tr').dataset.runId)")
        assert sorted(checked) == sorted([a["id"], b["id"]])
        assert p.evaluate("document.getElementById('chart-loss').layout.yaxis.type") == "log"
        assert p.evaluate("document.getElementById('smooth').value") == "0.9"
        p.wait_for_function("document.querySelector('#scrubber .step-label').textContent.startsWith('30 of')")
        p.wait_for_function("document.getElementById('chart-layers').data.every(t => / @ step 30$/.test(t.name))")
        p.wait_for_function("document.querySelector('#detail .detail-name').textContent === 'cmp-bn-on'")
        p.locator("#chart-heatmap").scroll_into_view_if_needed()  # figures out of view wait
        p.wait_for_function("(document.getElementById('chart-heatmap').data[0]?.colorbar?.title?.text || '')"
                            ".includes('update ratio')")
        # The chips say what the two differ in.
        p.wait_for_function("[...document.querySelectorAll('#chips .diff')].map(d => d.textContent).join() "
                            "=== 'batchnorm off,batchnorm on'")

    page.reload()
    same_view(page)
    assert page.url == url
    # The copied link, in a browser without the session: signing in leads back to the same view.
    other = browser.new_page(viewport={"width": 1400, "height": 1250}, bypass_csp=True)
    other.errors = []
    other.on("pageerror", lambda e: other.errors.append(str(e)))
    other.goto(url)
    other.fill("#token", server.token)  # the sign-in page, which keeps the view for after
    other.click("button[type=submit]")
    other.wait_for_url(url)  # signed in, and back to the view as the link had it
    same_view(other)
    assert other.errors == [] and page.errors == []
    other.close()


def test_export_and_png_download_files(server: LiveServer, page: Any, tmp_path: Path) -> None:
    run = server.create_run({**FAST, "steps": 40}, name="to-export")
    server.wait_status(run["id"], ("completed",))
    open_dashboard(page, server, f"&runs={run['id']}&focus={run['id']}")
    page.wait_for_function(f"({POINTS_OF_RUN})(['chart-loss', '{run['id']}']) > 0")

    with page.expect_download() as download:
        page.click("#detail a.export[data-format=csv]")
    assert download.value.suggested_filename == f"gradwatch-{run['id']}.csv"
    path = tmp_path / "run.csv"
    download.value.save_as(path)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("seq,step,time,loss,accuracy,global_grad_norm")
    assert len(lines) == 1 + 40  # a header and one row per step

    with page.expect_download() as download:
        page.click("#detail a.export[data-format=json]")
    download.value.save_as(tmp_path / "run.json")
    assert (tmp_path / "run.json").read_bytes().startswith(b"{")

    with page.expect_download() as download:
        page.click("button.png[data-chart=chart-loss]")
    assert download.value.suggested_filename == "gradwatch-loss.png"
    download.value.save_as(tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.errors == []


# The pure modules, in the page's own JavaScript engine.
MODULES = """async () => {
  const { ema } = await import('/static/js/smooth.js');
  const { differingFields, commonPrefix } = await import('/static/js/chips.js');
  const { ablationBody, gridOf } = await import('/static/js/group.js');
  const { runMarks } = await import('/static/js/markers.js');
  const { parseState, formatState } = await import('/static/js/state.js');
  const { assignColors, distance } = await import('/static/js/colors.js');
  const { RunSeries } = await import('/static/js/series.js');
  const { PROFILE_SPECS, ProfileFigure } = await import('/static/js/profiles.js');
  const { duration } = await import('/static/js/runlist.js');
  const zs = new RunSeries('z', 8);
  zs.addEvent({ type: 'run.started', layers: ['fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias']
    .map(name => ({ name, module: 'Linear', shape: [2] })) });
  zs.addEvent({ type: 'metrics', step: 1, loss: 1, grad_norm: [1, 0, 0.5, 0] });
  const div = document.body.appendChild(document.createElement('div'));
  const profile = new ProfileFigure(div, PROFILE_SPECS[0]);
  const zeroNote = layers => {
    profile.draw([{ id: 'z', name: 'z', color: '#000', focused: true, series: zs, marks: [] }],
                 { step: null, layers, filter: '', agg: 'none', open: [] });
    return (div.layout.annotations || []).filter(a => a.name === 'zeros').map(a => a.text);
  };
  // weights only, but the run diverged in a bias: that bias stays, with its marker
  profile.draw([{ id: 'z', name: 'z', color: '#000', focused: true, series: zs, marksKey: 'd',
                  marks: [{ kind: 'diverged', step: 1, layer: 'fc1.bias', label: 'diverged in fc1.bias' }] }],
               { step: null, layers: 'weights', filter: '', agg: 'none', open: [] });
  const divergedX = div.data[0].x;

  const s = new RunSeries('r', 8);
  for (let i = 1; i <= 9; i++) s.addEvent({ type: 'metrics', step: i * 10, loss: 1 / i, grad_norm: [i] });
  s.addEvent({ type: 'intervention', step: 35, field: 'l2', old: 0, new: 0.5 });
  const st = new RunSeries('st', 8);
  st.addEvent({ type: 'metrics', step: 1, loss: 1,
                stats: { eff_lr: [0.3, null, 0.1, 0.2], dead_frac: [0.5, null, 0] } });
  st.addEvent({ type: 'metrics', step: 2, loss: 1 });  // not a stats step
  st.addHistory({ step: [], stats: { step: [10], bn_feeds: ['fc1.weight'], act_layers: ['act1'],
                                     eff_lr: [[0.4, 0.2]], dead_frac: [[null]] } });
  for (const step of [50, 51, 52, 90]) s.addEvent({ type: 'alert', step, message: 'spike' });
  const group = { vary: { batchnorm: [false, true], l2: [0, 0.01] }, seeds: null, cells: [
    { run_id: 'd', values: { batchnorm: true, l2: 0.01 } }, { run_id: 'a', values: { batchnorm: false, l2: 0 } },
    { run_id: 'c', values: { batchnorm: true, l2: 0 } }, { run_id: 'b', values: { batchnorm: false, l2: 0.01 } }] };
  const runs = ['a1', 'b2', 'c3', 'd4'].map((id, i) => ({ id, created: i }));
  const colors = [...assignColors(runs, runs.map(r => r.id)).values()];
  return {
    ema: ema([1, null, 1, 3], 0.5).values,
    emaResumed: ema([3], 0.5, ema([1, null, 1], 0.5).state).values,
    diff: differingFields([{ a: 1, b: true, c: 'x' }, { a: 1, b: false, c: 'x' }, { a: 1, b: true, c: 'y' }]),
    prefix: [commonPrefix(['BN × L2: batchnorm=off', 'BN × L2: batchnorm=on']), commonPrefix(['run-a', 'run-b'])],
    ablate: [ablationBody('', { l2: 0, depth: 3 }).vary, ablationBody('x', { l2: 0.3 }).vary.l2],
    grid: gridOf(group),
    zeros: [zeroNote('all'), zeroNote('weights')],
    divergedX,
    stats: [st.layerStats.xs(), st.layerStats.ys('effLr'), st.layerStats.ys('dead'), st.layerStats.bnFeeds],
    thinned: [s.length, s.firstStep(), s.lastStep(), s.indexAt(55), s.indexAt(5), s.indexAt(null)],
    marks: runMarks(s, { status: 'diverged', config: { steps: 100 },
                         summary: { diverged_step: 95, diverged_layer: 'fc1.weight' } })
      .map(m => [m.kind, m.step, m.label]),
    state: [parseState('?runs=a,b&smooth=0.9&scale=log&step=12&stat=nope'),
            formatState({ ...parseState('').state, selected: ['a'], smooth: 0.6, step: 7 }, '?token=t')],
    minColorDistance: Math.min(...colors.flatMap((c, i) => colors.slice(i + 1).map(d => distance(c, d)))),
    distinct: new Set(colors).size,
    durations: [0.4, 59.9, 75, 3599, 3600 + 5 * 60 + 59].map(duration),
  };
}"""


def test_frontend_modules_compute_what_the_charts_show(server: LiveServer, page: Any) -> None:
    open_dashboard(page, server)
    r = page.evaluate(MODULES)
    # TensorBoard's debiased EMA: starts at the first value, a gap stays a gap, and resuming
    # from the saved state gives what one pass gives.
    assert r["ema"][:3] == [1, None, 1] and r["ema"][3] == pytest.approx((0.5 * 0.75 + 0.5 * 3) / 0.875)
    assert r["emaResumed"] == [r["ema"][3]]
    assert r["diff"] == ["b", "c"]
    assert r["prefix"] == ["BN × L2: ", ""]
    assert r["ablate"] == [{"batchnorm": [False, True], "l2": [0, 0.01]}, [0, 0.3]]
    assert r["grid"]["rows"] == 2 and r["grid"]["cols"] == 2
    assert {c["runId"]: c["panel"] for c in r["grid"]["cells"]} == {"a": 1, "b": 2, "c": 3, "d": 4}
    # 9 points over a cap of 8: every other kept, the last one too.
    assert r["thinned"] == [5, 10, 90, 2, -1, 4]
    # A log axis cannot draw 0: the profile says how many it left out (weights only: none here).
    assert r["zeros"] == [["2 values are exactly 0: not drawn on a log axis"], []]
    assert r["divergedX"] == ["fc1.weight", "fc1.bias", "fc2.weight"]
    # The statistics charts: one point per stats step, the median eff. lr and the mean dead
    # fraction of the finite values (none finite: a gap).
    assert r["stats"] == [[1, 10], [0.2, pytest.approx(0.3)], [0.25, None], ["fc1.weight"]]
    # Alerts a step apart merge into one marker; divergence names its layer.
    assert r["marks"] == [["intervention", 35, "l2 0→0.5"], ["alert", 50, "⚠×3"], ["alert", 90, "⚠"],
                          ["diverged", 95, "diverged in fc1.weight"]]
    state, search = r["state"]
    assert state["state"]["selected"] == ["a", "b"] and state["state"]["smooth"] == 0.9
    assert state["state"]["scale"] == "log" and state["state"]["step"] == 12 and state["state"]["stat"] == "grad_norm"
    assert search == "?token=t&runs=a&step=7"  # defaults stay out of the link
    assert r["distinct"] == 4 and r["minColorDistance"] > 100
    assert r["durations"] == ["0 s", "59 s", "1 min 15 s", "59 min 59 s", "1 h 05 min"]  # "no step for …"
    assert page.errors == []


def test_a_preset_fills_the_form_and_stays_editable(server: LiveServer, page: Any) -> None:
    presets = {p["name"]: p for p in server.client.get("/api/presets").json()}
    explosion = presets["explosion"]
    open_dashboard(page, server)
    page.select_option("#preset", "explosion")
    # Its explanation shows; every field of its config is in the form.
    page.locator("#preset-about .explain").wait_for()
    assert page.text_content("#preset-about .title") == explosion["title"]
    assert page.input_value("#depth") == str(explosion["config"]["depth"])
    assert float(page.input_value("#lr")) == explosion["config"]["lr"]
    assert not page.is_checked("#batchnorm")
    # A variant fills its changes on top, and says what to expect.
    bn = next(v for v in explosion["variants"] if v["config"] == {"batchnorm": True})
    page.click(f"#preset-about button.variant[data-variant='{bn['name']}']")
    assert page.is_checked("#batchnorm")
    page.locator("#preset-about .expect", has_text=bn["expect"]).wait_for()
    # The person can still change anything before starting.
    if not page.is_visible("#steps"):
        page.click("#more summary")
    page.fill("#steps", "3")
    page.fill("#eval_every", "0")
    page.click("#start")
    run = wait_for(lambda: next((r for r in server.client.get("/api/runs").json()
                                 if r["name"] == f"explosion {bn['name']}"), None), what="the preset's run")
    assert run["config"]["depth"] == explosion["config"]["depth"] and run["config"]["batchnorm"] is True
    assert run["config"]["steps"] == 3
    assert page.errors == []


@pytest.mark.screenshot  # not in the default run: `pytest -m screenshot` with GRADWATCH_SAVE_SCREENSHOT=1
def test_group_screenshot_for_the_readme(server: LiveServer, page: Any, tmp_path: Path) -> None:
    """docs/screenshot-group.png: a BN x L2 group mid-training, L2 turned up on one cell."""
    page.set_viewport_size({"width": 1440, "height": 1250})
    open_dashboard(page, server)
    page.fill("#name", "BN × L2")
    page.set_checked("#batchnorm", False)
    page.fill("#l2", "0.005")
    page.click("#more summary")
    for field, value in {"depth": "8", "width": "64", "lr": "0.02", "steps": "100000", "eval_every": "100"}.items():
        page.fill(f"#{field}", value)
    page.click("#ablate")
    page.locator("#group tbody tr").nth(3).wait_for()
    steps = "[...document.querySelectorAll('#group tbody td.step')].map(td => Number(td.textContent) || 0)"
    page.wait_for_function(f"{steps}.every(s => s >= 500)", timeout=120_000)
    # Turn L2 up on the plain (no BN, no L2) cell, live.
    page.locator("#group tbody tr", has_text="batchnorm off · l2 0").first.locator("button.focus").click()
    page.wait_for_function("document.querySelector('#detail .detail-name').textContent.endsWith('l2=0')")
    live = page.locator("#detail form.live")
    live.locator("input[name=l2]").fill("0.05")
    live.locator(".apply").click()
    page.locator("#chart-loss").scroll_into_view_if_needed()  # clicking Apply scrolled the page down
    page.wait_for_function("(document.getElementById('chart-loss').layout.annotations || [])"
                           ".some(a => a.text === 'l2 0→0.05')", timeout=60_000)
    first = page.evaluate(f"Math.min(...{steps})")
    page.wait_for_function(f"Math.min(...{steps}) >= {first} + 700", timeout=120_000)
    page.click("#more summary")  # fold the form for the picture
    shot = tmp_path / "group.png"
    screenshot_whole_page(page, shot)
    # The part that tells the story: runs, the group with its cells, the compared curves.
    bottom = page.evaluate("document.getElementById('chart-gnorm').getBoundingClientRect().bottom + 12")
    page.screenshot(path=str(shot), clip={"x": 0, "y": 0, "width": 1440, "height": bottom})
    shutil.copyfile(shot, ROOT / "docs" / "screenshot-group.png")
    stop_all(server)
    assert page.errors == []


def test_the_learning_rate_and_validation_loss_charts_read_the_runs_history(server: LiveServer, page: Any) -> None:
    """Each step's learning rate on its own chart, and validation loss as diamonds on the loss
    chart, both as /api/runs/{id}/metrics has them. A learning rate of 3e-5 has the widest y tick
    labels (3x10^-5): they, and every line chart's, lie inside the figure, left of the plot."""
    run = server.create_run({**FAST, "steps": 60, "lr": 3e-5}, name="lr-and-val")
    server.wait_status(run["id"], ("completed",))
    hist = server.client.get(f"/api/runs/{run['id']}/metrics").json()
    assert hist["lr"] == pytest.approx([3e-5] * 60)  # the probe's: the lr each step was taken with
    open_dashboard(page, server, f"&runs={run['id']}&focus={run['id']}")
    page.locator("#chart-lr").scroll_into_view_if_needed()
    page.wait_for_function(f"({POINTS_OF_RUN})(['chart-lr', '{run['id']}']) === 60")
    line = page.evaluate(f"""document.getElementById('chart-lr').data
        .find(t => t.uid === 't-{run['id']}-lr-line')""")
    assert line["x"] == hist["step"] and line["y"] == pytest.approx(hist["lr"])
    page.locator("#chart-loss").scroll_into_view_if_needed()
    page.wait_for_function("(document.getElementById('chart-loss').data.find(t => t.uid === 'val-loss')?.x || [])"
                           f".length === {len(hist['val']['step'])}")
    val = page.evaluate("document.getElementById('chart-loss').data.find(t => t.uid === 'val-loss')")
    assert hist["val"]["step"] and val["x"] == hist["val"]["step"]
    assert val["y"] == pytest.approx(hist["val"]["loss"])
    page.locator("#chart-lr").scroll_into_view_if_needed()
    assert_y_labels_fit(page, "chart-lr", wide=True)
    for chart in ("chart-loss", "chart-acc", "chart-gnorm"):
        assert_y_labels_fit(page, chart)
    assert page.errors == []


def assert_y_labels_fit(page: Any, chart: str, wide: bool = False) -> None:
    """A line chart's y tick labels, drawn, lie inside the figure and left of its plot, and its y
    title left of them: the page sets that margin from the labels' measured widths (lines.js
    fitLabels), not Plotly's automargin. `wide`: the labels are wider than the default margin
    leaves room for (so the margin was widened)."""
    page.wait_for_function(f"document.querySelectorAll('#{chart} .ytick text').length > 1")
    page.wait_for_timeout(300)  # a margin set after the draw (one relayout) is drawn by then
    got = page.evaluate(f"""() => {{
        const div = document.getElementById('{chart}');
        const fig = div.getBoundingClientRect(), plotLeft = fig.left + div._fullLayout._size.l;
        const labels = [...div.querySelectorAll('.yaxislayer-above .ytick text')].map(t => {{
            const r = t.getBoundingClientRect();
            return [t.textContent, r.left - fig.left, plotLeft - r.right, r.width];
        }});
        const title = div.querySelector('.ytitle')?.getBoundingClientRect();
        return {{ labels, margin: div._fullLayout._size.l, titleRight: title ? title.right - fig.left : null,
                  titleLeft: title ? title.left - fig.left : null }};
    }}""")
    assert got["labels"], got
    for text, left, gap, _ in got["labels"]:
        assert left >= 0 and gap >= 0, (chart, text, got)
    if got["titleRight"] is not None:
        assert got["titleLeft"] >= 0 and got["titleRight"] <= min(left for _, left, _, _ in got["labels"]), (chart, got)
    if wide:
        assert got["margin"] > 58 and max(w for *_, w in got["labels"]) > 30, (chart, got)
