"""The policy contract (``agents.base.Policy``): every policy derives from it and declares what
it is; callers read the declarations and call the hooks, never probe for them."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import numpy as np
import pytest

import agents
import agents.kinds
from agents.base import Policy
from agents.config import AGENTS, BANDITS, HEURISTIC_AGENTS, SB3_AGENTS, AgentConfig
from agents.kinds import kind
from agents.oracle import Oracle
from agents.registry import load_policy, make_policy, save_policy
from envs.config import load_setup
from evaluation.breaker import CircuitBreaker
from evaluation.offline import estimate, table
from evaluation.record import log_policy
from evaluation.rollout import evaluate, rollout

SETUP = load_setup()
DECLARATIONS = ("privileged", "stochastic", "history_dependent", "export_kind")


class Quiet(Policy):
    """A new heuristic: only ``name`` and ``act``; every other hook keeps its default."""

    name = "quiet"

    def act(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return np.zeros((len(obs), 4), dtype=np.int64)


def _policy_classes() -> list[type]:
    """Every class with an ``act`` method defined in agents/ (its kinds included) or the
    evaluation's breaker."""
    modules = [
        importlib.import_module(f"{package.__name__}.{m.name}")
        for package in (agents, agents.kinds)
        for m in pkgutil.iter_modules(package.__path__)
    ]
    modules.append(importlib.import_module("evaluation.breaker"))
    return [
        cls
        for module in modules
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__ == module.__name__ and "act" in vars(cls)
    ]


def test_every_policy_class_derives_from_the_base():
    classes = _policy_classes()
    assert len(classes) >= 12  # heuristics, bandits, oracle, ceiling, propensity, SB3, breaker
    assert [c.__name__ for c in classes if not issubclass(c, Policy)] == []


def _built(name: str) -> Policy:
    """An untrained policy of every registered kind (SB3 kinds: an untrained network)."""
    if name in SB3_AGENTS:
        from agents.sb3_agents import SB3Policy, build_model, make_training_env

        small = dict(n_steps=8, batch_size=8, buffer_size=1000)
        cfg = AgentConfig(name=name, **{k: v for k, v in small.items() if k in kind(name).fields})
        return SB3Policy(build_model(cfg, make_training_env(cfg, SETUP, 2)), name)
    if name == "propensity":
        from agents.propensity import PropensityAgent

        return PropensityAgent()
    return make_policy(AgentConfig(name=name))


EXPECTED = {
    "random": {"stochastic": True},
    "epsilon_greedy": {"stochastic": True, "export_kind": "linear"},
    "thompson": {"stochastic": True, "export_kind": "linear"},
    "linucb": {"export_kind": "linear"},
    "recovering": {"history_dependent": True},
    "oracle": {"privileged": True},
    "ppo": {"export_kind": "network"},
    "a2c": {"export_kind": "network"},
    "maskable_ppo": {"export_kind": "network"},
    "ppo_lagrangian": {"export_kind": "network"},
    "recurrent_ppo": {"history_dependent": True},
}
"""declarations that differ from the base's defaults (False, False, False, None)"""


@pytest.mark.parametrize("name", AGENTS)
def test_every_registered_kind_derives_from_the_base_and_declares_what_it_is(name):
    policy = _built(name)
    assert isinstance(policy, Policy)
    defaults = {"privileged": False, "stochastic": False, "history_dependent": False}
    expected = defaults | {"export_kind": None} | EXPECTED.get(name, {})
    assert {k: getattr(policy, k) for k in DECLARATIONS} == expected
    if policy.export_kind is None:  # the export says why, in a sentence of its own
        assert policy.export_refusal and policy.export_refusal != Policy.export_refusal


def test_a_new_heuristic_with_only_act_runs_everywhere_a_policy_goes(tmp_path):
    quiet = Quiet()
    rollouts = evaluate([quiet], SETUP, num_clients=50, horizon_days=5, seeds=(0,), progress=False)
    assert rollouts[0].policy == "quiet" and rollouts[0].totals["sent"].sum() == 0
    frame = log_policy(quiet, SETUP, 40, 4, seed=0, epsilon=0.3)
    [result] = estimate(frame, [quiet], SETUP, n_boot=20, fqe_boot=5)
    assert "| quiet | ips |" in table([result])
    saved = save_policy(quiet, tmp_path / "quiet")
    assert sorted(p.name for p in saved.iterdir()) == ["agent.json"]  # nothing learned to save

    from serve.onnx_export import NotExportable, graph_for

    with pytest.raises(NotExportable, match="quiet has no trained network or linear model"):
        graph_for(quiet)


def test_a_policy_outside_the_contract_is_refused_by_name():
    class Bare:
        name = "bare"

        def act(self, obs, masks):
            return np.zeros((len(obs), 4), dtype=np.int64)

    with pytest.raises(TypeError, match="Bare is not an agents.base.Policy: derive the class"):
        rollout(Bare(), SETUP, 10, 1, seed=0)
    with pytest.raises(TypeError, match="Can't instantiate abstract class"):
        Policy()  # act is the one hook without a default


def test_only_a_declared_privileged_policy_is_bound_and_every_hook_is_called_in_order():
    calls: list[str] = []

    class Watching(Quiet):
        name = "watching"

        def bind(self, core):
            calls.append("bind")

        def start_rollout(self):
            calls.append("start")

        def after_day(self, day, outcomes, alive):
            calls.append(f"day {day}")

    rollout(Watching(), SETUP, 10, 2, seed=0)
    assert calls == ["start", "day 0", "day 1"]  # not privileged: never handed the world
    calls.clear()

    class Privileged(Watching):
        privileged = True

    rollout(Privileged(), SETUP, 10, 2, seed=0)
    assert calls == ["bind", "start", "day 0", "day 1"]


@pytest.mark.parametrize(
    ("declaration", "refusal"),
    [
        ("privileged", "reads the world it acts in"),
        ("history_dependent", "acts on its own memory"),
        ("stochastic", "draws its actions at random"),
    ],
)
def test_off_policy_estimation_refuses_by_what_a_policy_declares(declaration, refusal):
    declared = type("Declared", (Quiet,), {"name": "declared", declaration: True})()
    frame = log_policy(Quiet(), SETUP, 20, 2, seed=0, epsilon=0.3)
    with pytest.raises(ValueError, match=f"declared {refusal}"):
        estimate(frame, [declared], SETUP, n_boot=5, fqe_boot=2)


def test_a_breaker_declares_what_it_wraps_and_hands_the_oracle_its_world():
    breaker = CircuitBreaker(Oracle())
    assert breaker.privileged and breaker.history_dependent and not breaker.stochastic
    # the oracle behind a breaker is bound through it (before, it was never bound and refused)
    result = rollout(breaker, SETUP, 30, 3, seed=0)
    assert result.totals["sent"].sum() > 0
    assert CircuitBreaker(make_policy(AgentConfig(name="random"))).stochastic


@pytest.mark.parametrize("name", [*HEURISTIC_AGENTS, "oracle", *BANDITS])
def test_save_and_load_keep_the_name_and_config(name, tmp_path):
    policy = make_policy(AgentConfig(name=name))
    folder = save_policy(policy, tmp_path / name)
    again = load_policy(folder)
    assert type(again) is type(policy) and again.name == policy.name
    assert again.agent_config() == policy.agent_config()
