"""The same world as :mod:`simulate.world`, written one client at a time.

Slow and plain on purpose: each client is an object with scalar fields and each step is
the model read top to bottom. Tests hold the batched world to these draws.
"""

from __future__ import annotations

import math

from scipy.special import ndtri

from simulate import population as pop
from simulate import world as W
from simulate.config import PopulationConfig, ResponseConfig, ScenarioConfig
from simulate.labels import CHANNELS, N_CHANNELS, N_CONTENTS, N_SLOTS, N_TONES, SLOT_KEYS
from simulate.rng import TRAIT_DAY, uniform_scalar
from simulate.scenarios import ScenarioSchedule


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _clip(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


def _categorical(u: float, probs: list[float]) -> int:
    edge = 0.0
    for i, p in enumerate(probs[:-1]):
        edge += p
        if u < edge:
            return i
    return len(probs) - 1


class ReferenceClient:
    """One client: traits, latent state and the firm's records, as plain Python numbers."""

    def __init__(self, cfg: PopulationConfig, seed: int, client_id: int) -> None:
        self.seed, self.client_id = seed, client_id

        def u(stream: int) -> float:
            return uniform_scalar(seed, client_id, TRAIT_DAY, stream)

        def z(stream: int) -> float:
            return float(ndtri(u(stream)))

        self.segment = _categorical(u(pop.S_SEGMENT), cfg.segment_probs)
        self.consent_tier = _categorical(u(pop.S_TIER), cfg.consent_tier_probs)
        self.gender = _categorical(u(pop.S_GENDER), cfg.gender_probs)
        self.age_band = _categorical(u(pop.S_AGE), cfg.age_band_probs)
        self.slot_preference = _categorical(u(pop.S_SLOT), cfg.slot_preference_probs)
        self.declared_slot = int(
            _clip(
                round(self.slot_preference + cfg.declared_slot_noise_sd * z(pop.S_DECLARED_SLOT)),
                0,
                N_SLOTS - 1,
            )
        )
        self.literacy = _clip(
            cfg.literacy_mean
            + cfg.literacy_age_shift[self.age_band]
            + cfg.literacy_sd * z(pop.S_LITERACY),
            0.0,
            1.0,
        )
        self.susceptibility = _sigmoid(
            cfg.susceptibility_logit_mean
            + cfg.susceptibility_age_shift[self.age_band]
            + cfg.susceptibility_literacy * (self.literacy - 0.5)
            + cfg.susceptibility_logit_sd * z(pop.S_SUSCEPTIBILITY)
        )
        self.risk = _sigmoid(
            cfg.risk_segment_shift[self.segment] + cfg.risk_logit_sd * z(pop.S_RISK)
        )
        self.declared_risk = _clip(
            self.risk + cfg.declared_risk_noise_sd * z(pop.S_DECLARED), 0.0, 1.0
        )
        self.base_open = cfg.base_open_sd * z(pop.S_BASE_OPEN)
        self.weekend_affinity = cfg.weekend_affinity_sd * z(pop.S_WEEKEND)
        self.initial_trust = _clip(
            cfg.initial_trust_mean + cfg.initial_trust_sd * z(pop.S_TRUST), 0.05, 0.95
        )
        self.channel_affinity = [
            cfg.channel_affinity_mean[c] + cfg.channel_affinity_sd * z(pop.S_CHANNEL0 + c)
            for c in range(N_CHANNELS)
        ]
        self.tone_affinity = [
            cfg.tone_affinity_mean[k] + cfg.tone_affinity_sd * z(pop.S_TONE0 + k)
            for k in range(N_TONES)
        ]
        self.visit_propensity = cfg.visit_logit_mean + cfg.visit_logit_sd * z(pop.S_VISIT)
        p_visit = _sigmoid(self.visit_propensity)
        away = 1 + math.floor(math.log(u(pop.S_AWAY)) / math.log1p(-p_visit))
        away = min(away, pop.MAX_DAYS_AWAY)
        # latent state
        self.fatigue = 0.0
        self.novelty = [1.0] * N_CONTENTS
        self.trust = self.initial_trust
        self.anxiety = cfg.initial_anxiety_scale * self.susceptibility
        self.opted_out = [False] * N_CHANNELS
        self.churned = False
        # the firm's records
        self.sends: dict[int, tuple[int, int, int]] = {}  # day -> (channel, tone, content)
        self.last_send_day = W.NEVER
        self.visit_days = [-away]  # days the client visited (the firm's visit log)
        self.engagement = (
            [W.ENGAGEMENT_PRIOR_OPEN] * N_CHANNELS
            + [W.ENGAGEMENT_PRIOR_CLICK] * N_CHANNELS
            + [W.ENGAGEMENT_PRIOR_OPEN] * N_SLOTS
            + [W.ENGAGEMENT_PRIOR_CLICK] * N_TONES
        )

    def step(
        self,
        p: ResponseConfig,
        schedule: ScenarioSchedule,
        day: int,
        slot: int,
        tone: int,
        channel: int,
        content: int,
    ) -> dict[str, bool]:
        """One day for this client under action (slot, tone, channel, content)."""

        def u(stream: int) -> float:
            return uniform_scalar(self.seed, self.client_id, day, stream)

        fx = schedule.effects(day)
        if fx.anxiety_shock or fx.trust_shock or fx.stress:
            self.anxiety = _clip(
                self.anxiety
                + (fx.anxiety_shock + p.stress_anxiety * fx.stress) * self.susceptibility,
                0.0,
                1.0,
            )
            self.trust = _clip(self.trust + fx.trust_shock, 0.0, 1.0)

        alive = not self.churned
        slot_ix = max(slot - 1, 0)
        deliver = slot > 0 and alive and not self.opted_out[channel]
        relevance = (
            p.relevance[self.segment][content]
            + fx.relevance_delta[self.segment, content]
            + fx.stress * p.stress_relevance[content]
        )
        urgency = p.tone_urgency[tone]
        quiet = SLOT_KEYS[slot_ix] in p.quiet_hours.get(CHANNELS[channel], [])

        rhythm = p.rhythm_amp * (math.exp(-0.5 * (slot_ix - self.slot_preference) ** 2) - 0.5)
        open_logit = (
            p.open_base
            + self.base_open
            + self.channel_affinity[channel]
            + rhythm
            + p.channel_slot_open[channel][slot_ix]
            + p.open_urgency * urgency
            + p.open_trust * (self.trust - 0.5)
            - p.open_fatigue * self.fatigue
            + p.open_novelty * (self.novelty[content] - 1.0)
        )
        if day % 7 >= 5:
            open_logit += self.weekend_affinity
        opened = deliver and u(W.S_OPEN) < _sigmoid(open_logit)

        calm_p = _sigmoid(
            p.click_base
            + p.click_relevance * relevance
            + self.tone_affinity[tone]
            + p.click_trust * (self.trust - 0.5)
        )
        anxious_p = p.anxious_click_max * self.anxiety * urgency
        u_click = u(W.S_CLICK)
        calm_click = opened and u_click < calm_p
        anxious_click = opened and not calm_click and u_click < calm_p + (1.0 - calm_p) * anxious_p
        clicked = calm_click or anxious_click
        if calm_click:
            convert_p = _sigmoid(
                p.convert_base
                + p.convert_literacy * self.literacy
                + p.convert_relevance * relevance
            )
        else:
            convert_p = p.anxious_convert
        converted = clicked and u(W.S_CONVERT) < convert_p
        harmful = anxious_click and u(W.S_HARM) < p.harm_given_anxious * self.susceptibility

        # organic visit: a click is the day's visit; otherwise the client may come on their own
        away = min(day - self.visit_days[-1], pop.MAX_DAYS_AWAY)
        visit_logit = (
            self.visit_propensity
            + p.visit_trust * (self.trust - 0.5)
            - p.visit_recency * math.log(max(away, 1))
            + p.visit_stress * fx.stress
            + (p.visit_weekend if day % 7 >= 5 else 0.0)
        )
        visited = alive and (clicked or u(W.S_VISIT) < _sigmoid(visit_logit))
        if visited and not clicked:
            mean_relevance = (
                sum(
                    p.relevance[self.segment][k]
                    + fx.relevance_delta[self.segment, k]
                    + fx.stress * p.stress_relevance[k]
                    for k in range(N_CONTENTS)
                )
                / N_CONTENTS
            )
            converted = u(W.S_CONVERT) < _sigmoid(
                p.convert_base
                + p.visit_convert
                + p.convert_literacy * self.literacy
                + p.convert_relevance * mean_relevance
            )
        if visited:
            self.visit_days.append(day)

        unsub_logit = (
            p.unsub_base
            + p.unsub_fatigue * self.fatigue
            + p.unsub_irrelevance * max(-relevance, 0.0)
            + p.unsub_quiet * quiet
            + p.unsub_urgency * urgency
        )
        unsubscribed = deliver and u(W.S_UNSUB) < _sigmoid(unsub_logit)
        urgency_last_week = sum(
            p.tone_urgency[k] for d, (_, k, _) in self.sends.items() if day - 7 <= d < day
        )
        complaint_logit = (
            p.complaint_base
            + p.complaint_quiet * quiet
            + p.complaint_urgency_repeat * urgency_last_week * urgency
            + p.complaint_fatigue * max(self.fatigue - p.fatigue_tolerance, 0.0)
        )
        complaint = deliver and u(W.S_COMPLAINT) < _sigmoid(complaint_logit)

        fatigue_decay = 0.5 ** (1.0 / p.fatigue_half_life_days)
        novelty_decay = 0.5 ** (1.0 / p.novelty_half_life_days)
        anxiety_decay = 0.5 ** (1.0 / p.anxiety_half_life_days)
        self.fatigue = self.fatigue * fatigue_decay + deliver
        self.novelty = [n * novelty_decay + (1.0 - novelty_decay) for n in self.novelty]
        if deliver:
            self.novelty[content] *= p.novelty_drop
            self.trust += (
                p.trust_relevance * relevance
                - p.trust_fear * urgency
                - p.trust_late * (slot == N_SLOTS)
                + fx.send_trust[self.segment, content]
            )
        self.trust = _clip(
            self.trust + p.trust_conversion * converted - p.trust_harm * harmful, 0.0, 1.0
        )
        self.anxiety *= anxiety_decay
        if deliver:
            self.anxiety += p.anxiety_urgency * self.susceptibility * urgency
            self.anxiety *= 1.0 - p.tone_relief[tone]
        self.anxiety = _clip(self.anxiety, 0.0, 1.0)
        if unsubscribed:
            self.opted_out[channel] = True
        if deliver:
            self.sends[day] = (channel, tone, content)
            self.last_send_day = day
            a = W.ENGAGEMENT_EMA
            for column, outcome in (
                (W.E_OPEN_CHANNEL + channel, opened),
                (W.E_CLICK_CHANNEL + channel, clicked),
                (W.E_OPEN_SLOT + slot_ix, opened),
                (W.E_CLICK_TONE + tone, clicked),
            ):
                self.engagement[column] += a * (float(outcome) - self.engagement[column])

        hazard = _sigmoid(
            p.churn_base
            + p.churn_trust * (0.5 - self.trust)
            + p.churn_anxiety * self.anxiety
            + p.churn_fatigue * max(self.fatigue - p.fatigue_tolerance, 0.0)
        )
        churned = alive and u(W.S_CHURN) < hazard
        self.churned = self.churned or churned
        return {
            "sent": deliver,
            "opened": opened,
            "clicked": clicked,
            "calm_click": calm_click,
            "anxious_click": anxious_click,
            "converted": converted,
            "harmful": harmful,
            "unsubscribed": unsubscribed,
            "complaint": complaint,
            "visited": visited,
            "churned": churned,
        }

    def days_since_sent(self, day: int, component: int, value: int) -> int:
        """Days from the last message whose channel (0), tone (1) or content (2) was ``value``
        to ``day`` (``day - NEVER`` when there was none)."""
        days = [d for d, send in self.sends.items() if send[component] == value and d < day]
        return day - max(days, default=W.NEVER)

    def sent_within(self, day: int, window: int, tone: int | None = None) -> int:
        """Messages (of ``tone`` only, when given) sent in the ``window`` days before ``day``."""
        return sum(
            1
            for d, (_, k, _) in self.sends.items()
            if day - window <= d < day and (tone is None or k == tone)
        )

    def visits_30d(self, day: int) -> int:
        """Visits in the 30 days before ``day``."""
        return sum(1 for d in self.visit_days if day - W.VISIT_WINDOW <= d < day)


class ReferenceWorld:
    """A list of :class:`ReferenceClient` stepped one by one. Unlike ``World.step`` (four
    component arrays), :meth:`step` takes one ``(slot, tone, channel, content)`` tuple per client."""

    def __init__(
        self,
        population: PopulationConfig,
        response: ResponseConfig,
        scenario: ScenarioConfig,
        seed: int,
        client_ids: list[int],
    ) -> None:
        self.response = response
        self.schedule = ScenarioSchedule(scenario)
        self.clients = [ReferenceClient(population, seed, int(i)) for i in client_ids]

    def step(self, day: int, actions: list[tuple[int, int, int, int]]) -> list[dict[str, bool]]:
        """Step every client; ``actions[i]`` is client i's (slot, tone, channel, content)."""
        return [
            c.step(self.response, self.schedule, day, *a)
            for c, a in zip(self.clients, actions, strict=True)
        ]
