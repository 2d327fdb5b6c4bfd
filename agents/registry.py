"""Build, train, save and load any agent by name."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from agents.bandits import BANDIT_CLASSES, LinearBandit
from agents.base import Policy
from agents.config import BANDITS, HEURISTIC_AGENTS, MODEL_BASED, SB3_AGENTS, AgentConfig
from agents.heuristics import HEURISTICS
from agents.oracle import Oracle
from envs.config import Setup
from envs.core import CadenceCore

TrainHook = Callable[[int, dict[str, float]], None]
"""called as ``hook(client_days_so_far, metrics)`` during training (metrics named ``train/...``)"""


def make_policy(cfg: AgentConfig, seed: int = 0) -> Policy:
    """An untrained policy (heuristics need no training; the oracle needs ``bind``)."""
    if cfg.name in HEURISTIC_AGENTS:
        return HEURISTICS[cfg.name](seed) if cfg.name == "random" else HEURISTICS[cfg.name]()
    if cfg.name in BANDITS:
        return BANDIT_CLASSES[cfg.name](cfg, seed)
    if cfg.name == "oracle":
        return Oracle(cfg)
    raise ValueError(f"{cfg.name!r} is trained with train_agent(), not built untrained")


def train_bandit(
    bandit: LinearBandit,
    setup: Setup,
    total_timesteps: int,
    num_envs: int,
    seed: int = 0,
    progress: bool = True,
    hook: TrainHook | None = None,
) -> LinearBandit:
    """Online learning on ``total_timesteps`` client-days of training clients (ids from 0)."""
    core = CadenceCore(setup, num_envs)
    obs = core.reset(seed)
    days = max(1, total_timesteps // core.n)
    for day in tqdm(
        range(days), desc=f"training {bandit.name}", unit="day", disable=None if progress else True
    ):
        actions = bandit.act(obs, core.joint_masks())
        r = core.step(actions)
        bandit.update(obs, actions, r.reward, {"done": r.terminated | r.truncated})
        obs = r.obs
        if hook is not None and (day % 10 == 9 or day == days - 1):
            hook(
                (day + 1) * core.n,
                {
                    "train/reward_per_client_day": float(r.reward.mean()),
                    "train/messages_per_client_day": float(r.outcomes["sent"].mean()),
                },
            )
    bandit.deterministic = True
    return bandit


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

    SB3 agents call ``checkpoint(model, client_days)`` every ``checkpoint_every`` client-days and
    once more when interrupted (``KeyboardInterrupt``: SIGINT, or SIGTERM as train.py raises it),
    and ``resume_from`` (a checkpoint zip) with ``resume_state`` (its
    :func:`agents.sb3_agents.training_state`: multipliers, normalisation statistics) continues a
    run up to ``total_timesteps`` in all.
    """
    num_envs = int(num_envs or setup.env.num_clients)
    if cfg.name in BANDITS:
        return train_bandit(
            BANDIT_CLASSES[cfg.name](cfg, seed),
            setup,
            total_timesteps,
            num_envs,
            seed,
            progress,
            hook,
        )
    if cfg.name in MODEL_BASED:
        from agents.propensity import distil, train_propensity

        agent = train_propensity(cfg, setup, total_timesteps, num_envs, seed, progress, hook)
        if not cfg.distil:
            return agent
        return distil(agent, cfg, setup, total_timesteps, num_envs, seed, progress, hook)
    if cfg.name in SB3_AGENTS:
        from stable_baselines3.common.vec_env import VecNormalize

        from agents.sb3_agents import (
            LagrangeUpdate,
            SB3Policy,
            build_model,
            make_training_env,
            restore_training_state,
        )

        env = make_training_env(cfg, setup, num_envs)
        env.seed(seed)
        if resume_from is not None:
            from agents.sb3_agents import algorithm

            model = algorithm(cfg).load(Path(resume_from), env=env, device="cpu")
            restore_training_state(env, resume_state or {})
        else:
            model = build_model(cfg, env, seed)
        callbacks: list[Any] = [_HookCallback(hook)] if hook else []
        if checkpoint is not None:
            callbacks.append(_CheckpointCallback(checkpoint, checkpoint_every))
        if cfg.name == "ppo_lagrangian":
            costs = env.venv if isinstance(env, VecNormalize) else env
            callbacks.append(
                LagrangeUpdate(
                    costs,
                    {"churn": cfg.churn_limit, "anxiety": cfg.anxiety_limit},
                    cfg.multiplier_lr,
                )
            )
        remaining = max(0, total_timesteps - model.num_timesteps)
        if remaining:
            try:
                model.learn(
                    total_timesteps=remaining,
                    callback=callbacks or None,
                    progress_bar=progress,
                    reset_num_timesteps=resume_from is None,
                )
            except KeyboardInterrupt:  # SIGINT, or SIGTERM as train.py turns it: keep the work
                if checkpoint is not None:
                    checkpoint(model, model.num_timesteps)
                raise
        return SB3Policy(model, cfg.name)
    return make_policy(cfg, seed)  # heuristics and the oracle have nothing to learn


def _HookCallback(hook: TrainHook):
    from stable_baselines3.common.callbacks import BaseCallback

    class HookCallback(BaseCallback):
        """Forwards SB3's logged values (and episode stats) to ``hook`` after each rollout."""

        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            values = {
                k if k.startswith("train/") else f"train/{k.split('/')[-1]}": float(v)
                for k, v in self.model.logger.name_to_value.items()
                if np.isscalar(v)
            }
            buffer = self.model.ep_info_buffer
            if buffer:
                values["train/episode_return"] = float(np.mean([e["r"] for e in buffer]))
                values["train/episode_length"] = float(np.mean([e["l"] for e in buffer]))
            hook(self.num_timesteps, values)

    return HookCallback()


def _CheckpointCallback(save: Callable[[Any, int], None], every: int):
    from stable_baselines3.common.callbacks import BaseCallback

    class CheckpointCallback(BaseCallback):
        """Calls ``save(model, client_days)`` each time another ``every`` client-days are done."""

        def __init__(self) -> None:
            super().__init__()
            self.next_at = every

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next_at:
                save(self.model, self.num_timesteps)
                self.next_at = (self.num_timesteps // every + 1) * every
            return True

    return CheckpointCallback()


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
    """Load what :func:`save_policy` wrote; a clear error if the folder holds no policy."""
    directory = Path(directory)
    meta_path = directory / "agent.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{directory} holds no saved policy (agent.json is missing)")
    meta = json.loads(meta_path.read_text())
    name = meta.get("name")
    if name in SB3_AGENTS or name == "propensity_distilled":
        from agents.sb3_agents import SB3Policy

        return SB3Policy.load(directory / meta["file"], name)
    if name in MODEL_BASED:
        from agents.propensity import PropensityAgent

        return PropensityAgent.load(directory / meta["file"], AgentConfig(**meta["cfg"]))
    if name in BANDITS:
        policy = LinearBandit.load(directory / meta["file"])
        policy.deterministic = True
        return policy
    if name in HEURISTIC_AGENTS or name == "oracle":
        return make_policy(AgentConfig(**meta["cfg"]) if "cfg" in meta else AgentConfig(name=name))
    raise ValueError(f"{meta_path}: unknown agent name {name!r}")
