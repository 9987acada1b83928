"""The dashboard's static files, found as package data and sent gzip-compressed.

`frontend/` is the package `gradwatch.frontend` (pyproject.toml maps it), so
`importlib.resources.files()` finds it in a checkout, an editable install and a wheel alike.

Compression: the page's one big file is plotly.min.js (4.8 MB; 1.5 MB gzipped). Compressing it
per request (Starlette's GZipMiddleware) would take ~0.7 s of the event loop's CPU for every
page load; here each file is compressed once, in a worker thread, and the bytes are kept
(keyed by the file's size and mtime, so an edited file in a checkout is compressed again).
Conditional requests (ETag / If-None-Match -> 304) work as they do for StaticFiles.
"""

from __future__ import annotations

import gzip
import os
import threading
from importlib.resources import files
from pathlib import Path

import anyio
from starlette.datastructures import Headers
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

COMPRESSIBLE = ("text/", "application/javascript", "application/json", "image/svg+xml")
MIN_SIZE = 1024  # bytes: below this the gzip header and a second buffer cost more than they save
GZIP_LEVEL = 6  # level 9 takes 1.7x the time for 0.2 % fewer bytes of plotly.min.js


def frontend_dir() -> Path:
    """The folder of the static files, wherever gradwatch is installed."""
    root = files("gradwatch.frontend")
    path = Path(str(root))
    if not (path / "index.html").is_file():
        raise RuntimeError(f"gradwatch's frontend is not in {path}: the package was installed without its "
                           "package data (reinstall gradwatch)")
    return path


class _Gzipped:
    """Each file's gzip bytes, made once (per size and mtime)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple[int, int], bytes]] = {}
        self._lock = threading.Lock()

    def get(self, path: str, size: int, mtime: int) -> bytes:
        key = (size, mtime)
        with self._lock:  # two first requests at once compress once
            hit = self._cache.get(path)
            if hit is None or hit[0] != key:
                hit = (key, gzip.compress(Path(path).read_bytes(), GZIP_LEVEL, mtime=0))
                self._cache[path] = hit
            return hit[1]


_GZIPPED = _Gzipped()


def accepts_gzip(headers: Headers) -> bool:
    return any(part.split(";")[0].strip() in ("gzip", "*")
               for part in headers.get("accept-encoding", "").lower().split(","))


async def compressed(response: Response, headers: Headers) -> Response:
    """`response`, gzipped when it is a compressible file and the client accepts gzip."""
    if not isinstance(response, FileResponse) or response.status_code != 200:
        if response.status_code == 304:
            response.headers["vary"] = "Accept-Encoding"
        return response
    response.headers["vary"] = "Accept-Encoding"
    stat = response.stat_result or os.stat(response.path)
    media = response.media_type or ""
    if stat.st_size < MIN_SIZE or not media.startswith(COMPRESSIBLE) or not accepts_gzip(headers):
        return response
    body = await anyio.to_thread.run_sync(_GZIPPED.get, str(response.path), stat.st_size, stat.st_mtime_ns)
    out = Response(body, status_code=200, media_type=media)
    for name in ("last-modified", "cache-control", "vary"):
        if name in response.headers:
            out.headers[name] = response.headers[name]
    if "etag" in response.headers:  # weak: the same content, other bytes (If-None-Match still matches it)
        out.headers["etag"] = "W/" + response.headers["etag"].removeprefix("W/")
    out.headers["content-encoding"] = "gzip"
    return out


class CompressedStaticFiles(StaticFiles):
    """StaticFiles whose answers are gzipped for clients that accept it."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        return await compressed(response, Headers(scope=scope))
