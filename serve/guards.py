"""Guardrails rebuilt from the manifest's rules and the request's features (numpy, and compiled
loops over chosen actions: :meth:`Guards.rows_at_fault`, :meth:`Guards.finish`,
:meth:`Guards.needs_review`).

The same rules as ``envs/masks.py``; the runtime cannot import the training stack, so they are
restated here over the manifest, and a test holds the two to the same masks on every action.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from serve import compiled


class Masks(NamedTuple):
    """The rules of N clients in factored form, one row per choice and one column per client,
    computed once per request and shared by every check of it (:meth:`Guards.masks`)."""

    channel_ok: np.ndarray
    """(channels, N) the channel takes a send today: not opted out, under its weekly cap and
    under the weekly cap of all channels (quiet hours are per slot: :attr:`Guards.quiet`)"""
    tier: np.ndarray
    """(N,) int64 consent tier"""
    content_ok: np.ndarray
    """(contents, N) the client's consent tier allows the content"""
    state: np.ndarray
    """(N,) int64 which of the ``2 ** channels * tiers`` combinations of the above the row
    has: bit k set where channel k takes a send today, plus ``2 ** channels * tier``
    (:attr:`Guards.state_channels`, :attr:`Guards.state_contents`)"""


class Settled(NamedTuple):
    """What :meth:`Guards.settle` writes for a request whose graph choice is its answer."""

    action: np.ndarray
    """(N, 4) int64 final actions (the graph's, checked)"""
    policy_action: np.ndarray
    """(N, 4) int64 the policy's choice (a copy of the same)"""
    policy_probability: np.ndarray
    """(N,) float64 its probability among the allowed actions"""
    propensity: np.ndarray
    """(N,) float64 ones: nothing was drawn"""
    allowed: np.ndarray
    """(N,) int64 allowed joint actions, no-send included"""
    explored: np.ndarray
    """(N,) False"""
    needs_review: np.ndarray
    """(N,) review flags"""


class Guards:
    """Masks and review rules compiled from a manifest."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        labels = manifest["action_labels"]
        self.slots = [s.split()[0] for s in labels["slot"][1:]]
        self.tones, self.channels, self.contents = (
            labels["tone"],
            labels["channel"],
            labels["content"],
        )
        rules = manifest["mask_rules"]
        self.quiet = np.zeros((len(self.slots), len(self.channels)), dtype=bool)
        for channel, slots in rules["quiet_hours"].items():
            for slot in slots:
                self.quiet[self.slots.index(slot), self.channels.index(channel)] = True
        self.max_per_week = int(rules["max_per_week"])
        if len(self.channels) > 8:  # the masks pack one bit per channel in a byte
            raise ValueError(f"at most 8 channels are supported, got {len(self.channels)}")
        self.channel_cap = np.array([rules["channel_caps"][c] for c in self.channels])
        self.content_min_tier = np.array([rules["content_min_tier"][k] for k in self.contents])
        names = manifest["feature_names"]
        self.i_opted = [names.index(f"opted_out_{c}") for c in self.channels]
        self.i_sent = [names.index(f"sent_7d_{c}") for c in self.channels]
        self.i_tier = [names.index(f"consent_tier_{k}") for k in range(4)]
        self.i_guard = np.array([*self.i_opted, *self.i_sent, *self.i_tier])
        """the guard inputs' columns: opt-outs, messages in 7 days, the consent tier"""
        self._open = ~self.quiet.reshape(-1)  # (slot index * channels + channel): not quiet
        self._action_end = np.array(
            [len(self.slots) + 1, len(self.tones), len(self.channels), len(self.contents)],
            dtype=np.uint64,
        )
        """one past each component's last value: int64 actions read as unsigned are within
        the action space where every component is below it (a negative one reads as a huge
        number)"""
        self._end = self._action_end.astype(np.int64)
        grid = np.stack(
            np.meshgrid(
                np.arange(1, len(self.slots) + 1),
                np.arange(len(self.tones)),
                np.arange(len(self.channels)),
                np.arange(len(self.contents)),
                indexing="ij",
            ),
            axis=-1,
        ).reshape(-1, 4)
        self.joint_actions = np.concatenate([np.zeros((1, 4), dtype=np.int64), grid])
        review = manifest["review_rules"]
        self.review_tones = np.isin(self.tones, review["tones"])
        self.review_goals = [names.index(f"goal_{g}") for g in review["goals"]]
        self.loss_content = np.isin(self.contents, review["loss_contents"])
        self.i_stress = names.index("market_stress")
        self.i_goals = [i for i, n in enumerate(names) if n.startswith("goal_")]
        c, states = len(self.channels), np.arange(2 ** len(self.channels) * len(self.i_tier))
        self.state_channels = (states[:, None] >> np.arange(c)) & 1 == 1
        """(states, channels) the channels that take a send today in each :attr:`Masks.state`"""
        self.state_contents = (states >> c)[:, None] >= self.content_min_tier[None, :]
        """(states, contents) the contents allowed in each :attr:`Masks.state`"""
        sends = (
            self.state_channels[:, None, :, None]
            & ~self.quiet[None, :, :, None]
            & self.state_contents[:, None, None, :]
        )  # (states, slots, channels, contents)
        no_send = np.ones((len(states), 1, *sends.shape[2:]), dtype=bool)
        self._state_allows = np.concatenate([no_send, sends], axis=1).reshape(-1)
        """whether each (state, slot, channel, content) is allowed (slot 0, no-send, always)"""

    def inputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(opted_out (N,3), messages per channel in 7 days (N,3), consent tier (N,)) from features."""
        opted, sent, tier = self._columns(x)
        return opted.T, sent.T, tier

    def _columns(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(opted_out (3, N), messages per channel in 7 days (3, N) int64, consent tier (N,)):
        the guard inputs read in one gather, one row per input (long vectors for numpy)."""
        c = len(self.channels)
        g = np.ascontiguousarray(x[:, self.i_guard].T)  # (2 c + tiers, N)
        tier = g[2 * c :].argmax(axis=0)
        return g[:c] > 0.5, np.rint(g[c : 2 * c]).astype(np.int64), tier

    def masks(self, x: np.ndarray, tier: np.ndarray | None = None) -> Masks:
        """The rules for each row of features ``x`` (:class:`Masks`): one pass over the guard
        inputs, shared by every check of a request (:meth:`allowed_by`). ``tier``: the (N,)
        int64 consent tier of ``x``'s rows where already read (the request's checks read it),
        else it is read here."""
        if tier is None:
            opted, sent, tier = self._columns(x)
        else:  # the opt-outs and the counts only, in one gather
            c = len(self.channels)
            g = np.ascontiguousarray(x[:, self.i_guard[: 2 * c]].T)  # (2 c, N)
            opted, sent = g[:c] > 0.5, np.rint(g[c:]).astype(np.int64)
        channel_ok = ~opted
        channel_ok &= sent < self.channel_cap[:, None]
        channel_ok &= sent.sum(axis=0) < self.max_per_week
        content_ok = tier >= self.content_min_tier[:, None]
        state = tier << len(channel_ok)
        bits = channel_ok.view(np.uint8)  # the channels' bits in one byte per row (at most 8)
        packed = bits[0].copy()
        for k in range(1, len(bits)):
            packed |= bits[k] << k
        state |= packed.astype(np.int64)
        return Masks(channel_ok, tier, content_ok, state)

    def _channels_and_tier(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        masks = self.masks(x)
        return masks.channel_ok.T, masks.tier

    def allowed_parts(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rules in factored form: (N, slots, channels) allowed pairs and (N, contents) allowed
        contents; every tone is allowed. A send is allowed iff its (slot, channel) and content are."""
        channel_ok, tier = self._channels_and_tier(x)
        return channel_ok[:, None, :] & ~self.quiet[None, :, :], tier[
            :, None
        ] >= self.content_min_tier[None, :]

    def allowed_channels_contents(
        self, x: np.ndarray, masks: Masks | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The rules per client, one row per choice and one column per client: (channels, N)
        channels open to a send today and (contents, N) allowed contents (copies: the caller may
        write them). A send is allowed iff its channel and content are and its slot is not in
        the channel's quiet hours. ``masks``: :meth:`masks` of ``x`` where already computed."""
        masks = masks or self.masks(x)
        return masks.channel_ok.copy(), masks.content_ok.copy()

    def is_allowed(self, x: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """(N,) True where the (N, 4) action (components within ``nvec``) is allowed for its
        client; no-send always is. One pass over the chosen actions, not the 361-action table."""
        return self.allowed_by(self.masks(x), actions)

    def allowed_by(self, masks: Masks, actions: np.ndarray) -> np.ndarray:
        """(N,) True where the (N, 4) action (components within ``nvec``) is allowed by its
        row's :class:`Masks`: its channel takes a send today, its slot is not in that channel's
        quiet hours and its content is allowed at the client's consent tier; no-send always is.
        Actions within the action space (the usual case: one comparison of int64 actions read
        as unsigned, or a column's minimum and maximum at a time, says so) are looked up by
        their row's state (:meth:`allowed_in_range`)."""
        if self.in_range(actions):
            return self.allowed_in_range(masks, actions)
        slot, channel, content = actions[:, 0], actions[:, 2], actions[:, 3]
        n = masks.channel_ok.shape[1]
        rows = np.arange(n)
        ok = masks.channel_ok.reshape(-1).take(channel * n + rows)
        ok &= masks.content_ok.reshape(-1).take(content * n + rows)
        ok &= self._open.take(np.maximum(slot - 1, 0) * self.quiet.shape[1] + channel)
        return (slot == 0) | ok

    def in_range(self, actions: np.ndarray) -> bool:
        """Whether every one of the (N, 4) ``actions`` (N > 0) lies within the action space."""
        if not len(actions):
            return False
        if actions.dtype == np.int64:  # one pass: a negative component reads as a huge number
            return not np.greater_equal(actions.view(np.uint64), self._action_end).any()
        return bool(actions.min() >= 0 and (actions.max(axis=0) < self._action_end).all())

    def rows_at_fault(
        self,
        masks: Masks,
        actions: np.ndarray,
        probability: np.ndarray | None = None,
        doubtful: np.ndarray | None = None,
        fault: np.ndarray | None = None,
    ) -> int:
        """How many rows of the (N, 4) C-ordered int64 ``actions`` are out of the action space
        or not allowed by their row's :class:`Masks` (:meth:`allowed_by`), or have a
        ``probability`` that is not in [0, 1]; one compiled pass (``serve/compiled.py``). An
        out-of-range action is set to no-send in place. ``fault``: an (N,) uint8 array to
        write, 1 for those rows, 2 for the rows ``doubtful`` marks (not counted), else 0."""
        return int(
            compiled.rows_at_fault(
                actions,
                np.empty(0) if probability is None else probability,
                np.empty(0, dtype=bool) if doubtful is None else doubtful,
                *self._rule_tables(masks, actions),
                np.empty(len(actions), dtype=np.uint8) if fault is None else fault,
            )
        )

    def _rule_tables(self, masks: Masks, actions: np.ndarray) -> tuple:
        """What the compiled checks of (N, 4) ``actions`` read (``serve/compiled.py``
        ``action_at_fault``): each component's end, the rows' states, the table of allowed
        (state, slot, channel, content), and the table's slots (no-send counted), channels
        and contents; :class:`ValueError` unless ``actions`` is C-ordered (N, 4) int64."""
        n = len(actions)
        if actions.dtype != np.int64 or actions.shape != (n, 4) or not actions.flags.c_contiguous:
            raise ValueError("actions must be a C-ordered (N, 4) int64 array")
        sizes = (len(self.slots) + 1, len(self.channels), len(self.contents))
        return (self._end, masks.state, self._state_allows, *sizes)

    def finish(
        self,
        masks: Masks,
        actions: np.ndarray,
        review: tuple[np.ndarray, np.ndarray],
        ids: np.ndarray,
    ) -> tuple[int, np.ndarray]:
        """The runtime's last pass over its (N, 4) C-ordered int64 final ``actions``, one
        compiled loop (``serve/compiled.py``): how many are out of the action space or not
        allowed by their row's :class:`Masks` (:meth:`rows_at_fault`; an out-of-range one is
        set to no-send in place), and the (N,) review flags of the actions
        (:meth:`needs_review`, from :meth:`review_inputs`' ``review``); each row of the (N, 16)
        uint8 ``ids`` (random bytes) gets the version-4 and variant bits of a uuid4."""
        tables = self._rule_tables(masks, actions)
        n = len(actions)
        if ids.shape != (n, 16) or ids.dtype != np.uint8:
            raise ValueError(f"ids must be (N, 16) uint8 for {n} actions, got {ids.shape}")
        flags = np.empty(n, dtype=bool)
        count = compiled.finish_rows(
            actions,
            *tables,
            self.review_tones,
            self.loss_content,
            np.require(review[0], bool, "C"),
            np.require(review[1], bool, "C"),
            flags,
            ids,
        )
        return int(count), flags

    def settle(
        self,
        masks: Masks,
        actions: np.ndarray,
        probability: np.ndarray,
        doubtful: np.ndarray,
        review: tuple[np.ndarray, np.ndarray],
        ids: np.ndarray,
        state_count: np.ndarray,
    ) -> Settled | None:
        """A request whose graph choice is its answer (the runtime draws nothing, holds no
        firm's action and trips no circuit), after the graph in one compiled pass
        (``serve/compiled.py`` ``settle_rows``): the (N, 4) graph ``actions`` checked as
        :meth:`rows_at_fault` checks them and copied, with their (N,) ``probability``, the
        allowed count of each row's state (``state_count``), the review flags
        (:meth:`needs_review`) and the uuid4 bits of the (N, 16) uint8 ``ids``. None where any
        row is ``doubtful`` or fails a check: the inputs are left as they were (but for the
        ids' version bits) and the caller takes the general path."""
        n = len(actions)
        tables = self._rule_tables(masks, actions)
        given = (probability, doubtful, state_count, *review)
        kinds = (np.float64, np.bool_, np.int64, np.bool_, np.bool_)
        if probability.shape != (n,) or doubtful.shape != (n,):
            raise ValueError(f"probability and doubtful must be ({n},) for {n} actions")
        if any(a.dtype != k or not a.flags.c_contiguous for a, k in zip(given, kinds, strict=True)):
            raise ValueError(
                "probability, doubtful, state_count and review must be C-ordered "
                "float64, bool, int64, bool and bool arrays"
            )
        if ids.shape != (n, 16) or ids.dtype != np.uint8 or not ids.flags.writeable:
            raise ValueError(f"ids must be a writable (N, 16) uint8 array for {n} actions")
        out = Settled(
            action=np.empty((n, 4), dtype=np.int64),
            policy_action=np.empty((n, 4), dtype=np.int64),
            policy_probability=np.empty(n),
            propensity=np.empty(n),
            allowed=np.empty(n, dtype=np.int64),
            explored=np.empty(n, dtype=bool),
            needs_review=np.empty(n, dtype=bool),
        )
        count = compiled.settle_rows(
            actions,
            probability,
            doubtful,
            *tables,
            state_count,
            self.review_tones,
            self.loss_content,
            *review,
            ids,
            *out,
        )
        return None if count else out

    def allowed_in_range(self, masks: Masks, actions: np.ndarray) -> np.ndarray:
        """:meth:`allowed_by` for (N, 4) ``actions`` whose components are known to lie within
        the action space (the caller checked them): one lookup of each row's (state, slot,
        channel, content) in a table of every combination, about half the time of
        :meth:`allowed_by`, but a component out of range would read another combination."""
        code = masks.state * (len(self.slots) + 1) + actions[:, 0]
        code *= len(self.channels)
        code += actions[:, 2]
        code *= len(self.contents)
        code += actions[:, 3]
        return self._state_allows.take(code)

    def joint_mask(self, x: np.ndarray) -> np.ndarray:
        """(N, 361) True where the flat action is allowed; no-send always is."""
        slot_channel, content_ok = self.allowed_parts(x)
        n = len(x)
        joint = slot_channel[:, :, None, :, None] & content_ok[:, None, None, None, :]
        joint = np.broadcast_to(
            joint, (n, len(self.slots), len(self.tones), len(self.channels), len(self.contents))
        ).reshape(n, -1)
        return np.concatenate([np.ones((n, 1), dtype=bool), joint], axis=1)

    def blocked_reason(self, x: np.ndarray, wanted: np.ndarray) -> list[str | None]:
        """Why each wanted (slot, tone, channel, content) send was refused, or None if allowed."""
        opted, sent, tier = self.inputs(x)
        out: list[str | None] = []
        for i, (slot, _tone, channel, content) in enumerate(wanted):
            if slot == 0:
                out.append(None)
            elif opted[i, channel]:
                out.append(f"guardrail: client opted out of {self.channels[channel]}")
            elif sent[i].sum() >= self.max_per_week:
                out.append(f"guardrail: weekly cap of {self.max_per_week} messages reached")
            elif sent[i, channel] >= self.channel_cap[channel]:
                out.append(
                    f"guardrail: {self.channels[channel]} cap of {self.channel_cap[channel]} a week reached"
                )
            elif self.quiet[slot - 1, channel]:
                out.append(
                    f"guardrail: {self.slots[slot - 1]} is quiet hours for {self.channels[channel]}"
                )
            elif tier[i] < self.content_min_tier[content]:
                out.append(
                    f"guardrail: consent tier {tier[i]} does not allow {self.contents[content]}"
                )
            else:
                out.append(None)
        return out

    def review_inputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What :meth:`needs_review` reads from features ``x``, for every row: (N,) True where
        the client's goal is a sensitive one (or undeclared), (N,) True where markets are
        stressed. The runtime reads them before the network runs, while ``x`` is in the
        core's caches."""
        goal_known = x[:, self.i_goals].max(axis=1) > 0.5
        sensitive_goal = x[:, self.review_goals].max(axis=1) > 0.5
        sensitive_goal |= ~goal_known
        return sensitive_goal, x[:, self.i_stress] > 0

    def needs_review(
        self,
        x: np.ndarray,
        actions: np.ndarray,
        review: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """(N,) True for sensitive sends a person approves first: an urgent or opportunity tone on
        debt or retirement-adequacy clients (or an undeclared goal), or on loss topics (market
        updates while markets are stressed). ``review``: :meth:`review_inputs` of ``x`` where
        already read. One compiled pass over the actions (``serve/compiled.py``);
        :class:`ValueError` for an action outside the action space."""
        if len(actions) and not self.in_range(actions):
            raise ValueError("actions must lie within the action space to be reviewed")
        sensitive, stressed = self.review_inputs(x) if review is None else review
        out = np.empty(len(actions), dtype=bool)
        compiled.review_flags(
            np.require(actions, np.int64, "C"),
            self.review_tones,
            self.loss_content,
            np.require(sensitive, bool, "C"),
            np.require(stressed, bool, "C"),
            out,
        )
        return out
