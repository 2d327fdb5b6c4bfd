"""The model-based propensity agent (``agents.propensity``): trained in rounds of
collect-then-refit, optionally distilled into an exportable network (saved as
``propensity_distilled``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.base import Policy
from agents.config import LookaheadConfig, NetworkConfig, RidgeConfig, saved_config
from agents.kinds import AgentKind, Training, register
from simulate.config import num

BUDGET = 3_000_000
"""default client-days in the agents comparison (and as much again to distil it)"""
DISTILLED = "propensity_distilled"
"""the name a distilled propensity agent is saved under"""


@dataclass
class PropensityConfig(RidgeConfig, LookaheadConfig, NetworkConfig):
    """The propensity agent: ridge-fitted response models (``ridge``), one-step scoring with
    the churn effect counted over ``lookahead_days``; ``net_arch`` is the network it is
    distilled into (``distil``)."""

    name: str = "propensity"
    send_threshold: float = num(0.05, -100.0, 100.0)
    """a message goes out only when its one-step value beats not sending by this (reward
    units): the allowance for tomorrow's fatigue, which a one-day model cannot see"""
    model_rounds: int = num(3, 1, 100)
    """rounds of collect-then-refit (the first explores at random)"""
    explore: float = num(0.2, 0.0, 1.0)
    """share of random allowed messages after the first round"""
    model_epochs: int = num(3, 1, 1000)
    """passes of the optimiser over the data per fit"""
    distil: bool = False
    """teach the fitted agent's choices to an exportable network (``net_arch``)"""


def _train(cfg: PropensityConfig, training: Training) -> Policy:
    from agents.propensity import distil, train_propensity

    t = training
    agent = train_propensity(
        cfg, t.setup, t.total_timesteps, t.num_envs, t.seed, t.progress, t.hook
    )
    if not cfg.distil:
        return agent
    return distil(agent, cfg, t.setup, t.total_timesteps, t.num_envs, t.seed, t.progress, t.hook)


def _load(folder: Path, meta: dict[str, Any]) -> Policy:
    if meta["name"] == DISTILLED:
        from agents.sb3_agents import SB3Policy

        return SB3Policy.load(folder / meta["file"], DISTILLED)
    from agents.propensity import PropensityAgent

    return PropensityAgent.load(folder / meta["file"], saved_config(meta["cfg"]))


register(
    AgentKind(
        name="propensity",
        family="model_based",
        config=PropensityConfig,
        train=_train,
        load=_load,
        saved_names=(DISTILLED,),
        budget=BUDGET,
    )
)
