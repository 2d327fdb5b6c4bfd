"""The HTTP server for an export: MLflow's scoring JSON over the guarded runtime, on uvicorn and
Starlette, with the limits a serving endpoint needs against slow, big and malformed requests.

    python -m serve.http exports/<run_id> --port 5001                 # loopback, defaults below
    python -m serve.http exports/<run_id> --max-rows 10000 --max-body-mb 8 --consent refuse

``POST /invocations`` takes the same JSON as MLflow's scoring server: ``{"dataframe_split":
{"columns": [...], "data": [[...], ...]}}`` or ``{"dataframe_records": [{...}, ...]}``, with an
optional ``"params": {"explain": true}`` (left out: reasons for requests of up to 100 rows); it
answers ``{"predictions": [{slot, tone, channel, content, probability, reasons, needs_review},
...]}``. ``GET /ping`` answers 200 once loaded.

The export must be signed (made with $CADENCE_EXPORT_KEY set, and served with the same key):
an unsigned export is refused at start, since anyone who can write its folder can relax its
caps, quiet hours and consent rules and recompute its hashes. ``--allow-unsigned`` serves one
anyway (``--require-signature``, the default, says it explicitly).

Limits (each refusal is a JSON ``{"error_code", "message"}`` naming what is wrong, but for the
plain-text 400 of uvicorn's HTTP parser, for a malformed request line or header, and its 503
past ``--max-connections``):

* time: a connection has ``--read-timeout`` seconds (default 10) from opening, or from its last
  answer, to send a request's headers, and then as long again for the whole body; a connection
  that has not is closed (408 when its headers had arrived). An idle keep-alive connection is
  closed after at most 5 s. A stalled or trickling client holds a socket, never a thread. A
  connection closed before its body was read still reads and discards for up to 2 s, so that
  a client still sending reads the refusal rather than a reset.
* size: a body over ``--max-body-mb`` (default 64) is refused with 413, by its Content-Length
  before it is read or, when chunked, as soon as it passes the limit; the body is scanned as it
  arrives and a request with more than ``--max-rows`` rows (default 100,000) is refused with 413
  at row ``max_rows + 1``, without reading or parsing the rest. ``--max-buffered-mb`` (default
  256) bounds the request bytes held at once over all connections (503 past it).
* work: requests are decided by ``--workers`` threads (default 4) with at most ``--queue``
  (default 16) more waiting; past that the answer is 503 with ``Retry-After: 1``. At most
  ``--max-connections`` (default 1,024) connections are served at once.
* reasons: ``"explain": true`` is served for at most ``--max-explain-rows`` rows (default 1,000;
  more is 413); left out, requests of up to 100 rows get reasons (``wants_reasons``).
* malformed (400): a body that is not UTF-8 JSON, JSON nested deeper than 16 levels (a request
  needs 4), a number outside a 64-bit float's range (``1e400``, a 400-digit integer), a
  Content-Length that is not ASCII digits, a column named twice in ``dataframe_split`` or a key
  twice in one record or object, an unknown top-level key, and every check of the runtime
  (consent, exact guard inputs, ranges) on every row, named by feature and row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import socket
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive
from uvicorn.protocols.http.h11_impl import H11Protocol

from serve.circuit import CircuitError
from serve.runtime import (
    CONSENT_MODES,
    EXPLAIN_AT_MOST,
    MAX_ROWS,
    ExportError,
    PolicyRuntime,
    RequestError,
    TooLarge,
    wants_reasons,
)

MAX_BODY_BYTES = 64 * 2**20
"""default largest request body (64 MiB: about 100,000 rows of 41 features as JSON)"""
READ_TIMEOUT_S = 10.0
"""default seconds a connection has for a request's headers, and then for its body"""
KEEP_ALIVE_S = 5
"""most seconds an idle keep-alive connection is held between requests"""
LINGER_S = 2.0
"""seconds a closing connection still reads (and discards) what its client sends, so that a
client still sending a refused body reads the answer rather than a reset"""
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
MAX_DEPTH = 16
"""deepest JSON nesting accepted (a request needs 4: body, dataframe_split, data, row)"""
SCAN_BYTES = 2**18
"""bytes scanned per numpy pass (bounds the scan's temporary arrays to a few MiB)"""


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


# ----- the body, as it streams in -------------------------------------------------------------
_QUOTE, _BACKSLASH, _OPEN_LIST, _OPEN_OBJECT = map(ord, '"\\[{')
_STEP = np.zeros(256, dtype=np.int8)
"""+1 for a byte that opens a list or object, -1 for one that closes it"""
_STEP[list(b"[{")], _STEP[list(b"]}")] = 1, -1


class BodyScan:
    """Nesting depth and rows of a UTF-8 JSON body, fed chunk by chunk as it arrives, without
    parsing a value: the state between chunks is the depth, whether a string is open and the
    backslashes that end the chunk. Rows are the lists opening at depth 4 (a
    ``dataframe_split`` row) and the objects opening at depth 3 (a ``dataframe_records``
    record); in a body the parser then accepts nothing else opens there, so the count is
    exact. For bytes that are not valid JSON the count may be off, but such a body is refused
    either way. Scanned in slices of :data:`SCAN_BYTES`.

    Raises :class:`RequestError` past :data:`MAX_DEPTH` levels and :class:`TooLarge` at row
    ``max_rows + 1``.
    """

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.depth = 0
        self.in_string = False
        self.backslashes = 0
        """backslashes that end the bytes fed so far"""
        self.rows = 0
        self.bytes = 0

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        view = memoryview(chunk).cast("B")
        for start in range(0, len(view), SCAN_BYTES):
            self._feed(np.frombuffer(view[start : start + SCAN_BYTES], dtype=np.uint8))

    def _feed(self, data: np.ndarray) -> None:
        if not len(data):
            return
        quotes = np.flatnonzero(data == _QUOTE)
        slash = data == _BACKSLASH
        if self.backslashes or slash.any():
            others = np.flatnonzero(~slash)
            last = np.searchsorted(others, quotes) - 1  # the last other byte before each quote
            run = quotes - np.where(last >= 0, others[np.maximum(last, 0)], -1) - 1
            run[last < 0] += self.backslashes  # a run of backslashes from the previous chunk
            quotes = quotes[run % 2 == 0]  # an odd run escapes the quote
            tail = len(data) - 1 - (int(others[-1]) if len(others) else -1)
            self.backslashes = tail + (self.backslashes if tail == len(data) else 0)
        marks = np.flatnonzero(_STEP[data])
        inside = (np.searchsorted(quotes, marks) + self.in_string) % 2 == 1
        marks = marks[~inside]
        steps = _STEP[data[marks]]
        depth = self.depth + np.cumsum(steps, dtype=np.int64)
        if len(depth) and depth.max() > MAX_DEPTH:
            where = self.bytes + int(marks[np.argmax(depth > MAX_DEPTH)])
            raise RequestError(
                f"the body nests JSON deeper than {MAX_DEPTH} levels (at byte {where:,}); "
                "a request needs 4"
            )
        opened = data[marks]
        rows = ((opened == _OPEN_LIST) & (depth == 4)) | ((opened == _OPEN_OBJECT) & (depth == 3))
        self.rows += int(np.count_nonzero(rows))
        if self.rows > self.max_rows:
            raise TooLarge(
                f"the request has at least {self.max_rows + 1:,} rows; at most "
                f"{self.max_rows:,} are allowed (refused at byte {self.bytes + len(data):,})"
            )
        if len(depth):
            self.depth = int(depth[-1])
        self.in_string = bool((len(quotes) + self.in_string) % 2)
        self.bytes += len(data)


# ----- the body, parsed -----------------------------------------------------------------------
class OutOfRange:
    """A JSON number a 64-bit float cannot hold (``1e400``, a 400-digit integer)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        digits = sum(c.isdigit() for c in self.text)
        shown = self.text if len(self.text) <= 24 else f"{self.text[:12]}...{self.text[-6:]}"
        return f"{shown} ({digits:,} digits)"


class RepeatedKeys(dict):
    """A JSON object that named a key more than once (``repeated``: those keys)."""

    repeated: list[str]


def _number(text: str) -> float | OutOfRange:
    value = float(text)  # a float, never Python's unbounded int: 10**400 is refused, not kept
    return value if math.isfinite(value) else OutOfRange(text)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    repeated = RepeatedKeys(obj)
    repeated.repeated = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
    return repeated


def _twice(where: str, obj: Any) -> None:
    if isinstance(obj, RepeatedKeys):
        raise RequestError(
            f"{where} names {', '.join(obj.repeated)} twice; each key must appear once"
        )


def decode(body: bytes | bytearray) -> Any:
    """The JSON value of a body whose depth is already known to be bounded (see
    :class:`BodyScan`); numbers as floats (:class:`OutOfRange` past a float's range), objects
    that repeat a key as :class:`RepeatedKeys`. :class:`RequestError` if not UTF-8 JSON."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(
            f"the body must be UTF-8 JSON; byte {exc.start:,} is not UTF-8 ({exc.reason})"
        ) from exc
    try:
        return json.loads(text, parse_int=_number, parse_float=_number, object_pairs_hook=_object)
    except json.JSONDecodeError as exc:
        raise RequestError(f"the body is not valid JSON: {exc}") from exc


def parse_request(
    body: bytes | bytearray, max_rows: int
) -> tuple[dict[str, np.ndarray], bool | None]:
    """(a mapping of feature name -> column, explain or None) from a JSON body;
    :class:`RequestError` naming what is wrong (:class:`TooLarge` past ``max_rows``)."""
    BodyScan(max_rows).feed(body)
    return table_of(decode(body), max_rows)


def table_of(payload: Any, max_rows: int) -> tuple[dict[str, np.ndarray], bool | None]:
    """The columns and ``explain`` of a decoded body (see :func:`parse_request`)."""
    if not isinstance(payload, dict):
        raise RequestError(
            "the body must be a JSON object with 'dataframe_split' or 'dataframe_records'"
        )
    _twice("the body", payload)
    unknown = sorted(set(payload) - {"dataframe_split", "dataframe_records", "params"})
    if unknown:
        raise RequestError(
            f"unknown key(s) {', '.join(unknown)}; the body takes 'dataframe_split' or "
            "'dataframe_records', and 'params'"
        )
    params = payload.get("params") or {}
    if not isinstance(params, dict) or set(params) - {"explain"}:
        raise RequestError(f"params may hold only 'explain', got {params!r}")
    _twice("params", params)
    explain = params.get("explain")
    if explain is not None and not isinstance(explain, bool):
        raise RequestError(f"params.explain must be true or false, got {explain!r}")
    if "dataframe_split" in payload and "dataframe_records" in payload:
        raise RequestError("the body has both 'dataframe_split' and 'dataframe_records'; send one")
    if "dataframe_split" in payload:
        return _split(payload["dataframe_split"], max_rows), explain
    if "dataframe_records" in payload:
        return _records(payload["dataframe_records"], max_rows), explain
    raise RequestError("the body needs 'dataframe_split' or 'dataframe_records'")


def _split(split: Any, max_rows: int) -> dict[str, np.ndarray]:
    if not isinstance(split, dict) or not isinstance(split.get("columns"), list):
        raise RequestError("dataframe_split needs 'columns' (a list) and 'data' (a list of rows)")
    _twice("dataframe_split", split)
    rows, columns = split.get("data"), split["columns"]
    if not isinstance(rows, list):
        raise RequestError("dataframe_split.data must be a list of rows")
    if len(rows) > max_rows:
        raise TooLarge(f"the request has {len(rows):,} rows; at most {max_rows:,} are allowed")
    for i, name in enumerate(columns):
        if not isinstance(name, str):
            raise RequestError(f"column {i} of dataframe_split must be a name, got {name!r}")
    twice = [name for name, n in Counter(columns).items() if n > 1]
    if twice:
        times = columns.count(twice[0])
        raise RequestError(
            f"column {twice[0]} appears {'twice' if times == 2 else f'{times} times'} in "
            "dataframe_split.columns; each feature must appear once"
        )
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(columns):
            raise RequestError(f"row {i} must be a list of {len(columns)} values")
    return _columns(columns, rows)


def _records(records: Any, max_rows: int) -> dict[str, np.ndarray]:
    if not isinstance(records, list):
        raise RequestError("dataframe_records must be a list of objects")
    if len(records) > max_rows:
        raise TooLarge(f"the request has {len(records):,} rows; at most {max_rows:,} are allowed")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise RequestError("every record in dataframe_records must be an object")
        _twice(f"record {i}", record)
    names = list(dict.fromkeys(k for r in records for k in r))
    for i, r in enumerate(records):
        missing = [n for n in names if n not in r]
        if missing:
            raise RequestError(f"record {i} lacks feature(s): {', '.join(missing)}")
    return _columns(names, [[r[n] for n in names] for r in records])


def _columns(names: list[str], rows: list[list[Any]]) -> dict[str, np.ndarray]:
    table = {}
    for j, name in enumerate(names):
        values = [row[j] for row in rows]
        if not set(map(type, values)) <= {float}:  # the fast path: every number parsed as float
            bad = next((i for i, v in enumerate(values) if not _is_number(v)), None)
            if bad is not None:
                value = values[bad]
                if isinstance(value, OutOfRange):
                    raise RequestError(
                        f"feature {name} = {value!r} in row {bad} is outside the range of a "
                        "64-bit float (about 1.8e308)"
                    )
                raise RequestError(f"feature {name} = {value!r} in row {bad} must be a number")
        table[name] = np.array(values, dtype=np.float64)
    return table


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def decide_body(runtime: PolicyRuntime, body: bytes | bytearray, limits: Limits) -> bytes:
    """The JSON answer to a body already scanned by :class:`BodyScan` (runs in a worker)."""
    table, explain = table_of(decode(body), runtime.max_rows)
    rows = len(next(iter(table.values()))) if table else 0
    reasons = wants_reasons(explain, rows)
    if reasons and rows > limits.max_explain_rows:
        if explain:
            raise TooLarge(
                f'"explain": true is served for at most {limits.max_explain_rows:,} rows; the '
                f"request has {rows:,} (send fewer rows, or leave explain out)"
            )
        reasons = False
    records = runtime.decide(table, explain=reasons).records()
    for r in records:
        r["reasons"] = "; ".join(r["reasons"])
    return json.dumps({"predictions": records}).encode()


# ----- the application ------------------------------------------------------------------------
class Refused(Exception):
    """A request answered with an error before it is decided."""

    def __init__(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def error(status: HTTPStatus, message: str, close: bool = False, **headers: str) -> JSONResponse:
    """The JSON error answer (``close``: the connection is closed after it, as when the body
    was not read to its end)."""
    if close:
        headers["connection"] = "close"
    return JSONResponse(
        {"error_code": status.phrase, "message": message}, status_code=status, headers=headers
    )


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


def make_app(runtime: PolicyRuntime, limits: Limits | None = None) -> Starlette:
    """The ASGI application answering with ``runtime`` within ``limits``; its ``state.gate``
    holds the worker pool (shut it down with the server)."""
    limits = limits or Limits()
    gate = Gate(limits)

    async def ping(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def invocations(request: Request) -> Response:
        length = request.headers.get("content-length")
        chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
        if length is None and not chunked:
            return error(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required", True)
        if length is not None and not (length.isascii() and length.isdigit()):
            return error(
                HTTPStatus.BAD_REQUEST, f"Content-Length must be ASCII digits, got {length!r}", True
            )
        if length is not None and int(length) > limits.max_body_bytes:
            return error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the body is {int(length):,} bytes; at most {limits.max_body_bytes:,} are allowed",
                True,
            )
        body = bytearray()
        try:
            try:
                gate.check_room()  # busy: refuse before reading a byte
                await read_body(request.receive, gate, BodyScan(runtime.max_rows), body)
                gate.check_room()
            except (Refused, RequestError) as refusal:
                return _refusal(refusal, close=True)
            gate.busy += 1
            try:
                loop = asyncio.get_running_loop()
                answer = await loop.run_in_executor(
                    gate.executor, decide_body, runtime, body, limits
                )
            except (RequestError, CircuitError) as refusal:
                return _refusal(refusal, close=False)
            finally:
                gate.busy -= 1
        finally:
            gate.held -= len(body)
        return Response(answer, media_type="application/json")

    async def no_route(request: Request, exc: Exception) -> Response:
        return error(HTTPStatus.NOT_FOUND, f"no route {request.url.path}; use POST /invocations")

    async def wrong_method(request: Request, exc: Exception) -> Response:
        return error(
            HTTPStatus.METHOD_NOT_ALLOWED,
            f"{request.method} {request.url.path} is not served; use POST /invocations or GET /ping",
        )

    app = Starlette(
        routes=[
            Route("/ping", ping, methods=["GET"]),
            Route("/invocations", invocations, methods=["POST"]),
        ],
        exception_handlers={404: no_route, 405: wrong_method},
    )
    app.state.gate = gate
    return app


def _refusal(refusal: Exception, close: bool) -> JSONResponse:
    if isinstance(refusal, Refused):
        return error(refusal.status, refusal.message, close, **refusal.headers)
    if isinstance(refusal, TooLarge):
        return error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(refusal), close)
    if isinstance(refusal, CircuitError):  # no decision on a circuit state it cannot read
        return error(HTTPStatus.SERVICE_UNAVAILABLE, str(refusal), close)
    if isinstance(refusal, RequestError):
        return error(HTTPStatus.BAD_REQUEST, str(refusal), close)
    raise TypeError(f"not a refusal: {refusal!r}") from refusal


# ----- the connection -------------------------------------------------------------------------
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


class TimedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 connection with a deadline for the request's headers: armed when the
    connection opens and after each answer, cleared when the headers are in (the body then has
    its own deadline, :func:`read_body`), it closes a connection that stays idle or trickles
    its headers; uvicorn alone holds such a connection for ever. Connections close through a
    :class:`LingeringTransport`."""

    read_timeout: float = READ_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.read_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.cycle is None or self.cycle.response_complete:  # no request under way
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        linger = min(LINGER_S, self.read_timeout)
        super().connection_made(LingeringTransport(transport, linger))  # type: ignore[arg-type]
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():  # lingering: what a refused client still sends
            return
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:
            self._disarm()  # the headers are in

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


class Server:
    """A uvicorn server on a socket bound at construction (so ``server_address`` holds the port
    even for port 0), with the standard library server's methods: ``serve_forever`` (blocks;
    run it in a thread), ``shutdown`` (from another thread) and ``server_close``."""

    def __init__(self, app: Starlette, host: str, port: int, limits: Limits) -> None:
        self.app, self.limits = app, limits
        self.socket = listening_socket(host, port)
        self.server_address: tuple[str, int] = self.socket.getsockname()[:2]
        protocol = type("Timed", (TimedH11Protocol,), {"read_timeout": limits.read_timeout})
        self.config = uvicorn.Config(
            app,
            http=protocol,
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_keep_alive=max(1, min(KEEP_ALIVE_S, math.ceil(limits.read_timeout))),
            limit_concurrency=limits.max_connections,
            timeout_graceful_shutdown=math.ceil(limits.read_timeout),
        )
        self.server = uvicorn.Server(self.config)
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serving and wait until ``serve_forever`` has returned."""
        self.server.should_exit = True
        self._stopped.wait()

    def server_close(self) -> None:
        self.socket.close()
        self.app.state.gate.executor.shutdown(wait=False, cancel_futures=True)


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


def make_server(
    runtime: PolicyRuntime,
    host: str,
    port: int,
    max_body_bytes: int = MAX_BODY_BYTES,
    limits: Limits | None = None,
) -> Server:
    """A server (not yet started: call ``serve_forever``) answering with ``runtime``;
    ``limits`` (default :class:`Limits` with ``max_body_bytes``) says what it accepts."""
    if limits is None:
        limits = Limits(
            max_body_bytes=max_body_bytes,
            max_buffered_bytes=max(MAX_BUFFERED_BYTES, max_body_bytes),
        )
    return Server(make_app(runtime, limits), host, port, limits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("export", type=Path, help="folder holding policy.onnx and manifest.json")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001, help="0 picks a free port (printed)")
    parser.add_argument("--max-rows", type=int, default=MAX_ROWS)
    parser.add_argument("--max-body-mb", type=float, default=MAX_BODY_BYTES / 2**20)
    parser.add_argument("--consent", choices=CONSENT_MODES, default="zero")
    parser.add_argument(
        "--circuit",
        type=Path,
        default=None,
        help='a JSON file {"tripped": [segments]} read on every request (serve/circuit.py)',
    )
    parser.add_argument("--read-timeout", type=float, default=READ_TIMEOUT_S, help="seconds")
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument("--queue", type=int, default=QUEUE)
    parser.add_argument("--max-explain-rows", type=int, default=MAX_EXPLAIN_ROWS)
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS)
    parser.add_argument("--max-buffered-mb", type=float, default=MAX_BUFFERED_BYTES / 2**20)
    signature = parser.add_mutually_exclusive_group()
    signature.add_argument(
        "--require-signature",
        dest="require_signature",
        action="store_true",
        default=True,
        help="refuse an export without an HMAC signature (the default)",
    )
    signature.add_argument(
        "--allow-unsigned",
        dest="require_signature",
        action="store_false",
        help="serve an export that is hashed but not signed",
    )
    args = parser.parse_args(argv)
    if args.max_rows < 1 or args.max_body_mb <= 0:
        parser.error("--max-rows and --max-body-mb must be positive")
    try:
        limits = Limits(
            max_body_bytes=int(args.max_body_mb * 2**20),
            read_timeout=args.read_timeout,
            workers=args.workers,
            queue=args.queue,
            max_explain_rows=args.max_explain_rows,
            max_connections=args.max_connections,
            max_buffered_bytes=int(args.max_buffered_mb * 2**20),
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        runtime = PolicyRuntime.load(
            args.export,
            consent=args.consent,
            max_rows=args.max_rows,
            circuit=args.circuit,
            require_signature=args.require_signature,
        )
    except (ExportError, CircuitError) as exc:
        print(f"cannot serve {args.export}: {exc}", file=sys.stderr)
        return 2
    server = make_server(runtime, args.host, args.port, limits=limits)
    host, port = server.server_address
    print(f"serving {args.export} on http://{host}:{port}/invocations", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
