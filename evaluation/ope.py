"""Off-policy evaluation: estimate a target policy's value from data logged under another policy.

One-step estimators are plain functions over numpy arrays, one entry per logged decision:

* ``reward``: the reward observed after the logged action;
* ``pscore``: the logging policy's probability of the logged action (after masks), in (0, 1];
* ``target_pscore``: the target policy's probability of the same logged action, in [0, 1]
  (a deterministic target policy gives 0 or 1; soften it with :func:`epsilon_soft` if its
  support must cover the logging policy's);
* ``q_logged`` = q̂(x, a_logged) and ``q_target`` = Σ_a π(a|x) q̂(x, a) for a reward model q̂.

Each returns an :class:`Estimate`: the value, a bootstrap 95 % interval over logged rows (or over
clusters of rows, ``cluster=``: pass the client ids when rows are a client's successive days), and the
diagnostics an analyst reads before trusting it (effective sample size of the importance weights,
the largest weight, how many rows carry any weight, how many propensities were clipped; see
:func:`caveat`). Conventions follow the standard definitions (inverse propensity scoring,
self-normalised IPS, the direct method, doubly robust, switch-DR, weight clipping).

Propensities below :data:`PSCORE_FLOOR` (``pscore_floor=``) are raised to it before weighting and
counted in the estimate's ``clipped``: a logging policy that explores does not log an action with
probability 1e-300, and one such row would otherwise carry the whole estimate (a weight of 1e300)
or overflow it. The effective sample size is computed on weights scaled by their largest, so it is
finite whenever the weights are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

N_BOOT = 500

PSCORE_FLOOR = 1e-6
"""smallest logging propensity an importance weight is built on (a probability): smaller ones are
raised to it and counted. A logging policy with ε-exploration over the cadence action space's 361
joint actions logs any allowed action with probability at least ε / 361 (2.8e-5 at ε = 0.01), so
the floor touches no propensity such a policy writes; a weight is then at most 1e6 per row (per
day for :func:`pdwis`)."""


@dataclass(frozen=True)
class Estimate:
    """An off-policy estimate with its interval and weight diagnostics."""

    value: float
    ci_low: float
    ci_high: float
    ess: float
    """effective sample size of the importance weights, (Σw)² / Σw²  (n when no weights are used)"""
    max_weight: float
    """largest importance weight (0 when no weights are used)"""
    n: int
    """logged rows used"""
    support: int | None = None
    """rows (trajectories for :func:`pdwis`) with a nonzero weight; None when no weights are used"""
    clipped: int = 0
    """logged propensities below ``pscore_floor`` that were raised to it"""
    pscore_floor: float = PSCORE_FLOOR
    """the floor the propensities were held to (a probability)"""


def _array(name: str, values, n: int | None = None) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {a.shape}")
    if n is not None and len(a) != n:
        raise ValueError(f"{name} has {len(a)} entries; expected {n} (one per logged row)")
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}] = {a[bad[0]]} is not a finite number")
    return a


def _check_pscores(pscore: np.ndarray, target_pscore: np.ndarray) -> None:
    bad = np.flatnonzero((pscore <= 0) | (pscore > 1))
    if bad.size:
        raise ValueError(
            f"pscore[{bad[0]}] = {pscore[bad[0]]}; a logging propensity must lie in (0, 1]"
        )
    bad = np.flatnonzero((target_pscore < 0) | (target_pscore > 1))
    if bad.size:
        raise ValueError(
            f"target_pscore[{bad[0]}] = {target_pscore[bad[0]]}; a probability must lie in [0, 1]"
        )


def _floor(pscore_floor: float) -> float:
    if not 0.0 < pscore_floor <= 1.0:
        raise ValueError(f"pscore_floor must lie in (0, 1], got {pscore_floor}")
    return float(pscore_floor)


def _logged(reward, pscore, target_pscore) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rewards, logging and target propensities as checked float arrays of one length."""
    r = _array("reward", reward)
    if r.size == 0:
        raise ValueError("reward is empty: no logged rows to estimate from")
    p = _array("pscore", pscore, len(r))
    t = _array("target_pscore", target_pscore, len(r))
    _check_pscores(p, t)
    return r, p, t


def _weights(
    reward, pscore, target_pscore, pscore_floor: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Rewards, importance weights target / max(pscore, floor), and how many were clipped."""
    r, p, t = _logged(reward, pscore, target_pscore)
    floor = _floor(pscore_floor)
    clipped = int(np.count_nonzero(p < floor))
    return r, t / np.maximum(p, floor), clipped


def _diagnostics(w: np.ndarray) -> tuple[float, float, int]:
    """(ESS, largest weight, rows with a nonzero weight) of finite, non-negative weights. The ESS
    (Σw)² / Σw² is taken on the weights divided by the largest (it does not change with scale), so
    weights of 1e300 give a finite ESS instead of inf / inf."""
    largest = float(w.max()) if w.size else 0.0
    support = int(np.count_nonzero(w))
    if not largest > 0:
        return 0.0, largest, support
    scaled = w / largest
    return float(scaled.sum() ** 2 / (scaled * scaled).sum()), largest, support


def _count_bootstrap(
    stats: Callable[[np.ndarray], np.ndarray], n: int, n_boot: int, seed: int
) -> tuple[float, float]:
    """A bootstrap 95 % interval: each replicate draws ``n`` units with replacement, given to
    ``stats`` as a (replicates, n) matrix of how often each unit was drawn, so statistics that
    are sums become one matrix product per chunk of replicates."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(50, 20_000_000 // max(n, 1)))  # at most ~160 MB of counts at a time
    values = []
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(k)])
        values.append(stats(counts.astype(np.float64)))
    values = np.concatenate(values) if values else np.array([np.nan])
    if np.isnan(values).all():
        return float("nan"), float("nan")
    lo, hi = np.nanpercentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def _clusters(cluster, n: int) -> np.ndarray | None:
    """Index (0..m-1) of each row's cluster, or None when every row is its own."""
    if cluster is None:
        return None
    c = np.asarray(cluster)
    if c.shape != (n,):
        raise ValueError(f"cluster has shape {c.shape}; expected ({n},), one entry per logged row")
    return np.unique(c, return_inverse=True)[1].reshape(-1)


def _ratio_estimate(
    num: np.ndarray,
    den: np.ndarray,
    w: np.ndarray | None,
    n_boot: int,
    seed: int,
    cluster: np.ndarray | None,
    clipped: int = 0,
    pscore_floor: float = PSCORE_FLOOR,
) -> Estimate:
    """Σ num / Σ den with a bootstrap interval that resamples rows, or whole clusters of rows
    (a client's days are not independent of each other: resample the client)."""
    n = len(num)
    if cluster is not None:
        num = np.bincount(cluster, weights=num)
        den = np.bincount(cluster, weights=den)

    def ratios(counts: np.ndarray) -> np.ndarray:
        total = counts @ den
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, (counts @ num) / total, np.nan)

    lo, hi = _count_bootstrap(ratios, len(num), n_boot, seed)
    ess, largest, support = _diagnostics(w) if w is not None else (float(n), 0.0, None)
    value = ratios(np.ones((1, len(num))))[0]
    return Estimate(float(value), lo, hi, ess, largest, n, support, clipped, pscore_floor)


def ips(
    reward,
    pscore,
    target_pscore,
    clip: float = math.inf,
    n_boot: int = N_BOOT,
    seed: int = 0,
    cluster=None,
    pscore_floor: float = PSCORE_FLOOR,
) -> Estimate:
    """Inverse propensity scoring: mean of w·r, w = target_pscore / max(pscore, ``pscore_floor``),
    each weight capped at ``clip`` (weight clipping trades bias for variance; inf: unclipped)."""
    r, w, clipped = _weights(reward, pscore, target_pscore, pscore_floor)
    w = np.minimum(w, _positive("clip", clip))
    return _ratio_estimate(
        w * r, np.ones_like(r), w, n_boot, seed, _clusters(cluster, len(r)), clipped, pscore_floor
    )


def snips(
    reward,
    pscore,
    target_pscore,
    n_boot: int = N_BOOT,
    seed: int = 0,
    cluster=None,
    pscore_floor: float = PSCORE_FLOOR,
) -> Estimate:
    """Self-normalised IPS: Σ w·r / Σ w (a little biased, far less variable when weights are large)."""
    r, w, clipped = _weights(reward, pscore, target_pscore, pscore_floor)
    return _ratio_estimate(
        w * r, w, w, n_boot, seed, _clusters(cluster, len(r)), clipped, pscore_floor
    )


def dm(q_target, n_boot: int = N_BOOT, seed: int = 0, cluster=None) -> Estimate:
    """Direct method: mean over logged contexts of the reward model's value of the target policy."""
    q = _array("q_target", q_target)
    if q.size == 0:
        raise ValueError("q_target is empty: no logged rows to estimate from")
    return _ratio_estimate(q, np.ones_like(q), None, n_boot, seed, _clusters(cluster, len(q)))


def dr(
    reward,
    pscore,
    target_pscore,
    q_logged,
    q_target,
    clip: float = math.inf,
    switch: float = math.inf,
    n_boot: int = N_BOOT,
    seed: int = 0,
    cluster=None,
    pscore_floor: float = PSCORE_FLOOR,
) -> Estimate:
    """Doubly robust: mean of q_target + w·(r − q_logged). ``clip`` caps each weight; ``switch``
    (switch-DR) drops the correction where the weight exceeds it, leaving the reward model's
    value there (``switch=inf``: plain DR; ``switch=0``: the direct method)."""
    r, w, clipped = _weights(reward, pscore, target_pscore, pscore_floor)
    ql = _array("q_logged", q_logged, len(r))
    qt = _array("q_target", q_target, len(r))
    _positive("clip", clip)
    if not switch >= 0:
        raise ValueError(f"switch must be >= 0, got {switch}")
    used = np.where(w <= switch, np.minimum(w, clip), 0.0)
    per_row = qt + used * (r - ql)
    return _ratio_estimate(
        per_row,
        np.ones_like(r),
        used,
        n_boot,
        seed,
        _clusters(cluster, len(r)),
        clipped,
        pscore_floor,
    )


def switch_dr(reward, pscore, target_pscore, q_logged, q_target, switch: float, **kwargs):
    """Switch-DR: :func:`dr` with the correction dropped where the weight exceeds ``switch``."""
    return dr(reward, pscore, target_pscore, q_logged, q_target, switch=switch, **kwargs)


def epsilon_soft(greedy: np.ndarray, chosen: np.ndarray, epsilon: float, n_actions: int):
    """Probability of ``chosen`` under the ε-soft version of a deterministic policy that picks
    ``greedy``: 1 − ε + ε/K on the greedy action, ε/K elsewhere (K = ``n_actions``)."""
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
    if n_actions < 1:
        raise ValueError(f"n_actions must be >= 1, got {n_actions}")
    base = epsilon / n_actions
    return np.where(np.asarray(greedy) == np.asarray(chosen), 1.0 - epsilon + base, base)


def _positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def pdwis(
    reward,
    pscore,
    target_pscore,
    alive,
    gamma: float = 1.0,
    n_boot: int = N_BOOT,
    seed: int = 0,
    pscore_floor: float = PSCORE_FLOOR,
) -> Estimate:
    """Per-decision weighted importance sampling of a policy's value over days, from dense arrays.

    Arrays are (clients, days), one trajectory per row. Conventions (a wrong one silently drops
    or invents reward):

    * ``alive[i, t]`` is False from the first day after client i ended (churned): that day and
      later ones are an absorbing state where every policy acts alike and earns 0, so their reward
      must be 0 and their step weight is taken as 1 (the client's weight stays what it was);
    * the last logged day is a truncation, not a terminal: the estimate is the value over the
      logged horizon, with no value added beyond it;
    * the value is the per-client sum over days of ``gamma**t * reward``.

    The same estimate as :func:`pdwis_rows` on the alive cells (which see for the estimate, the
    interval and the diagnostics); a log whose clients and days are many is better given as rows.
    """
    r = np.asarray(reward, dtype=np.float64)
    if r.ndim != 2 or r.size == 0:
        raise ValueError(f"reward must be a non-empty (clients, days) array, got shape {r.shape}")
    arrays = {"pscore": pscore, "target_pscore": target_pscore, "alive": alive}
    p, t, live = (np.asarray(arrays[k]) for k in ("pscore", "target_pscore", "alive"))
    for name, a in (("pscore", p), ("target_pscore", t), ("alive", live)):
        if a.shape != r.shape:
            raise ValueError(f"{name} has shape {a.shape}; expected {r.shape} like reward")
    live = live.astype(bool)
    _array("reward", r.ravel())
    dead = np.argwhere(~live & (r != 0))
    if len(dead):
        i, d = dead[0]
        raise ValueError(f"reward[{i}, {d}] = {r[i, d]} on a day the client was no longer alive")
    client, day = np.nonzero(live)
    return pdwis_rows(
        r[live], p[live], t[live], client, day, r.shape[0], r.shape[1], gamma, n_boot, seed,
        pscore_floor,
    )  # fmt: skip


def _index(name: str, values, n: int) -> np.ndarray:
    a = np.asarray(values)
    if a.shape != (n,):
        raise ValueError(f"{name} has shape {a.shape}; expected ({n},), one entry per logged row")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integer indices, got {a.dtype}")
    if n and a.min() < 0:
        raise ValueError(f"{name}[{int(np.argmin(a))}] = {a.min()}; indices start at 0")
    return a.astype(np.int64)


def pdwis_rows(
    reward,
    pscore,
    target_pscore,
    client,
    day,
    n_clients: int | None = None,
    n_days: int | None = None,
    gamma: float = 1.0,
    n_boot: int = N_BOOT,
    seed: int = 0,
    pscore_floor: float = PSCORE_FLOOR,
) -> Estimate:
    """Per-decision weighted importance sampling from logged rows, one per (client, day).

    ``client`` (0 .. ``n_clients`` − 1) and ``day`` (0 .. ``n_days`` − 1, the step index) say whose
    row and which day. A client's days without a row are an absorbing state or a gap: reward 0 and
    step weight 1 (its weight stays what it was), as are its days before its first row; the last day
    is a truncation; the value is the per-client sum over days of ``gamma**day * reward``.

    Estimate: Σ_t γ^t Σ_i (ρ_it / Σ_j ρ_jt) r_it, ρ_it the product of client i's step weights
    target_pscore / max(pscore, ``pscore_floor``) up to day t. The interval resamples whole clients;
    ``ess``, ``max_weight`` and ``support`` are those of the cumulative weights on the last day
    (where they are most spread); ``n`` is the number of clients (trajectories). Where no logged trajectory agrees with the target policy up to
    some day (all weights 0), the value is NaN: the logs hold no evidence about it (soften a
    deterministic target, or log with more exploration).

    Memory is O(rows + clients): the weights are carried day by day in log space (a product over
    many days of weights up to 1e6 overflows a float) and scaled by each day's largest, which
    leaves each day's self-normalised ratio unchanged. Time is O(days × clients × replicates), as
    for the dense form.
    """
    r, p, t = _logged(reward, pscore, target_pscore)
    who, when = _index("client", client, len(r)), _index("day", day, len(r))
    n_clients = int(who.max()) + 1 if n_clients is None else int(n_clients)
    n_days = int(when.max()) + 1 if n_days is None else int(n_days)
    if who.max() >= n_clients or when.max() >= n_days:
        raise ValueError(
            f"client or day index beyond n_clients {n_clients} / n_days {n_days} "
            f"(largest: client {who.max()}, day {when.max()})"
        )
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
    floor = _floor(pscore_floor)
    order = np.lexsort((who, when))
    who, when, r = who[order], when[order], r[order]
    twice = np.flatnonzero((np.diff(who) == 0) & (np.diff(when) == 0))
    if twice.size:
        raise ValueError(f"client {who[twice[0]]} has two rows on day {when[twice[0]]}")
    with np.errstate(divide="ignore"):  # a target probability of 0: a weight of 0, log −inf
        step = np.log(t[order]) - np.log(np.maximum(p[order], floor))
    day_rows = np.searchsorted(when, np.arange(n_days + 1))
    log_rho = np.zeros(n_clients)  # each client's cumulative log-weight, carried day by day
    at_row = np.empty(len(r))
    for d in range(n_days):
        rows = slice(day_rows[d], day_rows[d + 1])
        log_rho[who[rows]] += step[rows]
        at_row[rows] = log_rho[who[rows]]
    discount = gamma ** np.arange(n_days)

    def values(counts: np.ndarray) -> np.ndarray:
        carried = np.zeros(n_clients)
        total = np.zeros(len(counts))
        supported = np.ones(len(counts), dtype=bool)
        for d in range(n_days):
            rows = slice(day_rows[d], day_rows[d + 1])
            carried[who[rows]] = at_row[rows]
            top = carried.max()
            scaled = np.exp(carried - (top if np.isfinite(top) else 0.0))
            weight = counts @ scaled  # a day no logged trajectory supports: no estimate
            earned = counts[:, who[rows]] @ (scaled[who[rows]] * r[rows])
            supported &= weight > 0
            with np.errstate(invalid="ignore", divide="ignore"):
                total += discount[d] * np.where(weight > 0, earned / weight, 0.0)
        return np.where(supported, total, np.nan)

    finite = log_rho[np.isfinite(log_rho)]
    top = float(finite.max()) if finite.size else 0.0
    ess, _, support = _diagnostics(np.exp(log_rho - top))
    with np.errstate(over="ignore"):
        largest = float(np.exp(top)) if finite.size else 0.0
    lo, hi = _count_bootstrap(values, n_clients, n_boot, seed)
    value = float(values(np.ones((1, n_clients)))[0])
    return Estimate(
        value, lo, hi, ess, largest, n_clients, support, int(np.count_nonzero(p < floor)), floor
    )


def caveat(estimate: Estimate, min_ess: float) -> str:
    """Why ``estimate`` should not be read, or be read with care ('' when nothing is wrong).

    * "no logged support": no logged row (trajectory) agrees with the target, so every weight is 0;
    * "weights too extreme": rows do agree with the target, but a few weights dominate (an ESS
      under ``min_ess`` from at least ``min_ess`` supported rows), or the estimate overflowed;
    * "ESS < min_ess: unreliable": too few rows agree with the target to trust an interval;
    * and, after any of these, how many propensities were clipped to the floor.
    """
    notes = []
    finite = math.isfinite(estimate.value)
    if estimate.ess == 0 or (not finite and estimate.support == 0):
        notes.append("no logged support")
    elif not finite:
        notes.append("weights too extreme: the estimate is not finite")
    elif estimate.ess < min_ess:
        if estimate.support is not None and estimate.support >= min_ess:
            notes.append(
                f"weights too extreme: ESS {estimate.ess:.3g} from {estimate.support:,} "
                "supported rows"
            )
        else:
            notes.append(f"ESS < {min_ess:g}: unreliable")
    if estimate.clipped:
        what = "propensity" if estimate.clipped == 1 else "propensities"
        notes.append(f"clipped {estimate.clipped:,} {what} below {estimate.pscore_floor:g}")
    return "; ".join(notes)
