"""What a server admits: its limits (:class:`Limits`, each a key of
``python serve.py``), the budget its connections share (:class:`Gate`: requests being decided
or waiting, request bytes held) and the reading of a body within them (:func:`read_body`).
Refusals are :class:`Refused`, with the HTTP status that says why. Needs the standard library
and the body's scan only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from serve.body import BodyScan
from serve.explain import EXPLAIN_AT_MOST

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
"""an ASGI ``receive``: the next message of a request (as Starlette's ``starlette.types``)"""

MAX_BODY_BYTES = 64 * 2**20
"""default largest request body (64 MiB: about 100,000 rows of 41 features as JSON)"""
READ_TIMEOUT_S = 10.0
"""default seconds a connection has for a request's headers, and then for its body"""
WORKERS = 4
"""default threads deciding requests"""
QUEUE = 16
"""default requests waiting for a worker beyond those being decided"""
MAX_EXPLAIN_ROWS = EXPLAIN_AT_MOST
"""default most rows ``"explain": true`` is served for (reasons cost one network pass per
feature group: 100,000 rows took 4.9 s and 1.3 GB)"""
MAX_CONNECTIONS = 1_024
"""default most connections served at once"""
MAX_BUFFERED_BYTES = 256 * 2**20
"""default most request bytes held at once over all connections (read, waiting or decided)"""


@dataclass(frozen=True)
class Limits:
    """What one server accepts; each field has a command-line flag of its name (the byte
    sizes in MiB: ``--max-body-mb``, ``--max-buffered-mb``)."""

    max_body_bytes: int = MAX_BODY_BYTES
    """largest request body (bytes)"""
    read_timeout: float = READ_TIMEOUT_S
    """seconds for a request's headers, and then as long for its body"""
    workers: int = WORKERS
    """threads deciding requests"""
    queue: int = QUEUE
    """requests waiting for a worker beyond those being decided (503 past it)"""
    max_explain_rows: int = MAX_EXPLAIN_ROWS
    """most rows ``"explain": true`` is served for (413 past it)"""
    max_connections: int = MAX_CONNECTIONS
    """most connections served at once (503 past it)"""
    max_buffered_bytes: int = MAX_BUFFERED_BYTES
    """most request bytes held at once over all connections (503 past it)"""

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "workers", "max_explain_rows", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.queue < 0:
            raise ValueError(f"queue must be 0 or more, got {self.queue}")
        if not self.read_timeout > 0:
            raise ValueError(f"read_timeout must be positive (seconds), got {self.read_timeout}")
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ValueError(
                f"max_buffered_bytes ({self.max_buffered_bytes:,}) must hold at least one "
                f"body of max_body_bytes ({self.max_body_bytes:,})"
            )


class Refused(Exception):
    """A request answered with an error before it is decided."""

    def __init__(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class Gate:
    """The server's shared budget, touched only on the event loop: requests being decided or
    waiting (at most ``workers + queue``) and request bytes held (``max_buffered_bytes``)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.executor = ThreadPoolExecutor(limits.workers, thread_name_prefix="serve-decide")
        self.busy = 0
        self.held = 0

    def check_room(self) -> None:
        """:class:`Refused` (503) when every worker and queue place is taken."""
        if self.busy >= self.limits.workers + self.limits.queue:
            raise Refused(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"the server is busy: {self.busy} requests are being decided or waiting, its "
                f"limit ({self.limits.workers} workers + a queue of {self.limits.queue}); "
                "retry shortly",
                {"retry-after": "1"},
            )

    def hold(self, size: int) -> None:
        """Count ``size`` more request bytes in memory; :class:`Refused` (503) past the budget."""
        if self.held + size > self.limits.max_buffered_bytes:
            raise Refused(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"the server holds {self.held:,} bytes of requests, near its limit of "
                f"{self.limits.max_buffered_bytes:,}; retry shortly",
                {"retry-after": "1"},
            )
        self.held += size


async def read_body(receive: Receive, gate: Gate, scan: BodyScan, body: bytearray) -> None:
    """Read the body into ``body``, chunk by chunk: each chunk counted against the size limit
    and the gate's byte budget (the caller releases ``len(body)`` from it), and scanned
    (:class:`BodyScan`), all within ``read_timeout`` seconds."""
    limits, loop = gate.limits, asyncio.get_running_loop()
    deadline = loop.time() + limits.read_timeout
    while True:
        try:
            message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
        except asyncio.TimeoutError:
            raise Refused(
                HTTPStatus.REQUEST_TIMEOUT,
                f"the body did not arrive within {limits.read_timeout:g} s "
                f"({len(body):,} bytes came)",
            ) from None
        if message["type"] == "http.disconnect":
            raise Refused(HTTPStatus.BAD_REQUEST, "the client closed the connection")
        chunk = message.get("body", b"")
        if len(body) + len(chunk) > limits.max_body_bytes:
            raise Refused(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the body is over {limits.max_body_bytes:,} bytes; at most "
                f"{limits.max_body_bytes:,} are allowed",
            )
        gate.hold(len(chunk))
        body += chunk
        scan.feed(chunk)
        if not message.get("more_body", False):
            return
