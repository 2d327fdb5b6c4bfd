"""The privileged oracle (``agents.oracle``): the upper reference, made from its config, never trained."""

from __future__ import annotations

from agents.config import AgentConfig
from agents.kinds import AgentKind, register
from agents.oracle import Oracle


def _make(cfg: AgentConfig, seed: int = 0) -> Oracle:
    return Oracle(cfg)


register(
    AgentKind(
        name="oracle",
        family="reference",
        make=_make,
        fields=("lookahead_days", "churn_value", "fatigue_cost"),
        policy_class=Oracle,
    )
)
