"""Trust boundaries in a real Chromium (issue 15): the token never reaches the browser's history
(read from a real profile's History database), a link without a session leads to the sign-in page
and back to the same view, a session that ends sends the page there too, and text from people and
workers (run names, layer names, alert messages, intervention values) cannot become links or
styles in Plotly's drawings."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from .browserkit import (  # noqa: F401 - fixtures
    CHROMIUM_ARGS,
    LIVE,
    browser_fixture,
    open_dashboard,
    page_fixture,
)
from .conftest import ROOT, LiveServer, free_port, wait_for

pytestmark = pytest.mark.browser

FAST = {"dataset": "synthetic", "depth": 3, "width": 16, "steps": 30, "eval_every": 10}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = LiveServer(tmp_path_factory.mktemp("trust-browser") / "data").start()
    yield s
    s.stop()


def history_urls(profile: Path) -> list[str]:
    with sqlite3.connect(f"file:{profile / 'Default' / 'History'}?mode=ro", uri=True) as db:
        return [row[0] for row in db.execute("SELECT url FROM urls")]


# ---- 4. the token stays out of the browser's history --------------------------------------


def test_the_printed_link_signs_in_and_leaves_no_token_in_the_history(browser: Any, tmp_path: Path) -> None:
    """`gradwatch serve` with a token of its own, as a person starts it: open the link it prints
    in a real Chromium profile, use the dashboard, close the browser, read its History."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gradwatch.server.cli", "serve", "--port", str(port), "--data-dir",
                             str(tmp_path / "data"), "--log-level", "warning"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**_env_without_token()})
    try:
        line = proc.stdout.readline()
        link = re.search(r"open (http://\S+)", line).group(1)
        token = re.search(r"token[= ]([\w-]{20,})", line).group(1)  # printed for API clients
        wait_for(lambda: _healthy(port), timeout=60, what="the server")
        profile = tmp_path / "profile"
        context = browser.browser_type.launch_persistent_context(
            str(profile), executable_path=browser_executable(), headless=True, args=CHROMIUM_ARGS,
            bypass_csp=True)  # wait_for_function uses eval; the policy has its own test below
        try:
            page = context.new_page()
            page.goto(link)
            page.wait_for_url(lambda url: urlsplit(url).path == "/")
            page.wait_for_function(LIVE)
            assert urlsplit(page.url).path == "/" and token not in page.url
            page.reload()  # still signed in: a session, not a one-off
            page.wait_for_function(LIVE)
        finally:
            context.close()  # Chromium writes its History database
        urls = history_urls(profile)
        assert urls, "Chromium kept no history at all: the check would prove nothing"
        assert not [u for u in urls if token in u], urls
        codes = [parse_qs(urlsplit(u).fragment).get("code", [None])[0] for u in urls]
        for code in filter(None, codes):  # what the history does hold signs nobody in
            r = httpx.post(f"http://127.0.0.1:{port}/api/login", json={"code": code})
            assert r.status_code == 401
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_signing_in_on_the_login_page_leaves_no_token_in_the_history(browser: Any, server: LiveServer,
                                                                     tmp_path: Path) -> None:
    profile = tmp_path / "profile"
    context = browser.browser_type.launch_persistent_context(
        str(profile), executable_path=browser_executable(), headless=True, args=CHROMIUM_ARGS,
            bypass_csp=True)  # wait_for_function uses eval; the policy has its own test below
    try:
        page = context.new_page()
        page.goto(f"{server.url}/")
        page.wait_for_url(re.compile(r"/login\?next="))
        page.fill("#token", server.token)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: urlsplit(url).path == "/")
        page.wait_for_function(LIVE)
    finally:
        context.close()
    urls = history_urls(profile)
    assert any(urlsplit(u).path == "/login" for u in urls), urls
    assert not [u for u in urls if server.token in u], urls


def test_a_copied_link_without_a_session_leads_to_the_login_page_and_back_to_its_view(
        page: Any, server: LiveServer) -> None:
    run = server.create_run(FAST, name="shared-view")
    server.wait_status(run["id"], ("completed",))
    view = f"/?runs={run['id']}&focus={run['id']}"
    page.goto(server.url + view)  # a new browser: no session
    page.wait_for_url(re.compile(r"/login\?next="))
    assert parse_qs(urlsplit(page.url).query)["next"] == [view]
    page.fill("#token", "not-the-token")
    page.click("button[type=submit]")
    page.wait_for_function("!document.querySelector('#login-error').hidden")
    page.errors.clear()  # the wrong token's 401, as the console reports it
    page.fill("#token", server.token)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: urlsplit(url).path == "/")
    page.wait_for_function(LIVE)
    assert urlsplit(page.url).path == "/" and parse_qs(urlsplit(page.url).query)["runs"] == [run["id"]]
    assert page.evaluate("gradwatch.state.get().selected") == [run["id"]]
    page.wait_for_function("document.querySelector('#detail .detail-name').textContent === 'shared-view'")
    assert page.errors == []


def test_a_session_that_ends_sends_the_open_page_to_sign_in_again(page: Any, server: LiveServer) -> None:
    run = server.create_run(FAST, name="still-here")
    open_dashboard(page, server, f"&runs={run['id']}")
    page.evaluate("fetch('/api/logout', {method: 'POST'})")  # ends the session; the server closes its stream
    page.wait_for_url(re.compile(r"/login\?next="), timeout=30_000)
    assert run["id"] in parse_qs(urlsplit(page.url).query)["next"][0]  # and the view comes back after


def test_the_dashboard_works_under_its_content_security_policy(browser: Any, server: LiveServer) -> None:
    """The page under its real policy (the `page` fixture bypasses it for wait_for_function's
    eval): signed in, live, charts drawn, not one violation; and eval refused."""
    run = server.create_run(FAST, name="under-csp")
    server.wait_status(run["id"], ("completed",))
    context = browser.new_context(viewport={"width": 1400, "height": 1250})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.browser_url + f"&runs={run['id']}&focus={run['id']}")
        page.locator("#conn", has_text="live").wait_for()
        page.locator("#chart-loss .scatterlayer path.js-line").first.wait_for()  # a drawn line
        page.locator("#chart-layers .scatterlayer path.js-line").first.wait_for()
        page.locator("#chart-heatmap").scroll_into_view_if_needed()
        page.locator("#chart-heatmap .heatmaplayer image").first.wait_for()
        assert errors == []
        # An injected inline script (what an HTML injection would add) does not run.
        ran = page.evaluate("""() => new Promise(done => {
            document.addEventListener('securitypolicyviolation', e => done(`refused: ${e.violatedDirective}`));
            const s = document.createElement('script');
            s.textContent = 'window.__injected = true';
            document.head.append(s);
            setTimeout(() => done(window.__injected ? 'ran' : 'silent'), 2000);
        })""")
        assert ran.startswith("refused: script-src"), ran
    finally:
        context.close()


# ---- 6. no link or style from data in Plotly's drawings -------------------------------------


EVIL_LINK = '<a href="https://evil.example/x">click</a>'
EVIL_STYLE = '<span style="font-size:80px">big</span>'


def test_names_and_worker_text_are_drawn_as_text_not_links_or_styles(page: Any, server: LiveServer) -> None:
    from gradwatch.worker import IngestClient

    r = server.client.post("/api/runs", json={"name": f"run {EVIL_LINK}", "external": True, "config": {}})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    client = IngestClient(server.ws_url(f"/api/ingest/{run_id}"), r.json()["token"])
    assert client.hello_ready.wait(30) and client.hello is not None
    layers = [{"name": f"{EVIL_LINK}.weight", "module": "Linear", "shape": [4, 4]},
              {"name": f"{EVIL_STYLE}.bias", "module": "Linear", "shape": [4]}]
    client.emit({"type": "run.started", "time": time.time(), "layers": layers, "device": "cpu"})
    for step in range(1, 41):
        g = [1.0 + step / 10, 0.5] if step != 20 else [50.0, 0.5]
        client.emit({"type": "metrics", "step": step, "time": time.time(), "loss": 2 / step, "accuracy": 0.5,
                     "global_grad_norm": sum(g), "grad_norm": g, "weight_norm": [3.0, 1.0],
                     "update_ratio": [1e-3, 1e-3],
                     **({"stats": {"act_layers": [EVIL_LINK], "act_mean": [0.1], "act_std": [0.2],
                                   "dead_frac": [0.0], "bn_layers": [], "bn_feeds": [], "eff_lr": [],
                                   "bn_mean_drift": [], "bn_var_drift": []}} if step % 10 == 0 else {})})
        if step == 20:
            client.emit({"type": "alert", "time": time.time(), "step": 20, "kind": "grad_spike",
                         "message": f"{EVIL_LINK} {EVIL_STYLE}", "layer": layers[0]["name"], "value": 50.0,
                         "baseline": 2.0, "ratio": 25.0, "episode": 1,
                         "top": [{"layer": layers[0]["name"], "value": 50.0, "baseline": 2.0, "ratio": 25.0}]})
            client.emit({"type": "intervention", "time": time.time(), "step": 21, "field": "lr", "old": 0.1,
                         "new": EVIL_STYLE, "source": EVIL_LINK})
    client.emit({"type": "run.finished", "time": time.time(), "status": "completed", "reason": EVIL_LINK,
                 "summary": {"step": 40}})
    assert client.close(timeout=30)
    open_dashboard(page, server, f"&runs={run_id}&focus={run_id}")
    page.wait_for_function("(document.getElementById('chart-loss').data || []).some(t => t.x.length >= 40)")
    page.wait_for_function("document.getElementById('chart-layers').data.length > 0")
    page.locator("#chart-heatmap").scroll_into_view_if_needed()
    page.wait_for_function("(document.getElementById('chart-heatmap').data[0]?.z || []).length > 0")
    page.wait_for_timeout(300)  # a paced redraw after the last data
    drawn = page.evaluate("""() => {
        const svgs = [...document.querySelectorAll('.js-plotly-plot svg')];
        const text = svgs.map(s => s.textContent).join(' ');
        return {
            links: svgs.reduce((n, s) => n + s.querySelectorAll('a').length, 0),
            styled: svgs.reduce((n, s) => n + [...s.querySelectorAll('[style]')]
                .filter(e => /80px/.test(e.getAttribute('style'))).length, 0),
            literal: text.includes('<a href="https://evil.example/x">'),
            names: document.getElementById('chart-loss').data.map(t => t.name),
        };
    }""")
    assert drawn["links"] == 0 and drawn["styled"] == 0, drawn
    assert drawn["literal"], drawn  # shown, as the characters they are
    assert page.errors == []


# ---- helpers -----------------------------------------------------------------------------


def browser_executable() -> str:
    return shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"


def _env_without_token() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("GRADWATCH_")} | {"PYTHONUNBUFFERED": "1"}


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/health").status_code == 200
    except httpx.TransportError:
        return False
