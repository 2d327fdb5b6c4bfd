"""The batched world matches the plain per-client reference draw for draw."""

from __future__ import annotations

import numpy as np
import pytest

from envs.config import load_setup
from envs.features import IX, RECENCY_CAP_DAYS, raw_features
from simulate.labels import CHANNELS, CONTENTS, SLOT_KEYS, TONES
from simulate.reference import ReferenceWorld
from simulate.world import OUTCOMES, World

N_CLIENTS, DAYS = 60, 90


@pytest.mark.parametrize("scenario", ["calm", "market_shock", "misfire"])
def test_batched_world_matches_reference(scenario):
    setup = load_setup(scenario=scenario, seed=11)
    ids = np.arange(N_CLIENTS, dtype=np.uint64) * 7919 + 3  # arbitrary, non-contiguous ids
    world = World(setup.population, setup.env.response, setup.scenario, setup.seed, ids)
    ref = ReferenceWorld(
        setup.population, setup.env.response, setup.scenario, setup.seed, ids.tolist()
    )
    policy = np.random.default_rng(5)
    events = 0
    for day in range(DAYS):
        actions = np.stack([policy.integers(0, k, N_CLIENTS) for k in (7, 5, 3, 4)], axis=1)
        # bias towards sending so every outcome occurs
        actions[policy.random(N_CLIENTS) < 0.5, 0] = 2
        batched = world.step(day, *actions.T)
        plain = ref.step(day, [tuple(int(x) for x in a) for a in actions])
        for name in OUTCOMES:
            expected = np.array([o[name] for o in plain])
            np.testing.assert_array_equal(batched[name], expected, err_msg=f"{name} on day {day}")
            events += int(expected.sum())
    clients = ref.clients
    np.testing.assert_allclose(world.latent.trust, [c.trust for c in clients], atol=1e-9)
    np.testing.assert_allclose(world.latent.anxiety, [c.anxiety for c in clients], atol=1e-9)
    np.testing.assert_allclose(world.latent.fatigue, [c.fatigue for c in clients], atol=1e-9)
    np.testing.assert_allclose(world.latent.novelty, [c.novelty for c in clients], atol=1e-9)
    np.testing.assert_array_equal(world.opted_out, [c.opted_out for c in clients])
    np.testing.assert_allclose(world.engagement, [c.engagement for c in clients], atol=1e-5)
    np.testing.assert_array_equal(world.last_visit_day, [c.visit_days[-1] for c in clients])
    visits_30d = np.array([bin(int(v)).count("1") for v in world.visit_log])
    np.testing.assert_array_equal(visits_30d, [c.visits_30d(DAYS) for c in clients])
    np.testing.assert_array_equal(world.traits.segment, [c.segment for c in clients])
    np.testing.assert_allclose(
        world.traits.susceptibility, [c.susceptibility for c in clients], atol=1e-12
    )
    assert events > 500  # the comparison covered real events, not only zeros
    # the firm's send log as the observation reads it, against the plain records
    obs = raw_features(world, DAYS, 0.0)
    for i, c in enumerate(clients):
        for component, names in enumerate((CHANNELS, TONES, CONTENTS)):
            kind = ("channel", "tone", "content")[component]
            for v, name in enumerate(names):
                want = min(c.days_since_sent(DAYS, component, v), RECENCY_CAP_DAYS)
                assert obs[i, IX[f"days_since_{kind}_{name}"]] == want, (i, kind, name)
        assert obs[i, IX["urgent_7d"]] == c.sent_within(DAYS, 7, TONES.index("urgent"))
        assert obs[i, IX["sent_30d"]] == c.sent_within(DAYS, 30)
        assert obs[i, IX[f"declared_slot_{SLOT_KEYS[c.declared_slot]}"]] == 1.0


def test_rng_vector_and_scalar_agree():
    from simulate import rng

    ids = np.array([0, 1, 2**40 + 5, 2**63 + 9], dtype=np.uint64)
    for day in (rng.TRAIT_DAY, 0, 365):
        got = rng.uniform(rng.day_keys(42, ids, day), 3)
        want = [rng.uniform_scalar(42, int(i), day, 3) for i in ids]
        np.testing.assert_array_equal(got, want)
    u = rng.uniform(rng.day_keys(1, np.arange(200_000, dtype=np.uint64), 0), 1)
    assert 0.0 < u.min() and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
