"""Estimate policies' values from a logged dataset, and (for simulated logs) beside the truth.

A target policy is read through its action probabilities at the logged states: a deterministic
policy (every heuristic, a trained agent acting greedily) gives 1 for its own action and 0 for
any other, or, with ``epsilon > 0``, the ε-soft version (1 − ε on its action plus ε spread over
the actions the guardrails allow), which keeps weights finite where the policies disagree. The
guardrail masks of each logged row are rebuilt from its features (opt-outs, recent sends,
consent tier), as the serving runtime does.

Estimators, each with a 95 % bootstrap interval that resamples clients: one step (the mean daily
reward per logged client-day, had the target chosen that day's action): ``ips``, ``snips``,
``dm`` and ``dr``; over the logged horizon (the value per client, the quantity evaluation
reports as ``eval/value`` for the same number of days): ``pdwis`` and ``fqe``.

Bounds a hostile log cannot move: memory is O(rows × observation features) plus one day's
regression sums per client group, however many distinct days the log holds; logged propensities
below :data:`evaluation.ope.PSCORE_FLOOR` are clipped to it (or refused: ``below_floor="refuse"``,
``estimate.below_floor=refuse`` on the command line) and the table counts them; a simulated log's truth is rolled out over the log's own span of days,
at most :data:`MAX_TRUTH_DAYS`.

    python evaluate.py mode=estimate estimate.data=outputs/logs.parquet policies='[segment_rules,fixed_weekly]' estimate.soften=0.05

Each policy's estimates go to MLflow (experiment ``cadence``, tag ``command=ope``) as
``ope/<estimator>/value``, ``ope/<estimator>/ci_low``, ``ope/<estimator>/ci_high``,
``ope/<estimator>/ess`` and, for simulated logs, ``ope/truth`` (over the horizon) and
``ope/step_truth`` (one step, where the log carries counterfactual columns).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from agents.base import Policy
from envs.config import RewardConfig, Setup
from evaluation import ope
from evaluation.fqe import (
    CHUNK_ROWS,
    FEW_ROWS,
    FQE_GROUPS,
    _fitted_q,
    _Logged,
    _q_values,
    _Target,
    fqe,
)
from evaluation.logs import validate
from evaluation.record import counterfactual_column
from evaluation.target_view import logged_inputs, own_actions, target_actions, target_pscores
from evaluation.truth import MAX_TRUTH_DAYS, step_truth, true_value

__all__ = [
    "CHUNK_ROWS",
    "FEW_ROWS",
    "FQE_GROUPS",
    "MAX_TRUTH_DAYS",
    "MIN_ESS",
    "MULTI_DAY",
    "ONE_STEP",
    "OffPolicyResult",
    "counterfactual_column",
    "estimate",
    "fqe",
    "log_results",
    "logged_inputs",
    "own_actions",
    "step_truth",
    "table",
    "target_actions",
    "target_pscores",
    "true_value",
]
"""what this module defines, and (so callers keep one import) the names of the modules it puts
together: :mod:`evaluation.target_view`, :mod:`evaluation.fqe` and :mod:`evaluation.truth`"""


@dataclass(frozen=True)
class OffPolicyResult:
    policy: str
    estimates: dict[str, ope.Estimate]
    truth: float | None
    """the policy's true value over the logged horizon on the same clients and luck (simulated
    logs only): what ``pdwis`` and ``fqe`` estimate"""
    step_truth: float | None = None
    """its true mean daily reward on the logged states (logs with counterfactual columns only):
    what the one-step estimators estimate"""

    def truth_for(self, estimator: str) -> float | None:
        return self.step_truth if estimator in ONE_STEP else self.truth


ONE_STEP = ("ips", "snips", "dm", "dr")
"""estimators of the mean daily reward per logged client-day"""
MULTI_DAY = ("pdwis", "fqe")
"""estimators of the value per client over the logged horizon"""


def _below_floor(data: _Logged, frame: pl.DataFrame, floor: float, below_floor: str) -> None:
    """Refuse, naming the first row, a log with propensities under ``floor`` when asked to."""
    if below_floor not in ("clip", "refuse"):
        raise ValueError(f"below_floor must be 'clip' or 'refuse', got {below_floor!r}")
    if not 0.0 < floor <= 1.0:
        raise ValueError(f"pscore_floor must lie in (0, 1], got {floor}")
    low = np.flatnonzero(data.pscore < floor)
    if below_floor == "refuse" and low.size:
        row = int(data.order[low].min())
        raise ValueError(
            f"row {row} (client {frame['client_id'][row]}, day {frame['day'][row]}): pscore "
            f"{frame['pscore'][row]:g} is below the floor {floor:g} ({low.size:,} rows in all); "
            "no exploring logging policy writes such a propensity: fix the log, or clip them to "
            "the floor (below_floor='clip')"
        )


def estimate(
    frame: pl.DataFrame,
    policies: Sequence[Policy],
    setup: Setup,
    epsilon: float = 0.0,
    n_boot: int = 300,
    fqe_boot: int = 200,
    with_truth: bool = True,
    seed: int = 0,
    pscore_floor: float = ope.PSCORE_FLOOR,
    below_floor: str = "clip",
    progress: bool = False,
    yardstick: RewardConfig | None = None,
) -> list[OffPolicyResult]:
    """Each policy's off-policy estimates from ``frame`` (validated first) and its truth where known.

    One step (mean reward per logged client-day): ``ips``, ``snips``, ``dm`` and ``dr``, with a
    ridge reward model q̂(x, a) fitted on every logged row (FQE's features) for the last two;
    their intervals resample whole clients. Over the logged horizon (value per client): ``pdwis``
    and ``fqe``.

    Logged propensities below ``pscore_floor`` (a probability, default
    :data:`evaluation.ope.PSCORE_FLOOR`) are raised to it and counted in each weighted estimate
    (``below_floor='clip'``, the table's note says how many), or refused naming the first such row
    (``below_floor='refuse'``).

    ``yardstick``: the reward the truth is valued in (the run's ``eval.reward``; default the
    balanced reward); it should be the one the log's reward column was written with.

    ``progress``: a bar over each policy's three stages (fitted Q and the reward model, the
    estimators with their bootstraps, the truth), shown on a terminal.

    Memory: O(rows × observation features) for the log and O(groups × D²) for FQE's sums of one
    day (D = 153 features), whatever the number of distinct days (``benchmarks/ope_memory.py``).
    """
    validate(frame, guardrails=setup.env.guardrails)  # the log keeps the setup's own rules
    data = _Logged.of(frame, setup, seed)
    _below_floor(data, frame, pscore_floor, below_floor)
    rewards, pscore, clients = data.rewards, data.pscore, data.client_ix
    out = []
    bar = tqdm(
        total=3 * len(policies), desc="estimating", unit="stage", disable=None if progress else True
    )
    for policy in policies:
        bar.set_description(f"{policy.name}: fitted Q")
        target = _Target.of(data, policy, epsilon)
        t = target.probs
        fitted, gram, rhs = _fitted_q(data, target, 1.0, fqe_boot, seed)
        beta = np.linalg.solve(gram + np.eye(len(rhs)), rhs)  # the reward model (ridge 1)
        q_logged, q_target = _q_values(data, target, beta)
        bar.update()
        bar.set_description(f"{policy.name}: estimators")
        one = {"n_boot": n_boot, "seed": seed, "cluster": clients}
        weighted = one | {"pscore_floor": pscore_floor}
        estimates = {
            "ips": ope.ips(rewards, pscore, t, **weighted),
            "snips": ope.snips(rewards, pscore, t, **weighted),
            "dm": ope.dm(q_target, **one),
            "dr": ope.dr(rewards, pscore, t, q_logged, q_target, **weighted),
            "pdwis": ope.pdwis_rows(
                rewards,
                pscore,
                t,
                clients,
                data.day_ix,
                data.n_clients,
                data.n_days,
                n_boot=n_boot,
                seed=seed,
                pscore_floor=pscore_floor,
            ),  # fmt: skip
            "fqe": fitted,
        }
        bar.update()
        bar.set_description(f"{policy.name}: truth")
        truth = (
            true_value(policy, frame, setup, epsilon, yardstick=yardstick) if with_truth else None
        )
        step = step_truth(frame, policy.name, epsilon) if with_truth else None
        out.append(OffPolicyResult(policy.name, estimates, truth, step))
        bar.update()
    bar.close()
    return out


MIN_ESS = 30
"""below this effective sample size an importance-weighted estimate rests on a handful of logged
rows or trajectories, and its bootstrap interval cannot be trusted: the table says so"""


def table(results: Sequence[OffPolicyResult]) -> str:
    """Markdown: one row per policy and estimator, the truth where known, and a note where the
    estimate should not be read or be read with care (:func:`evaluation.ope.caveat`: no logged
    support, weights too extreme, too few effective samples, propensities clipped)."""
    lines = [
        "| policy | estimator | estimate | 95 % CI | ESS | largest weight | truth | note |",
        "|---|---|---:|---|---:|---:|---:|---|",
    ]
    for res in results:
        for name, e in res.estimates.items():
            known = res.truth_for(name)
            truth = "" if known is None else f"{known:.4g}"
            note = ope.caveat(e, MIN_ESS)
            lines.append(
                f"| {res.policy} | {name} | {e.value:.4g} | [{e.ci_low:.4g}, {e.ci_high:.4g}] | "
                f"{e.ess:,.0f} | {e.max_weight:.3g} | {truth} | {note} |"
            )
    return "\n".join(lines)


def log_results(results: Sequence[OffPolicyResult], logs: str, commit: str) -> list[str]:
    """One MLflow run per policy in MLflow's active store and experiment (the caller points
    MLflow there: :func:`experiment.tracking.setup_mlflow`), tagged ``policy``, ``command=ope``
    and ``git_commit`` (``commit``), with ``ope/<estimator>/value``, ``/ci_low``, ``/ci_high``,
    ``/ess`` and ``ope/truth`` where known; returns the run ids."""
    import math

    import mlflow

    ids = []
    for res in results:
        with mlflow.start_run(
            run_name=f"ope {res.policy}",
            tags={"policy": res.policy, "command": "ope", "git_commit": commit},
        ) as run:
            mlflow.log_param("logs", logs)
            metrics = {}
            for name, e in res.estimates.items():
                for key, v in (("value", e.value), ("ci_low", e.ci_low), ("ci_high", e.ci_high)):
                    if math.isfinite(v):
                        metrics[f"ope/{name}/{key}"] = v
                metrics[f"ope/{name}/ess"] = e.ess
            if res.truth is not None:
                metrics["ope/truth"] = res.truth
            if res.step_truth is not None:
                metrics["ope/step_truth"] = res.step_truth
            mlflow.log_metrics(metrics)
            ids.append(run.info.run_id)
    return ids
