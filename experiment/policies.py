"""Policies named on a command line: a heuristic, the oracle, a bandit trained on the spot, or
``run:<id>``, the policy a train.py run saved in MLflow.

It sits above evaluation (it reads MLflow runs through :mod:`experiment.tracking`), below the
entry scripts and the ``main()`` of every ``python -m`` command that takes policy names.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from agents.base import Policy
from agents.config import AgentConfig
from agents.kinds import kinds
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

    A kind with nothing to learn (a heuristic, the oracle) is built; a kind the registry marks
    ``trained_on_the_spot`` (a bandit) is trained on :data:`BANDIT_TIMESTEPS`
    client-days of ``setup``, :data:`BANDIT_CLIENTS` at a time; ``run:<id>`` (the full id or a
    unique prefix of it) downloads the ``policy`` artifact of that MLflow run (in the store MLflow points at) and loads it. Tags:
    ``agent`` (the agent's kind) and, for a run, ``source_run``.
    """
    spec = spec.strip()
    if spec.startswith("run:"):
        run = find_run(spec[4:], "policies")  # a unique prefix of the id is enough
        run_id = run.info.run_id
        folder = download_policy(
            run_id, "policies", Path(tempfile.mkdtemp(prefix="cadence-policy-"))
        )
        policy = load_policy(folder)
        policy.name = f"{run.data.tags.get('agent', policy.name)}@{run_id[:8]}"
        return policy, {"source_run": run_id, "agent": run.data.tags.get("agent", "")}
    agent = next((k for k in kinds() if k.name == spec), None)
    if agent is not None and agent.train is None:  # nothing to learn: a heuristic, the oracle
        return make_policy(AgentConfig(name=spec)), {"agent": spec}
    if agent is not None and agent.trained_on_the_spot:
        print(f"training {spec} on {BANDIT_TIMESTEPS:,} client-days first", file=sys.stderr)
        trained = train_agent(
            AgentConfig(name=spec), setup, BANDIT_TIMESTEPS, BANDIT_CLIENTS, progress=True
        )
        return trained, {"agent": spec}
    if agent is not None:
        raise ConfigError(
            f"policies: {spec!r} must be trained first: run `python train.py agent={spec}` "
            f"and pass run:<its run id>"
        )
    ready = [k.name for k in kinds() if k.train is None]
    on_the_spot = [k.name for k in kinds() if k.trained_on_the_spot]
    raise ConfigError(
        f"policies: unknown policy {spec!r}; use a heuristic or reference {ready}, "
        f"a bandit {on_the_spot} or run:<mlflow run id>"
    )
