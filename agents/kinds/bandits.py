"""The online linear bandits (``agents.bandits``): made untrained, trained online on training
clients, saved as npz, exported as linear models."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from agents.bandits import BANDIT_CLASSES, LinearBandit
from agents.config import RidgeConfig
from agents.kinds import AgentKind, Training, register
from envs.core import CadenceCore
from simulate.config import num

BUDGET = 200_000
"""default client-days of online learning in the agents comparison"""
TRAIN_ENVS = 500
"""clients a bandit learns from at a time in the agents comparison"""


@dataclass
class EpsilonGreedyConfig(RidgeConfig):
    """Epsilon-greedy on the ridge model's mean."""

    name: str = "epsilon_greedy"
    epsilon: float = num(0.05, 0.0, 1.0)
    """share of random allowed actions"""


@dataclass
class LinUCBConfig(RidgeConfig):
    """LinUCB: the mean plus a confidence bonus."""

    name: str = "linucb"
    alpha: float = num(0.3, 0.0, 100.0)
    """width of the confidence bonus"""


@dataclass
class ThompsonConfig(RidgeConfig):
    """Thompson sampling from the ridge posterior."""

    name: str = "thompson"
    noise: float = num(0.3, 0.0, 100.0)
    """posterior scale"""


@dataclass
class RecoveringConfig(LinUCBConfig):
    """LinUCB whose arms' values recover with time since last use."""

    name: str = "recovering"
    recovery_days: float = num(4.0, 0.1, 365.0)
    """time scale (days) over which an arm's value recovers after use"""


CONFIGS: dict[str, type[RidgeConfig]] = {
    "epsilon_greedy": EpsilonGreedyConfig,
    "linucb": LinUCBConfig,
    "thompson": ThompsonConfig,
    "recovering": RecoveringConfig,
}
"""each bandit's config class"""


def train_bandit(bandit: LinearBandit, training: Training) -> LinearBandit:
    """Online learning on ``training.total_timesteps`` client-days of training clients (ids
    from 0), ``training.num_envs`` at a time; returns it deterministic."""
    core = CadenceCore(training.setup, training.num_envs)
    obs = core.reset(training.seed)
    days = max(1, training.total_timesteps // core.n)
    hook = training.hook
    bar = tqdm(
        range(days),
        desc=f"training {bandit.name}",
        unit="day",
        disable=None if training.progress else True,
    )
    for day in bar:
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


def _make(cfg: RidgeConfig, seed: int = 0) -> LinearBandit:
    return BANDIT_CLASSES[cfg.name](cfg, seed)


def _train(cfg: RidgeConfig, training: Training) -> LinearBandit:
    return train_bandit(_make(cfg, training.seed), training)


def _load(folder: Path, meta: dict[str, Any]) -> LinearBandit:
    policy = LinearBandit.load(folder / meta["file"])
    policy.deterministic = True
    return policy


for _name in BANDIT_CLASSES:
    register(
        AgentKind(
            name=_name,
            family="bandit",
            config=CONFIGS[_name],
            make=_make,
            train=_train,
            load=_load,
            budget=BUDGET,
            train_envs=TRAIN_ENVS,
            trained_on_the_spot=True,
        )
    )
