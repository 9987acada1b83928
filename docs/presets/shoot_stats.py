"""The pictures of the statistics charts in docs/presets.md: runs every variant of a preset on a
fresh server, then shoots the Effective learning rate and Dead ReLU units charts of all of them
and prints what the charts show (first and last point of each run).

    .venv/bin/python docs/presets/shoot_stats.py l2-bn        # -> docs/presets/l2-bn-stats.png
    .venv/bin/python docs/presets/shoot_stats.py explosion
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gradwatch.presets import PRESETS  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from tests.browserkit import CHROMIUM_ARGS, LIVE  # noqa: E402
from tests.conftest import LiveServer  # noqa: E402

FINAL = ("completed", "diverged", "failed", "stopped")


def summary(rows: list[list[float | None]], how) -> float | None:  # noqa: ANN001
    """What the chart plots for one step: `how` (median, mean) of the finite per-layer values."""
    values = [v for v in rows if v is not None]
    return how(values) if values else None


def main(which: str) -> None:
    preset = PRESETS[which]
    out = ROOT / "docs" / "presets" / f"{which}-stats.png"
    server = LiveServer(Path(tempfile.mkdtemp()) / "data", env={"GRADWATCH_MAX_CONCURRENT": "2"}).start()
    try:
        ids = []
        for v in preset.variants:
            r = server.client.post("/api/runs", json={"name": v.name, "preset": which, "config": dict(v.config)})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        for run_id in ids:
            server.wait_status(run_id, FINAL, timeout=900)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1250})
            page.goto(server.browser_url + f"&runs={','.join(ids)}&focus={ids[0]}&smooth=0")
            page.wait_for_function(LIVE)
            boxes = []
            for fig in ("chart-efflr", "chart-dead"):
                page.locator(f"#{fig}").scroll_into_view_if_needed()
                boxes.append(page.locator(f"#{fig}").locator("xpath=..").bounding_box())
            page.wait_for_timeout(3000)  # both drawn (figures draw as they come into view)
            x0, y0 = min(b["x"] for b in boxes), min(b["y"] for b in boxes)
            x1 = max(b["x"] + b["width"] for b in boxes)
            y1 = max(b["y"] + b["height"] for b in boxes)
            page.screenshot(path=str(out), clip={"x": x0 - 4, "y": y0 - 4, "width": x1 - x0 + 8, "height": y1 - y0 + 8})
            browser.close()
        for v, run_id in zip(preset.variants, ids, strict=True):
            st = server.client.get(f"/api/runs/{run_id}/metrics").json()["stats"]
            eff = [summary(row, statistics.median) for row in st["eff_lr"]]
            dead = [summary(row, statistics.mean) for row in st["dead_frac"]]
            print(f"{v.name}: {server.run(run_id)['status']}, steps {st['step'][0]}..{st['step'][-1]}, "
                  f"eff. lr {eff[0]} -> {eff[-1]}, dead {dead[0]} -> {dead[-1]}")
        print("wrote", out)
    finally:
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1])
