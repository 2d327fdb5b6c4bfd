"""The masked choice: the best *allowed* action from a policy's 19 per-component scores, and its
probability among the allowed actions. Needs numpy only (the check of a graph's choice uses the
guards' compiled loop, ``serve/compiled.py``).

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

import threading
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from serve.guards import Guards, Masks
from serve.integrity import ExportError

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


# ----- exploration: the distribution the runtime draws from, and each action's exact probability --
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 1e3
"""the softmax temperatures accepted"""


@dataclass(frozen=True)
class Exploration:
    """How the runtime explores around its best allowed action.

    ``epsilon`` (0..1): with probability epsilon, an action drawn uniformly from the *allowed*
    actions (no-send included) replaces the best one, so an action's probability is
    ``(1 - epsilon) * [it is the best] + epsilon / allowed``. ``temperature`` (> 0): the action is
    drawn from the masked softmax of the policy's scores at that temperature (a send's joint
    score is the sum of its components' scores; no-send has its own), so an action's probability
    is ``exp(score / T) / sum over the allowed actions of exp(score' / T)``. One of the two at
    most; neither (epsilon 0, no temperature) returns the best action with probability 1.
    ``seed``: the draws are reproducible (the same seed and the same requests in the same order
    give the same actions); None draws the seed from the operating system's entropy.

    ``policy_share`` (0..1, shadow mode only, with epsilon): the share of decisions on which the
    policy's own best allowed action replaces the firm's before epsilon's draw, so the log holds
    the policy's choices as well as the firm's (a canary inside the shadow period). An action's
    probability is then ``(1 - epsilon) * ((1 - share) * [it is the firm's] + share * [it is the
    policy's]) + epsilon / allowed``.

    Rows the policy gives no distribution (a NaN score, or every allowed action of weight 0) and
    rows a tripped circuit hands to the safe fallback are not explored: their action (no-send,
    or the fallback's) has probability 1.
    """

    epsilon: float = 0.0
    """probability of a uniform draw over the allowed actions, in [0, 1]"""
    temperature: float | None = None
    """softmax temperature over the allowed actions, in [1e-3, 1e3], or None"""
    seed: int | None = None
    """seed of the draws; None: from the operating system's entropy"""
    policy_share: float = 0.0
    """shadow mode: probability that the policy's own choice replaces the firm's action, in
    [0, 1]"""

    def __post_init__(self) -> None:
        if isinstance(self.epsilon, bool) or not (
            isinstance(self.epsilon, int | float) and 0.0 <= self.epsilon <= 1.0
        ):
            raise ValueError(
                f"exploration.epsilon must be a number in [0, 1], got {self.epsilon!r}"
            )
        if self.temperature is not None:
            if isinstance(self.temperature, bool) or not (
                isinstance(self.temperature, int | float)
                and MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE
            ):
                raise ValueError(
                    f"exploration.temperature must be a number in [{MIN_TEMPERATURE:g}, "
                    f"{MAX_TEMPERATURE:g}] (or null for none), got {self.temperature!r}"
                )
            if self.epsilon > 0:
                raise ValueError(
                    "exploration takes epsilon or temperature, not both: got epsilon="
                    f"{self.epsilon:g} and temperature={self.temperature:g}"
                )
        if isinstance(self.policy_share, bool) or not (
            isinstance(self.policy_share, int | float) and 0.0 <= self.policy_share <= 1.0
        ):
            raise ValueError(
                f"exploration.policy_share must be a number in [0, 1], got {self.policy_share!r}"
            )
        if self.policy_share > 0 and self.temperature is not None:
            raise ValueError(
                "exploration.policy_share goes with epsilon (shadow mode), not with temperature"
            )
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0
        ):
            raise ValueError(
                f"exploration.seed must be a whole number >= 0 or null, got {self.seed!r}"
            )

    @property
    def kind(self) -> str:
        """``softmax``, ``epsilon`` or ``none``"""
        if self.temperature is not None:
            return "softmax"
        return "epsilon" if self.epsilon > 0 else "none"

    @property
    def label(self) -> str:
        """the setting as the decision log writes it: ``epsilon=0.1``,
        ``softmax:temperature=0.5`` or ``none``"""
        if self.temperature is not None:
            return f"softmax:temperature={self.temperature:g}"
        label = f"epsilon={self.epsilon:g}" if self.epsilon > 0 else "none"
        return label + (f";policy_share={self.policy_share:g}" if self.policy_share > 0 else "")


class Explorer:
    """An :class:`Exploration` setting with its random stream (numpy's PCG64); draws are taken
    under a lock, so threads deciding at once share one stream (in the order they take it)."""

    def __init__(self, setting: Exploration | None = None) -> None:
        self.setting = setting or Exploration()
        self._rng = np.random.default_rng(self.setting.seed)
        self._lock = threading.Lock()

    def uniforms(self, k: int, n: int) -> np.ndarray:
        """(k, n) float64 uniforms in [0, 1)."""
        with self._lock:
            return self._rng.random((k, n))


# ----- the choice made inside the graph (``serve/graph_choice.py``), checked ------------------------
def graph_makes_choice(manifest: dict[str, Any], outputs: list[str]) -> bool:
    """Whether ``manifest`` says its graph makes this choice itself (a ``graph_choice`` section);
    :class:`~serve.integrity.ExportError` when it says so but the section, or the graph's
    ``outputs`` (their names), do not match."""
    section = manifest.get("graph_choice")
    if section is None:
        return False
    expected = {"outputs": list(GRAPH_OUTPUTS), "score_rule": manifest["score_rule"]}
    if section != expected:
        raise ExportError(f"graph_choice must be {expected}, got {str(section)[:200]}")
    missing = [name for name in GRAPH_OUTPUTS if name not in outputs]
    if missing:
        raise ExportError(
            f"the manifest says the graph makes the masked choice, but the graph lacks the "
            f"output(s) {missing} (it gives {sorted(outputs)})"
        )
    return True


def graph_rows_checked(
    x: np.ndarray,
    actions: np.ndarray,
    probability: np.ndarray,
    doubtful: np.ndarray,
    nvec: np.ndarray,
    guards: Guards,
    masks: Masks | None = None,
    copy: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The graph's (N, 4) ``actions`` and (N,) ``probability`` for features ``x`` (out-of-range
    actions read as no-send; both copies, unless ``copy=False`` lets the caller's own arrays be
    written in place where their types are already int64 and float64), and the rows to decide
    again in numpy: those it marks ``doubtful``, and any other row whose action is out of range
    or not allowed by the manifest's rules (``guards``), or whose probability is not in [0, 1],
    with a :class:`RuntimeWarning` (a graph that disagrees with its manifest). ``masks``: the
    rules for ``x`` (:meth:`Guards.masks`) where already computed."""
    n = len(x)
    if actions.shape != (n, 4) or probability.shape != (n,) or doubtful.shape != (n,):
        raise ExportError(
            f"the graph's choice has shapes {actions.shape}, {probability.shape}, "
            f"{doubtful.shape} for {n} rows; expected ({n}, 4), ({n},), ({n},)"
        )
    doubtful = np.ascontiguousarray(doubtful, dtype=bool)
    # rows decided again are replaced, and out-of-range actions read as no-send: written in place
    actions, probability = _own(actions, np.int64, copy), _own(probability, np.float64, copy)
    masks = masks or guards.masks(x)
    fault = np.empty(n, dtype=np.uint8)  # 1: out of range or not allowed; 2: doubtful
    broken = guards.rows_at_fault(masks, actions, probability, doubtful, fault)
    if broken:
        first = int(np.flatnonzero(fault == 1)[0])
        warnings.warn(
            f"the graph's choice for {broken} of {n} rows (first: row {first}) is out of "
            "range or not allowed by the manifest's rules; those rows were decided in numpy",
            RuntimeWarning,
            stacklevel=4,  # where the runtime decides (its decide, through hold_to_guards)
        )
    again = np.flatnonzero(fault) if fault.any() else np.empty(0, dtype=np.int64)
    return actions, probability, again


def _own(values: np.ndarray, dtype: type, copy: bool) -> np.ndarray:
    """``values`` as a C-ordered, writable array of ``dtype``: a copy, unless ``copy=False``
    and it already is one."""
    values = values.astype(dtype, copy=copy)
    if values.flags.c_contiguous and values.flags.writeable:
        return values
    return np.array(values, dtype=dtype, order="C")
