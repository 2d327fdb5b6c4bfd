"""The privileged oracle (``agents.oracle``): the upper reference, made from its config, never trained."""

from __future__ import annotations

from dataclasses import dataclass

from agents.config import LookaheadConfig
from agents.kinds import AgentKind, register
from agents.oracle import Oracle
from simulate.config import num


@dataclass
class OracleConfig(LookaheadConfig):
    """The oracle's one-step value plus the churn and fatigue its action causes over
    ``lookahead_days``."""

    name: str = "oracle"
    churn_value: float = num(60.0, 0.0, 10_000.0)
    """value put on keeping a client (churn penalty plus future value)"""
    fatigue_cost: float = num(0.02, 0.0, 100.0)
    """value charged per unit of fatigue per day it lasts"""


def _make(cfg: OracleConfig, seed: int = 0) -> Oracle:
    return Oracle(cfg)


register(
    AgentKind(
        name="oracle",
        family="reference",
        config=OracleConfig,
        make=_make,
        policy_class=Oracle,
    )
)
