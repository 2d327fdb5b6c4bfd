"""The policy contract every agent follows (:class:`Policy`), and the choice within masks that
several policies share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np

from envs.spaces import JOINT_ACTIONS, JOINT_COLUMNS, MASK_SPLITS, multi_to_flat
from simulate.labels import N_CHANNELS, N_CONTENTS, N_SLOTS, N_TONES

if TYPE_CHECKING:
    from agents.config import AgentConfig
    from envs.core import CadenceCore

ExportKind = Literal["linear", "network"]
"""how serving exports a policy (``serve.onnx_export.graph_for``): ``linear``, a linear model whose
score is additive over the 19 per-component scores (``agents.bandits.LinearBandit``: reads
``theta``); ``network``, an on-policy SB3 actor network giving per-component logits
(``agents.sb3_agents.SB3Policy``: reads ``model``)"""


class Policy(ABC):
    """Chooses one action per client for a batch; the one contract evaluation, off-policy
    estimation, saving and export see.

    Every hook is here, with a no-op default; a policy overrides the ones it needs and declares
    what it is with the class attributes below. Callers never probe for a hook.

    Lifecycle, in the order a rollout calls it (``evaluation.rollout.begin_rollout`` starts every
    rollout: evaluation's, the logger's and the off-policy truth's; ``after_day`` is called by
    evaluation's :func:`evaluation.rollout.rollout`, where the policy's own actions were taken):

    ==================================  =====================================================
    ``bind(core)``                      privileged policies only (``privileged = True``): the
                                        simulator core they read, before the first day
    ``start_rollout()``                 before the first day: forget the clients of the last
                                        rollout (memory, beliefs, a breaker's monitor)
    ``act(obs, masks)``                 each day: (N, OBS_DIM) float32 observations and (N, 361)
                                        bool joint masks (index 0, no-send, always allowed) in;
                                        (N, 4) int64 MultiDiscrete actions
                                        ``(slot, tone, channel, content)`` the masks allow out
    ``after_day(day, outcomes, alive)`` after each day: every client's outcomes (bool arrays of
                                        shape (N,) by outcome name) and who had not churned
                                        before the day
    ==================================  =====================================================

    Online learners also implement ``update(obs, actions, rewards, info)`` (``agents.registry``
    calls it while training; evaluation never does).

    Declarations:
        name: the policy's name in tables, runs and saved folders.
        privileged: it reads the world it acts in (``bind``: latent state a firm never sees);
            it cannot be deployed or estimated off-policy.
        stochastic: its actions are draws; off-policy estimation needs a target's probabilities,
            which it does not give.
        history_dependent: it acts on its own memory of past sends and days, which a logged
            state does not hold; off-policy estimation refuses it.
        export_kind: how serving exports it (:data:`ExportKind`), or None: no ONNX form, for the
            reason :attr:`export_refusal` gives.

    Saving: :meth:`save` writes what training learned and returns the file (None: nothing to
    save, the policy is rebuilt from its name and :meth:`agent_config`); a policy that saves
    also has a ``load`` classmethod that ``agents.registry.load_policy`` calls.

    Example, a heuristic with only ``act``::

        class Quiet(Policy):
            name = "quiet"

            def act(self, obs, masks):
                return np.zeros((len(obs), 4), dtype=np.int64)
    """

    name: str = "policy"
    privileged: ClassVar[bool] = False
    stochastic: bool = False
    history_dependent: bool = False
    export_kind: ExportKind | None = None

    @abstractmethod
    def act(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """(N, 4) int64 actions for (N, OBS_DIM) observations within (N, 361) joint masks."""

    def bind(self, core: CadenceCore) -> None:  # noqa: B027 (an optional hook)
        """Give a privileged policy the simulator core it reads (called only where
        ``privileged``); nothing for any other policy."""

    def start_rollout(self) -> None:  # noqa: B027 (an optional hook)
        """Called before a rollout's first day: forget every client of the last one."""

    def after_day(self, day: int, outcomes: dict[str, np.ndarray], alive: np.ndarray) -> None:  # noqa: B027 (an optional hook)
        """Called after each day with the day's outcomes of every client ((N,) bool arrays by
        outcome name) and ``alive`` ((N,) bool: not churned before the day)."""

    def save(self, path: str | Path) -> Path | None:
        """Write what the policy learned next to ``path`` (its suffix is the policy's own);
        returns the file written, or None where there is nothing to save."""
        return None

    def agent_config(self) -> AgentConfig | None:
        """The agent configuration it was built from (saved beside it), or None."""
        return None

    @property
    def export_refusal(self) -> str:
        """Why the policy has no ONNX form (where ``export_kind`` is None), as a sentence."""
        return f"{self.name} has no trained network or linear model to export"


def first_allowed(candidates: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N, 4) actions: per row, the first of the (N, K) flat ``candidates`` the masks allow, else no-send."""
    rows = np.arange(len(masks))[:, None]
    ok = masks[rows, candidates]
    pick = np.where(ok.any(axis=1), candidates[np.arange(len(masks)), ok.argmax(axis=1)], 0)
    return JOINT_ACTIONS[pick]


def flat(slot, tone, channel, content) -> np.ndarray:
    """Flat indices of MultiDiscrete components (scalars or (N,) arrays broadcast together)."""
    parts = np.broadcast_arrays(
        *(np.asarray(x, dtype=np.int64) for x in (slot, tone, channel, content))
    )
    return multi_to_flat(np.stack(parts, axis=-1).reshape(-1, 4)).reshape(parts[0].shape)


assert N_CONTENTS == 4, "factor_masks reads a (slot, tone, channel)'s contents as one uint32"

CHUNK = 16_384
"""rows per chunk when a policy scores all 361 actions (bounds memory at large N)"""


def in_chunks(act_rows, obs: np.ndarray, masks: np.ndarray, size: int = CHUNK) -> np.ndarray:
    """Apply ``act_rows(obs, masks) -> (n, 4)`` to row chunks and stack the results."""
    if len(obs) <= size:
        return act_rows(obs, masks)
    return np.concatenate(
        [act_rows(obs[i : i + size], masks[i : i + size]) for i in range(0, len(obs), size)]
    )


def factor_masks(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split (N, 361) joint masks into (N, slots, channels) allowed pairs, (N, tones) and
    (N, contents) allowed parts, plus (N,) rows where the joint mask *is* their product (for
    the guardrails of ``envs.masks`` it always is; other rows need the joint table).

    Reads each (slot, tone, channel)'s four content entries as one word, then checks the
    product of the parts against the count of allowed sends.
    """
    n = len(masks)
    # each (slot, tone, channel) holds N_CONTENTS = 4 content entries: read them as one 32-bit word
    words = (
        np.ascontiguousarray(masks[:, 1:]).view(np.uint32).reshape(n, N_SLOTS, N_TONES, N_CHANNELS)
        != 0
    )
    rows = np.arange(n)
    pairs = words.any(axis=2)
    pair = pairs.reshape(n, -1).argmax(axis=1)
    slot_ix, channel = np.divmod(pair, N_CHANNELS)
    tones = words[rows, slot_ix, :, channel]
    tone = tones.argmax(axis=1)
    start = multi_to_flat(np.stack([1 + slot_ix, tone, channel, np.zeros_like(tone)], axis=1))
    contents = masks[rows[:, None], start[:, None] + np.arange(N_CONTENTS)[None, :]]
    product = pairs.sum(axis=(1, 2)) * tones.sum(axis=1) * contents.sum(axis=1)
    exact = product == np.count_nonzero(masks[:, 1:], axis=1)
    return pairs, tones, contents, exact


def _logsumexp(a: np.ndarray) -> np.ndarray:
    top = a.max(axis=1)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(a - safe[:, None]).sum(axis=1)) + safe


def best_pairs(slot: np.ndarray, channel: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(N,) index ``slot * channels + channel`` of each row's best allowed (slot, channel) pair,
    from (N, slots) send-slot scores, (N, channels) channel scores and (N, slots, channels)
    allowed pairs: per channel its best allowed slot (the lowest among equals), then the best
    of those pairs (the lowest index among equals), as the served runtime chooses
    (``serve/choice.py``). The same pair as the best of every pair's sum, but where a channel's
    score is so large that adding it rounds two of its slots' scores alike, the better slot is
    still the one taken. ``slots * channels`` where no pair's score is comparable (NaN)."""
    n, s, c = pairs.shape
    rows = np.arange(n)[:, None]
    best_slot = np.where(pairs, slot[:, :, None], -np.inf).argmax(axis=1)  # (N, channels)
    with np.errstate(invalid="ignore"):
        value = np.where(pairs.any(axis=1), slot[rows, best_slot] + channel, -np.inf)
        top = value.max(axis=1, keepdims=True)
        return np.where(value == top, best_slot * c + np.arange(c), s * c).min(axis=1)


def best_factored(scores: np.ndarray, masks: np.ndarray, rule: str) -> np.ndarray:
    """(N, 4) deterministic allowed action from (N, 19) per-component scores, without the
    361-action table: the best allowed send is the best allowed (slot, channel) pair plus the
    best tone plus the best allowed content.

    ``rule="additive"`` (linear bandits: a send scores the sum of its components, no-send 0):
    send when the best send beats no-send. ``rule="log_probs"`` (SB3: per-component log-probs,
    no-send scores log p(slot 0)): send when the allowed sends together are likelier than
    no-send. Rows whose mask is not a product fall back to the joint table.
    """
    n = len(scores)
    pairs, tones, contents, exact = factor_masks(masks)
    slot, tone, channel, content = np.split(scores, MASK_SPLITS, axis=1)
    slot = slot[:, 1:]  # the sends; no-send is column 0
    pair = np.where(pairs, slot[:, :, None] + channel[:, None, :], -np.inf).reshape(n, -1)
    tone = np.where(tones, tone, -np.inf)
    content = np.where(contents, content, -np.inf)
    bp, bt, bk = best_pairs(slot, channel, pairs), tone.argmax(axis=1), content.argmax(axis=1)
    rows = np.arange(n)
    with np.errstate(invalid="ignore"):
        best = pair.max(axis=1) + tone[rows, bt] + content[rows, bk]
        deciding = (
            best
            if rule == "additive"
            else _logsumexp(pair) + _logsumexp(tone) + _logsumexp(content)
        )
    no_send = np.zeros(n) if rule == "additive" else scores[:, 0]
    send = np.isfinite(best) & (deciding > no_send)
    actions = np.zeros((n, 4), dtype=np.int64)
    best_slot, best_channel = np.divmod(bp, N_CHANNELS)
    actions[send] = np.stack([1 + best_slot, bt, best_channel, bk], axis=1)[send]
    slow = np.flatnonzero(~exact)
    if slow.size:
        joint = scores[slow][:, JOINT_COLUMNS].sum(axis=2)
        joint[:, 0] = no_send[slow]
        allowed = np.where(masks[slow], joint, -np.inf)
        if rule == "additive":
            actions[slow] = JOINT_ACTIONS[allowed.argmax(axis=1)]
        else:
            weights = np.exp(allowed - allowed.max(axis=1, keepdims=True))
            go = weights[:, 1:].sum(axis=1) > weights[:, 0]
            actions[slow] = JOINT_ACTIONS[np.where(go, 1 + allowed[:, 1:].argmax(axis=1), 0)]
    return actions


def best_additive(scores: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """:func:`best_factored` with the additive rule (linear bandits)."""
    return best_factored(scores, masks, "additive")
