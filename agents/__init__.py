"""Policies: heuristics today; bandits, SB3 agents and the oracle build on the same protocol."""

from agents.base import Policy
from agents.heuristics import HEURISTICS

__all__ = ["HEURISTICS", "Policy"]
