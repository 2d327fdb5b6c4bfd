"""Calibrating the simulator to a firm's logged dataset: the library side of
``python calibrate.py mode=fit logs=<file>``.

Two steps, so a caller can do its own work between them (``calibrate.py`` points MLflow at its
store there, before the first simulation):

* :func:`prepare` reads the log under the base setup's guardrails, takes its statistics as the
  targets (:func:`realism.fromlogs.targets`), checks the parameters to search and chooses the
  simulated side: the logging ``policy`` re-run at the exploration rate its propensities show
  (:func:`realism.fromlogs.relog`), or, without one, the logged sends replayed on fresh clients
  (:func:`realism.fromlogs.replay`);
* :func:`search` runs the search (:func:`realism.fit.fit`) on as many fresh clients as the log
  holds, and computes the statistics before and after it.

:func:`fit_to_logs` does both. The result (:class:`LogFit`) holds the fitted values, the search,
the fitted setup and the statistics; :meth:`LogFit.report` is the Markdown report statistic by
statistic; :func:`preset_yaml` the preset a fit writes. Writing the preset and the report and
logging to MLflow is the command's (``calibrate.py``, with :mod:`realism.staging`), as is the
lock on a fit's name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
from omegaconf import OmegaConf

from envs.config import GLOBAL_PACKAGE, Setup, load_setup, to_setup
from realism import fromlogs
from realism.fit import apply, fit, parameters
from realism.targets import Targets
from simulate.config import ConfigError, ResponseConfig


def fitted_setup(base: Setup, best: dict[str, float]) -> Setup:
    """``base`` with the fitted values ``best`` set, through the checked config path once more
    (every value range-checked as a config value)."""
    fitted = OmegaConf.merge(
        OmegaConf.structured(base), OmegaConf.from_dotlist([f"{k}={v!r}" for k, v in best.items()])
    )
    return to_setup(fitted)


def preset_yaml(setup: Setup, header: str = "") -> str:
    """The population preset of a fitted setup, ``header`` (comment lines) first: its population,
    and the response keys that differ from the documented defaults (a calibrated book of clients
    responds differently too)."""
    defaults = ResponseConfig()
    response = {
        f.name: getattr(setup.env.response, f.name)
        for f in dataclasses.fields(ResponseConfig)
        if getattr(setup.env.response, f.name) != getattr(defaults, f.name)
    }
    population = OmegaConf.structured(setup.population)
    if not response:
        return header + OmegaConf.to_yaml(population)
    body = OmegaConf.create({"population": population, "env": {"response": response}})
    return GLOBAL_PACKAGE + "\n" + header + OmegaConf.to_yaml(body)


def preset_header(source: str, detail: str, trials: int, seed: int, best: dict, study) -> str:
    """The comment a fitted preset opens with: how it was fitted (``source``: what to, ``detail``:
    the sampler and the simulated side), the objective reached and the fitted values."""
    return (
        f"# Fitted by python calibrate.py mode=fit {source} ({trials} trials, {detail}, "
        f"seed {seed}; objective {study.best_value:.4g}).\n# Fitted: "
        + ", ".join(f"{k}={v:.6g}" for k, v in best.items())
        + "\n"
    )


def check_policy(name: str) -> None:
    """``policy=`` must name a logging policy that runs without training (the simulated side
    re-runs it); a :class:`ConfigError` saying what to give instead."""
    from agents.config import AGENTS, BANDITS, HEURISTIC_AGENTS

    runnable = [*HEURISTIC_AGENTS, *BANDITS, "oracle"]
    instead = "or leave policy= out to replay the logged sends on fresh clients (open loop)"
    if name not in AGENTS:
        raise ConfigError(
            f"policy must name the log's logging policy, one of {runnable}, got {name!r}; {instead}"
        )
    if name not in runnable:
        raise ConfigError(
            f"policy: {name} learns in training, and calibration re-runs the logging policy "
            f"without training, so it must be one of {runnable}; {instead}"
        )


@dataclass(frozen=True)
class LoggedSide:
    """A log prepared for a fit: its statistics as targets, its size, and the simulated side."""

    frame: pl.DataFrame
    targets: Targets
    clients: int
    """distinct clients in the log (the simulated side runs as many fresh ones)"""
    days: int
    """distinct logged days (the simulated side runs as many)"""
    how: str
    """the simulated side, in words (for the report and the preset's header)"""
    statistics: Callable[[Setup], dict[str, float]]
    """a setup's simulated statistics, made the way ``how`` says"""


def prepare(
    logs: str,
    base: Setup,
    params: Sequence[str],
    ranges: dict[str, tuple[float, float]],
    policy: str | None,
    seed: int,
) -> LoggedSide:
    """Read ``logs`` (it must keep ``base``'s guardrails), take its statistics as the targets,
    check ``params`` and ``ranges`` against ``base``, and choose the simulated side (``policy``
    re-run, or the logged sends replayed without one). Every error a user can fix is a
    :class:`ConfigError` naming the key (``logs:``, ``policy:``, or the parameter)."""
    from evaluation.logs import LogError, read_logs

    try:  # the log must keep the guardrails of the setup it is fitted in
        frame = read_logs(logs, guardrails=base.env.guardrails)
    except (LogError, OSError) as exc:
        raise ConfigError(f"logs: {exc}") from exc
    targets = fromlogs.targets(frame, seed=seed, source=f"logs {logs}")
    if not targets.targets:
        raise ConfigError(f"logs: {logs} has too few sends for any statistic")
    parameters(params, base, ranges)
    clients, days = frame["client_id"].n_unique(), frame["day"].n_unique()
    if policy:
        from agents.config import AgentConfig
        from agents.registry import make_policy

        logger = make_policy(AgentConfig(name=policy))
        try:
            epsilon = fromlogs.log_epsilon(frame, logger, base)
        except ValueError as exc:
            raise ConfigError(f"policy: {exc}") from exc

        def statistics(setup: Setup) -> dict[str, float]:
            return fromlogs.statistics(
                fromlogs.relog(setup, logger, clients, days, seed, epsilon), thin=True
            )

        how = f"{policy} re-run at ε {epsilon:.3g}"
    else:

        def statistics(setup: Setup) -> dict[str, float]:
            return fromlogs.statistics(fromlogs.replay(setup, frame, seed), thin=True)

        how = "the logged sends replayed (open loop)"
    return LoggedSide(frame, targets, clients, days, how, statistics)


@dataclass(frozen=True)
class LogFit:
    """A fit to a log: the fitted values, the Optuna study, the fitted setup and the log's
    statistics on the simulator before and after the fit."""

    side: LoggedSide
    best: dict[str, float]
    study: Any
    """the :class:`optuna.Study` of the search"""
    fitted: Setup
    before: dict[str, float]
    after: dict[str, float]

    @property
    def met(self) -> int:
        """how many of the log's statistics the fitted simulator holds within their bands"""
        return sum(
            t.holds(self.after.get(t.statistic, math.nan)) for t in self.side.targets.targets
        )

    def report(self, name: str, logs: str) -> str:
        """The Markdown report: the log, the simulator before, the fitted simulator, statistic by
        statistic, with whether each fitted value lies in the log's 95 % band."""
        side = self.side
        lines = [
            f"# {name}: the simulator fitted to {logs}",
            "",
            f"{side.clients:,} clients x {side.days} days; simulated side: {side.how}.",
            f"Fitted: {', '.join(f'{k} = {v:.4g}' for k, v in self.best.items())}.",
            "",
            "| statistic | logs | 95 % band | simulator before | fitted | in band |",
            "|---|---:|---|---:|---:|:---:|",
        ]
        for t in side.targets.targets:
            b = self.before.get(t.statistic, math.nan)
            a = self.after.get(t.statistic, math.nan)
            mark = "yes" if t.holds(a) else "**no**"
            lines.append(
                f"| {t.statistic} | {t.target:.4g} | [{t.low:.4g}, {t.high:.4g}] | {b:.4g} | "
                f"{a:.4g} | {mark} |"
            )
        lines += [
            "",
            f"{self.met} of {len(side.targets.targets)} statistics in band after the fit.",
        ]
        return "\n".join(lines) + "\n"


def search(
    side: LoggedSide,
    base: Setup,
    params: Sequence[str],
    ranges: dict[str, tuple[float, float]],
    seed: int,
    trials: int,
    sampler: str,
    progress: bool = True,
) -> LogFit:
    """Search ``params`` (``trials`` trials of ``sampler``) to bring the simulated side's
    statistics to the log's, starting from ``base``; the statistics are computed on the base
    setup first and the fitted one last."""
    before = side.statistics(base)
    best, study = fit(
        side.targets,
        params,
        lambda values: apply(base, values),
        base,
        side.clients,
        seed,
        trials,
        sampler,
        ranges,
        progress,
        statistics=side.statistics,
    )
    fitted = fitted_setup(base, best)
    return LogFit(side, best, study, fitted, before, side.statistics(fitted))


def fit_to_logs(
    logs: str,
    params: Sequence[str],
    policy: str | None = None,
    presets: dict[str, str] | None = None,
    overrides: Sequence[str] = (),
    ranges: dict[str, tuple[float, float]] | None = None,
    seed: int = 0,
    trials: int = 40,
    sampler: str = "auto",
    progress: bool = True,
) -> LogFit:
    """Fit ``params`` of the setup of ``presets`` (default: the default env, population and the
    calm scenario) and ``overrides`` to the log at ``logs``: :func:`prepare` then :func:`search`.
    Nothing is written."""
    presets = dict(presets or {"env": "default", "population": "default", "scenario": "calm"})
    ranges = dict(ranges or {})
    base = load_setup(**presets, seed=seed, overrides=list(overrides))
    side = prepare(logs, base, params, ranges, policy, seed)
    return search(side, base, params, ranges, seed, trials, sampler, progress)
