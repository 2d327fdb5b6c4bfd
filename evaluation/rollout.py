"""Roll policies out on the same fresh clients with common random numbers."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from agents.base import Policy
from envs.config import RewardConfig, Setup, eval_seeds
from envs.core import CadenceCore
from simulate.labels import N_CHANNELS, N_SEGMENTS, N_SLOTS, N_TONES, TONES
from simulate.world import OUTCOMES

EVAL_CLIENT_OFFSET = 1 << 48
"""client ids used for evaluation start here: training (offset 0) never sees these clients"""
SUMMED = (*(o for o in OUTCOMES if o != "churned"), "violation")
"""per-client outcome counts a rollout sums over its days"""
URGENT = TONES.index("urgent")
VULNERABLE_SUSCEPTIBILITY = 0.6
"""clients above this anxiety susceptibility count as vulnerable"""
VULNERABLE_LITERACY = 0.3
"""clients below this financial literacy count as vulnerable"""


LINE_EVERY_S = 10.0
"""seconds between two progress lines where there is no terminal to draw a bar on"""


class Progress:
    """Progress of a wait longer than a few seconds, on stderr: tqdm's bar on a terminal; anywhere
    else (a pipe, a CI log, a notebook's captured stream) one plain line when it starts, then at
    most one every :data:`LINE_EVERY_S` seconds and one when it is done, so a log stays readable;
    nothing at all when ``enabled`` is False. Use it as a context manager."""

    def __init__(self, total: int, desc: str, unit: str, enabled: bool = True) -> None:
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.done = 0
        self.note = ""
        self.stream = sys.stderr
        terminal = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream) if terminal else None
        self.started = self.last = time.monotonic()
        if enabled and self.bar is None:
            self._line()

    def set_note(self, text: str) -> None:
        """What is being done now (a policy and seed), shown beside the count."""
        self.note = text
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def update(self, n: int = 1) -> None:
        """``n`` more of :attr:`total` done."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and (
            self.done >= self.total or time.monotonic() - self.last >= LINE_EVERY_S
        ):
            self._line()

    def _line(self) -> None:
        self.last = time.monotonic()
        note = f" ({self.note})" if self.note else ""
        consonant_y = self.unit.endswith("y") and self.unit[-2:-1] not in "aeiou"
        units = self.unit[:-1] + "ies" if consonant_y else self.unit + "s"
        print(
            f"{self.desc}: {self.done:,}/{self.total:,} {units}{note}, "
            f"{self.last - self.started:.0f} s",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Rollout:
    """Per-client totals of one policy on one seed's clients (arrays of shape (N,))."""

    policy: str
    seed: int
    totals: dict[str, np.ndarray]
    """summed daily outcomes per client, plus ``urgent`` (urgent messages delivered)"""
    value: np.ndarray
    """balanced objective per client over the horizon"""
    retained: np.ndarray
    """bool: the client had not churned at the horizon"""
    gender: np.ndarray
    age_band: np.ndarray
    vulnerable: np.ndarray
    """bool: high anxiety susceptibility or low financial literacy (hidden traits; audit only)"""
    horizon_days: int
    cadence: np.ndarray | None = None
    """(weekday 7, slot 6, tone 5, channel 3) delivered messages: when and how the policy speaks"""
    segment: np.ndarray | None = None
    """declared goal segment of each client (for the tone mix by segment)"""
    tone_by_segment: np.ndarray | None = None
    """(segments 4, tones 5) delivered messages"""
    alive_by_day: np.ndarray | None = None
    """(horizon,) share of clients not churned at the end of each day"""
    tier: np.ndarray | None = None
    """consent tier of each client (0..3)"""


def begin_rollout(
    policy: Policy,
    setup: Setup,
    num_clients: int,
    seed: int,
    client_id_offset: int = EVAL_CLIENT_OFFSET,
) -> tuple[CadenceCore, np.ndarray]:
    """The simulator core a rollout of ``policy`` runs in and its first (N, OBS_DIM) observations.

    ``num_clients`` fresh clients of ``seed`` (ids from ``client_id_offset``; no autoreset: a
    churned client stays gone); a privileged policy is bound to the core; the policy's
    ``start_rollout`` forgets the clients of any rollout before. Every rollout of a policy in
    evaluation (:func:`rollout`, :func:`evaluation.record.log_policy`,
    :func:`evaluation.offline.true_value`) starts here.
    """
    if not isinstance(policy, Policy):
        raise TypeError(
            f"{type(policy).__name__} is not an agents.base.Policy: derive the class from it "
            "(only act() is required; every other hook has a default)"
        )
    core = CadenceCore(setup, num_clients, autoreset=False, client_id_offset=client_id_offset)
    obs = core.reset(seed)
    if policy.privileged:
        policy.bind(core)
    policy.start_rollout()
    return core, obs


def rollout(
    policy: Policy,
    setup: Setup,
    num_clients: int,
    horizon_days: int,
    seed: int,
    on_day: Callable[[int, np.ndarray, dict[str, np.ndarray], np.ndarray], None] | None = None,
    yardstick: RewardConfig | None = None,
) -> Rollout:
    """Run ``policy`` for ``horizon_days`` on ``num_clients`` fresh clients of ``seed``.

    The value is scored with the ``yardstick`` weights (the run's ``eval.reward``; None: the
    balanced defaults of :class:`RewardConfig`), whatever reward ``setup`` trains on.
    ``on_day(day, actions, outcomes, alive)`` is called after each day (``alive``: not churned
    before today), for callers that keep a daily record.
    """
    core, obs = begin_rollout(policy, setup, num_clients, seed)
    balanced = (yardstick or RewardConfig()).weights()
    totals = {k: np.zeros(num_clients) for k in (*SUMMED, "urgent")}
    value = np.zeros(num_clients)
    churned = np.zeros(num_clients, dtype=bool)
    cadence = np.zeros((7, N_SLOTS, N_TONES, N_CHANNELS))
    tone_by_segment = np.zeros((N_SEGMENTS, N_TONES))
    segment = core.world.traits.segment
    alive_by_day = np.zeros(horizon_days)
    for day in range(horizon_days):
        weekday = core.day % 7
        actions = np.asarray(policy.act(obs, core.joint_masks()), dtype=np.int64)
        actions[churned, 0] = 0
        r = core.step(actions)
        alive = ~churned
        policy.after_day(day, r.outcomes, alive)
        if on_day is not None:
            on_day(day, actions, r.outcomes, alive)
        for k in SUMMED:
            totals[k] += r.outcomes[k] & alive
        totals["urgent"] += r.outcomes["sent"] & (actions[:, 1] == URGENT)
        value += alive * sum(w * r.outcomes[k] for k, w in balanced.items())
        churned |= r.outcomes["churned"]
        alive_by_day[day] = 1.0 - churned.mean()
        sent = r.outcomes["sent"]
        a = actions[sent]
        np.add.at(cadence[weekday], (a[:, 0] - 1, a[:, 1], a[:, 2]), 1.0)
        np.add.at(tone_by_segment, (segment[sent], a[:, 1]), 1.0)
        obs = r.obs
    t = core.world.traits
    vulnerable = (t.susceptibility > VULNERABLE_SUSCEPTIBILITY) | (t.literacy < VULNERABLE_LITERACY)
    return Rollout(
        policy.name,
        seed,
        totals,
        value,
        ~churned,
        t.gender.copy(),
        t.age_band.copy(),
        vulnerable,
        horizon_days,
        cadence,
        t.segment.copy(),
        tone_by_segment,
        alive_by_day,
        t.consent_tier.copy(),
    )


_FORKED: tuple | None = (
    None  # (policies, setup, num_clients, horizon_days, yardstick) shared with forked workers
)


def _forked_rollout(job: tuple[int, int]) -> Rollout:
    policies, setup, num_clients, horizon_days, yardstick = _FORKED
    torch = sys.modules.get("torch")  # loaded by a network policy; not imported for others
    if torch is not None:
        torch.set_num_threads(1)
    seed, index = job
    return rollout(policies[index], setup, num_clients, horizon_days, seed, yardstick=yardstick)


def evaluate(
    policies: Sequence[Policy],
    setup: Setup,
    num_clients: int = 2000,
    horizon_days: int = 90,
    seeds: Sequence[int] = tuple(eval_seeds(3)),
    progress: bool = True,
    workers: int = 1,
    yardstick: RewardConfig | None = None,
) -> list[Rollout]:
    """Roll every policy out on the same clients for each seed (common random numbers), each
    scored with ``yardstick`` (see :func:`rollout`).

    Shows its progress (:class:`Progress`: a bar on a terminal, a line every few seconds
    elsewhere) in days rolled out, or in rollouts with ``workers > 1``, when ``progress`` is set.
    ``workers > 1`` runs the rollouts in forked processes; each starts from the policy as it is
    now, so a policy with internal randomness (``random``) draws differently than in one process.
    """
    if workers > 1 and hasattr(os, "fork"):
        # each (seed, policy) rollout is independent: run them in forked processes (one per core)
        global _FORKED
        _FORKED = (list(policies), setup, num_clients, horizon_days, yardstick)
        jobs = [(seed, i) for seed in seeds for i in range(len(policies))]
        try:
            with (
                multiprocessing.get_context("fork").Pool(workers) as pool,
                Progress(len(jobs), "evaluating", "rollout", progress) as bar,
            ):
                results = []
                for result in pool.imap(_forked_rollout, jobs):
                    results.append(result)
                    bar.update()
                return results
        finally:
            _FORKED = None
    out = []
    jobs = [(seed, policy) for seed in seeds for policy in policies]
    with Progress(len(jobs) * horizon_days, "evaluating", "day", progress) as bar:
        for seed, policy in jobs:
            bar.set_note(f"{policy.name} seed {seed}")
            out.append(
                rollout(
                    policy,
                    setup,
                    num_clients,
                    horizon_days,
                    seed,
                    on_day=lambda *_: bar.update(),
                    yardstick=yardstick,
                )
            )
    return out
