"""The structured config of train.py / evaluate.py, registered in Hydra's ConfigStore.

Hydra's YAML in ``conf/`` only chooses values; these dataclasses define every key (a wrong
key or type stops composition), and :func:`validate_run` checks every range before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from agents.config import AgentConfig
from agents.kinds import kinds, names
from envs.config import EnvConfig, RewardConfig, Setup, eval_seeds, to_setup
from evaluation.crisis import CrisisConfig
from simulate.config import ConfigError, PopulationConfig, ScenarioConfig, num, validate


@dataclass
class TrainerConfig:
    """How long and how a learner trains."""

    total_timesteps: int = num(6_000_000, 1, 10_000_000_000)
    """client-days of experience (slots x days)"""
    checkpoint_every: int = num(1_000_000, 1, 10_000_000_000)
    """client-days between checkpoints (SB3 agents; logged as MLflow artifacts)"""
    progress: bool = True
    """show a progress bar"""


@dataclass
class EvalConfig:
    """Evaluation on fresh clients (ids training never used), with common random numbers."""

    num_clients: int = num(2000, 10, 10_000_000)
    """fresh clients per seed"""
    horizon_days: int = num(90, 1, 3650)
    """days each client is followed"""
    num_seeds: int = num(3, 1, 100)
    """evaluation seeds (``envs.config.EVAL_SEED_BASE`` = 1000, 1001, ...: :attr:`seeds`)"""
    n_boot: int = num(200, 10, 100_000)
    """bootstrap replicates for the confidence intervals"""
    baselines: list[str] = field(default_factory=lambda: ["segment_rules"])
    """heuristics train.py evaluates beside the trained policy on the same clients; the best of
    them (by normalized value) is the yardstick of the ``eval/margin/*`` metrics"""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """the weights every evaluated policy's value is scored with, whatever ``reward`` it trained
    on: a ``conf/reward/`` preset (``reward@eval.reward=<name>``; default ``balanced``)"""

    @property
    def seeds(self) -> range:
        """The evaluation seeds: ``num_seeds`` of them from ``envs.config.EVAL_SEED_BASE``."""
        return eval_seeds(self.num_seeds)

    def check(self, prefix: str) -> None:
        heuristics = names("heuristic")
        unknown = [b for b in self.baselines if b not in heuristics]
        if unknown:
            raise ConfigError(
                f"{prefix}.baselines must name heuristics {list(heuristics)}, got {unknown}"
            )


@dataclass
class TrackingConfig:
    """Where runs are logged."""

    uri: str | None = None
    """MLflow tracking URI; None: $MLFLOW_TRACKING_URI, else sqlite:///<project root>/mlflow.db"""
    experiment: str = "cadence"
    """MLflow experiment name"""


@dataclass
class RunConfig:
    """Everything ``python train.py`` and ``python evaluate.py`` read."""

    env: EnvConfig = field(default_factory=EnvConfig)
    population: PopulationConfig = field(default_factory=PopulationConfig)
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    agent: AgentConfig = MISSING
    """the chosen kind's own config (``agent=<name>``: ``conf/agent/<name>.yaml`` over the
    kind's dataclass, stored as ``agent_schema/<name>``): a key the kind lacks is refused"""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = num(0, 0, 2**32 - 1)
    """training seed (evaluation uses its own seeds and clients)"""
    resume: str | None = None
    """MLflow run id of an interrupted run to continue (train.py)"""
    policies: list[str] = field(
        default_factory=lambda: ["random", "batch_and_blast", "segment_rules"]
    )
    """evaluate.py: policies to compare: heuristic or bandit names, or ``run:<mlflow run id>``"""
    experiment_name: str = "default"
    """name of the experiment preset, logged as a tag"""
    log: str | None = None
    """evaluate.py: log this policy (a name from ``policies``' vocabulary) with ε-exploration as a
    logged dataset written to ``out`` (``eval.num_clients`` clients, ``eval.horizon_days`` days,
    ``log_epsilon``), instead of comparing"""
    out: str | None = None
    """evaluate.py: the Parquet file ``log=`` writes (replaced atomically)"""
    log_epsilon: float = num(0.1, 0.0, 1.0)
    """evaluate.py: exploration of ``log=``; also the softening of the targets of ``logs=``"""
    log_truth: list[str] = field(default_factory=list)
    """evaluate.py: with ``log=``, policies whose counterfactual reward on each logged day is
    written too (columns ``counterfactual_<name>``: the one-step truth of those targets)"""
    monitor: str = "off"
    """evaluate.py: ``on`` runs the crisis study: each policy with and without the circuit
    breaker (``crisis.*``) on the same clients and luck, under the scenario and under calm,
    reporting ``crisis/*`` metrics and a timeline plot; ``off`` compares policies as usual"""
    crisis: CrisisConfig = field(default_factory=CrisisConfig)
    """the crisis monitor's thresholds, the circuit breaker and its fallback, the study's window"""
    logs: str | None = None
    """evaluate.py: estimate ``policies`` off-policy from this logged Parquet file (IPS, SNIPS,
    DM, DR, PDWIS, FQE; the truth beside them for a simulated log) instead of simulating them"""


def register() -> None:
    """Register the schema as ``schema`` in Hydra's ConfigStore, and each agent kind's config
    dataclass as ``agent_schema/<name>`` (what ``conf/agent/<name>.yaml`` extends); idempotent."""
    store = ConfigStore.instance()
    store.store(name="schema", node=RunConfig)
    for k in kinds():
        store.store(group="agent_schema", name=k.name, node=k.config(name=k.name))


def validate_run(cfg: Any) -> tuple[RunConfig, Setup]:
    """Check every value of a composed config; returns the typed config and the env setup."""
    try:
        run: RunConfig = OmegaConf.to_object(cfg) if not isinstance(cfg, RunConfig) else cfg
    except Exception as exc:  # OmegaConf reports the full key
        raise ConfigError(str(exc)) from exc
    validate(run.agent, "agent")
    validate(run.trainer, "trainer")
    validate(run.eval, "eval")
    validate(run.crisis, "crisis")
    run.monitor = {"true": "on", "false": "off"}.get(str(run.monitor).lower(), str(run.monitor))
    if run.monitor not in ("on", "off"):
        raise ConfigError(f"monitor must be 'on' or 'off', got {run.monitor!r}")
    setup = to_setup(
        {
            "env": cfg.env,
            "population": cfg.population,
            "scenario": cfg.scenario,
            "reward": cfg.reward,
            "seed": cfg.seed,
        }
    )
    return run, setup
