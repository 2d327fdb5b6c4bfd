"""The masked choice: the best *allowed* action from a policy's 19 per-component scores, and its
probability among the allowed actions. Needs numpy only.

Works on the factored rules (allowed channels, the quiet slots of each channel, allowed contents,
every tone), so it never builds the 361 joint actions: the best allowed send is the best allowed
(slot, channel) pair plus the best tone plus the best allowed content (ties go to the lowest slot,
then channel, as in the in-process policies), and the total weight of the allowed sends is the
product of the parts' sums. ``log_probs`` rule: send when the allowed sends together are likelier
than no-send; ``additive``: when the best send beats it.

Laid out one row per score and one column per client (long vectors for numpy), in float64 as the
in-process policies.

Scores that are not finite never give an action outside the masks or a probability that is not a
number in [0, 1]:

* +inf reads as :data:`SCORE_CAP` (1e300, above any float32 score): under ``log_probs`` a
  component's probability is then shared equally by its +inf entries (the softmax's limit), and
  among equals the lowest index wins, as for any tie. Under ``additive`` the probability is then
  rounded: an action tied with others at +inf reads 1.0.
* -inf is weight 0: such a slot, tone, channel or content is never part of the chosen send (a
  component whose every entry is -inf allows no send at all).
* NaN anywhere in a client's 19 scores: the policy defines no distribution for that client, who
  gets no-send with probability 1.0.
* When every allowed action has weight 0 (no-send's score is -inf and so is every allowed send's)
  the client also gets no-send with probability 1.0: probability 1.0 with no-send marks a
  decision the runtime took because the policy gave none.
"""

from __future__ import annotations

import numpy as np

SCORE_CAP = 1e300
"""+inf scores read as this (float64; the graph gives float32 scores, at most about 3.4e38)"""
GRAPH_OUTPUTS = ("choice", "choice_probability", "choice_doubtful")
"""outputs of an export whose graph makes this choice itself (``serve/graph_choice.py``): the
(N, 4) int64 actions, their (N,) float64 probabilities, and (N,) bool rows left to numpy"""


def component_bounds(nvec: np.ndarray) -> list[tuple[int, int]]:
    """(first, end) columns of each action component among the 19 scores."""
    ends = np.cumsum(nvec)
    return list(zip((0, *ends[:-1].tolist()), ends.tolist(), strict=True))


def scores(logits: np.ndarray, score_rule: str, bounds: list[tuple[int, int]]) -> np.ndarray:
    """(N, 19) float64 scores the choice compares: per-component log-probabilities for
    ``log_probs`` exports (the graph gives raw logits), the additive scores otherwise; the
    transpose of a contiguous (19, N) array."""
    z = np.array(logits.T, dtype=np.float64, order="C")  # a copy: the caller's stays as is
    np.minimum(z, SCORE_CAP, out=z)  # +inf (see the module's notes); NaN stays NaN
    if score_rule == "log_probs":
        log_softmax_rows(z, bounds)
    return z.T


def action_scores(scores: np.ndarray, nvec: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """(N,) score of each given action from (N, 19) ``scores``: its components' sum, or the
    no-send entry."""
    offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
    send = scores[np.arange(len(scores))[:, None], actions + offsets[None, :]].sum(axis=1)
    return np.where(actions[:, 0] > 0, send, scores[:, 0])


def choose(
    z: np.ndarray,
    nvec: np.ndarray,
    score_rule: str,
    channel_ok: np.ndarray,
    content_ok: np.ndarray,
    open_slots: list[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) best allowed actions and their probabilities among the allowed actions, from
    (19, N) contiguous scores ``z`` (see :func:`scores`), the allowed channels (c, N) and
    contents (k, N), and the slots open to each channel (``open_slots[k]``, ascending)."""
    n, (s, t, c, _k) = z.shape[1], nvec
    slot, tone, channel, content = z[1:s], z[s : s + t], z[s + t : s + t + c], z[s + t + c :]
    # best (slot, channel): per channel its best open slot, then the best allowed channel
    best_slot = np.stack(
        [
            rows[argmax_rows(slot[rows])] if len(rows) else np.zeros(n, dtype=np.int64)
            for rows in open_slots
        ]
    )  # (c, N): lowest slot among equals
    cols = np.arange(n)
    pair_value = np.where(channel_ok, slot[best_slot, cols] + channel, -np.inf)  # (c, N)
    pair_top = pair_value.max(axis=0)
    key = np.where(pair_value == pair_top, best_slot * c + np.arange(c)[:, None], s * c).min(axis=0)
    best_pair_slot, best_channel = key // c, key % c
    masked_content = np.where(content_ok, content, -np.inf)
    best_tone, best_content = argmax_rows(tone), argmax_rows(masked_content)
    tops = pair_top, tone[best_tone, cols], masked_content[best_content, cols]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        best_send = tops[0] + tops[1] + tops[2]
        all_sends = (
            pair_logsumexp(slot, channel, channel_ok, open_slots, pair_top)
            + logsumexp(tone, None, tops[1])
            + logsumexp(content, content_ok, tops[2])
        )
    no_send = z[0]
    deciding = all_sends if score_rule == "log_probs" else best_send
    with np.errstate(invalid="ignore"):
        total = np.logaddexp(no_send, all_sends)  # log weight of every allowed action
    # no distribution (NaN) or none over the allowed actions: no-send, probability 1
    undefined = np.isnan(z).any(axis=0) | ~(total > -np.inf)
    send = np.isfinite(best_send) & (deciding > no_send) & ~undefined
    actions = np.zeros((n, 4), dtype=np.int64)
    actions[:, 0] = np.where(send, 1 + best_pair_slot, 0)
    actions[:, 1] = np.where(send, best_tone, 0)
    actions[:, 2] = np.where(send, best_channel, 0)
    actions[:, 3] = np.where(send, best_content, 0)
    chosen = np.where(send, best_send, no_send)
    with np.errstate(invalid="ignore", over="ignore"):
        probability = np.exp(chosen - total)
    probability[undefined] = 1.0
    return actions, np.clip(probability, 0.0, 1.0)


def pair_logsumexp(
    slot: np.ndarray,
    channel: np.ndarray,
    channel_ok: np.ndarray,
    open_slots: list[np.ndarray],
    top: np.ndarray,
) -> np.ndarray:
    """(N,) log of the summed weight of the allowed (slot, channel) pairs, ``top`` their best
    score: per channel, its weight times the summed weight of its open slots."""
    slot_top = slot.max(axis=0)
    slot_top[~np.isfinite(slot_top)] = 0.0  # every slot -inf: inner sums 0, not NaN
    inner = np.stack(
        [
            np.exp(slot[rows] - slot_top).sum(axis=0) if len(rows) else np.zeros(len(top))
            for rows in open_slots
        ]
    )  # (c, N)
    safe = np.where(np.isfinite(top), top, 0.0)
    weight = (
        np.exp(channel + (slot_top - safe), out=np.zeros_like(channel), where=channel_ok) * inner
    )
    total = weight.sum(axis=0)
    out = np.log(total) + safe
    # exact path for the (rare) columns where the shortcut under- or overflows
    bad = np.flatnonzero(np.isfinite(top) & ~((total >= 0.5) & np.isfinite(total)))
    for j in bad:
        values = [
            slot[r, j] + channel[k, j]
            for k, rows in enumerate(open_slots)
            if channel_ok[k, j]
            for r in rows
        ]
        out[j] = np.logaddexp.reduce(np.array(values, dtype=np.float64))
    out[top == -np.inf] = -np.inf  # no allowed pair has weight (0 * inf would say NaN)
    return out


def log_softmax_rows(z: np.ndarray, bounds: list[tuple[int, int]]) -> None:
    """In place: each component's rows ``z[a:b]`` (one column per client) become log-probabilities."""
    for a, b in bounds:
        part = z[a:b]
        top = part.max(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            part -= top
            part -= np.log(np.exp(part).sum(axis=0))
        empty = top == -np.inf  # every entry -inf: each keeps weight 0 (not -inf - -inf = NaN)
        if empty.any():
            part[:, empty] = -np.inf


def argmax_rows(a: np.ndarray) -> np.ndarray:
    """Column-wise argmax of a non-empty (m, N) array (first of equals); about 1.6x faster than
    ``argmax(axis=0)``, which copies the array to a column-major layout first."""
    return np.where(a == a.max(axis=0), np.arange(len(a))[:, None], len(a) - 1).min(axis=0)


def logsumexp(a: np.ndarray, allowed: np.ndarray | None, top: np.ndarray) -> np.ndarray:
    """Column-wise log-sum-exp of ``a`` (rows: choices) over the ``allowed`` entries, given their
    max ``top``; -inf for a column with nothing allowed."""
    safe = np.where(np.isfinite(top), top, 0.0)
    if allowed is None:
        return np.log(np.exp(a - safe).sum(axis=0)) + safe
    weights = np.exp(a - safe, out=np.zeros_like(a), where=allowed)
    return np.log(weights.sum(axis=0)) + safe
