"""Structured configuration of the RL interface: guardrails, reward, and the whole setup.

``load_setup`` composes ``conf/setup.yaml`` with Hydra's compose API, the one way config is
composed here (YAML chooses values, dataclasses define and validate them): the apps compose the
same file inside ``conf/config.yaml``.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
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


GLOBAL_PACKAGE = "# @package _global_"
"""first line of a population preset that also sets how its clients respond: the file then holds
``population:`` and ``env: {response: ...}`` (Hydra's package header, which it reads)"""


@dataclass
class _SetupRoot(Setup):
    """What :func:`load_setup` composes: :class:`Setup`'s keys and defaults, then the presets
    ``conf/setup.yaml`` chooses (the apps put the same file under their own schema)."""

    defaults: list[Any] = field(default_factory=lambda: ["_self_", "setup"])


def register() -> None:
    """Store the root :func:`load_setup` composes as ``setup_root`` in Hydra's ConfigStore
    (idempotent)."""
    ConfigStore.instance().store(name="setup_root", node=_SetupRoot)


register()


def preset_names(group: str) -> list[str]:
    """Names of the YAML presets in ``conf/<group>/``."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@contextmanager
def conf_dir() -> Iterator[None]:
    """Hydra's compose API over ``conf/`` for the ``with`` block (``hydra.compose`` inside it),
    also inside a running Hydra app, whose own state is put back afterwards."""
    gh = GlobalHydra.instance()
    outer = gh.hydra
    gh.clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            yield
    finally:
        GlobalHydra.instance().hydra = outer


def compose_conf(config_name: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """``conf/<config_name>.yaml`` composed with Hydra's command-line ``overrides`` exactly as
    the apps compose it; a :class:`ConfigError` names what is wrong."""
    try:
        with conf_dir():
            return compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(str(exc)) from exc


def load_preset(group: str, name: str) -> DictConfig:
    """The YAML preset ``conf/<group>/<name>.yaml`` over its schema's defaults (what
    ``<group>=<name>`` puts at ``<group>``)."""
    if name not in preset_names(group):
        raise ConfigError(f"{group}={name!r} is not a preset; choose one of {preset_names(group)}")
    return compose_conf("setup_root", [f"{group}={name}"])[group]


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


def _check_population(name: str) -> None:
    """A population preset may set ``population:`` and, under Hydra's ``# @package _global_``
    header (:data:`GLOBAL_PACKAGE`), ``env:`` (how its clients respond); nothing else."""
    path = CONF_DIR / "population" / f"{name}.yaml"
    alone = compose_conf_groups([f"+population={name}"])
    unknown = sorted(set(alone) - {"population", "env"})
    if unknown:
        raise ConfigError(f"{path}: only population: and env: may be set here, not {unknown}")


def compose_conf_groups(overrides: list[str]) -> DictConfig:
    """Presets composed alone, with no primary config (``+group=name`` overrides)."""
    try:
        with conf_dir():
            return compose(config_name=None, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(str(exc)) from exc


def load_setup(
    env: str | None = None,
    population: str | None = None,
    scenario: str | None = None,
    reward: str | None = None,
    seed: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> Setup:
    """Compose a :class:`Setup` from ``conf/setup.yaml`` (Hydra's compose API, as train.py and
    evaluate.py compose it inside ``conf/config.yaml``): a preset named for a group replaces the one setup.yaml chooses (None:
    keep it), then Hydra ``overrides`` (``key=value``) apply.

    Example: ``load_setup(reward="engagement", overrides=["env.horizon_days=30"])``.
    """
    chosen = {"env": env, "population": population, "scenario": scenario, "reward": reward}
    for group, name in chosen.items():
        if name is not None and name not in preset_names(group):
            raise ConfigError(
                f"{group}={name!r} is not a preset; choose one of {preset_names(group)}"
            )
    if population is not None:
        _check_population(population)
    picked = [f"{group}={name}" for group, name in chosen.items() if name is not None]
    if seed is not None:
        picked.append(f"seed={seed}")
    return _composed_setup((*picked, *overrides))


_SETUPS: OrderedDict[tuple[Any, ...], Setup] = OrderedDict()
"""the last :data:`SETUP_CACHE_SIZE` setups :func:`load_setup` composed, keyed by their overrides
and the state of every YAML file under ``conf/``"""

SETUP_CACHE_SIZE = 64
"""how many composed setups :func:`load_setup` keeps (a composition costs ~0.15 s, a copy of
its result ~0.1 ms)"""


def _conf_state() -> tuple[tuple[str, int, int], ...]:
    """(path, modification time in ns, size) of every YAML file under ``conf/``: a preset
    edited, added or removed composes afresh."""
    return tuple(
        (str(p), st.st_mtime_ns, st.st_size)
        for p in sorted(CONF_DIR.rglob("*.yaml"))
        for st in (p.stat(),)
    )


def _composed_setup(overrides: tuple[str, ...]) -> Setup:
    """``to_setup(compose_conf("setup_root", overrides))``, composed once per overrides and
    ``conf/`` state; each caller gets its own copy (a caller may change its setup freely)."""
    key = (overrides, _conf_state())
    if key not in _SETUPS:
        _SETUPS[key] = to_setup(compose_conf("setup_root", list(overrides)))
        while len(_SETUPS) > SETUP_CACHE_SIZE:
            _SETUPS.popitem(last=False)
    _SETUPS.move_to_end(key)
    return copy.deepcopy(_SETUPS[key])
