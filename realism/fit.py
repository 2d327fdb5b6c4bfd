"""Calibration by simulated moments: search population and response parameters so the
scorecard's statistics come to their targets.

Each trial sets the parameters, runs only the protocols the targets need on the same fresh
clients with the same luck (common random numbers: the objective moves only with the
parameters, so it is smooth and cheap), and scores the misses: the sum over targets of
``weight * ((simulated - target) / scale) ** 2``, ``scale`` the band's half-width (the distance
from the target to the finite edge for a one-sided band). Optuna's TPE or CMA-ES sampler
proposes the next trial (default: CMA-ES for two or more parameters, TPE for one).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from envs.config import Setup
from realism import protocols
from realism.targets import Targets, check_parameters
from simulate.config import ConfigError, PopulationConfig, ResponseConfig

if TYPE_CHECKING:  # optuna is imported where a search runs (its import takes ~1.4 s)
    import optuna

PREFIX_PROTOCOL = {
    "email/": "levels",
    "email_mix/": "varied_mix",
    "volume/": "volume",
    "recovery/": "recovery",
    "time_of_day/": "time_of_day",
    "urgency/": "urgency",
    "bank/": "bank_contacts",
    "hillstrom/": "hillstrom",
}
SAMPLERS = ("auto", "tpe", "cmaes")
"""auto: CMA-ES for two or more parameters (the objective is smooth under common random
numbers), TPE for one (CMA-ES needs two)"""
PENALTY = 1e6
"""objective of a trial whose statistics are not finite (e.g. no complaints to divide by) or
whose protocol cannot run (the Hillstrom protocol finds too few customers)"""


@dataclass(frozen=True)
class Parameter:
    """A searched parameter and its range."""

    name: str
    low: float
    high: float
    start: float


def needed_protocols(targets: Targets) -> list[str]:
    """The protocols that compute the targets' statistics, in protocol order."""
    names = set()
    for statistic in targets.names():
        match = [p for prefix, p in PREFIX_PROTOCOL.items() if statistic.startswith(prefix)]
        if not match:
            raise ConfigError(f"targets: no simulated protocol computes {statistic!r}")
        names.add(match[0])
    return [p for p in protocols.PROTOCOLS if p in names]


def _field(name: str) -> dataclasses.Field:
    group, key = name.rsplit(".", 1)
    schema = PopulationConfig if group == "population" else ResponseConfig
    return next(f for f in dataclasses.fields(schema) if f.name == key)


def _current(setup: Setup, name: str) -> float:
    group, key = name.rsplit(".", 1)
    return float(getattr(setup.population if group == "population" else setup.env.response, key))


def parameters(
    names: Sequence[str], base: Setup, ranges: dict[str, tuple[float, float]] | None = None
) -> list[Parameter]:
    """Each named parameter with its search range: ``ranges`` where given, else the current value
    plus or minus max(|value|, 1), within the parameter's allowed range."""
    out = []
    for name in check_parameters(names):
        meta, start = _field(name).metadata, _current(base, name)
        lo_allowed = meta.get("lo") if meta.get("lo") is not None else -math.inf
        hi_allowed = meta.get("hi") if meta.get("hi") is not None else math.inf
        if ranges and name in ranges:
            low, high = ranges[name]
            if not lo_allowed <= low < high <= hi_allowed:
                raise ConfigError(
                    f"range.{name}: [{low}, {high}] must be an interval within "
                    f"[{lo_allowed}, {hi_allowed}]"
                )
        else:
            span = max(abs(start), 1.0)
            low, high = max(start - span, lo_allowed), min(start + span, hi_allowed)
        out.append(Parameter(name, float(low), float(high), start))
    unknown = sorted(set(ranges or {}) - set(names))
    if unknown:
        raise ConfigError(f"range given for {unknown}, which params does not name")
    return out


def parameter_list(value: Any) -> list[str]:
    """The parameters of ``params=``: a list of names, or one string of comma-separated names
    (brackets allowed); a :class:`ConfigError` when it names none."""
    if not value:
        raise ConfigError("params is required: params=[env.response.click_base,...]")
    if isinstance(value, str):
        value = value.strip().strip("[]").split(",")
    names = [str(n).strip() for n in value if str(n).strip()]
    if not names:
        raise ConfigError("params names no parameter")
    return names


def parameter_ranges(tree: Mapping[str, Any], prefix: str = "") -> dict[str, tuple[float, float]]:
    """The search intervals of ``range.<param>=LOW:HIGH`` (``tree`` nested by the names' dots,
    unset ones None and left out), by parameter name; a :class:`ConfigError` naming a value that
    is not LOW:HIGH."""
    out: dict[str, tuple[float, float]] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out |= parameter_ranges(value, f"{prefix}{key}.")
        elif value is not None:
            try:
                low, high = (float(v) for v in str(value).split(":"))
            except ValueError as exc:
                raise ConfigError(f"range.{prefix}{key} must be low:high, got {value!r}") from exc
            out[f"{prefix}{key}"] = (low, high)
    return out


def apply(base: Setup, values: dict[str, float]) -> Setup:
    """``base`` with the parameter ``values`` set (names as :func:`parameters` checked them; the
    search keeps each inside its allowed range). A copy: ``base`` is not changed."""
    population = {k.split(".")[-1]: v for k, v in values.items() if k.startswith("population.")}
    response = {k.split(".")[-1]: v for k, v in values.items() if k.startswith("env.response.")}
    env = dataclasses.replace(base.env, response=dataclasses.replace(base.env.response, **response))
    return dataclasses.replace(
        base, env=env, population=dataclasses.replace(base.population, **population)
    )


def simulate(setup: Setup, names: Sequence[str], clients: int, seed: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in names:
        out.update(protocols.PROTOCOLS[name](setup, clients, seed))
    return out


def scale(target) -> float:
    if math.isfinite(target.low) and math.isfinite(target.high):
        half = (target.high - target.low) / 2
    else:
        edge = target.low if math.isfinite(target.low) else target.high
        half = abs(target.target - edge) if math.isfinite(edge) else abs(target.target)
    return half if half > 0 else max(abs(target.target), 1e-9)


def objective(simulated: dict[str, float], targets: Targets) -> float:
    total = 0.0
    for t in targets.targets:
        value = simulated.get(t.statistic, math.nan)
        if not math.isfinite(value):
            return PENALTY
        total += t.weight * ((value - t.target) / scale(t)) ** 2
    return total


def fit(
    targets: Targets,
    names: Sequence[str],
    make_setup: Callable[[dict[str, float]], Setup],
    base: Setup,
    clients: int,
    seed: int,
    trials: int,
    sampler: str = "auto",
    ranges: dict[str, tuple[float, float]] | None = None,
    progress: bool = True,
    statistics: Callable[[Setup], dict[str, float]] | None = None,
) -> tuple[dict[str, float], optuna.Study]:
    """Search ``names`` to bring the statistics to ``targets``; returns the best values and the
    study. ``make_setup(values)`` builds the world of one trial; ``statistics(setup)`` computes a
    trial's statistics (default: the protocols the targets need, on ``clients`` and ``seed``)."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if trials < 1:
        raise ConfigError(f"trials must be >= 1, got {trials}")
    space = parameters(names, base, ranges)
    if statistics is None:
        needed = needed_protocols(targets)

        def statistics(setup: Setup) -> dict[str, float]:
            return simulate(setup, needed, clients, seed)

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if sampler == "auto":
        sampler = "cmaes" if len(space) >= 2 else "tpe"
    chosen = (
        optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, trials))
        if sampler == "tpe"
        else optuna.samplers.CmaEsSampler(seed=seed, x0={p.name: p.start for p in space})
    )
    study = optuna.create_study(direction="minimize", sampler=chosen)
    study.enqueue_trial({p.name: p.start for p in space})  # the starting point is trial 0

    def run_trial(trial: optuna.Trial) -> float:
        values = {p.name: trial.suggest_float(p.name, p.low, p.high) for p in space}
        try:
            simulated = statistics(make_setup(values))
        except ValueError:  # a protocol cannot run at these values (e.g. nobody ever buys)
            return PENALTY
        return objective(simulated, targets)

    study.optimize(run_trial, n_trials=trials, show_progress_bar=progress)
    return dict(study.best_params), study
