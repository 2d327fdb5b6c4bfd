"""Fitted-Q evaluation (FQE) of a target policy over a log's horizon, and the prepared log it
reads.

A logged frame is prepared once for every target (:class:`_Logged`): rows in (day, client group,
client) order, observations, guardrail masks packed eight actions a byte, each row's client's row
on the next logged day. A target's view of it (:class:`_Target`) adds its own action and its
probability of the logged one. FQE fits a linear Q per day backwards from the last logged day,
holding one day's regression sums per client group at a time (:func:`_day_sums`), and resamples
the groups for its interval; the same pass gives the direct method's reward model
(:func:`_fitted_q`). :mod:`evaluation.offline` puts it beside the other estimators.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from agents.base import Policy
from envs.config import Setup
from envs.features import FEATURE_NAMES
from envs.masks import MaskRules, joint_mask, mask_inputs
from envs.spaces import JOINT_ACTIONS, JOINT_COLUMNS, multi_to_flat
from evaluation import ope
from evaluation.logs import ACTIONS
from evaluation.target_view import check_target, target_actions
from simulate.labels import ACTION_NVEC

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
        check_target(policy)
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
    """One day's regression sums per client group present that day (``groups``), or over all of
    them at once (pooled)."""

    groups: np.ndarray
    """(k,) the group of each block of sums; one block, -1, where the day's groups are pooled"""
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


def _day_batches(blocks: np.ndarray) -> list[tuple[int, int, list[tuple[int, int, int]]]]:
    """The rows of one day's ``blocks`` cut into batches of at most :data:`CHUNK_ROWS` rows:
    (first row, end row, segments), a segment (block index, first row, end row) being a client
    group's rows, or a :data:`CHUNK_ROWS` piece of a larger group. Whole segments go into a
    batch, so each group's sums add up the same pieces whatever the batch."""
    batches: list[tuple[int, int, list[tuple[int, int, int]]]] = []
    segments: list[tuple[int, int, int]] = []
    for j, (_, _, lo, hi) in enumerate(blocks):
        for rows in _chunks(int(lo), int(hi)):
            if segments and rows.stop - segments[0][1] > CHUNK_ROWS:
                batches.append((segments[0][1], segments[-1][2], segments))
                segments = []
            segments.append((j, rows.start, rows.stop))
    if segments:
        batches.append((segments[0][1], segments[-1][2], segments))
    return batches


def _add(into: np.ndarray, j: int, fresh: np.ndarray, op, *args, **kwargs) -> None:
    """``into[j] += op(*args, **kwargs)``; where nothing is in ``into[j]`` yet (``fresh[j]``),
    ``op`` writes it in place instead: the same figures as adding to zeros, without the zeroing,
    the temporary and the add."""
    if fresh[j]:
        op(*args, out=into[j], **kwargs)
        fresh[j] = False
    else:
        into[j] += op(*args, **kwargs)


def _day_sums(
    data: _Logged, target: _Target, day: int, is_first: np.ndarray, pooled: bool = False
) -> _DaySums:
    """The sums of day ``day``, per client group or, ``pooled``, over the whole day. The features
    are built a batch of whole client groups at a time (at most :data:`CHUNK_ROWS` rows,
    :func:`_day_batches`), each group's sums from its slice of them; the next day's target
    features are built for the rows that follow one of these, so no day's features are kept,
    except on a day of fewer than :data:`FEW_ROWS` rows."""
    blocks = data.blocks[data.day_blocks[day] : data.day_blocks[day + 1]]
    if pooled:  # the day's rows as one block
        blocks = np.array([[day, -1, blocks[0, 2], blocks[-1, 3]]])
    d = _N_FEATURES + 2
    k = len(blocks)
    sums = _DaySums(
        blocks[:, 1], np.empty((k, d, d)), np.empty((k, d)), np.empty((k, d, d)), np.empty((k, d))
    )
    fresh = np.ones((4, k), dtype=bool)  # block j's gram, target, cross, start: nothing added yet
    few = int(blocks[-1, 3] - blocks[0, 2]) < FEW_ROWS
    kept: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for first, end, segments in _day_batches(blocks):
        rows = slice(first, end)
        x = _logged_features(data, target, rows)
        rewards = data.rewards[rows]
        nxt = data.nxt[rows]
        has = nxt >= 0
        following = np.zeros_like(x)
        if has.any():
            following[has] = _target_features(data, target, nxt[has])
        starts = np.flatnonzero(is_first[rows])  # from ``first``
        start_phi = _target_features(data, target, starts + first) if starts.size else x[:0]
        for j, lo, hi in segments:
            part = slice(lo - first, hi - first)
            xs = x[part]
            _add(sums.gram, j, fresh[0], np.matmul, xs.T, xs)
            _add(sums.target, j, fresh[1], np.matmul, xs.T, rewards[part])
            if has[part].any():
                _add(sums.cross, j, fresh[2], np.matmul, xs.T, following[part])
            a, b = np.searchsorted(starts, (part.start, part.stop))
            if b > a:
                _add(sums.start, j, fresh[3], np.sum, start_phi[a:b], axis=0)
            if few:
                kept.append((xs, following[part], rewards[part], np.full(len(xs), j)))
    for into, unset in zip((sums.cross, sums.start), fresh[2:], strict=True):
        into[unset] = 0.0  # no row of the block has a next day, or none starts here
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
    O(groups × D²), whatever the number of days.

    With ``n_boot=0`` every group weighs 1 and each day's sums are pooled over the groups (one
    product per chunk of rows, not one per group of ~10 rows: ~5 times faster on 1,000 clients):
    the same regressions, equal to the grouped sums' figures to the rounding their solves amplify
    (1e-12 to 1e-10 relative on logs of 60 to 400 clients; dealing the clients into other groups
    moves the value as much)."""
    d, groups = _N_FEATURES + 2, data.groups
    pooled = n_boot == 0
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
        day = _day_sums(data, target, t, is_first, pooled)
        gram_all += day.gram.sum(axis=0)
        target_all += day.target.sum(axis=0)
        k = len(day.groups)
        w = np.ones((1, 1)) if pooled else weights[:, day.groups]
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
