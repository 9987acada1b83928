"""Presets that teach (trainer/presets.py): named configs with their explanation and variants.

Launch one with `POST /api/runs {"preset": NAME, "config": {fields to change}}`; a variant is
launched the same way, with the variant's `config` as the fields to change."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from gradwatch.presets import PRESETS, describe

router = APIRouter(prefix="/api/presets", tags=["presets"])


@router.get("")
def list_presets() -> list[dict[str, Any]]:
    return [describe(p) for p in PRESETS.values()]
