"""Guardrails rebuilt from the manifest's rules and the request's features (numpy only).

The same rules as ``envs/masks.py``; the runtime cannot import the training stack, so they are
restated here over the manifest, and a test holds the two to the same masks on every action.
"""

from __future__ import annotations

from typing import Any

import numpy as np


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
        self.channel_cap = np.array([rules["channel_caps"][c] for c in self.channels])
        self.content_min_tier = np.array([rules["content_min_tier"][k] for k in self.contents])
        names = manifest["feature_names"]
        self.i_opted = [names.index(f"opted_out_{c}") for c in self.channels]
        self.i_sent = [names.index(f"sent_7d_{c}") for c in self.channels]
        self.i_tier = [names.index(f"consent_tier_{k}") for k in range(4)]
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

    def inputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(opted_out (N,3), messages per channel in 7 days (N,3), consent tier (N,)) from features."""
        return (
            x[:, self.i_opted] > 0.5,
            np.rint(x[:, self.i_sent]).astype(np.int64),
            np.argmax(x[:, self.i_tier], axis=1),
        )

    def _channels_and_tier(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        opted, sent, tier = self.inputs(x)
        channel_ok = (
            ~opted
            & (sent < self.channel_cap[None, :])
            & (sent.sum(axis=1) < self.max_per_week)[:, None]
        )
        return channel_ok, tier

    def allowed_parts(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rules in factored form: (N, slots, channels) allowed pairs and (N, contents) allowed
        contents; every tone is allowed. A send is allowed iff its (slot, channel) and content are."""
        channel_ok, tier = self._channels_and_tier(x)
        return channel_ok[:, None, :] & ~self.quiet[None, :, :], tier[
            :, None
        ] >= self.content_min_tier[None, :]

    def allowed_channels_contents(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rules per client, one row per choice and one column per client: (channels, N)
        channels open to a send today and (contents, N) allowed contents. A send is allowed iff
        its channel and content are and its slot is not in the channel's quiet hours."""
        channel_ok, tier = self._channels_and_tier(x)
        return np.ascontiguousarray(channel_ok.T), tier[None, :] >= self.content_min_tier[:, None]

    def is_allowed(self, x: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """(N,) True where the (N, 4) action (components within ``nvec``) is allowed for its
        client; no-send always is. One pass over the chosen actions, not the 361-action table."""
        opted, sent, tier = self.inputs(x)
        slot, channel, content = actions[:, 0], actions[:, 2], actions[:, 3]
        rows = np.arange(len(actions))
        ok = ~opted[rows, channel] & (sent[rows, channel] < self.channel_cap[channel])
        ok &= sent.sum(axis=1) < self.max_per_week
        ok &= ~self.quiet[np.maximum(slot - 1, 0), channel]
        ok &= tier >= self.content_min_tier[content]
        return (slot == 0) | ok

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

    def needs_review(self, x: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """(N,) True for sensitive sends a person approves first: an urgent or opportunity tone on
        debt or retirement-adequacy clients (or an undeclared goal), or on loss topics (market
        updates while markets are stressed)."""
        send = actions[:, 0] > 0
        pressing = self.review_tones[actions[:, 1]]
        goal_known = x[:, self.i_goals].max(axis=1) > 0.5
        sensitive_goal = (x[:, self.review_goals].max(axis=1) > 0.5) | ~goal_known
        loss_topic = self.loss_content[actions[:, 3]] & (x[:, self.i_stress] > 0)
        return send & pressing & (sensitive_goal | loss_topic)
