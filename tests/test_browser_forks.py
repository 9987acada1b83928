"""Forks in a real Chromium against a real server and real workers (issue 16): click a point on
the loss chart, fork from that step with L2, and see the branch drawn from that step next to its
parent (the parent's steps before it faintly beneath the fork), the fork under its parent in the
runs table, both in the URL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .browserkit import browser_fixture, open_dashboard, page_fixture  # noqa: F401 - fixtures
from .conftest import LiveServer, wait_for

pytestmark = pytest.mark.browser

PARENT = {"dataset": "synthetic", "depth": 2, "width": 16, "steps": 60, "eval_every": 20, "checkpoint_every": 10,
          "device": "cpu"}
# Where step `step` of a trace is drawn, in page pixels (Plotly's own axis mapping).
POINT_AT = """([uid, step]) => {
  const gd = document.getElementById('chart-loss');
  const t = gd.data.find(d => d.uid === uid);
  const i = t && t.x.indexOf(step);
  if (!t || i < 0 || t.y[i] == null) return null;
  const L = gd._fullLayout, box = gd.getBoundingClientRect();
  const y = L.yaxis.type === 'log' ? Math.log10(t.y[i]) : t.y[i];
  return [box.left + L._size.l + L.xaxis.l2p(step), box.top + L._size.t + L.yaxis.l2p(y)];
}"""
TRACE = "(uid) => { const t = document.getElementById('chart-loss').data.find(d => d.uid === uid); " \
        "return t ? [t.x[0], t.x[t.x.length - 1], t.x.length] : null; }"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = LiveServer(tmp_path_factory.mktemp("forks-browser") / "data").start()
    yield s
    s.stop()


def test_click_a_loss_point_fork_with_l2_and_see_the_branch(server: LiveServer, page: Any) -> None:
    parent = server.create_run(PARENT, name="parent")
    server.wait_status(parent["id"], ("completed",), timeout=240)  # a busy 2-core machine
    open_dashboard(page, server, f"&runs={parent['id']}&smooth=0")
    line = f"t-{parent['id']}-loss-line"
    where = wait_for(lambda: page.evaluate(POINT_AT, [line, 30]), timeout=30, what="the parent's loss line")
    page.mouse.move(*where)
    page.mouse.click(*where)

    panel = page.locator("#fork-panel")
    panel.wait_for(state="visible")
    assert "from step 30" in panel.locator("h3").inner_text()
    page.wait_for_function("document.querySelector('#fork-panel .fork-note').textContent.includes('step 30')")
    panel.locator("input[name=l2]").fill("0.01")
    panel.locator("button.fork-go").click()

    fork = wait_for(lambda: next((r for r in server.client.get("/api/runs").json()
                                  if (r.get("fork") or {}).get("parent") == parent["id"]), None),
                    timeout=30, what="the fork")
    assert fork["fork"]["step"] == 30 and fork["fork"]["changes"] == {"l2": 0.01}
    server.wait_status(fork["id"], ("completed",), timeout=240)
    # The branch: the fork's own line from step 30 to the end, the parent's up to step 30 beneath
    # it (faint), and the parent's whole line beside it.
    wait_for(lambda: page.evaluate(TRACE, f"t-{fork['id']}-loss-line") == [30, 60, 31], timeout=30,
             what="the fork's line from step 30 to 60")
    assert page.evaluate(TRACE, f"t-{fork['id']}-loss-prefix")[:2] == [1, 30]
    assert page.evaluate(TRACE, line) == [1, 60, 60]
    prefix_opacity = page.evaluate(f"document.getElementById('chart-loss').data.find(d => d.uid === "
                                   f"'t-{fork['id']}-loss-prefix').opacity")
    assert prefix_opacity < 0.5
    # The runs table: the fork right under its parent, saying from where; the URL has both.
    rows = page.locator("#runs tbody tr")
    ids = [rows.nth(i).get_attribute("data-run-id") for i in range(rows.count())]
    assert ids.index(fork["id"]) == ids.index(parent["id"]) + 1
    assert "from parent at step 30" in rows.nth(ids.index(fork["id"])).locator(".forked").inner_text()
    assert "fork" in (rows.nth(ids.index(fork["id"])).get_attribute("class") or "")
    page.wait_for_function(f"location.search.includes('{parent['id']}') && location.search.includes('{fork['id']}')")
