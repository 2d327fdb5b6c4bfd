"""The runtime's compiled loops (numba): each reads its arrays once, row by row, where numpy
would make one pass per operation. Compiled on first use for each input type and kept on disk
beside this module (``__pycache__``); they release the GIL, so the HTTP server's threads
decide at once.

* :func:`intake_pass`: a request's checks, consent, masks and review inputs
  (``serve/intake.py``).
* :func:`rows_at_fault`: the actions a graph chose, held to the manifest's rules
  (``serve/choice.py``), and every final action checked again before it is returned.

Each is held by a test to the numpy code it stands for.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

ACCEPTED, INVALID, HIDDEN_SET = 0, 1, 2
"""what :func:`intake_pass` says of a request: every check passes; a value fails one; a feature
the client's consent tier hides is set (what ``consent="refuse"`` refuses)"""


def _compiled(fn: Any) -> Any:
    """Compiled once per input type (float32, float64) and kept on disk beside this module;
    releases the GIL (the HTTP server's threads decide at once)."""
    return numba.njit(cache=True, nogil=True, boundscheck=False, fastmath={"reassoc"})(fn)


@_compiled
def check_values(values, low, high, exact, bad):  # pragma: no cover - compiled
    """OR into ``bad`` where a value is below its low end, above its high end, NaN, or not a
    whole number where it must be one; a branch-free loop the compiler vectorizes."""
    for j in range(len(values)):
        v = values[j]
        bad[j] |= (v < low[j]) | (v > high[j]) | (v != v) | ((v != np.floor(v)) & (exact[j] != 0))


@_compiled
def intake_pass(  # pragma: no cover - compiled
    x,
    low,
    high,
    exact,
    digits,
    groups_ok,
    tier_shift,
    visible,
    i_opted,
    i_sent,
    channel_cap,
    max_per_week,
    content_min_tier,
    i_goals,
    review_goals,
    i_stress,
    out,
    tier,
    channel_ok,
    content_ok,
    state,
    sensitive,
    stressed,
):
    """:meth:`serve.intake.Intake.read`'s pass; writes ``out`` and the masks' arrays, returns
    :data:`ACCEPTED`, :data:`INVALID` or :data:`HIDDEN_SET`. Where a value is not finite the
    row's other results are garbage, never read: the verdict is INVALID."""
    n, d = x.shape
    width = len(low)
    block = width // d
    bad = np.zeros(width, dtype=np.uint8)
    hidden = False
    top = len(groups_ok) - 1
    c = len(i_opted)
    whole = n - n % block
    folded = x[:whole].reshape(whole // block, width)
    for b in range((n + block - 1) // block):
        first = b * block
        last = min(n, first + block)
        if last - first == block:
            check_values(folded[b], low, high, exact, bad)
        else:
            for i in range(first, last):
                check_values(x[i], low, high, exact, bad)
        for i in range(first, last):
            row = x[i]
            s = 0.0
            for j in range(d):
                s += row[j] * digits[j]
            if not s >= 0.0:  # NaN too: the row is refused by its check
                s = 0.0
            code = min(int(min(s, float(top))), top)
            bad[0] |= groups_ok[code] == 0
            t = code >> tier_shift
            tier[i] = t
            seen = visible[t]
            o = out[i]
            for j in range(d):
                v = np.float32(row[j])
                o[j] = v * seen[j]
                hidden |= o[j] != v
            # the guard inputs are whole, checked numbers: compared as they are, no branches
            total = np.float32(0.0)
            for m in range(c):
                total += o[i_sent[m]]
            bits = np.int64(0)
            for m in range(c):
                ok = (o[i_opted[m]] <= 0.5) & (o[i_sent[m]] < channel_cap[m])
                bits |= np.int64(ok) << m
            bits *= np.int64(total < max_per_week)
            state[i] = (np.int64(t) << c) | bits
            known = np.float32(0.0)
            for q in range(len(i_goals)):
                known = max(known, o[i_goals[q]])
            pressing = np.float32(0.0)
            for q in range(len(review_goals)):
                pressing = max(pressing, o[review_goals[q]])
            sensitive[i] = (pressing > 0.5) | (known <= 0.5)
            stressed[i] = o[i_stress] > 0
    for m in range(c):
        for i in range(n):
            channel_ok[m, i] = (state[i] >> m) & 1
    for m in range(len(content_min_tier)):
        for i in range(n):
            content_ok[m, i] = tier[i] >= content_min_tier[m]
    for j in range(width):
        if bad[j]:
            return INVALID
    return HIDDEN_SET if hidden else ACCEPTED


@_compiled
def rows_at_fault(  # pragma: no cover - compiled
    actions, probability, doubtful, end, state, allows, slots, channels, contents, fault
):
    """Write ``fault[i]``: 1 where row i's (N, 4) int64 action has a component outside
    [0, ``end``) (the action is then set to no-send, all zeros), is not allowed by its
    :attr:`~serve.guards.Masks.state` (``allows``: :attr:`serve.guards.Guards._state_allows`,
    ``slots`` counting no-send), or its probability is not in [0, 1] (NaN included); 2 where
    ``doubtful`` says the graph left the row to numpy; else 0. ``probability`` and
    ``doubtful`` may be empty: no such checks. Returns the number of rows marked 1."""
    n = actions.shape[0]
    checked = len(probability) == n
    count = 0
    for i in range(n):
        a = actions[i]
        inside = True
        for m in range(4):
            inside &= (a[m] >= 0) & (a[m] < end[m])
        if not inside:
            for m in range(4):
                a[m] = 0
        code = ((state[i] * slots + a[0]) * channels + a[2]) * contents + a[3]
        at_fault = (not inside) | (not allows[code])
        if checked:
            p = probability[i]
            at_fault |= not ((p >= 0.0) & (p <= 1.0))
            if doubtful[i]:
                fault[i] = 2
                continue
        fault[i] = at_fault
        count += at_fault
    return count


@_compiled
def review_flags(actions, review_tones, loss_content, sensitive, stressed, out):  # pragma: no cover
    """Write ``out[i]``: whether row i's (N, 4) action is a send a person approves first: a
    send in a pressing tone (``review_tones``) to a client with a sensitive (or undeclared)
    goal, or on a loss topic (``loss_content``) while markets are stressed
    (:meth:`serve.guards.Guards.needs_review`)."""
    for i in range(actions.shape[0]):
        a = actions[i]
        topic = (loss_content[a[3]] & stressed[i]) | sensitive[i]
        out[i] = (a[0] > 0) & review_tones[a[1]] & topic


@_compiled
def uuid4_bits(rows):  # pragma: no cover - compiled
    """Set the version-4 and variant bits of each 16-byte row of random bytes, as
    :func:`uuid.uuid4` sets them (RFC 4122)."""
    for i in range(rows.shape[0]):
        rows[i, 6] = (rows[i, 6] & 0x0F) | 0x40
        rows[i, 8] = (rows[i, 8] & 0x3F) | 0x80
