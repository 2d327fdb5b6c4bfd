"""Estimate policies' values from a logged dataset, and (for simulated logs) beside the truth.

A target policy is read through its action probabilities at the logged states: a deterministic
policy (every heuristic, a trained agent acting greedily) gives 1 for its own action and 0 for
any other, or, with ``epsilon > 0``, the ε-soft version (1 − ε on its action plus ε spread over
the actions the guardrails allow), which keeps weights finite where the policies disagree. The
guardrail masks of each logged row are rebuilt from its features (opt-outs, recent sends,
consent tier), as the serving runtime does.

Estimators: ``snips`` (one step: the mean daily reward per client-day on the logged states) and
``pdwis`` (the value over the logged horizon per client, the quantity evaluation reports as
``eval/value`` for the same number of days), each with a 95 % bootstrap interval.

    python -m evaluation.offline logs.parquet segment_rules fixed_weekly --epsilon 0.05

Each policy's estimates go to MLflow (experiment ``cadence``, tag ``command=ope``) as
``ope/<estimator>/value``, ``ope/<estimator>/ci_low``, ``ope/<estimator>/ci_high``,
``ope/<estimator>/ess`` and, for simulated logs, ``ope/truth``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from agents.base import Policy
from envs.config import RewardConfig, Setup, load_setup
from envs.core import CadenceCore
from envs.features import FEATURE_NAMES
from envs.masks import MaskRules, joint_mask, mask_inputs
from envs.spaces import multi_to_flat
from evaluation import ope
from evaluation.logs import ACTIONS, read_logs, validate


@dataclass(frozen=True)
class OffPolicyResult:
    policy: str
    estimates: dict[str, ope.Estimate]
    truth: float | None
    """the policy's true value over the logged horizon on the same clients and luck (simulated
    logs only)"""


def target_pscores(
    policy: Policy, frame: pl.DataFrame, setup: Setup, epsilon: float = 0.0
) -> np.ndarray:
    """Probability of each logged action under ``policy`` (ε-soft where ``epsilon`` > 0)."""
    if hasattr(policy, "bind"):
        raise ValueError(
            f"{policy.name} reads the world it acts in; it cannot be estimated from logs"
        )
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
    obs = frame.select(FEATURE_NAMES).to_numpy().astype(np.float32)
    masks = joint_mask(MaskRules.from_config(setup.env.guardrails), *mask_inputs(obs))
    own = multi_to_flat(np.asarray(policy.act(obs, masks), dtype=np.int64))
    logged = multi_to_flat(frame.select(ACTIONS).to_numpy().astype(np.int64))
    allowed = masks.sum(axis=1)
    return (1.0 - epsilon) * (logged == own) + epsilon * masks[
        np.arange(len(logged)), logged
    ] / allowed


def _grid(frame: pl.DataFrame, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(clients, days) array of ``values`` and the mask of logged (living) client-days."""
    clients, client_ix = np.unique(frame["client_id"].to_numpy(), return_inverse=True)
    days, day_ix = np.unique(frame["day"].to_numpy(), return_inverse=True)
    grid = np.zeros((len(clients), len(days)))
    alive = np.zeros((len(clients), len(days)), dtype=bool)
    grid[client_ix, day_ix] = values
    alive[client_ix, day_ix] = True
    return grid, alive


def true_value(
    policy: Policy, frame: pl.DataFrame, setup: Setup, epsilon: float = 0.0
) -> float | None:
    """The (ε-soft, where ``epsilon`` > 0) policy's mean value per client over the log's days, on
    the log's own simulated clients and luck; None unless the log came from
    :func:`evaluation.logged.log_policy` (it carries the ``seed`` column and the simulator's ids)."""
    from evaluation.logged import LOG_CLIENT_OFFSET, log_policy

    if "seed" not in frame.columns:
        return None
    ids = np.unique(frame["client_id"].to_numpy())
    n = len(ids)
    if not np.array_equal(ids, LOG_CLIENT_OFFSET + np.arange(n)):
        return None
    days = int(frame["day"].max()) + 1
    if epsilon > 0:  # the soft policy's own rollout: its rewards are the truth
        soft = log_policy(policy, setup, n, days, int(frame["seed"][0]), epsilon)
        return float(soft["reward"].sum() / n)
    core = CadenceCore(setup, n, autoreset=False, client_id_offset=LOG_CLIENT_OFFSET)
    obs = core.reset(int(frame["seed"][0]))
    weights = RewardConfig().weights()
    value, gone = np.zeros(n), np.zeros(n, dtype=bool)
    for _ in range(days):
        r = core.step(np.asarray(policy.act(obs, core.joint_masks()), dtype=np.int64))
        value += ~gone * sum(w * r.outcomes[k] for k, w in weights.items())
        gone |= r.outcomes["churned"]
        obs = r.obs
    return float(value.mean())


def estimate(
    frame: pl.DataFrame,
    policies: Sequence[Policy],
    setup: Setup,
    epsilon: float = 0.0,
    n_boot: int = 300,
) -> list[OffPolicyResult]:
    """Each policy's off-policy estimates from ``frame`` (validated first) and its truth where known."""
    validate(frame)
    frame = frame.sort("client_id", "day")
    reward, pscore = frame["reward"].to_numpy(), frame["pscore"].to_numpy()
    r_grid, alive = _grid(frame, reward)
    p_grid, _ = _grid(frame, pscore)
    out = []
    for policy in policies:
        t = target_pscores(policy, frame, setup, epsilon)
        t_grid, _ = _grid(frame, t)
        estimates = {
            "snips": ope.snips(reward, pscore, t, n_boot=n_boot),
            "pdwis": ope.pdwis(r_grid, np.where(alive, p_grid, 1.0), t_grid, alive, n_boot=n_boot),
        }
        truth = true_value(policy, frame, setup, epsilon)
        out.append(OffPolicyResult(policy.name, estimates, truth))
    return out


def table(results: Sequence[OffPolicyResult]) -> str:
    lines = [
        "| policy | estimator | estimate | 95 % CI | ESS | largest weight | truth |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for res in results:
        for name, e in res.estimates.items():
            truth = "" if res.truth is None or name != "pdwis" else f"{res.truth:.4g}"
            lines.append(
                f"| {res.policy} | {name} | {e.value:.4g} | [{e.ci_low:.4g}, {e.ci_high:.4g}] | "
                f"{e.ess:,.0f} | {e.max_weight:.3g} | {truth} |"
            )
    return "\n".join(lines)


def log_results(results: Sequence[OffPolicyResult], logs: str, uri: str | None) -> list[str]:
    """One MLflow run per policy (experiment ``cadence``, tags ``policy``, ``command=ope``) with
    ``ope/<estimator>/value``, ``/ci_low``, ``/ci_high``, ``/ess`` and ``ope/truth`` where known."""
    import math

    import mlflow

    from experiment.tracking import git_commit, setup_mlflow

    setup_mlflow(uri, "cadence")
    ids = []
    for res in results:
        with mlflow.start_run(
            run_name=f"ope {res.policy}",
            tags={"policy": res.policy, "command": "ope", "git_commit": git_commit()},
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
            mlflow.log_metrics(metrics)
            ids.append(run.info.run_id)
    return ids


def main(argv: list[str] | None = None) -> int:
    from agents.config import AgentConfig
    from agents.registry import make_policy

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", help="a logged Parquet file (docs/logged-data.md)")
    parser.add_argument("policies", nargs="+", help="heuristic or bandit names")
    parser.add_argument("--epsilon", type=float, default=0.0, help="ε-soften the targets")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: mlflow.db)")
    parser.add_argument("--no-mlflow", action="store_true", help="print only")
    args = parser.parse_args(argv)
    try:
        frame = read_logs(args.logs)
        setup = load_setup()
        policies = [make_policy(AgentConfig(name=name)) for name in args.policies]
        results = estimate(frame, policies, setup, args.epsilon)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table(results))
    if not args.no_mlflow:
        ids = log_results(results, args.logs, args.tracking_uri)
        print(f"MLflow runs (experiment cadence): {', '.join(ids)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
