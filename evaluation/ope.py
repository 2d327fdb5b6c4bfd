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
diagnostics an analyst reads before trusting it (effective sample size of the importance weights
and the largest weight). Conventions follow the standard definitions (inverse propensity
scoring, self-normalised IPS, the direct method, doubly robust, switch-DR, weight clipping).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

N_BOOT = 500


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


def _weights(reward, pscore, target_pscore) -> tuple[np.ndarray, np.ndarray]:
    r = _array("reward", reward)
    if r.size == 0:
        raise ValueError("reward is empty: no logged rows to estimate from")
    p = _array("pscore", pscore, len(r))
    t = _array("target_pscore", target_pscore, len(r))
    _check_pscores(p, t)
    return r, t / p


def _diagnostics(w: np.ndarray) -> tuple[float, float]:
    total, squares = float(w.sum()), float((w * w).sum())
    ess = total * total / squares if squares > 0 else 0.0
    return ess, float(w.max()) if w.size else 0.0


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
    ess, largest = _diagnostics(w) if w is not None else (float(n), 0.0)
    value = ratios(np.ones((1, len(num))))[0]
    return Estimate(float(value), lo, hi, ess, largest, n)


def ips(
    reward,
    pscore,
    target_pscore,
    clip: float = math.inf,
    n_boot: int = N_BOOT,
    seed: int = 0,
    cluster=None,
) -> Estimate:
    """Inverse propensity scoring: mean of w·r, w = target_pscore / pscore, each weight capped at
    ``clip`` (weight clipping trades bias for variance; inf: unclipped, unbiased)."""
    r, w = _weights(reward, pscore, target_pscore)
    w = np.minimum(w, _positive("clip", clip))
    return _ratio_estimate(w * r, np.ones_like(r), w, n_boot, seed, _clusters(cluster, len(r)))


def snips(reward, pscore, target_pscore, n_boot: int = N_BOOT, seed: int = 0, cluster=None):
    """Self-normalised IPS: Σ w·r / Σ w (a little biased, far less variable when weights are large)."""
    r, w = _weights(reward, pscore, target_pscore)
    return _ratio_estimate(w * r, w, w, n_boot, seed, _clusters(cluster, len(r)))


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
) -> Estimate:
    """Doubly robust: mean of q_target + w·(r − q_logged). ``clip`` caps each weight; ``switch``
    (switch-DR) drops the correction where the weight exceeds it, leaving the reward model's
    value there (``switch=inf``: plain DR; ``switch=0``: the direct method)."""
    r, w = _weights(reward, pscore, target_pscore)
    ql = _array("q_logged", q_logged, len(r))
    qt = _array("q_target", q_target, len(r))
    _positive("clip", clip)
    if not switch >= 0:
        raise ValueError(f"switch must be >= 0, got {switch}")
    used = np.where(w <= switch, np.minimum(w, clip), 0.0)
    per_row = qt + used * (r - ql)
    return _ratio_estimate(per_row, np.ones_like(r), used, n_boot, seed, _clusters(cluster, len(r)))


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
    reward, pscore, target_pscore, alive, gamma: float = 1.0, n_boot: int = N_BOOT, seed: int = 0
) -> Estimate:
    """Per-decision weighted importance sampling of a policy's value over days.

    Arrays are (clients, days), one trajectory per row. Conventions (a wrong one silently drops
    or invents reward):

    * ``alive[i, t]`` is False from the first day after client i ended (churned): that day and
      later ones are an absorbing state where every policy acts alike and earns 0, so their reward
      must be 0 and their step weight is taken as 1 (the client's weight stays what it was);
    * the last logged day is a truncation, not a terminal: the estimate is the value over the
      logged horizon, with no value added beyond it;
    * the value is the per-client sum over days of ``gamma**t * reward``.

    Estimate: Σ_t γ^t Σ_i (ρ_it / Σ_j ρ_jt) r_it, ρ_it the product of step weights up to day t.
    The interval resamples whole trajectories; ``ess`` and ``max_weight`` are those of the
    cumulative weights on the last day (where they are most spread). Where no logged trajectory
    agrees with the target policy up to some day (all weights 0), the value is NaN: the logs hold
    no evidence about it (soften a deterministic target, or log with more exploration).
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
    p = np.where(live, _array("pscore", p.ravel()).reshape(r.shape), 1.0)
    t = np.where(live, _array("target_pscore", t.ravel()).reshape(r.shape), 1.0)
    _check_pscores(p.ravel(), t.ravel())
    dead = np.argwhere(~live & (r != 0))
    if len(dead):
        i, d = dead[0]
        raise ValueError(f"reward[{i}, {d}] = {r[i, d]} on a day the client was no longer alive")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
    rho = np.cumprod(t / p, axis=1)
    discount = gamma ** np.arange(r.shape[1])
    weighted = rho * r

    def values(counts: np.ndarray) -> np.ndarray:
        total = counts @ rho
        supported = (total > 0).all(axis=1)  # a day no logged trajectory supports: no estimate
        with np.errstate(invalid="ignore", divide="ignore"):
            per_day = (counts @ weighted) / total
        return np.where(supported, (discount * per_day).sum(axis=1), np.nan)

    ess, largest = _diagnostics(rho[:, -1])
    lo, hi = _count_bootstrap(values, len(r), n_boot, seed)
    return Estimate(float(values(np.ones((1, len(r))))[0]), lo, hi, ess, largest, len(r))
