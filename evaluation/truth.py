"""The truth a simulated log's estimates are held against: a target's value over the log's own
span of days, rolled out on the log's own simulated clients and luck (:func:`true_value`), and its
mean daily reward on the logged states from the log's counterfactual columns
(:func:`step_truth`).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from agents.base import Policy
from envs.config import RewardConfig, Setup
from envs.reward import reward
from evaluation.record import (
    LOG_CLIENT_OFFSET,
    UNIFORM_COUNTERFACTUAL,
    counterfactual_column,
    log_policy,
)
from evaluation.rollout import begin_rollout

MAX_TRUTH_DAYS = 3_661
"""longest span (days, first to last logged day) a simulated log's truth is rolled out over: ten
years of daily decisions, :mod:`evaluation.logs`' day horizon. A longer span is a mis-dated row,
and its rollout would run for hours."""


def true_value(
    policy: Policy,
    frame: pl.DataFrame,
    setup: Setup,
    epsilon: float = 0.0,
    max_days: int = MAX_TRUTH_DAYS,
    yardstick: RewardConfig | None = None,
) -> float | None:
    """The (ε-soft, where ``epsilon`` > 0) policy's mean value per client over the log's own days,
    on the log's own simulated clients and luck; None unless the log came from
    :func:`evaluation.record.log_policy` (it carries the ``seed`` column and the simulator's ids).

    The rollout covers the log's span, its first to its last logged day, starting where the log
    started: the simulator's clients fresh from the log's seed (a log's first day is the one the
    simulator began on; a log whose days are all shifted keeps its truth). A span over
    ``max_days`` (default :data:`MAX_TRUTH_DAYS`) is refused by name rather than rolled out.
    """
    if "seed" not in frame.columns:
        return None
    ids = np.unique(frame["client_id"].to_numpy())
    n = len(ids)
    if not np.array_equal(ids, LOG_CLIENT_OFFSET + np.arange(n)):
        return None
    first, last = int(frame["day"].min()), int(frame["day"].max())
    days = last - first + 1
    if days > max_days:
        raise ValueError(
            f"the log spans days {first}..{last} ({days:,} days); a truth rollout covers at most "
            f"{max_days:,} days (evaluation.offline.MAX_TRUTH_DAYS): a day that far from the "
            "others is a mis-dated row (estimate with with_truth=False to skip the truth)"
        )
    if epsilon > 0:  # the soft policy's own rollout: its rewards are the truth
        soft = log_policy(
            policy, setup, n, days, int(frame["seed"][0]), epsilon, yardstick=yardstick
        )
        return float(soft["reward"].sum() / n)
    core, obs = begin_rollout(policy, setup, n, int(frame["seed"][0]), LOG_CLIENT_OFFSET)
    weights = (yardstick or RewardConfig()).weights()
    value, gone = np.zeros(n), np.zeros(n, dtype=bool)
    for _ in range(days):
        r = core.step(np.asarray(policy.act(obs, core.joint_masks()), dtype=np.int64))
        value += ~gone * reward(r.outcomes, weights)
        gone |= r.outcomes["churned"]
        obs = r.obs
    return float(value.mean())


def step_truth(frame: pl.DataFrame, policy: str, epsilon: float = 0.0) -> float | None:
    """The (ε-soft) target's true mean daily reward on the logged states, from the log's
    counterfactual columns; None where the log has none for this policy."""
    own = counterfactual_column(policy)
    if own not in frame.columns or (epsilon > 0 and UNIFORM_COUNTERFACTUAL not in frame.columns):
        return None
    value = float(frame[own].mean())
    if epsilon > 0:
        value = (1.0 - epsilon) * value + epsilon * float(frame[UNIFORM_COUNTERFACTUAL].mean())
    return value
