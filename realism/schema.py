"""The command line of ``python calibrate.py`` (a Hydra app, ``conf/calibrate.yaml``): its
keys (:class:`CalibrateConfig`, registered in Hydra's ConfigStore by :func:`register`), which
mode reads which, and :func:`check`, which turns a composed config into checked
:class:`Settings` before any work. A key the chosen mode does not read is refused, naming the
mode that does; errors are :class:`ConfigError` naming the key.

======  =====================================================================================
mode    keys (besides ``mode``)
======  =====================================================================================
report  ``targets clients seed``, the presets ``env population scenario`` and their dotted
        keys, ``tracking``
fit     ``targets clients seed params name trials sampler range logs policy overwrite``, the
        presets and their dotted keys, ``tracking``; with ``logs=`` not ``targets``, ``clients``
data    none
======  =====================================================================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from envs.config import EnvConfig, Setup, to_setup
from envs.reward import RewardConfig
from realism.calibration import check_policy
from realism.data import TARGETS_DIR
from realism.fit import SAMPLERS, parameter_list, parameter_ranges
from realism.scorecard import EXPERIMENT
from realism.targets import parameter_tree
from simulate.config import ConfigError, PopulationConfig, ScenarioConfig

DEFAULT_TARGETS = TARGETS_DIR / "financial_services.yaml"
MODES = ("report", "fit", "data")
KEYS = {
    "report": {"targets", "clients", "seed"},
    "fit": {"targets", "clients", "seed", "params", "name", "trials", "sampler", "range"}
    | {"logs", "policy", "overwrite"},
    "data": set(),
}
"""the keys each mode reads besides ``mode`` and (report, fit) the setup's and ``tracking``"""
SETUP = ("population", "env", "scenario")
"""the preset groups of the setup (conf/setup.yaml) a report or fit is run in"""
SETUP_KEYS = {*SETUP, "tracking"}


@dataclass
class TrackingConfig:
    """Where calibrate.py logs: the keys of train.py's ``tracking``, its own experiment."""

    uri: str | None = None
    """MLflow tracking URI; None: $MLFLOW_TRACKING_URI, else sqlite:///<project root>/mlflow.db"""
    experiment: str = EXPERIMENT
    """MLflow experiment name"""


@dataclass
class CalibrateConfig:
    """What calibrate.py reads; ``mode`` says which of the other keys apply."""

    mode: str = "report"
    """report (the scorecard), fit (search parameters, to targets= or to logs=) or data"""
    targets: str | None = None
    """report, fit: a targets file (realism/targets.py); None: targets/financial_services.yaml"""
    clients: int | None = None
    """report, fit: fresh clients per protocol run; None: 5,000 (report), 2,000 (fit)"""
    seed: int = 0
    """report, fit: fixes the clients and their luck (and the search's sampler)"""
    params: Any = None
    """fit: the parameters to search, ``[population.X,env.response.Y,...]`` (required)"""
    name: str = "fitted"
    """fit: the preset written, conf/population/<name>.yaml"""
    trials: int = 40
    """fit: trials of the search"""
    sampler: str = "auto"
    """fit: auto (CMA-ES for two or more parameters, TPE for one), tpe or cmaes"""
    range: dict[str, Any] = field(default_factory=parameter_tree)
    """fit: ``range.<param>=LOW:HIGH`` sets a parameter's search interval (default: its value
    plus or minus max(|value|, 1), within its allowed range)"""
    logs: str | None = None
    """fit: fit to this logged Parquet file's statistics instead of targets= (no targets=, clients=)"""
    policy: str | None = None
    """fit, with logs=: the logging policy, re-run on fresh clients (none: the sends replayed)"""
    overwrite: bool = False
    """fit: replace an existing preset (and report) of the same name"""
    env: EnvConfig = field(default_factory=EnvConfig)
    population: PopulationConfig = field(default_factory=PopulationConfig)
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    """composed with the setup (conf/setup.yaml); no mode reads it, so ``reward=`` is refused"""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def register() -> None:
    """Register :class:`CalibrateConfig` as ``calibrate_schema`` in Hydra's ConfigStore
    (idempotent); ``conf/calibrate.yaml`` composes it."""
    ConfigStore.instance().store(name="calibrate_schema", node=CalibrateConfig)


@dataclass(frozen=True)
class Settings:
    """A checked command: the config, the preset names chosen, the dotted setup overrides given,
    the setup they make, and the defaults of the mode filled in."""

    cfg: CalibrateConfig
    presets: dict[str, str]
    overrides: list[str]
    setup: Setup
    targets: str
    clients: int
    params: list[str]
    ranges: dict[str, tuple[float, float]]

    def logged(self) -> dict[str, Any]:
        """The MLflow params of a scorecard run."""
        return self.presets | {
            "targets": self.targets,
            "clients": self.clients,
            "seed": self.cfg.seed,
        }


def check(cfg: DictConfig, given: Sequence[str], choices: Mapping[str, str]) -> Settings:
    """Check a composed config against its mode (``given``: the command-line overrides,
    ``choices``: the presets chosen); a :class:`ConfigError` names the first wrong key."""
    run: CalibrateConfig = OmegaConf.to_object(cfg)
    if run.mode not in MODES:
        raise ConfigError(f"mode must be one of {list(MODES)}, got {run.mode!r}")
    keys = [o.lstrip("+~").split("=", 1)[0] for o in given]
    _refuse_foreign(run, keys)
    clients = run.clients if run.clients is not None else (5000 if run.mode == "report" else 2000)
    if clients < 100:
        raise ConfigError(f"clients must be >= 100, got {clients}")
    if run.mode == "fit":
        _check_fit(run)
    dotted = [o for o, k in zip(given, keys, strict=True) if "." in k and k.split(".")[0] in SETUP]
    return Settings(
        run,
        {k: choices.get(k, "default") for k in SETUP},
        dotted,
        to_setup(cfg) if run.mode != "data" else Setup(),
        run.targets or str(DEFAULT_TARGETS),
        clients,
        parameter_list(run.params) if run.mode == "fit" else [],
        parameter_ranges(run.range),
    )


def _reads(mode: str) -> set[str]:
    """The top-level keys ``mode`` reads besides ``mode``."""
    return KEYS[mode] | (SETUP_KEYS if mode != "data" else set())


def _refuse_foreign(run: CalibrateConfig, keys: list[str]) -> None:
    """A :class:`ConfigError` for the first key ``run.mode`` does not read, saying who does."""
    allowed = _reads(run.mode)
    if run.mode == "fit" and run.logs is not None:
        allowed -= {"targets", "clients"}
    for key in keys:
        top = key.split(".")[0]
        if top == "mode" or top in allowed:
            continue
        owners = [m for m in MODES if top in _reads(m) and m != run.mode]
        if run.mode == "fit" and top in KEYS["fit"]:
            why = "a fit to logs= takes its targets and its number of clients from the log"
        elif owners:
            why = "it is a key of " + " and ".join(f"mode={m}" for m in owners)
        else:
            why = "no mode reads it" + (" (the protocols score no reward)" * (top == "reward"))
        raise ConfigError(f"{key}: mode={run.mode} does not read it; {why}")


def _check_fit(run: CalibrateConfig) -> None:
    if run.sampler not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {SAMPLERS}, got {run.sampler!r}")
    if run.trials < 1:
        raise ConfigError(f"trials must be >= 1, got {run.trials}")
    if not re.fullmatch(r"[A-Za-z0-9_]{1,100}", run.name):
        raise ConfigError(f"name must be 1 to 100 letters, digits and _, got {run.name!r}")
    if run.policy is not None and run.logs is None:
        raise ConfigError("policy: names the logging policy of logs=; give logs= too")
    if run.policy is not None:
        check_policy(run.policy)
