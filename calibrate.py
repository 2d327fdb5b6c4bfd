"""Calibrate the simulator: the realism scorecard, fits of its parameters to targets or to a
firm's own log, and the real datasets' targets. A Hydra app like train.py (``--help`` lists every
key); ``mode=`` chooses what it does, and a key of another mode is refused, naming it.

    python calibrate.py                                     # mode=report: the default population's scorecard
    python calibrate.py population=hillstrom targets=targets/hillstrom.yaml clients=10000 seed=1
    python calibrate.py env.response.click_base=-3.2        # any dotted env./population./scenario. key
    python calibrate.py mode=fit params=[env.response.click_base,env.response.complaint_base] name=fs_fit
    python calibrate.py mode=fit params=[env.response.open_base] range.env.response.open_base=-3:0 trials=80
    python calibrate.py mode=fit logs=logs.parquet policy=segment_rules params=[env.response.open_base] name=from_logs
    python calibrate.py mode=data                           # the real datasets' protocols -> targets/*.yaml

``mode=report`` runs every protocol (realism/protocols.py) on ``clients=`` fresh clients
(default 5,000) and prints, and logs to MLflow (``tracking.experiment``, default
``cadence-realism``), the scorecard (realism/scorecard.py). ``mode=fit`` searches ``params=``
(Optuna, realism/fit.py) on ``clients=`` (default 2,000) to bring ``targets=`` to their targets,
or with ``logs=`` (realism/calibration.py) the log's own statistics, and writes the preset
``conf/population/<name>.yaml`` (``name=``, default ``fitted``; kept unless ``overwrite=true``),
with ``logs=`` also ``<name>_report.md`` beside the log. A fit's outputs are kept together or not
at all (realism/staging.py) under a lock on its name (``.locks/fit-<name>.lock``). Hydra's own
files go under ``outputs/calibrate/``. Errors the user can fix print one ``error:`` line and exit 2.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from envs.config import CONF_DIR, conf_dir
from experiment.process import freeze_long_lived, strings_as_typed
from experiment.tracking import git_commit, hold, setup_mlflow
from realism import calibration, scorecard, staging
from realism.fit import apply, fit, parameters
from realism.schema import Settings, check, register
from simulate.config import ConfigError

register()


def _tags(s: Settings, population: str) -> dict[str, str]:
    return {"population": population, "targets": Path(s.targets).name, "git_commit": git_commit()}


def _log(s: Settings, simulated: dict[str, float], population: str, overrides: list[str]) -> str:
    """Log the scorecard of ``simulated`` to MLflow; its run id."""
    return scorecard.log_scorecard(
        simulated,
        scorecard.simulated_targets(s.targets),
        s.targets,
        s.logged() | {"population": population, "overrides": " ".join(overrides)},
        {"command": "report", **_tags(s, population)},
    )


def _print(s: Settings, simulated: dict[str, float], population: str, run_id: str) -> None:
    what = (population, s.clients, s.cfg.seed, run_id, s.cfg.tracking.experiment)
    print(scorecard.printout(simulated, scorecard.simulated_targets(s.targets), *what))


def report(s: Settings, progress: bool = True) -> str:
    """``mode=report``: every protocol's statistics, printed and logged; the MLflow run id."""
    scorecard.simulated_targets(s.targets)  # a bad file fails before any work
    setup_mlflow(s.cfg.tracking.uri, s.cfg.tracking.experiment)
    simulated = scorecard.simulate_protocols(s.setup, s.clients, s.cfg.seed, progress)
    run_id = _log(s, simulated, s.presets["population"], s.overrides)
    _print(s, simulated, s.presets["population"], run_id)
    return run_id


def run_fit(s: Settings, progress: bool = True) -> dict[str, float]:
    """``mode=fit``: search, then write the preset (and with ``logs=`` the report) and log the
    search, all kept together or not at all, under a lock on ``name=``; the fitted values."""
    name = s.cfg.name
    refusal = f"name: a fit named {name} is in progress; pick another name= or wait for it to end"
    with hold(f"fit-{name}", refusal):
        return (_fit_logs if s.cfg.logs else _fit_targets)(s, progress)


def _preset_path(s: Settings) -> Path:
    """Where the fitted preset goes: ``conf/population/<name>.yaml``."""
    return CONF_DIR / "population" / f"{s.cfg.name}.yaml"


def _fit_params(s: Settings) -> dict[str, Any]:
    keys = ("trials", "sampler", "seed", "name", "policy")
    return {"params": ",".join(s.params), **{k: str(getattr(s.cfg, k)) for k in keys}}


def _fit_targets(s: Settings, progress: bool) -> dict[str, float]:
    cfg, base = s.cfg, s.setup
    targets = scorecard.simulated_targets(s.targets)
    parameters(s.params, base, s.ranges)  # every name and range checked first
    path = _preset_path(s)
    staging.free("name", path, cfg.overwrite)
    setup_mlflow(cfg.tracking.uri, cfg.tracking.experiment)
    best, study = fit(
        targets, s.params, lambda values: apply(base, values), base, s.clients, cfg.seed,
        cfg.trials, cfg.sampler, s.ranges, progress,
    )  # fmt: skip
    fitted = calibration.fitted_setup(base, best)
    detail = f"{cfg.sampler}, {s.clients:,} clients"
    header = calibration.preset_header(
        f"to {Path(s.targets).name}", detail, cfg.trials, cfg.seed, best, study
    )
    text = calibration.preset_yaml(fitted, header)
    simulated = scorecard.simulate_protocols(fitted, s.clients, cfg.seed, progress)
    params = _fit_params(s) | {"clients": s.clients, "overrides": " ".join(s.overrides)}
    with staging.kept_fit(
        cfg.name, cfg.overwrite, [("name", path, text)], f"fit {cfg.name}",
        _tags(s, cfg.name), params, study, best, {}, [(text, f"presets/{path.name}")],
    ) as unit:  # fmt: skip
        kept = [o for o in s.overrides if o.split("=")[0] not in best]
        unit.add_run(run_id := _log(s, simulated, cfg.name, kept))
    print(f"wrote {path}")
    _print(s, simulated, cfg.name, run_id)
    return best


def _fit_logs(s: Settings, progress: bool) -> dict[str, float]:
    cfg, base = s.cfg, s.setup
    path, out = _preset_path(s), Path(cfg.logs).with_name(f"{cfg.name}_report.md")
    staging.free("name", path, cfg.overwrite)
    staging.free("report", out, cfg.overwrite)
    side = calibration.prepare(cfg.logs, base, s.params, s.ranges, cfg.policy, cfg.seed)
    setup_mlflow(cfg.tracking.uri, cfg.tracking.experiment)
    result = calibration.search(
        side, base, s.params, s.ranges, cfg.seed, cfg.trials, cfg.sampler, progress
    )
    detail = f"{cfg.sampler}; simulated side: {side.how}"
    header = calibration.preset_header(
        f"logs={Path(cfg.logs).name}", detail, cfg.trials, cfg.seed, result.best, result.study
    )
    text = result.report(cfg.name, cfg.logs)
    preset = calibration.preset_yaml(result.fitted, header)
    with staging.kept_fit(
        cfg.name, cfg.overwrite, [("name", path, preset), ("report", out, text)],
        f"fit {cfg.name} from logs", {"logs": Path(cfg.logs).name, "git_commit": git_commit()},
        _fit_params(s), result.study, result.best, {"realism/in_band": result.met},
        [(preset, f"presets/{path.name}"), (text, f"scorecard/{out.name}")],
    ):  # fmt: skip
        pass
    print(text)
    print(f"wrote {path} and {out}")
    return result.best


def data(s: Settings, progress: bool = True) -> str:
    """``mode=data``: the real datasets' protocols, printed, and their targets files written."""
    from realism.data import write_real_targets

    text = write_real_targets()
    print(text)
    return text


COMMANDS = {"report": report, "fit": run_fit, "data": data}


def run(
    cfg: DictConfig, given: Sequence[str], choices: Mapping[str, str], progress: bool = True
) -> int:
    """The command ``cfg`` says (``given``: the overrides typed, ``choices``: the presets chosen);
    its exit status: 0, or 2 after one ``error:`` line for an error the user can fix."""
    try:
        settings = check(strings_as_typed(cfg, given), given, choices)  # name=1e3: as typed
        COMMANDS[settings.cfg.mode](settings, progress)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def compose(argv: Sequence[str]) -> tuple[DictConfig, list[str], dict[str, str]]:
    """The config ``python calibrate.py *argv`` composes, the overrides and the presets chosen
    (Hydra's compose API: for tests and scripts that run the command in process)."""
    from hydra import compose as hydra_compose

    with conf_dir():
        cfg = hydra_compose("calibrate", overrides=list(argv), return_hydra_config=True)
    given, choices = list(cfg.hydra.overrides.task), dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, given, choices


def load(argv: Sequence[str]) -> Settings:
    """The checked :class:`Settings` of ``python calibrate.py *argv``."""
    cfg, given, choices = compose(argv)
    return check(strings_as_typed(cfg, given), given, choices)


def cli(argv: Sequence[str], progress: bool = True) -> int:
    """``python calibrate.py *argv`` in process; its exit status."""
    return run(*compose(argv), progress=progress)


@hydra.main(version_base="1.3", config_path="conf", config_name="calibrate")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    status = run(cfg, list(hydra_cfg.overrides.task), dict(hydra_cfg.runtime.choices))
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    freeze_long_lived()  # the collector's full passes would walk what torch and MLflow made
    sys.exit(main())
