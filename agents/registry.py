"""Build, train, save and load any agent by name, through the agent registry (:mod:`agents.kinds`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from agents.base import Policy
from agents.config import AgentConfig, saved_config
from agents.kinds import TrainHook, Training, for_saved, kind
from envs.config import Setup

__all__ = ["TrainHook", "load_policy", "make_policy", "save_policy", "train_agent"]


def make_policy(cfg: AgentConfig, seed: int = 0) -> Policy:
    """An untrained policy of the kind ``cfg.name`` (heuristics need no training; the oracle
    needs ``bind``); an error for a kind only training makes."""
    agent = kind(cfg.name)
    if agent.make is None:
        raise ValueError(f"{cfg.name!r} is trained with train_agent(), not built untrained")
    return agent.make(cfg, seed)


def train_agent(
    cfg: AgentConfig,
    setup: Setup,
    total_timesteps: int,
    num_envs: int | None = None,
    seed: int = 0,
    progress: bool = True,
    hook: TrainHook | None = None,
    checkpoint: Callable[[Any, int], None] | None = None,
    checkpoint_every: int = 1_000_000,
    resume_from: str | Path | None = None,
    resume_state: dict[str, Any] | None = None,
) -> Policy:
    """Train the agent ``cfg.name`` on ``total_timesteps`` client-days; returns a deterministic policy.

    Kinds that checkpoint (``AgentKind.checkpoints``: the SB3 learners) call
    ``checkpoint(model, client_days)`` every ``checkpoint_every`` client-days and once more when
    interrupted (``KeyboardInterrupt``: SIGINT, or SIGTERM as train.py raises it), and
    ``resume_from`` (a checkpoint zip) with ``resume_state`` (its
    :func:`agents.sb3_agents.training_state`: multipliers, normalisation statistics) continues a
    run up to ``total_timesteps`` in all. A kind with nothing to learn returns its made policy.
    """
    agent = kind(cfg.name)
    if agent.train is None:
        return make_policy(cfg, seed)
    training = Training(
        setup=setup,
        total_timesteps=total_timesteps,
        num_envs=int(num_envs or setup.env.num_clients),
        seed=seed,
        progress=progress,
        hook=hook,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        resume_from=resume_from,
        resume_state=resume_state,
    )
    return agent.train(cfg, training)


def save_policy(policy: Policy, directory: str | Path) -> Path:
    """Save a trained policy into ``directory``: what :meth:`Policy.save` writes (SB3 zip,
    bandit or propensity npz; nothing for a heuristic) plus ``agent.json`` (its name and
    :meth:`Policy.agent_config`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"name": policy.name}
    saved = policy.save(directory / "policy")
    if saved is not None:
        meta["file"] = saved.name
    cfg = policy.agent_config()
    if cfg is not None:
        meta["cfg"] = asdict(cfg)
    (directory / "agent.json").write_text(json.dumps(meta, indent=2))
    return directory


def load_policy(directory: str | Path) -> Policy:
    """Load what :func:`save_policy` wrote; a clear error if the folder holds no policy.

    A saved config keeps the fields its kind has and drops the rest
    (:func:`agents.config.saved_config`), so folders saved with the former flat config of
    every kind's fields still load."""
    directory = Path(directory)
    meta_path = directory / "agent.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{directory} holds no saved policy (agent.json is missing)")
    meta = json.loads(meta_path.read_text())
    name = meta.get("name")
    agent = for_saved(name) if isinstance(name, str) else None
    if agent is None:
        raise ValueError(f"{meta_path}: unknown agent name {name!r}")
    if agent.load is not None:
        return agent.load(directory, meta)
    return make_policy(saved_config(meta["cfg"]) if "cfg" in meta else AgentConfig(name=name))
