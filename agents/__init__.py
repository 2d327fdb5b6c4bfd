"""Policies behind one contract, :class:`agents.base.Policy`: heuristics, linear bandits, SB3
agents, the propensity agent and the privileged oracle (``agents.registry`` builds, trains, saves
and loads any of them by name)."""

from agents.base import Policy
from agents.heuristics import HEURISTICS

__all__ = ["HEURISTICS", "Policy"]
