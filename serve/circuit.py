"""The serving side of the circuit breaker: a small JSON file names the declared segments whose
clients get the safe fallback instead of the policy, so an engineer (or a monitor) can trip a
segment by hand without redeploying::

    {"tripped": ["saver_debt"], "reason": "wrong fund in the offer, ticket 123"}
    {"tripped": {"saver_debt": "2026-11-23"}, "reason": "..."}

Segments: the goals a client declared (``retirement``, ``growth_investor``, ``active_trader``,
``saver_debt``; seen at consent tier >= 1), ``undeclared``, and ``all`` (every client). The second
form dates each switch: it applies from that date (a switch dated after the server's today, the
UTC date, waits for its date), and on the day after it the segment's clients also get the
fallback's first message, whatever the weekday, as in evaluation. The runtime looks at the file on
every request (a change applies to the next request); an unchanged file costs one ``stat``, its
parse is cached by the file's identity. A file that cannot be read or says something unknown is
refused by name (:class:`CircuitError`): a decision is never made on a circuit state the runtime
could not read. So is anything but a regular file (a FIFO or a device is never opened for a
read that could block) and a file over :data:`MAX_BYTES` (1 MiB). Write the file with
:func:`write` (as ``python -m evaluation.monitor --circuit`` does): the one writer and the one
reader of the format are both here.

The fallback is the one evaluation uses by default (``evaluation.breaker.SafeFallback``), written
again here over the manifest's names so the runtime needs only numpy: an education message in a
reassuring tone on Monday and Thursday mornings by e-mail (else push, else SMS), no product
offers, within the guards.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np

from serve import contract
from serve.files import kind_of, write_atomic

UNDECLARED = "undeclared"
"""the segment of clients who declared no goal (or whose consent tier hides it)"""
SEGMENTS: tuple[str, ...] = (*contract.SEGMENTS, UNDECLARED)
"""the segments a circuit file trips, in this order everywhere (the crisis monitor's series
too, ``evaluation.monitor.SEGMENT_NAMES``): the declared goals, then ``undeclared``"""
EVERYONE = "all"
"""the name that trips every client at once"""
FALLBACK = {
    "tone": "reassuring",
    "content": "education",
    "slot": "morning",
    "weekdays": ("mon", "thu"),
}
CHANNEL_ORDER = ("email", "push", "sms")
MAX_BYTES = 1 << 20
"""largest circuit file read, in bytes (1 MiB: a list of six segments and a reason fit in a few
hundred); a larger one is refused unread"""
FRESH_SECONDS = 2
"""a file modified less than this many seconds before it was read is read again on the next
request (the coarsest common filesystem timestamp is 2 s)"""
_CACHE_PATHS = 16
_cache: dict[str, tuple[tuple[int, int, int, int, int], Mapping[str, dt.date | None]]] = {}
_lock = threading.Lock()


class CircuitError(ValueError):
    """The circuit file cannot be read or names something unknown."""


def today_utc() -> dt.date:
    """The server's date: today in UTC (what :class:`serve.runtime.PolicyRuntime` uses)."""
    return dt.datetime.now(dt.UTC).date()


def read(path: str | Path, today: dt.date | None = None) -> dict[str, dt.date | None]:
    """The segments the circuit file at ``path`` trips on ``today``, each with the date it
    switched (None when the file does not say). A switch dated after ``today`` is left out
    until its date comes. ``today`` defaults to :func:`today_utc`, the server's date.

    Called on every request: an unchanged file is parsed once (see :func:`load`)."""
    day = today_utc() if today is None else today
    return {s: d for s, d in load(path).items() if d is None or d <= day}


def load(path: str | Path) -> Mapping[str, dt.date | None]:
    """Every switch the circuit file at ``path`` names, dated or not, future ones included
    (read-only). The parse is cached by the file's identity (device, inode, size, modification
    and change times): a request that finds the file unchanged costs one ``stat``. A file
    modified less than :data:`FRESH_SECONDS` before it was read is read again, since a rewrite
    in the same timestamp tick could keep all of these.

    Raises:
        CircuitError: the file is missing, not a regular file (a FIFO or device is refused by
            name, never opened for a blocking read), larger than :data:`MAX_BYTES`, not JSON,
            or names an unknown segment or a malformed date.
    """
    path = Path(path)
    key = _identity(_stat(path))
    with _lock:
        hit = _cache.get(str(path))
    if hit is not None and hit[0] == key:
        return hit[1]
    started_ns = time.time_ns()
    data, key = _read_bytes(path)
    state = MappingProxyType(_parse(path, data))
    if started_ns - key[3] >= FRESH_SECONDS * 1_000_000_000:
        with _lock:
            _cache.pop(str(path), None)
            _cache[str(path)] = (key, state)
            while len(_cache) > _CACHE_PATHS:
                _cache.pop(next(iter(_cache)))
    return state


def _stat(path: Path, fd: int | None = None) -> os.stat_result:
    """A stat of ``path`` (of the open ``fd`` when given), refusing a missing file, anything
    but a regular file, and a file over :data:`MAX_BYTES`, by name."""
    try:
        st = os.stat(path) if fd is None else os.fstat(fd)
    except FileNotFoundError as exc:
        raise CircuitError(f"circuit file {path} is missing") from exc
    except OSError as exc:
        raise CircuitError(f"circuit file {path} cannot be read: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise CircuitError(
            f"circuit file {path} is {kind_of(st.st_mode)}, not a regular file: point the "
            "runtime at a JSON file"
        )
    if st.st_size > MAX_BYTES:
        raise CircuitError(
            f"circuit file {path} is {st.st_size:,} bytes; a circuit file is at most "
            f"{MAX_BYTES:,} bytes (1 MiB)"
        )
    return st


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """(device, inode, size in bytes, mtime ns, ctime ns): what changes when the file does."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_bytes(path: Path) -> tuple[bytes, tuple[int, int, int, int, int]]:
    """The file's bytes and the identity of what was read. Opened non-blocking and checked
    again once open, so a FIFO swapped in after the first check cannot hang the request."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise CircuitError(f"circuit file {path} is missing") from exc
    except OSError as exc:
        raise CircuitError(f"circuit file {path} cannot be read: {exc.strerror}") from exc
    try:
        key = _identity(_stat(path, fd))
        chunks, size = [], 0
        while size <= MAX_BYTES:
            chunk = os.read(fd, MAX_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise CircuitError(f"circuit file {path} cannot be read: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if size > MAX_BYTES:  # it grew after the check
        raise CircuitError(f"circuit file {path} is over {MAX_BYTES:,} bytes (1 MiB)")
    return b"".join(chunks), key


def _parse(path: Path, data: bytes) -> dict[str, dt.date | None]:
    """The switches a circuit file's bytes name."""
    try:
        state = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CircuitError(f"circuit file {path} is not readable JSON: {exc}") from exc
    tripped = state.get("tripped") if isinstance(state, dict) else None
    if not isinstance(tripped, (list, dict)):
        raise CircuitError(
            f'circuit file {path} must be an object with a "tripped" list of segments or an '
            'object of segment: "YYYY-MM-DD" (the day it switched)'
        )
    unknown = [s for s in tripped if s not in (*SEGMENTS, EVERYONE)]
    if unknown:
        raise CircuitError(
            f"circuit file {path} names unknown segment(s) {unknown}; use {[*SEGMENTS, EVERYONE]}"
        )
    if isinstance(tripped, list):
        return dict.fromkeys(tripped)
    out = {}
    for segment, day in tripped.items():
        try:
            out[segment] = dt.date.fromisoformat(day)
        except (TypeError, ValueError):
            raise CircuitError(
                f"circuit file {path}: the switch date of {segment!r} must be YYYY-MM-DD, "
                f"got {day!r}"
            ) from None
    return out


def write(
    path: str | Path, tripped: Sequence[str] | Mapping[str, dt.date], reason: str = ""
) -> Path:
    """Write the circuit file at ``path``: the segments ``tripped`` (a list, or each with the
    date it switched) and why, as :func:`load` reads it. Written as
    :func:`serve.files.write_atomic` does: atomically, keeping the mode of the file it replaces
    (a new one is 0644), replacing a symlink's target, refusing a FIFO, device or directory
    (:class:`serve.files.NotARegularFile`). An unknown segment is a :class:`CircuitError`."""
    unknown = [s for s in tripped if s not in (*SEGMENTS, EVERYONE)]
    if unknown:
        raise CircuitError(f"unknown segment(s) {unknown}; use {[*SEGMENTS, EVERYONE]}")
    if isinstance(tripped, Mapping):
        named: list[str] | dict[str, str] = {s: d.isoformat() for s, d in tripped.items()}
    else:
        named = list(tripped)
    write_atomic(path, json.dumps({"tripped": named, "reason": reason}, indent=1).encode())
    return Path(path)


def covered(state: dict[str, dt.date | None], segment: np.ndarray) -> np.ndarray:
    """(N,) rows whose segment (names from :func:`segment_of`) the state trips."""
    if EVERYONE in state:
        return np.ones(len(segment), dtype=bool)
    return np.isin(segment, list(state))


def first_message(
    state: dict[str, dt.date | None], segment: np.ndarray, today: dt.date
) -> np.ndarray:
    """(N,) rows whose segment (or ``all``) switched the day before ``today``."""
    yesterday = today - dt.timedelta(days=1)
    fresh = {s: d for s, d in state.items() if d == yesterday}
    return covered(fresh, segment) if fresh else np.zeros(len(segment), dtype=bool)


def segment_of(feature_names: list[str], x: np.ndarray) -> np.ndarray:
    """(N,) each row's segment name from the goal one-hot (``undeclared`` when hidden)."""
    goals = np.stack([x[:, feature_names.index(f"goal_{s}")] for s in SEGMENTS[:-1]], axis=1)
    index = np.where(goals.max(axis=1) > 0, goals.argmax(axis=1), len(SEGMENTS) - 1)
    return np.asarray(SEGMENTS, dtype=object)[index]


def fallback(
    feature_names: list[str],
    labels: dict[str, list[str]],
    x: np.ndarray,
    joint: np.ndarray,
    first: np.ndarray | None = None,
) -> np.ndarray:
    """(N, 4) the fallback's actions for rows ``x`` within their (N, 361) allowed ``joint`` mask;
    ``first`` rows also get a message whatever the weekday (the day after their switch)."""
    slots = [s.split()[0] for s in labels["slot"][1:]]
    slot = 1 + slots.index(FALLBACK["slot"])
    tone = labels["tone"].index(FALLBACK["tone"])
    content = labels["content"].index(FALLBACK["content"])
    n_tone, n_channel, n_content = (
        len(labels["tone"]),
        len(labels["channel"]),
        len(labels["content"]),
    )
    days = [feature_names.index(f"weekday_{d}") for d in FALLBACK["weekdays"]]
    send = x[:, days].max(axis=1) > 0.5
    if first is not None:
        send |= first
    actions = np.zeros((len(x), 4), dtype=np.int64)
    chosen = np.zeros(len(x), dtype=bool)
    for name in CHANNEL_ORDER:
        channel = labels["channel"].index(name)
        flat = 1 + (((slot - 1) * n_tone + tone) * n_channel + channel) * n_content + content
        take = send & ~chosen & joint[:, flat]
        actions[take] = (slot, tone, channel, content)
        chosen |= take
    return actions
