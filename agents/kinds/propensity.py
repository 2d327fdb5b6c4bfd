"""The model-based propensity agent (``agents.propensity``): trained in rounds of
collect-then-refit, optionally distilled into an exportable network (saved as
``propensity_distilled``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.base import Policy
from agents.config import AgentConfig
from agents.kinds import AgentKind, Training, register

BUDGET = 3_000_000
"""default client-days in the agents comparison (and as much again to distil it)"""
DISTILLED = "propensity_distilled"
"""the name a distilled propensity agent is saved under"""


def _train(cfg: AgentConfig, training: Training) -> Policy:
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

    return PropensityAgent.load(folder / meta["file"], AgentConfig(**meta["cfg"]))


register(
    AgentKind(
        name="propensity",
        family="model_based",
        train=_train,
        load=_load,
        saved_names=(DISTILLED,),
        fields=(
            "ridge",
            "send_threshold",
            "model_rounds",
            "explore",
            "model_epochs",
            "distil",
            "net_arch",
            "lookahead_days",
        ),
        budget=BUDGET,
    )
)
