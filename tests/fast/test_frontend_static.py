"""The page's static files agree with the server where both name the same things."""

from __future__ import annotations

import re

from gradwatch.server.routes.runs import HEATMAP_STATS

from ..conftest import ROOT

FRONTEND = ROOT / "frontend"


def test_heatmap_menu_lists_what_the_server_draws() -> None:
    src = (FRONTEND / "js" / "state.js").read_text()
    block = re.search(r"export const HEATMAP_STATS = \[(.*?)\];", src, re.S)
    assert block, "state.js no longer declares HEATMAP_STATS"
    keys = re.findall(r"\{\s*key:\s*'([a-z_]+)'", block.group(1))
    assert tuple(keys) == HEATMAP_STATS


def test_heatmap_menu_is_built_from_that_list() -> None:
    html = (FRONTEND / "index.html").read_text()
    assert re.search(r'<select id="heatmap-stat"[^>]*></select>', html), "the menu's options come from state.js"
