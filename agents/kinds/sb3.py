"""The SB3 learners (``agents.sb3_agents``): trained on the batched VecEnv with checkpoints and
resumption, saved as SB3 zips, exported as networks (recurrent_ppo refuses: it needs memory)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from agents.base import Policy
from agents.config import AgentConfig
from agents.kinds import AgentKind, TrainHook, Training, register

BUDGET = 6_000_000
"""default client-days of training in the agents comparison"""
OPTIMISER = ("learning_rate", "gamma", "net_arch", "normalize_reward")
"""fields every SB3 learner reads"""
ON_POLICY = ("n_steps", "gae_lambda", "ent_coef")
PPO = (*ON_POLICY, "batch_size", "n_epochs", "clip_range")
LAGRANGIAN = ("churn_limit", "anxiety_limit", "multiplier_lr", "action_masking")
DQN = (
    "batch_size",
    "buffer_size",
    "exploration_fraction",
    "exploration_final_eps",
    "learning_starts",
    "target_update_interval",
)


def _train(cfg: AgentConfig, training: Training) -> Policy:
    """Train an SB3 learner; calls ``training.checkpoint(model, client_days)`` every
    ``checkpoint_every`` client-days and once more when interrupted (``KeyboardInterrupt``:
    SIGINT, or SIGTERM as train.py raises it); ``resume_from`` continues a run up to
    ``total_timesteps`` in all."""
    from stable_baselines3.common.vec_env import VecNormalize

    from agents.sb3_agents import (
        LagrangeUpdate,
        SB3Policy,
        algorithm,
        build_model,
        make_training_env,
        restore_training_state,
    )

    t = training
    env = make_training_env(cfg, t.setup, t.num_envs)
    env.seed(t.seed)
    if t.resume_from is not None:
        model = algorithm(cfg).load(Path(t.resume_from), env=env, device="cpu")
        restore_training_state(env, t.resume_state or {})
    else:
        model = build_model(cfg, env, t.seed)
    callbacks: list[Any] = [_HookCallback(t.hook)] if t.hook else []
    if t.checkpoint is not None:
        callbacks.append(_CheckpointCallback(t.checkpoint, t.checkpoint_every))
    if "churn_limit" in kind_fields(cfg.name):  # a Lagrangian learner: its multipliers
        costs = env.venv if isinstance(env, VecNormalize) else env
        limits = {"churn": cfg.churn_limit, "anxiety": cfg.anxiety_limit}
        callbacks.append(LagrangeUpdate(costs, limits, cfg.multiplier_lr))
    remaining = max(0, t.total_timesteps - model.num_timesteps)
    if remaining:
        try:
            model.learn(
                total_timesteps=remaining,
                callback=callbacks or None,
                progress_bar=t.progress,
                reset_num_timesteps=t.resume_from is None,
            )
        except KeyboardInterrupt:  # SIGINT, or SIGTERM as train.py turns it: keep the work
            if t.checkpoint is not None:
                t.checkpoint(model, model.num_timesteps)
            raise
    return SB3Policy(model, cfg.name)


def kind_fields(name: str) -> tuple[str, ...]:
    """The fields the SB3 kind ``name`` reads."""
    return FIELDS[name]


def _load(folder: Path, meta: dict[str, Any]) -> Policy:
    from agents.sb3_agents import SB3Policy

    return SB3Policy.load(folder / meta["file"], meta["name"])


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


FIELDS: dict[str, tuple[str, ...]] = {
    "ppo": (*OPTIMISER, *PPO, "asymmetric_critic"),
    "a2c": (*OPTIMISER, *ON_POLICY, "asymmetric_critic"),
    "dqn": (*OPTIMISER, *DQN),
    "maskable_ppo": (*OPTIMISER, *PPO),
    "ppo_lagrangian": (*OPTIMISER, *PPO, *LAGRANGIAN, "asymmetric_critic"),
    "recurrent_ppo": (*OPTIMISER, *PPO, "lstm_hidden_size"),
}
"""per SB3 learner, the :class:`~agents.config.AgentConfig` fields it reads"""
BUDGETS = {"dqn": 1_000_000}
"""default training budgets other than :data:`BUDGET` (client-days)"""

for _name in ("ppo", "maskable_ppo", "ppo_lagrangian", "a2c", "dqn", "recurrent_ppo"):
    register(
        AgentKind(
            name=_name,
            family="sb3",
            train=_train,
            load=_load,
            fields=FIELDS[_name],
            budget=BUDGETS.get(_name, BUDGET),
            checkpoints=True,
        )
    )
