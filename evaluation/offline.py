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

    python -m evaluation.offline logs.parquet segment_rules fixed_weekly --epsilon 0.05

Each policy's estimates go to MLflow (experiment ``cadence``, tag ``command=ope``) as
``ope/<estimator>/value``, ``ope/<estimator>/ci_low``, ``ope/<estimator>/ci_high``,
``ope/<estimator>/ess`` and, for simulated logs, ``ope/truth`` (over the horizon) and
``ope/step_truth`` (one step, where the log carries counterfactual columns).
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
from envs.spaces import JOINT_ACTIONS, JOINT_COLUMNS, multi_to_flat
from evaluation import ope
from evaluation.logs import ACTIONS, read_logs, validate
from simulate.labels import ACTION_NVEC


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


def _check_target(policy: Policy) -> None:
    if hasattr(policy, "bind"):
        raise ValueError(
            f"{policy.name} reads the world it acts in; it cannot be estimated from logs"
        )
    if getattr(policy, "history_dependent", False):
        raise ValueError(
            f"{policy.name} acts on its own memory of past sends and days, which the logged "
            "states do not hold; it cannot be estimated from logs"
        )
    if getattr(policy, "stochastic", False):
        raise ValueError(
            f"{policy.name} draws its actions at random; off-policy estimates need a target's "
            "probabilities, which it does not give (use a deterministic policy, softened with "
            "epsilon if need be)"
        )


def _own(policy: Policy, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
    _check_target(policy)
    return multi_to_flat(np.asarray(policy.act(obs, masks), dtype=np.int64))


def _probabilities(
    own: np.ndarray, logged: np.ndarray, masks: np.ndarray, epsilon: float
) -> np.ndarray:
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
    allowed = masks.sum(axis=1)
    uniform = masks[np.arange(len(logged)), logged] / allowed
    return (1.0 - epsilon) * (logged == own) + epsilon * uniform


def _observed(frame: pl.DataFrame, setup: Setup) -> tuple[np.ndarray, np.ndarray]:
    obs = frame.select(FEATURE_NAMES).to_numpy().astype(np.float32)
    return obs, joint_mask(MaskRules.from_config(setup.env.guardrails), *mask_inputs(obs))


def own_actions(policy: Policy, frame: pl.DataFrame, setup: Setup) -> np.ndarray:
    """The flat action ``policy`` takes at each logged state (masks rebuilt from the features)."""
    return _own(policy, *_observed(frame, setup))


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
    obs, masks = _observed(frame, setup)
    if own is None:
        own = _own(policy, obs, masks)
    logged = multi_to_flat(frame.select(ACTIONS).to_numpy().astype(np.int64))
    return _probabilities(own, logged, masks, epsilon)


_N_COMPONENTS = int(sum(ACTION_NVEC))
_ACTION_ONEHOT = np.zeros((len(JOINT_COLUMNS), _N_COMPONENTS))
_ACTION_ONEHOT[np.arange(len(JOINT_COLUMNS))[:, None], JOINT_COLUMNS] = 1.0
"""(361, 19) the component one-hots of each flat action (no-send: slot 0 only)"""
_SEND = (np.arange(len(JOINT_COLUMNS)) > 0).astype(float)


def _matched_groups() -> list[tuple[np.ndarray, np.ndarray]]:
    """For each matched feature: the observation columns it reads and, per flat action, which of
    them (-1 for no send): the chosen slot's open rate, the chosen channel's open and click rates
    and its sends in the last 7 days, the chosen tone's click rate."""
    from simulate.labels import CHANNELS, SLOT_KEYS, TONES

    col = {name: i for i, name in enumerate(FEATURE_NAMES)}
    slot, tone, channel = JOINT_ACTIONS[:, 0] - 1, JOINT_ACTIONS[:, 1], JOINT_ACTIONS[:, 2]
    send = JOINT_ACTIONS[:, 0] > 0
    groups = [
        ([f"ema_open_slot_{k}" for k in SLOT_KEYS], slot),
        ([f"ema_open_{c}" for c in CHANNELS], channel),
        ([f"ema_click_{c}" for c in CHANNELS], channel),
        ([f"sent_7d_{c}" for c in CHANNELS], channel),
        ([f"ema_click_tone_{t}" for t in TONES], tone),
    ]
    return [
        (np.array([col[n] for n in names]), np.where(send, which, -1)) for names, which in groups
    ]


_MATCHED = _matched_groups()


def _matched(obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """(rows, 5) each row's matched features for its flat action (0 for no send)."""
    rows = np.arange(len(obs))
    out = np.zeros((len(obs), len(_MATCHED)))
    for k, (cols, which) in enumerate(_MATCHED):
        pick = which[actions]
        out[:, k] = np.where(pick >= 0, obs[rows, cols[np.maximum(pick, 0)]], 0.0)
    return out


def _matched_mean(obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(rows, 5) the matched features averaged over each row's allowed actions."""
    allowed = masks.sum(axis=1, keepdims=True)
    out = np.zeros((len(obs), len(_MATCHED)))
    for k, (cols, which) in enumerate(_MATCHED):
        share = np.zeros((len(JOINT_ACTIONS), len(cols)))
        sends = np.flatnonzero(which >= 0)
        share[sends, which[sends]] = 1.0
        out[:, k] = ((masks @ share) / allowed * obs[:, cols]).sum(axis=1)
    return out


def _phi(
    obs: np.ndarray,
    onehot: np.ndarray,
    send: np.ndarray,
    matched: np.ndarray,
    extra: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """FQE features: 1, the observation, the action's component one-hots, observation x send,
    and the matched features (how the chosen slot, channel and tone have done for this client);
    ``extra`` columns after them. Written into one array, ``out`` where given (a large log's
    features are large, and a fresh array of them costs more to allocate than to fill)."""
    parts = [obs, onehot, None, matched] + ([extra] if extra is not None else [])
    widths = [1, obs.shape[1], onehot.shape[1], obs.shape[1], matched.shape[1]]
    widths += [extra.shape[1]] if extra is not None else []
    if out is None:
        out = np.empty((len(obs), sum(widths)))
    edges = np.cumsum([0, *widths])
    out[:, 0] = 1.0
    for k, part in enumerate(parts, start=1):
        if part is not None:
            out[:, edges[k] : edges[k + 1]] = part
    np.multiply(obs, send[:, None], out=out[:, edges[3] : edges[4]])
    return out


def _policy_features(
    own: np.ndarray,
    obs: np.ndarray,
    masks: np.ndarray,
    epsilon: float,
    extra: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """E_{a ~ π(.|x)} φ(x, a) for each row: the policy's action ``own``, ε-mixed with the mean
    over allowed actions."""
    onehot, send, matched = _ACTION_ONEHOT[own], _SEND[own], _matched(obs, own)
    if epsilon > 0:
        allowed = masks.sum(axis=1, keepdims=True)
        onehot = (1.0 - epsilon) * onehot + epsilon * (masks @ _ACTION_ONEHOT) / allowed
        send = (1.0 - epsilon) * send + epsilon * (masks @ _SEND) / allowed[:, 0]
        matched = (1.0 - epsilon) * matched + epsilon * _matched_mean(obs, masks)
    return _phi(obs, onehot, send, matched, extra, out)


FQE_GROUPS = 100
"""clients are dealt at random into this many groups (fewer where there are under 10 clients a
group); FQE's bootstrap resamples the groups"""


@dataclass
class _Logged:
    """The policy-independent pieces of a logged frame, computed once for every target."""

    frame: pl.DataFrame
    obs: np.ndarray
    masks: np.ndarray
    logged: np.ndarray
    """flat logged action of each row"""
    phi: np.ndarray
    """(rows, D) FQE features of the logged actions (those that do not depend on the target)"""
    rewards: np.ndarray
    client_ix: np.ndarray
    day_ix: np.ndarray
    n_clients: int
    n_days: int
    nxt: np.ndarray
    """row of each row's client's next logged day; -1 after churn or on the last day"""
    blocks: list[tuple[int, int, slice]]
    """(day, group, rows) for every non-empty day x client group (rows: a slice)"""
    gram: np.ndarray
    """(days, groups, D, D) Σ φφᵀ per day and group"""
    target: np.ndarray
    """(days, groups, D) Σ φ·reward per day and group"""
    first: np.ndarray
    """rows of each client's first logged day (FQE's starting states)"""
    group: np.ndarray
    """each client's group (FQE's bootstrap unit)"""
    scratch: np.ndarray | None = None

    @classmethod
    def of(cls, frame: pl.DataFrame, setup: Setup, seed: int = 0) -> _Logged:
        """Rows are put in (day, client group) order, so each block is a contiguous slice."""
        clients, client_ix = np.unique(frame["client_id"].to_numpy(), return_inverse=True)
        days, day_ix = np.unique(frame["day"].to_numpy(), return_inverse=True)
        groups = max(1, min(FQE_GROUPS, len(clients) // 10))  # at least 10 clients a group
        group = np.random.default_rng([seed, 0xF0E]).permutation(len(clients)) % groups
        key = day_ix * groups + group[client_ix]
        order = np.lexsort((client_ix, key))
        frame, client_ix, day_ix, key = frame[order], client_ix[order], day_ix[order], key[order]
        obs, masks = _observed(frame, setup)
        logged = multi_to_flat(frame.select(ACTIONS).to_numpy().astype(np.int64))
        obs64 = obs.astype(np.float64)
        phi = _phi(obs64, _ACTION_ONEHOT[logged], _SEND[logged], _matched(obs64, logged))
        row_of = np.full((len(clients), len(days)), -1)
        row_of[client_ix, day_ix] = np.arange(frame.height)
        nxt = np.full(frame.height, -1)
        later = day_ix + 1 < len(days)
        nxt[later] = row_of[client_ix[later], day_ix[later] + 1]
        nxt[frame["churned"].to_numpy()] = -1
        first_day = np.full(len(clients), len(days))
        np.minimum.at(first_day, client_ix, day_ix)
        first = row_of[np.arange(len(clients)), first_day]
        rewards = frame["reward"].to_numpy()
        d = phi.shape[1]
        gram = np.zeros((len(days), groups, d, d))
        target = np.zeros((len(days), groups, d))
        blocks = []
        bounds = np.r_[0, np.flatnonzero(np.diff(key)) + 1, frame.height]
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            t, g = divmod(int(key[lo]), groups)
            rows = slice(int(lo), int(hi))
            x = phi[rows]
            gram[t, g] = x.T @ x
            target[t, g] = x.T @ rewards[rows]
            blocks.append((t, g, rows))
        return cls(
            frame, obs, masks, logged, phi, rewards, client_ix, day_ix, len(clients), len(days), nxt, blocks,
            gram, target, first, group,
        )  # fmt: skip

    @property
    def groups(self) -> int:
        return self.gram.shape[1]


@dataclass
class _TargetView:
    """One target's view of a logged frame: the FQE features gain two that depend on the target,
    whether the logged action is the target's own (and that action is a send); Q can then tell
    following the target from departing from it, which the logged action's components alone
    describe only in part (without them FQE underestimated a trained agent by 7 %)."""

    own: np.ndarray
    phi_pi: np.ndarray
    """(rows, D + 2) E_{a~π} of the augmented features at each row's state"""
    z: np.ndarray
    """(rows, 2) the two target features of the logged actions"""
    gram: np.ndarray
    target: np.ndarray

    @classmethod
    def of(cls, data: _Logged, own: np.ndarray, epsilon: float, reuse: bool = False) -> _TargetView:
        """``reuse``: write the target's features into the log's scratch array (valid until the
        next view that reuses it; :func:`estimate` takes one target at a time)."""
        stay = (1.0 - epsilon) + epsilon / data.masks.sum(axis=1)  # P_π(a = own)
        extra = np.stack([stay, stay * _SEND[own]], axis=1)
        if reuse and data.scratch is None:
            data.scratch = np.empty((len(own), data.phi.shape[1] + 2))
        out = data.scratch if reuse else None
        phi_pi = _policy_features(own, data.obs, data.masks, epsilon, extra, out)
        agree = (data.logged == own).astype(float)
        z = np.stack([agree, agree * _SEND[data.logged]], axis=1)
        d = data.phi.shape[1]
        gram = np.zeros((*data.gram.shape[:2], d + 2, d + 2))
        gram[..., :d, :d] = data.gram
        target = np.zeros((*data.target.shape[:2], d + 2))
        target[..., :d] = data.target
        for t, g, rows in data.blocks:
            zb = z[rows]
            xz = data.phi[rows].T @ zb
            gram[t, g, :d, d:], gram[t, g, d:, :d] = xz, xz.T
            gram[t, g, d:, d:] = zb.T @ zb
            target[t, g, d:] = zb.T @ data.rewards[rows]
        return cls(own, phi_pi, z, gram, target)

    def reward_model(self, ridge: float = 1.0) -> np.ndarray:
        """Coefficients of a ridge regression of the day's reward on the augmented features, all
        logged rows: q̂(x, a) for the direct method and doubly robust."""
        a = self.gram.sum(axis=(0, 1)) + ridge * np.eye(self.gram.shape[-1])
        return np.linalg.solve(a, self.target.sum(axis=(0, 1)))

    def q_logged(self, data: _Logged, beta: np.ndarray) -> np.ndarray:
        d = data.phi.shape[1]
        return data.phi @ beta[:d] + self.z @ beta[d:]


def fqe(
    frame: pl.DataFrame | _Logged,
    policy: Policy,
    setup: Setup,
    epsilon: float = 0.0,
    ridge: float = 1.0,
    n_boot: int = 200,
    seed: int = 0,
    own: np.ndarray | None = None,
    view: _TargetView | None = None,
) -> ope.Estimate:
    """Fitted-Q evaluation over the logged horizon, with a linear Q per day (ridge regression on
    the observation, the action's components, observation × send, how the chosen slot, channel
    and tone have done for the client, and whether the action is the target's own).

    Backwards from the last logged day: Q_T−1 fits the day's reward; Q_t fits the reward plus the
    next day's E_{a'~π} Q_t+1(x', a') at the client's next logged state, and 0 where the client
    churned that day (absorbing); nothing is added after the last day (truncation). The value is
    the mean over clients of E_{a~π} Q_t(x_t, a) at each client's first logged state x_t.

    The interval: clients are dealt at random into ``FQE_GROUPS`` groups, and each of ``n_boot``
    replicates refits every day's regression on the groups resampled with replacement (a cluster
    bootstrap over clients; the regressions' sums are kept per group, so a refit costs no pass over
    the rows). ``ess`` is the number of clients, ``max_weight`` 0 (no weights).
    """
    data = frame if isinstance(frame, _Logged) else _Logged.of(frame, setup, seed)
    if view is None:
        if own is None:
            own = _own(policy, data.obs, data.masks)
        view = _TargetView.of(data, own, epsilon)
    phi_pi = view.phi_pi
    d, groups = phi_pi.shape[1], data.groups
    # Σ φ(x, a) φπ(x')ᵀ per day and group, x' the client's next logged state (0 when none)
    cross = np.zeros((data.n_days, groups, d, d))
    base = data.phi.shape[1]
    for t, g, rows in data.blocks:
        nxt = data.nxt[rows]
        has = nxt >= 0
        if has.any():
            following = phi_pi[np.maximum(nxt, 0)] * has[:, None]
            cross[t, g, :base] = data.phi[rows].T @ following
            cross[t, g, base:] = view.z[rows].T @ following
    # each client's first logged state, by its day and group (a client may enter after day 0)
    start = np.zeros((data.n_days, groups, d))
    start_group = data.group[data.client_ix[data.first]]
    np.add.at(start, (data.day_ix[data.first], start_group), phi_pi[data.first])
    count = np.bincount(start_group, minlength=groups).astype(float)

    rng = np.random.default_rng([seed, 0xB00])
    weights = np.vstack(
        [np.ones(groups)]
        + [rng.multinomial(groups, np.full(groups, 1.0 / groups)) for _ in range(n_boot)]
    )  # row 0: the estimate itself
    eye = ridge * np.eye(d)
    coef = np.zeros((len(weights), d))
    total = np.zeros(len(weights))
    for t in range(data.n_days - 1, -1, -1):
        a = (weights @ view.gram[t].reshape(groups, d * d)).reshape(-1, d, d) + eye
        c = (weights @ cross[t].reshape(groups, d * d)).reshape(-1, d, d)
        rhs = weights @ view.target[t] + np.einsum("bij,bj->bi", c, coef)
        coef = np.linalg.solve(a, rhs[..., None])[..., 0]
        total += ((weights @ start[t]) * coef).sum(axis=1)
    values = total / (weights @ count)
    lo, hi = np.percentile(values[1:], [2.5, 97.5]) if n_boot else (np.nan, np.nan)
    return ope.Estimate(
        float(values[0]), float(lo), float(hi), float(data.n_clients), 0.0, data.n_clients
    )


def _grid(data: _Logged, values: np.ndarray) -> np.ndarray:
    """(clients, days) array of ``values`` (one per logged row); 0 where nothing was logged."""
    grid = np.zeros((data.n_clients, data.n_days))
    grid[data.client_ix, data.day_ix] = values
    return grid


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


ONE_STEP = ("ips", "snips", "dm", "dr")
"""estimators of the mean daily reward per logged client-day"""
MULTI_DAY = ("pdwis", "fqe")
"""estimators of the value per client over the logged horizon"""


def counterfactual_column(policy_name: str) -> str:
    """The column :func:`evaluation.logged.log_policy` writes with a target's counterfactual
    reward: the day's reward had that policy's own action been taken, same client and luck."""
    return f"counterfactual_{policy_name}"


UNIFORM_COUNTERFACTUAL = counterfactual_column("uniform")
"""the day's reward under an action drawn uniformly from the allowed ones (ε-soft targets)"""


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


def estimate(
    frame: pl.DataFrame,
    policies: Sequence[Policy],
    setup: Setup,
    epsilon: float = 0.0,
    n_boot: int = 300,
    fqe_boot: int = 200,
    with_truth: bool = True,
    seed: int = 0,
) -> list[OffPolicyResult]:
    """Each policy's off-policy estimates from ``frame`` (validated first) and its truth where known.

    One step (mean reward per logged client-day): ``ips``, ``snips``, ``dm`` and ``dr``, with a
    ridge reward model q̂(x, a) fitted on every logged row (FQE's features) for the last two;
    their intervals resample whole clients. Over the logged horizon (value per client): ``pdwis``
    and ``fqe``.
    """
    validate(frame)
    data = _Logged.of(frame, setup, seed)
    frame = data.frame
    rewards, pscore = frame["reward"].to_numpy(), frame["pscore"].to_numpy()
    alive = np.zeros((data.n_clients, data.n_days), dtype=bool)
    alive[data.client_ix, data.day_ix] = True
    r_grid, p_grid = _grid(data, rewards), _grid(data, pscore)
    clients = data.client_ix
    out = []
    for policy in policies:
        own = _own(policy, data.obs, data.masks)
        t = _probabilities(own, data.logged, data.masks, epsilon)
        t_grid = _grid(data, t)
        view = _TargetView.of(data, own, epsilon, reuse=True)
        beta = view.reward_model()
        q_logged, q_target = view.q_logged(data, beta), view.phi_pi @ beta
        one = {"n_boot": n_boot, "seed": seed, "cluster": clients}
        estimates = {
            "ips": ope.ips(rewards, pscore, t, **one),
            "snips": ope.snips(rewards, pscore, t, **one),
            "dm": ope.dm(q_target, **one),
            "dr": ope.dr(rewards, pscore, t, q_logged, q_target, **one),
            "pdwis": ope.pdwis(
                r_grid, np.where(alive, p_grid, 1.0), t_grid, alive, n_boot=n_boot, seed=seed
            ),
            "fqe": fqe(data, policy, setup, epsilon, n_boot=fqe_boot, seed=seed, view=view),
        }
        truth = true_value(policy, frame, setup, epsilon) if with_truth else None
        step = step_truth(frame, policy.name, epsilon) if with_truth else None
        out.append(OffPolicyResult(policy.name, estimates, truth, step))
    return out


MIN_ESS = 30
"""below this effective sample size an importance-weighted estimate rests on a handful of logged
rows or trajectories, and its bootstrap interval cannot be trusted: the table says so"""


def table(results: Sequence[OffPolicyResult]) -> str:
    """Markdown: one row per policy and estimator, the truth where known, and a note where the
    estimate should not be read (no support, or too few effective samples)."""
    lines = [
        "| policy | estimator | estimate | 95 % CI | ESS | largest weight | truth | note |",
        "|---|---|---:|---|---:|---:|---:|---|",
    ]
    for res in results:
        for name, e in res.estimates.items():
            known = res.truth_for(name)
            truth = "" if known is None else f"{known:.4g}"
            note = ""
            if e.ess == 0 or not np.isfinite(e.value):
                note = "no logged support"
            elif e.ess < MIN_ESS:
                note = f"ESS < {MIN_ESS}: unreliable"
            lines.append(
                f"| {res.policy} | {name} | {e.value:.4g} | [{e.ci_low:.4g}, {e.ci_high:.4g}] | "
                f"{e.ess:,.0f} | {e.max_weight:.3g} | {truth} | {note} |"
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
            if res.step_truth is not None:
                metrics["ope/step_truth"] = res.step_truth
            mlflow.log_metrics(metrics)
            ids.append(run.info.run_id)
    return ids


def main(argv: list[str] | None = None) -> int:
    from evaluate import resolve_policy

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", help="a logged Parquet file (docs/logged-data.md)")
    parser.add_argument(
        "policies",
        nargs="+",
        help="heuristic or bandit names (bandits are trained first), run:<id>",
    )
    parser.add_argument("--epsilon", type=float, default=0.0, help="ε-soften the targets")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: mlflow.db)")
    parser.add_argument("--no-mlflow", action="store_true", help="print only")
    args = parser.parse_args(argv)
    try:
        frame = read_logs(args.logs)
        setup = load_setup()
        policies = [resolve_policy(spec, setup)[0] for spec in args.policies]
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
