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
from simulate.dynamics import anxiety_after_message, churn_hazard, expit, trust_change
from simulate.labels import ACTION_LABELS, ACTION_NVEC, N_CHANNELS, N_CONTENTS, N_SLOTS, N_TONES
from simulate.population import MAX_DAYS_AWAY, Traits, sample_traits
from simulate.scenarios import ScenarioSchedule

# Draw names of the daily streams.
S_OPEN, S_CLICK, S_CONVERT, S_HARM, S_UNSUB, S_COMPLAINT, S_CHURN, S_VISIT = 1, 2, 3, 4, 5, 6, 7, 8

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
VISIT_WINDOW = 30
"""days of visits the firm's visit log keeps (``visits_30d``); its send log keeps as many"""
_VISIT_MASK = np.uint32((1 << VISIT_WINDOW) - 1)

_COMPONENTS = tuple(ACTION_LABELS)
"""names of the action components, in action order"""

OUTCOMES: tuple[str, ...] = (
    "sent",
    "opened",
    "clicked",
    "calm_click",
    "anxious_click",
    "converted",
    "harmful",
    "unsubscribed",
    "complaint",
    "visited",
    "churned",
)
"""per-client daily outcome names returned by :meth:`World.step`, each a bool array.
``visited``: the client came to the app or site that day, by a click or on their own (a click
takes the place of that day's organic chance); ``converted``: a beneficial action that day, after
a click or an organic visit."""


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

    def __init__(
        self,
        population: PopulationConfig,
        response: ResponseConfig,
        scenario: ScenarioConfig,
        seed: int,
        client_ids: np.ndarray,
    ) -> None:
        self.population = population
        self.response = response
        self.schedule = ScenarioSchedule(scenario)
        self.seed = int(seed)
        self.client_id = np.asarray(client_ids, dtype=np.uint64).copy()
        n = self.n = len(self.client_id)
        self.rows = np.arange(n)
        self.traits: Traits = sample_traits(population, self.seed, self.client_id)
        self._client_key = rng.client_keys(self.seed, self.client_id)
        """the day-independent half of each client's daily draw keys"""
        self.latent = LatentState(
            fatigue=np.zeros(n),
            novelty=np.ones((n, N_CONTENTS)),
            trust=np.zeros(n),
            anxiety=np.zeros(n),
        )
        self.opted_out = np.zeros((n, N_CHANNELS), dtype=bool)
        """(N, channels) absorbing opt-outs; the firm knows them"""
        self.churned = np.zeros(n, dtype=bool)
        self.channel_log = np.zeros((n, HISTORY_DAYS), dtype=np.int8)
        """channel + 1 of the message sent on day d at column d % 7 (0: none)"""
        self.tone_log = np.zeros((n, HISTORY_DAYS), dtype=np.int8)
        """tone + 1 of the message sent on day d at column d % 7 (0: none)"""
        self.last_send_day = np.full(n, NEVER, dtype=np.int32)
        self.last_channel_day = np.full((n, N_CHANNELS), NEVER, dtype=np.int32)
        """(N, channels) calendar day of the last message on each channel (NEVER: none)"""
        self.last_tone_day = np.full((n, N_TONES), NEVER, dtype=np.int32)
        """(N, tones) calendar day of the last message in each tone"""
        self.last_content_day = np.full((n, N_CONTENTS), NEVER, dtype=np.int32)
        """(N, contents) calendar day of the last message of each content"""
        self.send_log = np.zeros(n, dtype=np.uint32)
        """bit i set: a message was delivered i + 1 days before the next step (30 days kept)"""
        self.engagement = np.zeros((n, N_ENGAGEMENT), dtype=np.float32)
        """(N, 17) the firm's EMAs of opens/clicks by channel, slot and tone"""
        self.urgency_last_week = np.zeros(n)
        """summed urgency of the messages in ``tone_log`` (kept in step with it)"""
        self.last_visit_day = np.zeros(n, dtype=np.int32)
        """calendar day of the client's last visit (first-party behaviour the firm sees)"""
        self.visit_log = np.zeros(n, dtype=np.uint32)
        """bit i set: the client visited i + 1 days before the next step (30 days kept)"""
        self._reset_rows(self.rows)
        self._quiet = quiet_table(response.quiet_hours)
        self._relevance = np.asarray(response.relevance, dtype=np.float64)
        self._slot_open = np.asarray(response.channel_slot_open, dtype=np.float64).T.copy()
        """(slots, channels) open logit of a send on a channel in a slot"""
        self._urgency = np.asarray(response.tone_urgency, dtype=np.float64)
        self._urgency_log = np.concatenate([[0.0], self._urgency])
        self._relief = np.asarray(response.tone_relief, dtype=np.float64)
        self._stress_relevance = np.asarray(response.stress_relevance, dtype=np.float64)
        slots = np.arange(N_SLOTS)
        # rhythm[slot, favourite]: open logit of sending in `slot` to a client who prefers `favourite`
        self._rhythm = response.rhythm_amp * (
            np.exp(-0.5 * (slots[:, None] - slots[None, :]) ** 2) - 0.5
        )
        self._fatigue_decay = 0.5 ** (1.0 / response.fatigue_half_life_days)
        self._novelty_decay = 0.5 ** (1.0 / response.novelty_half_life_days)
        self._anxiety_decay = 0.5 ** (1.0 / response.anxiety_half_life_days)
        self._log_away = np.log(np.arange(MAX_DAYS_AWAY + 1).clip(1, None))
        """log(days since the last visit), by days (0 reads as 1)"""

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
        self.urgency_last_week[rows] = 0.0
        self.last_send_day[rows] = NEVER
        self.last_channel_day[rows] = NEVER
        self.last_tone_day[rows] = NEVER
        self.last_content_day[rows] = NEVER
        self.send_log[rows] = 0
        away = t.initial_days_away[rows].astype(np.int32)
        self.last_visit_day[rows] = -away
        self.visit_log[rows] = np.where(
            away <= VISIT_WINDOW, np.left_shift(np.uint32(1), (away - 1).clip(0, 31)), 0
        ).astype(np.uint32)
        self.engagement[rows, :E_OPEN_SLOT] = np.repeat(
            [ENGAGEMENT_PRIOR_OPEN, ENGAGEMENT_PRIOR_CLICK], N_CHANNELS
        )
        self.engagement[rows, E_OPEN_SLOT:E_CLICK_TONE] = ENGAGEMENT_PRIOR_OPEN
        self.engagement[rows, E_CLICK_TONE:] = ENGAGEMENT_PRIOR_CLICK

    def replace(self, rows: np.ndarray, new_ids: np.ndarray) -> None:
        """Put new clients (uint64 ``new_ids``) in ``rows``: fresh traits and state."""
        rows = np.asarray(rows)
        if rows.size == 0:
            return
        self.client_id[rows] = new_ids
        self._client_key[rows] = rng.client_keys(self.seed, self.client_id[rows])
        self.traits.assign(rows, sample_traits(self.population, self.seed, self.client_id[rows]))
        self._reset_rows(rows)

    def state_nbytes(self) -> int:
        """Bytes of per-client state held by the world (traits, latent state, records)."""
        s = self.latent
        return (
            self.traits.nbytes()
            + self.client_id.nbytes
            + self._client_key.nbytes
            + s.fatigue.nbytes
            + s.novelty.nbytes
            + s.trust.nbytes
            + s.anxiety.nbytes
            + self.opted_out.nbytes
            + self.churned.nbytes
            + self.channel_log.nbytes
            + self.tone_log.nbytes
            + self.last_send_day.nbytes
            + self.last_channel_day.nbytes
            + self.last_tone_day.nbytes
            + self.last_content_day.nbytes
            + self.send_log.nbytes
            + self.urgency_last_week.nbytes
            + self.last_visit_day.nbytes
            + self.visit_log.nbytes
            + self.engagement.nbytes
        )

    def check_actions(self, *components: np.ndarray) -> list[np.ndarray]:
        """(slot, tone, channel, content) as (N,) integer arrays within their ranges, or ``ValueError``
        naming the component, the value, the row and the range."""
        out = []
        for name, size, values in zip(_COMPONENTS, ACTION_NVEC, components, strict=True):
            values = np.asarray(values)
            if values.shape != (self.n,):
                raise ValueError(
                    f"World.step: {name} must have shape ({self.n},), got {values.shape}"
                )
            if not np.issubdtype(values.dtype, np.integer):
                raise ValueError(
                    f"World.step: {name} must be an integer array, got dtype {values.dtype}"
                )
            if values.size and (values.min() < 0 or values.max() >= size):
                row = int(np.flatnonzero((values < 0) | (values >= size))[0])
                raise ValueError(
                    f"World.step: {name} of row {row} is {int(values[row])}; "
                    f"allowed range is 0..{size - 1}"
                )
            out.append(values)
        return out

    def response_probabilities(
        self,
        day: int,
        rows: np.ndarray,
        slot_ix: np.ndarray,
        tone: np.ndarray,
        channel: np.ndarray,
        content: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Probabilities of each response to a message, for clients ``rows`` (repeats allowed).

        Args:
            day: calendar day of the send.
            rows: client rows, one per candidate message.
            slot_ix: send slot 0..5 (not the action's slot number), tone, channel, content: per candidate.

        Returns ``open``; ``calm_click`` (given open); ``anxious_click`` (the anxiety part, given
        open and no calm click); ``calm_convert`` (given a calm click); ``harm`` (given an
        anxious click); ``unsubscribe``; ``complaint``; plus ``relevance`` and ``urgency``.
        The world's own draws use exactly these; the privileged oracle reads them too.
        """
        p, t, s = self.response, self.traits, self.latent
        fx = self.schedule.effects(day)
        relevance_today = self._relevance + fx.relevance_delta + fx.stress * self._stress_relevance
        relevance = relevance_today.ravel().take(t.segment[rows] * N_CONTENTS + content)
        urgency = self._urgency.take(tone)
        quiet = self._quiet.ravel().take(slot_ix * N_CHANNELS + channel)
        trust, fatigue = s.trust[rows], s.fatigue[rows]
        open_logit = (
            p.open_base
            + t.base_open[rows]
            + t.channel_affinity.ravel().take(rows * N_CHANNELS + channel)
            + self._rhythm.ravel().take(slot_ix * N_SLOTS + t.slot_preference[rows])
            + self._slot_open.ravel().take(slot_ix * N_CHANNELS + channel)
            + p.open_urgency * urgency
            + p.open_trust * (trust - 0.5)
            - p.open_fatigue * fatigue
            + p.open_novelty * (s.novelty.ravel().take(rows * N_CONTENTS + content) - 1.0)
        )
        if (day % 7) >= 5:  # weekend
            open_logit += t.weekend_affinity[rows]
        unsub_logit = (
            p.unsub_base
            + p.unsub_fatigue * fatigue
            + p.unsub_irrelevance * np.maximum(-relevance, 0.0)
            + p.unsub_quiet * quiet
            + p.unsub_urgency * urgency
        )
        complaint_logit = (
            p.complaint_base
            + p.complaint_quiet * quiet
            + p.complaint_urgency_repeat * self.urgency_last_week[rows] * urgency
            + p.complaint_fatigue * np.maximum(fatigue - p.fatigue_tolerance, 0.0)
        )
        return {
            "open": expit(open_logit),
            "calm_click": expit(
                p.click_base
                + p.click_relevance * relevance
                + t.tone_affinity.ravel().take(rows * N_TONES + tone)
                + p.click_trust * (trust - 0.5)
            ),
            "anxious_click": p.anxious_click_max * s.anxiety[rows] * urgency,
            "calm_convert": expit(
                p.convert_base
                + p.convert_literacy * t.literacy[rows]
                + p.convert_relevance * relevance
            ),
            "harm": p.harm_given_anxious * t.susceptibility[rows],
            "unsubscribe": expit(unsub_logit),
            "complaint": expit(complaint_logit),
            "relevance": relevance,
            "urgency": urgency,
        }

    def visit_probability(self, day: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Probability of an organic visit today for clients ``rows`` (all when None), before
        any message: own propensity, trust, weekend, market stress and days since the last visit."""
        p, t, s = self.response, self.traits, self.latent
        rows = self.rows if rows is None else rows
        away = np.minimum(day - self.last_visit_day[rows], MAX_DAYS_AWAY)
        logit = t.visit_propensity[rows] + p.visit_trust * (s.trust[rows] - 0.5)
        logit -= p.visit_recency * self._log_away.take(away)
        shift = p.visit_stress * self.schedule.effects(day).stress
        if (day % 7) >= 5:
            shift += p.visit_weekend
        if shift:
            logit += shift
        return expit(logit)

    def visit_convert_probability(self, day: int, rows: np.ndarray) -> np.ndarray:
        """Probability that an organic visit (no click) of clients ``rows`` converts today."""
        p, t = self.response, self.traits
        fx = self.schedule.effects(day)
        relevance = self._relevance + fx.relevance_delta + fx.stress * self._stress_relevance
        mean_relevance = relevance.mean(axis=1).take(t.segment[rows])
        return expit(
            p.convert_base
            + p.visit_convert
            + p.convert_literacy * t.literacy[rows]
            + p.convert_relevance * mean_relevance
        )

    def step(
        self, day: int, slot: np.ndarray, tone: np.ndarray, channel: np.ndarray, content: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Advance every client by one calendar ``day`` under the given actions.

        Args:
            day: calendar day (int); weekday is ``day % 7`` with 0 = Monday.
            slot: (N,) 0 = no send, s >= 1 = send in slot s - 1.
            tone, channel, content: (N,) component indices (ignored where slot is 0).

        A message to a churned client or on a channel the client opted out of is not
        delivered, whatever was asked. Components outside their range (or arrays of another
        length or a non-integer dtype) raise ``ValueError`` before any state moves: the env
        faces check actions first, and this is the second line. Returns the outcomes named
        in :data:`OUTCOMES`.
        """
        slot, tone, channel, content = self.check_actions(slot, tone, channel, content)
        p, t, s = self.response, self.traits, self.latent
        fx = self.schedule.effects(day)
        keys = rng.keys_on(self._client_key, day)
        alive = ~self.churned

        if fx.anxiety_shock or fx.trust_shock or fx.stress:
            s.anxiety += (fx.anxiety_shock + p.stress_anxiety * fx.stress) * t.susceptibility
            s.trust += fx.trust_shock
            np.clip(s.anxiety, 0.0, 1.0, out=s.anxiety)
            np.clip(s.trust, 0.0, 1.0, out=s.trust)

        slot = np.asarray(slot)
        deliver = (slot > 0) & alive
        deliver[deliver] &= ~self.opted_out[np.flatnonzero(deliver), np.asarray(channel)[deliver]]
        who = np.flatnonzero(deliver)
        # The response is computed for the clients who got a message only (subscript _w).
        keys_w = keys[who]
        channel_w, tone_w, content_w = (
            np.asarray(a, dtype=np.intp)[who] for a in (channel, tone, content)
        )
        slot_w = slot[who].astype(np.intp) - 1
        pr = self.response_probabilities(day, who, slot_w, tone_w, channel_w, content_w)
        relevance, urgency = pr["relevance"], pr["urgency"]
        opened = rng.uniform(keys_w, S_OPEN) < pr["open"]
        u_click = rng.uniform(keys_w, S_CLICK)
        calm_p = pr["calm_click"]
        calm_click = opened & (u_click < calm_p)
        anxious_click = (
            opened & ~calm_click & (u_click < calm_p + (1.0 - calm_p) * pr["anxious_click"])
        )
        clicked = calm_click | anxious_click
        convert_p = np.where(calm_click, pr["calm_convert"], p.anxious_convert)
        converted = clicked & (rng.uniform(keys_w, S_CONVERT) < convert_p)
        susceptibility = t.susceptibility[who]
        harmful = anxious_click & (rng.uniform(keys_w, S_HARM) < pr["harm"])
        # organic visits: a click is that day's visit, so the organic chance only adds the rest
        visited = alive & (rng.uniform(keys, S_VISIT) < self.visit_probability(day))
        clicked_dense = np.zeros(self.n, dtype=bool)
        clicked_dense[who] = clicked
        visited |= clicked_dense
        organic = np.flatnonzero(visited & ~clicked_dense)
        organic_converted = rng.uniform(keys[organic], S_CONVERT) < (
            self.visit_convert_probability(day, organic)
        )
        unsubscribed = rng.uniform(keys_w, S_UNSUB) < pr["unsubscribe"]
        complaint = rng.uniform(keys_w, S_COMPLAINT) < pr["complaint"]
        trust = s.trust[who]
        pair_w = t.segment[who] * N_CONTENTS + content_w
        at_content = who * N_CONTENTS + content_w

        # latent dynamics: today's message, then the day's recovery
        s.fatigue *= self._fatigue_decay
        s.fatigue[who] += 1.0
        s.novelty *= self._novelty_decay
        s.novelty += 1.0 - self._novelty_decay
        s.novelty.ravel()[at_content] *= p.novelty_drop
        s.trust[who] = trust + trust_change(
            p,
            relevance,
            urgency,
            slot_w == N_SLOTS - 1,
            converted,
            harmful,
            fx.send_trust.ravel().take(pair_w),
        )
        s.trust[organic[organic_converted]] += p.trust_conversion
        np.clip(s.trust, 0.0, 1.0, out=s.trust)
        s.anxiety *= self._anxiety_decay
        s.anxiety[who] = anxiety_after_message(
            p, s.anxiety[who], susceptibility, urgency, self._relief.take(tone_w)
        )
        np.clip(s.anxiety, 0.0, 1.0, out=s.anxiety)
        self.opted_out[who[unsubscribed], channel_w[unsubscribed]] = True

        column = day % HISTORY_DAYS
        self.urgency_last_week -= self._urgency_log.take(self.tone_log[:, column])
        self.urgency_last_week[who] += urgency
        self.channel_log[:, column] = 0
        self.channel_log[who, column] = channel_w + 1
        self.tone_log[:, column] = 0
        self.tone_log[who, column] = tone_w + 1
        self.last_send_day[who] = day
        self.last_channel_day[who, channel_w] = day
        self.last_tone_day[who, tone_w] = day
        self.last_content_day[who, content_w] = day
        self.send_log <<= np.uint32(1)
        self.send_log[who] |= np.uint32(1)
        self.send_log &= _VISIT_MASK
        self._record_engagement(who, slot_w, tone_w, channel_w, opened, clicked)
        self.last_visit_day[visited] = day
        self.visit_log <<= np.uint32(1)
        self.visit_log |= visited
        self.visit_log &= _VISIT_MASK

        hazard = churn_hazard(p, s.trust, s.anxiety, s.fatigue)
        churned = alive & (rng.uniform(keys, S_CHURN) < hazard)
        self.churned |= churned
        out = {"sent": deliver}
        converted_dense = np.zeros(self.n, dtype=bool)
        converted_dense[organic] = organic_converted
        for name, values in (
            ("opened", opened),
            ("clicked", clicked),
            ("calm_click", calm_click),
            ("anxious_click", anxious_click),
            ("harmful", harmful),
            ("unsubscribed", unsubscribed),
            ("complaint", complaint),
        ):
            dense = np.zeros(self.n, dtype=bool)
            dense[who] = values
            out[name] = dense
        converted_dense[who] |= converted
        out["converted"] = converted_dense
        out["visited"] = visited
        out["churned"] = churned
        return {name: out[name] for name in OUTCOMES}

    def _record_engagement(
        self,
        who: np.ndarray,
        slot_w: np.ndarray,
        tone_w: np.ndarray,
        channel_w: np.ndarray,
        opened: np.ndarray,
        clicked: np.ndarray,
    ) -> None:
        """Update the firm's engagement averages of the clients ``who`` got a message."""
        if who.size == 0:
            return
        flat = self.engagement.ravel()
        base = who * N_ENGAGEMENT
        opened, clicked = opened.astype(np.float32), clicked.astype(np.float32)
        for column, outcome in (
            (E_OPEN_CHANNEL + channel_w, opened),
            (E_CLICK_CHANNEL + channel_w, clicked),
            (E_OPEN_SLOT + slot_w, opened),
            (E_CLICK_TONE + tone_w, clicked),
        ):
            at = base + column
            current = flat[at]
            flat[at] = current + np.float32(ENGAGEMENT_EMA) * (outcome - current)
