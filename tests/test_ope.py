"""One-step off-policy estimators: exact on cases with a known answer, refusing bad input by
name, and close to the truth on a synthetic logged bandit (fixed seeds)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation import ope

K, CONTEXTS = 3, 5


def _logs(n: int, seed: int):
    """A logged bandit with known truth: (reward, pscore, target_pscore, q_logged, q_target, truth)."""
    rng = np.random.default_rng(seed)
    mu = np.linspace(0.1, 0.9, CONTEXTS * K).reshape(CONTEXTS, K)
    logging = np.full((CONTEXTS, K), 1.0 / K)
    target = np.tile([0.1, 0.2, 0.7], (CONTEXTS, 1))
    x = rng.integers(0, CONTEXTS, n)
    a = (rng.random(n)[:, None] > np.cumsum(logging[x], axis=1)).sum(axis=1)
    r = (rng.random(n) < mu[x, a]).astype(float)
    truth = float((target * mu).sum(axis=1).mean())
    q_hat = mu + 0.1  # a biased reward model
    return r, logging[x, a], target[x, a], q_hat[x, a], (target[x] * q_hat[x]).sum(axis=1), truth


def test_with_the_logging_policy_as_target_ips_and_snips_are_the_mean_reward():
    r = np.array([1.0, 0.0, 2.0, 5.0])
    p = np.array([0.5, 0.25, 1.0, 0.1])
    assert ope.ips(r, p, p, n_boot=20).value == pytest.approx(2.0)
    assert ope.snips(r, p, p, n_boot=20).value == pytest.approx(2.0)
    est = ope.ips(r, p, p, n_boot=20)
    assert est.ess == pytest.approx(4.0) and est.max_weight == pytest.approx(1.0) and est.n == 4


def test_dr_with_an_exact_reward_model_on_noiseless_rewards_is_the_truth():
    r, p, t, _, _, _ = _logs(2000, 0)
    q = np.full_like(r, 0.3)
    # rewards equal the model everywhere: the correction is zero, DR = DM
    est = ope.dr(q, p, t, q, q + 0.0, n_boot=20)
    assert est.value == pytest.approx(0.3) and est.ci_low == pytest.approx(0.3)
    assert ope.dm(q, n_boot=20).value == pytest.approx(0.3)


def test_switch_and_clip_bound_what_the_weights_may_do():
    r, p, t, ql, qt, _ = _logs(5000, 1)
    plain = ope.dr(r, p, t, ql, qt, n_boot=20)
    assert ope.switch_dr(r, p, t, ql, qt, switch=math.inf, n_boot=20).value == plain.value
    assert ope.switch_dr(r, p, t, ql, qt, switch=0.0, n_boot=20).value == pytest.approx(
        ope.dm(qt, n_boot=20).value
    )
    assert ope.ips(r, p, t, clip=1.5, n_boot=20).max_weight <= 1.5
    assert ope.ips(r, p, t, n_boot=20).max_weight == pytest.approx(0.7 * K)


def test_estimates_sit_near_the_truth_and_dr_is_no_worse_than_ips():
    r, p, t, ql, qt, truth = _logs(200_000, 2)
    estimates = {
        "ips": ope.ips(r, p, t, n_boot=100),
        "snips": ope.snips(r, p, t, n_boot=100),
        "dr": ope.dr(r, p, t, ql, qt, n_boot=100),
    }
    for name, est in estimates.items():
        assert est.ci_low <= truth <= est.ci_high, (name, est, truth)
    width = {k: e.ci_high - e.ci_low for k, e in estimates.items()}
    assert width["dr"] <= width["ips"]
    # the biased reward model alone misses by its bias
    assert ope.dm(qt, n_boot=20).value == pytest.approx(truth + 0.1, abs=0.01)


def test_error_shrinks_as_logs_grow():
    errors = []
    for n in (1_000, 10_000, 100_000):
        spread = []
        for seed in range(20):
            r, p, t, _, _, truth = _logs(n, 100 + seed)
            spread.append(ope.ips(r, p, t, n_boot=1).value - truth)
        errors.append(float(np.sqrt(np.mean(np.square(spread)))))
    assert errors[0] > errors[1] > errors[2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pscore": [0.5, 0.0]}, r"pscore\[1\] = 0.0; a logging propensity must lie in \(0, 1\]"),
        ({"pscore": [0.5, 1.2]}, r"pscore\[1\] = 1.2"),
        ({"target_pscore": [-0.1, 0.5]}, r"target_pscore\[0\] = -0.1"),
        ({"reward": [1.0, float("nan")]}, r"reward\[1\] = nan is not a finite number"),
        ({"pscore": [0.5]}, "pscore has 1 entries; expected 2"),
        ({"reward": []}, "reward is empty"),
    ],
)
def test_bad_input_is_refused_naming_the_array_and_row(kwargs, message):
    args = {"reward": [1.0, 0.0], "pscore": [0.5, 0.5], "target_pscore": [0.5, 0.5]} | kwargs
    if args["reward"] == []:
        args = {"reward": [], "pscore": [], "target_pscore": []}
    with pytest.raises(ValueError, match=message):
        ope.ips(**args, n_boot=5)


def test_epsilon_soft_gives_a_proper_distribution():
    greedy = np.array([2, 2, 2])
    probs = ope.epsilon_soft(greedy, np.array([0, 1, 2]), 0.3, 3)
    assert probs.sum() == pytest.approx(1.0) and probs[2] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="epsilon must lie in"):
        ope.epsilon_soft(greedy, greedy, 1.5, 3)


def _chain(n: int, days: int, seed: int):
    """Logged trajectories of a two-state chain with churn, and the target policy's exact value."""
    mu = np.array([[0.2, 0.5], [0.6, 0.1]])  # reward by (state, action)
    move = np.array([[0.1, 0.7], [0.8, 0.3]])  # P(next state = 1 | state, action)
    churn = 0.05
    logging, target = np.array([0.5, 0.5]), np.array([0.2, 0.8])  # P(action = 0), P(action = 1)
    rng = np.random.default_rng(seed)
    s = np.zeros(n, dtype=int)
    alive = np.ones(n, dtype=bool)
    r, p, t, live = (np.zeros((n, days)) for _ in range(4))
    for d in range(days):
        a = (rng.random(n) < logging[1]).astype(int)
        live[:, d] = alive
        r[:, d] = np.where(alive, rng.random(n) < mu[s, a], 0.0)
        p[:, d] = logging[a]
        t[:, d] = target[a]
        s = (rng.random(n) < move[s, a]).astype(int)
        alive &= rng.random(n) >= churn
    value = np.zeros(2)  # exact value by backward recursion over the horizon
    for _ in range(days):
        value = np.array(
            [
                sum(
                    target[a]
                    * (
                        mu[x, a]
                        + (1 - churn) * ((1 - move[x, a]) * value[0] + move[x, a] * value[1])
                    )
                    for a in (0, 1)
                )
                for x in (0, 1)
            ]
        )
    return r, p, t, live.astype(bool), float(value[0])


def test_pdwis_finds_a_multi_day_value_with_churn_and_truncation():
    r, p, t, live, truth = _chain(20_000, 10, 3)
    est = ope.pdwis(r, p, t, live, n_boot=200)
    assert est.ci_low <= truth <= est.ci_high, (est, truth)
    # on-policy (target = logging) the estimate is the plain mean return
    same = ope.pdwis(r, p, p, live, n_boot=20)
    assert same.value == pytest.approx(r.sum(axis=1).mean())


def test_pdwis_refuses_reward_after_the_end_and_bad_shapes():
    r, p, t, live, _ = _chain(100, 5, 0)
    r[~live] = 0.0
    i, d = np.argwhere(~live)[0]
    r[i, d] = 1.0
    with pytest.raises(
        ValueError, match=rf"reward\[{i}, {d}\] = 1.0 on a day the client was no longer alive"
    ):
        ope.pdwis(r, p, t, live, n_boot=5)
    with pytest.raises(ValueError, match="alive has shape"):
        ope.pdwis(r, p, t, live[:, :3], n_boot=5)


@pytest.mark.slow  # 200 logged datasets x 3 estimators x 200 bootstrap replicates
def test_intervals_cover_the_truth_at_their_nominal_rate_over_200_seeds():
    hits = {"ips": 0, "snips": 0, "dr": 0}
    for seed in range(200):
        r, p, t, ql, qt, truth = _logs(5000, 1000 + seed)
        for name, est in (
            ("ips", ope.ips(r, p, t, n_boot=200, seed=seed)),
            ("snips", ope.snips(r, p, t, n_boot=200, seed=seed)),
            ("dr", ope.dr(r, p, t, ql, qt, n_boot=200, seed=seed)),
        ):
            hits[name] += est.ci_low <= truth <= est.ci_high
    # measured: 0.935, 0.945, 0.94
    for name, count in hits.items():
        assert 0.90 <= count / 200 <= 0.98, (name, count)
