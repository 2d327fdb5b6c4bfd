"""A small HTTP server for an export, with the limits a serving endpoint needs (numpy,
onnxruntime and the standard library only).

    python -m serve.http exports/<run_id> --port 5001                 # loopback, defaults below
    python -m serve.http exports/<run_id> --max-rows 10000 --max-body-mb 8 --consent refuse

``POST /invocations`` takes the same JSON as MLflow's scoring server: ``{"dataframe_split":
{"columns": [...], "data": [[...], ...]}}`` or ``{"dataframe_records": [{...}, ...]}``, with an
optional ``"params": {"explain": true}`` (left out: reasons for requests of up to 100 rows); it answers ``{"predictions": [{slot, tone, channel,
content, probability, reasons, needs_review}, ...]}``. ``GET /ping`` answers 200 once loaded.

Limits: a body over ``--max-body-mb`` is refused with 413 before it is read; a request with
more than ``--max-rows`` rows with 413; anything malformed with 400 and a message naming the
feature and row. The runtime's own checks (consent, exact guard inputs, ranges) apply to every row.
"""

from __future__ import annotations

import argparse
import json
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from serve.circuit import CircuitError
from serve.runtime import (
    CONSENT_MODES,
    MAX_ROWS,
    PolicyRuntime,
    RequestError,
    TooLarge,
    wants_reasons,
)

MAX_BODY_BYTES = 64 * 2**20
"""default largest request body (64 MiB: about 100,000 rows of 41 features as JSON)"""


def parse_request(body: bytes, max_rows: int) -> tuple[Any, bool | None]:
    """(a mapping of feature name -> column, explain or None) from a JSON body;
    :class:`RequestError` naming what is wrong."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise RequestError(
            "the body must be a JSON object with 'dataframe_split' or 'dataframe_records'"
        )
    params = payload.get("params") or {}
    if not isinstance(params, dict) or set(params) - {"explain"}:
        raise RequestError(f"params may hold only 'explain', got {params!r}")
    explain = params.get("explain")
    if explain is not None and not isinstance(explain, bool):
        raise RequestError(f"params.explain must be true or false, got {explain!r}")
    if "dataframe_split" in payload:
        split = payload["dataframe_split"]
        if not isinstance(split, dict) or not isinstance(split.get("columns"), list):
            raise RequestError(
                "dataframe_split needs 'columns' (a list) and 'data' (a list of rows)"
            )
        rows = split.get("data")
        if not isinstance(rows, list):
            raise RequestError("dataframe_split.data must be a list of rows")
        columns = split["columns"]
        if len(rows) > max_rows:
            raise TooLarge(f"the request has {len(rows):,} rows; at most {max_rows:,} are allowed")
        for i, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != len(columns):
                raise RequestError(f"row {i} must be a list of {len(columns)} values")
        table = _columns(columns, rows)
    elif "dataframe_records" in payload:
        records = payload["dataframe_records"]
        if not isinstance(records, list):
            raise RequestError("dataframe_records must be a list of objects")
        if len(records) > max_rows:
            raise TooLarge(
                f"the request has {len(records):,} rows; at most {max_rows:,} are allowed"
            )
        if not all(isinstance(r, dict) for r in records):
            raise RequestError("every record in dataframe_records must be an object")
        names = list(dict.fromkeys(k for r in records for k in r))
        for i, r in enumerate(records):
            missing = [n for n in names if n not in r]
            if missing:
                raise RequestError(f"record {i} lacks feature(s): {', '.join(missing)}")
        table = _columns(names, [[r[n] for n in names] for r in records])
    else:
        raise RequestError("the body needs 'dataframe_split' or 'dataframe_records'")
    return table, explain


def _columns(names: list[Any], rows: list[list[Any]]) -> dict[str, np.ndarray]:
    table = {}
    for j, name in enumerate(names):
        values = [row[j] for row in rows]
        bad = next((i for i, v in enumerate(values) if not _is_number(v)), None)
        if bad is not None:
            raise RequestError(f"feature {name} = {values[bad]!r} in row {bad} must be a number")
        table[str(name)] = np.array(values, dtype=np.float64)
    return table


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def make_server(
    runtime: PolicyRuntime, host: str, port: int, max_body_bytes: int = MAX_BODY_BYTES
) -> ThreadingHTTPServer:
    """A server (not yet started: call ``serve_forever``) answering with ``runtime``."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet: one line per request is noise
            pass

        def _answer(self, status: int, payload: Any) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: HTTPStatus, message: str) -> None:
            self.close_connection = True
            self._answer(status, {"error_code": status.phrase, "message": message})

        def do_GET(self) -> None:
            if self.path == "/ping":
                self._answer(HTTPStatus.OK, {"status": "ok"})
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no route {self.path}; use POST /invocations")

        def do_POST(self) -> None:
            if self.path != "/invocations":
                self._error(HTTPStatus.NOT_FOUND, f"no route {self.path}; use POST /invocations")
                return
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self._error(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
                return
            if int(length) > max_body_bytes:
                self._error(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"the body is {int(length):,} bytes; at most {max_body_bytes:,} are allowed",
                )
                return
            body = self.rfile.read(int(length))
            try:
                table, explain = parse_request(body, runtime.max_rows)
                rows = len(next(iter(table.values()))) if table else 0
                records = runtime.decide(table, explain=wants_reasons(explain, rows)).records()
            except TooLarge as error:
                self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(error))
                return
            except RequestError as error:
                self._error(HTTPStatus.BAD_REQUEST, str(error))
                return
            except CircuitError as error:  # no decision on a circuit state it cannot read
                self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(error))
                return
            for r in records:
                r["reasons"] = "; ".join(r["reasons"])
            self._answer(HTTPStatus.OK, {"predictions": records})

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("export", type=Path, help="folder holding policy.onnx and manifest.json")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--max-rows", type=int, default=MAX_ROWS)
    parser.add_argument("--max-body-mb", type=float, default=MAX_BODY_BYTES / 2**20)
    parser.add_argument("--consent", choices=CONSENT_MODES, default="zero")
    parser.add_argument(
        "--circuit",
        type=Path,
        default=None,
        help='a JSON file {"tripped": [segments]} read on every request (serve/circuit.py)',
    )
    args = parser.parse_args(argv)
    if args.max_rows < 1 or args.max_body_mb <= 0:
        parser.error("--max-rows and --max-body-mb must be positive")
    runtime = PolicyRuntime.load(
        args.export, consent=args.consent, max_rows=args.max_rows, circuit=args.circuit
    )
    server = make_server(runtime, args.host, args.port, int(args.max_body_mb * 2**20))
    print(f"serving {args.export} on http://{args.host}:{args.port}/invocations", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
