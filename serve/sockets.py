"""The socket side of the HTTP server, below uvicorn: the listening socket, made as asyncio makes
its own, and a connection's transport that lingers on close so that a client still sending reads
the refusal rather than a reset. Standard library only.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port``, made as asyncio makes its own: with the TCP
    protocol number set, which asyncio needs to switch Nagle's algorithm off on the connections
    (without it, an answer's body waits for the client's delayed ACK of its headers, about
    40 ms on every keep-alive request)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


class LingeringTransport:
    """A connection's transport whose ``close`` first half-closes (the answer, then end of
    stream) and reads and discards what the client still sends for up to ``linger`` seconds
    before closing. Closing at once with unread bytes in the socket makes the kernel reset the
    connection, and a client still sending a refused body would see the reset instead of the
    413 or 400 that says why. Everything else is the wrapped transport's."""

    def __init__(self, transport: asyncio.Transport, linger: float) -> None:
        self.transport, self.linger = transport, linger
        self.lingering = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self.transport.is_closing()

    def close(self) -> None:
        if self.lingering:
            return
        self.lingering = True
        if self.transport.is_closing() or not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.transport.resume_reading()
        asyncio.get_running_loop().call_later(self.linger, self.transport.close)
