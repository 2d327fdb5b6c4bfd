"""The fixed-rule policies firms run today (``agents.heuristics``), registered as heuristic kinds."""

from __future__ import annotations

from agents.heuristics import BatchAndBlast, NoSend, RandomPolicy, SegmentRules
from agents.kinds import heuristic

for _cls in (NoSend, RandomPolicy, BatchAndBlast, SegmentRules):
    heuristic(_cls)
