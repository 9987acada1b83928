"""Secure by default (docs/security.md): token auth exchanged for a cookie, Host and Origin
allow-lists, JSON-only state changes, bounded input, and a server that refuses to start
unsafe. All against a real server on a free port."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from .conftest import ROOT, LiveServer, free_port, wait_for

FAST = {"dataset": "synthetic", "depth": 3, "width": 16, "steps": 40, "eval_every": 20}
EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = LiveServer(tmp_path_factory.mktemp("secure") / "data", log_level="info", env={
        "GRADWATCH_MAX_CONCURRENT": "1", "GRADWATCH_MAX_QUEUED": "2",
        "GRADWATCH_ALLOWED_HOSTS": "dash.example.com,.corp.example",
        "GRADWATCH_ALLOWED_ORIGINS": "https://proxy.example.com"}).start()
    yield s
    s.stop()


@pytest.fixture
def anon(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def own_origin(server: LiveServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def signed_in(server: LiveServer) -> httpx.Client:
    """A client that did what a browser does: sign in on /login (a POST of the token), keep the
    cookie, and say on every request that it comes from the page itself (browsers send
    Sec-Fetch-Site, and no page can change it)."""
    c = httpx.Client(base_url=server.url, timeout=10, headers={"Sec-Fetch-Site": "same-origin"})
    r = c.post("/api/login", json={"token": server.token})
    assert r.status_code == 204, r.text
    return c


def ws_status(url: str, **kw) -> int:
    """The HTTP status a refused websocket upgrade got."""
    with pytest.raises(InvalidStatus) as e:
        connect(url, open_timeout=10, **kw).close()
    return e.value.response.status_code


def raw_http(port: int, request: bytes, read_timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(request)
        out = b""
        while b"\r\n\r\n" not in out:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


# ---- auth --------------------------------------------------------------------------------


def test_signing_in_posts_the_token_for_an_httponly_strict_cookie(server: LiveServer, anon) -> None:
    r = anon.post("/api/login", json={"token": server.token})
    assert r.status_code == 204
    cookie = r.headers["set-cookie"]
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= {p.strip() for p in cookie.split(";")}
    assert server.token not in cookie  # a session of its own, not the token
    same = {"Sec-Fetch-Site": "same-origin"}
    assert anon.get("/api/runs", headers=same).status_code == 200  # the cookie is the session
    assert anon.get("/api/runs", headers={"Sec-Fetch-Site": "same-site"}).status_code == 401
    assert anon.get("/api/runs", headers={"Origin": "http://localhost:3000"}).status_code == 401
    # A wrong token signs nobody in; a forged cookie is nobody.
    with httpx.Client(base_url=server.url, timeout=10, headers=same) as other:
        assert other.post("/api/login", json={"token": "not-the-token"}).status_code == 401
        assert other.get("/api/runs").status_code == 401
        other.cookies.set(f"gradwatch-session-{server.port}", "0" * 43)
        assert other.get("/api/runs").status_code == 401
    # An old ?token= link signs nobody in any more (it would stay in the history): the page
    # sends the browser to /login, the view kept and the token dropped.
    r = httpx.get(f"{server.url}/?token={server.token}&runs=a,b")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2F%3Fruns%3Da%252Cb"
    assert "set-cookie" not in r.headers
    # The access log (level info here) shows requests, never the token.
    wait_for(lambda: "GET /?token=" in server.log_text(), timeout=5, what="the access log line")
    assert server.token not in server.log_text()


def test_every_route_but_health_and_the_page_shell_needs_auth(server: LiveServer, anon) -> None:
    schema = server.client.get("/openapi.json").json()
    checked = 0
    for path, ops in schema["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "abc123", path)
        for method in ops:
            r = anon.request(method.upper(), concrete, json={} if method in ("post", "put", "patch") else None)
            expected = 200 if path == "/api/health" else 401
            assert r.status_code == expected, (method, path, r.status_code, r.text)
            checked += 1
    assert checked >= 8
    for path in ("/openapi.json", "/docs", "/api/nothing-here"):
        assert anon.get(path).status_code == 401, path
    for path in ("/login", "/static/js/api.js", "/static/vendor/plotly.min.js", "/api/health"):
        assert anon.get(path).status_code == 200, path
    assert anon.get("/").status_code == 303  # to /login
    assert anon.get("/api/runs", headers={"Authorization": "Bearer wrong-token-000"}).status_code == 401
    assert anon.get("/api/runs", headers={"Authorization": f"Bearer {server.token}"}).status_code == 200


def test_websockets_are_authenticated_before_accept(server: LiveServer) -> None:
    url = server.ws_url("/api/stream", auth=False)
    assert ws_status(url) == 403
    assert ws_status(url + "?token=wrong-token-000") == 403
    with connect(url, open_timeout=10, additional_headers={"Authorization": f"Bearer {server.token}"}):
        pass
    with connect(url + f"?token={server.token}", open_timeout=10):
        pass
    browser = signed_in(server)
    cookie = f"gradwatch-session-{server.port}={browser.cookies[f'gradwatch-session-{server.port}']}"
    browser.close()
    # The cookie works only from our own page: browsers always send Origin on websockets.
    with connect(url, open_timeout=10, origin=own_origin(server), additional_headers={"Cookie": cookie}):
        pass
    assert ws_status(url, additional_headers={"Cookie": cookie}) == 403
    assert ws_status(url, origin="http://localhost:3000", additional_headers={"Cookie": cookie}) == 403
    assert ws_status(url, origin=EVIL, additional_headers={"Authorization": f"Bearer {server.token}"}) == 403
    # The ingest socket takes its own run's token only, never the server's.
    run = server.create_run({**FAST, "steps": 5})
    assert ws_status(server.ws_url(f"/api/ingest/{run['id']}"),
                     additional_headers={"Authorization": f"Bearer {server.token}"}) == 403
    server.wait_status(run["id"], ("completed",))


# ---- Host and Origin ---------------------------------------------------------------------


def test_the_host_allow_list_guards_http_and_websocket_upgrades(server: LiveServer, anon) -> None:
    for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1.evil.example", "corp.example.evil"):
        for path in ("/", "/api/health", "/api/runs"):
            r = anon.get(path, headers={"Host": host})
            assert r.status_code == 400 and "Host" in r.json()["detail"], (host, path)
        assert ws_status(server.ws_url("/api/stream"), additional_headers={"Host": host}) == 400
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", f"[::1]:{server.port}",
                 "dash.example.com", "corp.example", "ci.corp.example:8443"):
        assert anon.get("/api/health", headers={"Host": host}).status_code == 200, host
    # Malformed Host headers are a 400 too, never a 500.
    for host in (b"", b"[::1", b"a:b:c", b"x:99999999", b"local host"):
        head = raw_http(server.port, b"GET /api/health HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), (host, head[:80])


def test_foreign_origins_cannot_change_state_and_nothing_is_shared_cross_origin(server: LiveServer) -> None:
    c = server.client
    for origin in (EVIL, "http://localhost:3000", "null", f"http://127.0.0.1:{server.port + 1}"):
        r = c.post("/api/runs/abc123/stop", headers={"Origin": origin})
        assert r.status_code == 403, origin
        assert "access-control-allow-origin" not in r.headers
    for origin in (own_origin(server), "https://proxy.example.com"):
        assert c.post("/api/runs/abc123/stop", headers={"Origin": origin}).status_code == 404  # got through
    r = c.options("/api/runs", headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    r = c.get("/api/runs", headers={"Origin": EVIL})
    assert "access-control-allow-origin" not in r.headers
    page = httpx.get(server.url + "/login")
    assert page.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in page.headers[
        "content-security-policy"]


def test_state_changes_take_json_only(server: LiveServer) -> None:
    c = server.client
    before = len(c.get("/api/runs").json())
    for kind, body in [("application/x-www-form-urlencoded", b"config=1"), ("text/plain", b'{"config": {}}'),
                       ("multipart/form-data; boundary=x", b"--x--")]:
        r = c.post("/api/runs", content=body, headers={"Content-Type": kind})
        assert r.status_code == 415 and "application/json" in r.json()["detail"], kind
    r = c.post("/api/runs", content=b'{"config": {}}', headers={"Content-Type": ""})
    assert r.status_code == 415
    assert len(c.get("/api/runs").json()) == before
    assert c.post("/api/runs/abc123/stop").status_code == 404  # no body, no type: fine


# ---- bounded input -----------------------------------------------------------------------


def test_a_body_over_1_mib_is_413_before_it_is_read(server: LiveServer) -> None:
    # Declared too big: the answer comes although not one byte of the body was sent.
    head = raw_http(server.port, (f"POST /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                                  f"{server.token}\r\nContent-Type: application/json\r\n"
                                  f"Content-Length: {10 * 2**30}\r\n\r\n").encode())
    assert head.startswith(b"HTTP/1.1 413"), head[:80]
    # Streamed (chunked, no length): cut off once it passes the limit.
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"name": "'
        for _ in range(64):
            sent += 65536
            yield b"x" * 65536
        yield b'"}'

    r = server.client.post("/api/runs", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and sent > 2**20
    r = server.client.post("/api/runs", json={"name": "x" * 500_000})
    assert r.status_code == 422  # under the limit: validated as usual (name is at most 100)


def test_unknown_fields_and_out_of_range_numbers_are_422(server: LiveServer) -> None:
    for body in ({"config": {"depth": 65}}, {"config": {"lr": 1e300}}, {"config": {"steps": -1}},
                 {"config": {"path": "/etc/passwd"}}, {"config": {}, "module": "os"},
                 {"config": {"batch_size": 1.5}}, {"config": {"l2": float("inf")}}):
        r = server.client.post("/api/runs", content=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
                               if "inf" not in str(body) else b'{"config": {"l2": Infinity}}',
                               headers={"Content-Type": "application/json"})
        assert r.status_code == 422, (body, r.text)
    # Each field in range, the whole over the parameter budget: refused before any worker starts.
    r = server.client.post("/api/runs", json={"config": {"depth": 64, "width": 2048}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "width", r.text


def test_queued_runs_are_capped_with_429(server: LiveServer) -> None:
    c = server.client
    # An earlier test's run may still hold the slot while its worker exits: start from an idle server.
    wait_for(lambda: c.get("/api/health").json()["runs_active"] == 0, timeout=30, what="an idle server")
    made = [server.create_run({**FAST, "steps": 100_000}) for _ in range(3)]  # one runs, two queue
    wait_for(lambda: c.get("/api/health").json()["runs_queued"] == 2, timeout=30, what="two queued runs")
    r = c.post("/api/runs", json={"config": FAST})
    assert r.status_code == 429 and "queued" in r.json()["detail"]
    for run in made:
        assert c.delete(f"/api/runs/{run['id']}").status_code == 204


def test_websocket_messages_over_the_cap_close_the_socket(server: LiveServer) -> None:
    with connect(server.ws_url("/api/stream"), open_timeout=10, max_size=None) as ws:
        ws.send("x" * (65 * 1024))
        with pytest.raises(ConnectionClosed) as e:
            while True:
                ws.recv(timeout=10)
        assert e.value.rcvd.code == 1009
    # Over the server-wide frame cap (8 MiB): refused by the protocol layer from the frame's header,
    # before its payload is read. A raw socket sends just the header and a little: a client library
    # sending the whole 9 MiB would be cut off mid-send (uncompressed on loopback) and could miss the close.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall((f"GET /api/stream?token={server.token} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                      "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        assert data.startswith(b"HTTP/1.1 101"), data
        data = data.split(b"\r\n\r\n", 1)[1]
        # FIN + binary, masked, a 64-bit length of 9 MiB, a zero mask, then 1 KiB of it
        sock.sendall(bytes([0x82, 0x80 | 127]) + (9 * 2**20).to_bytes(8, "big") + bytes(4) + b"x" * 1024)
        while True:  # the server's frames (unmasked; live events maybe) until its close frame
            while True:
                head = 2 + {126: 2, 127: 8}.get(data[1] & 0x7F, 0) if len(data) >= 2 else 2
                if len(data) >= head:
                    length = data[1] & 0x7F if head == 2 else int.from_bytes(data[2:head], "big")
                    if len(data) >= head + length:
                        break
                chunk = sock.recv(65536)
                assert chunk, f"closed without a close frame: {data[:64]!r}"
                data += chunk
            if data[0] & 0x0F == 0x8:
                assert int.from_bytes(data[head:head + 2], "big") == 1009, data[:head + length]
                break
            data = data[head + length:]


# ---- starting safely ---------------------------------------------------------------------


def serve(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    for name in ("GRADWATCH_TOKEN", "GRADWATCH_HOST"):
        if name not in env or not env[name]:
            env.pop(name, None)
    return subprocess.Popen([sys.executable, "-m", "gradwatch.server.cli", "serve", "--log-level", "warning", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_non_loopback_bind_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    p = serve(["--host", "0.0.0.0", "--port", str(free_port()), "--data-dir", str(tmp_path / "d")],
              {"GRADWATCH_TOKEN": ""})
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2
    assert "refusing to listen on 0.0.0.0 without GRADWATCH_TOKEN" in err and "Traceback" not in err


def test_an_unwritable_data_dir_is_a_clear_error_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    p = serve(["--port", str(free_port()), "--data-dir", str(blocker / "data")], {})
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2
    assert f"data dir {blocker / 'data'} is not writable" in err and "Traceback" not in err


def test_without_a_token_one_is_made_and_printed_in_the_url_to_open(tmp_path: Path) -> None:
    port = free_port()
    p = serve(["--port", str(port), "--data-dir", str(tmp_path / "d")], {})
    try:
        line = p.stdout.readline()
        m = re.search(rf"open http://127\.0\.0\.1:{port}/login#code=(\S+) .* with token (\S+)\)", line)
        assert m, line
        code, token = m.groups()
        assert len(token) >= 32
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline and p.poll() is None, p.stderr.read()
                time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{port}/api/runs").status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/api/runs",
                         headers={"Authorization": f"Bearer {token}"}).status_code == 200
        # The printed link's code signs one browser in, once.
        login = f"http://127.0.0.1:{port}/api/login"
        assert httpx.post(login, json={"code": code}).status_code == 204
        assert httpx.post(login, json={"code": code}).status_code == 401
    finally:
        p.terminate()
        p.communicate(timeout=30)
