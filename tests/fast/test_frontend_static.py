"""The page's static files agree with the server where both name the same things."""

from __future__ import annotations

import re

from ..conftest import ROOT

FRONTEND = ROOT / "frontend"


def test_heatmap_menu_is_built_from_the_served_statistics() -> None:
    """Its options come from GET /api/stats (stats.js); tests/fast/test_stats.py checks the rest of
    the page against the registry."""
    html = (FRONTEND / "index.html").read_text()
    assert re.search(r'<select id="heatmap-stat"[^>]*></select>', html), "the menu's options come from stats.js"
    main = (FRONTEND / "js" / "main.js").read_text()
    assert "heatmapStats().map(" in main
