"""Calibration from a firm's own send log: the scorecard's statistics computed from a logged
dataset (``docs/logged-data.md``), and the simulator's side of the same statistics.

Statistics (each from delivered sends, ``sent``; a cell with fewer than ``MIN_SENDS`` sends, or
``MIN_DAYS`` client-days, is left out, since its rate would be mostly noise):

* ``logs/open_rate/<channel>/<slot>``: opens per send by channel and slot;
* ``logs/click_rate``, ``logs/click_to_open``, ``logs/unsubscribes_per_message``,
  ``logs/complaints_per_message``: per send, over the whole log;
* ``logs/click_rate/volume_<k>``: clicks per send by the client's sends in the 7 days up to and
  including that day (1, 2, 3, 4 or more) — response by weekly volume;
* ``logs/unsubscribes_per_message/volume_<1_2|3plus>``: unsubscribes per send by the same volume;
* ``logs/click_rate/gap_<a_b>``: clicks per send by days since the client's previous send
  (recovery; a client's first logged send has no gap and is left out);
* ``logs/visit_rate``: organic visits per living client-day without a send;
* ``logs/churn_rate``: clients lost per living client-day.

The simulator's side, the same :func:`statistics` on a simulated log, made one of two ways:

* :func:`relog` (closed loop, when the logging policy is a Cadence policy): the logging policy runs
  again in the simulator with the log's own exploration rate (read from the propensities), on as
  many fresh clients for as many days. A policy that picks the slot, channel or clients most
  likely to respond is then simulated picking them too: like is compared with like.
* :func:`replay` (open loop, any log): fresh simulated clients receive exactly the logged clients'
  sends (day, slot, tone, channel, content); a send to a simulated client who has opted out of the
  channel or left is not delivered. It cannot reproduce a logging policy's choice of *whom* to
  send what: the replayed clients are not the ones the policy chose them for, so where the
  policy adapts to its clients (every Cadence heuristic does) response rates come out low
  (measured in README.md, *Calibration from logs*). Use it for schedules that did not adapt.

The targets are the log's statistics with their 95 % bootstrap intervals over clients as bands;
the fit (``python calibrate.py mode=fit logs=<file> ...``) searches the simulator's parameters with the
same simulated-moments machinery as the published figures.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from envs.config import Setup
from envs.spaces import multi_to_flat
from evaluation.logs import ACTIONS
from evaluation.target_view import logged_inputs, target_actions
from realism.targets import Target, Targets
from simulate.labels import CHANNELS, SLOT_KEYS
from simulate.world import World

MIN_SENDS = 200
MIN_DAYS = 1000
VOLUMES = (1, 2, 3, 4)
"""sends in the 7 days up to a send; the last bucket is 4 or more"""
GAPS = ((1, 1), (2, 3), (4, 7), (8, 14), (15, 10_000))
REPLAY_OFFSET = 1 << 51
"""replayed clients' ids: never those of training (0), evaluation (2**48), logs (2**50) or realism (2**52)"""
NEEDED = (
    "client_id",
    "day",
    "slot",
    "tone",
    "channel",
    "content",
    "sent",
    "opened",
    "clicked",
    "unsubscribed",
    "complaint",
    "visited",
    "churned",
)


def _grids(frame: pl.DataFrame) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(clients, days) grids of the needed columns, the living mask, and the client index."""
    clients, client_ix = np.unique(frame["client_id"].to_numpy(), return_inverse=True)
    first = int(frame["day"].min())
    day_ix = frame["day"].to_numpy() - first
    shape = (len(clients), int(day_ix.max()) + 1)
    grids = {}
    for name in NEEDED[2:]:
        g = np.zeros(
            shape, dtype=np.int64 if name in ("slot", "tone", "channel", "content") else bool
        )
        g[client_ix, day_ix] = frame[name].to_numpy()
        grids[name] = g
    alive = np.zeros(shape, dtype=bool)
    alive[client_ix, day_ix] = True
    return grids, alive, client_ix


def _cells(frame: pl.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """statistic -> (numerator, denominator) per client: the pieces every statistic is a ratio of
    sums of, so its bootstrap over clients is a resampling of these rows."""
    g, alive, _ = _grids(frame)
    sent = g["sent"]
    n_days = sent.shape[1]
    csum = np.cumsum(np.pad(sent.astype(np.int64), ((0, 0), (7, 0))), axis=1)
    volume = csum[:, 7:] - csum[:, :-7]  # sends in the 7 days up to and including each day
    last = np.where(sent, np.arange(n_days)[None, :], -1)
    last = np.maximum.accumulate(last, axis=1)
    previous = np.concatenate([np.full((len(sent), 1), -1), last[:, :-1]], axis=1)
    gap = np.where(previous >= 0, np.arange(n_days)[None, :] - previous, 0)

    def per_client(num: np.ndarray, den: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return num.sum(axis=1).astype(float), den.sum(axis=1).astype(float)

    cells = {}
    for c, channel in enumerate(CHANNELS):
        for s, slot in enumerate(SLOT_KEYS):
            where = sent & (g["channel"] == c) & (g["slot"] == s + 1)
            cells[f"logs/open_rate/{channel}/{slot}"] = per_client(g["opened"] & where, where)
    cells["logs/click_rate"] = per_client(g["clicked"] & sent, sent)
    cells["logs/click_to_open"] = per_client(g["clicked"] & sent, g["opened"] & sent)
    cells["logs/unsubscribes_per_message"] = per_client(g["unsubscribed"] & sent, sent)
    cells["logs/complaints_per_message"] = per_client(g["complaint"] & sent, sent)
    for k in VOLUMES:
        where = sent & ((volume == k) if k < VOLUMES[-1] else (volume >= k))
        label = f"{k}plus" if k == VOLUMES[-1] else str(k)
        cells[f"logs/click_rate/volume_{label}"] = per_client(g["clicked"] & where, where)
    for label, where in (("1_2", sent & (volume <= 2)), ("3plus", sent & (volume >= 3))):
        cells[f"logs/unsubscribes_per_message/volume_{label}"] = per_client(
            g["unsubscribed"] & where, where
        )
    for lo, hi in GAPS:
        where = sent & (gap >= lo) & (gap <= hi)
        label = f"{lo}_{hi}" if hi < 10_000 else f"{lo}plus"
        cells[f"logs/click_rate/gap_{label}"] = per_client(g["clicked"] & where, where)
    quiet = alive & ~sent
    cells["logs/visit_rate"] = per_client(g["visited"] & quiet, quiet)
    cells["logs/churn_rate"] = per_client(g["churned"] & alive, alive)
    return cells


def _enough(name: str, denominator: float) -> bool:
    needed = MIN_DAYS if name in ("logs/visit_rate", "logs/churn_rate") else MIN_SENDS
    return denominator >= needed


def statistics(frame: pl.DataFrame, thin: bool = False) -> dict[str, float]:
    """The log's statistics: cells with too few sends are left out unless ``thin`` (the simulated
    side keeps them, NaN only where a cell is empty, so a target never goes missing)."""
    out = {}
    for name, (num, den) in _cells(frame).items():
        if _enough(name, den.sum()) or (thin and den.sum() > 0):
            out[name] = float(num.sum() / den.sum())
    return out


def targets(frame: pl.DataFrame, n_boot: int = 300, seed: int = 0, source: str = "") -> Targets:
    """The log's statistics as calibration targets, each band its 95 % bootstrap interval over
    clients (widened to at least ±5 % of the value, since the simulator's side has noise too)."""
    rng = np.random.default_rng(seed)
    cells = _cells(frame)
    n = len(next(iter(cells.values()))[0])
    draws = [rng.integers(0, n, n) for _ in range(n_boot)]
    out = []
    for name, (num, den) in cells.items():
        if not _enough(name, den.sum()):
            continue
        value = float(num.sum() / den.sum())
        boots = [num[i].sum() / den[i].sum() for i in draws if den[i].sum() > 0]
        lo, hi = np.percentile(boots, [2.5, 97.5])
        lo, hi = min(lo, value * 0.95), max(hi, value * 1.05)
        out.append(Target(name, value, float(lo), float(hi), 1.0, "95 % bootstrap interval"))
    return Targets(source or "a logged dataset", tuple(out))


def log_epsilon(frame: pl.DataFrame, policy, setup: Setup) -> float:
    """The exploration rate ε (in (0, 1]) of a log written by
    :func:`evaluation.record.log_policy` with ``policy``: on a row where the logged action is not
    the policy's own, pscore = ε / allowed. A ``ValueError`` saying what to do instead when the
    log was plainly not written so (it never departs from the policy, or the rate falls outside
    (0, 1], as a deterministic log of another policy gives)."""
    obs, masks = logged_inputs(frame, setup)
    own = target_actions(policy, obs, masks)
    logged = multi_to_flat(frame.select(ACTIONS).to_numpy().astype(np.int64))
    other = logged != own
    if not other.any():
        raise ValueError(
            f"the log never departs from {policy.name}'s own action: it was not logged by "
            f"{policy.name} with exploration; name the policy that wrote it, or leave policy= "
            "out to replay the logged sends (open loop)"
        )
    eps = float(np.median(frame["pscore"].to_numpy()[other] * masks[other].sum(axis=1)))
    if not 0.0 < eps <= 1.0:
        # e.g. a deterministic log (every pscore 1) of another policy gives ε = allowed actions
        raise ValueError(
            f"the log's propensities give {policy.name} an exploration rate of {eps:.4g}, "
            f"outside (0, 1]: the log was not written by {policy.name} with ε-exploration (a "
            f"deterministic log, every pscore 1, has no exploration to re-run); name the policy "
            f"that wrote it, or leave policy= out to replay the logged sends (open loop)"
        )
    return eps


def relog(setup: Setup, policy, clients: int, days: int, seed: int, epsilon: float) -> pl.DataFrame:
    """The logging policy run again in ``setup`` (the closed-loop simulated side)."""
    from evaluation.record import log_policy

    return log_policy(policy, setup, clients, days, seed, epsilon).select(NEEDED)


def replay(setup: Setup, frame: pl.DataFrame, seed: int, copies: int = 1) -> pl.DataFrame:
    """The logged schedule replayed on fresh simulated clients (``copies`` per logged client): a
    frame with the columns :func:`statistics` reads."""
    g, alive, _ = _grids(frame)
    n_logged, n_days = alive.shape
    first_day = int(frame["day"].min())
    n = n_logged * copies
    ids = np.uint64(REPLAY_OFFSET) + np.arange(n, dtype=np.uint64)
    world = World(setup.population, setup.env.response, setup.scenario, seed, ids)
    parts = []
    gone = np.zeros(n, dtype=bool)
    for t in range(n_days):
        present = np.tile(alive[:, t], copies)
        columns = {k: np.tile(g[k][:, t], copies) for k in ("slot", "tone", "channel", "content")}
        slot = np.where(present, columns["slot"], 0)
        out = world.step(
            first_day + t, slot, columns["tone"], columns["channel"], columns["content"]
        )
        live = present & ~gone
        rows = {"client_id": np.flatnonzero(live), "day": np.full(int(live.sum()), first_day + t)}
        rows |= {k: v[live] for k, v in columns.items()}
        rows["slot"] = slot[live]
        rows |= {k: out[k][live] for k in NEEDED[6:]}
        parts.append(pl.DataFrame(rows))
        gone |= out["churned"]
    return pl.concat(parts)
