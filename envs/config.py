"""Structured configuration of the RL interface: guardrails, reward, and the whole setup.

``load_setup`` composes the presets in ``conf/`` the way Hydra does (YAML chooses values,
dataclasses define and validate them), so the env works with or without Hydra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from envs.reward import RewardConfig
from simulate.config import (
    ConfigError,
    PopulationConfig,
    ResponseConfig,
    ScenarioConfig,
    check_quiet_hours,
    num,
    validate,
)
from simulate.labels import CHANNELS, CONTENTS

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
"""the project's ``conf/`` folder (Hydra config root)"""

EVAL_SEED_BASE = 1000
"""the first evaluation seed: evaluation seed ``k`` is ``EVAL_SEED_BASE + k`` (fresh clients
and luck that training, which uses ``Setup.seed`` from 0, never meets)"""


def eval_seeds(num_seeds: int) -> range:
    """The evaluation seeds of a comparison over ``num_seeds`` seeds (1000, 1001, ...)."""
    return range(EVAL_SEED_BASE, EVAL_SEED_BASE + num_seeds)


@dataclass
class GuardrailConfig:
    """Rules every policy acts within; the env blocks a masked choice and counts a violation."""

    quiet_hours: dict[str, list[str]] = field(
        default_factory=lambda: {"email": [], "push": ["late"], "sms": ["early", "late"]}
    )
    """slots (short names) in which nothing may be sent on each channel"""
    max_per_week: int = num(5, 0, 7)
    """most messages a client may receive in any 7 consecutive days, all channels"""
    channel_caps: dict[str, int] = field(default_factory=lambda: {"email": 5, "push": 3, "sms": 2})
    """most messages per channel in any 7 consecutive days"""
    content_min_tier: dict[str, int] = field(default_factory=lambda: {"product_offer": 1})
    """lowest consent tier at which each content may be sent (a targeted offer needs tier >= 1)"""

    def check(self, prefix: str) -> None:
        check_quiet_hours(f"{prefix}.quiet_hours", self.quiet_hours)
        for channel, cap in self.channel_caps.items():
            if channel not in CHANNELS:
                raise ConfigError(
                    f"{prefix}.channel_caps has unknown channel {channel!r}; channels are {list(CHANNELS)}"
                )
            if not 0 <= cap <= 7:
                raise ConfigError(
                    f"{prefix}.channel_caps.{channel} must be in [0, 7] (per 7 days), got {cap}"
                )
        for content, tier in self.content_min_tier.items():
            if content not in CONTENTS:
                raise ConfigError(
                    f"{prefix}.content_min_tier has unknown content {content!r}; contents are {list(CONTENTS)}"
                )
            if not 0 <= tier <= 3:
                raise ConfigError(
                    f"{prefix}.content_min_tier.{content} must be in [0, 3], got {tier}"
                )


@dataclass
class EnvConfig:
    """The environment: population size, horizon, how clients respond, the guardrails."""

    num_clients: int = num(256, 1, 10_000_000)
    """client slots simulated at once (the vector env's num_envs)"""
    horizon_days: int = num(90, 1, 3650)
    """days a client is followed before its episode is truncated"""
    response: ResponseConfig = field(default_factory=ResponseConfig)
    guardrails: GuardrailConfig = field(default_factory=GuardrailConfig)


@dataclass
class Setup:
    """Everything that defines a simulated world and its reward."""

    env: EnvConfig = field(default_factory=EnvConfig)
    population: PopulationConfig = field(default_factory=PopulationConfig)
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    seed: int = num(0, 0, 2**32 - 1)
    """experiment seed: fixes the clients and their luck"""


GROUP_SCHEMAS: dict[str, type] = {
    "env": EnvConfig,
    "population": PopulationConfig,
    "scenario": ScenarioConfig,
    "reward": RewardConfig,
}


def preset_names(group: str) -> list[str]:
    """Names of the YAML presets in ``conf/<group>/``."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def load_preset(group: str, name: str) -> DictConfig:
    """The YAML preset ``conf/<group>/<name>.yaml`` merged over its schema's defaults."""
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"{group}={name!r} is not a preset; choose one of {preset_names(group)}")
    schema = OmegaConf.structured(GROUP_SCHEMAS[group])
    try:
        return OmegaConf.merge(schema, OmegaConf.load(path))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path}: {exc}") from exc


GLOBAL_PACKAGE = "# @package _global_"
"""first line of a population preset that also sets how its clients respond: the file then holds
``population:`` and ``env: {response: ...}`` (Hydra reads the same header)"""


def _is_global(path: Path) -> bool:
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            return False
        if line.strip() == GLOBAL_PACKAGE:
            return True
    return False


def load_population(name: str) -> tuple[DictConfig, DictConfig | None]:
    """A population preset and the ``env`` settings it carries (None for a plain preset).

    A calibrated book of clients differs in how it responds as well as in who is in it, so its
    preset may set ``env.response`` keys; the env preset gives the rest and the command line
    overrides both."""
    path = CONF_DIR / "population" / f"{name}.yaml"
    if not path.is_file() or not _is_global(path):
        return load_preset("population", name), None
    raw = OmegaConf.load(path)
    unknown = sorted(set(raw) - {"population", "env"})
    if unknown:
        raise ConfigError(f"{path}: only population: and env: may be set here, not {unknown}")
    try:
        population = OmegaConf.merge(
            OmegaConf.structured(PopulationConfig), raw.get("population", {})
        )
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return population, raw.get("env")


def to_setup(cfg: Any) -> Setup:
    """Turn a DictConfig/dict holding ``env, population, scenario, reward, seed`` into a validated Setup."""
    schema = OmegaConf.structured(Setup)
    try:
        picked = {
            k: cfg[k] for k in ("env", "population", "scenario", "reward", "seed") if k in cfg
        }
        merged = OmegaConf.merge(schema, picked)
        setup = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"{key + ': ' if key else ''}{exc}") from exc
    return validate(setup)


def load_setup(
    env: str = "default",
    population: str = "default",
    scenario: str = "calm",
    reward: str = "balanced",
    seed: int = 0,
    overrides: list[str] | tuple[str, ...] = (),
) -> Setup:
    """Compose a :class:`Setup` from presets in ``conf/`` plus dotted overrides.

    Example: ``load_setup(reward="engagement", overrides=["env.horizon_days=30"])``.
    """
    population_cfg, env_extra = load_population(population)
    env_cfg = load_preset("env", env)
    if env_extra is not None:
        try:
            env_cfg = OmegaConf.merge(env_cfg, env_extra)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"population={population}: {exc}") from exc
    cfg = OmegaConf.create(
        {
            "env": env_cfg,
            "population": population_cfg,
            "scenario": load_preset("scenario", scenario),
            "reward": load_preset("reward", reward),
            "seed": seed,
        }
    )
    if overrides:
        try:
            cfg = OmegaConf.merge(
                OmegaConf.structured(Setup), cfg, OmegaConf.from_dotlist(list(overrides))
            )
        except OmegaConfBaseException as exc:
            raise ConfigError(str(exc)) from exc
    return to_setup(cfg)
