"""The deployable ceiling: how good a policy could be that knows the simulator's true model and
the population's trait distribution, but of each client only what a firm sees.

It never reads the world it acts in (it has no ``bind``): its inputs are the observation and the
masks each day, and the day's outcomes afterwards (``after_day``), like any firm, and it uses
them only as far as each client's consent tier allows: responses (opens, clicks, conversions)
shape a client's beliefs only at the tier that permits behavioural history (3), visits only where
visit recency is visible (1); its own send log counts at every tier. Per client it keeps a belief
over the hidden traits that matter most to planning and, where consent allows, updates it from
the responses it observes:

- the favourite send slot: a categorical posterior over the six slots (prior: the population's
  shares, times the likelihood of the contact time the client declared where the tier shows it),
  updated by Bayes' rule from each delivered message's open or not;
- the open propensity on each channel (the client's own offset plus the channel's affinity): a
  Gaussian posterior per channel (prior: the population's mean and spread), updated by a
  Laplace step on the logistic likelihood of the open;
- the calm-click affinity of each tone: the same, from clicks of opened messages.

Traits it cannot learn quickly (literacy, anxiety susceptibility, weekend affinity, visit
propensity) stay at the population's means; the goal segment is the declared one (tier >= 1; the
likeliest segment otherwise: planning on the population's average relevance instead did worse at
tier 0, 0.02 against 0.17 normalized value, measured). Fatigue, content novelty and the week's
urgency follow exactly from its own send log; trust and anxiety are tracked as their expectations
under the true dynamics and the scenario, moved by what it observes (deliveries, conversions,
visits). It plans as the
:class:`agents.oracle.Oracle` does, on a stand-in world whose traits and state are these beliefs
(the open probability averaged over the slot posterior). It is never exported: it reads the model.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

from agents.base import Policy
from agents.oracle import Oracle
from envs.config import Setup
from envs.consent import MIN_TIER
from envs.features import FEATURE_NAMES, I_DECLARED_SLOT, I_ENGAGEMENT, I_TIER, I_VISIT_RECENCY
from envs.spaces import JOINT_ACTIONS
from simulate.dynamics import anxiety_after_message, trust_change
from simulate.labels import N_CHANNELS, N_CONTENTS, N_SLOTS, N_TONES
from simulate.world import World

_GOALS = [FEATURE_NAMES.index(f) for f in FEATURE_NAMES if f.startswith("goal_")]
STAND_IN_OFFSET = 1 << 60
"""client ids of the stand-in world: clients drawn from the population, never the real ones"""


def declared_likelihood(noise_sd: float) -> np.ndarray:
    """(declared, favourite) probability that a client whose favourite slot is ``favourite``
    declares ``declared`` (the population's noise model: favourite + N(0, sd), rounded, clipped)."""
    slots = np.arange(N_SLOTS, dtype=np.float64)
    if noise_sd <= 0:
        return np.eye(N_SLOTS)
    upper = np.where(slots[:, None] == N_SLOTS - 1, np.inf, slots[:, None] + 0.5)
    lower = np.where(slots[:, None] == 0, -np.inf, slots[:, None] - 0.5)
    return ndtr((upper - slots[None, :]) / noise_sd) - ndtr((lower - slots[None, :]) / noise_sd)


class _View:
    """What the oracle's planner reads: a world and the day."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.day = 0


class DeployableCeiling(Policy):
    """A belief-state planner on the firm's own view of each client.

    Args:
        setup: the true model (response, population, scenario), which it may read.
    """

    name = "deployable_ceiling"
    history_dependent = True
    """its beliefs are built from each client's past days: off-policy estimation refuses it"""

    def __init__(self, setup: Setup, learn: bool = True) -> None:
        self.setup = setup
        self.learn = learn
        """False keeps every belief at the population's prior (the value of learning, measured)"""
        self.planner = Oracle()
        self.world: World | None = None
        self.beliefs: dict[str, np.ndarray] = {}

    # ----- beliefs --------------------------------------------------------------------------
    def _start(self, n: int) -> None:
        s = self.setup
        world = World(
            s.population,
            s.env.response,
            s.scenario,
            0,
            np.arange(n, dtype=np.uint64) + STAND_IN_OFFSET,
        )
        self.world = world
        self.view = _View(world)
        self.planner.bind(self.view)
        pop, t = s.population, world.traits
        # the population's means stand in for what cannot be learnt quickly
        for name in ("literacy", "susceptibility", "weekend_affinity", "visit_propensity"):
            values = getattr(t, name)
            values[:] = values.mean()
        t.base_open[:] = 0.0  # folded into the per-channel open offsets below
        open_mean = np.asarray(pop.channel_affinity_mean, dtype=np.float64)
        open_var = pop.base_open_sd**2 + pop.channel_affinity_sd**2
        tone_mean = np.asarray(pop.tone_affinity_mean, dtype=np.float64)
        self.beliefs = {
            "slot_logp": np.tile(np.log(np.asarray(pop.slot_preference_probs) + 1e-12), (n, 1)),
            "open_mean": np.tile(open_mean, (n, 1)),
            "open_precision": np.full((n, N_CHANNELS), 1.0 / max(open_var, 1e-9)),
            "tone_mean": np.tile(tone_mean, (n, 1)),
            "tone_precision": np.full((n, N_TONES), 1.0 / max(pop.tone_affinity_sd**2, 1e-9)),
        }
        lat = world.latent
        lat.fatigue[:] = 0.0
        lat.novelty[:] = 1.0
        lat.trust[:] = pop.initial_trust_mean
        lat.anxiety[:] = pop.initial_anxiety_scale * t.susceptibility
        world.urgency_last_week[:] = 0.0
        self._urgency_log = np.zeros((n, 7))
        self._actions = np.zeros((n, 4), dtype=np.int64)
        self._sync()

    def _declared(self, obs: np.ndarray) -> None:
        """Fold each visible declared contact time into the slot belief (once, on first sight)."""
        flags = np.asarray(obs)[:, I_DECLARED_SLOT : I_DECLARED_SLOT + N_SLOTS]
        shown = flags.max(axis=1) > 0.5
        self.beliefs["slot_logp"][shown] += np.log(
            declared_likelihood(self.setup.population.declared_slot_noise_sd)[
                flags[shown].argmax(axis=1)
            ]
            + 1e-12
        )

    def slot_posterior(self) -> np.ndarray:
        """(N, 6) each client's belief over its favourite send slot."""
        logp = self.beliefs["slot_logp"]
        p = np.exp(logp - logp.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    def _sync(self) -> None:
        """Write the beliefs into the stand-in world's traits."""
        t = self.world.traits
        t.slot_preference[:] = self.beliefs["slot_logp"].argmax(axis=1)
        t.channel_affinity[:] = self.beliefs["open_mean"]
        t.tone_affinity[:] = self.beliefs["tone_mean"]

    def _segments(self, obs: np.ndarray) -> None:
        goals = np.asarray(obs)[:, _GOALS]
        known = goals.max(axis=1) > 0.5
        likeliest = int(np.argmax(self.setup.population.segment_probs))
        self.world.traits.segment[:] = np.where(known, goals.argmax(axis=1), likeliest)

    # ----- Policy ----------------------------------------------------------------------------
    def start_rollout(self) -> None:
        """Forget every client: the next act() meets a fresh population."""
        self.world = None

    def act(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        if self.world is None or self.world.n != len(obs):
            self._start(len(obs))
            self._declared(obs)
        self._segments(obs)
        self._tier = np.asarray(obs)[:, I_TIER : I_TIER + 4].argmax(axis=1)
        w = self.world
        original = w.response_probabilities
        # (6, N): the same for every candidate of a day; slots first, so that each open
        # probability sums its six terms over contiguous rows, in the order sum(axis=1) does
        posterior = np.ascontiguousarray(self.slot_posterior().T)

        def marginal(day, rows, slot_ix, tone, channel, content):
            out = original(day, rows, slot_ix, tone, channel, content)
            by_slot = self._open_by_slot_t(out, rows, slot_ix)
            by_slot *= posterior.take(rows, axis=1)
            p_open = by_slot[0] + by_slot[1]
            for s in range(2, N_SLOTS):
                p_open += by_slot[s]
            out["open"] = p_open
            return out

        w.response_probabilities = marginal
        try:
            actions = JOINT_ACTIONS[self.planner.action_values(masks).argmax(axis=1)]
        finally:
            del w.response_probabilities
        self._actions = actions.copy()
        return actions

    def _open_by_slot(self, out, rows, slot_ix) -> np.ndarray:
        """(M, 6) open probability of each message under each possible favourite slot, from the
        stand-in world's answer (which assumed the likeliest slot)."""
        return self._open_by_slot_t(out, rows, slot_ix).T

    def _open_by_slot_t(self, out, rows, slot_ix) -> np.ndarray:
        """:meth:`_open_by_slot` laid out (6, M), contiguous: slot first."""
        w = self.world
        p = np.clip(out["open"], 1e-9, 1 - 1e-9)
        mode = w.traits.slot_preference.take(rows)
        rhythm = w._rhythm
        base = np.log(p / (1 - p))
        base -= rhythm.ravel().take(slot_ix * N_SLOTS + mode)
        logit = rhythm.T.take(slot_ix, axis=1)  # [favourite, i]: rhythm[slot_ix[i], favourite]
        logit += base
        np.negative(logit, out=logit)
        np.exp(logit, out=logit)
        logit += 1.0
        return np.divide(1.0, logit, out=logit)

    def _learn(self, rows, actions, pr, opened, clicked) -> None:
        """Update the beliefs of clients ``rows`` from the responses to their messages."""
        b = self.beliefs
        slot_ix, tone, channel = actions[:, 0] - 1, actions[:, 1], actions[:, 2]
        # the favourite slot: Bayes' rule on the open
        by_slot = self._open_by_slot(pr, rows, slot_ix)
        like = np.where(opened[:, None], by_slot, 1.0 - by_slot)
        b["slot_logp"][rows] += np.log(np.clip(like, 1e-12, 1.0))
        b["slot_logp"][rows] -= b["slot_logp"][rows].max(axis=1, keepdims=True)
        # the channel's open offset: a Laplace step on the logistic likelihood
        p_open = (by_slot * self.slot_posterior()[rows]).sum(axis=1)
        prec = b["open_precision"][rows, channel] + p_open * (1 - p_open)
        b["open_precision"][rows, channel] = prec
        b["open_mean"][rows, channel] += (opened - p_open) / prec
        # the tone's calm-click offset, from the clicks of opened messages
        calm = pr["calm_click"][opened]
        rows_o, tone_o = rows[opened], tone[opened]
        prec = b["tone_precision"][rows_o, tone_o] + calm * (1 - calm)
        b["tone_precision"][rows_o, tone_o] = prec
        b["tone_mean"][rows_o, tone_o] += (clicked[opened] - calm) / prec

    def after_day(self, day: int, outcomes: dict[str, np.ndarray], alive: np.ndarray) -> None:
        """Learn from the day's responses to its own actions; move the tracked state on a day."""
        self.observe(day, self._actions, outcomes)

    def observe(self, day: int, actions: np.ndarray, outcomes: dict[str, np.ndarray]) -> None:
        """Learn from the day's responses to ``actions`` (what was sent; only the delivered ones
        count) and move the tracked state on by one day."""
        w, a = self.world, np.asarray(actions)
        p = w.response
        self.view.day = day
        sent = np.flatnonzero(np.asarray(outcomes["sent"], dtype=bool))
        slot_ix, tone, channel, content = a[sent, 0] - 1, a[sent, 1], a[sent, 2], a[sent, 3]
        pr = w.response_probabilities(day, sent, slot_ix, tone, channel, content)
        opened = np.asarray(outcomes["opened"], dtype=bool)[sent]
        clicked = np.asarray(outcomes["clicked"], dtype=bool)[sent]
        tier = self._tier
        behaviour = tier >= MIN_TIER[I_ENGAGEMENT]  # responses may shape this client's beliefs
        unsent = np.ones(w.n, dtype=bool)
        unsent[sent] = False
        converted = np.asarray(outcomes["converted"], dtype=float)
        # below that tier a message's conversion counts only as the model expects it, and a
        # conversion without a message not at all
        p_conv = pr["open"] * pr["calm_click"] * pr["calm_convert"]
        converted[sent] = np.where(behaviour[sent], converted[sent], p_conv)
        converted[~behaviour & unsent] = 0.0
        if self.learn:
            keep = behaviour[sent]
            self._learn(
                sent[keep],
                a[sent[keep]],
                {k: v[keep] for k, v in pr.items()},
                opened[keep],
                clicked[keep],
            )
        # the tracked state: exactly from the send log, in expectation where it is hidden
        t, s = w.traits, w.latent
        fx = w.schedule.effects(day)
        if fx.anxiety_shock or fx.trust_shock or fx.stress:
            s.anxiety += (fx.anxiety_shock + p.stress_anxiety * fx.stress) * t.susceptibility
            s.trust += fx.trust_shock
        segment = t.segment[sent]
        p_harm = pr["harm"] * pr["anxious_click"] * (1 - pr["calm_click"]) * pr["open"]
        d_trust = trust_change(
            p,
            pr["relevance"],
            pr["urgency"],
            slot_ix == N_SLOTS - 1,
            converted[sent],
            p_harm,
            fx.send_trust[segment, content],
        )
        s.fatigue *= w._fatigue_decay
        s.fatigue[sent] += 1.0
        s.novelty *= w._novelty_decay
        s.novelty += 1.0 - w._novelty_decay
        s.novelty.ravel()[sent * N_CONTENTS + content] *= p.novelty_drop
        s.trust[sent] += d_trust
        s.trust[unsent] += p.trust_conversion * converted[unsent]
        np.clip(s.trust, 0.0, 1.0, out=s.trust)
        s.anxiety *= w._anxiety_decay
        s.anxiety[sent] = anxiety_after_message(
            p, s.anxiety[sent], t.susceptibility[sent], pr["urgency"], w._relief.take(tone)
        )
        np.clip(s.anxiety, 0.0, 1.0, out=s.anxiety)
        column = day % 7
        self._urgency_log[:, column] = 0.0
        self._urgency_log[sent, column] = pr["urgency"]
        w.urgency_last_week[:] = self._urgency_log.sum(axis=1)
        visited = np.asarray(outcomes["visited"], dtype=bool) & (tier >= MIN_TIER[I_VISIT_RECENCY])
        w.last_visit_day[visited] = day
        self.view.day = day + 1
        self._sync()
