"""Schemathesis hooks for tests/test_fuzz.py (loaded through SCHEMATHESIS_HOOKS, not by pytest)."""

from __future__ import annotations

import schemathesis


@schemathesis.check
def refused_without_the_token(ctx, response, case) -> None:  # noqa: ANN001 - schemathesis' signature
    """Without credentials, every route in the schema answers 401 or 403, and nothing else."""
    if response.status_code not in (401, 403):
        raise AssertionError(f"expected 401 or 403 without the token, got {response.status_code}")
