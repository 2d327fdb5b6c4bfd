"""A request's intake in one compiled pass: the feature checks, consent, the guardrail masks and
the review inputs, read while each block of rows is in the core's first-level cache.

The same work in numpy (:meth:`serve.request.FeatureChecks.checked`, then
:meth:`serve.guards.Guards.masks` and :meth:`serve.guards.Guards.review_inputs`) reads the
request's N x D values about nine times over; at 4,096 rows (1 MB of float32) that is most of
what the runtime adds to its network. Here every value is read once: the request's rows are
taken :data:`BLOCK` at a time, checked as one long vector (range, finiteness and wholeness,
the loop the compiler turns into SIMD); the block's one-hot groups' sums and consent tiers come
from its one-hot columns, one at a time over its rows (each group in its own octal digit, as
the checks one by one count them); each row is written with consent applied; and the channels'
rules and review flags are read from the values just written, one guard column at a time.

:meth:`Intake.read` returns None for any request it does not accept; the runtime then runs the
numpy checks, which name the feature and row at fault (or, with ``consent="refuse"``, the
hidden feature that is set). A test holds the two to the same verdicts and the same outputs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from serve.compiled import HIDDEN_SET, INVALID, intake_pass
from serve.guards import Guards, Masks
from serve.request import FeatureChecks

BLOCK = 64
"""rows checked together as one vector of ``BLOCK * D`` values"""


class Accepted(NamedTuple):
    """What :meth:`Intake.read` gives for an accepted request."""

    x: np.ndarray
    """(N, D) float32 features, consent applied (a new array)"""
    masks: Masks
    """the guardrail masks of those features (:meth:`serve.guards.Guards.masks`)"""
    review: tuple[np.ndarray, np.ndarray]
    """(sensitive goal, stressed market) per row (:meth:`serve.guards.Guards.review_inputs`)"""


class Intake:
    """The compiled pass over a request, with the tables it reads from a runtime's
    :class:`~serve.request.FeatureChecks` and :class:`~serve.guards.Guards`."""

    def __init__(self, checks: FeatureChecks, guards: Guards) -> None:
        d = len(checks.feature_names)
        self.low = np.tile(checks.low_ok, BLOCK)
        self.high = np.tile(checks.high_ok, BLOCK)
        exact = np.zeros(d, dtype=np.uint8)  # flags and counts: whole numbers
        exact[checks.flags] = 1
        exact[checks.counts] = 1
        self.exact = np.tile(exact, BLOCK)
        groups = len(checks.one_hot)
        # one product gives every one-hot group's sum and the tier, each in its own octal digit
        # (a group of at most 7 flags sums to at most 7; exact in float64 below 2 ** 53)
        self.digits = np.zeros(d, dtype=np.float64)
        for g, (_, cols, _, _) in enumerate(checks.one_hot):
            self.digits[cols] += 8.0**g
        self.digits[checks.i_tier] += np.arange(len(checks.i_tier)) * 8.0**groups
        value = np.arange(8 ** (groups + 1))  # every product -> whether each group is in range
        self.groups_ok = np.ones(len(value), dtype=np.uint8)
        for g, (_, _, fewest, most) in enumerate(checks.one_hot):
            set_ = (value >> (3 * g)) & 7
            self.groups_ok &= (set_ >= fewest) & (set_ <= most)
        self.tier_shift = 3 * groups
        self.visible = checks.visible  # (tiers, D) float32
        self.i_opted = np.asarray(guards.i_opted, dtype=np.int64)
        self.i_sent = np.asarray(guards.i_sent, dtype=np.int64)
        self.channel_cap = np.asarray(guards.channel_cap, dtype=np.float32)
        self.max_per_week = np.float32(guards.max_per_week)
        self.content_min_tier = np.asarray(guards.content_min_tier, dtype=np.int64)
        self.i_goals = np.asarray(guards.i_goals, dtype=np.int64)
        self.review_goals = np.asarray(guards.review_goals, dtype=np.int64)
        self.i_stress = int(guards.i_stress)
        flags = set(checks.flags.tolist())
        loose = (checks.low[checks.flags] != 0) | (checks.high[checks.flags] != 1)
        self.usable = bool(
            all(set(c.tolist()) <= flags and len(c) < 8 for _, c, _, _ in checks.one_hot)
            and any(
                sorted(cols.tolist()) == sorted(checks.i_tier) and fewest == most == 1
                for _, cols, fewest, most in checks.one_hot
            )
            and len(checks.i_tier) <= 8
            and groups < 7
            and not loose.any()
            and not checks.min_tier[checks.i_tier].any()
            and len(guards.channels) <= 8
            and len(self.i_goals) > 0
        )
        """the product's digits are exact for 0/1 flags (a whole flag within [0, 1] is 0 or
        1), the tier is the one flag set and every tier sees it (the masks read the tier the
        checks read); else :meth:`read` declines every request and the numpy checks decide"""

    @property
    def tables(self) -> tuple:
        """What :func:`serve.compiled.intake_pass` reads besides the request, in its order."""
        return (
            self.low,
            self.high,
            self.exact,
            self.digits,
            self.groups_ok,
            self.tier_shift,
            self.visible,
            self.i_opted,
            self.i_sent,
            self.channel_cap,
            self.max_per_week,
            self.content_min_tier,
            self.i_goals,
            self.review_goals,
            self.i_stress,
        )

    def read(self, x: np.ndarray, consent: str) -> Accepted | None:
        """The checked, consented features of the (N, D) float32 or float64 request ``x``
        (``FeatureChecks.matrix``), their masks and review inputs; None where a check fails,
        where ``consent="refuse"`` meets a hidden feature that is set, or where the manifest's
        groups do not suit the compiled pass (:attr:`usable`)."""
        if not self.usable or x.dtype not in (np.float32, np.float64) or not len(x):
            return None
        x = np.ascontiguousarray(x)
        n, c, k = len(x), len(self.i_opted), len(self.content_min_tier)
        out = np.empty(x.shape, dtype=np.float32)
        tier, state = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
        channel_ok, content_ok = np.empty((c, n), dtype=bool), np.empty((k, n), dtype=bool)
        sensitive, stressed = np.empty(n, dtype=bool), np.empty(n, dtype=bool)
        verdict = intake_pass(
            x, *self.tables, out, tier, channel_ok, content_ok, state, sensitive, stressed
        )
        if verdict == INVALID or (verdict == HIDDEN_SET and consent == "refuse"):
            return None
        return Accepted(out, Masks(channel_ok, tier, content_ok, state), (sensitive, stressed))
