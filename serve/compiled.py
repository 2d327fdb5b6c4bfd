"""The runtime's compiled loops (numba): each reads its arrays once, row by row, where numpy
would make one pass per operation. Compiled when a runtime loads (:func:`warm_up`) for the
input types it calls them with, and kept on disk beside this module (``__pycache__``); they
release the GIL, so the HTTP server's threads decide at once. Indices are not checked inside
them: every index they read is a checked action component, a manifest column or clamped.

* :func:`intake_pass`: a request's checks, consent, masks and review inputs
  (``serve/intake.py``).
* :func:`rows_at_fault`: the actions a graph chose, held to the manifest's rules
  (``serve/choice.py``).
* :func:`finish_rows`: every final action checked again before it is returned, its review
  flag, its decision id's version bits.
* :func:`settle_rows`: where the graph's choice is the answer, the checks, copies, review flags
  and ids of the whole request after the graph in one pass (``serve/runtime.py``).

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
    scratch = np.zeros((3, block), dtype=np.float32)  # per row of a block
    bits = np.zeros(block, dtype=np.int64)
    scratch64 = np.zeros(block, dtype=np.float64)
    counted = np.nonzero(digits)[0]
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
        rows = last - first
        sums = scratch64
        for i in range(rows):
            sums[i] = 0.0
        for q in range(len(counted)):  # the one-hot columns, each over the block's rows
            j = counted[q]
            weight = digits[j]
            for i in range(rows):
                sums[i] += x[first + i, j] * weight
        for i in range(first, last):
            row = x[i]
            s = sums[i - first]
            if not s >= 0.0:  # NaN too: the row is refused by its check
                s = 0.0
            code = min(int(min(s, float(top))), top)
            bad[0] |= groups_ok[code] == 0
            # a tier digit past the last tier comes only with a refused group (several tier flags
            # set): held to the table all the same, as nothing here checks an index
            t = min(code >> tier_shift, len(visible) - 1)
            tier[i] = t
            seen = visible[t]
            o = out[i]
            for j in range(d):
                v = np.float32(row[j])
                o[j] = v * seen[j]
                hidden |= o[j] != v
        # the block's rules and review inputs, one guard column at a time over its rows (each
        # index read once per block); the guard inputs are whole, checked numbers, compared
        # as they are
        sent, known, pressing = scratch[0], scratch[1], scratch[2]
        for i in range(rows):
            sent[i] = 0.0
            known[i] = 0.0
            pressing[i] = 0.0
            bits[i] = 0
        for m in range(c):
            js, jo, cap = i_sent[m], i_opted[m], channel_cap[m]
            for i in range(rows):
                v = out[first + i, js]
                sent[i] += v
                bits[i] |= np.int64((out[first + i, jo] <= 0.5) & (v < cap)) << m
        for q in range(len(i_goals)):
            g = i_goals[q]
            for i in range(rows):
                known[i] = max(known[i], out[first + i, g])
        for q in range(len(review_goals)):
            g = review_goals[q]
            for i in range(rows):
                pressing[i] = max(pressing[i], out[first + i, g])
        for i in range(rows):
            bits[i] *= np.int64(sent[i] < max_per_week)  # the weekly cap closes every channel
            state[first + i] = (tier[first + i] << c) | bits[i]
            sensitive[first + i] = (pressing[i] > 0.5) | (known[i] <= 0.5)
            stressed[first + i] = out[first + i, i_stress] > 0
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
def action_at_fault(a, state, end, allows, slots, channels, contents):  # pragma: no cover
    """Whether the (4,) int64 action ``a`` has a component outside [0, ``end``) (it is then
    set to no-send, all zeros, in place) or is not allowed in the rules' ``state``
    (:attr:`~serve.guards.Masks.state`; ``allows``: every (state, slot, channel, content),
    ``slots`` counting no-send)."""
    inside = True
    for m in range(4):
        inside &= (a[m] >= 0) & (a[m] < end[m])
    if not inside:
        for m in range(4):
            a[m] = 0
    code = ((state * slots + a[0]) * channels + a[2]) * contents + a[3]
    return (not inside) | (not allows[code])


@_compiled
def review_one(a, review_tones, loss_content, sensitive, stressed):  # pragma: no cover
    """Whether the (4,) action ``a`` (within the action space) is a send a person approves
    first: a pressing tone (``review_tones``) to a client with a sensitive (or undeclared)
    goal, or on a loss topic (``loss_content``) while markets are stressed
    (:meth:`serve.guards.Guards.needs_review`)."""
    return (a[0] > 0) & review_tones[a[1]] & ((loss_content[a[3]] & stressed) | sensitive)


@_compiled
def rows_at_fault(  # pragma: no cover - compiled
    actions, probability, doubtful, end, state, allows, slots, channels, contents, fault
):
    """Write ``fault[i]``: 1 where row i's (N, 4) int64 action is at fault
    (:func:`action_at_fault`, which sets an out-of-range one to no-send) or its probability
    is not in [0, 1] (NaN included); 2 where ``doubtful`` says the graph left the row to
    numpy; else 0. ``probability`` and ``doubtful`` may be empty: no such checks. Returns the
    number of rows marked 1."""
    n = actions.shape[0]
    checked = len(probability) == n
    count = 0
    for i in range(n):
        at_fault = action_at_fault(actions[i], state[i], end, allows, slots, channels, contents)
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
    """Write ``out[i]``: :func:`review_one` of row i's (N, 4) action."""
    for i in range(actions.shape[0]):
        out[i] = review_one(actions[i], review_tones, loss_content, sensitive[i], stressed[i])


@_compiled
def finish_rows(  # pragma: no cover - compiled
    actions,
    end,
    state,
    allows,
    slots,
    channels,
    contents,
    review_tones,
    loss_content,
    sensitive,
    stressed,
    review,
    ids,
):
    """The last pass over a request's final (N, 4) actions, one row at a time: each action
    checked against the rules (:func:`action_at_fault`), its review flag written to
    ``review`` (:func:`review_one`), and the version-4 and variant bits set in its decision
    id's 16 random bytes (row i of ``ids``, as :func:`uuid4_bits`). Returns the number of
    actions at fault (the runtime then returns no decision)."""
    count = 0
    for i in range(actions.shape[0]):
        a = actions[i]
        count += action_at_fault(a, state[i], end, allows, slots, channels, contents)
        review[i] = review_one(a, review_tones, loss_content, sensitive[i], stressed[i])
        stamp(ids[i])
    return count


@_compiled
def settle_rows(  # pragma: no cover - compiled
    actions,
    probability,
    doubtful,
    end,
    state,
    allows,
    slots,
    channels,
    contents,
    state_count,
    review_tones,
    loss_content,
    sensitive,
    stressed,
    ids,
    final,
    policy_action,
    policy_probability,
    propensity,
    allowed,
    explored,
    review,
):
    """A request whose graph choice is its answer (nothing drawn, no firm's action, no
    circuit), in one pass: each row's (N, 4) int64 graph action copied to ``final`` and
    ``policy_action`` and checked there (:func:`action_at_fault`), its probability (in
    [0, 1]) to ``policy_probability``, ``propensity`` 1, ``allowed`` the number of allowed
    actions of its rules' ``state`` (``state_count``), ``explored`` False, its review flag
    (:func:`review_one`) and its id's version bits (:func:`stamp`). Returns the number of rows
    the graph marks ``doubtful`` or that fail a check: where it is not 0 the caller sets these
    arrays aside and takes the general path from the graph's untouched outputs."""
    count = 0
    for i in range(actions.shape[0]):
        a = final[i]
        for m in range(4):
            a[m] = actions[i, m]
            policy_action[i, m] = actions[i, m]
        p = probability[i]
        at_fault = action_at_fault(a, state[i], end, allows, slots, channels, contents)
        at_fault |= not ((p >= 0.0) & (p <= 1.0))
        count += at_fault | doubtful[i]
        policy_probability[i] = p
        propensity[i] = 1.0
        allowed[i] = state_count[state[i]]
        explored[i] = False
        review[i] = review_one(a, review_tones, loss_content, sensitive[i], stressed[i])
        stamp(ids[i])
    return count


@_compiled
def stamp(row):  # pragma: no cover - compiled
    """Set the version-4 and variant bits of one id's 16 random bytes (RFC 4122)."""
    row[6] = (row[6] & 0x0F) | 0x40
    row[8] = (row[8] & 0x3F) | 0x80


@_compiled
def uuid4_bits(rows):  # pragma: no cover - compiled
    """Set the version-4 and variant bits of each 16-byte row of random bytes, as
    :func:`uuid.uuid4` sets them (RFC 4122)."""
    for i in range(rows.shape[0]):
        stamp(rows[i])


_warm = False


def warm_up() -> None:
    """Compile (or load from the disk cache) every loop for the types the runtime calls them
    with, on tiny inputs: a runtime pays for it when it loads, not on its first request."""
    global _warm
    if _warm:
        return
    one, four = np.zeros(1, dtype=np.int64), np.zeros(4, dtype=np.int64)
    flags, table = np.zeros(1, dtype=bool), np.ones(1, dtype=bool)
    for kind in (np.float32, np.float64):
        intake_pass(
            np.zeros((1, 1), dtype=kind),
            np.zeros(1, dtype=np.float32),
            np.zeros(1, dtype=np.float32),
            np.zeros(1, dtype=np.uint8),
            np.zeros(1, dtype=np.float64),
            np.ones(8, dtype=np.uint8),
            0,
            np.ones((1, 1), dtype=np.float32),
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=np.float32),
            np.float32(1.0),
            np.zeros(0, dtype=np.int64),
            one,
            np.zeros(0, dtype=np.int64),
            0,
            np.zeros((1, 1), dtype=np.float32),
            np.zeros(1, dtype=np.int64),
            np.zeros((0, 1), dtype=bool),
            np.zeros((0, 1), dtype=bool),
            np.zeros(1, dtype=np.int64),
            np.zeros(1, dtype=bool),
            np.zeros(1, dtype=bool),
        )
    actions = np.zeros((1, 4), dtype=np.int64)
    rows_at_fault(actions, np.zeros(1), flags, four + 1, one, table, 1, 1, 1, np.zeros(1, np.uint8))
    rows_at_fault(
        actions,
        np.zeros(0),
        np.zeros(0, dtype=bool),
        four + 1,
        one,
        table,
        1,
        1,
        1,
        np.zeros(1, np.uint8),
    )
    review_flags(actions, table, table, flags, flags, np.zeros(1, dtype=bool))
    ids = np.zeros((1, 16), dtype=np.uint8)
    finish_rows(
        actions, four + 1, one, table, 1, 1, 1, table, table, flags, flags, flags.copy(), ids
    )
    uuid4_bits(ids)
    settle_rows(
        actions,
        np.zeros(1),
        flags,
        four + 1,
        one,
        table,
        1,
        1,
        1,
        one,
        table,
        table,
        flags,
        flags,
        ids,
        actions.copy(),
        actions.copy(),
        np.zeros(1),
        np.zeros(1),
        one.copy(),
        flags.copy(),
        flags.copy(),
    )
    _warm = True
