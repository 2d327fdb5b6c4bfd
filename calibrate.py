"""The realism scorecard: run every simulated protocol on a population and set each statistic
beside its target and band; print the table, draw the curves, log it all to MLflow.

    python calibrate.py report                                    # default population, targets/financial_services.yaml
    python calibrate.py report population=default clients=20000 seed=1
    python calibrate.py report targets=my_firm.yaml env.response.click_base=-3.2
    python calibrate.py fit params=[env.response.click_base,env.response.complaint_base] name=fs_fit
    python calibrate.py fit targets=my_firm.yaml params=[env.response.open_base] range.env.response.open_base=-3:0 trials=80
    python calibrate.py fit logs=logs.parquet policy=segment_rules params=[env.response.open_base,env.response.click_base] name=from_logs

Keys: ``population=``, ``env=``, ``scenario=`` (presets in conf/), ``targets=`` (a targets file,
see realism/targets.py), ``clients=`` (fresh clients per protocol run, default 5,000),
``seed=``, ``tracking.uri=``, and any dotted population/env key as an override. The run goes
to MLflow experiment ``cadence-realism``: params, a metric ``realism/<statistic>`` per
statistic, ``realism/in_band`` (targets met) and ``realism/targets`` (targets named), and the
table (Markdown + Parquet) and plots as artifacts.

``fit`` searches ``params=[...]`` (population.* and env.response.* numbers; Optuna,
``sampler=auto`` (CMA-ES for two or more parameters, TPE for one), ``tpe`` or ``cmaes``, ``trials=`` default 40, ``range.<param>=low:high``) to bring the
targets' statistics to their targets, on ``clients=`` (default 2,000) fresh clients with common
random numbers, then writes the preset ``conf/population/<name>.yaml`` (``name=``, default
``fitted``; an existing file is kept unless ``overwrite=true``): the population, and the
``env.response`` keys that differ from their defaults, so ``population=<name>`` alone brings the
fitted clients back, logs the
search to MLflow and prints the fitted scorecard.

``fit logs=<file>`` calibrates to a firm's own logged dataset instead (docs/logged-data.md): the
targets are the log's statistics (open rate by channel and slot, response by weekly volume and by
days since the last send, unsubscribes by volume, organic visits, churn; realism/fromlogs.py),
each band its 95 % bootstrap interval over clients. The simulated side runs ``policy=<name>`` (the
logging policy, at the exploration rate its propensities show) on as many fresh clients for as
many days, or, without ``policy=``, replays the logged sends on fresh clients (open loop). It
writes the preset and ``<name>_report.md`` beside the log (the log, the simulator before, the
fitted simulator, statistic by statistic), and logs both to MLflow.

A fit's outputs are kept together or not at all: the preset, the report and the MLflow runs are
written to temporaries and renamed into place only once all of them are made, so a failure at any
step (a report that cannot be written, an MLflow store that fails) keeps none of them and the same
``name=`` works again. The whole fit holds a lock on its name (``.locks/fit-<name>.lock``, the
kernel's: it ends with the process), so a second fit of the same name meanwhile is refused.
Errors the user can fix print one ``error:`` line and exit 2.

The protocols are in realism/protocols.py, the search in realism/fit.py, the real datasets'
side in realism/data.py.
"""

from __future__ import annotations

import math
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import polars as pl  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from envs.config import load_setup  # noqa: E402
from experiment.tracking import ROOT, git_commit, hold, setup_mlflow  # noqa: E402
from realism import protocols  # noqa: E402
from realism.targets import Targets, load_targets  # noqa: E402
from simulate.config import ConfigError  # noqa: E402

EXPERIMENT = "cadence-realism"
DEFAULTS: dict[str, Any] = {
    "population": "default",
    "env": "default",
    "scenario": "calm",
    "targets": str(ROOT / "targets" / "financial_services.yaml"),
    "clients": 5000,
    "seed": 0,
    "tracking.uri": None,
}
FIT_DEFAULTS: dict[str, Any] = {
    "params": None,
    "name": "fitted",
    "trials": 40,
    "sampler": "auto",
    "overwrite": "false",
    "logs": None,
    "policy": None,
}
COMMANDS = ("report", "fit")


def parse(argv: list[str]) -> tuple[str, dict[str, Any], list[str]]:
    """(command, settings, dotted overrides) from ``report|fit key=value ...``; errors name the key."""
    if not argv or argv[0] not in COMMANDS:
        raise ConfigError(
            f"usage: python calibrate.py {{{','.join(COMMANDS)}}} [key=value ...]; got {argv[:1]}"
        )
    command = argv[0]
    settings, overrides = dict(DEFAULTS), []
    if command == "fit":
        settings |= FIT_DEFAULTS | {"clients": 2000, "ranges": {}}
    for arg in argv[1:]:
        if "=" not in arg:
            raise ConfigError(f"{arg!r} is not key=value")
        key, value = arg.split("=", 1)
        if key in DEFAULTS or (command == "fit" and key in FIT_DEFAULTS):
            settings[key] = value
        elif command == "fit" and key.startswith("range."):
            settings["ranges"][key[len("range.") :]] = _interval(key, value)
        elif key.startswith(("population.", "env.", "scenario.")):
            overrides.append(arg)
        else:
            raise ConfigError(
                f"unknown key {key!r}; use {sorted(DEFAULTS)} or a dotted population./env./scenario. key"
            )
    for key in ("clients", "seed", "trials"):
        if key not in settings:
            continue
        try:
            settings[key] = int(settings[key])
        except ValueError as exc:
            raise ConfigError(f"{key} must be a whole number, got {settings[key]!r}") from exc
    if settings["clients"] < 100:
        raise ConfigError(f"clients must be >= 100, got {settings['clients']}")
    if command == "fit":
        settings["params"] = _names(settings["params"])
        settings["overwrite"] = str(settings["overwrite"]).lower() in ("true", "1", "yes")
        from realism.fit import SAMPLERS

        if settings["sampler"] not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {SAMPLERS}, got {settings['sampler']!r}")
        if settings["trials"] < 1:
            raise ConfigError(f"trials must be >= 1, got {settings['trials']}")
        if not re.fullmatch(r"[A-Za-z0-9_]{1,100}", settings["name"]):
            raise ConfigError(
                f"name must be 1 to 100 letters, digits and _, got {settings['name']!r}"
            )
        if settings["policy"] is not None:
            _check_policy(settings["policy"])
    return command, settings, overrides


def _check_policy(name: str) -> None:
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


def preset_yaml(setup, header: str = "") -> str:
    """The population preset of a fitted setup: its population, and the response keys that differ
    from the documented defaults (a calibrated book of clients responds differently too)."""
    import dataclasses

    from envs.config import GLOBAL_PACKAGE
    from simulate.config import ResponseConfig

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


def _names(value: str | None) -> list[str]:
    if not value:
        raise ConfigError("params is required: params=[env.response.click_base,...]")
    names = [n.strip() for n in value.strip().strip("[]").split(",") if n.strip()]
    if not names:
        raise ConfigError("params names no parameter")
    return names


def _interval(key: str, value: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value.split(":"))
    except ValueError as exc:
        raise ConfigError(f"{key} must be low:high, got {value!r}") from exc
    return low, high


def scorecard(simulated: dict[str, float], targets: Targets) -> pl.DataFrame:
    """One row per statistic: the targeted ones first, in the file's order, then the rest."""
    rows = []
    for t in targets.targets:
        value = simulated[t.statistic]
        rows.append(
            {
                "statistic": t.statistic,
                "target": t.target,
                "low": t.low,
                "high": t.high,
                "simulated": value,
                "in_band": bool(t.holds(value)),
                "weight": t.weight,
            }
        )
    named = set(targets.names())
    for name, value in simulated.items():
        if name not in named:
            rows.append(
                {
                    "statistic": name,
                    "target": None,
                    "low": None,
                    "high": None,
                    "simulated": value,
                    "in_band": None,
                    "weight": None,
                }
            )
    return pl.DataFrame(rows)


def markdown(table: pl.DataFrame) -> str:
    lines = [
        "| statistic | target | band | simulated | in band |",
        "|---|---:|---|---:|:---:|",
    ]
    for r in table.iter_rows(named=True):
        if r["target"] is None:
            lines.append(f"| {r['statistic']} | | | {r['simulated']:.4g} | |")
            continue
        band = f"[{_g(r['low'])}, {_g(r['high'])}]"
        mark = "yes" if r["in_band"] else "**no**"
        lines.append(
            f"| {r['statistic']} | {_g(r['target'])} | {band} | {r['simulated']:.4g} | {mark} |"
        )
    return "\n".join(lines)


def _g(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.4g}"


def plots(simulated: dict[str, float], folder: Path, targets: Targets | None = None) -> list[Path]:
    """Volume, recovery and time-of-day curves (what the ratios in the table summarise), and the
    bank protocol's success by contact, over the data's where the targets hold them."""
    out = []
    k = list(range(1, 8))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(
        k, [simulated[f"volume/clicks_per_message/{i}"] for i in k], "o-", label="per message"
    )
    axes[0].plot(
        k,
        [simulated[f"volume/clicks_per_client_week/{i}"] for i in k],
        "s-",
        label="per client-week",
    )
    axes[0].set(xlabel="e-mails a week", ylabel="clicks", title="volume: response")
    axes[0].legend()
    axes[1].plot(
        k,
        [100 * simulated[f"volume/unsubscribes_per_message/{i}"] for i in k],
        "o-",
        label="unsubscribes",
    )
    axes[1].plot(
        k,
        [100 * simulated[f"volume/complaints_per_message/{i}"] for i in k],
        "s-",
        label="complaints",
    )
    axes[1].set(xlabel="e-mails a week", ylabel="% per message", title="volume: cost")
    axes[1].legend()
    gaps = list(protocols.GAPS)
    axes[2].plot(gaps, [simulated[f"recovery/second_vs_first/{g}"] for g in gaps], "o-")
    axes[2].axhline(1.0, color="grey", lw=0.8)
    axes[2].set(
        xscale="log",
        xlabel="days since the same content",
        ylabel="second click rate / first",
        title="recovery",
    )
    fig.tight_layout()
    out.append(folder / "volume_recovery.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)

    from simulate.labels import SLOT_KEYS

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.bar(SLOT_KEYS, [100 * simulated[f"time_of_day/push_click_rate/{s}"] for s in SLOT_KEYS])
    ax.set(ylabel="clicks per push (%)", title="time of day: weekday push (target peak: evening)")
    fig.tight_layout()
    out.append(folder / "time_of_day.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)

    labels = [*map(str, range(1, 10)), "10plus"]
    names = ["bank/success_rate/contact_1"] + [
        f"bank/relative_success/contact_{k}" for k in labels[1:]
    ]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(labels, [1.0] + [simulated[n] for n in names[1:]], "o-", label="simulated")
    named = set(targets.names()) if targets else set()
    if all(n in named for n in names[1:]):
        real = [targets[n] for n in names[1:]]
        ax.errorbar(
            labels,
            [1.0] + [t.target for t in real],
            yerr=[
                [0.0] + [t.target - t.low for t in real],
                [0.0] + [t.high - t.target for t in real],
            ],
            fmt="s--",
            capsize=3,
            label="data (band)",
        )
    ax.set(
        xlabel="contact number",
        ylabel="success / first contact's",
        title="bank protocol: repeated offers",
    )
    ax.legend()
    fig.tight_layout()
    out.append(folder / "bank_contacts.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)
    return out


def simulated_targets(path: str) -> Targets:
    """A targets file whose every statistic a simulated protocol computes (unknown names fail,
    named, before any work)."""
    return load_targets(path, protocols.statistic_names())


def report(settings: dict[str, Any], overrides: list[str], progress: bool = True) -> str:
    """Run every protocol, print and log the scorecard; returns the MLflow run id."""
    targets = simulated_targets(settings["targets"])
    setup = load_setup(
        env=settings["env"],
        population=settings["population"],
        scenario=settings["scenario"],
        seed=settings["seed"],
        overrides=overrides,
    )
    setup_mlflow(settings["tracking.uri"], EXPERIMENT)
    simulated = simulate_protocols(setup, settings, progress)
    run_id = log_scorecard(simulated, targets, settings, overrides)
    print_scorecard(simulated, targets, settings, run_id)
    return run_id


def simulate_protocols(setup, settings: dict[str, Any], progress: bool) -> dict[str, float]:
    """Every protocol's statistics on ``settings['clients']`` fresh clients of ``setup``."""
    simulated: dict[str, float] = {}
    for protocol in tqdm(
        protocols.PROTOCOLS.values(), desc="protocols", disable=not progress, unit="protocol"
    ):
        simulated.update(protocol(setup, settings["clients"], settings["seed"]))
    return simulated


def log_scorecard(
    simulated: dict[str, float], targets: Targets, settings: dict[str, Any], overrides: list[str]
) -> str:
    """One MLflow run holding the scorecard (params, a metric per statistic, table, plots);
    returns its id."""
    table = scorecard(simulated, targets)
    work = Path(tempfile.mkdtemp(prefix="cadence-realism-"))
    (work / "scorecard.md").write_text(
        f"targets: {settings['targets']}\nsource: {targets.source}\n\n{markdown(table)}\n"
    )
    table.write_parquet(work / "scorecard.parquet")
    plots(simulated, work, targets)
    with mlflow.start_run(
        run_name=f"report {settings['population']}",
        tags={
            "command": "report",
            "population": settings["population"],
            "targets": Path(settings["targets"]).name,
            "git_commit": git_commit(),
        },
    ) as run:
        mlflow.log_params(
            {
                **{k: str(v) for k, v in settings.items() if k != "tracking.uri"},
                "overrides": " ".join(overrides),
            }
        )
        mlflow.log_metrics(
            {f"realism/{k}": v for k, v in simulated.items() if math.isfinite(v)}
            | {
                "realism/in_band": int(table["in_band"].sum()),
                "realism/targets": len(targets.targets),
            }
        )
        mlflow.log_artifacts(str(work), "scorecard")
    return run.info.run_id


def print_scorecard(
    simulated: dict[str, float], targets: Targets, settings: dict[str, Any], run_id: str
) -> None:
    table = scorecard(simulated, targets)
    print(markdown(table))
    print(
        f"\n{int(table['in_band'].sum())} of {len(targets.targets)} targets in band "
        f"({settings['population']} population, {settings['clients']:,} clients per protocol "
        f"run, seed {settings['seed']}); MLflow run {run_id} in experiment {EXPERIMENT}"
    )


def free(key: str, path: Path, overwrite: bool) -> None:
    """Refuse, by ``key``, a destination that is a directory or other non-file, or one that
    exists without ``overwrite=true``."""
    if not (path.exists() or path.is_symlink()):
        return
    if not path.is_file():
        raise ConfigError(
            f"{key}: {path} exists and is not a file; remove it or pick another name="
        )
    if not overwrite:
        raise ConfigError(f"{key}: {path} exists; pick another name= or pass overwrite=true")


class Unit:
    """A fit's outputs kept or lost together: each file is written to a hidden temporary beside
    its destination (:meth:`stage`), the MLflow runs are made and recorded (:meth:`add_run`), then
    every file is renamed into place (:meth:`commit`); on any failure :meth:`abort` removes the
    temporaries, deletes the runs and puts back whatever a commit had already replaced. Use it
    through :func:`one_unit`, under the fit's name lock."""

    def __init__(self, overwrite: bool) -> None:
        self.overwrite = overwrite
        self.files: list[tuple[str, Path, Path]] = []
        """(key, temporary, destination) of each staged file"""
        self.runs: list[str] = []
        self.placed: list[tuple[Path, Path | None]] = []
        """(destination, backup of the file it replaced or None) of each file already renamed"""

    def stage(self, key: str, path: Path, text: str) -> None:
        """Write ``text`` to a temporary beside ``path`` (mode 0644 less the umask); a
        :class:`ConfigError` naming ``key`` and ``path`` when it cannot be written."""
        free(key, path, self.overwrite)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a fit that was killed
            stale.unlink(missing_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            self.files.append((key, temporary, path))
            with os.fdopen(fd, "w") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            raise ConfigError(f"{key}: cannot write {path}: {exc.strerror or exc}") from exc

    def add_run(self, run_id: str) -> None:
        self.runs.append(run_id)

    def commit(self) -> None:
        """Rename every staged file into place (an existing one moved aside until all are)."""
        for key, temporary, path in self.files:
            free(key, path, self.overwrite)
            try:
                self.placed.append((path, _replace(temporary, path)))
            except OSError as exc:
                raise ConfigError(f"{key}: cannot write {path}: {exc.strerror or exc}") from exc
        for _, backup in self.placed:
            if backup is not None:
                backup.unlink(missing_ok=True)
        self.files, self.placed = [], []

    def abort(self) -> list[str]:
        """Undo everything; returns what could not be undone (each a sentence)."""
        left = []
        for path, backup in reversed(self.placed):
            try:
                path.unlink(missing_ok=True)
                if backup is not None:
                    os.replace(backup, path)
            except OSError as exc:
                left.append(f"{path}: {exc.strerror or exc}")
        for _, temporary, _ in self.files:
            temporary.unlink(missing_ok=True)
        for run_id in self.runs:
            try:
                mlflow.MlflowClient().delete_run(run_id)
            except Exception as exc:  # the store may be what failed
                left.append(f"MLflow run {run_id} could not be deleted ({type(exc).__name__})")
        self.files, self.placed, self.runs = [], [], []
        return left


def _replace(temporary: Path, path: Path) -> Path | None:
    """Rename ``temporary`` to ``path``, the file it replaces moved aside first (its backup is
    returned, None if there was none) and put back if the rename fails."""
    backup = None
    if path.exists() or path.is_symlink():
        backup = path.with_name(f".{path.name}.{os.getpid()}.old")
        os.replace(path, backup)
    try:
        os.replace(temporary, path)
    except OSError:
        if backup is not None:
            os.replace(backup, path)
        raise
    return backup


@contextmanager
def one_unit(settings: dict[str, Any]) -> Iterator[Unit]:
    """A :class:`Unit` committed when the block ends, aborted if it raises (anything, Ctrl-C
    included). A failure to log to MLflow or to write a file becomes a :class:`ConfigError`
    saying that nothing was kept and that the same ``name=`` may be used again."""
    unit = Unit(settings["overwrite"])
    try:
        yield unit
        unit.commit()
    except BaseException as exc:
        left = unit.abort()
        tail = "; not undone: " + "; ".join(left) if left else ""
        if isinstance(exc, ConfigError):
            raise ConfigError(f"{exc}; nothing was kept{tail}") from exc
        if isinstance(exc, (mlflow.exceptions.MlflowException, OSError)):
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ConfigError(
                f"mlflow: logging the fit failed ({type(exc).__name__}: {first}); nothing was "
                f"kept, so name={settings['name']} may be used again{tail}"
            ) from exc
        raise


def fit_lock(settings: dict[str, Any]):
    """The lock on the fit's ``name=``, held for the whole fit: a second fit of the same name
    meanwhile is refused."""
    name = settings["name"]
    return hold(
        f"fit-{name}",
        f"name: a fit named {name} is in progress; pick another name= or wait for it to end",
    )


def _header(source: str, detail: str, settings: dict[str, Any], best: dict, study) -> str:
    """The comment a fitted preset opens with: how it was fitted and the values."""
    return (
        f"# Fitted by python calibrate.py fit {source} ({settings['trials']} trials, {detail}, "
        f"seed {settings['seed']}; objective {study.best_value:.4g}).\n# Fitted: "
        + ", ".join(f"{k}={v:.6g}" for k, v in best.items())
        + "\n"
    )


def _log_search(study, best: dict[str, float]) -> None:
    """The search's objective per trial and the fitted values, to the active run."""
    for trial in study.trials:
        if trial.value is not None:
            mlflow.log_metric("fit/objective", trial.value, step=trial.number)
    mlflow.log_metrics({f"fit/{k}": v for k, v in best.items()} | {"fit/best": study.best_value})


def run_fit(settings: dict[str, Any], overrides: list[str], progress: bool = True) -> dict:
    """Search, write the fitted preset, log the search and the fitted scorecard, print the
    scorecard; returns the fitted values. The preset and both MLflow runs are kept together or
    not at all, under a lock on ``name=``."""
    with fit_lock(settings):
        return _run_fit(settings, overrides, progress)


@contextmanager
def _kept_fit(
    settings: dict[str, Any],
    files: list[tuple[str, Path, str]],
    run_name: str,
    tags: dict[str, str],
    params: dict[str, Any],
    study,
    best: dict[str, float],
    metrics: dict[str, float],
    artifacts: list[tuple[str, str]],
) -> Iterator[Unit]:
    """A fit's unit of work (:func:`one_unit`), entered with ``files`` (key, destination, text)
    staged and the fit's MLflow run made (tags ``command=fit``, ``tags``, ``git_commit``): its
    ``params``, the search, ``metrics`` and ``artifacts`` (text, artifact path). The caller may
    add to the unit (a second run) in the block; it is committed when the block ends, aborted if
    anything in it raises."""
    with one_unit(settings) as unit:
        for key, path, text in files:
            unit.stage(key, path, text)
        with mlflow.start_run(
            run_name=run_name, tags={"command": "fit", **tags, "git_commit": git_commit()}
        ) as run:
            unit.add_run(run.info.run_id)
            mlflow.log_params(params)
            _log_search(study, best)
            for key, value in metrics.items():
                mlflow.log_metric(key, value)
            for text, artifact in artifacts:
                mlflow.log_text(text, artifact)
        yield unit


def _preset_path(settings: dict[str, Any]) -> Path:
    """Where the fitted preset goes: ``conf/population/<name>.yaml``."""
    return ROOT / "conf" / "population" / f"{settings['name']}.yaml"


def _run_fit(settings: dict[str, Any], overrides: list[str], progress: bool) -> dict:
    from realism.calibration import PRESET_KEYS, fitted_setup
    from realism.fit import apply, fit, parameters

    targets = simulated_targets(settings["targets"])
    presets = {k: settings[k] for k in PRESET_KEYS}
    base = load_setup(**presets, seed=settings["seed"], overrides=overrides)
    parameters(settings["params"], base, settings["ranges"])  # every name and range checked first
    path = _preset_path(settings)
    free("name", path, settings["overwrite"])
    setup_mlflow(settings["tracking.uri"], EXPERIMENT)

    def make_setup(values: dict[str, float]):
        return apply(base, values)

    best, study = fit(
        targets,
        settings["params"],
        make_setup,
        base,
        settings["clients"],
        settings["seed"],
        settings["trials"],
        settings["sampler"],
        settings["ranges"],
        progress,
    )
    fitted = fitted_setup(presets, settings["seed"], overrides, best)
    header = _header(
        f"to {Path(settings['targets']).name}",
        f"{settings['sampler']}, {settings['clients']:,} clients",
        settings,
        best,
        study,
    )
    text = preset_yaml(fitted, header)
    chosen = dict(settings) | {"population": settings["name"]}
    simulated = simulate_protocols(fitted, chosen, progress)
    params = {
        "params": ",".join(settings["params"]),
        "trials": settings["trials"],
        "sampler": settings["sampler"],
        "clients": settings["clients"],
        "seed": settings["seed"],
        "name": settings["name"],
        "overrides": " ".join(overrides),
    }
    with _kept_fit(
        settings,
        [("name", path, text)],
        f"fit {settings['name']}",
        {"targets": Path(settings["targets"]).name},
        params,
        study,
        best,
        {},
        [(text, f"presets/{path.name}")],
    ) as unit:
        kept = [o for o in overrides if o.split("=")[0] not in best]
        unit.add_run(report_id := log_scorecard(simulated, targets, chosen, kept))
    print(f"wrote {path}")
    print_scorecard(simulated, targets, chosen, report_id)
    return best


def fit_logs(settings: dict[str, Any], overrides: list[str], progress: bool = True) -> dict:
    """``fit logs=<file>``: calibrate to a logged dataset (:mod:`realism.calibration`); writes
    the preset and the report beside the log and logs both to MLflow, all kept together or not
    at all, under a lock on ``name=``; returns the fitted values."""
    with fit_lock(settings):
        return _fit_logs(settings, overrides, progress)


def _fit_logs(settings: dict[str, Any], overrides: list[str], progress: bool) -> dict:
    from realism import calibration

    path = _preset_path(settings)
    out = Path(settings["logs"]).with_name(f"{settings['name']}_report.md")
    free("name", path, settings["overwrite"])
    free("report", out, settings["overwrite"])
    presets = {k: settings[k] for k in calibration.PRESET_KEYS}
    base = load_setup(**presets, seed=settings["seed"], overrides=overrides)
    side = calibration.prepare(
        settings["logs"],
        base,
        settings["params"],
        settings["ranges"],
        settings["policy"],
        settings["seed"],
    )
    setup_mlflow(settings["tracking.uri"], EXPERIMENT)
    result = calibration.search(
        side,
        base,
        presets,
        overrides,
        settings["params"],
        settings["ranges"],
        settings["seed"],
        settings["trials"],
        settings["sampler"],
        progress,
    )
    best, study = result.best, result.study
    header = _header(
        f"logs={Path(settings['logs']).name}",
        f"{settings['sampler']}; simulated side: {side.how}",
        settings,
        best,
        study,
    )
    text = result.report(settings["name"], settings["logs"])
    preset = preset_yaml(result.fitted, header)
    params = {
        "params": ",".join(settings["params"]),
        "trials": settings["trials"],
        "policy": str(settings["policy"]),
        "seed": settings["seed"],
        "name": settings["name"],
    }
    with _kept_fit(
        settings,
        [("name", path, preset), ("report", out, text)],
        f"fit {settings['name']} from logs",
        {"logs": Path(settings["logs"]).name},
        params,
        study,
        best,
        {"realism/in_band": result.met},
        [(preset, f"presets/{path.name}"), (text, f"scorecard/{out.name}")],
    ):
        pass
    print(text)
    print(f"wrote {path} and {out}")
    return best


def main(argv: list[str] | None = None) -> int:
    try:
        command, settings, overrides = parse(sys.argv[1:] if argv is None else argv)
        if command == "report":
            report(settings, overrides)
        elif settings["logs"]:
            fit_logs(settings, overrides)
        else:
            if settings["policy"]:
                raise ConfigError("policy: names the logging policy of logs=; give logs= too")
            run_fit(settings, overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
