"""The e-mail levels hold for a varied content and tone mix as well as for the fixed weekly
summary, and the novelty effect that separates the two stays within its stated bound.

The published open rates (20.5 % Mailchimp 2018, 27.1 % Campaign Monitor 2022, financial
services) average firms' real mixes. Rotating the four contents week by week once lifted opens
from 23 % to 32 % on the default population; these tests hold both protocols in the published
range and the lift below 27.1 / 20.5.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from envs.config import CONF_DIR, load_setup
from realism import protocols
from realism.fit import needed_protocols
from realism.targets import load_targets
from simulate.labels import CONTENTS, TONES
from simulate.world import World

ROOT = CONF_DIR.parent
PUBLISHED_OPENS = (0.205, 0.271)
"""financial-services e-mail open rate: Mailchimp 2018 to Campaign Monitor 2022"""
LIFT_BOUND = PUBLISHED_OPENS[1] / PUBLISHED_OPENS[0]
EARLIER_DEFAULTS = [
    "env.response.open_base=-1.23",
    "env.response.open_novelty=1.74",
    "env.response.open_fatigue=0.05",
]
"""the response defaults fitted on the fixed weekly summary alone"""


def test_the_varied_mix_sends_each_week_its_content_and_tone_on_monday_morning():
    for day in range(7 * protocols.WEEKS):
        send = protocols.varied_weekly(day)
        if day % 7:
            assert send is None
            continue
        content, tone = protocols.MIX[day // 7]
        assert send == protocols.Send(protocols.MORNING, tone, protocols.EMAIL, content)
    contents = [c for c, _ in protocols.MIX]
    for start in range(0, len(contents), len(CONTENTS)):  # every content once in each 4 weeks
        assert sorted(contents[start : start + len(CONTENTS)]) == list(range(len(CONTENTS)))
    tones = Counter(TONES[t] for _, t in protocols.MIX)
    assert tones == {
        "informative": 4,
        "educational": 3,
        "opportunity": 3,
        "reassuring": 1,
        "urgent": 1,
    }
    sent = protocols.run(load_setup(), 300, 7 * protocols.WEEKS, 0, protocols.varied_weekly)
    assert sent["sent"][0] == 300 and sent["sent"][[d for d in range(84) if d % 7]].sum() == 0


def test_email_levels_hold_for_the_fixed_summary_and_the_varied_mix():
    """The defect: the levels were fitted on the fixed summary alone, and the varied mix opened
    at 32 %, above every published figure. Now both lie in the published range itself (not only
    in the scorecard's wider band), and every varied-mix row is in its band."""
    setup = load_setup()
    fixed = protocols.levels(setup, 5000, 0)
    mix = protocols.varied_mix(setup, 5000, 0)
    low, high = PUBLISHED_OPENS
    assert low <= fixed["email/open_rate"] <= high
    assert low <= mix["email_mix/open_rate"] <= high
    targets = load_targets(ROOT / "targets" / "financial_services.yaml")
    rows = [t for t in targets.targets if t.statistic.startswith("email_mix/")]
    assert len(rows) == 6
    misses = {t.statistic: mix[t.statistic] for t in rows if not t.holds(mix[t.statistic])}
    assert misses == {}


def test_the_varied_mix_rows_catch_the_earlier_defaults():
    """The rows would have failed the defaults fitted on the fixed summary alone: the mix's
    opens above the band, and a novelty lift above the published spread."""
    mix = protocols.varied_mix(load_setup(overrides=EARLIER_DEFAULTS), 2000, 0)
    targets = load_targets(ROOT / "targets" / "financial_services.yaml")
    assert mix["email_mix/open_rate"] > targets["email_mix/open_rate"].high
    assert mix["email_mix/open_rate_vs_summary"] > LIFT_BOUND
    assert targets["email_mix/open_rate_vs_summary"].high == pytest.approx(LIFT_BOUND, abs=0.005)


def test_the_lift_is_the_novelty_effect_and_stays_within_its_bound():
    lift = "email_mix/open_rate_vs_summary"
    default = protocols.varied_mix(load_setup(), 2000, 0)[lift]
    assert 1.0 < default <= LIFT_BOUND
    # control: without novelty only the tones' part is left (an urgent and three opportunity
    # subject lines in twelve weeks)
    flat = protocols.varied_mix(load_setup(overrides=["env.response.open_novelty=0"]), 2000, 0)
    assert 1.0 <= flat[lift] < 1.05
    # the earlier novelty size alone breaks the bound
    strong = protocols.varied_mix(load_setup(overrides=["env.response.open_novelty=1.74"]), 2000, 0)
    assert strong[lift] > LIFT_BOUND


def _novelty_seen_at_the_next_send(content_of_week) -> np.ndarray:
    """Novelty of next week's content for 200 default clients after 20 weeks of Monday
    e-mails (``content_of_week(w)``), for the clients the e-mails still reach."""
    setup = load_setup()
    world = World(
        setup.population, setup.env.response, setup.scenario, 0, np.arange(200, dtype=np.uint64)
    )
    zeros = np.zeros(world.n, dtype=np.int64)
    weeks = 20
    for day in range(7 * weeks):
        slot = protocols.MORNING if day % 7 == 0 else 0
        content = content_of_week(day // 7)
        world.step(day, zeros + slot, zeros, zeros + protocols.EMAIL, zeros + content)
    reached = ~world.churned & ~world.opted_out[:, protocols.EMAIL]
    assert reached.sum() > 150
    return world.latent.novelty[reached, content_of_week(weeks)]


def test_weekly_novelty_settles_where_the_stated_bound_says():
    """simulate/config.py bounds open_novelty with the novelty a content is seen at when sent
    every T days; the world's novelty before the next send matches the formula for one content
    weekly (T = 7) and four in turn (T = 28), and the defaults keep the log-odds lift,
    open_novelty x the difference, under the published spread's."""
    p = load_setup().env.response
    d = 0.5 ** (1 / p.novelty_half_life_days)

    def seen(every_days: int) -> float:
        return (1 - d ** (every_days - 1) * (1 - p.novelty_drop * (1 - d))) / (
            1 - p.novelty_drop * d**every_days
        )

    fixed = _novelty_seen_at_the_next_send(lambda week: protocols.SUMMARY)
    turn = _novelty_seen_at_the_next_send(lambda week: week % len(CONTENTS))
    np.testing.assert_allclose(fixed, seen(7), atol=1e-9)
    np.testing.assert_allclose(turn, seen(28), atol=1e-9)
    assert seen(7) == pytest.approx(0.66, abs=0.005) and seen(28) == pytest.approx(0.98, abs=0.01)
    published_logit = math.log(
        PUBLISHED_OPENS[1]
        / (1 - PUBLISHED_OPENS[1])
        * (1 - PUBLISHED_OPENS[0])
        / PUBLISHED_OPENS[0]
    )
    assert published_logit == pytest.approx(0.366, abs=0.001)
    assert p.open_novelty * (seen(28) - seen(7)) <= published_logit
    # the earlier size would not have been
    assert 1.74 * (seen(28) - seen(7)) > published_logit


def test_fitting_the_levels_runs_both_protocols():
    levels = load_targets(ROOT / "targets" / "financial_services_levels.yaml")
    assert needed_protocols(levels) == ["levels", "varied_mix"]
    names = set(protocols.statistic_names())
    assert {t.statistic for t in levels.targets} <= names
    assert "varied_mix" in protocols.PROTOCOLS
