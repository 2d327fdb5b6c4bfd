"""The calibrated presets reproduce what they were fitted to (fixed seed: same figures on one
machine), and the Hillstrom protocol measures increments, not credit."""

from __future__ import annotations

import pytest

from envs.config import CONF_DIR, load_setup
from realism import protocols
from realism.fit import needed_protocols, simulate
from realism.targets import load_targets
from simulate.config import ConfigError

ROOT = CONF_DIR.parent


def _misses(population: str, targets: str, clients: int, names=None) -> dict[str, float]:
    t = load_targets(ROOT / "targets" / f"{targets}.yaml")
    stats = simulate(load_setup(population=population), needed_protocols(t), clients, 0)
    return {
        x.statistic: stats[x.statistic]
        for x in t.targets
        if (names is None or x.statistic in names) and not x.low <= stats[x.statistic] <= x.high
    }


@pytest.mark.slow
def test_default_population_meets_every_financial_services_figure():
    assert _misses("default", "financial_services", 5000) == {}


@pytest.mark.slow  # a simulated year for each of about 100,000 candidates
def test_hillstrom_preset_reproduces_the_hold_out_experiment():
    assert _misses("hillstrom", "hillstrom", 10000) == {}


@pytest.mark.slow
def test_bank_campaign_preset_reproduces_contact_fatigue():
    names = [f"bank/relative_success/contact_{k}" for k in range(2, 8)]
    assert (
        _misses("bank_campaign", "bank_campaign", 5000, [*names, "bank/decline_1_to_10plus"]) == {}
    )


@pytest.mark.slow  # two simulated Hillstrom experiments
def test_an_email_nobody_clicks_lifts_nothing():
    """With clicks switched off the e-mail arm differs from the hold-out only through what an
    unread message does to trust and fatigue: the visit lift is (almost) nil."""
    setup = load_setup(population="hillstrom", overrides=["env.response.click_base=-10"])
    stats = protocols.hillstrom(setup, 500, 0)
    assert abs(stats["hillstrom/visit_lift"]) < 0.005
    base = protocols.hillstrom(load_setup(population="hillstrom"), 500, 0)
    assert base["hillstrom/visit_lift"] > 0.03
    assert base["hillstrom/customers"] >= 500


@pytest.mark.slow  # a simulated Hillstrom year before the refusal
def test_a_population_that_never_buys_is_refused_with_the_reason():
    setup = load_setup(overrides=["population.visit_logit_mean=-15", "population.visit_logit_sd=0"])
    with pytest.raises(ValueError, match="bought within a year"):
        protocols.hillstrom(setup, 200, 0)


def test_a_preset_may_set_only_population_and_env(tmp_path, monkeypatch):
    import envs.config as ec

    (tmp_path / "population").mkdir()
    (tmp_path / "population" / "odd.yaml").write_text(
        "# @package _global_\npopulation: {}\nreward: {churn: -1}\n"
    )
    monkeypatch.setattr(ec, "CONF_DIR", tmp_path)
    with pytest.raises(ConfigError, match="only population: and env: may be set here"):
        ec.load_setup(population="odd")
