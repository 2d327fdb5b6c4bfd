"""The closed-loop study: Cadence's learning loop run against a firm's world it cannot see.

    python studies/closed_loop.py world=0 seed=0                  # one hidden world, one seed
    python studies/closed_loop.py -m world=0,1,2 seed=0,1 launcher=joblib   # every job, 2 at a time
    python studies/closed_loop.py mode=report results=docs        # the table and the plot

A **hidden world** (:func:`hidden_world`) is the default simulator with response and population
parameters drawn from documented ranges (:data:`HIDDEN_RANGES`); the loop never reads it. All it
sees are the world's outputs: the firm's event export, the decision log, the review outcomes.

Each job (one hidden world, one seed) starts with the firm's rules (``segment_rules``) deciding
in **shadow mode**, ε-explored by the guarded runtime, with a policy trained off the shelf (the
default agent in the *default* simulator, budget ``budget``) watching. Then, each round of
``days`` days on a fresh cohort of ``clients`` of the hidden world:

1. **serve**: the champion decides through the guarded runtime with ε exploration (the firm's
   rules in shadow, or the promoted policy's export in serve mode); the simulator records the
   firm's export (:func:`loop.served.serve_days`);
2. **join**: export, decision log and review outcomes joined into the logged dataset with the
   observable reward (:func:`loop.join.join_outcomes`);
3. **calibrate**: the simulator's response parameters (:data:`CALIBRATED`) fitted to that log,
   the logging policy re-run in the simulator (:mod:`realism.calibration`);
4. **train**: the default agent trained in the calibrated simulator (``budget`` client-days) and
   exported to ONNX;
5. **gate**: the challenger against the champion on the round's log, by the rules of
   ``promote.py`` (:func:`experiment.promotion.gather` and :func:`~experiment.promotion.judge`:
   the paired lower bound above ``margin``, harm within its margins, ESS ≥ ``min_ess``, a shadow
   period to replace the firm's rules); the champion moves only where it clears;
6. **truth**: what the loop cannot see, measured in the hidden world on fresh clients (common
   random numbers): the normalized value of the challenger and the champion, against the hidden
   world's own oracle and deployable ceiling; what ε exploration cost the served policy.

Beside the loop, the **direct agent**: the default agent trained on the hidden world's true
simulator with the same budget; the sim-to-real ratio is the loop's champion after the last
round over it. A **false promotion** is a promoted challenger whose true value is below the
champion it replaced.

Each round is an MLflow parent run (``world <w> · seed <s> · round <r>``) with one child run
per step, in experiment ``cadence-closed-loop``. A job writes ``<out>/w<w>-s<s>/state.json``
after every finished round and, started again, continues after the last finished round (a
round cut short is done again from its start). Jobs are independent: ``-m`` sweeps them through
the same launchers as ``train.py`` (``launcher=joblib`` here, which logs through the tracking
server ``make mlflow-server`` starts; ``launcher=ray`` on a cluster).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import mlflow
import numpy as np
import polars as pl
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from agents.base import Policy
from agents.config import AgentConfig
from agents.registry import load_policy, make_policy, save_policy, train_agent
from envs.config import Setup, eval_seeds, load_setup
from evaluation.metrics import normalized_value, paired_difference
from evaluation.record import uniform_draw
from evaluation.rollout import Rollout, evaluate
from experiment import promotion
from experiment.process import as_typed, freeze_long_lived
from experiment.schema import TrackingConfig
from simulate.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "cadence-closed-loop"
FIRM_RULES = "segment_rules"
"""the firm's own rules, serving at the start (in shadow mode)"""
DEFAULT_AGENT = "ppo_lagrangian"
"""the agent the loop trains each round, and the direct agent (``train.py``'s default)"""
REFERENCES = ("no_send", "oracle", "deployable_ceiling")
MODES = ("run", "direct", "report")
DEFAULT_BUDGET = 6_000_000
"""the default agent's own training budget (``train.py``'s ``trainer.total_timesteps``)"""

HIDDEN_RANGES: dict[str, tuple[str, float, float]] = {
    "env.response.open_base": ("shift", -0.35, 0.35),
    "env.response.click_base": ("shift", -0.30, 0.30),
    "env.response.unsub_base": ("shift", -0.50, 0.50),
    "env.response.open_fatigue": ("scale", 0.60, 1.60),
    "population.literacy_mean": ("shift", -0.08, 0.08),
    "population.susceptibility_logit_mean": ("shift", -0.50, 0.50),
    "population.visit_logit_mean": ("shift", -0.40, 0.40),
}
"""how each hidden world departs from the default simulator: a uniform draw, added to the
default (``shift``) or multiplying it (``scale``). The response shifts keep the default firm's
e-mail open rate (about 24 %), click rate and unsubscribes per e-mail inside the published
financial-services ranges (open 20.5-27.1 %, click 2.4-2.6 %, unsubscribes 0.1-0.3 % per e-mail:
``docs/realism.md``) up to about a quarter either way; the population's financial literacy,
anxiety susceptibility and organic visits, which calibration from a send log cannot see, move
by about half a standard deviation of their spread across clients. The segment mix is drawn too
(:data:`SEGMENT_CONCENTRATION`)."""
SEGMENT_CONCENTRATION = 20.0
"""the hidden segment shares are a Dirichlet draw with this many pseudo-clients behind the
default shares (about ±0.1 on a share of 0.3)"""
WORLD_SEED = 7_919
"""the draws of hidden world ``w`` come from ``numpy.random.default_rng([WORLD_SEED, w])``"""
CALIBRATED: dict[str, tuple[float, float]] = {
    "env.response.open_base": (-2.5, -0.6),
    "env.response.click_base": (-4.2, -2.4),
    "env.response.unsub_base": (-7.5, -5.0),
    "env.response.open_fatigue": (0.03, 0.40),
}
"""what the loop fits to each round's log, and the search ranges (wider than the hidden
draws: the fit is not told where the truth lies)"""


@dataclass
class ClosedLoopConfig:
    """What ``studies/closed_loop.py`` reads (``conf/closed_loop.yaml``)."""

    mode: str = "run"
    """``run`` (one job: ``world``, ``seed``), ``direct`` (the job's direct agent trained at
    ``direct_budget`` too, valued in its hidden world) or ``report`` (the table and plot of
    every job under ``out``)"""
    world: int = 0
    """the hidden world (its parameters are drawn from ``[WORLD_SEED, world]``)"""
    seed: int = 0
    """the job's seed: the training seeds, the served cohorts' luck, the exploration draws"""
    rounds: int = 4
    clients: int = 20_000
    """clients of the firm served each round (a fresh cohort of the hidden world)"""
    days: int = 28
    """days served a round"""
    epsilon: float = 0.05
    """the runtime's exploration rate while serving (uniform over the allowed actions)"""
    policy_share: float = 0.2
    """shadow rounds: the share of decisions on which the watched policy's choice replaces the
    firm's (``exploration.policy_share``), so the log supports a learned challenger"""
    budget: int = 1_000_000
    """client-days of training: each round's challenger, the off-the-shelf policy and the
    direct agent alike"""
    trials: int = 24
    """calibration trials per round (CMA-ES over :data:`CALIBRATED`)"""
    calibration_clients: int = 6_000
    """clients of the round's log the calibration's statistics are taken from (a random
    subset: the simulated side re-runs the logging policy on as many)"""
    margin: float = promotion.MARGIN
    """the gate's margin on the paired lower bound (observable reward per client-day)"""
    min_ess: float = promotion.MIN_ESS
    """the gate's least effective sample size of each policy"""
    harm_margin: dict[str, float] = field(default_factory=lambda: dict(promotion.HARM_MARGINS))
    """the gate's most each harm rate (per client-day) may rise, as ``promote.py``'s"""
    eval_clients: int = 2_000
    eval_days: int = 90
    eval_seeds: int = 2
    out: str = "outputs/closed_loop"
    """every job's folder (``w<world>-s<seed>``), the report's table and plot"""
    results: str | None = None
    """report mode: ``docs`` also writes docs/results/<name>.md and its plot"""
    direct_budget: int = DEFAULT_BUDGET
    """mode ``direct``: client-days of the direct agent trained at the default agent's own
    budget (the sim-to-real ratio's second yardstick)"""
    name: str = "closed_loop"
    """report mode: the results file's name (``<name>.md``, ``<name>.png``)"""
    progress: bool = True
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def register() -> None:
    ConfigStore.instance().store(name="closed_loop_schema", node=ClosedLoopConfig)


# --------------------------------------------------------------------------------------------
# hidden worlds


def hidden_world(world: int, base: Setup | None = None) -> tuple[Setup, dict[str, float]]:
    """Hidden world ``world``: the default setup with :data:`HIDDEN_RANGES` drawn, and the drawn
    values by name (``population.segment_probs`` as its shares)."""
    from realism.fit import apply

    base = base or load_setup()
    rng = np.random.default_rng([WORLD_SEED, world])
    values: dict[str, float] = {}
    for name, (how, low, high) in HIDDEN_RANGES.items():
        group, key = name.rsplit(".", 1)
        default = float(
            getattr(base.population if group == "population" else base.env.response, key)
        )
        draw = rng.uniform(low, high)
        values[name] = default + draw if how == "shift" else default * draw
    setup = apply(base, values)
    shares = rng.dirichlet(SEGMENT_CONCENTRATION * np.asarray(base.population.segment_probs))
    segments = [round(float(s), 4) for s in shares]
    segments[-1] = round(1.0 - sum(segments[:-1]), 4)
    population = dataclasses.replace(setup.population, segment_probs=segments)
    return dataclasses.replace(setup, population=population), values | {
        f"population.segment_probs[{i}]": s for i, s in enumerate(segments)
    }


# --------------------------------------------------------------------------------------------
# the truth (what the loop cannot see)


class Explored(Policy):
    """``base`` as the runtime serves it while exploring: with probability ``share`` the
    ``watched`` policy's action in its place (shadow mode's policy share), then with probability
    ``epsilon`` an allowed action drawn uniformly (what the firm's clients get)."""

    def __init__(
        self,
        base: Policy,
        epsilon: float,
        seed: int,
        watched: Policy | None = None,
        share: float = 0.0,
        name: str | None = None,
    ) -> None:
        self.base, self.epsilon, self.watched, self.share = base, epsilon, watched, share
        self.name = name or f"{base.name}+eps"
        self.rng = np.random.default_rng([seed, 11])

    def act(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        from envs.spaces import flat_to_multi

        action = np.asarray(self.base.act(obs, masks), dtype=np.int64)
        if self.watched is not None and self.share > 0:
            pick = self.rng.random(len(obs)) < self.share
            action[pick] = np.asarray(self.watched.act(obs, masks), dtype=np.int64)[pick]
        explore = self.rng.random(len(obs)) < self.epsilon
        if explore.any():
            action[explore] = flat_to_multi(uniform_draw(masks[explore], self.rng))
        return action


class Truth:
    """Policies valued in the hidden world on the same fresh clients (common random numbers):
    the references are rolled out once and kept in ``cache``."""

    def __init__(self, setup: Setup, clients: int, days: int, seeds: int, cache: Path) -> None:
        self.setup, self.clients, self.days = setup, clients, days
        self.seeds = list(eval_seeds(seeds))
        self.cache = cache
        self.refs = self._references()

    def _references(self) -> dict[str, list[Rollout]]:
        if self.cache.is_file():
            return pickle.loads(self.cache.read_bytes())
        from agents.ceiling import DeployableCeiling
        from agents.heuristics import NoSend
        from agents.oracle import Oracle

        policies = [NoSend(), Oracle(), DeployableCeiling(self.setup)]
        rollouts = self.rollouts(policies)
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(rollouts))
        tmp.replace(self.cache)
        return rollouts

    def rollouts(self, policies: list[Policy]) -> dict[str, list[Rollout]]:
        got = evaluate(policies, self.setup, self.clients, self.days, self.seeds, progress=False)
        return {p.name: [r for r in got if r.policy == p.name] for p in policies}

    def value(self, rollouts: list[Rollout]) -> dict[str, float]:
        """Normalized value (against never sending and the hidden world's oracle) and ceiling
        share with their 95 % intervals, retention, clients lost and harm per client."""
        nv = normalized_value(rollouts, self.refs["no_send"], self.refs["oracle"], n_boot=200)
        cs = normalized_value(
            rollouts, self.refs["no_send"], self.refs["deployable_ceiling"], n_boot=200
        )
        retained = np.concatenate([r.retained for r in rollouts])
        harm = np.concatenate([r.totals["harmful"] for r in rollouts])
        unsub = np.concatenate([r.totals["unsubscribed"] for r in rollouts])
        sent = np.concatenate([r.totals["sent"] for r in rollouts])
        return {
            "unsubscribed_per_client": float(unsub.mean()),
            "messages_per_client_week": float(sent.mean() * 7 / self.days),
            "normalized_value": nv[0],
            "normalized_value_lo": nv[1],
            "normalized_value_hi": nv[2],
            "ceiling_share": cs[0],
            "retention": float(retained.mean()),
            "harmful_per_client": float(harm.mean()),
        }

    def difference(self, a: list[Rollout], b: list[Rollout]) -> tuple[float, float, float]:
        """a's value minus b's per client on the same clients, with its 95 % interval."""
        return paired_difference(a, b, n_boot=200)


# --------------------------------------------------------------------------------------------
# one job


@dataclass
class Job:
    """One hidden world and seed: its folder, config and the state kept between rounds."""

    cfg: ClosedLoopConfig
    folder: Path
    hidden: Setup
    drawn: dict[str, float]
    state: dict[str, Any]

    @property
    def state_file(self) -> Path:
        return self.folder / "state.json"

    @property
    def cache(self) -> Path:
        """what does not depend on the loop's settings, shared by the jobs under ``out``'s
        parent and by studies of other gate settings beside it: the direct and off-the-shelf
        policies (by world, seed and budget) and the hidden worlds' reference rollouts"""
        return self.folder.parent.parent / "cache"

    def save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.state_file)


def say(message: str) -> None:
    print(f"[closed-loop {time.strftime('%H:%M:%S')}] {message}", flush=True)


def default_agent() -> AgentConfig:
    """The default agent as ``train.py`` configures it (``conf/agent/<DEFAULT_AGENT>.yaml``
    over its kind's config, composed with Hydra's compose API and checked)."""
    from envs.config import compose_conf
    from experiment.schema import register as register_run
    from experiment.schema import validate_run

    register_run()
    run, _ = validate_run(compose_conf("config", [f"agent={DEFAULT_AGENT}"]))
    return run.agent


def trained(folder: Path, setup: Setup, budget: int, seed: int) -> Policy:
    """The default agent trained on ``setup`` for ``budget`` client-days (kept in ``folder``:
    loaded where it was trained before)."""
    if (folder / "agent.json").is_file():
        return load_policy(folder)
    policy = train_agent(default_agent(), setup, budget, seed=seed, progress=False)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_policy(policy, tmp)
    try:
        tmp.replace(folder)  # atomic: a job that trained the same policy first keeps its copy
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_policy(folder)


def exported(policy: Policy, folder: Path, setup: Setup) -> Path:
    """``policy``'s ONNX export in ``folder`` (made once)."""
    from serve.onnx_export import export_policy

    if not (folder / "manifest.json").is_file():
        with warnings.catch_warnings():  # the tracer's note on the critic's optional inputs
            warnings.simplefilter("ignore")
            export_policy(policy, folder, setup.env.guardrails)
    return folder


@contextmanager
def step(name: str, **params: Any) -> Iterator[dict[str, float]]:
    """A child run of the round's parent run; yields a dict of metrics logged at its end."""
    metrics: dict[str, float] = {}
    start = time.perf_counter()
    with mlflow.start_run(run_name=name, nested=True, tags={"step": name}):
        if params:
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        yield metrics
        metrics["seconds"] = time.perf_counter() - start
        say(f"  {name}: {metrics['seconds']:.1f} s")
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if _finite(v)})


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(float(v))


def open_job(cfg: ClosedLoopConfig) -> Job:
    folder = (ROOT / cfg.out if not Path(cfg.out).is_absolute() else Path(cfg.out)) / (
        f"w{cfg.world}-s{cfg.seed}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    hidden, drawn = hidden_world(cfg.world)
    state_file = folder / "state.json"
    settings = {
        k: getattr(cfg, k)
        for k in ("world", "seed", "clients", "days", "epsilon", "policy_share", "budget", "trials",
                  "calibration_clients", "margin", "min_ess", "harm_margin", "eval_clients", "eval_days",
                  "eval_seeds")
    }  # fmt: skip
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        if state["settings"] != settings:
            changed = sorted(k for k in settings if state["settings"].get(k) != settings[k])
            raise ConfigError(
                f"{folder} holds a job run with other settings ({', '.join(changed)}): "
                "choose another out= or remove the folder"
            )
    else:
        state = {"settings": settings, "hidden": drawn, "rounds": [], "champion": None}
    return Job(cfg, folder, hidden, drawn, state)


def run_job(cfg: ClosedLoopConfig) -> dict[str, Any]:
    """Run (or continue) one job: every round not finished yet; returns its state."""
    from experiment.tracking import setup_mlflow

    job = open_job(cfg)
    setup_mlflow(cfg.tracking.uri, EXPERIMENT)
    base = load_setup()
    done = len(job.state["rounds"])
    say(f"world {cfg.world}, seed {cfg.seed}: {done} of {cfg.rounds} rounds done")
    refs = f"refs-w{cfg.world}-{cfg.eval_clients}x{cfg.eval_days}x{cfg.eval_seeds}.pkl"
    truth = Truth(job.hidden, cfg.eval_clients, cfg.eval_days, cfg.eval_seeds, job.cache / refs)
    if "direct" not in job.state:
        start(job, base, truth)
    for r in range(len(job.state["rounds"]) + 1, cfg.rounds + 1):
        record = run_round(job, r, base, truth)
        job.state["rounds"].append(record)
        job.save()
    return job.state


def start(job: Job, base: Setup, truth: Truth) -> None:
    """Before round 1: the direct agent (trained on the hidden world's true simulator, for the
    comparison only) and the first challenger, trained off the shelf (the default simulator);
    the firm's rules are the champion."""
    cfg = job.cfg
    tag = f"s{cfg.seed}-b{cfg.budget}"
    direct = trained(job.cache / f"direct-w{cfg.world}-{tag}", job.hidden, cfg.budget, cfg.seed)
    direct.name = "direct"
    shelf = job.cache / f"off_the_shelf-{tag}"
    first = trained(shelf, base, cfg.budget, cfg.seed)
    exported(first, shelf.with_name(shelf.name + "-export"), base)
    first.name = "off_the_shelf"
    rules = make_policy(AgentConfig(name=FIRM_RULES))
    got = truth.rollouts([direct, first, rules])
    job.state["direct"] = truth.value(got["direct"])
    job.state["off_the_shelf"] = truth.value(got["off_the_shelf"])
    job.state["firm_rules"] = truth.value(got[FIRM_RULES])
    job.state["champion"] = {"name": FIRM_RULES, "kind": "rules", "round": 0}
    job.state["challenger"] = {
        "name": "off_the_shelf",
        "policy": str(shelf),
        "export": str(shelf.with_name(shelf.name + "-export")),
    }
    job.save()
    say(
        f"world {cfg.world}, seed {cfg.seed}: true normalized value of the direct agent "
        f"{job.state['direct']['normalized_value']:.3f}, off the shelf "
        f"{job.state['off_the_shelf']['normalized_value']:.3f}, the firm's rules "
        f"{job.state['firm_rules']['normalized_value']:.3f}"
    )


def direct_at_budget(cfg: ClosedLoopConfig) -> dict[str, Any]:
    """Mode ``direct``: the default agent trained on the job's hidden world at
    ``direct_budget`` client-days (kept in the cache), valued there; written into the job's
    state as ``direct_at_budget``."""
    job = open_job(cfg)
    if "direct" not in job.state:
        raise ConfigError(f"{job.folder}: run the job first (mode=run), then mode=direct")
    refs = f"refs-w{cfg.world}-{cfg.eval_clients}x{cfg.eval_days}x{cfg.eval_seeds}.pkl"
    truth = Truth(job.hidden, cfg.eval_clients, cfg.eval_days, cfg.eval_seeds, job.cache / refs)
    folder = job.cache / f"direct-w{cfg.world}-s{cfg.seed}-b{cfg.direct_budget}"
    start = time.perf_counter()
    policy = trained(folder, job.hidden, cfg.direct_budget, cfg.seed)
    policy.name = "direct"
    value = truth.value(truth.rollouts([policy])["direct"])
    job.state["direct_at_budget"] = value | {"budget": cfg.direct_budget}
    job.save()
    say(
        f"world {cfg.world}, seed {cfg.seed}: the direct agent at {cfg.direct_budget:,} "
        f"client-days: true normalized value {value['normalized_value']:.3f} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return job.state


def _policy(entry: dict[str, Any]) -> Policy:
    """The champion or challenger a state entry names (the firm's rules, or a saved policy)."""
    if entry.get("kind") == "rules":
        return make_policy(AgentConfig(name=FIRM_RULES))
    policy = load_policy(entry["policy"])
    policy.name = entry["name"]
    return policy


def run_round(job: Job, r: int, base: Setup, truth: Truth) -> dict[str, Any]:
    """One round as an MLflow parent run: serve (the champion decides, the challenger runs as a
    canary on ``policy_share`` of the decisions), join, gate, truth; then calibrate from the
    round's log and train the next round's challenger."""
    cfg = job.cfg
    folder = job.folder / f"round{r}"
    shutil.rmtree(folder, ignore_errors=True)  # a round cut short is done again from its start
    folder.mkdir(parents=True)
    champion = _policy(job.state["champion"])
    challenger = _policy(job.state["challenger"])
    rules = job.state["champion"]["kind"] == "rules"
    record: dict[str, Any] = {"round": r, "serving": champion.name, "shadow": rules,
                              "challenger": challenger.name}  # fmt: skip
    with mlflow.start_run(
        run_name=f"world {cfg.world} · seed {cfg.seed} · round {r}",
        tags={
            "world": str(cfg.world),
            "seed": str(cfg.seed),
            "round": str(r),
            "mlflow.note.content": (
                f"Round {r} of the closed loop in hidden world {cfg.world} (seed {cfg.seed}): "
                f"{champion.name} decided, {challenger.name} ran as a canary on "
                f"{cfg.policy_share:g} of the decisions, ε {cfg.epsilon:g}; the gate judged "
                f"{challenger.name} on the round's log. Children are the round's steps; true/* "
                "metrics are measured in the hidden world, which the loop never sees."
            ),
        },
    ) as parent:
        mlflow.log_params({"world": cfg.world, "seed": cfg.seed, "round": r,
                           "champion": champion.name, "challenger": challenger.name})  # fmt: skip
        frame, served = serve_and_join(job, r, folder, champion)
        record |= served
        gate = judge_round(job, r, frame, folder, challenger, champion, rules, base)
        record["gate"] = gate
        record |= measure(job, truth, champion, challenger, gate["cleared"])
        if gate["cleared"]:
            job.state["champion"] = job.state["challenger"] | {"kind": "learned", "round": r}
        record["champion_after"] = job.state["champion"]["name"]
        # the next round's challenger, from what this round's log shows (made after the last
        # round too: a job continued with more rounds starts from it)
        fitted, record["calibration"] = calibrate(job, r, folder, frame, champion, challenger, base)
        job.state["challenger"] = challenge(job, r, folder, fitted)
        mlflow.log_metrics(
            {f"true/{k}": v for k, v in record["truth"].items() if _finite(v)}
            | {
                "gate/cleared": float(gate["cleared"]),
                "false_promotion": float(record["false_promotion"]),
            }
        )
        mlflow.set_tag("decision", "promoted" if gate["cleared"] else "kept")
        record["run_id"] = parent.info.run_id
    say(
        f"world {cfg.world}, seed {cfg.seed}, round {r}: {champion.name} served, "
        f"{challenger.name} {'promoted' if gate['cleared'] else 'refused'} ({gate['why']}); "
        f"champion {record['champion_after']} at true normalized value "
        f"{record['truth']['champion_normalized_value']:.3f}"
    )
    return record


def serve_and_join(
    job: Job, r: int, folder: Path, champion: Policy
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Serve the round's days and join them into the logged dataset (written to
    ``folder/joined.parquet``): the guarded runtime holds the challenger's export in shadow
    mode, every request carries the champion's action (the firm's rules, or the promoted
    policy's), which is returned explored around: ``policy_share`` of the time the challenger's
    own choice in its place, then ``epsilon`` uniform."""
    from loop.join import join_outcomes, write_joined
    from loop.served import serve_days
    from serve.runtime import Exploration

    cfg = job.cfg
    cohort_seed = 1_000 * cfg.seed + r  # a fresh cohort every round
    with step("serve", via="runtime", clients=cfg.clients, days=cfg.days, epsilon=cfg.epsilon,
              policy_share=cfg.policy_share, cohort_seed=cohort_seed) as m:  # fmt: skip
        served = serve_days(
            job.state["challenger"]["export"],
            job.hidden,
            cfg.clients,
            cfg.days,
            cohort_seed,
            Exploration(epsilon=cfg.epsilon, seed=cohort_seed, policy_share=cfg.policy_share),
            decisions_dir=folder / "decisions",
            events_dir=folder / "firm",
            check_days=(),
            firm=champion,
        )
        sends = served.export.sends
        m |= {"decisions": served.decisions.height, "sends": sends.height}
    with step("join") as m:
        frame, summary = join_outcomes(
            served.export, served.decisions, served.reviews, seed=cohort_seed
        )
        write_joined(frame, folder / "joined.parquet")
        m |= {"rows": frame.height}
    per_client = frame.group_by("client_id").agg(
        pl.col("churned").max(), pl.col("unsubscribed").max(), pl.col("complaint").sum()
    )
    log = {
        "log_rows": frame.height,
        "log_sends": int(frame["sent"].sum()),
        "log_clients_lost": float(per_client["churned"].mean()),
        "log_unsubscribed": float(per_client["unsubscribed"].mean()),
        "log_reward_per_client_day": float(frame["reward"].mean()),
    }
    mlflow.log_metrics({f"log/{k}": v for k, v in log.items()})
    return frame, log


def calibrate(
    job: Job,
    r: int,
    folder: Path,
    frame: pl.DataFrame,
    logger: Policy,
    watched: Policy,
    base: Setup,
) -> tuple[Setup, dict[str, Any]]:
    """Fit :data:`CALIBRATED` to the round's log, the logging policy re-run as it was served
    (the champion ``logger``, ``watched`` on ``policy_share`` of the decisions, ``epsilon``
    uniform) on as many simulated clients; the fitted setup and what the fit did."""
    from realism import fromlogs
    from realism.calibration import LoggedSide, search

    cfg = job.cfg
    clients = frame["client_id"].unique().sort()
    rng = np.random.default_rng([cfg.seed, r, 3])
    keep = clients.sample(min(cfg.calibration_clients, len(clients)), seed=int(rng.integers(2**31)))
    sample = frame.filter(pl.col("client_id").is_in(keep.implode()))
    targets = fromlogs.targets(sample, seed=cfg.seed, source=f"round {r} log")
    n_clients, n_days = sample["client_id"].n_unique(), sample["day"].n_unique()
    seed = 10_000 + r

    def statistics(setup: Setup) -> dict[str, float]:
        # a fresh draw of the challenger's share every trial (common random numbers)
        served = Explored(logger, 0.0, seed, watched, cfg.policy_share, name=logger.name)
        return fromlogs.statistics(
            fromlogs.relog(setup, served, n_clients, n_days, seed, cfg.epsilon), thin=True
        )

    side = LoggedSide(sample, targets, n_clients, n_days, f"{logger.name} re-run", statistics)
    with step("calibrate", params=",".join(CALIBRATED), trials=cfg.trials,
              clients=n_clients, logger=logger.name) as m:  # fmt: skip
        fit = search(side, base, list(CALIBRATED), dict(CALIBRATED), seed, cfg.trials, "cmaes",
                     progress=False)  # fmt: skip
        m |= {
            "met": fit.met,
            "targets": len(targets.targets),
            "objective": float(fit.study.best_value),
        }
        m |= {f"fitted/{k}": v for k, v in fit.best.items()}
    out = {
        "met": fit.met,
        "targets": len(targets.targets),
        "fitted": {k: float(v) for k, v in fit.best.items()},
        "hidden": {k: job.drawn[k] for k in CALIBRATED},
    }
    (folder / "calibration.json").write_text(json.dumps(out, indent=1))
    return fit.fitted, out


def challenge(job: Job, r: int, folder: Path, fitted: Setup) -> dict[str, str]:
    """The next round's challenger: the default agent trained in the calibrated simulator,
    saved and exported; its state entry."""
    cfg = job.cfg
    seed = cfg.seed * 100 + r
    with step("train", agent=DEFAULT_AGENT, budget=cfg.budget, seed=seed) as m:
        start = time.perf_counter()
        policy = trained(folder / "challenger", fitted, cfg.budget, seed)
        m["client_days_per_s"] = cfg.budget / (time.perf_counter() - start)
        exported(policy, folder / "export", fitted)
    return {
        "name": f"r{r}",
        "policy": str(folder / "challenger"),
        "export": str(folder / "export"),
    }


def judge_round(
    job: Job,
    r: int,
    frame: pl.DataFrame,
    folder: Path,
    challenger: Policy,
    champion: Policy,
    shadow: bool,
    base: Setup,
) -> dict[str, Any]:
    """The promotion gate on the round's log (``promote.py``'s rules); written to
    ``folder/promotion.md``."""
    cfg = job.cfg
    with step("gate", margin=cfg.margin, min_ess=cfg.min_ess) as m:
        evidence = promotion.gather(frame, challenger, champion, base, n_boot=300, fqe_boot=20,
                                    seed=cfg.seed)  # fmt: skip
        check = promotion.shadow_check(frame, champion.name, None, False) if shadow else None
        promotion.judge(evidence, cfg.margin, cfg.min_ess, dict(cfg.harm_margin), shadow=check)
        text = promotion.report(
            evidence, [f"Round {r}: {challenger.name} against {champion.name}."]
        )
        (folder / "promotion.md").write_text(text)
        mlflow.log_text(text, "promotion.md")
        m |= promotion.metrics_of(evidence)
    reward = evidence.paired["reward"]
    failed = [c for c in evidence.checks if not c.passed]
    return {
        "cleared": evidence.cleared,
        "why": "every rule passed" if not failed else failed[0].name,
        "reasons": evidence.reasons,
        "diff": reward.diff,
        "lo": reward.ci_low,
        "hi": reward.ci_high,
        "ess_challenger": evidence.ess["challenger"],
        "ess_champion": evidence.ess["champion"],
    }


def measure(
    job: Job, truth: Truth, champion: Policy, challenger: Policy, promoted: bool
) -> dict[str, Any]:
    """The hidden world's figures of the round's policies (not seen by the loop): each alone,
    and the champion as it was served (the challenger's share and epsilon)."""
    cfg = job.cfg
    with step("truth", clients=cfg.eval_clients, days=cfg.eval_days, seeds=cfg.eval_seeds) as m:
        eps = Explored(champion, cfg.epsilon, cfg.seed, name="eps")
        served = Explored(champion, cfg.epsilon, cfg.seed, challenger, cfg.policy_share, "served")
        got = truth.rollouts([challenger, champion, eps, served])
        alone = truth.value(got[champion.name])
        as_served = truth.value(got["served"])["normalized_value"]
        new = truth.value(got[challenger.name])
        diff = truth.difference(got[challenger.name], got[champion.name])
        after = new if promoted else alone
        out = {
            "champion_before_normalized_value": alone["normalized_value"],
            "served_normalized_value": as_served,
            "exploration_cost": alone["normalized_value"] - as_served,
            "epsilon_cost": alone["normalized_value"] - truth.value(got["eps"])["normalized_value"],
            "challenger_normalized_value": new["normalized_value"],
            "challenger_minus_champion": diff[0],
            "challenger_minus_champion_lo": diff[1],
            "challenger_minus_champion_hi": diff[2],
            "champion_normalized_value": after["normalized_value"],
            "champion_normalized_value_lo": after["normalized_value_lo"],
            "champion_normalized_value_hi": after["normalized_value_hi"],
            "champion_ceiling_share": after["ceiling_share"],
            "champion_retention": after["retention"],
            "champion_harmful_per_client": after["harmful_per_client"],
            "champion_unsubscribed_per_client": after["unsubscribed_per_client"],
            "challenger_unsubscribed_per_client": new["unsubscribed_per_client"],
            "challenger_retention": new["retention"],
            "sim_to_real": after["normalized_value"] / job.state["direct"]["normalized_value"],
        }
        m |= out
    return {"truth": out, "false_promotion": bool(promoted and diff[0] < 0)}


# --------------------------------------------------------------------------------------------
# the report


def load_states(out: Path) -> list[dict[str, Any]]:
    """Every job's state under ``out`` (``w<world>-s<seed>/state.json``), by world then seed."""
    states = [json.loads(p.read_text()) for p in sorted(out.glob("w*-s*/state.json"))]
    if not states:
        raise ConfigError(f"out: {out} holds no job (w<world>-s<seed>/state.json); run some first")
    return sorted(states, key=lambda s: (s["settings"]["world"], s["settings"]["seed"]))


def _nv(v: float, lo: float | None = None, hi: float | None = None) -> str:
    return f"{v:.3f}" if lo is None else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def _nv_of(entry: dict[str, Any] | None, key: str = "normalized_value") -> str:
    """``entry[key]`` with its 95 % interval (``<key>_lo``, ``<key>_hi``); a dash for none."""
    if not entry:
        return "—"
    return _nv(entry[key], entry[f"{key}_lo"], entry[f"{key}_hi"])


def report_tables(states: list[dict[str, Any]]) -> str:
    """The study's Markdown: the summary by hidden world, the hidden worlds' parameters and
    what calibration found, and the table of every round."""
    lines: list[str] = []
    rounds = [len(s["rounds"]) for s in states]
    false = sum(r["false_promotion"] for s in states for r in s["rounds"])
    clearly = sum(
        r["false_promotion"] and r["truth"]["challenger_minus_champion_hi"] < 0
        for s in states
        for r in s["rounds"]
    )
    missed = sum(
        not r["gate"]["cleared"] and r["truth"]["challenger_minus_champion_lo"] > 0
        for s in states
        for r in s["rounds"]
    )
    ratios = [s["rounds"][-1]["truth"]["sim_to_real"] for s in states if s["rounds"]]
    full = [
        s["rounds"][-1]["truth"]["champion_normalized_value"]
        / s["direct_at_budget"]["normalized_value"]
        for s in states
        if s["rounds"] and "direct_at_budget" in s
    ]
    budget = next((s["direct_at_budget"]["budget"] for s in states if "direct_at_budget" in s), 0)
    decided = sum(len(s["rounds"]) for s in states)
    promotions = sum(r["gate"]["cleared"] for s in states for r in s["rounds"])

    def share(key: str) -> list[float]:
        """a cost as a share of the champion's true value without exploration, per round"""
        return [
            r["truth"][key] / r["truth"]["champion_before_normalized_value"]
            for s in states
            for r in s["rounds"]
            if r["truth"]["champion_before_normalized_value"] > 0
        ]

    cost, eps_cost = share("exploration_cost"), share("epsilon_cost")
    settings = states[0]["settings"]
    lines += [
        f"{len(states)} jobs (hidden world × seed), {min(rounds)}–{max(rounds)} rounds each, "
        f"{settings['clients']:,} clients × {settings['days']} days a round, ε "
        f"{settings['epsilon']}, canary share {settings['policy_share']}, {settings['budget']:,} client-days of training per policy, "
        f"truth on {settings['eval_clients']:,} fresh clients × {settings['eval_days']} days × "
        f"{settings['eval_seeds']} seeds of each hidden world.",
        "",
        f"- **False promotions: {false}** of {promotions} promotions ({decided} gate decisions): "
        f"promoted challengers whose true value was below the champion's; {clearly} of them with "
        "the 95 % interval of the true difference below 0.",
        f"- **Missed promotions: {missed}** of {decided - promotions} refusals: challengers truly "
        "better than the champion (the true difference's 95 % interval above 0) that the gate "
        "kept out.",
        f"- **Sim-to-real ratio** after the last round, against the direct agent trained at the "
        f"default agent's budget ({budget:,} client-days): {min(full):.2f} to {max(full):.2f} "
        f"(mean {float(np.mean(full)):.2f}); {sum(x >= 0.85 for x in full)} of {len(full)} jobs "
        "at 0.85 or more."
        if full
        else "- Sim-to-real ratio at the default budget: not measured (mode=direct).",
        f"- Against the direct agent at the loop's own budget: {min(ratios):.2f} to "
        f"{max(ratios):.2f} (a direct agent that failed to learn, below 0, makes its ratio "
        "meaningless)."
        if ratios
        else "- Sim-to-real ratio: no round finished.",
        f"- **Exploration cost** (the champion's true value lost to the challenger's canary share "
        f"and ε, as a share of its value without them): {100 * float(np.mean(cost)):.1f} % on "
        f"average, {100 * float(np.max(cost)):.1f} % at most (negative: the canary gained); ε "
        f"alone {100 * float(np.mean(eps_cost)):.1f} % on average, "
        f"{100 * float(np.max(eps_cost)):.1f} % at most."
        if cost
        else "- Exploration cost: no champion of positive value.",
        "",
        "| hidden world | seed | firm's rules | off the shelf | direct agent (same budget) | "
        "direct agent (default budget) | loop's champion (last round) | sim-to-real (default "
        "budget) | promotions |",
        "|---:|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    for s in states:
        last = s["rounds"][-1]["truth"] if s["rounds"] else None
        champ = _nv_of(last, "champion_normalized_value")
        full_direct = s.get("direct_at_budget")
        ratio = (
            f"{last['champion_normalized_value'] / full_direct['normalized_value']:.2f}"
            if last and full_direct
            else "—"
        )
        lines.append(
            f"| {s['settings']['world']} | {s['settings']['seed']} | "
            f"{_nv(s['firm_rules']['normalized_value'])} | "
            f"{_nv(s['off_the_shelf']['normalized_value'])} | "
            f"{_nv_of(s['direct'])} | {_nv_of(full_direct)} | {champ} | {ratio} | "
            f"{sum(r['gate']['cleared'] for r in s['rounds'])} |"
        )
    lines += [
        "",
        "True normalized value in each hidden world (0 = never sending, 1 = that world's "
        "oracle), with 95 % intervals; sim-to-real = the loop's champion over the direct agent "
        "(the default agent trained on the hidden world's true simulator at the default "
        "agent's budget; the same-budget column trained as long as each challenger).",
        "",
        "| hidden world | "
        + " | ".join(f"`{k.split('.')[-1]}`" for k in HIDDEN_RANGES)
        + " | segments |",
        "|---:|" + "---:|" * (len(HIDDEN_RANGES) + 1),
    ]
    seen = set()
    for s in states:
        w = s["settings"]["world"]
        if w in seen:
            continue
        seen.add(w)
        h = s["hidden"]
        segs = ", ".join(f"{h[k]:.2f}" for k in sorted(h) if k.startswith("population.segment"))
        lines.append(
            f"| {w} | " + " | ".join(f"{h[k]:.3g}" for k in HIDDEN_RANGES) + f" | {segs} |"
        )
    lines += [
        "",
        "| world | seed | round | champion decides | challenger (canary) | log: sends / "
        "clients lost | gate: paired Δ reward [95 % CI] | ESS | decision | challenger (true) | "
        "champion after (true) | exploration cost (ε alone) | false promotion | calibration "
        "for the next (in band) |",
        "|---:|---:|---:|---|---|---|---|---:|---|---:|---:|---|---|---|",
    ]
    for s in states:
        for r in s["rounds"]:
            g, t, c = r["gate"], r["truth"], r.get("calibration")
            decision = "promoted" if g["cleared"] else f"refused ({g['why']})"
            lines.append(
                f"| {s['settings']['world']} | {s['settings']['seed']} | {r['round']} | "
                f"{r['serving']}{' (shadow)' if r['shadow'] else ''} | {r['challenger']} | "
                f"{r['log_sends']:,} / {100 * r['log_clients_lost']:.1f} % | "
                f"{g['diff']:+.4f} [{g['lo']:+.4f}, {g['hi']:+.4f}] | "
                f"{g['ess_challenger']:,.0f} | {decision} | "
                f"{t['challenger_normalized_value']:.3f} | {t['champion_normalized_value']:.3f} | "
                f"{t['exploration_cost']:+.3f} ({t['epsilon_cost']:+.3f}) | "
                f"{'**yes**' if r['false_promotion'] else 'no'} | "
                + (f"{c['met']} of {c['targets']} |" if c else "— |")
            )
    lines += [
        "",
        "Calibration: the fitted response parameters beside the hidden world's (the last fit of "
        "each job).",
        "",
        "| world | seed | "
        + " | ".join(f"`{k.split('.')[-1]}` fitted / hidden" for k in CALIBRATED)
        + " |",
        "|---:|---:|" + "---|" * len(CALIBRATED),
    ]
    for s in states:
        fits = [r["calibration"] for r in s["rounds"] if "calibration" in r]
        if not fits:
            continue
        c = fits[-1]
        cells = [f"{c['fitted'][k]:.3g} / {c['hidden'][k]:.3g}" for k in CALIBRATED]
        lines.append(
            f"| {s['settings']['world']} | {s['settings']['seed']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def plot(states: list[dict[str, Any]], path: Path) -> Path:
    """True normalized value of the loop's champion by round, one panel per hidden world, the
    direct agent and the firm's rules as lines; promotions marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worlds = sorted({s["settings"]["world"] for s in states})
    fig, axes = plt.subplots(1, len(worlds), figsize=(4.2 * len(worlds), 3.4), squeeze=False,
                             sharey=True)  # fmt: skip
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, w in zip(axes[0], worlds, strict=True):
        jobs = [s for s in states if s["settings"]["world"] == w]
        for i, s in enumerate(jobs):
            colour = colours[i % len(colours)]
            x = [0] + [r["round"] for r in s["rounds"]]
            y = [s["firm_rules"]["normalized_value"]] + [
                r["truth"]["champion_normalized_value"] for r in s["rounds"]
            ]
            ax.plot(x, y, "-o", color=colour, label=f"loop, seed {s['settings']['seed']}")
            promoted = [r["round"] for r in s["rounds"] if r["gate"]["cleared"]]
            ax.plot(promoted, [y[x.index(p)] for p in promoted], "*", ms=14, color=colour)
            ax.axhline(s["direct"]["normalized_value"], ls="--", color=colour, lw=1,
                       label=f"direct agent, loop's budget, seed {s['settings']['seed']}")  # fmt: skip
            if "direct_at_budget" in s:
                ax.axhline(s["direct_at_budget"]["normalized_value"], ls="-.", color=colour,
                           lw=1, label=f"direct agent, default budget, seed "
                           f"{s['settings']['seed']}")  # fmt: skip
        ax.axhline(jobs[0]["firm_rules"]["normalized_value"], ls=":", color="grey",
                   label="firm's rules")  # fmt: skip
        ax.set_title(f"hidden world {w}")
        ax.set_xticks(range(max(len(j["rounds"]) for j in jobs) + 1))
        ax.set_xlabel("round (★ promotion)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("true normalized value")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(cfg: ClosedLoopConfig) -> str:
    """Print the study's tables, write them and the plot under ``out`` (and into docs/ with
    ``results=docs``)."""
    from experiment.results import DOCS_RESULTS, write_results

    out = ROOT / cfg.out if not Path(cfg.out).is_absolute() else Path(cfg.out)
    states = load_states(out)
    text = report_tables(states)
    print(text)
    folders = [out] + ([DOCS_RESULTS] if cfg.results == "docs" else [])
    for folder in folders:
        png = plot(states, folder / f"{cfg.name}.png")
        # the docs page that includes the file shows the plot itself (docs/closed-loop.md)
        image = (
            "" if folder == DOCS_RESULTS else f"\n\n![The loop's champion by round]({png.name})\n"
        )
        write_results(cfg.name, text + image, root=folder)
        print(f"wrote {folder / cfg.name}.md and {png}")
    return text


# --------------------------------------------------------------------------------------------
# the command


register()


@hydra.main(version_base=None, config_path="../conf", config_name="closed_loop")
def main(cfg: DictConfig) -> dict[str, Any] | None:
    from experiment.results import note_start

    as_typed(cfg)  # name=1e3 is the text typed, not 1000.0
    note_start()
    run = OmegaConf.to_object(cfg)
    assert isinstance(run, ClosedLoopConfig)
    try:
        check(run)
        if run.mode == "direct":
            return direct_at_budget(run)
        if run.mode == "report":
            report(run)
            return None
        return run_job(run)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def check(run: ClosedLoopConfig) -> None:
    """Refuse settings the study cannot run with, naming the key (:class:`ConfigError`)."""
    if run.mode not in MODES:
        raise ConfigError(f"mode must be one of {list(MODES)}, got {run.mode!r}")
    if run.results not in (None, "docs"):
        raise ConfigError(f"results must be docs or null, got {run.results!r}")
    unknown = sorted(set(run.harm_margin) - set(promotion.HARM_METRICS))
    if unknown:
        raise ConfigError(
            f"harm_margin.{unknown[0]}: not a harm the gate reads; those are "
            f"{list(promotion.HARM_METRICS)}"
        )
    if run.mode != "run":
        return
    if run.rounds < 1 or run.clients < 100 or run.days < 7:
        raise ConfigError(
            f"rounds >= 1, clients >= 100 and days >= 7 are needed, got rounds={run.rounds}, "
            f"clients={run.clients}, days={run.days}"
        )
    if not 0.0 < run.epsilon <= 1.0:
        raise ConfigError(
            f"epsilon must be in (0, 1] (the gate needs exploration), got {run.epsilon}"
        )


if __name__ == "__main__":
    freeze_long_lived()  # the collector's full passes would walk what torch and MLflow made
    main()
