"""The serving side of the circuit breaker: a small JSON file names the declared segments whose
clients get the safe fallback instead of the policy, so an engineer (or a monitor) can trip a
segment by hand without redeploying::

    {"tripped": ["saver_debt"], "reason": "wrong fund in the offer, ticket 123"}
    {"tripped": {"saver_debt": "2026-11-23"}, "reason": "..."}

Segments: the goals a client declared (``retirement``, ``growth_investor``, ``active_trader``,
``saver_debt``; seen at consent tier >= 1), ``undeclared``, and ``all`` (every client). The second
form dates each switch: on the day after it the segment's clients also get the fallback's first
message, whatever the weekday, as in evaluation. The runtime reads the file on every request (a
change applies to the next request). A file that cannot be read or says something unknown is
refused by name (:class:`CircuitError`): a decision is never made on a circuit state the runtime
could not read.

The fallback is the one evaluation uses by default (``agents.breaker.SafeFallback``), written
again here over the manifest's names so the runtime needs only numpy: an education message in a
reassuring tone on Monday and Thursday mornings by e-mail (else push, else SMS), no product
offers, within the guards.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np

SEGMENTS = ("retirement", "growth_investor", "active_trader", "saver_debt", "undeclared")
EVERYONE = "all"
FALLBACK = {
    "tone": "reassuring",
    "content": "education",
    "slot": "morning",
    "weekdays": ("mon", "thu"),
}
CHANNEL_ORDER = ("email", "push", "sms")


class CircuitError(ValueError):
    """The circuit file cannot be read or names something unknown."""


def read(path: str | Path) -> dict[str, dt.date | None]:
    """The tripped segments named in the circuit file at ``path``, each with the date it
    switched (None when the file does not say)."""
    path = Path(path)
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CircuitError(f"circuit file {path} is missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
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
