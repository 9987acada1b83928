"""The few REST calls a script or the CLI makes to a gradwatch server: stdlib urllib and orjson
only, so `gradwatch runs` / `export` and `gradwatch.connect` need neither torch nor the server's
packages to talk to it."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from typing import Any

import orjson


class AnswerCutOff(ConnectionError):
    """The server was reached, but its answer ended early (a cut download)."""


class ApiError(RuntimeError):
    """The server answered a REST call with an error; `status` and `detail` say which."""

    def __init__(self, method: str, url: str, status: int, detail: Any) -> None:
        super().__init__(f"{method} {url}: HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


def api_request(base: str, method: str, path: str, token: str | None = None, body: Any = None,
                timeout: float = 10.0, raw: bool = False) -> Any:
    """One REST call to a gradwatch server: parsed JSON (or the bytes, with raw=True).

    Raises ApiError for an HTTP error (with the server's `detail`) and ConnectionError when
    the server cannot be reached."""
    url = base.rstrip("/") + path
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = orjson.dumps(body)
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            content = resp.read()
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            detail = orjson.loads(text).get("detail", text.decode(errors="replace"))
        except (orjson.JSONDecodeError, AttributeError):
            detail = text.decode(errors="replace").strip() or e.reason
        raise ApiError(method, url, e.code, detail) from None
    except http.client.HTTPException as e:  # an answer cut short (IncompleteRead), a garbled one
        got = f" after {len(e.partial):,} bytes" if isinstance(e, http.client.IncompleteRead) else ""
        raise AnswerCutOff(f"the answer from the gradwatch server at {base} was cut off{got} "
                              f"({type(e).__name__}); try again") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConnectionError(f"cannot reach the gradwatch server at {base}: {reason}") from None
    if raw:
        return content
    return orjson.loads(content) if content else None
