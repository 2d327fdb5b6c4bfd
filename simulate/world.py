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
from simulate.scenarios import DayEffects, ScenarioSchedule

# Draw names of the daily streams.
S_OPEN, S_CLICK, S_CONVERT, S_HARM, S_UNSUB, S_COMPLAINT, S_CHURN, S_VISIT = 1, 2, 3, 4, 5, 6, 7, 8
_DAY_STREAMS = (S_OPEN, S_CLICK, S_CONVERT, S_HARM, S_UNSUB, S_COMPLAINT, S_CHURN, S_VISIT)
"""the daily streams, in the order of the rows of a day's draw table (stream s at row s - 1)"""
_MESSAGE_STREAMS = 6
"""the first rows of the draw table, the streams drawn per delivered message"""
_DAY_TERMS = rng.stream_terms(_DAY_STREAMS)

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


@dataclass
class _Delivered:
    """Today's delivered messages: one entry per client who got one (the clients ``rows``)."""

    mask: np.ndarray
    """(N,) bool: a message reached the client today"""
    rows: np.ndarray
    """(M,) client rows that got a message, ascending"""
    draws: np.ndarray
    """(6, M) today's uniform draws of those clients: row s - 1 is stream s, for the message
    streams ``S_OPEN`` .. ``S_COMPLAINT``"""
    slot: np.ndarray
    """(M,) send slot 0..5 (the action's slot number - 1)"""
    tone: np.ndarray
    """(M,) tone index"""
    channel: np.ndarray
    """(M,) channel index"""
    content: np.ndarray
    """(M,) content index"""


@dataclass
class _Responses:
    """How the clients who got a message responded, (M,) bool arrays aligned with
    :attr:`_Delivered.rows`."""

    opened: np.ndarray
    calm_click: np.ndarray
    anxious_click: np.ndarray
    clicked: np.ndarray
    """a calm or an anxious click"""
    converted: np.ndarray
    """a beneficial action after the click"""
    harmful: np.ndarray
    """a harmful action (panic selling) after an anxious click"""


@dataclass
class _Visits:
    """Today's visits to the app or site."""

    visited: np.ndarray
    """(N,) bool: a click or an organic visit"""
    organic: np.ndarray
    """rows that visited without a click"""
    organic_converted: np.ndarray
    """bool per ``organic`` row: the visit converted"""


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
        self._row_channels = self.rows * N_CHANNELS
        """each row's first entry in ``opted_out.ravel()``"""
        self._client_key = rng.client_keys(self.seed, self.client_id)
        """the day-independent half of each client's daily draw keys"""
        self.traits: Traits = sample_traits(population, self.seed, self.client_id, self._client_key)
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
        self._relevance_day: int | None = None
        """the calendar day of ``_relevance_today`` and ``_mean_relevance_today``"""
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

    def _reset_rows(self, rows: np.ndarray, day: int = 0) -> None:
        """Fresh state for the clients in ``rows``, who are first seen on calendar ``day``."""
        traits, latent = self.traits, self.latent
        latent.fatigue[rows] = 0.0
        latent.novelty[rows] = 1.0
        latent.trust[rows] = traits.initial_trust[rows]
        latent.anxiety[rows] = self.population.initial_anxiety_scale * traits.susceptibility[rows]
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
        away = traits.initial_days_away[rows].astype(np.int32)
        self.last_visit_day[rows] = day - away  # the visit the visit log records below
        self.visit_log[rows] = np.where(
            away <= VISIT_WINDOW, np.left_shift(np.uint32(1), (away - 1).clip(0, 31)), 0
        ).astype(np.uint32)
        self.engagement[rows, :E_OPEN_SLOT] = np.repeat(
            [ENGAGEMENT_PRIOR_OPEN, ENGAGEMENT_PRIOR_CLICK], N_CHANNELS
        )
        self.engagement[rows, E_OPEN_SLOT:E_CLICK_TONE] = ENGAGEMENT_PRIOR_OPEN
        self.engagement[rows, E_CLICK_TONE:] = ENGAGEMENT_PRIOR_CLICK

    def replace(self, rows: np.ndarray, new_ids: np.ndarray, day: int = 0) -> None:
        """Put new clients (uint64 ``new_ids``) in ``rows``: fresh traits and state, first seen
        on calendar ``day`` (their last visit ``initial_days_away`` days before it)."""
        rows = np.asarray(rows)
        if rows.size == 0:
            return
        self.client_id[rows] = new_ids
        ids = self.client_id[rows]
        keys = rng.client_keys(self.seed, ids)
        self._client_key[rows] = keys
        self.traits.assign(rows, sample_traits(self.population, self.seed, ids, keys))
        self._reset_rows(rows, day)

    def state_nbytes(self) -> int:
        """Bytes of per-client state held by the world (traits, latent state, records)."""
        latent = self.latent
        return (
            self.traits.nbytes()
            + self.client_id.nbytes
            + self._client_key.nbytes
            + latent.fatigue.nbytes
            + latent.novelty.nbytes
            + latent.trust.nbytes
            + latent.anxiety.nbytes
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
        params, traits, latent = self.response, self.traits, self.latent
        relevance_today = self._relevance_on(day)
        relevance = relevance_today.ravel().take(traits.segment[rows] * N_CONTENTS + content)
        urgency = self._urgency.take(tone)
        quiet = self._quiet.ravel().take(slot_ix * N_CHANNELS + channel)
        trust, fatigue = latent.trust[rows], latent.fatigue[rows]
        open_logit = (
            params.open_base
            + traits.base_open[rows]
            + traits.channel_affinity.ravel().take(rows * N_CHANNELS + channel)
            + self._rhythm.ravel().take(slot_ix * N_SLOTS + traits.slot_preference[rows])
            + self._slot_open.ravel().take(slot_ix * N_CHANNELS + channel)
            + params.open_urgency * urgency
            + params.open_trust * (trust - 0.5)
            - params.open_fatigue * fatigue
            + params.open_novelty * (latent.novelty.ravel().take(rows * N_CONTENTS + content) - 1.0)
        )
        if (day % 7) >= 5:  # weekend
            open_logit += traits.weekend_affinity[rows]
        unsub_logit = (
            params.unsub_base
            + params.unsub_fatigue * fatigue
            + params.unsub_irrelevance * np.maximum(-relevance, 0.0)
            + params.unsub_quiet * quiet
            + params.unsub_urgency * urgency
        )
        complaint_logit = (
            params.complaint_base
            + params.complaint_quiet * quiet
            + params.complaint_urgency_repeat * self.urgency_last_week[rows] * urgency
            + params.complaint_fatigue * np.maximum(fatigue - params.fatigue_tolerance, 0.0)
        )
        return {
            "open": expit(open_logit),
            "calm_click": expit(
                params.click_base
                + params.click_relevance * relevance
                + traits.tone_affinity.ravel().take(rows * N_TONES + tone)
                + params.click_trust * (trust - 0.5)
            ),
            "anxious_click": params.anxious_click_max * latent.anxiety[rows] * urgency,
            "calm_convert": expit(
                params.convert_base
                + params.convert_literacy * traits.literacy[rows]
                + params.convert_relevance * relevance
            ),
            "harm": params.harm_given_anxious * traits.susceptibility[rows],
            "unsubscribe": expit(unsub_logit),
            "complaint": expit(complaint_logit),
            "relevance": relevance,
            "urgency": urgency,
        }

    def _relevance_on(self, day: int) -> np.ndarray:
        """(segments, contents) relevance on calendar ``day``: the configured relevance plus
        the scenario's delta and its stress effect that day, made once per day it is read on."""
        if self._relevance_day != day:
            effects = self.schedule.effects(day)
            self._relevance_today = (
                self._relevance + effects.relevance_delta + effects.stress * self._stress_relevance
            )
            self._mean_relevance_today = self._relevance_today.mean(axis=1)
            self._relevance_day = day
        return self._relevance_today

    def visit_probability(self, day: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Probability of an organic visit today for clients ``rows`` (all when None), before
        any message: own propensity, trust, weekend, market stress and days since the last visit."""
        params, traits, latent = self.response, self.traits, self.latent
        rows = self.rows if rows is None else rows
        away = np.minimum(day - self.last_visit_day[rows], MAX_DAYS_AWAY)
        logit = traits.visit_propensity[rows] + params.visit_trust * (latent.trust[rows] - 0.5)
        logit -= params.visit_recency * self._log_away.take(away)
        shift = params.visit_stress * self.schedule.effects(day).stress
        if (day % 7) >= 5:
            shift += params.visit_weekend
        if shift:
            logit += shift
        return expit(logit)

    def visit_convert_probability(self, day: int, rows: np.ndarray) -> np.ndarray:
        """Probability that an organic visit (no click) of clients ``rows`` converts today."""
        params, traits = self.response, self.traits
        self._relevance_on(day)
        mean_relevance = self._mean_relevance_today.take(traits.segment[rows])
        return expit(
            params.convert_base
            + params.visit_convert
            + params.convert_literacy * traits.literacy[rows]
            + params.convert_relevance * mean_relevance
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

        The day runs in named stages, each drawing from its own named stream
        (:mod:`simulate.rng`), so a draw does not depend on the stages before it; the stages
        still run in this order because each reads the state the previous ones left.
        """
        slot, tone, channel, content = self.check_actions(slot, tone, channel, content)
        return self.step_checked(day, slot, tone, channel, content)

    def step_checked(
        self, day: int, slot: np.ndarray, tone: np.ndarray, channel: np.ndarray, content: np.ndarray
    ) -> dict[str, np.ndarray]:
        """:meth:`step` for components already checked as :meth:`check_actions` checks them
        ((N,) integer arrays, each within its range): the env core checks every action batch
        (:func:`envs.spaces.check_actions`) before it calls this. Any other caller steps with
        :meth:`step`, which refuses bad components before any state moves.

        Every daily draw of every client comes from one table (:func:`simulate.rng.uniform_streams`
        of today's keys over the eight daily streams): the same values as one
        :func:`simulate.rng.uniform` per stream, each a pure function of its key.
        """
        effects = self.schedule.effects(day)
        keys = rng.keys_on(self._client_key, day)
        draws = rng.uniform_streams(keys, _DAY_TERMS)
        alive = ~self.churned
        self._apply_scenario_shocks(effects)
        sent = self._deliver(alive, slot, tone, channel, content, draws)
        probabilities = self.response_probabilities(
            day, sent.rows, sent.slot, sent.tone, sent.channel, sent.content
        )
        responses = self._draw_responses(sent, probabilities)
        visits = self._draw_visits(day, draws, alive, sent.rows, responses.clicked)
        unsubscribed, complaint = self._draw_unsubscribes_and_complaints(sent, probabilities)
        self._update_latent(effects, sent, probabilities, responses, visits)
        self.opted_out[sent.rows[unsubscribed], sent.channel[unsubscribed]] = True
        self._record_sends(day, sent, probabilities["urgency"])
        self._record_engagement(
            sent.rows, sent.slot, sent.tone, sent.channel, responses.opened, responses.clicked
        )
        self._record_visits(day, visits.visited)
        churned = self._draw_churn(draws, alive)
        return self._outcomes(sent, responses, visits, unsubscribed, complaint, churned)

    def _apply_scenario_shocks(self, effects: DayEffects) -> None:
        """Today's scenario shocks, before any message: anxiety += (shock + stress_anxiety x
        stress) x susceptibility and trust += trust shock (both 0..1, clipped), for everyone."""
        if not (effects.anxiety_shock or effects.trust_shock or effects.stress):
            return
        params, latent = self.response, self.latent
        latent.anxiety += (
            effects.anxiety_shock + params.stress_anxiety * effects.stress
        ) * self.traits.susceptibility
        latent.trust += effects.trust_shock
        np.clip(latent.anxiety, 0.0, 1.0, out=latent.anxiety)
        np.clip(latent.trust, 0.0, 1.0, out=latent.trust)

    def _deliver(
        self,
        alive: np.ndarray,
        slot: np.ndarray,
        tone: np.ndarray,
        channel: np.ndarray,
        content: np.ndarray,
        draws: np.ndarray,
    ) -> _Delivered:
        """The messages that reach a client today: asked for (slot >= 1), to a client who has not
        churned, on a channel the client has not opted out of. The guards of the env faces
        come first; this is the world's own last check. ``draws``: today's (8, N) draw table."""
        slot = np.asarray(slot)
        delivered = (slot > 0) & alive
        # every row's channel is within range (checked), asked for or not
        delivered &= ~self.opted_out.ravel().take(self._row_channels + channel)
        rows = np.flatnonzero(delivered)
        channel_sent, tone_sent, content_sent = (
            np.asarray(a, dtype=np.intp)[rows] for a in (channel, tone, content)
        )
        return _Delivered(
            mask=delivered,
            rows=rows,
            draws=draws[:_MESSAGE_STREAMS][:, rows],
            slot=slot[rows].astype(np.intp) - 1,
            tone=tone_sent,
            channel=channel_sent,
            content=content_sent,
        )

    def _draw_responses(self, sent: _Delivered, probabilities: dict[str, np.ndarray]) -> _Responses:
        """Opens, clicks (labelled calm or anxious), conversions and harm of the delivered messages.

        One uniform u decides the click: calm if u < P(calm click); otherwise anxious if
        u < P(calm) + (1 - P(calm)) x P(anxious part). A calm click converts with the
        content's conversion probability, an anxious one with ``anxious_convert``; an anxious
        click is harmful with probability ``harm_given_anxious`` x susceptibility.
        """
        draws = sent.draws
        opened = draws[S_OPEN - 1] < probabilities["open"]
        click_draw = draws[S_CLICK - 1]
        calm_probability = probabilities["calm_click"]
        calm_click = opened & (click_draw < calm_probability)
        anxious_click = (
            opened
            & ~calm_click
            & (
                click_draw
                < calm_probability + (1.0 - calm_probability) * probabilities["anxious_click"]
            )
        )
        clicked = calm_click | anxious_click
        convert_probability = np.where(
            calm_click, probabilities["calm_convert"], self.response.anxious_convert
        )
        converted = clicked & (draws[S_CONVERT - 1] < convert_probability)
        harmful = anxious_click & (draws[S_HARM - 1] < probabilities["harm"])
        return _Responses(opened, calm_click, anxious_click, clicked, converted, harmful)

    def _draw_visits(
        self,
        day: int,
        draws: np.ndarray,
        alive: np.ndarray,
        rows_sent: np.ndarray,
        clicked: np.ndarray,
    ) -> _Visits:
        """Who comes to the app or site today, and which organic visits convert.

        A click is that day's visit, so the organic chance (:meth:`visit_probability`, read
        before today's latent updates) only adds the clients who did not click; an organic visit
        converts with :meth:`visit_convert_probability`. ``draws``: today's (8, N) draw table.
        """
        visited = alive & (draws[S_VISIT - 1] < self.visit_probability(day))
        clicked_all = np.zeros(self.n, dtype=bool)
        clicked_all[rows_sent] = clicked
        visited |= clicked_all
        organic = np.flatnonzero(visited & ~clicked_all)
        organic_converted = draws[S_CONVERT - 1].take(organic) < (
            self.visit_convert_probability(day, organic)
        )
        return _Visits(visited, organic, organic_converted)

    def _draw_unsubscribes_and_complaints(
        self, sent: _Delivered, probabilities: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(unsubscribed, complaint) per delivered message, drawn whether or not it was opened."""
        unsubscribed = sent.draws[S_UNSUB - 1] < probabilities["unsubscribe"]
        complaint = sent.draws[S_COMPLAINT - 1] < probabilities["complaint"]
        return unsubscribed, complaint

    def _update_latent(
        self,
        effects: DayEffects,
        sent: _Delivered,
        probabilities: dict[str, np.ndarray],
        responses: _Responses,
        visits: _Visits,
    ) -> None:
        """Today's message moves the latent state, then the day's recovery:

        - fatigue (messages): x 0.5^(1 / half-life) for everyone, + 1 per message;
        - novelty (0..1) of each content: relaxes toward 1 by the same half-life rule, and the
          content sent today is multiplied by ``novelty_drop``;
        - trust (0..1): + :func:`~simulate.dynamics.trust_change` of the message (relevance,
          fear, a late slot, its conversion or harm, the scenario's send effect), +
          ``trust_conversion`` per organic conversion; clipped;
        - anxiety (0..1): x 0.5^(1 / half-life) for everyone, then
          :func:`~simulate.dynamics.anxiety_after_message` for the messaged; clipped.
        """
        params, latent, rows = self.response, self.latent, sent.rows
        trust_before = latent.trust[rows]
        latent.fatigue *= self._fatigue_decay
        latent.fatigue[rows] += 1.0
        latent.novelty *= self._novelty_decay
        latent.novelty += 1.0 - self._novelty_decay
        latent.novelty.ravel()[rows * N_CONTENTS + sent.content] *= params.novelty_drop
        segment_content = self.traits.segment[rows] * N_CONTENTS + sent.content
        latent.trust[rows] = trust_before + trust_change(
            params,
            probabilities["relevance"],
            probabilities["urgency"],
            sent.slot == N_SLOTS - 1,
            responses.converted,
            responses.harmful,
            effects.send_trust.ravel().take(segment_content),
        )
        latent.trust[visits.organic[visits.organic_converted]] += params.trust_conversion
        np.clip(latent.trust, 0.0, 1.0, out=latent.trust)
        latent.anxiety *= self._anxiety_decay
        latent.anxiety[rows] = anxiety_after_message(
            params,
            latent.anxiety[rows],
            self.traits.susceptibility[rows],
            probabilities["urgency"],
            self._relief.take(sent.tone),
        )
        np.clip(latent.anxiety, 0.0, 1.0, out=latent.anxiety)

    def _record_sends(self, day: int, sent: _Delivered, urgency: np.ndarray) -> None:
        """The firm's send log: today's column of the 7-day channel and tone logs (and the
        summed urgency kept with them), the last day of each channel, tone and content, and
        the 30-day send bits."""
        rows = sent.rows
        column = day % HISTORY_DAYS
        self.urgency_last_week -= self._urgency_log.take(self.tone_log[:, column])
        self.urgency_last_week[rows] += urgency
        self.channel_log[:, column] = 0
        self.channel_log[rows, column] = sent.channel + 1
        self.tone_log[:, column] = 0
        self.tone_log[rows, column] = sent.tone + 1
        self.last_send_day[rows] = day
        self.last_channel_day[rows, sent.channel] = day
        self.last_tone_day[rows, sent.tone] = day
        self.last_content_day[rows, sent.content] = day
        self.send_log <<= np.uint32(1)
        self.send_log[rows] |= np.uint32(1)
        self.send_log &= _VISIT_MASK

    def _record_visits(self, day: int, visited: np.ndarray) -> None:
        """The firm's visit log: the day of each client's last visit and the 30-day visit bits."""
        self.last_visit_day[visited] = day
        self.visit_log <<= np.uint32(1)
        self.visit_log |= visited
        self.visit_log &= _VISIT_MASK

    def _draw_churn(self, draws: np.ndarray, alive: np.ndarray) -> np.ndarray:
        """Who leaves today (absorbing): probability :func:`~simulate.dynamics.churn_hazard`
        of the trust, anxiety and fatigue after today's updates. ``draws``: today's (8, N)
        draw table."""
        latent = self.latent
        hazard = churn_hazard(self.response, latent.trust, latent.anxiety, latent.fatigue)
        churned = alive & (draws[S_CHURN - 1] < hazard)
        self.churned |= churned
        return churned

    def _outcomes(
        self,
        sent: _Delivered,
        responses: _Responses,
        visits: _Visits,
        unsubscribed: np.ndarray,
        complaint: np.ndarray,
        churned: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """The day's :data:`OUTCOMES` as (N,) bool arrays over every client; ``converted``
        counts a conversion after a click or after an organic visit."""
        out = {"sent": sent.mask}
        converted = np.zeros(self.n, dtype=bool)
        converted[visits.organic] = visits.organic_converted
        for name, values in (
            ("opened", responses.opened),
            ("clicked", responses.clicked),
            ("calm_click", responses.calm_click),
            ("anxious_click", responses.anxious_click),
            ("harmful", responses.harmful),
            ("unsubscribed", unsubscribed),
            ("complaint", complaint),
        ):
            dense = np.zeros(self.n, dtype=bool)
            dense[sent.rows] = values
            out[name] = dense
        converted[sent.rows] |= responses.converted
        out["converted"] = converted
        out["visited"] = visits.visited
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
        # the four averages a message moves, for every client at once: each client's four
        # columns lie in four apart ranges and ``who`` holds each client once, so no entry is
        # read or written twice
        columns = np.concatenate(
            (
                E_OPEN_CHANNEL + channel_w,
                E_CLICK_CHANNEL + channel_w,
                E_OPEN_SLOT + slot_w,
                E_CLICK_TONE + tone_w,
            )
        )
        at = (columns.reshape(4, -1) + who * N_ENGAGEMENT).ravel()
        outcome = np.concatenate((opened, clicked, opened, clicked)).astype(np.float32)
        current = flat[at]
        flat[at] = current + np.float32(ENGAGEMENT_EMA) * (outcome - current)
