"""Policies named on a command line: a heuristic, the oracle, a bandit trained on the spot, or
``run:<id>``, the policy a train.py run saved in MLflow.

It sits above evaluation (it reads MLflow runs through :mod:`experiment.tracking`), below the
entry scripts and the ``main()`` of every ``python -m`` command that takes policy names.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from agents.base import Policy
from agents.config import BANDITS, HEURISTIC_AGENTS, MODEL_BASED, SB3_AGENTS, AgentConfig
from agents.registry import load_policy, make_policy, train_agent
from envs.config import Setup
from experiment.tracking import download_policy, find_run
from simulate.config import ConfigError

BANDIT_TIMESTEPS = 200_000
"""client-days a bandit named in ``policies`` is trained on before it is evaluated"""
BANDIT_CLIENTS = 500
"""clients a bandit named in ``policies`` is trained on at a time"""


def resolve_policy(spec: str, setup: Setup) -> tuple[Policy, dict[str, str]]:
    """A policy and its tags from a name or ``run:<id>``; clear errors for anything else.

    A heuristic or the oracle is built; a bandit is trained on :data:`BANDIT_TIMESTEPS`
    client-days of ``setup``, :data:`BANDIT_CLIENTS` at a time; ``run:<id>`` downloads the
    ``policy`` artifact of that MLflow run (in the store MLflow points at) and loads it. Tags:
    ``agent`` (the agent's kind) and, for a run, ``source_run``.
    """
    spec = spec.strip()
    if spec.startswith("run:"):
        run_id = spec[4:]
        run = find_run(run_id, "policies")
        folder = download_policy(
            run_id, "policies", Path(tempfile.mkdtemp(prefix="cadence-policy-"))
        )
        policy = load_policy(folder)
        policy.name = f"{run.data.tags.get('agent', policy.name)}@{run_id[:8]}"
        return policy, {"source_run": run_id, "agent": run.data.tags.get("agent", "")}
    if spec in HEURISTIC_AGENTS or spec == "oracle":
        return make_policy(AgentConfig(name=spec)), {"agent": spec}
    if spec in BANDITS:
        bandit = train_agent(
            AgentConfig(name=spec), setup, BANDIT_TIMESTEPS, BANDIT_CLIENTS, progress=False
        )
        return bandit, {"agent": spec}
    if spec in SB3_AGENTS or spec in MODEL_BASED:
        raise ConfigError(
            f"policies: {spec!r} must be trained first: run `python train.py agent={spec}` "
            f"and pass run:<its run id>"
        )
    raise ConfigError(
        f"policies: unknown policy {spec!r}; use a heuristic {list(HEURISTIC_AGENTS)}, "
        f"'oracle', a bandit {list(BANDITS)} or run:<mlflow run id>"
    )
