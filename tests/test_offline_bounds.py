"""The estimators hold their bounds on hostile logs: memory that does not grow with the number of
distinct days, propensities held to a documented floor with the table saying so, and truth rollouts
that cover the log's own days and no more."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import polars as pl
import pytest

from agents.heuristics import HEURISTICS
from envs.config import load_setup
from envs.spaces import multi_to_flat
from evaluation import fqe, offline, ope
from evaluation.logs import ACTIONS
from evaluation.record import log_policy


def _peak_bytes(call) -> int:
    """Peak traced allocation (numpy's arrays included) while ``call`` runs."""
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _mondays(frame: pl.DataFrame, days: int) -> pl.DataFrame:
    """The log's day-0 rows (one per client, a Monday), dealt over ``days`` distinct Mondays."""
    first = frame.filter(pl.col("day") == 0).sort("client_id")
    return first.with_columns((pl.int_range(pl.len()) % days * 7).alias("day"))


def test_estimator_memory_does_not_grow_with_the_number_of_distinct_days():
    setup = load_setup()
    frame = log_policy(HEURISTICS["segment_rules"](), setup, 400, 1, seed=8, epsilon=0.3)
    target = [HEURISTICS["segment_rules"]()]

    def peak(days: int) -> int:
        log = _mondays(frame, days)
        kwargs = {"n_boot": 20, "fqe_boot": 10, "with_truth": False}
        return _peak_bytes(lambda: offline.estimate(log, target, setup, **kwargs))

    few, many = peak(4), peak(400)
    # 400 rows, each on its own day: the per-day FQE sums of 40 client groups once took
    # 400 x 40 x 151^2 doubles (2.9 GB, three times over); now one day's sums are held at a time
    assert many < 100 * 2**20, many
    assert many < 2 * few, (few, many)


def test_pdwis_from_rows_is_the_plain_cumulative_product_form_and_survives_overflow():
    rng = np.random.default_rng(0)
    n, days = 300, 12
    live = np.ones((n, days), dtype=bool)
    live[rng.random(n) < 0.3, :3] = False  # clients who enter late ...
    live[np.arange(n) % 7 == 0, 8:] = False  # ... and who churn
    p = rng.uniform(0.2, 1.0, (n, days))
    t = rng.uniform(0.0, 1.0, (n, days))
    r = np.where(live, rng.random((n, days)), 0.0)
    rho = np.cumprod(np.where(live, t / p, 1.0), axis=1)
    plain = float(((rho * r).sum(axis=0) / rho.sum(axis=0)).sum())
    client, day = np.nonzero(live)
    est = ope.pdwis_rows(r[live], p[live], t[live], client, day, n, days, n_boot=10)
    assert est.value == pytest.approx(plain, rel=1e-12)
    assert ope.pdwis(r, p, t, live, n_boot=10).value == pytest.approx(plain, rel=1e-12)
    # 400 days of weight 10: a cumulative product of 1e400 overflowed to inf / inf = NaN
    long_days = 400
    p = np.full((2, long_days), 0.1)
    t = np.ones((2, long_days))
    t[1, 0] = 0.5  # the second client's weight is half the first's throughout
    r = np.ones((2, long_days))
    live = np.ones((2, long_days), dtype=bool)
    est = ope.pdwis(r, p, t, live, n_boot=5)
    assert est.value == pytest.approx(long_days) and math.isfinite(est.ess)
    assert est.ess == pytest.approx(1.5**2 / 1.25)


def _agreeing_row(frame: pl.DataFrame, policy, setup) -> int:
    """A row where the logged action is ``policy``'s own (its target probability is 1)."""
    own = offline.own_actions(policy, frame, setup)
    logged = multi_to_flat(frame.select(ACTIONS).to_numpy())
    return int(np.flatnonzero(own == logged)[0])


@pytest.mark.parametrize("tiny", [1e-300, 5e-324])
def test_a_tiny_propensity_is_clipped_to_the_floor_and_the_table_says_so(tiny):
    setup = load_setup()
    policy = HEURISTICS["segment_rules"]()
    frame = log_policy(policy, setup, 500, 4, seed=6, epsilon=0.3)
    row = _agreeing_row(frame, policy, setup)
    bad = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == row)
        .then(tiny)
        .otherwise(pl.col("pscore"))
        .alias("pscore")
    )
    kwargs = {"n_boot": 30, "fqe_boot": 5, "with_truth": False}
    (clean,) = offline.estimate(frame, [policy], setup, **kwargs)
    (res,) = offline.estimate(bad, [policy], setup, **kwargs)
    rewards = frame["reward"].to_numpy()
    for name, e in res.estimates.items():
        assert math.isfinite(e.value) and math.isfinite(e.ess) and e.ess >= 1, (name, e)
        assert math.isfinite(e.ci_low) and math.isfinite(e.ci_high), (name, e)
    snips = res.estimates["snips"]
    assert rewards.min() <= snips.value <= rewards.max()
    assert snips.max_weight == pytest.approx(1 / ope.PSCORE_FLOOR)
    # the clipped row moves DR by at most its capped weight times its residual over the rows
    n, residual = frame.height, abs(rewards[row]) + 1.0
    assert abs(res.estimates["dr"].value - clean.estimates["dr"].value) <= residual / (
        ope.PSCORE_FLOOR * n
    )
    notes = {
        line.split("|")[2].strip(): line.split("|")[-2].strip()
        for line in offline.table([res]).splitlines()[2:]
    }
    for name in ("ips", "snips", "dr", "pdwis"):
        assert "clipped 1 propensity below 1e-06" in notes[name], (name, notes[name])
        assert "no logged support" not in notes[name]
    assert notes["snips"].startswith("weights too extreme: ESS")
    assert "clipped" not in notes["dm"] and "clipped" not in notes["fqe"]
    with pytest.raises(
        ValueError, match=rf"row {row} \(client \d+, day \d\): pscore .* is below the floor 1e-06"
    ):
        offline.estimate(bad, [policy], setup, below_floor="refuse", **kwargs)


def test_notes_tell_no_support_from_extreme_weights_from_too_few_rows():
    rng = np.random.default_rng(1)
    r, p = rng.random(1000), np.full(1000, 0.5)
    none = ope.snips(r, p, np.zeros(1000), n_boot=5)
    assert ope.caveat(none, 30) == "no logged support" and none.support == 0
    extreme = ope.snips(r, np.r_[1e-4, p[1:]], np.ones(1000), n_boot=5)
    assert ope.caveat(extreme, 30).startswith("weights too extreme: ESS 1.")
    few = ope.snips(r, p, np.r_[np.ones(10), np.zeros(990)], n_boot=5)
    assert ope.caveat(few, 30) == "ESS < 30: unreliable" and few.support == 10
    assert ope.caveat(ope.snips(r, p, np.ones(1000), n_boot=5), 30) == ""
    with pytest.raises(ValueError, match="pscore_floor must lie in"):
        ope.ips(r, p, p, pscore_floor=0.0, n_boot=5)


def test_the_truth_covers_the_logs_own_days_and_a_far_day_is_refused():
    setup = load_setup()
    policy = HEURISTICS["segment_rules"]()
    frame = log_policy(policy, setup, 150, 5, seed=2, epsilon=0.3)
    shifted = frame.with_columns(pl.col("day") + 28)  # four weeks later: same weekdays
    for epsilon in (0.0, 0.2):
        truth = offline.true_value(policy, frame, setup, epsilon)
        # rolled out over days 28..32 (five days), not 0..32
        assert offline.true_value(policy, shifted, setup, epsilon) == truth
    kwargs = {"n_boot": 20, "fqe_boot": 5}
    (plain,) = offline.estimate(frame, [policy], setup, **kwargs)
    (moved,) = offline.estimate(shifted, [policy], setup, **kwargs)
    assert moved.truth == plain.truth
    assert moved.estimates["fqe"].value == plain.estimates["fqe"].value
    assert moved.estimates["pdwis"].value == plain.estimates["pdwis"].value
    far = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(10**9).otherwise(pl.col("day")).alias("day")
    )
    with pytest.raises(ValueError, match=r"spans days 0\.\.1000000000 .*at most 3,661 days"):
        offline.true_value(policy, far, setup)


def test_a_thin_days_refit_through_its_rows_equals_the_refit_through_its_sums(monkeypatch):
    setup = load_setup()
    frame = log_policy(HEURISTICS["segment_rules"](), setup, 60, 6, seed=4, epsilon=0.3)
    for policy in (HEURISTICS["segment_rules"](), HEURISTICS["fixed_weekly"]()):
        thin = offline.fqe(frame, policy, setup, epsilon=0.1, n_boot=20)  # 60 rows a day
        with monkeypatch.context() as patch:
            patch.setattr(fqe, "FEW_ROWS", 0)  # every day through its D x D sums
            full = offline.fqe(frame, policy, setup, epsilon=0.1, n_boot=20)
        thin_figures = (thin.value, thin.ci_low, thin.ci_high)
        full_figures = (full.value, full.ci_low, full.ci_high)
        # the same regression solved two ways: equal to the conditioning of its normal equations
        assert thin_figures == pytest.approx(full_figures, rel=1e-7)
