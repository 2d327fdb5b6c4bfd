"""Policies behind one protocol: heuristics, linear bandits, SB3 agents and the privileged oracle
(``agents.registry`` builds, trains, saves and loads any of them by name)."""

from agents.base import Policy
from agents.heuristics import HEURISTICS

__all__ = ["HEURISTICS", "Policy"]
