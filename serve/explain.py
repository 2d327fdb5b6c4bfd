"""Reasons for a decision: the feature groups that pushed most toward the chosen message, said in
words, and when reasons are given at all. Needs numpy only.

A group's push is how much the chosen action's score falls when the group is zeroed (occluded),
one network pass per group; the two strongest are quoted. A group the client's consent tier hides
is never quoted (the policy reads it as 0 anyway). :func:`compose` puts a row's reasons together
with what else decided it (a guardrail, exploration, shadow mode's firm action, the circuit).
"""

from __future__ import annotations

from typing import Any

import numpy as np

EXPLAIN_UP_TO = 100
"""served without an ``explain`` param, requests of at most this many rows get reasons"""
EXPLAIN_AT_MOST = 1_000
"""served, ``explain: true`` is refused past this many rows (reasons cost one network pass per
feature group: 100,000 rows took 4.9 s and 1.3 GB)"""

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

GROUP_PREFIXES = (
    ("weekday", "weekday_"),
    ("consent", "consent_tier_"),
    ("opt_outs", "opted_out_"),
    ("recent_sends", "sent_7d_"),
    ("recency", "days_since_last_send"),
    ("visits", "days_since_last_visit"),
    ("visits", "visits_30d"),
    ("goal", "goal_"),
    ("risk", "declared_risk"),
    ("market", "market_stress"),
    ("engagement", "ema_"),
)
"""(group, feature-name prefix): the features each reason speaks of"""


def wants_reasons(explain: bool | None, rows: int) -> bool:
    """``explain`` if given, else whether ``rows`` is small enough for reasons by default."""
    return bool(explain) if explain is not None else rows <= EXPLAIN_UP_TO


class Explainer:
    """Says which feature groups pushed a decision, for one export's features and labels."""

    def __init__(
        self,
        feature_names: list[str],
        labels: dict[str, Any],
        min_tier: np.ndarray,
        i_tier: np.ndarray,
    ) -> None:
        """``min_tier``: the consent tier each feature needs; ``i_tier``: the columns of the
        one-hot consent tier."""
        self.feature_names, self.labels = feature_names, labels
        self.min_tier, self.i_tier = min_tier, i_tier
        self.groups = feature_groups(feature_names)

    def occluded(self, x: np.ndarray) -> np.ndarray:
        """(groups * N, D): ``x`` once per group, that group's features zeroed."""
        occluded = np.repeat(x[None], len(self.groups), axis=0)
        for g, (_, cols) in enumerate(self.groups):
            occluded[g][:, cols] = 0.0
        return occluded.reshape(-1, x.shape[1])

    def strongest(self, x: np.ndarray, push: np.ndarray) -> list[list[str]]:
        """Per row of ``x``, the two groups with the largest (groups, N) ``push`` (above 1e-6)
        that the client's consent tier shows, in words (``push`` is written in place)."""
        tier = np.argmax(x[:, self.i_tier], axis=1)
        group_tier = np.array([self.min_tier[cols].max() for _, cols in self.groups])
        push[group_tier[:, None] > tier[None, :]] = -np.inf
        out = []
        for i in range(len(x)):
            order = np.argsort(-push[:, i])[:2]
            out.append([self.say(self.groups[g][0], x[i]) for g in order if push[g, i] > 1e-6])
        return out

    def say(self, group: str, row: np.ndarray) -> str:
        """One group's features of one client, in words."""
        v = dict(zip(self.feature_names, row.tolist(), strict=True))
        if group == "weekday":
            days = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
            return f"it is {WEEKDAYS[int(np.argmax([v[f'weekday_{d}'] for d in days]))]}"
        if group == "consent":
            return f"consent tier {int(np.argmax([v[f'consent_tier_{k}'] for k in range(4)]))}"
        if group == "opt_outs":
            out = [c for c in self.labels["channel"] if v[f"opted_out_{c}"] > 0.5]
            return f"opted out of {', '.join(out)}" if out else "reachable on every channel"
        if group == "recent_sends":
            sent = int(sum(v[f"sent_7d_{c}"] for c in self.labels["channel"]))
            return f"{sent} messages in the last 7 days"
        if group == "recency":
            return f"{v['days_since_last_send']:.0f} days since the last message"
        if group == "visits":
            return (
                f"{v['visits_30d']:.0f} visits in the last 30 days, the last "
                f"{v['days_since_last_visit']:.0f} days ago"
            )
        if group == "goal":
            goals = [n[5:] for n in self.feature_names if n.startswith("goal_") and v[n] > 0.5]
            return f"declared goal: {goals[0].replace('_', ' ')}" if goals else "no declared goal"
        if group == "risk":
            return f"declared risk tolerance {v['declared_risk']:.2f}"
        if group == "market":
            return f"market stress {v['market_stress']:.2f}"
        return "past engagement with these channels, times and tones"


def feature_groups(names: list[str]) -> list[tuple[str, np.ndarray]]:
    """(group, the columns of its features) for each group of :data:`GROUP_PREFIXES`."""
    groups: dict[str, list[int]] = {}
    for g, p in GROUP_PREFIXES:
        groups.setdefault(g, []).extend(i for i, n in enumerate(names) if n.startswith(p))
    return [(g, np.array(cols)) for g, cols in groups.items()]


def compose(
    pushed: list[list[str]],
    blocked: list[str | None],
    changed: np.ndarray,
    explored: np.ndarray,
    exploration: str,
    notes: dict[int, str],
    no_scores: np.ndarray,
    tripped: dict[int, str] | None,
) -> list[list[str]]:
    """Each row's reasons, in order: the feature groups that pushed most toward its action
    (``pushed``, from :meth:`Explainer.strongest`), the guardrail that changed the policy's wish
    (``blocked[i]`` where ``changed[i]``), exploration (where ``explored``, naming the
    ``exploration`` setting), a note of the step that decided (``notes``: row -> text, e.g. the
    firm's action replaced in shadow mode). A row the policy gave no numbers (``no_scores``) or
    a tripped circuit decided (``tripped``: row -> segment) gets that one reason alone."""
    reasons: list[list[str]] = [[] for _ in range(len(pushed))]
    for i, why in enumerate(blocked):
        if why and changed[i]:
            reasons[i].append(why)
    for i, text in enumerate(pushed):
        reasons[i][:0] = text
    for i in np.flatnonzero(explored):
        reasons[i].append(f"exploration ({exploration}): an allowed action drawn at random")
    for i, note in notes.items():
        reasons[i].append(note)
    for i in np.flatnonzero(no_scores):
        reasons[i] = ["the policy's scores for this client are not numbers: no message"]
    for i, segment in (tripped or {}).items():
        reasons[i] = [f"circuit tripped for {segment}: the safe fallback decides"]
    return reasons
