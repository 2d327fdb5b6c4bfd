"""The observable reward: weights on what a firm sees, blind to why a client clicked."""

from __future__ import annotations

import numpy as np
import pytest

from envs.config import CONF_DIR, RewardConfig, load_setup
from envs.core import CadenceCore
from envs.reward import (
    LATENT_OUTCOMES,
    OBSERVABLE_OUTCOMES,
    observable_outcomes,
    observable_value,
    reward,
)
from simulate.config import ConfigError
from simulate.world import OUTCOMES


def _counts(seed: int = 0, clients: int = 1000, days: int = 10) -> dict[str, np.ndarray]:
    """Per-client outcome counts summed over ``days`` of random sends (urgent tones
    included, so clicks of both causes occur); the reward is linear, so it applies to sums."""
    core = CadenceCore(load_setup(), clients)
    core.reset(seed)
    rng = np.random.default_rng(seed)
    totals: dict[str, np.ndarray] = {}
    for _ in range(days):
        actions = np.stack(
            [
                rng.integers(1, 7, clients),
                rng.integers(0, 5, clients),
                rng.integers(0, 3, clients),
                rng.integers(0, 4, clients),
            ],
            axis=1,
        )
        r = core.step(actions)
        for name, values in r.outcomes.items():
            totals[name] = totals.get(name, 0.0) + values.astype(np.float64)
    return totals


def _relabelled(outcomes: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The same observable outcomes with every click's latent cause drawn anew."""
    anxious = rng.binomial(outcomes["clicked"].astype(np.int64), 0.5).astype(np.float64)
    return outcomes | {"calm_click": outcomes["clicked"] - anxious, "anxious_click": anxious}


def test_the_observable_preset_weighs_only_observable_outcomes():
    observable = load_setup(reward="observable").reward
    assert observable.observable and observable.name == "observable"
    assert set(observable.weights()) <= set(OBSERVABLE_OUTCOMES)
    assert not set(observable.weights()) & set(LATENT_OUTCOMES)
    assert set(OBSERVABLE_OUTCOMES) | set(LATENT_OUTCOMES) >= set(OUTCOMES)


def test_same_observables_with_other_latent_labels_give_the_same_reward():
    outcomes = _counts()
    assert outcomes["anxious_click"].sum() > 0 and outcomes["calm_click"].sum() > 0
    relabelled = _relabelled(outcomes, np.random.default_rng(7))
    assert not np.array_equal(relabelled["anxious_click"], outcomes["anxious_click"])
    observable = load_setup(reward="observable").reward
    balanced = RewardConfig()
    np.testing.assert_array_equal(
        reward(outcomes, observable.weights()), reward(relabelled, observable.weights())
    )
    np.testing.assert_array_equal(
        observable_value(outcomes, observable), observable_value(relabelled, observable)
    )
    # the balanced yardstick does see the labels: the relabelling is not a no-op
    assert not np.array_equal(
        reward(outcomes, balanced.weights()), reward(relabelled, balanced.weights())
    )


def test_the_observable_value_is_computed_without_any_latent_array():
    outcomes = _counts(seed=3)
    observable = load_setup(reward="observable").reward
    # the world's outcomes and the blocked sends, less the click's cause
    blind = {k: outcomes[k] for k in (*OUTCOMES, "violation") if k not in LATENT_OUTCOMES}
    assert set(observable_outcomes(outcomes)) == set(blind)
    expected = reward(outcomes, observable.weights())
    np.testing.assert_array_equal(reward(blind, observable.weights()), expected)
    np.testing.assert_array_equal(observable_value(blind, observable), expected)
    with pytest.raises(KeyError, match=r"'clicked'"):
        observable_value({k: v for k, v in blind.items() if k != "clicked"}, observable)


def test_the_env_trains_on_the_observable_reward():
    """``reward=observable`` is what CadenceCore pays: the weighted observable counts."""
    setup = load_setup(reward="observable")
    core = CadenceCore(setup, 300)
    core.reset(0)
    r = core.step(np.tile([1, 0, 0, 0], (300, 1)))
    counts = {k: v.astype(np.float64) for k, v in r.outcomes.items()}
    expected = (
        0.5 * counts["clicked"]
        + 4.0 * counts["converted"]
        - 4.0 * counts["harmful"]
        - 2.0 * counts["unsubscribed"]
        - 4.0 * counts["complaint"]
        - 25.0 * counts["churned"]
        - 0.05 * counts["sent"]
        - 0.2 * counts["violation"]
    )
    np.testing.assert_allclose(r.reward, expected.astype(np.float32), rtol=0, atol=1e-6)


def test_an_observable_reward_may_not_weigh_a_latent_outcome():
    with pytest.raises(ConfigError, match=r"reward\.anxious_click must be 0 in an observable"):
        load_setup(reward="observable", overrides=["reward.anxious_click=-1.0"])
    leaky = RewardConfig(name="leaky", observable=True)  # calm_click 1.0 by default
    with pytest.raises(ConfigError, match=r"calm_click must be 0 in an observable"):
        leaky.weights()
    with pytest.raises(ValueError, match=r"'balanced' weighs latent outcomes"):
        observable_value(_counts(), RewardConfig())


def test_the_latent_presets_keep_their_weights():
    """Adding the click weight changes nothing for the presets that do not set it."""
    assert RewardConfig().weights() == {
        "calm_click": 1.0,
        "anxious_click": -1.0,
        "converted": 4.0,
        "harmful": -4.0,
        "unsubscribed": -2.0,
        "complaint": -4.0,
        "churned": -25.0,
        "sent": -0.05,
        "violation": -0.2,
    }
    for name in ("balanced", "engagement", "fiduciary"):
        assert "clicked" not in load_setup(reward=name).reward.weights()


def test_the_yardstick_can_be_the_observable_reward():
    from hydra import compose, initialize_config_dir

    from experiment.schema import register, validate_run

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        trained = compose("config", overrides=["reward=observable"])
        judged = compose("config", overrides=["reward@eval.reward=observable"])
    run, setup = validate_run(trained)
    assert setup.reward.observable and run.eval.reward == RewardConfig()
    run, setup = validate_run(judged)
    assert run.eval.reward.observable and setup.reward == RewardConfig()


def test_the_study_finds_every_wrongly_ordered_pair_and_its_cost():
    from studies.observable_reward import Scores, agreement

    clients = np.ones(40)
    scores = Scores(
        policies=["a", "b", "c"],
        trained_on=["-", "-", "-"],
        balanced=np.stack([3.0 * clients, 2.0 * clients, 1.0 * clients]),
        observable=np.stack([2.0 * clients, 3.0 * clients, 1.0 * clients]),
        anxious_share=np.zeros(3),
    )
    agree = agreement(scores, n_boot=20)
    assert agree.discordant == [("a", "b", 1.0)]
    assert agree.pairs == 3
    assert agree.spearman[0] == pytest.approx(0.5)
    assert agree.kendall[0] == pytest.approx(1 / 3)
    assert agree.top_regret == pytest.approx(1.0)  # the observable's first choice is b
    assert agree.top_agreement == 0.0


def test_the_study_scores_both_rewards_on_the_same_rollout():
    """The observable value a rollout accumulates day by day is the observable weights applied
    to the rollout's own per-client totals (churn included): nothing latent enters it."""
    from agents.config import AgentConfig
    from agents.registry import make_policy
    from evaluation.rollout import rollout
    from studies.observable_reward import Sizes, score

    sizes = Sizes(clients=200, days=20, seeds=1, bandit_budget=0, sb3_budget=0, n_boot=10)
    policies = [make_policy(AgentConfig(name=n)) for n in ("batch_and_blast", "segment_rules")]
    scores = score(policies, ["-", "-"], load_setup(), sizes)
    observable = load_setup(reward="observable").reward
    for i, policy in enumerate(policies):
        run = rollout(policy, load_setup(), sizes.clients, sizes.days, 1000)
        totals = dict(run.totals) | {"churned": (~run.retained).astype(np.float64)}
        np.testing.assert_allclose(scores.observable[i], observable_value(totals, observable))
        np.testing.assert_allclose(scores.balanced[i], run.value)
    assert scores.anxious_share[0] > scores.anxious_share[1]  # batch_and_blast urges
