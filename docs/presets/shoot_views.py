"""The dashboard pictures of docs/presets.md (and the README's explosion picture): runs the named
variants of a preset on a fresh server, compares them on the page, and shoots it from the runs
table down to the heatmap (the focused run's details panel on the left), as a person first sees
it: no zoom, no settings, what the page shows by itself. Prints what the run records say, for
the caption.

    .venv/bin/python docs/presets/shoot_views.py explosion plain bn          # -> docs/presets/explosion.png
    .venv/bin/python docs/presets/shoot_views.py lr-robustness plain-0.02 plain-0.3 bn-0.3 bn-1 bn-3 \\
        --out lr-robustness.png --focus plain-0.3
    .venv/bin/python docs/presets/shoot_views.py explosion plain-l2 bn-l2 --out explosion-l2.png \
        --query '&stat=weight_norm'
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.browserkit import CHROMIUM_ARGS, LIVE  # noqa: E402
from tests.conftest import LiveServer  # noqa: E402

FINAL = ("completed", "diverged", "failed", "stopped")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset")
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--focus", help="the variant whose details show (default: the first)")
    ap.add_argument("--out", help="file name under docs/presets (default: PRESET.png)")
    ap.add_argument("--query", default="", help="more page state, as in its link: e.g. '&stat=weight_norm'")
    args = ap.parse_args()
    out = ROOT / "docs" / "presets" / (args.out or f"{args.preset}.png")
    server = LiveServer(Path(tempfile.mkdtemp()) / "data", env={"GRADWATCH_MAX_CONCURRENT": "2"}).start()
    try:
        runs = {}
        for v in args.variants:
            r = server.client.post("/api/runs", json={"preset": args.preset, "variant": v})
            assert r.status_code == 201, r.text
            runs[v] = r.json()["id"]
        for v, run_id in runs.items():
            run = server.wait_status(run_id, FINAL, timeout=600)
            s = run["summary"]
            print(f"{v}: {run['status']} at step {s.get('step')}, val {s.get('val_accuracy')}, "
                  f"best val {s.get('best_val_accuracy')}, alerts {s.get('alerts')} "
                  f"(first at {s.get('first_alert_step')}), "
                  f"diverged at {s.get('diverged_step')} in {s.get('diverged_layer')} since {s.get('diverged_since')}, "
                  f"top {s.get('diverged_top')}")
        focus = runs[args.focus or args.variants[0]]
        ids = ",".join(reversed(runs.values()))  # the first variant drawn last: on top
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1250}, bypass_csp=True)
            page.goto(f"{server.browser_url}&runs={ids}&focus={focus}{args.query}")
            page.wait_for_function(LIVE)
            height = page.evaluate("document.documentElement.scrollHeight")
            page.set_viewport_size({"width": 1400, "height": height})
            shown = "gradwatch.charts.jobs.filter(j => j.fig.div.offsetParent !== null)"
            page.wait_for_function(f"{shown}.every(j => j.visible)")
            page.wait_for_function(f"{shown}.every(j => !j.fig.urgent?.(j.runs(), gradwatch.charts.view))")
            page.wait_for_timeout(2000)  # the heatmap's fetch, and a paced redraw
            box = page.evaluate("""() => {
              const top = document.querySelector('#runs').closest('.card').getBoundingClientRect();
              const bottom = document.getElementById('chart-heatmap').closest('figure').getBoundingClientRect();
              return { x: 0, y: top.top - 4, width: innerWidth, height: bottom.bottom - top.top + 8 };
            }""")
            page.screenshot(path=str(out), clip=box)
            browser.close()
        print(f"wrote {out.relative_to(ROOT)}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
