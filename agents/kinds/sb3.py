"""The SB3 learners (``agents.sb3_agents``): trained on the batched VecEnv with checkpoints and
resumption, saved as SB3 zips, exported as networks (recurrent_ppo refuses: it needs memory)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.base import Policy
from agents.config import SB3Config
from agents.kinds import AgentKind, TrainHook, Training, register
from simulate.config import ConfigError, num

BUDGET = 6_000_000
"""default client-days of training in the agents comparison"""


@dataclass
class OnPolicyConfig(SB3Config):
    """The on-policy learners (a2c and the PPO variants)."""

    n_steps: int = num(64, 1, 10_000)
    """days collected per client slot before each update"""
    gae_lambda: float = num(0.95, 0.0, 1.0)
    """GAE lambda"""
    ent_coef: float = num(0.003, 0.0, 1.0)
    """entropy bonus"""


@dataclass
class A2CConfig(OnPolicyConfig):
    """SB3's A2C."""

    name: str = "a2c"
    asymmetric_critic: bool = False
    """while training in simulation the critic also reads each client's latent state and hidden
    traits; the actor sees only the observation, so the trained (and exported) policy needs
    nothing a firm lacks"""


@dataclass
class PPOFamilyConfig(OnPolicyConfig):
    """What every PPO variant reads."""

    batch_size: int = num(4096, 8, 1_000_000)
    """minibatch size in client-days"""
    n_epochs: int = num(4, 1, 100)
    """passes over each rollout"""
    clip_range: float = num(0.2, 0.0, 1.0)
    """PPO clipping"""


@dataclass
class PPOConfig(PPOFamilyConfig):
    """SB3's PPO."""

    name: str = "ppo"
    asymmetric_critic: bool = False
    """while training in simulation the critic also reads each client's latent state and hidden
    traits; the actor sees only the observation, so the trained (and exported) policy needs
    nothing a firm lacks"""


@dataclass
class MaskablePPOConfig(PPOFamilyConfig):
    """sb3-contrib's MaskablePPO: samples only the options the guardrails and consent allow."""

    name: str = "maskable_ppo"


@dataclass
class RecurrentPPOConfig(PPOFamilyConfig):
    """sb3-contrib's RecurrentPPO: an LSTM carries each client's memory from day to day."""

    name: str = "recurrent_ppo"
    lstm_hidden_size: int = num(64, 1, 4096)
    """units of the LSTM"""


@dataclass
class PPOLagrangianConfig(PPOConfig):
    """PPO under Lagrangian costs on churn and anxious clicks."""

    name: str = "ppo_lagrangian"
    churn_limit: float = num(0.03, 0.0, 1.0)
    """allowed churn per episode (share of clients lost over the horizon)"""
    anxiety_limit: float = num(0.02, 0.0, 100.0)
    """allowed anxiety-driven clicks per client episode (0.02: about one client in fifty clicks
    in fear once in 90 days; segment_rules' calm tones give about 0.03)"""
    multiplier_lr: float = num(1.0, 0.0, 1000.0)
    """step of the Lagrange multipliers per rollout per unit of *relative* violation
    ((cost - limit) / limit)"""
    action_masking: bool = False
    """sample only the options the guardrails and consent allow while training (sb3-contrib's
    MaskablePPO under the Lagrangian costs), as maskable_ppo does"""

    def check(self, prefix: str) -> None:
        super().check(prefix)
        if self.action_masking and self.asymmetric_critic:
            raise ConfigError(
                f"{prefix}.action_masking and {prefix}.asymmetric_critic cannot be combined "
                "(the masked policy has no asymmetric form)"
            )


@dataclass
class DQNConfig(SB3Config):
    """SB3's DQN on the flat Discrete(361) view."""

    name: str = "dqn"
    batch_size: int = num(4096, 8, 1_000_000)
    """minibatch size in client-days (at most 1024 are used)"""
    buffer_size: int = num(200_000, 1000, 10_000_000)
    """replay buffer, client-days"""
    exploration_fraction: float = num(0.3, 0.0, 1.0)
    """share of training over which epsilon anneals"""
    exploration_final_eps: float = num(0.02, 0.0, 1.0)
    """final epsilon"""
    learning_starts: int = num(20_000, 0, 10_000_000)
    """client-days before learning starts"""
    target_update_interval: int = num(2_000, 1, 10_000_000)
    """steps between target network updates"""


def _train(cfg: SB3Config, training: Training) -> Policy:
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
        current_options,
        make_training_env,
        restore_training_state,
    )

    t = training
    env = make_training_env(cfg, t.setup, t.num_envs)
    env.seed(t.seed)
    if t.resume_from is not None:
        device = current_options().device  # trainer.device, as a fresh run trains
        model = algorithm(cfg).load(Path(t.resume_from), env=env, device=device)
        restore_training_state(env, t.resume_state or {})
    else:
        model = build_model(cfg, env, t.seed)
    callbacks: list[Any] = [_HookCallback(t.hook)] if t.hook else []
    if t.checkpoint is not None:
        callbacks.append(_CheckpointCallback(t.checkpoint, t.checkpoint_every))
    if isinstance(cfg, PPOLagrangianConfig):  # a Lagrangian learner: its multipliers
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


CONFIGS: dict[str, type[SB3Config]] = {
    "ppo": PPOConfig,
    "maskable_ppo": MaskablePPOConfig,
    "ppo_lagrangian": PPOLagrangianConfig,
    "a2c": A2CConfig,
    "dqn": DQNConfig,
    "recurrent_ppo": RecurrentPPOConfig,
}
"""each SB3 learner's config class"""
BUDGETS = {"dqn": 1_000_000}
"""default training budgets other than :data:`BUDGET` (client-days)"""

for _name, _config in CONFIGS.items():
    register(
        AgentKind(
            name=_name,
            family="sb3",
            config=_config,
            train=_train,
            load=_load,
            budget=BUDGETS.get(_name, BUDGET),
            checkpoints=True,
        )
    )
