"""Side-by-side comparison of policies on the same fresh clients: KPIs with CIs, normalized
value against never sending and the privileged oracle, the share of the deployable ceiling's,
pairwise differences, harm, fairness."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from agents.base import Policy
from agents.ceiling import DeployableCeiling
from agents.heuristics import NoSend
from agents.oracle import Oracle
from envs.config import RewardConfig, Setup, eval_seeds
from evaluation.metrics import incremental, kpis, normalized_value, paired_difference
from evaluation.rollout import Progress, Rollout, evaluate

Interval = tuple[float, float, float]

TABLE: tuple[str, ...] = (
    "eval/normalized_value",
    "eval/ceiling_share",
    "eval/value",
    "eval/retention",
    "eval/clicks_per_client",
    "eval/anxious_click_share",
    "eval/conversions_per_client",
    "eval/incremental_conversions_per_client",
    "eval/messages_per_client_week",
    "eval/unsubscribes_per_client",
    "eval/guardrail_violations",
)
"""columns of the comparison table train.py and evaluate.py print and log"""

KPI_PLOT: tuple[str, ...] = (
    "eval/normalized_value",
    "eval/value",
    "eval/retention",
    "eval/anxious_click_share",
    "eval/messages_per_client_week",
)
"""metrics shown in the KPI bar chart"""


@dataclass
class Comparison:
    """Per-policy metrics (estimate, CI low, CI high) and paired value differences."""

    metrics: dict[str, dict[str, Interval]]
    """policy -> metric name -> (estimate, low, high)"""
    differences: dict[tuple[str, str], Interval] = field(default_factory=dict)
    """(a, b) -> eval/value of a minus b on the same clients"""
    rollouts: list[Rollout] = field(default_factory=list)


def compare(
    policies: Sequence[Policy],
    setup: Setup,
    num_clients: int = 2000,
    horizon_days: int = 90,
    seeds: Sequence[int] = tuple(eval_seeds(3)),
    n_boot: int = 300,
    progress: bool = True,
    yardstick: RewardConfig | None = None,
) -> Comparison:
    """Evaluate ``policies`` (plus no_send, the oracle and the deployable ceiling as references)
    on the same clients, valued with ``yardstick`` (the run's ``eval.reward``; None: the
    balanced defaults). ``eval/ceiling_share`` is normalized value over the ceiling's."""
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise ValueError(f"policy names must be unique, got {names}")
    refs = [p for p in (NoSend(), Oracle(), DeployableCeiling(setup)) if p.name not in names]
    everyone = [*policies, *refs]
    rollouts = evaluate(
        everyone, setup, num_clients, horizon_days, seeds, progress, yardstick=yardstick
    )
    by_name = {p.name: [r for r in rollouts if r.policy == p.name] for p in everyone}
    metrics = {}
    bar = Progress(len(everyone), "confidence intervals", "policy", progress)
    for p in everyone:
        bar.set_note(p.name)
        m = kpis(by_name[p.name], n_boot=n_boot)
        m["eval/normalized_value"] = normalized_value(
            by_name[p.name], by_name["no_send"], by_name["oracle"], n_boot=n_boot
        )
        m["eval/ceiling_share"] = normalized_value(
            by_name[p.name], by_name["no_send"], by_name["deployable_ceiling"], n_boot=n_boot
        )
        for tier in range(N_TIERS):  # what each consent tier lets a policy do
            groups = [
                _of_tier(by_name[q], tier)
                for q in (p.name, "no_send", "oracle", "deployable_ceiling")
            ]
            if any(r.value.size == 0 for r in groups[0]):
                continue
            m[f"tier/{tier}/normalized_value"] = normalized_value(*groups[:3], n_boot=n_boot)
            m[f"tier/{tier}/ceiling_share"] = normalized_value(
                groups[0], groups[1], groups[3], n_boot=n_boot
            )
        m |= incremental(by_name[p.name], by_name["no_send"], n_boot=n_boot)
        metrics[p.name] = m
        bar.update()
    bar.close()
    differences = {
        (a, b): paired_difference(by_name[a], by_name[b], n_boot=n_boot)
        for a in names
        for b in names
        if a < b
    }
    return Comparison(metrics, differences, rollouts)


N_TIERS = 4


def _of_tier(rollouts: Sequence[Rollout], tier: int) -> list[Rollout]:
    """The rollouts restricted to the clients of one consent tier (values only)."""
    return [dataclasses.replace(r, value=r.value[r.tier == tier]) for r in rollouts]


def markdown_table(comparison: Comparison, columns: Sequence[str]) -> str:
    """A Markdown table: one row per policy (best normalized value first), ``mean [low, high]`` cells."""
    order = sorted(
        comparison.metrics, key=lambda p: -comparison.metrics[p]["eval/normalized_value"][0]
    )
    lines = [
        "| policy | " + " | ".join(c.split("/", 1)[1] for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for p in order:
        cells = []
        for c in columns:
            est, lo, hi = comparison.metrics[p][c]
            cells.append(f"{est:.3g}" if lo == hi else f"{est:.3f} [{lo:.3f}, {hi:.3f}]")
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tier_table(comparison: Comparison) -> str:
    """A Markdown table of normalized value and ceiling share per consent tier (point
    estimates), one row per policy in the main table's order; empty without tier metrics."""
    order = sorted(
        comparison.metrics, key=lambda p: -comparison.metrics[p]["eval/normalized_value"][0]
    )
    tiers = [
        t for t in range(N_TIERS) if f"tier/{t}/normalized_value" in comparison.metrics[order[0]]
    ]
    if not tiers:
        return ""
    head = [f"tier {t} normalized value" for t in tiers] + [
        f"tier {t} ceiling share" for t in tiers
    ]
    lines = ["| policy | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    for p in order:
        m = comparison.metrics[p]
        cells = [f"{m[f'tier/{t}/normalized_value'][0]:.3f}" for t in tiers]
        cells += [f"{m[f'tier/{t}/ceiling_share'][0]:.3f}" for t in tiers]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def metrics_frame(comparison: Comparison) -> pl.DataFrame:
    """Every metric of every policy, one row each: policy, metric, estimate, ci_low, ci_high."""
    return pl.DataFrame(
        [
            {"policy": p, "metric": k, "estimate": v[0], "ci_low": v[1], "ci_high": v[2]}
            for p, ms in comparison.metrics.items()
            for k, v in ms.items()
        ],
        schema={
            "policy": pl.String,
            "metric": pl.String,
            "estimate": pl.Float64,
            "ci_low": pl.Float64,
            "ci_high": pl.Float64,
        },
    )


def write_tables(comparison: Comparison, folder: Path, stem: str) -> None:
    """``<stem>.md`` (the table and, where there are any, the paired value differences) and
    ``<stem>.parquet`` (every metric) in ``folder``."""
    text = markdown_table(comparison, TABLE) + "\n"
    tiers = tier_table(comparison)
    if tiers:
        text += "\n" + tiers + "\n"
    if comparison.differences:
        text += "\n| a | b | value of a minus b (same clients) |\n|---|---|---:|\n" + "".join(
            f"| {a} | {b} | {v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}] |\n"
            for (a, b), v in comparison.differences.items()
        )
    (folder / f"{stem}.md").write_text(text)
    metrics_frame(comparison).write_parquet(folder / f"{stem}.parquet")
