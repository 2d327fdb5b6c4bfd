"""Agent configuration: each kind owns a dataclass of exactly the fields it reads.

:class:`AgentConfig` is the base every kind's config extends (it holds only ``name``); a kind
declares its subclass in its own module of :mod:`agents.kinds` and registers it with the kind
(``AgentKind.config``). That subclass is the kind's Hydra schema: ``conf/agent/<name>.yaml``
extends it (``defaults: [/agent_schema/<name>@_here_, _self_]``), so a key the kind does not
have stops composition with Hydra's error naming it.

``AgentConfig(name=..., **values)`` builds the config of the kind ``name`` (a
:class:`ConfigError` names a value the kind does not have), so callers never need to know which
class a kind uses. :func:`saved_config` reads the config a saved policy carries, dropping fields
its kind no longer has (policies saved with the former flat config of every kind's fields).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from simulate.config import ConfigError, num

_FAMILY_NAMES = {
    "SB3_AGENTS": "sb3",
    "BANDITS": "bandit",
    "HEURISTIC_AGENTS": "heuristic",
    "MODEL_BASED": "model_based",
}


def __getattr__(attr: str) -> tuple[str, ...]:
    """``AGENTS`` (every agent name ``agent=`` accepts) and the names of each family
    (``SB3_AGENTS``, ``BANDITS``, ``HEURISTIC_AGENTS``, ``MODEL_BASED``), read from the agent
    registry (:mod:`agents.kinds`), where each kind is registered once."""
    if attr != "AGENTS" and attr not in _FAMILY_NAMES:  # (``__path__`` is asked while importing)
        raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
    from agents.kinds import names

    if attr == "AGENTS":
        return names()
    return names(_FAMILY_NAMES[attr])  # type: ignore[arg-type]


def _config_class(name: Any) -> type[AgentConfig]:
    from agents.kinds import kind

    if not isinstance(name, str):
        raise ConfigError(f"agent.name must be the name of an agent kind, got {name!r}")
    return kind(name).config


def field_names(config: type[AgentConfig]) -> tuple[str, ...]:
    """The fields of a kind's config class besides ``name``, in declaration order."""
    return tuple(f.name for f in fields(config) if f.name != "name")


@dataclass
class AgentConfig:
    """The base of every kind's config: the kind's ``name``; each kind's subclass (declared in
    its module of :mod:`agents.kinds`) adds the fields it reads, with their defaults and ranges.

    Calling ``AgentConfig(name="ppo", n_steps=16)`` returns the config of the kind ``name``
    (here :class:`agents.kinds.sb3.PPOConfig`); a value that kind does not have is a
    :class:`ConfigError` naming it and the kinds that do have it."""

    name: str = MISSING  # type: ignore[assignment]
    """which agent: a kind registered in :mod:`agents.kinds` (``agents.config.AGENTS``)"""

    def __new__(cls, *args: Any, **values: Any) -> AgentConfig:
        if cls is not AgentConfig:  # a kind's own class (also copies, pickles, OmegaConf)
            return super().__new__(cls)
        if args:
            raise TypeError("AgentConfig takes keyword arguments only: AgentConfig(name=..., ...)")
        if "name" not in values:
            raise ConfigError("agent.name is required: the kind of agent (agents.config.AGENTS)")
        config = _config_class(values["name"])
        _refuse_foreign(values["name"], config, values)
        return super().__new__(config)

    def check(self, prefix: str) -> None:
        """Refuse a config whose class is not its kind's (``PPOConfig(name="dqn")``), or that
        carries a value its kind does not have (what ``+agent.<key>=`` adds on Hydra's command
        line is set beside the fields)."""
        config = _config_class(self.name)
        if type(self) is not config:
            raise ConfigError(
                f"{prefix}.name is {self.name!r}, whose config is {config.__name__}, but these "
                f"values are a {type(self).__name__}"
            )
        _refuse_foreign(self.name, config, vars(self), prefix)


def _refuse_foreign(
    name: str, config: type[AgentConfig], values: dict[str, Any], prefix: str = "agent"
) -> None:
    own = set(field_names(config))
    foreign = [k for k in values if k != "name" and k not in own]
    if not foreign:
        return
    from agents.kinds import kinds

    key = foreign[0]
    readers = [k.name for k in kinds() if key in k.fields]
    where = f"; {', '.join(readers)} have it" if readers else ""
    raise ConfigError(f"agent.{key} is not a field of {name!r} (its fields: {sorted(own)}){where}")


def saved_config(values: dict[str, Any]) -> AgentConfig:
    """The config of a saved policy (``agent.json``'s ``cfg``): its kind's class built from the
    values it has, dropping any it does not (a config saved by the former flat ``AgentConfig``,
    which carried every kind's fields)."""
    config = _config_class(values.get("name"))
    own = {"name", *field_names(config)}
    return config(**{k: v for k, v in values.items() if k in own})


# ---- fields that several kinds share ---------------------------------------------------------


@dataclass
class NetworkConfig(AgentConfig):
    """A kind with a neural network."""

    net_arch: list[int] = field(default_factory=lambda: [64, 64])
    """hidden layer sizes of the policy and value networks"""

    def check(self, prefix: str) -> None:
        super().check(prefix)
        if not self.net_arch or any(int(h) < 1 for h in self.net_arch):
            raise ConfigError(
                f"{prefix}.net_arch must be a non-empty list of positive sizes, got {self.net_arch}"
            )


@dataclass
class SB3Config(NetworkConfig):
    """Every SB3 learner (ppo, a2c, dqn, maskable_ppo, ppo_lagrangian, recurrent_ppo)."""

    learning_rate: float = num(1e-3, 1e-7, 1.0)
    """optimiser step size"""
    gamma: float = num(0.98, 0.0, 1.0)
    """discount per day (0.98: a horizon of about 50 days)"""
    normalize_reward: bool = False
    """scale rewards by a running estimate of the return's spread while training (rare churn
    penalties otherwise swamp the value function); evaluation always uses raw rewards"""
    asymmetric_critic: ClassVar[bool] = False
    """not a setting of this kind (its critic reads what its actor reads); the kinds that have
    the switch declare it as a field (:class:`AsymmetricCritic`)"""


@dataclass
class RidgeConfig(AgentConfig):
    """A kind that fits linear models with a ridge prior (the bandits, the propensity agent)."""

    ridge: float = num(1.0, 1e-6, 1e6)
    """prior precision of the linear reward model"""


@dataclass
class LookaheadConfig(AgentConfig):
    """A kind that values an action's effect on churn over a horizon (oracle, propensity)."""

    lookahead_days: int = num(30, 1, 365)
    """days over which an action's effect on churn is counted"""
