"""The deployable ceiling decides from what a firm sees (observations, masks, outcomes), never
from the world's traits or latent state, and its beliefs converge on clients with known traits."""

from __future__ import annotations

import numpy as np

from agents.ceiling import STAND_IN_OFFSET, DeployableCeiling, declared_likelihood
from envs.config import load_setup
from envs.core import CadenceCore
from envs.features import I_DECLARED_SLOT
from envs.spaces import multi_to_flat
from simulate.labels import N_SLOTS

SETUP = load_setup()


def _live(policy, core: CadenceCore, days: int, seed: int = 0):
    """Roll ``policy`` on ``core``; returns what the firm saw each day and the actions."""
    obs = core.reset(seed)
    seen, actions = [], []
    alive = np.ones(core.world.n, dtype=bool)
    for day in range(days):
        masks = core.joint_masks()
        a = policy.act(obs, masks)
        assert masks[np.arange(len(a)), multi_to_flat(a)].all()  # within the guardrails
        r = core.step(a)
        outcomes = {k: v.copy() for k, v in r.outcomes.items()}
        policy.after_day(day, outcomes, alive.copy())
        seen.append((obs, masks, outcomes, alive.copy()))
        actions.append(a)
        alive &= ~r.outcomes["churned"]
        obs = r.obs
    return seen, actions


def test_the_ceiling_decides_from_what_the_firm_sees_only():
    ceiling = DeployableCeiling(SETUP)
    assert not ceiling.privileged  # evaluation never hands it the world
    seen, actions = _live(ceiling, CadenceCore(SETUP, 300, autoreset=False), 20)
    # its stand-in world is clients drawn from the population, not the ones it serves
    assert (ceiling.world.client_id >= STAND_IN_OFFSET).all()
    # replaying only the firm's view (no world anywhere) gives the same decisions
    replay = DeployableCeiling(SETUP)
    for day, ((obs, masks, outcomes, alive), expected) in enumerate(
        zip(seen, actions, strict=True)
    ):
        np.testing.assert_array_equal(replay.act(obs, masks), expected)
        replay.after_day(day, outcomes, alive)


def test_beliefs_converge_on_clients_whose_favourite_slot_is_known():
    # every client of this world prefers the evening (slot index 4) and e-mail well; the
    # ceiling's prior is the default population's (a fifth prefer the evening). Messages go out
    # every other day by e-mail, the slot going round all six, and the ceiling learns from
    # each response (the declared contact time is left out: what is learnt is the responses)
    world = load_setup(
        overrides=[
            "population.slot_preference_probs=[0,0,0,0,1,0]",
            "population.channel_affinity_mean=[1.5,0.2,0.3]",
            "population.channel_affinity_sd=0.01",
            "population.consent_tier_probs=[0,0,0,1]",  # responses may shape beliefs
        ]
    )
    ceiling = DeployableCeiling(SETUP)
    core = CadenceCore(world, 400, autoreset=False)
    obs = core.reset(0)
    obs[:, I_DECLARED_SLOT : I_DECLARED_SLOT + N_SLOTS] = 0.0
    ceiling.act(obs, core.joint_masks())  # meets its clients
    beliefs = [ceiling.slot_posterior()]
    for day in range(240):
        actions = np.zeros((400, 4), dtype=np.int64)
        if day % 2 == 0:
            actions[:] = (1 + (day // 2) % 6, 1, 0, 1)  # educational education by e-mail
        ceiling.observe(day, actions, core.step(actions).outcomes)
        if day % 120 == 119:
            beliefs.append(ceiling.slot_posterior())
    on_evening = [np.median(b[:, 4]) for b in beliefs]
    found = [(b.argmax(axis=1) == 4).mean() for b in beliefs]
    # measured: median belief 0.20 -> 0.56 -> 0.74; the evening the likeliest for 72 %, 78 %
    assert on_evening[0] < 0.25 < on_evening[1] < on_evening[2] and on_evening[2] > 0.6, on_evening
    assert found[2] > 0.7, found
    email = ceiling.beliefs["open_mean"][:, 0]
    assert np.median(email) > 0.9  # the e-mail open offset moved from its prior of 0 to the truth


def test_responses_shape_beliefs_only_where_consent_allows():
    world = load_setup(overrides=["population.consent_tier_probs=[0.34,0.33,0.33,0]"])
    ceiling = DeployableCeiling(SETUP)
    core = CadenceCore(world, 300, autoreset=False)
    _live(ceiling, core, 30)
    # the slot belief is the prior times the declared contact time's likelihood (tiers 1 and 2
    # show it) and nothing more: no response has moved it
    traits = core.world.traits
    like = declared_likelihood(SETUP.population.declared_slot_noise_sd)[traits.declared_slot]
    shown = (traits.consent_tier >= 1)[:, None]
    expected = np.log(SETUP.population.slot_preference_probs) + np.where(
        shown, np.log(like + 1e-12), 0.0
    )
    logp = ceiling.beliefs["slot_logp"]
    assert shown.any() and (~shown).any()
    np.testing.assert_allclose(
        logp - logp.max(axis=1, keepdims=True),
        expected - expected.max(axis=1, keepdims=True),
        atol=1e-6,
    )
    np.testing.assert_array_equal(
        ceiling.beliefs["open_mean"], np.tile(SETUP.population.channel_affinity_mean, (300, 1))
    )


def test_the_declared_contact_time_follows_its_noise_model():
    # the population draws the declared slot as favourite + N(0, sd), rounded and kept within
    # the day; the ceiling's likelihood table is that model: each column sums to one and
    # matches the frequencies of a large draw
    setup = load_setup(overrides=["population.declared_slot_noise_sd=0.8"])
    core = CadenceCore(setup, 60_000, autoreset=False)
    core.reset(0)
    t = core.world.traits
    table = declared_likelihood(0.8)
    np.testing.assert_allclose(table.sum(axis=0), 1.0)
    for favourite in range(N_SLOTS):
        declared = t.declared_slot[t.slot_preference == favourite]
        freq = np.bincount(declared, minlength=N_SLOTS) / len(declared)
        np.testing.assert_allclose(freq, table[:, favourite], atol=0.03)
    assert 0.4 < (t.declared_slot == t.slot_preference).mean() < 0.6  # noisy, yet informative
    np.testing.assert_array_equal(declared_likelihood(0.0), np.eye(N_SLOTS))


def test_the_ceiling_starts_afresh_each_rollout():
    ceiling = DeployableCeiling(SETUP)
    first, a = _live(ceiling, CadenceCore(SETUP, 200, autoreset=False), 5)
    ceiling.start_rollout()
    _, b = _live(ceiling, CadenceCore(SETUP, 200, autoreset=False), 5)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
