"""The HTTP server for an export: MLflow's scoring JSON over the guarded runtime, on uvicorn and
Starlette, with the limits a serving endpoint needs against slow, big and malformed requests.

    python serve.py export_dir=exports/<run_id> port=5001                # loopback, defaults below
    python serve.py export_dir=exports/<run_id> max_rows=10000 max_body_mb=8 consent=refuse

``POST /invocations`` takes the same JSON as MLflow's scoring server: ``{"dataframe_split":
{"columns": [...], "data": [[...], ...]}}`` or ``{"dataframe_records": [{...}, ...]}``, with an
optional ``"params": {"explain": true}`` (left out: reasons for requests of up to 100 rows); it
answers ``{"predictions": [{decision_id, slot, tone, channel, content, probability, propensity,
reasons, needs_review, policy_slot, policy_tone, policy_channel, policy_content,
policy_probability, agree, policy_version, exploration, mode}, ...]}`` (``propensity``: the exact
probability of the returned action, exploration applied; ``probability``: the policy's, of its own
choice). ``GET /ping`` answers 200 once loaded.

Learning from decisions (``docs/serving.md``): ``exploration.epsilon=0.1`` (or
``exploration.temperature=0.5``, and ``exploration.seed``) explores around the best allowed
action; ``shadow=true`` returns the firm's own action, sent per row as the columns
``firm_slot``, ``firm_tone``, ``firm_channel``, ``firm_content``; ``decision_log.dir=<folder>``
appends every decision to a decision log there (``serve/decisions.py``; the rows must then carry
``client_id`` and ``day`` columns). Each file of the log is written whole and renamed into place
when the buffer holds ``decision_log.rows_per_file`` decisions or its oldest is
``decision_log.seconds_per_file`` old, and at shutdown; the server prints one line per file
(``decision log: wrote <rows> decisions to <file>``). A crash loses the unflushed buffer only.

The export must be signed (made with $CADENCE_EXPORT_KEY set, and served with the same key):
an unsigned export is refused at start, since anyone who can write its folder can relax its
caps, quiet hours and consent rules and recompute its hashes. ``require_signature=false`` serves
one anyway (``true``, the default, says it explicitly).

Limits (each refusal is a JSON ``{"error_code", "message"}`` naming what is wrong, but for the
plain-text 400 of uvicorn's HTTP parser, for a malformed request line or header, and its 503
past ``max_connections``):

* time: a connection has ``read_timeout`` seconds (default 10) from opening, or from its last
  answer, to send a request's headers, and then as long again for the whole body; a connection
  that has not is closed (408 when its headers had arrived). An idle keep-alive connection is
  closed after at most 5 s. A stalled or trickling client holds a socket, never a thread. A
  connection closed before its body was read still reads and discards for up to 2 s, so that
  a client still sending reads the refusal rather than a reset.
* size: a body over ``max_body_mb`` (default 64) is refused with 413, by its Content-Length
  before it is read or, when chunked, as soon as it passes the limit; the body is scanned as it
  arrives and a request with more than ``max_rows`` rows (default 100,000) is refused with 413
  at row ``max_rows + 1``, without reading or parsing the rest. ``max_buffered_mb`` (default
  256) bounds the request bytes held at once over all connections (503 past it).
* work: requests are decided by ``workers`` threads (default 4) with at most ``queue``
  (default 16) more waiting; past that the answer is 503 with ``Retry-After: 1``. At most
  ``max_connections`` (default 1,024) connections are served at once.
* reasons: ``"explain": true`` is served for at most ``max_explain_rows`` rows (default 1,000;
  more is 413); left out, requests of up to 100 rows get reasons (``wants_reasons``).
* malformed (400): a body that is not UTF-8 JSON, JSON nested deeper than 16 levels (a request
  needs 4), a number outside a 64-bit float's range (``1e400``, a 400-digit integer), a
  Content-Length that is not ASCII digits, a column named twice in ``dataframe_split`` or a key
  twice in one record or object, an unknown top-level key, and every check of the runtime
  (consent, exact guard inputs, ranges) on every row, named by feature and row.

This module holds the application, the server and :func:`serve` (what ``serve.py`` runs, from a
:class:`ServeConfig`); the limits and the shared budget
are ``serve/admission.py``, the body's scan and parse ``serve/body.py``, the listening socket and
the lingering close ``serve/sockets.py``.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from serve.admission import MAX_BODY_BYTES as MAX_BODY_BYTES
from serve.admission import MAX_BUFFERED_BYTES as MAX_BUFFERED_BYTES
from serve.admission import MAX_CONNECTIONS as MAX_CONNECTIONS
from serve.admission import MAX_EXPLAIN_ROWS as MAX_EXPLAIN_ROWS
from serve.admission import QUEUE as QUEUE
from serve.admission import READ_TIMEOUT_S as READ_TIMEOUT_S
from serve.admission import WORKERS as WORKERS
from serve.admission import Gate as Gate
from serve.admission import Limits as Limits
from serve.admission import Refused as Refused
from serve.admission import read_body as read_body
from serve.body import MAX_DEPTH as MAX_DEPTH
from serve.body import SCAN_BYTES as SCAN_BYTES
from serve.body import BodyScan as BodyScan
from serve.body import OutOfRange as OutOfRange
from serve.body import RepeatedKeys as RepeatedKeys
from serve.body import decode as decode
from serve.body import parse_request as parse_request
from serve.body import table_of as table_of
from serve.circuit import CircuitError
from serve.runtime import (
    CONSENT_MODES,
    MAX_ROWS,
    Exploration,
    PolicyRuntime,
    RequestError,
    TooLarge,
    wants_reasons,
)
from serve.sockets import LingeringTransport as LingeringTransport
from serve.sockets import listening_socket as listening_socket

KEEP_ALIVE_S = 5
"""most seconds an idle keep-alive connection is held between requests"""
LINGER_S = 2.0
"""seconds a closing connection still reads (and discards) what its client sends, so that a
client still sending a refused body reads the answer rather than a reset"""


def decide_body(
    runtime: PolicyRuntime, body: bytes | bytearray, limits: Limits, log: Any = None
) -> bytes:
    """The JSON answer to a body already scanned by :class:`BodyScan` (runs in a worker); the
    decisions are appended to ``log`` (a :class:`serve.decisions.DecisionLog`) when one is given,
    before the answer is returned."""
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
    decisions = runtime.decide(table, explain=reasons)
    if log is not None:
        from serve.decisions import DecisionLogError, frame_of

        try:
            log.append(frame_of(decisions))
        except DecisionLogError as error:
            raise RequestError(str(error)) from error
    records = decisions.records()
    for r in records:
        r["reasons"] = "; ".join(r["reasons"])
    return json.dumps({"predictions": records}).encode()


# ----- the application ------------------------------------------------------------------------
def error(status: HTTPStatus, message: str, close: bool = False, **headers: str) -> JSONResponse:
    """The JSON error answer (``close``: the connection is closed after it, as when the body
    was not read to its end)."""
    if close:
        headers["connection"] = "close"
    return JSONResponse(
        {"error_code": status.phrase, "message": message}, status_code=status, headers=headers
    )


def make_app(runtime: PolicyRuntime, limits: Limits | None = None, log: Any = None) -> Starlette:
    """The ASGI application answering with ``runtime`` within ``limits``, appending every
    decision to ``log`` (a :class:`serve.decisions.DecisionLog`, or None); its ``state.gate``
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
                    gate.executor, decide_body, runtime, body, limits, log
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


def make_server(
    runtime: PolicyRuntime,
    host: str,
    port: int,
    max_body_bytes: int = MAX_BODY_BYTES,
    limits: Limits | None = None,
    log: Any = None,
) -> Server:
    """A server (not yet started: call ``serve_forever``) answering with ``runtime``;
    ``limits`` (default :class:`Limits` with ``max_body_bytes``) says what it accepts; ``log``
    (a :class:`serve.decisions.DecisionLog`) receives every decision."""
    if limits is None:
        limits = Limits(
            max_body_bytes=max_body_bytes,
            max_buffered_bytes=max(MAX_BUFFERED_BYTES, max_body_bytes),
        )
    return Server(make_app(runtime, limits, log), host, port, limits)


@dataclass
class ExplorationConfig:
    """``exploration.*`` of ``python serve.py`` (:class:`serve.choice.Exploration`)."""

    epsilon: float = 0.0
    """probability of an action drawn uniformly from the allowed ones, in [0, 1]"""
    temperature: float | None = None
    """softmax temperature over the allowed actions (instead of epsilon); null: none"""
    seed: int | None = None
    """seed of the draws (reproducible); null: from the operating system's entropy"""
    policy_share: float = 0.0
    """shadow mode: share of decisions on which the policy's own choice replaces the firm's
    action (before epsilon's draw), in [0, 1]"""

    def setting(self) -> Exploration:
        """The :class:`~serve.choice.Exploration`; a :class:`ValueError` names a bad value."""
        return Exploration(
            epsilon=self.epsilon,
            temperature=self.temperature,
            seed=self.seed,
            policy_share=self.policy_share,
        )


@dataclass
class DecisionLogConfig:
    """``decision_log.*`` of ``python serve.py`` (:class:`serve.decisions.DecisionLog`)."""

    dir: str | None = None
    """folder of the decision log (created if missing); null: decisions are not logged"""
    rows_per_file: int = 10_000
    """decisions buffered at most; a full buffer is written as one file"""
    seconds_per_file: float = 5.0
    """the buffer is written when its oldest decision is this old (seconds)"""


@dataclass
class ServeConfig:
    """What ``python serve.py`` reads (``key=value`` on its command line; ``--help`` lists them)."""

    export_dir: str
    """folder holding policy.onnx and manifest.json (``export.py`` writes exports/<run id>)"""
    host: str = "127.0.0.1"
    """address to listen on (loopback by default)"""
    port: int = 5001
    """TCP port; 0 picks a free one (printed)"""
    max_rows: int = MAX_ROWS
    """most rows in one request (413 past it)"""
    max_body_mb: float = MAX_BODY_BYTES / 2**20
    """largest request body, MiB (413 past it)"""
    consent: str = "zero"
    """features a client's consent tier hides but a request sends: ``zero`` them or ``refuse``
    the request"""
    circuit: str | None = None
    """a JSON file ``{"tripped": [segments]}`` read on every request (``serve/circuit.py``)"""
    read_timeout: float = READ_TIMEOUT_S
    """seconds a connection has to send a request's headers, and as long again for its body"""
    workers: int = WORKERS
    """threads deciding requests"""
    queue: int = QUEUE
    """requests that may wait for a worker (503 past it)"""
    max_explain_rows: int = MAX_EXPLAIN_ROWS
    """most rows a request with ``"explain": true`` may have"""
    max_connections: int = MAX_CONNECTIONS
    """connections served at once"""
    max_buffered_mb: float = MAX_BUFFERED_BYTES / 2**20
    """request bytes held at once over all connections, MiB (503 past it)"""
    require_signature: bool = True
    """refuse an export without an HMAC signature; ``false`` serves one that is hashed but not
    signed"""
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    """how the runtime explores (``exploration.epsilon``, ``exploration.temperature``,
    ``exploration.seed``)"""
    shadow: bool = False
    """apprentice mode: every row carries the firm's own action (``firm_slot``, ``firm_tone``,
    ``firm_channel``, ``firm_content``), which is returned; the policy's choice is logged beside"""
    not_allowed: str = "fallback"
    """shadow mode, a firm's action the guards refuse: ``fallback`` (the safe fallback decides)
    or ``refuse`` (400)"""
    policy_version: str | None = None
    """what the decision log names as the policy (e.g. ``models:/cadence-policy/3``); null: the
    export's digest"""
    decision_log: DecisionLogConfig = field(default_factory=DecisionLogConfig)
    """where decisions are logged (``decision_log.dir``) and how the files rotate"""

    def limits(self) -> Limits:
        """The :class:`Limits` these settings say; a :class:`ValueError` names a bad one."""
        if self.max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {self.max_rows}")
        if not self.max_body_mb > 0:
            raise ValueError(f"max_body_mb must be positive (MiB), got {self.max_body_mb}")
        if self.consent not in CONSENT_MODES:
            raise ValueError(f"consent must be one of {list(CONSENT_MODES)}, got {self.consent!r}")
        return Limits(
            max_body_bytes=int(self.max_body_mb * 2**20),
            read_timeout=self.read_timeout,
            workers=self.workers,
            queue=self.queue,
            max_explain_rows=self.max_explain_rows,
            max_connections=self.max_connections,
            max_buffered_bytes=int(self.max_buffered_mb * 2**20),
        )


def serve(cfg: ServeConfig) -> None:
    """Load ``cfg.export_dir`` and serve it until interrupted (Ctrl-C or SIGTERM); prints the
    address it listens on first (``serving <export> on http://<host>:<port>/invocations``), and
    one line per decision-log file written. The decision log's buffer is written on the way out.

    Raises :class:`ValueError` for a setting it cannot use (naming it), and
    :class:`~serve.integrity.ExportError` or :class:`~serve.circuit.CircuitError` (both
    ``ValueError``) for an export or a circuit file it refuses, before listening."""
    limits = cfg.limits()
    runtime = PolicyRuntime.load(
        Path(cfg.export_dir),
        consent=cfg.consent,
        max_rows=cfg.max_rows,
        circuit=None if cfg.circuit is None else Path(cfg.circuit),
        require_signature=cfg.require_signature,
        exploration=cfg.exploration.setting(),
        shadow=cfg.shadow,
        not_allowed=cfg.not_allowed,
        policy_version=cfg.policy_version,
    )
    log = None if cfg.decision_log.dir is None else _decision_log(cfg.decision_log)
    server = make_server(runtime, cfg.host, cfg.port, limits=limits, log=log)
    host, port = server.server_address
    print(f"serving {cfg.export_dir} on http://{host}:{port}/invocations", flush=True)
    stop = threading.Event()
    if log is not None:
        threading.Thread(target=_flush_when_due, args=(log, stop), daemon=True).start()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop.set()
        server.server_close()
        if log is not None:
            log.close()


def _decision_log(cfg: DecisionLogConfig) -> Any:
    """The :class:`serve.decisions.DecisionLog` the settings say, printing each file it writes."""
    from serve.decisions import DecisionLog

    def report(path: Path, rows: int) -> None:
        print(f"decision log: wrote {rows} decisions to {path}", flush=True)

    return DecisionLog(
        cfg.dir,
        rows_per_file=cfg.rows_per_file,
        seconds_per_file=cfg.seconds_per_file,
        on_flush=report,
    )


def _flush_when_due(log: Any, stop: threading.Event) -> None:
    """Write the log's buffer once it is old, even when no request comes (every 0.2 s or a
    tenth of the rotation time)."""
    period = min(0.2, log.seconds_per_file / 10)
    while not stop.wait(period):
        log.flush_if_due()


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM ends the server as Ctrl-C does (so the decision log's buffer is written)."""
    raise KeyboardInterrupt
