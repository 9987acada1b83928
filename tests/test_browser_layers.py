"""Views for hundreds of parameter tensors (issue 18, item 2), in a real Chromium against a real
server: a 306-tensor model trained in this process through `gradwatch.connect` draws its heatmap
and layer profiles one row per block (max of its weights), a click on a block's row opens it into
its tensors, the filter box (a glob) narrows both views, and the filter, the aggregate and the
opened blocks live in the URL: a reload keeps them. The grouping rules themselves are checked
under node (tests/js/layers.test.mjs)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from fnmatch import fnmatchcase
from typing import Any

import gradwatch
import numpy as np
import pytest
import torch
from gradwatch.stats import BY_NAME
from torch import nn

from .browserkit import browser_fixture, open_dashboard, page_fixture  # noqa: F401 - fixtures
from .conftest import LiveServer

pytestmark = pytest.mark.browser

BLOCKS = 20  # x 15 tensors, + stem, ln_f and head: 306 tensors
HEAT = "document.getElementById('chart-heatmap')"
PROFILE = "document.getElementById('chart-layers')"


class Block(nn.Module):
    """15 tensors of a transformer-like block (two LayerNorms, q/k/v/o, a two-layer MLP)."""

    def __init__(self, w: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(w), nn.LayerNorm(w)
        self.q, self.k, self.v, self.o = (nn.Linear(w, w) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(w, 2 * w), nn.Linear(2 * w, w, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = self.ln_1(h)
        h = h + self.o(self.q(a) * torch.sigmoid(self.k(a)) + self.v(a))
        return h + self.fc2(torch.relu(self.fc1(self.ln_2(h))))


def model() -> nn.Module:
    w = 8
    return nn.Sequential(OrderedDict(stem=nn.Linear(16, w), h=nn.Sequential(*(Block(w) for _ in range(BLOCKS))),
                                     ln_f=nn.LayerNorm(w), head=nn.Linear(w, 4)))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = LiveServer(tmp_path_factory.mktemp("layers") / "data").start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def run(server: LiveServer) -> tuple[str, list[str]]:
    """40 steps of the 306-tensor model, streamed as any user's own loop would."""
    torch.manual_seed(0)
    net = model()
    names = [n for n, _ in net.named_parameters()]
    assert len(names) == 306
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on 2 shared cores a second torch thread spins: 100x slower here
    try:
        with gradwatch.connect(server.url, token=server.token, name="deep-306", config={"model": "306 tensors"}) as r:
            r.watch(net, opt)
            for _ in range(40):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(net(x), y)
                loss.backward()
                opt.step()
                r.record(loss)
    finally:
        torch.set_num_threads(threads)
    return r.id, names


def heat_rows(page: Any) -> list[str]:
    return page.evaluate(f"{HEAT}.data[0]?.y ?? []")


def weights(names: list[str]) -> list[str]:
    """What "weights only" keeps here: Linear weights (LayerNorm's are normalisation)."""
    return [n for n in names if n.endswith(".weight") and ".ln_" not in n and not n.startswith("ln_f")]


def assert_labels_fit(page: Any) -> None:
    """The heatmap's row labels and the profiles' layer labels, drawn, lie inside their figure and
    outside its plot: the page sets those margins from the labels' measured widths (heatmap.js,
    profiles.js labelMargins), not Plotly's automargin."""
    boxes = page.evaluate(f"""() => [{HEAT}, ...gradwatch.charts.profiles.map(f => f.div)].flatMap(div => {{
        const fig = div.getBoundingClientRect(), s = div._fullLayout._size;
        const axis = div === {HEAT} ? 'y' : 'x';
        return [...div.querySelectorAll(`.${{axis}}tick text`)].map(t => {{
            const r = t.getBoundingClientRect();
            // Room left: to the figure's left edge, and to the plot (the heatmap's rows: its left
            // edge; the profiles' layers: under it) and, for the profiles, to the figure's bottom.
            const plot = axis === 'y' ? fig.left + s.l - r.right : r.top - (fig.top + s.t + s.h);
            return [div.id, t.textContent, r.left - fig.left, plot, axis === 'y' ? 0 : fig.bottom - r.bottom];
        }});
    }})""")
    assert len(boxes) > 12
    for fig, label, *room in boxes:
        assert min(room) >= 0, (fig, label, room)


def test_a_306_tensor_run_reads_as_blocks_opens_on_click_and_filters_in_the_url(
        server: LiveServer, run: tuple[str, list[str]], page: Any) -> None:
    run_id, names = run
    page.set_default_timeout(60_000)  # 306 tensors in every per-layer figure, on 2 shared cores
    open_dashboard(page, server, f"&runs={run_id}&focus={run_id}&agg=max")
    page.locator("#chart-heatmap").scroll_into_view_if_needed()  # drawn when in view
    # One row per block, the max of its 6 weight matrices; the stem and head are one tensor each.
    want = ["stem.weight", *(f"▸ h.{i} (max of 6)" for i in range(BLOCKS)), "head.weight"]
    page.wait_for_function(f"JSON.stringify({HEAT}.data[0]?.y) === {json(want)}")
    assert page.input_value("#layer-agg") == "max"
    # The profiles: the same rows, in the same order.
    page.wait_for_function(f"JSON.stringify({PROFILE}.data[0]?.x) === {json(want)}")
    # A block's cells are the max over its tensors' bucket maxima: the reference from the
    # heatmap answer the page fetched, computed here.
    body = page.evaluate("gradwatch.charts.heatmap.body")
    layer_names = [layer["name"] for layer in body["layers"]]
    assert layer_names == names
    z = page.evaluate(f"{HEAT}.data[0].z")
    members = [layer_names.index(n) for n in weights(names) if n.startswith("h.7.")]
    assert len(members) == 6
    for b, col in enumerate(body["max"]):
        assert z[1 + 7][b] == pytest.approx(math.log10(max(col[m] for m in members)), rel=1e-9, abs=1e-12)
    # The color range the page sets is z's own (what Plotly's autorange would take).
    finite = [v for row in z for v in row if v is not None and math.isfinite(v)]
    assert page.evaluate(f"[{HEAT}.data[0].zmin, {HEAT}.data[0].zmax]") == [min(finite), max(finite)]

    # A click on block h.7's row (a real mouse click on the drawn heatmap) opens it.
    box = page.locator("#chart-heatmap").bounding_box()
    x, y = page.evaluate(f"""(label) => {{
        const l = {HEAT}._fullLayout;
        return [l.xaxis._offset + l.xaxis._length / 2, l.yaxis._offset + l.yaxis.d2p(label)];
    }}""", want[8])
    page.mouse.move(box["x"] + x, box["y"] + y)
    page.mouse.click(box["x"] + x, box["y"] + y)
    opened = [*want[:8], "▾ h.7 (max of 6)", *(n for n in weights(names) if n.startswith("h.7.")), *want[9:]]
    page.wait_for_function(f"JSON.stringify({HEAT}.data[0]?.y) === {json(opened)}")
    page.wait_for_function(f"JSON.stringify({PROFILE}.data[0]?.x) === {json(opened)}")
    assert "open=h.7" in page.url
    assert_labels_fit(page)

    # Every tensor (no "weights only", no blocks): 306 rows, the axis labelled once per block.
    page.uncheck("#weights-only")
    page.select_option("#layer-agg", "none")
    page.locator("#chart-heatmap").scroll_into_view_if_needed()
    page.wait_for_function(f"({HEAT}.data[0]?.y ?? []).length === 306")
    ticks = page.evaluate(f"{HEAT}.layout.yaxis.ticktext")
    assert ticks == ["stem", *(f"h.{i}" for i in range(BLOCKS)), "ln_f", "head"]
    assert_labels_fit(page)

    # The filter box: a glob over the whole name narrows both views; it lives in the URL.
    page.check("#weights-only")
    page.fill("#layer-filter", "h.1?.fc*")
    picked = [n for n in weights(names) if fnmatchcase(n, "h.1?.fc*")]
    assert len(picked) == 20
    page.locator("#chart-heatmap").scroll_into_view_if_needed()
    page.wait_for_function(f"JSON.stringify({HEAT}.data[0]?.y) === {json(picked)}")
    page.wait_for_function(f"JSON.stringify({PROFILE}.data[0]?.x) === {json(picked)}")
    page.wait_for_function("new URLSearchParams(location.search).get('filter') === 'h.1?.fc*'")
    assert_labels_fit(page)

    # A reload keeps the filter (and the rest of the view).
    page.reload()
    page.wait_for_function("document.querySelector('#conn')?.textContent === 'live'")
    assert page.input_value("#layer-filter") == "h.1?.fc*"
    page.locator("#chart-heatmap").scroll_into_view_if_needed()
    page.wait_for_function(f"JSON.stringify({HEAT}.data[0]?.y) === {json(picked)}")
    # Substrings too, several terms, and a filter that matches nothing says so.
    page.fill("#layer-filter", "stem head")
    page.wait_for_function(f"JSON.stringify({HEAT}.data[0]?.y) === {json(['stem.weight', 'head.weight'])}")
    page.fill("#layer-filter", "nothing-like-this")
    page.wait_for_function(f"({HEAT}.layout.annotations || []).some(a => (a.text || '').includes('no layer matches'))")
    assert page.errors == []


def test_the_gradient_to_weight_ratio_is_in_the_history_and_the_heatmap_offers_and_draws_it(
        server: LiveServer, run: tuple[str, list[str]], page: Any) -> None:
    """‖g‖/‖w‖ per parameter, added with an entry in trainer/stats.py and its line in the probe:
    /metrics returns it (the float32 ratio of the same step's grad and weight norms), the page's
    heatmap menu offers it from GET /api/stats, and the heatmap draws it, log10, per tensor."""
    run_id, names = run
    stat = BY_NAME["grad_weight_ratio"]
    history = server.client.get(f"/api/runs/{run_id}/metrics").json()
    ratio = history["grad_weight_ratio"]
    assert len(ratio) == len(history["step"]) == 40 and all(len(row) == len(names) for row in ratio)
    # /metrics sends float32 values in their shortest form: each reads back as the float32 it was.
    f32 = np.float32
    for g_row, w_row, r_row in zip(history["grad_norm"], history["weight_norm"], ratio, strict=True):
        want = [f32(float(f32(g)) / float(f32(w))) if w > 0 else 0.0 for g, w in zip(g_row, w_row, strict=True)]
        assert [f32(r) for r in r_row] == want

    page.set_default_timeout(60_000)  # 306 tensors in every per-layer figure, on 2 shared cores
    open_dashboard(page, server, f"&runs={run_id}&focus={run_id}&layers=all")
    options = page.eval_on_selector_all("#heatmap-stat option", "os => os.map(o => [o.value, o.textContent])")
    assert [stat.name, stat.label] in options
    page.select_option("#heatmap-stat", stat.name)
    assert "stat=grad_weight_ratio" in page.url
    page.locator("#chart-heatmap").scroll_into_view_if_needed()  # drawn when in view
    page.wait_for_function(f"t => ({HEAT}.data[0]?.colorbar?.title?.text || '').startsWith(`log₁₀ ${{t}}`)",
                           arg=stat.title)
    body = page.evaluate("gradwatch.charts.heatmap.body")
    assert body["stat"] == stat.name and [layer["name"] for layer in body["layers"]] == names
    assert body["step_start"] == history["step"]  # 40 steps, fewer than the buckets: one step each
    assert body["max"] == ratio  # the same float32 text, read the same way
    # One row per tensor, in forward order, each cell log10 of its value (0 has no log: a gap).
    assert heat_rows(page) == names
    z = page.evaluate(f"{HEAT}.data[0].z")
    for k in (0, 1, 150, 305):
        for cell, row in zip(z[k], ratio, strict=True):
            assert cell == (pytest.approx(math.log10(row[k]), rel=1e-9) if row[k] > 0 else None)
    assert page.errors == []



def test_a_run_from_an_older_worker_has_no_gradient_to_weight_ratio_and_the_heatmap_says_so(
        server: LiveServer, page: Any) -> None:
    """A worker of an older version sends no grad_weight_ratio: /metrics leaves it out, and the
    page's heatmap of it says the run has none, where its gradient norms draw as ever."""
    from gradwatch.worker import IngestClient

    r = server.client.post("/api/runs", json={"name": "older-worker", "external": True, "config": {}})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    client = IngestClient(server.ws_url(f"/api/ingest/{run_id}"), r.json()["token"])
    layers = [{"name": f"l{i}.weight", "module": "Linear", "shape": [4, 4]} for i in range(3)]
    client.emit({"type": "run.started", "time": 0.0, "layers": layers, "device": "cpu"})
    for step in range(1, 6):
        g = [0.5 * step, 0.25, 1.0]
        client.emit({"type": "metrics", "step": step, "time": float(step), "loss": 1.0, "accuracy": 0.5,
                     "global_grad_norm": 1.0, "grad_norm": g, "weight_norm": [1.0] * 3, "update_ratio": [0.01] * 3})
    assert client.close(timeout=60), "not every event was acknowledged"
    history = server.client.get(f"/api/runs/{run_id}/metrics").json()
    assert len(history["grad_norm"]) == 5 and "grad_weight_ratio" not in history

    open_dashboard(page, server, f"&runs={run_id}&focus={run_id}&stat=grad_weight_ratio")
    page.locator("#chart-heatmap").scroll_into_view_if_needed()
    title = BY_NAME["grad_weight_ratio"].title
    page.wait_for_function(f"t => ({HEAT}.layout.annotations || []).some(a => (a.text || '') === `no ${{t}} in "
                           "older-worker (none sent)`)", arg=title)
    page.select_option("#heatmap-stat", "grad_norm")
    page.wait_for_function(f"JSON.stringify({HEAT}.data[0]?.y) === {json([layer['name'] for layer in layers])}")
    assert page.errors == []


def json(v: Any) -> str:
    """A JS string literal holding the JSON text of v, as JSON.stringify writes it."""
    import json as j
    return j.dumps(j.dumps(v, ensure_ascii=False, separators=(",", ":")))
