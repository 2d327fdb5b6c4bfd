"""The agent registry: every kind ``agent=<name>`` accepts, registered once, by its own module.

Each module of this package registers the kinds it defines (:func:`register`, or the
:func:`heuristic` class decorator) with what the rest of the project needs to know about them:
how a policy is made, trained (or that there is nothing to learn), loaded from a saved folder,
its config dataclass (a subclass of :class:`agents.config.AgentConfig` holding exactly the
fields it reads: its Hydra schema, which ``conf/agent/<name>.yaml`` extends), and its default
training budget. The registry is filled on first use by importing every module here
(:func:`discover`), so adding an agent is one module in ``agents/kinds/`` plus
``conf/agent/<name>.yaml``; nothing else names it.

Export is declared by the policy class itself (:attr:`agents.base.Policy.export_kind` and
:attr:`~agents.base.Policy.export_refusal`), which ``serve.onnx_export.graph_for`` reads.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agents.config import AgentConfig, field_names
from simulate.config import ConfigError

if TYPE_CHECKING:
    from agents.base import Policy
    from envs.config import Setup

Family = Literal["heuristic", "bandit", "sb3", "model_based", "reference"]
"""what sort of kind: a fixed rule, an online linear bandit, an SB3 learner, a learned model of
the clients, or a reference that reads the simulator (the oracle)"""

TrainHook = Callable[[int, dict[str, float]], None]
"""called as ``hook(client_days_so_far, metrics)`` during training (metrics named ``train/...``)"""


@dataclass(frozen=True)
class Training:
    """One training request, as :func:`agents.registry.train_agent` received it."""

    setup: Setup
    total_timesteps: int
    """client-days of experience in all (a resumed run counts what it already had)"""
    num_envs: int
    """clients trained at a time"""
    seed: int = 0
    progress: bool = True
    hook: TrainHook | None = None
    checkpoint: Callable[[Any, int], None] | None = None
    """``checkpoint(model, client_days)``: kinds with ``checkpoints`` call it as they go"""
    checkpoint_every: int = 1_000_000
    """client-days between checkpoints"""
    resume_from: str | Path | None = None
    """a checkpoint to continue from (kinds with ``checkpoints`` only)"""
    resume_state: dict[str, Any] | None = None
    """the training state saved beside that checkpoint"""


@dataclass(frozen=True)
class AgentKind:
    """One agent kind and its capabilities."""

    name: str
    """the name ``agent=`` and ``policies=`` take (and its ``conf/agent/<name>.yaml``)"""
    family: Family
    config: type[AgentConfig]
    """its config dataclass: :class:`~agents.config.AgentConfig` plus exactly the fields it
    reads (the schema of ``conf/agent/<name>.yaml``, stored as ``agent_schema/<name>``)"""
    make: Callable[[AgentConfig, int], Policy] | None = None
    """``make(cfg, seed)``: an untrained, ready policy; None where only training makes one"""
    train: Callable[[AgentConfig, Training], Policy] | None = None
    """``train(cfg, training)``: a trained, deterministic policy; None: nothing to learn
    (training returns :attr:`make`'s policy)"""
    load: Callable[[Path, dict[str, Any]], Policy] | None = None
    """``load(folder, meta)`` for a folder ``agents.registry.save_policy`` wrote (``meta``: its
    ``agent.json``); None: the policy is rebuilt by :attr:`make` from the saved config"""
    saved_names: tuple[str, ...] = ()
    """other names its saved folders may carry (``propensity_distilled``)"""
    budget: int | None = None
    """default client-days of training in ``studies.agents_compare`` (None: not trained there)"""
    train_envs: int | None = None
    """clients trained at a time in ``studies.agents_compare`` (None: the study's default)"""
    trained_on_the_spot: bool = False
    """cheap enough that ``policies=[<name>]`` trains it before comparing (bandits)"""
    checkpoints: bool = False
    """training calls ``Training.checkpoint`` and can resume from one"""
    policy_class: type[Policy] | None = None
    """the policy class a heuristic or reference kind makes"""

    def __post_init__(self) -> None:
        if not (isinstance(self.config, type) and issubclass(self.config, AgentConfig)):
            raise ValueError(
                f"agent kind {self.name!r}: config must be a subclass of AgentConfig, "
                f"got {self.config!r}"
            )
        if self.make is None and self.train is None:
            raise ValueError(f"agent kind {self.name!r} needs make or train (or both)")

    @property
    def fields(self) -> tuple[str, ...]:
        """the fields of its config besides ``name``: what it reads"""
        return field_names(self.config)


_KINDS: dict[str, AgentKind] = {}
_discovered = False


def register(kind: AgentKind) -> AgentKind:
    """Add ``kind`` to the registry; a name registered twice is an error."""
    if kind.name in _KINDS:
        raise ValueError(f"agent kind {kind.name!r} is registered twice")
    _KINDS[kind.name] = kind
    return kind


@dataclass
class HeuristicConfig(AgentConfig):
    """A fixed rule's config: its name only (there is nothing to tune)."""


def heuristic(cls: type[Policy]) -> type[Policy]:
    """Class decorator: register a fixed-rule policy as the heuristic kind ``cls.name``.

    It is made as ``cls(seed)`` where its constructor takes a ``seed``, else ``cls()``; it has
    nothing to learn and nothing to save."""
    seeded = "seed" in inspect.signature(cls).parameters

    def make(cfg: AgentConfig, seed: int = 0) -> Policy:
        return cls(seed) if seeded else cls()

    register(
        AgentKind(
            name=cls.name, family="heuristic", config=HeuristicConfig, make=make, policy_class=cls
        )
    )
    return cls


def discover() -> None:
    """Import every module of this package once, so each registers its kinds."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    try:
        for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            importlib.import_module(f"{__name__}.{module.name}")
    except BaseException:
        _discovered = False
        raise


def kinds(family: Family | None = None) -> tuple[AgentKind, ...]:
    """Every registered kind (of ``family``), in registration order."""
    discover()
    return tuple(k for k in _KINDS.values() if family is None or k.family == family)


def names(family: Family | None = None) -> tuple[str, ...]:
    """The names of :func:`kinds`."""
    return tuple(k.name for k in kinds(family))


def kind(name: str, prefix: str = "agent.name") -> AgentKind:
    """The kind called ``name``; a :class:`ConfigError` naming the valid ones otherwise."""
    discover()
    if name not in _KINDS:
        raise ConfigError(f"{prefix} must be one of {list(_KINDS)}, got {name!r}")
    return _KINDS[name]


def for_saved(name: str) -> AgentKind | None:
    """The kind that loads a saved folder whose ``agent.json`` names ``name`` (None: none)."""
    discover()
    return next((k for k in _KINDS.values() if name == k.name or name in k.saved_names), None)


class PolicyClasses(Mapping[str, "type[Policy]"]):
    """A read-only view: the policy class of each registered kind of one family, by name."""

    def __init__(self, family: Family) -> None:
        self.family = family

    def _classes(self) -> dict[str, type[Policy]]:
        return {k.name: k.policy_class for k in kinds(self.family) if k.policy_class is not None}

    def __getitem__(self, name: str) -> type[Policy]:
        return self._classes()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes())

    def __len__(self) -> int:
        return len(self._classes())

    def __repr__(self) -> str:
        return f"PolicyClasses({self.family!r}: {list(self._classes())})"
