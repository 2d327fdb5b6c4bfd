"""The serving side of the circuit breaker: a small JSON file names the declared segments whose
clients get the safe fallback instead of the policy, so an engineer (or a monitor) can trip a
segment by hand without redeploying::

    {"tripped": ["saver_debt"], "reason": "wrong fund in the offer, ticket 123"}

Segments: the goals a client declared (``retirement``, ``growth_investor``, ``active_trader``,
``saver_debt``; seen at consent tier >= 1) and ``undeclared``. The runtime reads the file on every
request (a change applies to the next request). A file that cannot be read or says something
unknown is refused by name (:class:`CircuitError`): a decision is never made on a circuit state
the runtime could not read.

The fallback is the one evaluation uses (``agents.breaker.SafeFallback``), written again here
over the manifest's names so the runtime needs only numpy: an education message in a reassuring
tone on Thursday mornings by e-mail (else push, else SMS), no product offers, within the guards.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SEGMENTS = ("retirement", "growth_investor", "active_trader", "saver_debt", "undeclared")
FALLBACK = {"tone": "reassuring", "content": "education", "slot": "morning", "weekday": "thu"}
CHANNEL_ORDER = ("email", "push", "sms")


class CircuitError(ValueError):
    """The circuit file cannot be read or names something unknown."""


def read(path: str | Path) -> frozenset[str]:
    """The tripped segments named in the circuit file at ``path``."""
    path = Path(path)
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CircuitError(f"circuit file {path} is missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CircuitError(f"circuit file {path} is not readable JSON: {exc}") from exc
    if not isinstance(state, dict) or not isinstance(state.get("tripped"), list):
        raise CircuitError(f'circuit file {path} must be an object with a "tripped" list')
    unknown = [s for s in state["tripped"] if s not in SEGMENTS]
    if unknown:
        raise CircuitError(
            f"circuit file {path} names unknown segment(s) {unknown}; use {list(SEGMENTS)}"
        )
    return frozenset(state["tripped"])


def segment_of(feature_names: list[str], x: np.ndarray) -> np.ndarray:
    """(N,) each row's segment name from the goal one-hot (``undeclared`` when hidden)."""
    goals = np.stack([x[:, feature_names.index(f"goal_{s}")] for s in SEGMENTS[:-1]], axis=1)
    index = np.where(goals.max(axis=1) > 0, goals.argmax(axis=1), len(SEGMENTS) - 1)
    return np.asarray(SEGMENTS, dtype=object)[index]


def fallback(
    feature_names: list[str], labels: dict[str, list[str]], x: np.ndarray, joint: np.ndarray
) -> np.ndarray:
    """(N, 4) the fallback's actions for rows ``x`` within their (N, 361) allowed ``joint`` mask."""
    slots = [s.split()[0] for s in labels["slot"][1:]]
    slot = 1 + slots.index(FALLBACK["slot"])
    tone = labels["tone"].index(FALLBACK["tone"])
    content = labels["content"].index(FALLBACK["content"])
    n_tone, n_channel, n_content = (
        len(labels["tone"]),
        len(labels["channel"]),
        len(labels["content"]),
    )
    send = x[:, feature_names.index(f"weekday_{FALLBACK['weekday']}")] > 0.5
    actions = np.zeros((len(x), 4), dtype=np.int64)
    chosen = np.zeros(len(x), dtype=bool)
    for name in CHANNEL_ORDER:
        channel = labels["channel"].index(name)
        flat = 1 + (((slot - 1) * n_tone + tone) * n_channel + channel) * n_content + content
        take = send & ~chosen & joint[:, flat]
        actions[take] = (slot, tone, channel, content)
        chosen |= take
    return actions
