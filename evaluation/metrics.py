"""KPIs with the metric names of the MLflow contract (README, *What a run logs*), with bootstrap confidence intervals, and the fairness gaps."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from evaluation.rollout import Rollout

KPI_NAMES: tuple[str, ...] = (
    "eval/value",
    "eval/retention",
    "eval/clicks_per_client",
    "eval/anxious_click_share",
    "eval/conversions_per_client",
    "eval/visits_per_client",
    "eval/unsubscribes_per_client",
    "eval/messages_per_client_week",
    "eval/complaints_per_client",
    "eval/guardrail_violations",
    "fairness/urgent_gap",
    "fairness/volume_gap",
    "fairness/retention_gap",
)
"""metric names of the evaluation contract; ``eval/normalized_value`` comes from :func:`normalized_value`"""

INCREMENTAL: dict[str, str] = {
    "eval/incremental_visits_per_client": "visited",
    "eval/incremental_conversions_per_client": "converted",
}
"""metric -> outcome counted against never sending on the same clients and luck (what the
messages caused, not what they were credited with: a clicked client might have come anyway)"""

CONTRACT: tuple[str, ...] = (
    KPI_NAMES[0],
    "eval/normalized_value",
    "eval/ceiling_share",
    *KPI_NAMES[1:6],
    *INCREMENTAL,
    *KPI_NAMES[6:],
)
"""every metric a train.py or evaluate.py run logs per policy (with ``_ci_low``/``_ci_high`` where bootstrapped)"""

Stat = Callable[[Sequence[Rollout], Sequence[np.ndarray]], float]


def _mean_of(get: Callable[[Rollout], np.ndarray]) -> Stat:
    def stat(rollouts: Sequence[Rollout], idx: Sequence[np.ndarray]) -> float:
        return float(
            np.mean(np.concatenate([get(r)[i] for r, i in zip(rollouts, idx, strict=True)]))
        )

    return stat


def _anxious_share(rollouts: Sequence[Rollout], idx: Sequence[np.ndarray]) -> float:
    anxious = sum(r.totals["anxious_click"][i].sum() for r, i in zip(rollouts, idx, strict=True))
    clicks = sum(r.totals["clicked"][i].sum() for r, i in zip(rollouts, idx, strict=True))
    return float(anxious / clicks) if clicks else 0.0


STATS: dict[str, Stat] = {
    "eval/value": _mean_of(lambda r: r.value),
    "eval/retention": _mean_of(lambda r: r.retained.astype(float)),
    "eval/clicks_per_client": _mean_of(lambda r: r.totals["clicked"]),
    "eval/anxious_click_share": _anxious_share,
    "eval/conversions_per_client": _mean_of(lambda r: r.totals["converted"]),
    "eval/visits_per_client": _mean_of(lambda r: r.totals["visited"]),
    "eval/unsubscribes_per_client": _mean_of(lambda r: r.totals["unsubscribed"]),
    "eval/messages_per_client_week": _mean_of(lambda r: r.totals["sent"] * 7.0 / r.horizon_days),
    "eval/complaints_per_client": _mean_of(lambda r: r.totals["complaint"]),
}


def largest_gap(values: np.ndarray, attributes: Sequence[np.ndarray], min_group: int = 20) -> float:
    """Largest difference between group means, over every protected attribute (groups >= ``min_group``)."""
    gaps = []
    for attribute in attributes:
        means = [
            values[attribute == g].mean()
            for g in np.unique(attribute)
            if (attribute == g).sum() >= min_group
        ]
        if len(means) >= 2:
            gaps.append(max(means) - min(means))
    return float(max(gaps)) if gaps else 0.0


def kpis(
    rollouts: Sequence[Rollout], n_boot: int = 300, seed: int = 0
) -> dict[str, tuple[float, float, float]]:
    """KPI -> (estimate, 95% CI low, 95% CI high) over one policy's rollouts (one per seed).

    The interval is a two-level bootstrap: resample seeds, then clients within each seed.
    Counts (violations) and fairness gaps are reported without an interval (low = high = value).
    """
    rng = np.random.default_rng(seed)
    every = [np.arange(len(r.value)) for r in rollouts]
    out: dict[str, tuple[float, float, float]] = {}
    replicates: dict[str, list[float]] = {k: [] for k in STATS}
    for _ in range(n_boot):
        chosen = [rollouts[c] for c in rng.integers(0, len(rollouts), len(rollouts))]
        idx = [rng.integers(0, len(r.value), len(r.value)) for r in chosen]
        for name, stat in STATS.items():
            replicates[name].append(stat(chosen, idx))
    for name, stat in STATS.items():
        lo, hi = np.percentile(replicates[name], [2.5, 97.5])
        out[name] = (stat(rollouts, every), float(lo), float(hi))
    violations = float(sum(r.totals["violation"].sum() for r in rollouts))
    out["eval/guardrail_violations"] = (violations, violations, violations)
    attributes = [
        np.concatenate([r.gender for r in rollouts]),
        np.concatenate([r.age_band for r in rollouts]),
    ]
    sent = np.concatenate([r.totals["sent"] for r in rollouts])
    weeks = rollouts[0].horizon_days / 7.0
    for name, values in (
        (
            "fairness/urgent_gap",
            np.concatenate([r.totals["urgent"] for r in rollouts]) / np.maximum(sent, 1),
        ),
        ("fairness/volume_gap", sent / weeks),
        ("fairness/retention_gap", np.concatenate([r.retained for r in rollouts]).astype(float)),
    ):
        gap = largest_gap(values, attributes)
        out[name] = (gap, gap, gap)
    vulnerable = np.concatenate([r.vulnerable for r in rollouts])
    for what, values in (
        ("anxious_clicks", np.concatenate([r.totals["anxious_click"] for r in rollouts])),
        ("complaints", np.concatenate([r.totals["complaint"] for r in rollouts])),
        ("churn", 1.0 - np.concatenate([r.retained for r in rollouts])),
    ):
        for who, rows in (("vulnerable", vulnerable), ("others", ~vulnerable)):
            v = float(values[rows].mean()) if rows.any() else 0.0
            out[f"harm/{who}_{what}"] = (v, v, v)
    return out


def normalized_value(
    rollouts: Sequence[Rollout],
    silent: Sequence[Rollout],
    oracle: Sequence[Rollout],
    n_boot: int = 300,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(estimate, CI low, CI high) of (value - value of never sending) / (oracle value - that),
    all on the same clients: the three lists hold one rollout per seed, in the same seed order.
    The bootstrap resamples seeds and clients once for all three (paired)."""
    for group in (silent, oracle):
        if [r.seed for r in group] != [r.seed for r in rollouts]:
            raise ValueError(
                "normalized_value needs the policy, no_send and oracle rollouts on the same seeds"
            )

    def stat(picks: Sequence[tuple[int, np.ndarray]]) -> float:
        v, v0, vo = (
            np.mean(np.concatenate([g[c].value[i] for c, i in picks]))
            for g in (rollouts, silent, oracle)
        )
        return float((v - v0) / (vo - v0)) if vo != v0 else 0.0

    rng = np.random.default_rng(seed)
    full = [(c, np.arange(len(r.value))) for c, r in enumerate(rollouts)]
    boots = []
    for _ in range(n_boot):
        chosen = rng.integers(0, len(rollouts), len(rollouts))
        boots.append(
            stat(
                [
                    (c, rng.integers(0, len(rollouts[c].value), len(rollouts[c].value)))
                    for c in chosen
                ]
            )
        )
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return stat(full), float(lo), float(hi)


def incremental(
    rollouts: Sequence[Rollout], silent: Sequence[Rollout], n_boot: int = 300, seed: int = 0
) -> dict[str, tuple[float, float, float]]:
    """Each :data:`INCREMENTAL` metric: (mean, CI low, CI high) per client of the outcome under the
    policy minus under never sending, on the same clients and luck (paired by seed)."""
    if [r.seed for r in silent] != [r.seed for r in rollouts]:
        raise ValueError("incremental KPIs need the policy and no_send rollouts on the same seeds")
    return {
        metric: paired_difference(rollouts, silent, n_boot, seed, outcome)
        for metric, outcome in INCREMENTAL.items()
    }


def paired_difference(
    a: Sequence[Rollout],
    b: Sequence[Rollout],
    n_boot: int = 300,
    seed: int = 0,
    outcome: str | None = None,
) -> tuple[float, float, float]:
    """(mean, CI low, CI high) of a's value (or per-client count of ``outcome``) minus b's, on the
    same clients (common random numbers)."""

    def get(r: Rollout) -> np.ndarray:
        return r.value if outcome is None else r.totals[outcome]

    diffs = [get(ra) - get(rb) for ra, rb in zip(a, b, strict=True)]
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        chosen = rng.integers(0, len(diffs), len(diffs))
        boots.append(
            np.mean(
                np.concatenate(
                    [diffs[c][rng.integers(0, len(diffs[c]), len(diffs[c]))] for c in chosen]
                )
            )
        )
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(np.mean(np.concatenate(diffs))), float(lo), float(hi)
