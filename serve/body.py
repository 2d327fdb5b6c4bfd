"""A request body as it streams in and once it is whole: the scan that bounds its nesting and
counts its rows chunk by chunk, without parsing a value, and the parse of MLflow's scoring JSON
(``dataframe_split`` or ``dataframe_records``, optional ``params.explain``) into one column per
feature. Needs numpy only.

Malformed (:class:`RequestError`, 400 over HTTP): a body that is not UTF-8 JSON, JSON nested
deeper than :data:`MAX_DEPTH` levels (a request needs 4), a number outside a 64-bit float's range
(``1e400``, a 400-digit integer), a column named twice in ``dataframe_split`` or a key twice in
one record or object, an unknown top-level key. More rows than allowed is :class:`TooLarge`
(413), at row ``max_rows + 1`` of the scan, before the rest is read or parsed.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

import numpy as np

from serve.request import RequestError, TooLarge

MAX_DEPTH = 16
"""deepest JSON nesting accepted (a request needs 4: body, dataframe_split, data, row)"""
SCAN_BYTES = 2**18
"""bytes scanned per numpy pass (bounds the scan's temporary arrays to a few MiB)"""

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
