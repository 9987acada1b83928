"""The diagnosis in view (issue 11), in a real Chromium against a real server and real workers:
a run that blew up puts the loss and gradient-norm axes on log by themselves and the step
charts on the steps around the blow-up, without flattening the other runs; the person's choice
of axis and steps wins and lives in the URL, and zooming one step chart moves the others. The
heatmap honours "weights only" and can show each layer relative to its start; a run started
from a preset shows what the preset explains next to it; a run that ended at chance is marked
"not learning", and every alert is listed, the first first. Plus the pure rules behind them
(frontend/js/diagnosis.js), in the page's own JavaScript engine."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import pytest
from gradwatch.diagnosis import reference

from .browserkit import browser_fixture, open_dashboard, page_fixture  # noqa: F401 - fixtures
from .conftest import LiveServer

pytestmark = pytest.mark.browser

ENDED = ("completed", "diverged", "failed", "stopped")
FIG = "document.getElementById('{}')"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = LiveServer(tmp_path_factory.mktemp("diagnosis") / "data", env={"GRADWATCH_MAX_CONCURRENT": "2"}).start()
    yield s
    s.stop()


def full_layout(page: Any, fig: str, axis: str) -> dict:
    return page.evaluate(f"(({{type, range, autorange}}) => ({{type, range, autorange}}))"
                         f"({FIG.format(fig)}._fullLayout.{axis})")


def pixels(page: Any, fig: str, values: list[float]) -> tuple[list[float], float]:
    """Where values land on a figure's drawn y axis, in pixels from the top of its plot area,
    and that area's height."""
    return page.evaluate(f"(vs) => (ax => [vs.map(v => ax.c2p(v)), ax._length])({FIG.format(fig)}._fullLayout.yaxis)",
                         values)


def range_is(fig: str, axis: str, want: list[float]) -> str:
    return (f"(r => Array.isArray(r) && Math.abs(r[0] - {want[0]}) < 1e-6 && Math.abs(r[1] - {want[1]}) < 1e-6)"
            f"({FIG.format(fig)}._fullLayout.{axis}.range)")


def test_a_blow_up_goes_log_and_focuses_its_steps_without_flattening_the_others(server: LiveServer, page: Any) -> None:
    # lr-robustness `plain-0.3` blows up within its first ten steps, launched from the form's
    # preset picker as a person would; a healthy BN run of the same preset beside it.
    healthy = server.client.post("/api/runs", json={"preset": "lr-robustness", "variant": "bn-0.3",
                                                    "config": {"steps": 60}}).json()
    open_dashboard(page, server)
    page.select_option("#preset", "lr-robustness")
    page.click("#preset-about button.variant[data-variant='plain-0.3']")
    page.click("#start")
    page.locator("#runs tr[data-run-id]", has_text="lr-robustness plain-0.3").wait_for()
    run = next(r for r in server.client.get("/api/runs").json() if r["name"] == "lr-robustness plain-0.3")
    # It keeps its preset and variant; its details panel says what the preset explains.
    assert run["preset"]["name"] == "lr-robustness" and run["preset"]["variant"] == "plain-0.3"
    run = server.wait_status(run["id"], ENDED)
    assert run["status"] == "diverged", run
    server.wait_status(healthy["id"], ENDED)
    panel = page.locator("#detail .run-preset")
    panel.locator(".title").wait_for()
    presets = {p["name"]: p for p in server.client.get("/api/presets").json()}
    variant = next(v for v in presets["lr-robustness"]["variants"] if v["name"] == "plain-0.3")
    assert panel.locator(".title").text_content() == presets["lr-robustness"]["title"]
    assert variant["expect"] in panel.locator(".expect").text_content()
    assert "Global gradient norm" in panel.locator(".watch").text_content()

    # Compare the two: the loss axis goes log by itself (no choice in the URL), and says why.
    page.evaluate(f"gradwatch.state.set({{selected: ['{healthy['id']}', '{run['id']}'], focus: '{run['id']}'}})")
    s = run["summary"]

    # What its panel says of the blow-up, against the reference computed from its recorded
    # per-layer gradient norms (gradwatch.diagnosis.reference): the step, a layer among those whose
    # departure began first, since when, and the three that departed most at the last finite step.
    hist = server.client.get(f"/api/runs/{run['id']}/metrics", params={"max_points": 100_000}).json()
    ref = reference([layer["name"] for layer in hist["layers"]], hist["grad_norm"])
    assert ref is not None and hist["step"][-1] == s["diverged_step"]
    problem = page.locator("#detail .problem")
    problem.filter(has_text="diverged at step").wait_for()
    said = re.fullmatch(r"diverged at step (\d+) in (\S+?)(?: \(departing since step (\d+)\))?", problem.text_content())
    assert said, problem.text_content()
    step, layer, since = int(said[1]), said[2], int(said[3] or said[1])
    assert step == hist["step"][-1] and layer in ref["first"] and since == step - ref["rise"], (said.groups(), ref)
    top = page.text_content("#detail .top-layers")
    assert set(re.findall(r"(\S+) ×", top.split(": ", 1)[1])) == set(ref["top"]), (top, ref)
    of_healthy = f"(t.uid || '').startsWith('t-{healthy['id']}-')"
    page.wait_for_function(f"{FIG.format('chart-loss')}.data.some(t => {of_healthy} && t.x.length === 60)")  # drawn
    page.wait_for_function(f"{FIG.format('chart-loss')}._fullLayout.yaxis.type === 'log'")
    assert "scale=" not in page.url
    assert "a run diverged" in page.text_content("figure:has(#chart-loss) .scale-note")
    assert full_layout(page, "chart-gnorm", "yaxis")["type"] == "log"
    # The step charts show the steps around the blow-up, all of them together.
    since = s.get("diverged_since", s["diverged_step"])
    want = [max(0, since - 5), s["diverged_step"] + 2]
    for fig in ("chart-loss", "chart-acc", "chart-gnorm"):
        page.wait_for_function(range_is(fig, "xaxis", want))
    page.locator("#xrange", has_text="around the blow-up").wait_for()

    # The healthy run is not flattened onto the bottom: its losses in view are drawn inside the
    # plot, clear of its edges (on a linear axis the blow-up squashes them onto the zero line).
    cols = server.client.get(f"/api/runs/{healthy['id']}/metrics").json()
    shown = [v for st, v in zip(cols["step"], cols["loss"], strict=True) if want[0] <= st <= want[1]]
    lo, hi = min(shown), max(shown)
    y = full_layout(page, "chart-loss", "yaxis")
    assert y["range"][0] < math.log10(lo) and math.log10(hi) < y["range"][1]
    (top, bottom), height = pixels(page, "chart-loss", [hi, lo])
    assert 10 < top <= bottom < height - 10, (top, bottom, height, y)

    # The person's choice wins and is in the URL: linear squashes the healthy run...
    page.click("[data-scale=linear]")
    page.wait_for_function(f"{FIG.format('chart-loss')}._fullLayout.yaxis.type === 'linear'")
    assert "scale=linear" in page.url
    (top, zero), _ = pixels(page, "chart-loss", [hi, 0])
    assert abs(zero - top) < 1
    page.click("[data-scale=auto]")
    page.wait_for_function(f"{FIG.format('chart-loss')}._fullLayout.yaxis.type === 'log'")

    # ...and so does "all steps", one click back to the full range.
    page.click("#xrange button.all")
    page.wait_for_function(f"{FIG.format('chart-loss')}._fullLayout.xaxis.autorange === true")
    assert "x=full" in page.url
    assert full_layout(page, "chart-acc", "xaxis")["autorange"] is True

    # Zooming one step chart moves the others (the accuracy chart, dragged with the mouse).
    box = page.locator("#chart-acc .nsewdrag").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] / 2, steps=4)
    page.mouse.up()
    page.wait_for_function(f"{FIG.format('chart-acc')}._fullLayout.xaxis.autorange === false")
    zoom = full_layout(page, "chart-acc", "xaxis")["range"]
    page.wait_for_function(range_is("chart-loss", "xaxis", zoom))
    page.wait_for_function(range_is("chart-gnorm", "xaxis", zoom))
    assert "x=" in page.url and "x=full" not in page.url

    # Every alert of the run is listed in its panel, the first first, and counted.
    alerts = [e for e in server.client.get(f"/api/runs/{run['id']}/metrics").json()["events"] if e["type"] == "alert"]
    assert len(alerts) == s.get("alerts", len(alerts))
    page.wait_for_function(f"document.querySelectorAll('#detail .alerts li').length === {len(alerts)}")
    assert page.text_content("#detail .alerts-title") == (f"Alerts ({len(alerts)})" if alerts else "Alerts")
    steps = page.evaluate("[...document.querySelectorAll('#detail .alerts button.episode')].map(b => +b.dataset.step)")
    assert steps == sorted(a["step"] for a in alerts)
    assert page.errors == []


def test_the_heatmap_shows_weights_only_and_each_layer_relative_to_its_start(server: LiveServer, page: Any) -> None:
    run = server.create_run({"dataset": "synthetic", "depth": 2, "width": 16, "steps": 30, "eval_every": 0,
                             "batchnorm": True}, name="heat-bn")
    server.wait_status(run["id"], ENDED)
    open_dashboard(page, server, f"&runs={run['id']}&focus={run['id']}")
    page.locator("#chart-heatmap").scroll_into_view_if_needed()  # drawn when in view
    rows = f"JSON.stringify({FIG.format('chart-heatmap')}.data[0]?.y)"
    # Weights only is the default: no BatchNorm γ/β, no biases.
    page.wait_for_function(f"{rows} === JSON.stringify(['fc1.weight', 'fc2.weight', 'out.weight'])")
    assert page.is_checked("#heatmap-weights") and page.is_checked("#weights-only")
    assert "layers=" not in page.url
    # Every parameter, on request (and in the URL); the profiles follow the same switch.
    page.uncheck("#heatmap-weights")
    page.wait_for_function(f"{rows}.includes('bn1.weight') && {rows}.includes('bn1.bias')")
    assert "layers=all" in page.url and not page.is_checked("#weights-only")
    page.check("#weights-only")
    page.locator("#chart-heatmap").scroll_into_view_if_needed()  # the click scrolled up to the switch
    page.wait_for_function(f"!{rows}.includes('bn1.weight')")
    # Relative to its start: each layer's first columns are about 1x (log10 0).
    page.check("#heatmap-relative")
    page.wait_for_function(f"({FIG.format('chart-heatmap')}.data[0]?.colorbar?.title?.text || '').includes('÷')")
    z = page.evaluate(f"{FIG.format('chart-heatmap')}.data[0].z")
    firsts = sorted(row[:5] for row in z)
    assert all(sorted(r)[2] == pytest.approx(0, abs=1e-6) for r in firsts), firsts  # each row's median is its baseline
    assert "relative=1" in page.url
    assert page.errors == []


def test_a_run_that_ended_at_chance_is_marked_not_learning(server: LiveServer, page: Any) -> None:
    # explosion `plain-l2`: strong L2 keeps the plain deep net finite by shrinking it to nothing.
    r = server.client.post("/api/runs", json={"preset": "explosion", "variant": "plain-l2",
                                              "config": {"steps": 100, "eval_every": 50}})
    run = server.wait_status(r.json()["id"], ENDED)
    s = run["summary"]
    assert run["status"] == "completed" and abs(s["val_accuracy"] - 1 / s["n_classes"]) <= 0.05, s
    open_dashboard(page, server, f"&runs={run['id']}&focus={run['id']}")
    row = page.locator(f"#runs tr[data-run-id='{run['id']}']")
    row.locator(".badge", has_text="not learning").wait_for()
    assert "chance is 10.0%" in row.locator(".problem").text_content()
    # Its row's figures, against its recorded history: the best validation accuracy, the last one
    # (in the cell's title; within 5 points of chance is what "not learning" means), the alerts.
    hist = server.client.get(f"/api/runs/{run['id']}/metrics").json()
    val = hist["val"]["accuracy"]
    assert len(val) == 2 and abs(val[-1] - 1 / s["n_classes"]) <= 0.05
    assert row.locator(".best").text_content() == f"{100 * max(val):.1f}%"
    assert row.locator(".best").get_attribute("title").endswith(f"the last: {100 * val[-1]:.1f}%")
    assert row.locator(".alerts").text_content() == str(sum(e["type"] == "alert" for e in hist["events"]))
    assert page.text_content("#detail .badge") == "not learning"
    # Its dead layers' gradient norms are exactly 0: the heatmap says so rather than leave holes.
    page.locator("#chart-heatmap").scroll_into_view_if_needed()
    page.wait_for_function(f"({FIG.format('chart-heatmap')}.layout.annotations || [])"
                           ".some(a => a.name === 'zeros' && / exactly 0 /.test(a.text))")
    assert page.evaluate(f"{FIG.format('chart-heatmap')}.data[1].uid") == "heatmap-zeros"
    assert page.errors == []


# The rules, as pure functions (diagnosis.js), and the parts that draw them.
RULES = """async () => {
  const d = await import('/static/js/diagnosis.js');
  const { runMarks } = await import('/static/js/markers.js');
  const { RunSeries } = await import('/static/js/series.js');
  const { xOfRelayout } = await import('/static/js/plot.js');
  const { parseState, formatState } = await import('/static/js/state.js');
  const run = (status, summary, steps = 300) => ({ status, summary, config: { steps } });
  const s = new RunSeries('r', 100);
  for (let i = 0; i < 1000; i++) s.addEvent({ type: 'alert', step: 3 * i, kind: 'grad_spike', episode: i + 1 });
  const marks = runMarks(s, run('completed', {}, 3000)).filter(m => m.kind === 'alert');
  // The group's small multiples (matched y axes) going log by themselves mid-run.
  const { MultiplesFigure } = await import('/static/js/multiples.js');
  const div = document.body.appendChild(document.createElement('div'));
  Object.assign(div.style, { width: '800px', height: '400px' });
  const mf = new MultiplesFigure(div);
  mf.setCells([{ runId: 'a', title: 'a', panel: 1 }, { runId: 'b', title: 'b', panel: 2 }], { rows: 1, cols: 2 });
  const [sa, sb] = [new RunSeries('a', 4000), new RunSeries('b', 4000)];
  const cells = [sa, sb].map((series, i) => ({ id: 'ab'[i], name: 'ab'[i], color: '#000', focused: false, series,
                                                marks: [], marksKey: '' }));
  const grow = (from, to, loss) => {
    for (let i = from; i <= to; i++) { sa.addEvent({ type: 'metrics', step: i, loss: loss(i) });
                                       sb.addEvent({ type: 'metrics', step: i, loss: 2.3 }); }
    mf.draw(cells, { smooth: 0.6, scale: 'auto', step: null, xrange: null });
    const y = div._fullLayout.yaxis;
    return [y.type, y.autorange, y.range];
  };
  const multiples = [grow(1, 50, i => 2.3 / i), grow(51, 100, () => 1e-4)];
  return {
    multiples,
    notLearning: [
      d.notLearning(run('completed', { val_accuracy: 0.109, n_classes: 10 })),
      d.notLearning(run('completed', { val_accuracy: 0.16, n_classes: 10 })),
      d.notLearning(run('stopped', { val_accuracy: 0.5, n_classes: 2 })),
      d.notLearning(run('diverged', { val_accuracy: 0.1, n_classes: 10, diverged_step: 9 })),
      d.notLearning(run('running', { val_accuracy: 0.1, n_classes: 10 })),
      d.notLearning(run('completed', { val_accuracy: 0.1, n_classes: null })),
    ],
    blowUp: [
      d.earlyBlowUp(run('diverged', { diverged_step: 14, diverged_since: 11 })),
      d.earlyBlowUp(run('diverged', { diverged_step: 200 })),
      d.blowUpRange([run('diverged', { diverged_step: 9 }), run('diverged', { diverged_step: 14, diverged_since: 11 }),
                     run('completed', {})]),
      d.blowUpRange([run('completed', {})]),
    ],
    log: [d.autoLog(0.1, 2.3, false), d.autoLog(1e-4, 2.3, false), d.autoLog(0.1, 2.3, true),
          d.autoLog(Infinity, -Infinity, false)],
    episodes: d.alertEpisodes(
      [{ step: 20, episode: 2, kind: 'loss_spike' },
       { step: 5, episode: 1, kind: 'grad_spike', layer: 'fc7.weight', top: [] },
       { step: 30, kind: 'explosion', value: 3, median: 0.1 }],
      [{ type: 'alert.end', episode: 1, step: 8, peak_step: 7, peak_ratio: 900 }])
      .map(e => [e.step, e.kind, e.layer, e.end?.peak_step ?? null, e.baseline ?? null]),
    alertMarks: [marks.length, marks.reduce((n, m) => n + m.count, 0), marks[0].step],
    relayout: [xOfRelayout({ 'xaxis.range[0]': 12, 'xaxis.range[1]': 4 }), xOfRelayout({ 'xaxis3.autorange': true }),
               xOfRelayout({ 'xaxis.range': [1, 2] }), xOfRelayout({ 'yaxis.range[0]': 1, 'yaxis.range[1]': 2 })],
    state: [parseState('').state, parseState('?x=4.5,17&scale=log&layers=all&relative=1').state,
            parseState('?x=full').state.x, parseState('?x=9,3').state.x,
            formatState({ ...parseState('').state, x: [4.123456789, 17], relative: true }, '')],
  };
}"""


def test_the_diagnosis_rules(server: LiveServer, page: Any) -> None:
    open_dashboard(page, server)
    r = page.evaluate(RULES)
    # Not learning: ended (completed or stopped, not diverged) within 5 points of 1/classes.
    assert r["notLearning"] == [{"val": 0.109, "chance": 0.1}, None, {"val": 0.5, "chance": 0.5}, None, None, None]
    # An early blow-up (first 20% of the planned steps): 5 steps before its departure to 2 after.
    assert r["blowUp"] == [{"since": 11, "step": 14, "from": 6, "to": 16}, None, [4, 16], None]
    # Log by itself past 3 decades, or when a run diverged.
    assert [x["log"] for x in r["log"]] == [False, True, True, False]
    assert r["log"][1]["why"] == "values span 4.4 decades" and r["log"][2]["why"] == "a run diverged"
    # Episodes first first, with their peaks; an old run's "explosion" alerts still show.
    assert r["episodes"] == [[5, "grad_spike", "fc7.weight", 7, None], [20, "loss_spike", None, None, None],
                             [30, "explosion", None, None, 0.1]]
    # 1000 alerts: at most 40 markers, every alert counted in one of them, the first one kept.
    count, total, first = r["alertMarks"]
    assert count <= 40 and total == 1000 and first == 0
    assert r["relayout"] == [[4, 12], "full", [1, 2], None]
    # The small multiples go log when one cell's loss comes to span 4 decades, and autorange
    # there (not Plotly's [-1, 4] of an empty axis, which a matched axis keeps on a type change).
    (t0, a0, _), (t1, a1, r1) = r["multiples"]
    assert (t0, a0, t1, a1) == ("linear", True, "log", True)
    assert r1[0] < math.log10(1e-4) and math.log10(2.3) < r1[1] < 1, r1
    defaults, chosen, full, bad, url = r["state"]
    assert defaults["scale"] == "auto" and defaults["layers"] == "weights" and defaults["x"] is None
    assert defaults["relative"] is False
    assert chosen["x"] == [4.5, 17] and chosen["scale"] == "log" and chosen["layers"] == "all" and chosen["relative"]
    assert full == "full" and bad is None
    assert url == "?runs=&relative=1&x=4.12346,17"
    assert page.errors == []
