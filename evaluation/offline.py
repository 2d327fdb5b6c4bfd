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
below :data:`evaluation.ope.PSCORE_FLOOR` are clipped to it (or refused, ``--refuse-below-floor``)
and the table counts them; a simulated log's truth is rolled out over the log's own span of days,
at most :data:`MAX_TRUTH_DAYS`.

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
from envs.features import FEATURE_NAMES
from envs.masks import MaskRules, joint_mask, mask_inputs
from envs.reward import reward
from envs.spaces import JOINT_ACTIONS, JOINT_COLUMNS, multi_to_flat
from evaluation import ope
from evaluation.logged import (
    LOG_CLIENT_OFFSET,
    UNIFORM_COUNTERFACTUAL,
    counterfactual_column,
    log_policy,
)
from evaluation.logs import ACTIONS, read_logs, validate
from evaluation.rollout import begin_rollout
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
    """Refuse, by name, a target whose value logged states cannot give: one that reads the world
    (``privileged``), acts on its own memory (``history_dependent``) or draws (``stochastic``)."""
    if policy.privileged:
        raise ValueError(
            f"{policy.name} reads the world it acts in; it cannot be estimated from logs"
        )
    if policy.history_dependent:
        raise ValueError(
            f"{policy.name} acts on its own memory of past sends and days, which the logged "
            "states do not hold; it cannot be estimated from logs"
        )
    if policy.stochastic:
        raise ValueError(
            f"{policy.name} draws its actions at random; off-policy estimates need a target's "
            "probabilities, which it does not give (use a deterministic policy, softened with "
            "epsilon if need be)"
        )


def target_actions(policy: Policy, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(rows,) the flat action (0..360) a target ``policy`` takes at (rows, OBS_DIM) observations
    within (rows, 361) masks; a :class:`ValueError` naming it where it cannot be estimated from
    logs (privileged, history-dependent or stochastic)."""
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


def logged_inputs(frame: pl.DataFrame, setup: Setup) -> tuple[np.ndarray, np.ndarray]:
    """A log's (rows, OBS_DIM) float32 observations and (rows, 361) bool joint masks, the masks
    rebuilt from the features under ``setup``'s guardrails (as the serving runtime does)."""
    obs = frame.select(FEATURE_NAMES).to_numpy().astype(np.float32)
    return obs, joint_mask(MaskRules.from_config(setup.env.guardrails), *mask_inputs(obs))


def own_actions(policy: Policy, frame: pl.DataFrame, setup: Setup) -> np.ndarray:
    """The flat action ``policy`` takes at each logged state (masks rebuilt from the features)."""
    return target_actions(policy, *logged_inputs(frame, setup))


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
    obs, masks = logged_inputs(frame, setup)
    if own is None:
        own = target_actions(policy, obs, masks)
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
_N_FEATURES = 1 + 2 * len(FEATURE_NAMES) + _N_COMPONENTS + len(_MATCHED)
"""FQE's features of a (state, action) before the two target features (D = 151)"""


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

CHUNK_ROWS = 8_192
"""logged rows whose features are built at a time: 8,192 rows of 153 float64 features is 10 MB,
so memory stays O(rows × observation features) however the rows fall into days"""

MAX_TRUTH_DAYS = 3_661
"""longest span (days, first to last logged day) a simulated log's truth is rolled out over: ten
years of daily decisions, :mod:`evaluation.logs`' day horizon. A longer span is a mis-dated row,
and its rollout would run for hours."""


def _columns(frame: pl.DataFrame, names: Sequence[str], order: np.ndarray, dtype) -> np.ndarray:
    """(rows, len(names)) the named columns in ``order``, filled column by column (no full-width
    temporary of another dtype)."""
    out = np.empty((len(order), len(names)), dtype=dtype)
    for j, name in enumerate(names):
        out[:, j] = frame[name].to_numpy()[order]
    return out


def _chunks(lo: int, hi: int) -> list[slice]:
    return [slice(a, min(hi, a + CHUNK_ROWS)) for a in range(lo, hi, CHUNK_ROWS)]


@dataclass
class _Logged:
    """The policy-independent pieces of a logged frame, computed once for every target.

    Rows are put in (day, client group, client) order, so each day and each (day, group) block is
    a contiguous run of rows. Everything kept is one entry per row (or per client) except the
    observation features and the guardrail masks (packed eight actions a byte): FQE's features and
    sums are built a chunk of rows and a day at a time, so memory does not grow with the number of
    distinct days."""

    obs: np.ndarray
    """(rows, features) float32 observation of each row"""
    packed_masks: np.ndarray
    """(rows, 46) uint8 the guardrail mask over the 361 flat actions, eight to a byte"""
    allowed: np.ndarray
    """(rows,) how many flat actions the guardrails allow (no-send included)"""
    logged: np.ndarray
    """flat logged action of each row"""
    logged_allowed: np.ndarray
    """(rows,) whether the guardrails allow the logged action"""
    rewards: np.ndarray
    pscore: np.ndarray
    client_ix: np.ndarray
    day_ix: np.ndarray
    """index of each row's day among the log's distinct days (FQE's and PDWIS's step)"""
    n_clients: int
    n_days: int
    nxt: np.ndarray
    """row of each row's client's next logged day; -1 after churn, on the last day, or where the
    client has no row on the next logged day"""
    blocks: np.ndarray
    """(blocks, 4) day, group, first row, end row of every non-empty day x client group"""
    day_blocks: np.ndarray
    """(days + 1,) the blocks of day t are ``blocks[day_blocks[t]:day_blocks[t + 1]]``"""
    first: np.ndarray
    """row of each client's first logged day (FQE's starting states)"""
    group: np.ndarray
    """each client's group (FQE's bootstrap unit)"""
    groups: int
    order: np.ndarray
    """the frame's row of each of these rows"""

    @classmethod
    def of(cls, frame: pl.DataFrame, setup: Setup, seed: int = 0) -> _Logged:
        clients, client_ix = np.unique(frame["client_id"].to_numpy(), return_inverse=True)
        days, day_ix = np.unique(frame["day"].to_numpy(), return_inverse=True)
        groups = max(1, min(FQE_GROUPS, len(clients) // 10))  # at least 10 clients a group
        group = np.random.default_rng([seed, 0xF0E]).permutation(len(clients)) % groups
        key = day_ix * groups + group[client_ix]
        order = np.lexsort((client_ix, key))
        client_ix, day_ix, key = client_ix[order], day_ix[order], key[order]
        obs = _columns(frame, FEATURE_NAMES, order, np.float32)
        logged = multi_to_flat(_columns(frame, ACTIONS, order, np.int64))
        packed, allowed, logged_allowed = _masks(obs, logged, setup)
        nxt, first = _next_rows(client_ix, day_ix, frame["churned"].to_numpy()[order])
        bounds = np.r_[0, np.flatnonzero(np.diff(key)) + 1, len(key)]
        lo = bounds[:-1]
        blocks = np.stack([key[lo] // groups, key[lo] % groups, lo, bounds[1:]], axis=1)
        day_blocks = np.searchsorted(blocks[:, 0], np.arange(len(days) + 1))
        rewards = frame["reward"].to_numpy().astype(np.float64)[order]
        pscore = frame["pscore"].to_numpy().astype(np.float64)[order]
        return cls(
            obs, packed, allowed, logged, logged_allowed, rewards, pscore, client_ix, day_ix,
            len(clients), len(days), nxt, blocks, day_blocks, first, group, groups, order,
        )  # fmt: skip

    def masks_of(self, rows: slice | np.ndarray) -> np.ndarray:
        """(len(rows), 361) bool guardrail masks of the given rows."""
        bits = np.unpackbits(self.packed_masks[rows], axis=1, count=len(JOINT_ACTIONS))
        return bits.view(bool)

    @property
    def masks(self) -> np.ndarray:
        """(rows, 361) every row's mask at once (for inspection; the estimators take chunks)."""
        return self.masks_of(slice(None))

    @property
    def phi(self) -> np.ndarray:
        """(rows, D) every row's FQE features of its logged action at once (for inspection)."""
        return np.concatenate([_logged_phi(self, c) for c in _chunks(0, len(self.logged))])


def _masks(obs: np.ndarray, logged: np.ndarray, setup: Setup):
    """Each row's guardrail mask rebuilt from its features, packed, its allowed count, and whether
    it allows the logged action; a chunk of rows at a time (a full mask is 361 bytes a row)."""
    rules = MaskRules.from_config(setup.env.guardrails)
    n = len(obs)
    packed = np.empty((n, (len(JOINT_ACTIONS) + 7) // 8), dtype=np.uint8)
    allowed = np.empty(n, dtype=np.int64)
    logged_allowed = np.empty(n, dtype=bool)
    for rows in _chunks(0, n):
        masks = joint_mask(rules, *mask_inputs(obs[rows]))
        packed[rows] = np.packbits(masks, axis=1)
        allowed[rows] = masks.sum(axis=1)
        logged_allowed[rows] = masks[np.arange(len(masks)), logged[rows]]
    return packed, allowed, logged_allowed


def _next_rows(
    client_ix: np.ndarray, day_ix: np.ndarray, churned: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(each row's client's row on the next logged day or -1, each client's first row)."""
    by_client = np.lexsort((day_ix, client_ix))
    earlier, later = by_client[:-1], by_client[1:]
    same = client_ix[later] == client_ix[earlier]
    step = same & (day_ix[later] == day_ix[earlier] + 1)
    nxt = np.full(len(client_ix), -1)
    nxt[earlier[step]] = later[step]
    nxt[churned] = -1
    first = by_client[np.r_[True, ~same]]  # clients are 0..n-1, in order
    return nxt, first


@dataclass
class _Target:
    """One target's view of a logged frame: its own action and its probability of the logged one
    at each row. FQE's features gain two that depend on the target, whether the logged action is
    the target's own (and that action is a send); Q can then tell following the target from
    departing from it, which the logged action's components alone describe only in part (without
    them FQE underestimated a trained agent by 7 %)."""

    own: np.ndarray
    probs: np.ndarray
    """(rows,) the target's probability of the logged action"""
    epsilon: float

    @classmethod
    def of(cls, data: _Logged, policy: Policy, epsilon: float = 0.0) -> _Target:
        _check_target(policy)
        own = np.empty(len(data.logged), dtype=np.int64)
        for rows in _chunks(0, len(own)):  # the target acts on each row alone
            own[rows] = target_actions(policy, data.obs[rows], data.masks_of(rows))
        return cls.with_actions(data, own, epsilon)

    @classmethod
    def with_actions(cls, data: _Logged, own: np.ndarray, epsilon: float = 0.0) -> _Target:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
        uniform = data.logged_allowed / data.allowed
        probs = (1.0 - epsilon) * (data.logged == own) + epsilon * uniform
        return cls(own, probs, epsilon)


def _logged_phi(data: _Logged, rows: slice | np.ndarray) -> np.ndarray:
    """(rows, D) FQE features of the logged actions (those that do not depend on the target)."""
    obs, logged = data.obs[rows].astype(np.float64), data.logged[rows]
    return _phi(obs, _ACTION_ONEHOT[logged], _SEND[logged], _matched(obs, logged))


def _logged_features(data: _Logged, target: _Target, rows: slice | np.ndarray) -> np.ndarray:
    """(rows, D + 2) FQE features of the logged actions, with the two target features."""
    obs, logged = data.obs[rows].astype(np.float64), data.logged[rows]
    agree = (logged == target.own[rows]).astype(float)
    z = np.stack([agree, agree * _SEND[logged]], axis=1)
    return _phi(obs, _ACTION_ONEHOT[logged], _SEND[logged], _matched(obs, logged), z)


def _target_features(data: _Logged, target: _Target, rows: slice | np.ndarray) -> np.ndarray:
    """(rows, D + 2) E_{a~π} of the augmented features at each row's state."""
    own, eps = target.own[rows], target.epsilon
    stay = (1.0 - eps) + eps / data.allowed[rows]  # P_π(a = own)
    extra = np.stack([stay, stay * _SEND[own]], axis=1)
    obs = data.obs[rows].astype(np.float64)
    return _policy_features(own, obs, data.masks_of(rows), eps, extra)


@dataclass
class _DayRows:
    """A day's rows themselves, kept where they are fewer than the features (see
    :func:`_refit_few`)."""

    x: np.ndarray
    """(n, D') logged features"""
    following: np.ndarray
    """(n, D') target features at the client's next logged state (0 when none)"""
    rewards: np.ndarray
    block: np.ndarray
    """(n,) index of each row's group among the day's ``groups``"""


@dataclass
class _DaySums:
    """One day's regression sums per client group present that day (``groups``)."""

    groups: np.ndarray
    gram: np.ndarray
    """(k, D', D') Σ φφᵀ of the logged features"""
    target: np.ndarray
    """(k, D') Σ φ·reward"""
    cross: np.ndarray
    """(k, D', D') Σ φ(x, a) φπ(x')ᵀ, x' the client's next logged state (0 when none)"""
    start: np.ndarray
    """(k, D') Σ φπ over the clients whose first logged state is this day"""
    rows: _DayRows | None = None
    """the rows themselves, on a day with fewer rows than features"""


FEW_ROWS = _N_FEATURES + 2
"""a day with fewer logged rows than this (FQE's feature count) is refitted through its rows'
kernel (an n x n solve per replicate) rather than its D x D sums: the same regression, far
cheaper where days are many and thin"""


def _day_sums(data: _Logged, target: _Target, day: int, is_first: np.ndarray) -> _DaySums:
    """The sums of day ``day``, a chunk of rows at a time (the next day's target features are
    built for the rows that follow one of these, so no day's features are kept, except on a day
    of fewer than :data:`FEW_ROWS` rows)."""
    blocks = data.blocks[data.day_blocks[day] : data.day_blocks[day + 1]]
    d = _N_FEATURES + 2
    k = len(blocks)
    sums = _DaySums(
        blocks[:, 1], np.zeros((k, d, d)), np.zeros((k, d)), np.zeros((k, d, d)), np.zeros((k, d))
    )
    few = int(blocks[-1, 3] - blocks[0, 2]) < FEW_ROWS
    kept: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for j, (_, _, lo, hi) in enumerate(blocks):
        for rows in _chunks(int(lo), int(hi)):
            x = _logged_features(data, target, rows)
            sums.gram[j] += x.T @ x
            sums.target[j] += x.T @ data.rewards[rows]
            nxt = data.nxt[rows]
            has = nxt >= 0
            following = np.zeros_like(x)
            if has.any():
                following[has] = _target_features(data, target, nxt[has])
                sums.cross[j] += x.T @ following
            starts = np.flatnonzero(is_first[rows]) + rows.start
            if starts.size:
                sums.start[j] += _target_features(data, target, starts).sum(axis=0)
            if few:
                kept.append((x, following, data.rewards[rows], np.full(len(x), j)))
    if few:
        sums.rows = _DayRows(*(np.concatenate(part) for part in zip(*kept, strict=True)))
    return sums


def _refit_few(rows: _DayRows, w: np.ndarray, coef: np.ndarray, ridge: float) -> np.ndarray:
    """Each replicate's ridge coefficients on a day of few rows: with W the rows' group weights
    and y = reward + the next day's Q, (λI + XᵀWX)⁻¹ XᵀW y = XᵀW½ (λI + W½XXᵀW½)⁻¹ W½ y, an
    n x n solve in place of a D x D one."""
    root = np.sqrt(w[:, rows.block])  # (replicates, n)
    y = rows.rewards + coef @ rows.following.T
    kernel = rows.x @ rows.x.T
    m = root[:, :, None] * kernel * root[:, None, :] + ridge * np.eye(len(kernel))
    u = np.linalg.solve(m, (root * y)[..., None])[..., 0]
    return (root * u) @ rows.x


def _fitted_q(
    data: _Logged, target: _Target, ridge: float, n_boot: int, seed: int
) -> tuple[ope.Estimate, np.ndarray, np.ndarray]:
    """FQE (see :func:`fqe`) and, from the same pass, Σ φφᵀ and Σ φ·reward over all logged rows
    (the direct method's reward model). One day's sums are held at a time: memory
    O(groups × D²), whatever the number of days."""
    d, groups = _N_FEATURES + 2, data.groups
    is_first = np.zeros(len(data.logged), dtype=bool)
    is_first[data.first] = True
    count = np.bincount(data.group, minlength=groups).astype(float)
    rng = np.random.default_rng([seed, 0xB00])
    weights = np.vstack(
        [np.ones(groups)]
        + [rng.multinomial(groups, np.full(groups, 1.0 / groups)) for _ in range(n_boot)]
    )  # row 0: the estimate itself
    eye = ridge * np.eye(d)
    coef = np.zeros((len(weights), d))
    total = np.zeros(len(weights))
    gram_all, target_all = np.zeros((d, d)), np.zeros(d)
    for t in range(data.n_days - 1, -1, -1):
        day = _day_sums(data, target, t, is_first)
        gram_all += day.gram.sum(axis=0)
        target_all += day.target.sum(axis=0)
        k, w = len(day.groups), weights[:, day.groups]
        if day.rows is not None:
            coef = _refit_few(day.rows, w, coef, ridge)
        else:
            a = (w @ day.gram.reshape(k, d * d)).reshape(-1, d, d) + eye
            c = (w @ day.cross.reshape(k, d * d)).reshape(-1, d, d)
            rhs = w @ day.target + np.einsum("bij,bj->bi", c, coef)
            coef = np.linalg.solve(a, rhs[..., None])[..., 0]
        total += ((w @ day.start) * coef).sum(axis=1)
    values = total / (weights @ count)
    lo, hi = np.percentile(values[1:], [2.5, 97.5]) if n_boot else (np.nan, np.nan)
    n = data.n_clients
    return (
        ope.Estimate(float(values[0]), float(lo), float(hi), float(n), 0.0, n),
        gram_all,
        target_all,
    )


def fqe(
    frame: pl.DataFrame | _Logged,
    policy: Policy,
    setup: Setup,
    epsilon: float = 0.0,
    ridge: float = 1.0,
    n_boot: int = 200,
    seed: int = 0,
    own: np.ndarray | None = None,
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

    Memory: the log's rows (observation and packed masks) and one day's sums per group; time:
    O(rows × D²) for the sums and, per day, O(replicates × min(D, rows that day)³) for the refits.
    """
    data = frame if isinstance(frame, _Logged) else _Logged.of(frame, setup, seed)
    if own is None:
        target = _Target.of(data, policy, epsilon)
    else:
        target = _Target.with_actions(data, np.asarray(own, dtype=np.int64), epsilon)
    return _fitted_q(data, target, ridge, n_boot, seed)[0]


def _q_values(data: _Logged, target: _Target, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q̂(x, a_logged), E_{a~π} q̂(x, a)) at every row, a chunk of rows at a time."""
    q_logged, q_target = np.empty(len(data.logged)), np.empty(len(data.logged))
    for rows in _chunks(0, len(data.logged)):
        q_logged[rows] = _logged_features(data, target, rows) @ beta
        q_target[rows] = _target_features(data, target, rows) @ beta
    return q_logged, q_target


def true_value(
    policy: Policy,
    frame: pl.DataFrame,
    setup: Setup,
    epsilon: float = 0.0,
    max_days: int = MAX_TRUTH_DAYS,
) -> float | None:
    """The (ε-soft, where ``epsilon`` > 0) policy's mean value per client over the log's own days,
    on the log's own simulated clients and luck; None unless the log came from
    :func:`evaluation.logged.log_policy` (it carries the ``seed`` column and the simulator's ids).

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
        soft = log_policy(policy, setup, n, days, int(frame["seed"][0]), epsilon)
        return float(soft["reward"].sum() / n)
    core, obs = begin_rollout(policy, setup, n, int(frame["seed"][0]), LOG_CLIENT_OFFSET)
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

    Memory: O(rows × observation features) for the log and O(groups × D²) for FQE's sums of one
    day (D = 153 features), whatever the number of distinct days (``benchmarks/ope_memory.py``).
    """
    validate(frame, guardrails=setup.env.guardrails)  # the log keeps the setup's own rules
    data = _Logged.of(frame, setup, seed)
    _below_floor(data, frame, pscore_floor, below_floor)
    rewards, pscore, clients = data.rewards, data.pscore, data.client_ix
    out = []
    for policy in policies:
        target = _Target.of(data, policy, epsilon)
        t = target.probs
        fitted, gram, rhs = _fitted_q(data, target, 1.0, fqe_boot, seed)
        beta = np.linalg.solve(gram + np.eye(len(rhs)), rhs)  # the reward model (ridge 1)
        q_logged, q_target = _q_values(data, target, beta)
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
        truth = true_value(policy, frame, setup, epsilon) if with_truth else None
        step = step_truth(frame, policy.name, epsilon) if with_truth else None
        out.append(OffPolicyResult(policy.name, estimates, truth, step))
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


def main(argv: list[str] | None = None) -> int:
    """``python -m evaluation.offline``: the command's entry point, which (as any entry point)
    may read MLflow runs; the library above it never does."""
    from experiment.policies import resolve_policy
    from experiment.tracking import git_commit, setup_mlflow

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", help="a logged Parquet file (docs/logged-data.md)")
    parser.add_argument(
        "policies",
        nargs="+",
        help="heuristic or bandit names (bandits are trained first), run:<id>",
    )
    parser.add_argument("--epsilon", type=float, default=0.0, help="ε-soften the targets")
    parser.add_argument(
        "--pscore-floor",
        type=float,
        default=ope.PSCORE_FLOOR,
        help=f"smallest logged propensity weighted as is (default {ope.PSCORE_FLOOR:g})",
    )
    parser.add_argument(
        "--refuse-below-floor",
        action="store_true",
        help="refuse a log with a propensity below the floor (default: clip it to the floor)",
    )
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: mlflow.db)")
    parser.add_argument("--no-mlflow", action="store_true", help="print only")
    args = parser.parse_args(argv)
    try:
        setup = load_setup()
        frame = read_logs(args.logs, guardrails=setup.env.guardrails)
        policies = [resolve_policy(spec, setup)[0] for spec in args.policies]
        below = "refuse" if args.refuse_below_floor else "clip"
        results = estimate(
            frame, policies, setup, args.epsilon, pscore_floor=args.pscore_floor, below_floor=below
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table(results))
    if not args.no_mlflow:
        setup_mlflow(args.tracking_uri, "cadence")
        ids = log_results(results, args.logs, git_commit())
        print(f"MLflow runs (experiment cadence): {', '.join(ids)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
