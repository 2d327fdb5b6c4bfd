"""The world: client population, latent dynamics, response model, scenarios.

Never imports ``envs`` or ``agents``.
"""

from simulate.config import (
    ConfigError,
    PopulationConfig,
    ResponseConfig,
    ScenarioConfig,
    ScenarioEvent,
)
from simulate.labels import ACTION_LABELS
from simulate.world import OUTCOMES, World

__all__ = [
    "ACTION_LABELS",
    "OUTCOMES",
    "ConfigError",
    "PopulationConfig",
    "ResponseConfig",
    "ScenarioConfig",
    "ScenarioEvent",
    "World",
]
