"""What a training or evaluation run logs about a comparison: one policy's contract metrics with
their intervals, its tables and plots, and its margins over the best baseline heuristic."""

from __future__ import annotations

from pathlib import Path

import mlflow

from evaluation.compare import KPI_PLOT, Comparison, write_tables
from evaluation.metrics import CONTRACT
from experiment import plots


def log_comparison(
    result: Comparison, policy_name: str, out: Path, with_artifacts: bool = True
) -> dict[str, float]:
    """Log one policy's contract metrics (+ CI bounds) to the active run; write table and plots."""
    m = result.metrics[policy_name]
    metrics = {name: m[name][0] for name in CONTRACT}
    for name in CONTRACT:
        est, lo, hi = m[name]
        if lo != hi:
            metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = lo, hi
    for name in m:
        if name.startswith(("harm/", "tier/")):
            metrics[name] = m[name][0]
    mlflow.log_metrics(metrics)
    if with_artifacts:
        write_tables(result, out, "evaluation")
        own = [r for r in result.rollouts if r.policy == policy_name]
        plots.cadence(own, out / "cadence.png", f"{policy_name}: when and how it messages")
        plots.kpi_bars(result.metrics, KPI_PLOT, out / "kpis.png")
        plots.retention_curves(result.rollouts, out / "retention.png")
        mlflow.log_artifacts(str(out), "evaluation")
    return metrics


MARGINS = ("eval/normalized_value", "eval/retention", "eval/anxious_click_share")
"""compared with the best baseline heuristic: more value, retention no lower, anxious share no higher"""


def log_margins(result: Comparison, policy_name: str, baselines: list[str]) -> str:
    """Log ``eval/margin/*`` (the policy minus the best baseline, on the same clients) and tag
    ``baseline``; returns a one-line verdict for the console."""
    m = result.metrics
    best = max(baselines, key=lambda b: m[b]["eval/normalized_value"][0])
    margins = {
        f"eval/margin/{k.split('/', 1)[1]}": m[policy_name][k][0] - m[best][k][0] for k in MARGINS
    }
    mlflow.log_metrics(margins)
    mlflow.set_tag("baseline", best)
    value, retention, anxious = margins.values()
    holds = retention >= 0 and anxious <= 0
    return (
        f"{policy_name} vs the best baseline {best}: normalized value {value:+.3f}, retention "
        f"{retention:+.3f}, anxious-click share {anxious:+.3f} "
        f"({'retention no lower and anxious share no higher' if holds else 'the guard conditions do not both hold'})"
    )
