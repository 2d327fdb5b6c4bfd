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
from envs.reward import reward
from envs.spaces import JOINT_COLUMNS, multi_to_flat
from evaluation import ope
from evaluation.logs import ACTIONS, read_logs, validate
from simulate.labels import ACTION_NVEC


@dataclass(frozen=True)
class OffPolicyResult:
    policy: str
    estimates: dict[str, ope.Estimate]
    truth: float | None
    """the policy's true value over the logged horizon on the same clients and luck (simulated
    logs only)"""


def _check_target(policy: Policy) -> None:
    if hasattr(policy, "bind"):
        raise ValueError(
            f"{policy.name} reads the world it acts in; it cannot be estimated from logs"
        )
    if getattr(policy, "stochastic", False):
        raise ValueError(
            f"{policy.name} draws its actions at random; off-policy estimates need a target's "
            "probabilities, which it does not give (use a deterministic policy, softened with "
            "epsilon if need be)"
        )


def own_actions(policy: Policy, frame: pl.DataFrame, setup: Setup) -> np.ndarray:
    """The flat action ``policy`` takes at each logged state (masks rebuilt from the features)."""
    _check_target(policy)
    obs = frame.select(FEATURE_NAMES).to_numpy().astype(np.float32)
    masks = joint_mask(MaskRules.from_config(setup.env.guardrails), *mask_inputs(obs))
    return multi_to_flat(np.asarray(policy.act(obs, masks), dtype=np.int64))


def target_pscores(
    policy: Policy,
    frame: pl.DataFrame,
    setup: Setup,
    epsilon: float = 0.0,
    own: np.ndarray | None = None,
) -> np.ndarray:
    """Probability of each logged action under ``policy`` (ε-soft where ``epsilon`` > 0);
    ``own``: the policy's actions at the logged states when already computed."""
    _check_target(policy)
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
    obs = frame.select(FEATURE_NAMES).to_numpy().astype(np.float32)
    masks = joint_mask(MaskRules.from_config(setup.env.guardrails), *mask_inputs(obs))
    if own is None:
        own = multi_to_flat(np.asarray(policy.act(obs, masks), dtype=np.int64))
    logged = multi_to_flat(frame.select(ACTIONS).to_numpy().astype(np.int64))
    allowed = masks.sum(axis=1)
    return (1.0 - epsilon) * (logged == own) + epsilon * masks[
        np.arange(len(logged)), logged
    ] / allowed


_N_COMPONENTS = int(sum(ACTION_NVEC))
_ACTION_ONEHOT = np.zeros((len(JOINT_COLUMNS), _N_COMPONENTS))
_ACTION_ONEHOT[np.arange(len(JOINT_COLUMNS))[:, None], JOINT_COLUMNS] = 1.0
"""(361, 19) the component one-hots of each flat action (no-send: slot 0 only)"""
_SEND = (np.arange(len(JOINT_COLUMNS)) > 0).astype(float)


def _phi(obs: np.ndarray, onehot: np.ndarray, send: np.ndarray) -> np.ndarray:
    """FQE features: 1, the observation, the action's component one-hots, observation x send."""
    return np.concatenate([np.ones((len(obs), 1)), obs, onehot, obs * send[:, None]], axis=1)


def _policy_features(
    own: np.ndarray, obs: np.ndarray, masks: np.ndarray, epsilon: float
) -> np.ndarray:
    """E_{a ~ π(.|x)} φ(x, a) for each row: the policy's action ``own``, ε-mixed with the mean
    over allowed actions."""
    allowed = masks.sum(axis=1, keepdims=True)
    onehot = (1.0 - epsilon) * _ACTION_ONEHOT[own] + epsilon * (masks @ _ACTION_ONEHOT) / allowed
    send = (1.0 - epsilon) * _SEND[own] + epsilon * (masks @ _SEND) / allowed[:, 0]
    return _phi(obs, onehot, send)


def fqe(
    frame: pl.DataFrame,
    policy: Policy,
    setup: Setup,
    epsilon: float = 0.0,
    ridge: float = 1.0,
    n_boot: int = 50,
    seed: int = 0,
    own: np.ndarray | None = None,
) -> ope.Estimate:
    """Fitted-Q evaluation over the logged horizon, with a linear Q per day (ridge regression on
    the observation, the action's components and observation × send).

    Backwards from the last logged day: Q_T−1 fits the day's reward; Q_t fits the reward plus the
    next day's E_{a'~π} Q_t+1(x', a') at the client's next logged state, and 0 where the client
    churned that day (absorbing); nothing is added after the last day (truncation). The value is
    the mean over clients of E_{a~π} Q_0(x_0, a). The interval refits on clients resampled with
    replacement (``n_boot`` refits); ``ess`` is the number of clients, ``max_weight`` 0 (no weights).
    """
    frame = frame.sort("client_id", "day")
    days = np.unique(frame["day"].to_numpy())
    guard = MaskRules.from_config(setup.env.guardrails)
    clients, client_ix = np.unique(frame["client_id"].to_numpy(), return_inverse=True)
    day_ix = np.searchsorted(days, frame["day"].to_numpy())
    obs = frame.select(FEATURE_NAMES).to_numpy().astype(np.float64)
    logged = multi_to_flat(frame.select(ACTIONS).to_numpy().astype(np.int64))
    phi = _phi(obs, _ACTION_ONEHOT[logged], _SEND[logged])
    masks = joint_mask(guard, *mask_inputs(obs.astype(np.float32)))
    if own is None:
        own = own_actions(policy, frame, setup)
    phi_pi = _policy_features(own, obs.astype(np.float32), masks, epsilon)
    rewards = frame["reward"].to_numpy()
    churned = frame["churned"].to_numpy()
    # row of each client's next logged day (-1: none)
    row_of = np.full((len(clients), len(days)), -1)
    row_of[client_ix, day_ix] = np.arange(frame.height)
    nxt = np.full(frame.height, -1)
    later = day_ix + 1 < len(days)
    nxt[later] = row_of[client_ix[later], day_ix[later] + 1]
    nxt[churned] = -1

    def value_on(chosen_clients: np.ndarray) -> float:
        weight = np.bincount(chosen_clients, minlength=len(clients)).astype(float)
        w_rows = weight[client_ix]
        q_next = np.zeros(frame.height)  # E_pi Q_{t+1} at each row's state, filled day by day
        coef = None
        for t in range(len(days) - 1, -1, -1):
            rows = np.flatnonzero((day_ix == t) & (w_rows > 0))
            target = rewards[rows] + np.where(nxt[rows] >= 0, q_next[np.maximum(nxt[rows], 0)], 0.0)
            x, sw = phi[rows], w_rows[rows]
            a = (x * sw[:, None]).T @ x + ridge * np.eye(x.shape[1])
            coef = np.linalg.solve(a, (x * sw[:, None]).T @ target)
            today = np.flatnonzero(day_ix == t)
            q_next[today] = phi_pi[today] @ coef
        first = np.flatnonzero(day_ix == 0)
        return float(np.average(q_next[first], weights=weight[client_ix[first]]))

    every = np.arange(len(clients))
    rng = np.random.default_rng(seed)
    boots = [value_on(rng.integers(0, len(clients), len(clients))) for _ in range(n_boot)]
    lo, hi = np.percentile(boots, [2.5, 97.5]) if n_boot else (np.nan, np.nan)
    return ope.Estimate(
        value_on(every), float(lo), float(hi), float(len(clients)), 0.0, len(clients)
    )


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
        value += ~gone * reward(r.outcomes, weights)
        gone |= r.outcomes["churned"]
        obs = r.obs
    return float(value.mean())


def estimate(
    frame: pl.DataFrame,
    policies: Sequence[Policy],
    setup: Setup,
    epsilon: float = 0.0,
    n_boot: int = 300,
    fqe_boot: int = 50,
    with_truth: bool = True,
) -> list[OffPolicyResult]:
    """Each policy's off-policy estimates from ``frame`` (validated first) and its truth where known."""
    validate(frame)
    frame = frame.sort("client_id", "day")
    rewards, pscore = frame["reward"].to_numpy(), frame["pscore"].to_numpy()
    r_grid, alive = _grid(frame, rewards)
    p_grid, _ = _grid(frame, pscore)
    out = []
    for policy in policies:
        own = own_actions(policy, frame, setup)
        t = target_pscores(policy, frame, setup, epsilon, own)
        t_grid, _ = _grid(frame, t)
        estimates = {
            "snips": ope.snips(rewards, pscore, t, n_boot=n_boot),
            "pdwis": ope.pdwis(r_grid, np.where(alive, p_grid, 1.0), t_grid, alive, n_boot=n_boot),
            "fqe": fqe(frame, policy, setup, epsilon, n_boot=fqe_boot, own=own),
        }
        truth = true_value(policy, frame, setup, epsilon) if with_truth else None
        out.append(OffPolicyResult(policy.name, estimates, truth))
    return out


def table(results: Sequence[OffPolicyResult]) -> str:
    lines = [
        "| policy | estimator | estimate | 95 % CI | ESS | largest weight | truth |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for res in results:
        for name, e in res.estimates.items():
            truth = "" if res.truth is None or name == "snips" else f"{res.truth:.4g}"
            lines.append(
                f"| {res.policy} | {name} | {e.value:.4g} | [{e.ci_low:.4g}, {e.ci_high:.4g}] | "
                f"{e.ess:,.0f} | {e.max_weight:.3g} | {truth} |"
            )
    return "\n".join(lines)


def log_results(
    results: Sequence[OffPolicyResult], logs: str, uri: str | None, experiment: str = "cadence"
) -> list[str]:
    """One MLflow run per policy (experiment ``cadence`` unless named, tags ``policy``, ``command=ope``) with
    ``ope/<estimator>/value``, ``/ci_low``, ``/ci_high``, ``/ess`` and ``ope/truth`` where known."""
    import math

    import mlflow

    from experiment.tracking import git_commit, setup_mlflow

    setup_mlflow(uri, experiment)
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
