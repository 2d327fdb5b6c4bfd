"""The RL interface over the world; importing it registers ``Cadence-v0`` with gymnasium."""

from __future__ import annotations

import gymnasium

from envs.config import EnvConfig, GuardrailConfig, RewardConfig, Setup, load_setup
from envs.core import CadenceCore
from envs.features import FEATURE_NAMES, OBS_DIM

ENV_ID = "Cadence-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=ENV_ID,
        entry_point="envs.gym_env:CadenceEnv",
        vector_entry_point="envs.vector_env:CadenceVectorEnv",
    )

__all__ = [
    "ENV_ID",
    "FEATURE_NAMES",
    "OBS_DIM",
    "CadenceCore",
    "EnvConfig",
    "GuardrailConfig",
    "RewardConfig",
    "Setup",
    "load_setup",
]
