"""The agent registry (``agents.kinds``): each kind registered once, by its own module, with what
it reads and how it is made, trained, saved and loaded; adding a heuristic is one module in
``agents/kinds/`` plus one ``conf/agent/`` YAML."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pytest

from agents.base import Policy
from agents.config import AGENTS, HEURISTIC_AGENTS, AgentConfig, saved_config
from agents.heuristics import HEURISTICS
from agents.kinds import AgentKind, for_saved, kind, kinds, register
from agents.registry import load_policy, make_policy, save_policy, train_agent
from envs.config import CONF_DIR, RewardConfig, load_setup
from evaluation.compare import compare
from evaluation.rollout import rollout
from experiment.policies import resolve_policy
from experiment.schema import EvalConfig
from simulate.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SETUP = load_setup()


def test_every_kind_has_its_yaml_and_every_yaml_a_kind():
    yamls = {p.stem for p in (CONF_DIR / "agent").glob("*.yaml")}
    assert set(AGENTS) == yamls
    assert len(AGENTS) == len(set(AGENTS)) == 17


def test_every_kind_owns_its_config_and_can_be_made_or_trained():
    for k in kinds():
        assert issubclass(k.config, AgentConfig) and k.config is not AgentConfig, k.name
        assert k.fields == tuple(f.name for f in fields(k.config) if f.name != "name")
        cfg = AgentConfig(name=k.name)
        assert type(cfg) is k.config and cfg.name == k.name
        cfg.check("agent")
        assert k.make is not None or k.train is not None, k.name
        assert kind(k.name) is k and for_saved(k.name) is k
    # no kind carries another's fields: the flat config of every field is gone
    assert kind("segment_rules").fields == () and "n_steps" not in kind("dqn").fields
    assert set(kind("linucb").fields) == {"ridge", "alpha"}


def test_registering_a_name_twice_or_a_config_that_is_not_an_agent_config_is_refused():
    from agents.kinds import HeuristicConfig

    with pytest.raises(ValueError, match="'linucb' is registered twice"):
        register(
            AgentKind(
                name="linucb", family="bandit", config=HeuristicConfig, make=lambda c, s: None
            )
        )
    with pytest.raises(ValueError, match="config must be a subclass of AgentConfig"):
        AgentKind(name="x", family="sb3", config=dict, train=lambda c, t: None)  # type: ignore[arg-type]


def test_an_unknown_agent_name_is_named_with_the_valid_ones():
    with pytest.raises(ConfigError, match=r"agent.name must be one of \[.*'fixed_weekly'.*'sarsa'"):
        AgentConfig(name="sarsa")


def test_a_field_is_accepted_only_by_the_kinds_that_have_it():
    AgentConfig(name="a2c", asymmetric_critic=True).check("agent")
    with pytest.raises(
        ConfigError,
        match=r"agent.asymmetric_critic is not a field of 'dqn' .*; ppo, ppo_lagrangian, a2c have it",
    ):
        AgentConfig(name="dqn", asymmetric_critic=True)
    with pytest.raises(ConfigError, match="agent.n_steps is not a field of 'segment_rules'"):
        AgentConfig(name="segment_rules", n_steps=8)
    # a kind without the switch reads it as off (the SB3 code asks every learner)
    assert AgentConfig(name="dqn").asymmetric_critic is False
    with pytest.raises(ConfigError, match="agent.name is 'dqn', whose config is DQNConfig"):
        kind("ppo").config(name="dqn").check("agent")


def _compose(overrides: list[str], conf: Path = CONF_DIR):
    from hydra import compose, initialize_config_dir

    from experiment.schema import register as register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose("config", overrides=overrides)


def test_hydra_composes_each_kinds_own_config():
    from omegaconf import OmegaConf

    from experiment.schema import validate_run

    run, _ = validate_run(_compose(["agent=dqn"]))
    assert type(run.agent) is kind("dqn").config and run.agent.learning_rate == 0.0005
    run, _ = validate_run(_compose([]))  # the default agent, as its YAML sets it
    assert type(run.agent) is kind("ppo_lagrangian").config
    assert run.agent.action_masking and run.agent.anxiety_limit == 0.01
    cfg = _compose(["agent=linucb", "agent.alpha=0.5"])
    assert OmegaConf.to_object(cfg.agent) == AgentConfig(name="linucb", alpha=0.5)


def test_hydra_refuses_a_key_the_kind_does_not_have_naming_it(tmp_path):
    from hydra.errors import HydraException
    from omegaconf.errors import ConfigKeyError

    from experiment.schema import validate_run

    with pytest.raises((HydraException, ConfigKeyError), match="agent.n_steps"):
        _compose(["agent=segment_rules", "agent.n_steps=8"])
    added = _compose(["agent=dqn", "+agent.n_steps=8"])  # Hydra lets `+` add a key ...
    with pytest.raises(ConfigError, match="agent.n_steps is not a field of 'dqn'"):
        validate_run(added)  # ... which the run's check refuses before any work
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "agent" / "dqn.yaml").write_text(
        "defaults:\n  - /agent_schema/dqn@_here_\n  - _self_\nn_steps: 8\n"
    )
    with pytest.raises(
        HydraException, match=r"In 'agent/dqn'.*\n?.*Key 'n_steps' not in 'DQNConfig'"
    ):
        _compose(["agent=dqn"], conf)


def _flat(name: str) -> dict[str, object]:
    """An ``agent.json`` config as the former flat AgentConfig wrote it: every kind's fields."""
    flat: dict[str, object] = {}
    for k in kinds():
        flat.update(asdict(AgentConfig(name=k.name)))
    return {**flat, "name": name}


@pytest.mark.slow
def test_a_policy_saved_with_the_former_flat_config_still_loads(tmp_path):
    flat = _flat("oracle")
    assert {"n_steps", "buffer_size", "alpha", "churn_value"} <= set(flat)
    flat["churn_value"] = 12.0
    (tmp_path / "agent.json").write_text(json.dumps({"name": "oracle", "cfg": flat}))
    oracle = load_policy(tmp_path)
    assert oracle.agent_config() == AgentConfig(name="oracle", churn_value=12.0)
    # a bandit keeps its config inside its npz: a flat one there loads too
    bandit = train_agent(AgentConfig(name="linucb", alpha=0.7), SETUP, 2000, 100, progress=False)
    folder = save_policy(bandit, tmp_path / "bandit")
    npz = folder / json.loads((folder / "agent.json").read_text())["file"]
    with np.load(npz) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["meta"] = np.array(
        json.dumps({"name": "linucb", "cfg": {**_flat("linucb"), "alpha": 0.7}})
    )
    np.savez(npz, **arrays)
    again = load_policy(folder)
    assert again.agent_config() == AgentConfig(name="linucb", alpha=0.7)
    np.testing.assert_array_equal(again.theta, bandit.theta)
    assert saved_config({**_flat("ppo"), "n_steps": 16}) == AgentConfig(name="ppo", n_steps=16)


def test_budgets_come_from_each_kinds_registration():
    from studies.agents_compare import BUDGETS, NUM_ENVS

    assert BUDGETS["dqn"] == 1_000_000 and BUDGETS["ppo_lagrangian"] == 6_000_000
    assert BUDGETS["linucb"] == 200_000 and NUM_ENVS["linucb"] == 500
    assert BUDGETS["propensity"] == 3_000_000
    assert not set(BUDGETS) & set(HEURISTIC_AGENTS)


def test_the_moved_heuristic_is_defined_and_registered_by_its_own_module():
    """fixed_weekly lives in agents/kinds/fixed_weekly.py; no other library module names it
    in code (a quoted name), yet every path that takes an agent name finds it."""
    own = ROOT / "agents" / "kinds" / "fixed_weekly.py"
    named_in = [
        p.relative_to(ROOT).as_posix()
        for folder in ("agents", "experiment", "evaluation", "serve")
        for p in (ROOT / folder).rglob("*.py")
        if any(q in p.read_text() for q in ('"fixed_weekly"', "'fixed_weekly'")) and p != own
    ]
    assert named_in == []
    cls = HEURISTICS["fixed_weekly"]
    assert cls.__module__ == "agents.kinds.fixed_weekly" and issubclass(cls, Policy)
    assert "fixed_weekly" in HEURISTIC_AGENTS
    EvalConfig(baselines=["fixed_weekly"]).check("eval")


def test_the_moved_heuristic_goes_through_make_train_evaluate_save_and_load(tmp_path):
    cfg = AgentConfig(name="fixed_weekly")
    made = make_policy(cfg)
    trained = train_agent(cfg, SETUP, total_timesteps=1000)  # nothing to learn: made
    assert type(trained) is type(made)
    resolved, tags = resolve_policy("fixed_weekly", SETUP)
    assert tags == {"agent": "fixed_weekly"}
    loaded = load_policy(save_policy(made, tmp_path / "policy"))
    a = rollout(made, SETUP, 200, 14, seed=3)
    b = rollout(loaded, SETUP, 200, 14, seed=3)
    c = rollout(resolved, SETUP, 200, 14, seed=3)
    assert a.totals["sent"].sum() > 0  # Mondays: it does send
    np.testing.assert_array_equal(a.value, b.value)
    np.testing.assert_array_equal(a.value, c.value)


def test_the_yardstick_is_the_eval_reward_it_is_given():
    """eval.reward scores the value; its default is the balanced preset (RewardConfig's
    defaults, which conf/reward/balanced.yaml does not repeat)."""
    assert load_setup().reward == RewardConfig() == EvalConfig().reward
    policy = make_policy(AgentConfig(name="segment_rules"))
    default = rollout(policy, SETUP, 200, 14, seed=4)
    balanced = rollout(policy, SETUP, 200, 14, seed=4, yardstick=RewardConfig())
    clicks_only = RewardConfig(
        name="clicks",
        anxious_click=1.0,
        conversion=0.0,
        harmful=0.0,
        unsubscribe=0.0,
        complaint=0.0,
        churn=0.0,
        message=0.0,
        violation=0.0,
    )
    counted = rollout(policy, SETUP, 200, 14, seed=4, yardstick=clicks_only)
    np.testing.assert_array_equal(default.value, balanced.value)
    clicks = counted.totals["calm_click"] + counted.totals["anxious_click"]
    np.testing.assert_allclose(counted.value, clicks)
    result = compare([policy], SETUP, 100, 7, seeds=[1000], n_boot=10, yardstick=clicks_only)
    by_policy = {r.policy: r for r in result.rollouts}
    seg = by_policy["segment_rules"]
    np.testing.assert_allclose(seg.value, seg.totals["calm_click"] + seg.totals["anxious_click"])


NEW_KIND = '''
"""A heuristic added by this module alone: morning educational email every day."""

from __future__ import annotations

import numpy as np

from agents.base import Policy
from agents.heuristics import CONTENT, SLOT, TONE, with_channel_fallback
from agents.kinds import heuristic


@heuristic
class DailyLesson(Policy):
    name = "daily_lesson"

    def act(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        send = np.ones(len(obs), dtype=bool)
        return with_channel_fallback(
            SLOT["morning"], TONE["educational"], CONTENT["education"], send, masks
        )
'''

NEW_YAML = """# heuristic: nothing to learn; train.py evaluates and logs it
defaults:
  - /agent_schema/daily_lesson@_here_
  - _self_
"""

CHECK = """
import numpy as np
from agents.config import AGENTS, AgentConfig
from agents.registry import load_policy, make_policy, save_policy, train_agent
from envs.config import load_setup
from evaluation.rollout import rollout
from experiment.policies import resolve_policy
from simulate.config import ConfigError

setup = load_setup()
assert "daily_lesson" in AGENTS
cfg = AgentConfig(name="daily_lesson")
cfg.check("agent")
try:
    AgentConfig(name="daily_lesson", n_steps=8)
    raise SystemExit("a heuristic took an SB3 field")
except ConfigError as exc:
    assert "agent.n_steps is not a field of 'daily_lesson'" in str(exc), exc
policy = train_agent(cfg, setup, 1000)
again = load_policy(save_policy(policy, "saved"))
resolved, _ = resolve_policy("daily_lesson", setup)
values = [rollout(p, setup, 100, 7, seed=1).value for p in (policy, again, resolved)]
assert all(np.array_equal(values[0], v) for v in values)
print("daily_lesson sends", int(rollout(policy, setup, 100, 7, seed=1).totals["sent"].sum()))
"""


@pytest.mark.slow  # a subprocess running train.py: Hydra and MLflow start-up
@pytest.mark.usefixtures("mlflow_store")  # an empty store, its tables made
def test_a_new_heuristic_is_one_module_and_one_yaml(tmp_path):
    """Copy the library and its config, add nothing but agents/kinds/daily_lesson.py and
    conf/agent/daily_lesson.yaml, and run ``python train.py agent=daily_lesson`` plus make,
    train, save, load and ``policies=`` resolution on it."""
    tree = tmp_path / "tree"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("agents", "envs", "evaluation", "experiment", "realism", "serve", "simulate"):
        shutil.copytree(ROOT / folder, tree / folder, ignore=skip)
    shutil.copytree(ROOT / "conf", tree / "conf", ignore=skip)
    shutil.copy(ROOT / "train.py", tree / "train.py")
    (tree / "agents" / "kinds" / "daily_lesson.py").write_text(textwrap.dedent(NEW_KIND))
    (tree / "conf" / "agent" / "daily_lesson.yaml").write_text(NEW_YAML)
    named_in = [
        p.relative_to(tree).as_posix()
        for p in tree.rglob("*")
        if p.is_file() and p.suffix in (".py", ".yaml") and "daily_lesson" in p.read_text()
    ]
    assert sorted(named_in) == ["agents/kinds/daily_lesson.py", "conf/agent/daily_lesson.yaml"]
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "OPENBLAS_NUM_THREADS": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    train = subprocess.run(
        [
            sys.executable,
            "train.py",
            "agent=daily_lesson",
            "eval.num_clients=60",
            "eval.horizon_days=7",
            "eval.num_seeds=1",
            "eval.n_boot=10",
            "trainer.progress=false",
        ],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert "| daily_lesson |" in train.stdout
    check = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=tree, env=env, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr[-3000:]
    assert "daily_lesson sends" in check.stdout


def test_the_yardstick_is_composed_from_the_reward_presets():
    """``eval.reward`` is the ``conf/reward/`` group placed at eval.reward: the same file as
    the training reward (so editing balanced.yaml moves both), chosen on its own."""
    from hydra import compose, initialize_config_dir

    from experiment.schema import register, validate_run

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        default = compose("config")
        chosen = compose("config", overrides=["reward@eval.reward=engagement"])
    run, setup = validate_run(default)
    assert run.eval.reward == setup.reward == RewardConfig()
    run, setup = validate_run(chosen)
    assert run.eval.reward.name == "engagement" and run.eval.reward.anxious_click == 1.0
    assert setup.reward == RewardConfig()
