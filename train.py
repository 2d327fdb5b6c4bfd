"""Train any agent from config, evaluate it on fresh clients, and log everything to MLflow.

    python train.py                                   # default: PPO-Lagrangian, default population, balanced reward
    python train.py agent=linucb reward=engagement seed=3 trainer.total_timesteps=200000
    python train.py -m agent=ppo,linucb seed=0,1,2    # a sweep: one parent run, a child per job
    python train.py resume=<mlflow run id>            # continue an interrupted run from its checkpoint
    python train.py results=docs                      # also write docs/results/default_agent.md

The comparison (the tables it prints and the headline: the agent against the best baseline
heuristic) is written as Markdown to ``outputs/train/<run id>/results.md`` and logged with the
run; ``results=docs`` also writes it to ``docs/results/default_agent.md``, the file the docs
include for the default agent's figures (run it with the default settings).

A resume holds a lock on its run (``.locks/resume-<run id>.lock`` under the project, the kernel's
``flock``: it ends with the process, crash or not) from its checks to its end, so a second resume
of the same run on this machine meanwhile is refused by name. Errors the user can fix print one
``error:`` line and exit 2.

Tracking URI: ``tracking.uri=`` or $MLFLOW_TRACKING_URI, else sqlite:///<project root>/mlflow.db.
"""

from __future__ import annotations

import json
import math
import re
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import mlflow
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from agents.config import AgentConfig
from agents.kinds import kind
from agents.registry import make_policy, save_policy, train_agent
from envs.config import Setup
from evaluation.compare import (
    TABLE,
    compare,
    markdown_table,
    tier_table,
)
from experiment import plots
from experiment.process import as_typed, freeze_long_lived
from experiment.reporting import (
    best_heuristic,
    evaluation_clients,
    log_comparison,
    log_margin_intervals,
    log_margins,
    log_view,
    train_run_name,
)
from experiment.results import DOCS_RESULTS, note_start, write_results
from experiment.schema import RunConfig, register, validate_run
from experiment.tracking import (
    find_run,
    flatten,
    git_commit,
    hold,
    setup_mlflow,
    sweep_id,
    sweep_parent,
)
from simulate.config import ConfigError

register()

RESULTS = ("run", "docs")
"""where train.py writes its comparison's Markdown: ``run`` (the run's folder only) or ``docs``"""
RUN_RESULTS = Path("outputs") / "train"
"""``<run id>/results.md`` under this folder (relative to the working directory)"""


@dataclass
class TrainConfig(RunConfig):
    """What ``python train.py`` reads: the run config and where its comparison is written."""

    results: str = "run"
    """``run``: the comparison's Markdown goes to ``outputs/train/<run id>/results.md`` (always
    written, and logged with the run); ``docs``: also to ``docs/results/default_agent.md``, the
    file the docs include for the default agent"""


def register_train_config() -> None:
    """Store :class:`TrainConfig` as the ``schema`` that ``conf/config.yaml`` composes (train.py
    only: evaluate.py composes the plain :class:`RunConfig`, which has no ``results``)."""
    register()
    ConfigStore.instance().store(name="schema", node=TrainConfig)


def say(message: str) -> None:
    """Print a status line (a fresh Console each time: jobs are pickled to parallel workers)."""
    Console(width=160).print(message)


def _choices() -> dict[str, str]:
    try:
        return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items()}
    except ValueError:  # not running under Hydra (tests call run_training directly)
        return {}


def _tags(cfg: DictConfig, choices: dict[str, str]) -> dict[str, str]:
    return {
        "agent": str(cfg.agent.name),
        "reward": str(cfg.reward.name),
        "scenario": str(cfg.scenario.name),
        "population": choices.get("population", "default"),
        "seed": str(cfg.seed),
        "experiment": str(cfg.get("experiment_name", "default")),
        "git_commit": git_commit(),
    }


RESUMABLE = (
    "trainer.total_timesteps",
    "trainer.progress",
    "trainer.checkpoint_every",
    "trainer.device",
    "trainer.update_threads",
    "tracking.uri",
    "tracking.ui",
    "resume",
    "results",
)
"""keys a resume may set; everything else comes back from the interrupted run's config"""


def _override_keys(overrides: list[str]) -> list[tuple[str, str]]:
    return [(o.split("=", 1)[0].lstrip("+~"), o) for o in overrides]


def prepare_resume(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The config to resume ``cfg.resume`` with: the interrupted run's own config, with only the
    resumable keys taken from ``overrides``. Refuses, touching nothing, a run that does not
    exist, has FINISHED, or has no checkpoint, and any other override."""
    run_id = str(cfg.resume)
    setup_mlflow(cfg.tracking.uri, cfg.tracking.experiment)
    found = find_run(run_id, "resume")
    if found.info.status == "FINISHED":
        raise ConfigError(
            f"resume: run {run_id} FINISHED; there is nothing to resume (start a new run)"
        )
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "checkpoints")}
    if "checkpoints/latest.zip" not in artifacts:
        raise ConfigError(
            f"resume: run {run_id} has no checkpoint to resume from (only SB3 agents write one, "
            f"every trainer.checkpoint_every client-days and when stopped by a signal)"
        )
    refused = [o for key, o in _override_keys(overrides) if key not in RESUMABLE]
    if refused:
        raise ConfigError(
            f"resume: {refused} cannot change on resume (the run continues with its own config); "
            f"only {list(RESUMABLE)} may be given"
        )
    work = Path(tempfile.mkdtemp(prefix="cadence-resume-"))
    try:
        saved = OmegaConf.load(
            mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="config.yaml", dst_path=str(work)
            )
        )
    except Exception as exc:
        raise ConfigError(f"resume: run {run_id} has no config.yaml artifact to resume") from exc
    base = OmegaConf.structured(TrainConfig)
    # the agent node as its kind's own config (the schema's is the name only); a config saved
    # before the kinds had their own keeps only the fields its kind has
    name = OmegaConf.select(saved, "agent.name")
    agent_kind = kind(str(name), prefix="resume: agent.name")
    base.agent = OmegaConf.structured(agent_kind.config)
    fields = set(agent_kind.fields) | {"name"}
    saved.agent = {k: v for k, v in OmegaConf.to_container(saved.agent).items() if k in fields}
    restored = OmegaConf.merge(base, saved)
    for key, _ in _override_keys(overrides):
        OmegaConf.update(restored, key, OmegaConf.select(cfg, key), merge=False)
    restored.resume = run_id
    return restored


RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""what an MLflow run id can look like (MLflow's own are 32 hex digits)"""


@contextmanager
def resume_lock(run_id: str) -> Iterator[None]:
    """Hold the lock on resuming ``run_id`` for the whole resume (checks, training, evaluation).

    Two resumes of one run would both log every step into it; the second is refused by name while
    the first lives. The lock is the kernel's, so it ends with its process, crash or not."""
    if not RUN_ID.fullmatch(run_id):
        raise ConfigError(f"resume: {run_id!r} is not an MLflow run id (32 hex digits)")
    refusal = (
        f"resume: run {run_id} is being resumed by another train.py; wait for it to end "
        "(two resumes would log every step twice into the one run)"
    )
    with hold(f"resume-{run_id}", refusal):
        yield


class Stopped(KeyboardInterrupt):
    """SIGTERM (or SIGINT) arrived: unwind, leave a checkpoint, mark the run FAILED."""


_held: dict[str, Any] = {"holding": False, "pending": None}
"""a SIGTERM that arrived while the store was being written, raised once the write is done"""


def _stop(signum: int, _frame: Any) -> None:
    if _held["holding"]:
        _held["pending"] = signum
        return
    raise Stopped(f"stopped by {signal.Signals(signum).name}")


@contextmanager
def _store_write() -> Iterator[None]:
    """Hold a SIGTERM until the enclosed writes to the tracking store are done: a stop raised
    in the middle of one could leave its SQLite transaction, and the file's lock, open in this
    process, and the run could then not be marked FAILED (``database is locked``)."""
    _held["holding"] = True
    try:
        yield
    finally:
        _held["holding"] = False
        signum, _held["pending"] = _held["pending"], None
        if signum is not None:
            raise Stopped(f"stopped by {signal.Signals(signum).name}")


def run_training(cfg: DictConfig, run: RunConfig, setup: Setup) -> float:
    """One training job inside an MLflow run; returns eval/normalized_value (for sweepers)."""
    choices = _choices()
    setup_mlflow(run.tracking.uri, run.tracking.experiment)
    tags = _tags(cfg, choices)
    parent = None
    try:
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:
            sweep_dir = Path(hydra_cfg.sweep.dir)
            tags["sweep_id"] = sweep_id(sweep_dir)
            parent = sweep_parent(
                sweep_dir, run.tracking.experiment, tags["sweep_id"], {"sweep_dir": str(sweep_dir)}
            )
            tags["mlflow.parentRunId"] = parent
    except ValueError:
        pass
    name = train_run_name(
        run.scenario.name, run.reward.name, run.agent.name, list(run.eval.baselines), run.seed
    )
    with mlflow.start_run(
        run_id=run.resume,
        run_name=None if run.resume else name,
        tags=None if run.resume else tags,  # a resumed run keeps its own tags
    ) as active:
        try:
            return _train_in_run(cfg, run, setup, active, name)
        except BaseException as error:
            # MLflow marks this run FAILED on the way out; the reason goes with it
            reason = str(error) or type(error).__name__
            mlflow.set_tag("error", reason[:5000])
            if isinstance(error, KeyboardInterrupt):
                say(
                    f"[red]{reason}[/red]: run {active.info.run_id} marked FAILED; continue it "
                    f"with: python train.py resume={active.info.run_id}"
                )
            error.cadence_run_failed = True  # no second record needed
            raise


def _train_in_run(cfg: DictConfig, run: RunConfig, setup: Setup, active: Any, name: str) -> float:
    """The work inside the active MLflow run: train, checkpoint, evaluate, log."""
    run_id = active.info.run_id
    if not run.resume:
        mlflow.log_params(flatten(cfg))
    work = Path(tempfile.mkdtemp(prefix="cadence-"))
    (work / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    mlflow.log_artifact(str(work / "config.yaml"))
    history: list[tuple[int, dict[str, float]]] = []

    def hook(step: int, values: dict[str, float]) -> None:
        values = {k: v for k, v in values.items() if math.isfinite(v)}
        history.append((step, values))
        with _store_write():
            mlflow.log_metrics(values, step=step)

    def checkpoint(model: Any, step: int) -> None:
        from agents.sb3_agents import training_state

        folder = work / "checkpoints"
        folder.mkdir(exist_ok=True)
        model.save(folder / "latest.zip")
        (folder / "state.json").write_text(json.dumps(training_state(model.get_env())))
        with _store_write():
            mlflow.log_artifacts(str(folder), "checkpoints")
            mlflow.set_tag("checkpoint_step", str(step))

    resume_from, resume_state = None, None
    if run.resume:
        folder = Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="checkpoints", dst_path=str(work / "resume")
            )
        )
        resume_from = folder / "latest.zip"
        if (folder / "state.json").is_file():
            resume_state = json.loads((folder / "state.json").read_text())
        say(
            f"resuming {run_id} from its checkpoint at {active.data.tags.get('checkpoint_step')} client-days"
        )
    from agents.training import default_train_envs, training_options

    start = time.perf_counter()
    with training_options(device=run.trainer.device, update_threads=run.trainer.update_threads):
        policy = train_agent(
            run.agent,
            setup,
            run.trainer.total_timesteps,
            run.trainer.num_envs or default_train_envs(run.agent.name, setup),
            run.seed,
            progress=run.trainer.progress,
            hook=hook,
            checkpoint=checkpoint if kind(run.agent.name).checkpoints else None,
            checkpoint_every=run.trainer.checkpoint_every,
            resume_from=resume_from,
            resume_state=resume_state,
        )
    mlflow.log_metric("train/seconds", time.perf_counter() - start)
    mlflow.log_artifacts(str(save_policy(policy, work / "policy")), "policy")
    curve = plots.learning_curve(history, work / "learning_curve.png")
    if curve:
        mlflow.log_artifact(str(curve))
    e = run.eval
    baselines = [
        make_policy(AgentConfig(name=b), run.seed)
        for b in dict.fromkeys(e.baselines)
        if b != policy.name
    ]
    result = compare(
        [policy, *baselines],
        setup,
        e.num_clients,
        e.horizon_days,
        seeds=e.seeds,
        n_boot=e.n_boot,
        progress=run.trainer.progress,
        yardstick=e.reward,
    )
    evaluation = work / "evaluation"
    evaluation.mkdir()
    metrics = log_comparison(result, policy.name, evaluation)
    print(markdown_table(result, TABLE), flush=True)
    print("\n" + tier_table(result), flush=True)
    margins = None
    if baselines:
        margins = log_margins(result, policy.name, [b.name for b in baselines])
        say(margins)
    view = log_view(
        result,
        policy.name,
        result_baseline(result, [b.name for b in baselines], policy.name),
        evaluation_clients(
            e.num_clients,
            e.horizon_days,
            e.seeds,
            active.data.tags.get("population", "default"),
            run.scenario.name,
        ),
        f"Training run of **{policy.name}** ({run.trainer.total_timesteps:,} client-days, "
        f"training seed {run.seed}, reward `{run.reward.name}`), evaluated on "
        f"{e.num_clients:,} fresh clients x {e.horizon_days} days x {len(e.seeds)} evaluation "
        f"seed(s) beside {', '.join(b.name for b in baselines) or 'no baseline'} and the "
        "references.",
        run.tracking.ui,
        e.n_boot,
    )
    log_margin_intervals(policy.name, view.margins[policy.name] if baselines else None)
    body = results_markdown(result, policy.name, margins, run, run_id)
    written = write_results("results", body, root=RUN_RESULTS / run_id)
    mlflow.log_artifact(str(written), "evaluation")
    say(f"wrote {written}")
    if results_target(cfg) == "docs":
        say(f"wrote {write_results('default_agent', body, root=DOCS_RESULTS)}")
    say(
        f"MLflow run {run_id} ({name}): eval/normalized_value {metrics['eval/normalized_value']:.3f}, "
        f"eval/value {metrics['eval/value']:.3f}"
    )
    say(f"open it in the MLflow UI: {view.link}")
    return float(metrics["eval/normalized_value"])


def result_baseline(result: Any, baselines: list[str], policy_name: str) -> str:
    """The baseline of the run's headline: the best of ``baselines`` by normalized value (the
    one :func:`log_margins` measures against), else the best heuristic compared."""
    if baselines:
        return max(baselines, key=lambda b: result.metrics[b]["eval/normalized_value"][0])
    return best_heuristic(result, other_than=policy_name)


def results_target(cfg: DictConfig) -> str:
    """Where the comparison's Markdown goes besides the run's folder (``results=``), checked; a
    config composed over the plain :class:`RunConfig` has no ``results`` and writes the run's."""
    target = cfg.get("results", "run")
    if target not in RESULTS:
        raise ConfigError(f"results must be one of {list(RESULTS)}, got {target!r}")
    return target


def results_markdown(
    result: Any, policy_name: str, margins: str | None, run: RunConfig, run_id: str
) -> str:
    """The comparison as Markdown: the headline (the trained agent's normalized value and ceiling
    share, and its margins over the best baseline heuristic), then the KPI and per-tier tables."""
    m = result.metrics[policy_name]
    value, low, high = m["eval/normalized_value"]
    share = m.get("eval/ceiling_share")
    e = run.eval
    lines = [
        f"**{policy_name}** (run `{run_id}`, training seed {run.seed}, "
        f"{run.trainer.total_timesteps:,} client-days), on {e.num_clients:,} fresh clients x "
        f"{e.horizon_days} days x {len(e.seeds)} evaluation seed(s): normalized value "
        f"**{value:.3f}** [{low:.3f}, {high:.3f}]"
        + (
            ""
            if share is None
            else f", ceiling share {share[0]:.3f} [{share[1]:.3f}, {share[2]:.3f}]"
        )
        + ".",
    ]
    if margins:
        lines += ["", f"Against the best baseline heuristic: {margins}."]
    lines += ["", markdown_table(result, TABLE), "", "Per consent tier:", "", tier_table(result)]
    return "\n".join(lines)


def record_failure(cfg: DictConfig, error: BaseException) -> None:
    """In a sweep, a job that fails still leaves a FAILED child run saying why."""
    try:
        tracking = cfg.get("tracking", {})
        setup_mlflow(tracking.get("uri"), tracking.get("experiment", "cadence"))
        hydra_cfg = HydraConfig.get()
        sweep_dir = Path(hydra_cfg.sweep.dir)
        parent = sweep_parent(
            sweep_dir,
            tracking.get("experiment", "cadence"),
            sweep_id(sweep_dir),
            {"sweep_dir": str(sweep_dir)},
        )
        tags = {
            "sweep_id": sweep_id(sweep_dir),
            "mlflow.parentRunId": parent,
            "error": str(error)[:5000],
            "overrides": " ".join(hydra_cfg.overrides.task),
        }
        for key in ("agent", "reward", "scenario"):
            name = OmegaConf.select(cfg, f"{key}.name", default=None)
            if name is not None:
                tags[key] = str(name)
        with mlflow.start_run(run_name="failed job", tags=tags):
            pass
        mlflow.MlflowClient().set_terminated(mlflow.last_active_run().info.run_id, "FAILED")
    except Exception:  # never hide the original error behind a logging one
        traceback.print_exc()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    as_typed(cfg)  # resume=15e01131 is the run id's start typed, not inf
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        if not cfg.get("resume"):
            run, setup = validate_run(cfg)  # every value checked before any work
            results_target(cfg)
            return run_training(cfg, run, setup)
        setup_mlflow(cfg.tracking.uri, cfg.tracking.experiment)
        cfg.resume = find_run(str(cfg.resume), "resume").info.run_id  # a unique prefix will do
        with resume_lock(str(cfg.resume)):  # held from the checks to the end of the run
            cfg = prepare_resume(cfg, list(HydraConfig.get().overrides.task))
            run, setup = validate_run(cfg)
            results_target(cfg)
            return run_training(cfg, run, setup)
    except Exception as error:
        if not multirun:
            if isinstance(error, ConfigError):  # the user's to fix: one line, no traceback
                print(f"error: {error}", file=sys.stderr)
                raise SystemExit(2) from None
            raise
        # a failed job must not stop the sweep: it is recorded as a FAILED child run instead
        say(f"[red]job failed[/red] ({' '.join(HydraConfig.get().overrides.task)}): {error}")
        if not getattr(error, "cadence_run_failed", False):  # failed before its run existed
            record_failure(cfg, error)
        return None


if __name__ == "__main__":
    freeze_long_lived()  # the collector's full passes would walk what torch and MLflow made
    note_start()  # the results file names the commit this run started from
    register_train_config()
    signal.signal(signal.SIGTERM, _stop)
    try:
        sys.exit(main())
    except KeyboardInterrupt as stopped:
        print(str(stopped) or "interrupted", file=sys.stderr)
        sys.exit(128 + (signal.SIGTERM if isinstance(stopped, Stopped) else signal.SIGINT))
