"""The dashboard's first load, before and after static files were gzipped: bytes on the wire and
time to `load`.

    .venv/bin/python bench/page_load.py               # the figures in docs/benchmarks.md
    .venv/bin/python bench/page_load.py --rounds 3 --before b55d724

Two real servers side by side: this checkout's (`python -m gradwatch.server.cli serve`, which both have) and the one of
commit --before (the last without compression: plotly.min.js from the installed plotly package,
sent as it is), run from a copy of that commit's trainer/, server/ and frontend/ laid out as the
package `gradwatch` (PYTHONPATH first; it needs `plotly` installed). Real Chromium (Debian's,
through Playwright). Each load is a first one: a fresh browser context (empty cache) signs in with
a one-time link and the dashboard loads; measured from the dashboard's own navigation timing
(request of `/` to the end of its load event: index.html, plotly.min.js, the page's modules) and
the bytes its resources took on the wire (`transferSize`). Links: loopback as it is, and
Chromium's emulation of a 50 Mbit/s, 20 ms link. The two servers alternate within each round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LINKS = {"loopback": None, "50Mbit-20ms": {"latency": 20, "downloadThroughput": 50e6 / 8,
                                            "uploadThroughput": 50e6 / 8}}
TIMING_JS = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const res = performance.getEntriesByType('resource');
  return {load_ms: nav.loadEventEnd - nav.startTime,
          bytes: nav.transferSize + res.reduce((s, r) => s + r.transferSize, 0),
          plotly: res.find(r => r.name.endsWith('plotly.min.js'))?.transferSize ?? null};
}"""


def old_tree(rev: str, into: Path) -> Path:
    """Commit `rev`'s package as an importable folder: trainer/ as gradwatch/, server/ inside it,
    frontend/ beside server/ (where that commit's app.py looks for it)."""
    root = Path(__file__).resolve().parent.parent
    src = into / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(root), "archive", rev, "trainer", "server", "frontend"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    pkg = into / "path" / "gradwatch"
    shutil.copytree(src / "trainer", pkg)
    shutil.copytree(src / "server", pkg / "server")
    shutil.copytree(src / "frontend", pkg / "frontend")
    return into / "path"


def start_server(data_dir: Path, token: str, pythonpath: Path | None = None) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "gradwatch.server.cli", "serve", "--port", str(port), "--data-dir",
                             str(data_dir), "--log-level", "warning"], cwd=data_dir,
                            env={**os.environ, "GRADWATCH_TOKEN": token,
                                 **({"PYTHONPATH": str(pythonpath)} if pythonpath else {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(url + "/api/health", timeout=2).status == 200:
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start")


def sign_in_link(url: str, token: str) -> str:
    req = urllib.request.Request(url + "/api/login/links", method="POST", data=b"{}",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return url + json.loads(r.read())["url"]


def first_load(browser: Any, url: str, token: str, link: dict[str, float] | None) -> dict[str, Any]:
    # an empty cache; bypass_csp: wait_for_function evaluates text, which the page's script-src 'self' forbids
    context = browser.new_context(bypass_csp=True)
    try:
        page = context.new_page()
        page.set_default_timeout(300_000)  # a first load on a busy 2-core machine can take a minute
        if link is not None:
            cdp = context.new_cdp_session(page)
            cdp.send("Network.enable")
            cdp.send("Network.emulateNetworkConditions", {"offline": False, **link})
        page.goto(sign_in_link(url, token))
        page.wait_for_url(lambda u: urlsplit(u).path == "/", wait_until="commit")  # signed in, on the dashboard
        page.wait_for_load_state("load")
        page.wait_for_function("performance.getEntriesByType('navigation')[0]?.loadEventEnd > 0")
        out = page.evaluate(TIMING_JS)
        out["version"] = page.evaluate("window.Plotly && Plotly.version")
        return out
    finally:
        context.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--before", default="b55d724", help="the commit to compare with (default: the last "
                                                         "without compression)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    token = secrets.token_urlsafe(16)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    servers: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        tmp_path = Path(tmp)
        (tmp_path / "now").mkdir()
        (tmp_path / "before").mkdir()
        try:
            now, now_url = start_server(tmp_path / "now", token)
            servers.append(now)
            before, before_url = start_server(tmp_path / "before", token, old_tree(args.before, tmp_path / "old"))
            servers.append(before)
            urls = {f"before ({args.before}, identity)": before_url, "now (gzip)": now_url}
            browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
            for url in urls.values():
                first_load(browser, url, token, None)  # the new server compresses each file once: not timed
            for r in range(args.rounds):
                for link_name, link in LINKS.items():
                    names = list(urls) if r % 2 == 0 else list(reversed(urls))
                    for name in names:
                        results.setdefault((link_name, name), []).append(first_load(browser, urls[name], token, link))
            chromium = browser.version
            browser.close()
        finally:
            for server in servers:
                server.terminate()
                server.wait(30)

    print(f"# {platform.node()}: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; Chromium {chromium}; "
          f"{args.rounds} first loads per cell, median")
    print(f"{'link':<14}{'server':<30}{'load (ms)':>11}{'page bytes':>13}{'plotly.js bytes':>17}")
    for (link_name, name), rows in results.items():
        assert all(row["version"] for row in rows), "Plotly did not load"
        med = {k: statistics.median(r[k] for r in rows) for k in ("load_ms", "bytes", "plotly")}
        print(f"{link_name:<14}{name:<30}{med['load_ms']:>11.0f}{med['bytes']:>13,.0f}{med['plotly']:>17,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
