"""The stylized facts the simulator must show (README, *How simulated clients behave*), each on thousands of clients with fixed seeds.

Arms of each comparison run on the *same* clients with the same luck (common random
numbers), so a difference comes from the mechanism, not from sampling. Where a single
parameter carries the mechanism, a control run with it switched off shows the effect vanish.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest

from envs.config import load_setup
from simulate.config import PopulationConfig, ResponseConfig, ScenarioConfig, ScenarioEvent
from simulate.labels import CHANNELS, N_SLOTS, TONES
from simulate.world import OUTCOMES, World

N = 20_000
EMAIL, PUSH, SMS = (CHANNELS.index(c) for c in ("email", "push", "sms"))
INFORMATIVE, EDUCATIONAL, REASSURING, URGENT = (
    TONES.index(t) for t in ("informative", "educational", "reassuring", "urgent")
)
LATE, MIDDAY = N_SLOTS, 3  # action slot numbers (1-based)

Policy = Callable[[World, int], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


def make_world(seed: int = 7, scenario: ScenarioConfig | None = None, **response: float) -> World:
    return World(
        PopulationConfig(),
        dataclasses.replace(ResponseConfig(), **response),
        scenario or ScenarioConfig(),
        seed,
        np.arange(N),
    )


def send(world: World, slot, tone, channel, content):
    """Broadcast scalars or arrays to (N,) action components."""
    return tuple(
        np.broadcast_to(np.asarray(x, dtype=np.int64), (world.n,)).copy()
        for x in (slot, tone, channel, content)
    )


def run(world: World, policy: Policy, days: int) -> list[dict[str, np.ndarray]]:
    return [world.step(day, *policy(world, day)) for day in range(days)]


def total(history: list[dict[str, np.ndarray]], name: str, who: np.ndarray | None = None) -> float:
    values = np.sum([h[name] for h in history], axis=0)
    return float(values.mean() if who is None else values[who].mean())


def open_rate(outcome: dict[str, np.ndarray]) -> float:
    return outcome["opened"].sum() / max(outcome["sent"].sum(), 1)


def no_send(world: World, day: int):
    return send(world, 0, 0, 0, 0)


# 1. preferred slot ---------------------------------------------------------------
def _slot_gap(**response: float) -> float:
    rates = []
    for far in (False, True):
        w = make_world(**response)
        pref = w.traits.slot_preference.astype(np.int64)
        slot = np.where(pref >= 3, 0, N_SLOTS - 2) if far else pref  # far: early or evening
        out = w.step(1, *send(w, slot + 1, INFORMATIVE, EMAIL, 0))
        rates.append(open_rate(out))
    return rates[0] - rates[1]


def test_preferred_slot_opens_more():
    assert _slot_gap() > 0.05
    assert abs(_slot_gap(rhythm_amp=0.0)) < 0.01  # control: no rhythm, no gap


# 2. frequency and rest ------------------------------------------------------------
def test_open_rate_falls_with_frequency_and_recovers_with_rest():
    def daily_then_rest(world, day):
        slot = (world.traits.slot_preference + 1) if (day < 10 or day == 20) else 0
        return send(world, slot, INFORMATIVE, EMAIL, day % 4)

    def once(world, day):
        return send(
            world,
            (world.traits.slot_preference + 1) if day == 9 else 0,
            INFORMATIVE,
            EMAIL,
            day % 4,
        )

    heavy = run(make_world(), daily_then_rest, 21)
    light = run(make_world(), once, 10)
    assert open_rate(heavy[0]) - open_rate(heavy[9]) > 0.05  # falls as messages pile up
    assert open_rate(light[9]) - open_rate(heavy[9]) > 0.05  # vs same day, same clients, no history
    assert open_rate(heavy[20]) - open_rate(heavy[9]) > 0.05  # recovers after 10 days of rest


# 3. repetition and variety --------------------------------------------------------
def _repeat_gap(**response: float) -> float:
    def repeat(world, day):
        return send(world, 2 if day % 2 == 0 else 0, INFORMATIVE, EMAIL, 0)

    def vary(world, day):
        return send(
            world,
            2 if day % 2 == 0 else 0,
            INFORMATIVE,
            EMAIL,
            0 if day == 10 else 1 + (day // 2) % 3,
        )

    rate = [open_rate(run(make_world(**response), p, 11)[10]) for p in (repeat, vary)]
    return rate[1] - rate[0]


def test_repeating_content_lowers_response_and_variety_recovers_it():
    assert _repeat_gap() > 0.04
    assert abs(_repeat_gap(open_novelty=0.0)) < 0.015  # control: no novelty effect


# 4. urgency -----------------------------------------------------------------------
def test_urgent_tone_lifts_clicks_of_anxious_clients_then_their_churn():
    runs = {}
    for tone in (INFORMATIVE, URGENT):
        w = make_world()

        def policy(world, day, tone=tone):
            return send(world, 2 if day % 2 == 0 else 0, tone, EMAIL, 3)

        runs[tone] = (w, run(w, policy, 60))
    anxious = runs[URGENT][0].traits.susceptibility > 0.5
    assert anxious.sum() > 2000
    first_week = {t: total(h[:7], "clicked", anxious) for t, (_, h) in runs.items()}
    assert first_week[URGENT] > 1.15 * first_week[INFORMATIVE]
    churn = {t: total(h, "churned", anxious) for t, (_, h) in runs.items()}
    assert churn[URGENT] > 1.5 * churn[INFORMATIVE] and churn[URGENT] - churn[INFORMATIVE] > 0.03
    anxious_clicks = total(runs[URGENT][1], "anxious_click", anxious)
    assert anxious_clicks > 5 * total(runs[INFORMATIVE][1], "anxious_click", anxious)


# 5. volume and loss ---------------------------------------------------------------
def test_over_messaging_raises_unsubscribes_and_churn():
    def every(k):
        def policy(world, day):
            return send(
                world,
                (world.traits.slot_preference + 1) if day % k == 0 else 0,
                INFORMATIVE,
                EMAIL,
                day % 4,
            )

        return policy

    daily = run(make_world(), every(1), 90)
    weekly = run(make_world(), every(7), 90)
    assert total(daily, "unsubscribed") > 3 * total(weekly, "unsubscribed")
    assert total(daily, "churned") > total(weekly, "churned") + 0.02


# 6. relevance ---------------------------------------------------------------------
def test_relevant_content_raises_clicks_conversions_and_trust():
    table = np.asarray(ResponseConfig().relevance)
    arms = {}
    for name, pick in (("relevant", np.argmax), ("irrelevant", np.argmin)):
        w = make_world()
        content = pick(table, axis=1)[w.traits.segment]

        def policy(world, day, content=content):
            return send(world, 2 if day % 3 == 0 else 0, INFORMATIVE, EMAIL, content)

        arms[name] = (w, run(w, policy, 60))
    (good_w, good), (bad_w, bad) = arms["relevant"], arms["irrelevant"]
    assert total(good, "clicked") > 1.5 * total(bad, "clicked")
    assert total(good, "converted") > 1.5 * total(bad, "converted")
    assert good_w.latent.trust.mean() > bad_w.latent.trust.mean() + 0.05


# 7. market shock ------------------------------------------------------------------
def test_market_shock_raises_anxiety_and_reassurance_calms_faster_than_silence():
    shock = load_setup(scenario="market_shock").scenario
    day = shock.events[0].start_day
    arms = {}
    for tone in (None, REASSURING):
        w = make_world(scenario=shock)
        run(w, no_send, day)
        before = w.latent.anxiety.mean()
        w.step(day, *no_send(w, day))
        after = w.latent.anxiety.mean()
        for d in range(day + 1, day + 8):
            w.step(d, *(no_send(w, d) if tone is None else send(w, 2, tone, EMAIL, 1)))
        arms[tone] = (before, after, w.latent.anxiety.mean())
    before, after, silent = arms[None]
    assert after > before + 0.1
    assert arms[REASSURING][2] < silent - 0.03
    calm = make_world()
    run(calm, no_send, day + 1)
    assert calm.latent.anxiety.mean() < after - 0.1  # the calm scenario has no shock


# 8. opt-outs ----------------------------------------------------------------------
def test_opted_out_channel_receives_nothing_whatever_is_asked():
    w = make_world()
    w.opted_out[: N // 2, SMS] = True
    out = w.step(0, *send(w, 2, URGENT, SMS, 2))
    assert not out["sent"][: N // 2].any()
    assert out["sent"][N // 2 :].all()
    history = run(w, lambda world, day: send(world, 2, URGENT, SMS, 2), 30)
    sent = np.sum([h["sent"] for h in history], axis=0)
    assert (sent[w.opted_out[:, SMS] & (np.arange(N) < N // 2)] == 0).all()


# 9. quiet hours -------------------------------------------------------------------
def _quiet_gap(channel: int, **response: float) -> float:
    rates = []
    for slot in (LATE, MIDDAY):
        h = run(
            make_world(**response),
            lambda world, day, slot=slot: send(
                world, slot if day % 3 == 0 else 0, INFORMATIVE, channel, 3
            ),
            30,
        )
        rates.append(total(h, "complaint"))
    return rates[0] / max(rates[1], 1e-9)


@pytest.mark.parametrize("channel", [SMS, PUSH])
def test_quiet_hour_sms_and_push_raise_complaints(channel):
    assert _quiet_gap(channel) > 5
    assert _quiet_gap(channel, complaint_quiet=0.0) < 1.5  # control


def test_outcome_names_are_complete():
    w = make_world()
    out = w.step(0, *no_send(w, 0))
    assert tuple(out) == OUTCOMES


# ----- organic activity -----------------------------------------------------------------------
def _visit_rate(days: int = 28, scenario: ScenarioConfig | None = None, **response) -> float:
    world = make_world(scenario=scenario, **response)
    return total(run(world, no_send, days), "visited") / days


def test_clients_visit_and_convert_with_no_message():
    history = run(make_world(), no_send, 28)
    assert total(history, "sent") == 0
    assert 0.005 < total(history, "visited") / 28 < 0.5  # some clients come on their own each day
    assert total(history, "converted") > 0
    assert total(history, "clicked") == 0


def test_a_click_takes_the_place_of_the_days_organic_visit():
    """On the same clients and luck, a message adds visits only where the client would not have
    come anyway: visits with the message = clicks + organic visits of those who did not click."""
    silent = make_world().step(0, *no_send(make_world(), 0))
    world = make_world()
    out = world.step(0, *send(world, MIDDAY, INFORMATIVE, EMAIL, 0))
    assert out["clicked"].sum() > 100
    np.testing.assert_array_equal(out["visited"], out["clicked"] | silent["visited"])
    assert (out["clicked"] & silent["visited"]).sum() > 0  # attributed but not incremental


def test_visits_move_with_trust_weekday_stress_and_time_away():
    base = _visit_rate()
    assert _visit_rate(visit_trust=6.0) != pytest.approx(base, rel=0.02)
    assert _visit_rate(visit_weekend=-3.0) < base  # fewer visits at weekends
    assert _visit_rate(visit_weekend=0.0) > base  # the default already has quieter weekends
    crash = ScenarioConfig(
        name="crash", events=[ScenarioEvent(name="crash", start_day=0, end_day=27, stress_peak=3)]
    )
    assert _visit_rate(scenario=crash) > 1.2 * base  # people check more in a crash
    assert _visit_rate(scenario=crash, visit_stress=0.0) < 1.02 * _visit_rate(visit_stress=0.0)
    assert _visit_rate(visit_recency=0.0) > 1.2 * base  # habits fade the longer a client is away


def test_the_firm_sees_days_since_the_last_visit_and_visits_in_30_days():
    from envs.features import IX, raw_features

    world = make_world()
    run(world, no_send, 40)
    obs = raw_features(world, 40, 0.0)
    visits = obs[:, IX["visits_30d"]]
    away = obs[:, IX["days_since_last_visit"]]
    assert visits.max() > 3 and (visits == 0).any()
    np.testing.assert_array_equal(away, np.minimum(40 - world.last_visit_day, 30))
    # a client who visited in the last 30 days has at least one visit counted and vice versa
    np.testing.assert_array_equal(visits > 0, 40 - world.last_visit_day <= 30)
