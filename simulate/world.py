"""The batched world: N clients as arrays, one step is one day for all of them.

No Python loop over clients: every quantity is an array over clients and masks say who
is affected. ``simulate/reference.py`` is the same model written per client; tests hold
the two to the same draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulate import rng
from simulate.config import PopulationConfig, ResponseConfig, ScenarioConfig, quiet_table
from simulate.labels import N_CHANNELS, N_CONTENTS, N_SLOTS, N_TONES
from simulate.population import Traits, sample_traits, sigmoid
from simulate.scenarios import ScenarioSchedule

# Draw names of the daily streams.
S_OPEN, S_CLICK, S_CONVERT, S_HARM, S_UNSUB, S_COMPLAINT, S_CHURN = 1, 2, 3, 4, 5, 6, 7

ENGAGEMENT_EMA = 0.2
"""weight of the newest message in the firm's engagement averages"""
ENGAGEMENT_PRIOR_OPEN = 0.3
ENGAGEMENT_PRIOR_CLICK = 0.05
# Columns of the engagement array: what the firm's send log remembers per client.
E_OPEN_CHANNEL = 0  # + channel
E_CLICK_CHANNEL = E_OPEN_CHANNEL + N_CHANNELS  # + channel
E_OPEN_SLOT = E_CLICK_CHANNEL + N_CHANNELS  # + slot
E_CLICK_TONE = E_OPEN_SLOT + N_SLOTS  # + tone
N_ENGAGEMENT = E_CLICK_TONE + N_TONES
HISTORY_DAYS = 7
"""length of the send log window (days) used for caps and repeated-urgency complaints"""
NEVER = -10_000
"""``last_send_day`` of a client never messaged"""

OUTCOMES: tuple[str, ...] = (
    "sent", "opened", "clicked", "calm_click", "anxious_click", "converted", "harmful",
    "unsubscribed", "complaint", "churned",
)
"""per-client daily outcome names returned by :meth:`World.step`, each a bool array"""


@dataclass
class LatentState:
    """What changes daily and is never observed directly."""

    fatigue: np.ndarray
    """recent message load (one unit per message, decays with a half-life)"""
    novelty: np.ndarray
    """(N, contents) novelty 0..1 of each content type"""
    trust: np.ndarray
    """trust in the firm 0..1"""
    anxiety: np.ndarray
    """anxiety 0..1"""


class World:
    """N synthetic clients, their latent state and the firm's records of them.

    Args:
        population: how traits are drawn.
        response: how clients respond and how latent state moves.
        scenario: events over calendar days.
        seed: experiment seed; with a client id it fixes a client's traits and luck.
        client_ids: uint64 ids of the clients in the batch, one per row.
    """

    def __init__(self, population: PopulationConfig, response: ResponseConfig,
                 scenario: ScenarioConfig, seed: int, client_ids: np.ndarray) -> None:
        self.population = population
        self.response = response
        self.schedule = ScenarioSchedule(scenario)
        self.seed = int(seed)
        self.client_id = np.asarray(client_ids, dtype=np.uint64).copy()
        n = self.n = len(self.client_id)
        self.rows = np.arange(n)
        self.traits: Traits = sample_traits(population, self.seed, self.client_id)
        self.latent = LatentState(
            fatigue=np.zeros(n), novelty=np.ones((n, N_CONTENTS)), trust=np.zeros(n), anxiety=np.zeros(n))
        self.opted_out = np.zeros((n, N_CHANNELS), dtype=bool)
        """(N, channels) absorbing opt-outs; the firm knows them"""
        self.churned = np.zeros(n, dtype=bool)
        self.channel_log = np.zeros((n, HISTORY_DAYS), dtype=np.int8)
        """channel + 1 of the message sent on day d at column d % 7 (0: none)"""
        self.tone_log = np.zeros((n, HISTORY_DAYS), dtype=np.int8)
        """tone + 1 of the message sent on day d at column d % 7 (0: none)"""
        self.last_send_day = np.full(n, NEVER, dtype=np.int32)
        self.engagement = np.zeros((n, N_ENGAGEMENT), dtype=np.float32)
        """(N, 17) the firm's EMAs of opens/clicks by channel, slot and tone"""
        self._reset_rows(self.rows)
        self._quiet = quiet_table(response.quiet_hours)
        self._relevance = np.asarray(response.relevance, dtype=np.float64)
        self._urgency = np.asarray(response.tone_urgency, dtype=np.float64)
        self._urgency_log = np.concatenate([[0.0], self._urgency])
        self._relief = np.asarray(response.tone_relief, dtype=np.float64)
        self._stress_relevance = np.asarray(response.stress_relevance, dtype=np.float64)
        slots = np.arange(N_SLOTS)
        # rhythm[slot, favourite]: open logit of sending in `slot` to a client who prefers `favourite`
        self._rhythm = response.rhythm_amp * (np.exp(-0.5 * (slots[:, None] - slots[None, :]) ** 2) - 0.5)
        self._fatigue_decay = 0.5 ** (1.0 / response.fatigue_half_life_days)
        self._novelty_decay = 0.5 ** (1.0 / response.novelty_half_life_days)
        self._anxiety_decay = 0.5 ** (1.0 / response.anxiety_half_life_days)

    def _reset_rows(self, rows: np.ndarray) -> None:
        t, s = self.traits, self.latent
        s.fatigue[rows] = 0.0
        s.novelty[rows] = 1.0
        s.trust[rows] = t.initial_trust[rows]
        s.anxiety[rows] = self.population.initial_anxiety_scale * t.susceptibility[rows]
        self.opted_out[rows] = False
        self.churned[rows] = False
        self.channel_log[rows] = 0
        self.tone_log[rows] = 0
        self.last_send_day[rows] = NEVER
        self.engagement[rows, :E_OPEN_SLOT] = np.repeat(
            [ENGAGEMENT_PRIOR_OPEN, ENGAGEMENT_PRIOR_CLICK], N_CHANNELS)
        self.engagement[rows, E_OPEN_SLOT:E_CLICK_TONE] = ENGAGEMENT_PRIOR_OPEN
        self.engagement[rows, E_CLICK_TONE:] = ENGAGEMENT_PRIOR_CLICK

    def replace(self, rows: np.ndarray, new_ids: np.ndarray) -> None:
        """Put new clients (uint64 ``new_ids``) in ``rows``: fresh traits and state."""
        rows = np.asarray(rows)
        if rows.size == 0:
            return
        self.client_id[rows] = new_ids
        self.traits.assign(rows, sample_traits(self.population, self.seed, self.client_id[rows]))
        self._reset_rows(rows)

    def sends_last_week(self) -> tuple[np.ndarray, np.ndarray]:
        """Messages delivered in the 7 days before the next step: (all channels, SMS), int arrays."""
        return (self.channel_log > 0).sum(axis=1), (self.channel_log == 3).sum(axis=1)

    def state_nbytes(self) -> int:
        """Bytes of per-client state held by the world (traits, latent state, records)."""
        s = self.latent
        return (self.traits.nbytes() + self.client_id.nbytes + s.fatigue.nbytes + s.novelty.nbytes
                + s.trust.nbytes + s.anxiety.nbytes + self.opted_out.nbytes + self.churned.nbytes
                + self.channel_log.nbytes + self.tone_log.nbytes + self.last_send_day.nbytes
                + self.engagement.nbytes)

    def step(self, day: int, slot: np.ndarray, tone: np.ndarray, channel: np.ndarray,
             content: np.ndarray) -> dict[str, np.ndarray]:
        """Advance every client by one calendar ``day`` under the given actions.

        Args:
            day: calendar day (int); weekday is ``day % 7`` with 0 = Monday.
            slot: (N,) 0 = no send, s >= 1 = send in slot s - 1.
            tone, channel, content: (N,) component indices (ignored where slot is 0).

        A message to a churned client or on a channel the client opted out of is not
        delivered, whatever was asked. Returns the outcomes named in :data:`OUTCOMES`.
        """
        p, t, s = self.response, self.traits, self.latent
        rows = self.rows
        fx = self.schedule.effects(day)
        keys = rng.day_keys(self.seed, self.client_id, day)
        alive = ~self.churned

        if fx.anxiety_shock or fx.trust_shock or fx.stress:
            s.anxiety += (fx.anxiety_shock + p.stress_anxiety * fx.stress) * t.susceptibility
            s.trust += fx.trust_shock
            np.clip(s.anxiety, 0.0, 1.0, out=s.anxiety)
            np.clip(s.trust, 0.0, 1.0, out=s.trust)

        slot = np.asarray(slot)
        slot_ix = np.maximum(slot.astype(np.intp) - 1, 0)
        deliver = (slot > 0) & alive & ~self.opted_out[rows, channel]
        relevance_today = self._relevance + fx.relevance_delta + fx.stress * self._stress_relevance
        relevance = relevance_today[t.segment, content]
        urgency = self._urgency[tone]
        quiet = self._quiet[slot_ix, channel]

        weekend = (day % 7) >= 5
        open_logit = (p.open_base + t.base_open + t.channel_affinity[rows, channel]
                      + self._rhythm[slot_ix, t.slot_preference]
                      + p.open_urgency * urgency
                      + p.open_trust * (s.trust - 0.5) - p.open_fatigue * s.fatigue
                      + p.open_novelty * (s.novelty[rows, content] - 1.0))
        if weekend:
            open_logit += t.weekend_affinity
        opened = deliver & (rng.uniform(keys, S_OPEN) < sigmoid(open_logit))

        calm_p = sigmoid(p.click_base + p.click_relevance * relevance + t.tone_affinity[rows, tone]
                         + p.click_trust * (s.trust - 0.5))
        anxious_p = p.anxious_click_max * s.anxiety * urgency
        u_click = rng.uniform(keys, S_CLICK)
        calm_click = opened & (u_click < calm_p)
        anxious_click = opened & ~calm_click & (u_click < calm_p + (1.0 - calm_p) * anxious_p)
        clicked = calm_click | anxious_click

        convert_p = np.where(
            calm_click,
            sigmoid(p.convert_base + p.convert_literacy * t.literacy + p.convert_relevance * relevance),
            p.anxious_convert)
        converted = clicked & (rng.uniform(keys, S_CONVERT) < convert_p)
        harmful = anxious_click & (rng.uniform(keys, S_HARM) < p.harm_given_anxious * t.susceptibility)

        unsub_logit = (p.unsub_base + p.unsub_fatigue * s.fatigue
                       + p.unsub_irrelevance * np.maximum(-relevance, 0.0)
                       + p.unsub_quiet * quiet + p.unsub_urgency * urgency)
        unsubscribed = deliver & (rng.uniform(keys, S_UNSUB) < sigmoid(unsub_logit))
        urgency_last_week = self._urgency_log[self.tone_log].sum(axis=1)
        complaint_logit = (p.complaint_base + p.complaint_quiet * quiet
                           + p.complaint_urgency_repeat * urgency_last_week * urgency)
        complaint = deliver & (rng.uniform(keys, S_COMPLAINT) < sigmoid(complaint_logit))

        # latent dynamics: today's message, then the day's recovery
        sent = deliver.astype(np.float64)
        s.fatigue *= self._fatigue_decay
        s.fatigue += sent
        s.novelty *= self._novelty_decay
        s.novelty += 1.0 - self._novelty_decay
        s.novelty[rows[deliver], content[deliver]] *= p.novelty_drop
        s.trust += sent * (p.trust_relevance * relevance - p.trust_fear * urgency
                           - p.trust_late * (slot == N_SLOTS) + fx.send_trust[t.segment, content])
        s.trust += p.trust_conversion * converted - p.trust_harm * harmful
        np.clip(s.trust, 0.0, 1.0, out=s.trust)
        s.anxiety *= self._anxiety_decay
        s.anxiety += sent * p.anxiety_urgency * t.susceptibility * urgency
        s.anxiety *= 1.0 - sent * self._relief[tone]
        np.clip(s.anxiety, 0.0, 1.0, out=s.anxiety)
        self.opted_out[rows[unsubscribed], channel[unsubscribed]] = True

        column = day % HISTORY_DAYS
        self.channel_log[:, column] = np.where(deliver, channel + 1, 0)
        self.tone_log[:, column] = np.where(deliver, tone + 1, 0)
        self.last_send_day[deliver] = day
        self._record_engagement(deliver, slot_ix, tone, channel, opened, clicked)

        hazard = sigmoid(p.churn_base + p.churn_trust * (0.5 - s.trust) + p.churn_anxiety * s.anxiety
                         + p.churn_fatigue * np.maximum(s.fatigue - p.fatigue_tolerance, 0.0))
        churned = alive & (rng.uniform(keys, S_CHURN) < hazard)
        self.churned |= churned
        return {
            "sent": deliver, "opened": opened, "clicked": clicked, "calm_click": calm_click,
            "anxious_click": anxious_click, "converted": converted, "harmful": harmful,
            "unsubscribed": unsubscribed, "complaint": complaint, "churned": churned,
        }

    def _record_engagement(self, deliver: np.ndarray, slot_ix: np.ndarray, tone: np.ndarray,
                           channel: np.ndarray, opened: np.ndarray, clicked: np.ndarray) -> None:
        who = np.flatnonzero(deliver)
        if who.size == 0:
            return
        e = self.engagement
        for column, outcome in (
            (E_OPEN_CHANNEL + channel[who], opened[who]),
            (E_CLICK_CHANNEL + channel[who], clicked[who]),
            (E_OPEN_SLOT + slot_ix[who], opened[who]),
            (E_CLICK_TONE + tone[who], clicked[who]),
        ):
            e[who, column] += np.float32(ENGAGEMENT_EMA) * (outcome.astype(np.float32) - e[who, column])
