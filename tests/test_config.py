"""Configuration: presets compose, defaults are the documented ones, bad values stop early."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from envs.config import (
    CONF_DIR,
    GuardrailConfig,
    RewardConfig,
    load_preset,
    load_setup,
    preset_names,
    to_setup,
)
from simulate.config import ConfigError, PopulationConfig


@pytest.mark.parametrize("group", ["env", "population", "scenario", "reward"])
def test_every_preset_composes(group):
    names = preset_names(group)
    assert names
    for name in names:
        setup = load_setup(**{group: name})
        if group in ("scenario", "reward"):
            assert getattr(setup, group).name == name


def test_default_yaml_holds_the_embedded_defaults():
    assert load_setup().population == PopulationConfig()
    assert load_setup().env.guardrails == GuardrailConfig()
    assert load_setup().reward == RewardConfig()
    yaml_keys = set(OmegaConf.load(CONF_DIR / "population" / "default.yaml"))
    assert yaml_keys == {f.name for f in dataclasses.fields(PopulationConfig)}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("reward.churn=2.0", r"reward\.churn must be <= 0\.0, got 2\.0"),
        ("env.horizon_days=0", r"env\.horizon_days must be >= 1, got 0"),
        (
            "population.literacy_mean=1.5",
            r"population\.literacy_mean must be <= 1\.0, got 1\.5 \(allowed range \[0\.0, 1\.0\]\)",
        ),
        ("population.segment_probs=[0.5,0.5,0.5,0.5]", r"population\.segment_probs must sum to 1"),
        (
            "population.gender_probs=[0.5,0.5]",
            r"population\.gender_probs must be a list of 3 numbers",
        ),
        (
            "env.response.anxious_click_max=-0.1",
            r"env\.response\.anxious_click_max must be >= 0\.0",
        ),
        (
            "env.guardrails.channel_caps.sms=9",
            r"env\.guardrails\.channel_caps\.sms must be in \[0, 7\]",
        ),
        # Hydra's command-line rules, as in the apps: a new key needs `+`, and then the check
        ("env.guardrails.quiet_hours.fax=[late]", r"override 'env\.guardrails\.quiet_hours\.fax'"),
        ("+env.guardrails.quiet_hours.fax=[late]", r"unknown channel 'fax'"),
        ("env.guardrails.quiet_hours.sms=[night]", r"unknown slot 'night'"),
        ("env.num_clientz=3", r"num_clientz"),
        ("env.horizon_days=ninety", r"horizon_days"),
    ],
)
def test_bad_value_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_setup(overrides=[override])


@pytest.mark.parametrize(
    ("preset", "field", "value", "message"),
    [
        (
            "misfire",
            "segment",
            "pensioners",
            r"scenario\.events\[0\]\.segment must be 'all' or one of",
        ),
        (
            "market_shock",
            "end_day",
            3,
            r"scenario\.events\[0\]\.end_day must be >= start_day \(30\), got 3",
        ),
        (
            "market_shock",
            "anxiety_shock",
            4.0,
            r"scenario\.events\[0\]\.anxiety_shock must be <= 1\.0",
        ),
    ],
)
def test_bad_scenario_event_names_the_key(preset, field, value, message):
    scenario = load_preset("scenario", preset)
    scenario.events[0][field] = value
    with pytest.raises(ConfigError, match=message):
        to_setup({"scenario": scenario})


@pytest.mark.slow
def test_load_setup_is_hydras_composition_of_the_apps_presets():
    """load_setup composes conf/setup.yaml with Hydra, as the apps compose it inside
    config.yaml: the same world for the same choices, a _global_ population preset's env
    settings included, and no second reader of package headers."""
    from envs.config import compose_conf
    from experiment.schema import register, validate_run

    register()
    for choices in ([], ["population=hillstrom", "scenario=misfire"], ["reward=engagement"]):
        _, apps = validate_run(compose_conf("config", [*choices, "seed=3"]))
        groups = dict(c.split("=") for c in choices)
        assert load_setup(**groups, seed=3) == apps, choices
    hillstrom = load_setup(population="hillstrom")
    assert hillstrom.env.response != load_setup().env.response  # its calibrated responses
    over = load_setup(population="hillstrom", overrides=["env.response.click_base=-4.5"])
    assert over.env.response.click_base == -4.5  # the command line beats the preset
    assert not hasattr(__import__("envs.config").config, "_is_global")


def test_unknown_preset_lists_the_choices():
    with pytest.raises(
        ConfigError,
        match=r"reward='clicks' is not a preset; choose one of \['balanced', 'engagement', 'fiduciary', 'observable'",
    ):
        load_setup(reward="clicks")


def test_load_setup_hands_each_caller_its_own_copy_and_sees_edited_presets(tmp_path, monkeypatch):
    import shutil

    import envs.config as config

    conf = tmp_path / "conf"
    shutil.copytree(config.CONF_DIR, conf)
    monkeypatch.setattr(config, "CONF_DIR", conf)
    first = load_setup(overrides=["env.num_clients=77"])
    first.env.guardrails.max_per_week = 1  # a caller's change stays its own
    again = load_setup(overrides=["env.num_clients=77"])
    assert again.env.num_clients == 77 and again.env.guardrails.max_per_week == 5
    assert again is not first and again == load_setup(overrides=["env.num_clients=77"])
    assert load_setup().env.num_clients == 256  # other overrides, another composition
    yaml = conf / "env" / "default.yaml"
    yaml.write_text(yaml.read_text().replace("horizon_days: 90", "horizon_days: 45"))
    assert load_setup().env.horizon_days == 45  # an edited preset composes afresh
    (conf / "reward" / "kind.yaml").write_text((conf / "reward" / "balanced.yaml").read_text())
    assert load_setup(reward="kind") == load_setup(reward="balanced")  # a new preset is seen
