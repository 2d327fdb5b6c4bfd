"""Evaluation: common-random-number rollouts, KPIs with bootstrap CIs, fairness gaps."""

from evaluation.metrics import KPI_NAMES, kpis
from evaluation.rollout import EVAL_CLIENT_OFFSET, evaluate, rollout

__all__ = ["EVAL_CLIENT_OFFSET", "KPI_NAMES", "evaluate", "kpis", "rollout"]
