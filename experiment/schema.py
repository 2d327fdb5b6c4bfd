"""The structured config of train.py / evaluate.py, registered in Hydra's ConfigStore.

Hydra's YAML in ``conf/`` only chooses values; these dataclasses define every key (a wrong
key or type stops composition), and :func:`validate_run` checks every range before any work.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from agents.config import AgentConfig
from agents.kinds import kinds, names
from envs.config import EnvConfig, RewardConfig, Setup, eval_seeds, to_setup
from evaluation.crisis import CrisisConfig
from evaluation.ope import PSCORE_FLOOR
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
    num_envs: int | None = None
    """client slots simulated together per vector step while training; None: the agent's
    default (``agents.training.TRAIN_ENVS``), else ``env.num_clients``"""
    device: str = "cpu"
    """torch device the SB3 learners train on: ``cpu``, or ``cuda`` (``cuda:N``) where torch
    finds a CUDA GPU (refused, naming this key, where it does not)"""

    update_threads: int = num(2, 1, 1024)
    """torch threads in the masked agents' update (``agents.training.UPDATE_THREADS``; at most
    the CPUs available and ``OMP_NUM_THREADS`` where set): the same parameters to the last bit as
    1, faster on two cores; the parallel launchers set 1 so that jobs side by side do not contend
    for cores"""

    def check(self, prefix: str) -> None:
        if self.num_envs is not None and not 1 <= self.num_envs <= 10_000_000:
            raise ConfigError(
                f"{prefix}.num_envs must be null or in [1, 10000000], got {self.num_envs}"
            )
        if self.device != "cpu":  # torch is imported only for a device other than the default
            from agents.training import check_device

            check_device(self.device, f"{prefix}.device")


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
    ui: str = "http://127.0.0.1:5000"
    """base address of the MLflow UI (``mlflow ui`` / ``make mlflow-ui``) the links the commands
    print open in: ``<ui>/#/experiments/<experiment id>/runs/<run id>``"""

    def check(self, prefix: str) -> None:
        if not self.ui.startswith(("http://", "https://")):
            raise ConfigError(
                f"{prefix}.ui must be the MLflow UI's address, http://host:port, got {self.ui!r}"
            )


MODES = ("compare", "record", "estimate", "monitor", "watch")
"""``evaluate.py mode=<mode>``: ``compare`` policies on fresh clients (the default), ``record``
a policy's logged dataset, ``estimate`` policies off-policy from a logged dataset, ``monitor``:
the crisis study (each policy with and without the circuit breaker), ``watch`` a logged dataset
with the crisis monitor (and write the serving circuit file)"""


@dataclass
class RecordConfig:
    """``evaluate.py mode=record``: a policy with ε-exploration logged in the simulator, as a
    logged dataset (docs/logged-data.md) of ``eval.num_clients`` clients over
    ``eval.horizon_days`` days, its luck drawn from ``seed``."""

    policy: str = "segment_rules"
    """the logging policy: a heuristic or bandit name, or ``run:<mlflow run id>``"""
    out: str = "outputs/logs.parquet"
    """the Parquet file written (replaced atomically; its folder is made)"""
    epsilon: float = num(0.1, 0.0, 1.0)
    """the logger's exploration: the share of client-days whose action is drawn uniformly from
    the allowed ones (must be > 0: a deterministic log cannot be evaluated)"""
    truth: list[str] = field(default_factory=list)
    """target policies whose counterfactual reward on each logged day is written too (columns
    ``counterfactual_<name>``: the one-step truth ``mode=estimate`` prints beside ips ... dr)"""


@dataclass
class EstimateConfig:
    """``evaluate.py mode=estimate``: off-policy estimates of ``policies`` from a logged dataset
    (ips, snips, dm, dr, pdwis, fqe; the truth beside them for a simulated log)."""

    data: str = "outputs/logs.parquet"
    """the logged Parquet file read (docs/logged-data.md)"""
    soften: float = num(0.1, 0.0, 1.0)
    """ε-softening of each target: 1 − soften on its own action plus soften spread over the
    allowed ones (keeps weights finite where target and logger disagree); 0: the targets as
    they act"""
    pscore_floor: float = num(PSCORE_FLOOR, 1e-300, 1.0)
    """smallest logged propensity weighted as it is (a probability)"""
    below_floor: str = "clip"
    """a logged propensity under ``pscore_floor``: ``clip`` it to the floor (the table counts
    them) or ``refuse`` the log, naming the first such row"""
    mlflow: bool = True
    """log one MLflow run per policy (``false``: print the table only)"""


@dataclass
class WatchConfig:
    """``evaluate.py mode=watch``: the crisis monitor (``crisis.monitor.*``) over a logged
    dataset, day by day: its alert log, and the serving circuit file."""

    data: str = "outputs/logs.parquet"
    """the logged Parquet file read (docs/logged-data.md)"""
    circuit: str | None = None
    """write the serving circuit file here (e.g. ``outputs/circuit.json``), tripping every
    segment still in alert on the log's last day; None: print the alerts only"""
    first_day: str | None = None
    """the date (YYYY-MM-DD) of the log's day 0: each switch in the circuit file is dated by
    its first alert"""


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
    """evaluate.py: policies to compare (``mode=compare``, ``mode=monitor``) or to estimate
    (``mode=estimate``): heuristic or bandit names, or ``run:<mlflow run id>``"""
    experiment_name: str = "default"
    """name of the experiment preset, logged as a tag"""
    mode: str = "compare"
    """evaluate.py: what it does, one of :data:`MODES`; each mode reads its own section
    (``record.*``, ``estimate.*``, ``watch.*``, ``crisis.*``) and refuses another mode's keys"""
    record: RecordConfig = field(default_factory=RecordConfig)
    """evaluate.py ``mode=record``: the logged dataset it writes"""
    estimate: EstimateConfig = field(default_factory=EstimateConfig)
    """evaluate.py ``mode=estimate``: the logged dataset it reads and how targets are weighted"""
    watch: WatchConfig = field(default_factory=WatchConfig)
    """evaluate.py ``mode=watch``: the logged dataset the crisis monitor reads"""
    crisis: CrisisConfig = field(default_factory=CrisisConfig)
    """evaluate.py ``mode=monitor`` (and ``crisis.monitor.*`` for ``mode=watch``): the crisis
    monitor's thresholds, the circuit breaker and its fallback, the study's window"""


MODE_SECTIONS: dict[str, tuple[str, ...]] = {
    "record": ("record",),
    "estimate": ("estimate",),
    "watch": ("watch",),
    "crisis.monitor": ("monitor", "watch"),
    "crisis": ("monitor",),
    "policies": ("compare", "estimate", "monitor"),
}
"""evaluate.py's keys that only some modes read (the longest matching prefix decides); every
other key (``eval.*``, ``scenario``, ``seed``, ``tracking.*``...) is read by every mode"""


def _changed(value: Any, default: Any, key: str) -> list[str]:
    """The dotted keys under ``key`` where ``value`` differs from ``default``."""
    if dataclasses.is_dataclass(value) and dataclasses.is_dataclass(default):
        return [
            k
            for f in dataclasses.fields(value)
            for k in _changed(getattr(value, f.name), getattr(default, f.name), f"{key}.{f.name}")
        ]
    return [] if value == default else [key]


def _readers(key: str) -> tuple[str, ...] | None:
    """The modes that read ``key`` (None: every mode)."""
    prefixes = [p for p in MODE_SECTIONS if key == p or key.startswith(p + ".")]
    return MODE_SECTIONS[max(prefixes, key=len)] if prefixes else None


def check_mode(run: RunConfig, named: Sequence[str] = ()) -> None:
    """Refuse an unknown ``mode`` and any key another mode reads: set away from its default
    (by the command line or a preset) or ``named`` (the keys given on the command line, e.g.
    ``record.epsilon`` from ``record.epsilon=0.1``). One :class:`ConfigError` naming the key."""
    if run.mode not in MODES:
        raise ConfigError(f"mode must be one of {list(MODES)}, got {run.mode!r}")
    default = RunConfig()
    keys = [
        k
        for section in MODE_SECTIONS
        if "." not in section
        for k in _changed(getattr(run, section), getattr(default, section), section)
    ]
    keys += [k.lstrip("+~").split("=", 1)[0] for k in named]
    for key in dict.fromkeys(keys):
        readers = _readers(key)
        if readers is not None and run.mode not in readers:
            modes = " or ".join(f"mode={m}" for m in readers)
            raise ConfigError(
                f"{key} is read by {modes}, not by mode={run.mode}: drop it, or run that mode"
            )
    if run.mode == "record" and not run.record.epsilon > 0:
        raise ConfigError(
            f"record.epsilon must be > 0 (the logger must explore: a log of a deterministic "
            f"policy cannot be evaluated), got {run.record.epsilon}"
        )
    if run.estimate.below_floor not in ("clip", "refuse"):
        raise ConfigError(
            f"estimate.below_floor must be 'clip' or 'refuse', got {run.estimate.below_floor!r}"
        )
    if run.watch.first_day is not None:
        try:
            dt.date.fromisoformat(str(run.watch.first_day))
        except ValueError:
            raise ConfigError(
                f"watch.first_day must be a date YYYY-MM-DD, got {run.watch.first_day!r}"
            ) from None


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
    validate(run.record, "record")
    validate(run.estimate, "estimate")
    validate(run.tracking, "tracking")
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
