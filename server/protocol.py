"""uvicorn's HTTP/1.1 protocol (h11) with a deadline on the request head; its websockets
protocol with compression decided per peer.

uvicorn closes a kept-alive connection that stays idle, but waits for ever on one that opened
and sent nothing, or half a request head: a few thousand of those hold as many sockets and file
descriptors (issue 15 held 1500 for 20 s and more). Here a connection must send a whole request
head (request line and headers) within GRADWATCH_HEADER_TIMEOUT_S of opening, or of its
previous response ending, or it is closed. Bodies and websockets are not timed by this (bodies
are capped in size by the guard; a websocket has its own pings).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def with_header_timeout(timeout_s: float) -> type[H11Protocol]:
    class HeaderTimeoutProtocol(H11Protocol):
        header_timeout_s = timeout_s

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_timer: asyncio.TimerHandle | None = None
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:  # still waiting for (the rest of) a request head
                self._arm()
            else:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._disarm()
                self._arm()  # the next request's head has the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
                self.transport.close()  # no request under way, and no whole head of the next one

    return HeaderTimeoutProtocol


def is_local_peer(client: tuple[str, int] | None) -> bool:
    """Whether a connection's peer (uvicorn's `client`: host, port) is this machine: a loopback
    address (IPv4-mapped ones too), or no address at all (a Unix socket)."""
    if not client:
        return True
    try:
        addr = ipaddress.ip_address(client[0].split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def websocket_options(compression: str) -> dict[str, Any]:
    """uvicorn.run's websocket options for GRADWATCH_WS_COMPRESSION: on (permessage-deflate for
    every peer that asks, uvicorn's default), off (for none), auto (for peers off this machine).

    On loopback deflate only costs CPU: both ends compress and inflate every frame, and a page's
    stream is a frame every 50 ms per tab (in bench/stream_load.py with ten local clients, the
    server spent a quarter of its time in deflate). auto needs uvicorn's sans-I/O websockets
    protocol (uvicorn >= 0.35); with an older uvicorn it is `on`."""
    if compression != "auto":
        return {"ws_per_message_deflate": compression == "on"}
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
        from websockets.server import ServerProtocol
    except ImportError:
        return {"ws_per_message_deflate": True}

    class PeerCompressionProtocol(WebSocketsSansIOProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            if is_local_peer(self.client):  # before the handshake: offered no extension, it uses none
                self.conn = ServerProtocol(extensions=[], max_size=self.config.ws_max_size,
                                           logger=logging.getLogger("uvicorn.error"))

    return {"ws": PeerCompressionProtocol, "ws_per_message_deflate": True}
