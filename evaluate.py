"""Evaluate policies in the simulator or from a logged dataset; each mode is one explicit command.

    python evaluate.py                                  # mode=compare: policies on the same fresh clients
    python evaluate.py policies='[segment_rules,run:<id>]' eval.num_clients=5000 scenario=market_shock
    python evaluate.py mode=record record.policy=segment_rules record.epsilon=0.2 eval.num_clients=5000 eval.horizon_days=14
    python evaluate.py mode=estimate policies='[segment_rules,fixed_weekly]' estimate.soften=0.2
    python evaluate.py mode=monitor scenario=misfire policies='[segment_rules,run:<id>]' eval.num_clients=5000
    python evaluate.py mode=watch watch.data=outputs/logs.parquet watch.circuit=outputs/circuit.json

Modes (``mode=``, default ``compare``; each reads its own keys and refuses another mode's):

* ``compare``: ``policies`` on the same fresh clients and luck, one MLflow run per policy under
  a parent run holding the comparison table (Markdown + Parquet) and plots.
* ``record``: ``record.policy`` with ε-exploration (``record.epsilon``) logged in the simulator
  to ``record.out`` (default ``outputs/logs.parquet``), ``eval.num_clients`` clients over
  ``eval.horizon_days`` days; ``record.truth`` adds targets' counterfactual rewards.
* ``estimate``: ``policies`` estimated off-policy from ``estimate.data`` (default
  ``outputs/logs.parquet``): IPS, SNIPS, DM, DR, PDWIS, FQE, the truth beside them for a
  simulated log; one MLflow run per policy (``estimate.mlflow=false``: print only).
* ``monitor``: the crisis study: each policy with and without the circuit breaker
  (``crisis.*``), under the scenario and under calm.
* ``watch``: the crisis monitor (``crisis.monitor.*``) over a logged dataset (``watch.data``):
  its alert log and, with ``watch.circuit=<file>``, the serving circuit file.

Names: heuristics (random, no_send, batch_and_blast, fixed_weekly, segment_rules), the oracle,
bandits (trained here on 200,000 client-days, 500 clients at a time), or ``run:<id>`` for a policy
trained by train.py. Every key is documented in ``experiment/schema.py``.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import hydra
import mlflow
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from agents.base import Policy
from agents.kinds import kinds
from envs.config import Setup
from evaluation.compare import (
    KPI_PLOT,
    TABLE,
    compare,
    markdown_table,
    tier_table,
    write_tables,
)
from experiment import plots
from experiment.policies import BANDIT_TIMESTEPS, resolve_policy
from experiment.process import as_typed, freeze_long_lived
from experiment.reporting import (
    NOTE,
    best_heuristic,
    best_policy,
    child_note,
    compare_run_name,
    evaluation_clients,
    log_comparison,
    log_policy_role,
    log_view,
)
from experiment.schema import RunConfig, check_mode, register, validate_run
from experiment.tracking import flatten, git_commit, setup_mlflow, tracking_uri
from simulate.config import ConfigError

register()

RENAMED = {
    "log": "mode=record record.policy=<name>",
    "out": "record.out=<file> (with mode=record)",
    "log_truth": "record.truth='[...]' (with mode=record)",
    "logs": "mode=estimate estimate.data=<file>",
    "log_epsilon": "record.epsilon= (the logger's exploration, mode=record) or estimate.soften= "
    "(the targets' softening, mode=estimate)",
    "monitor": "mode=monitor",
}
"""keys of the former command line, and what says the same now"""


def refuse_renamed(args: list[str]) -> str | None:
    """The one-line message for the first former key in ``args`` (``log=``, ``logs=``...), or None."""
    for arg in args:
        key = arg.lstrip("+~").split("=", 1)[0]
        if "=" in arg and key in RENAMED:
            page = "docs/crisis.md" if key == "monitor" else "docs/offline-evaluation.md"
            return f"{key}= is gone: use {RENAMED[key]} ({page})"
    return None


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Run the mode ``cfg.mode`` names; a config or input it cannot use ends it with one line
    on stderr naming the key, and exit status 2."""
    as_typed(cfg)  # key=1e05 is the text typed, not 100000.0
    try:
        run_mode(cfg, _named_keys())
    except ConfigError as exc:
        print(f"evaluate.py: {' '.join(str(exc).split())}", file=sys.stderr)
        raise SystemExit(2) from None


def run_mode(cfg: DictConfig, named: Sequence[str] = ()) -> object:
    """Check ``cfg`` (every range, and no key of another mode: ``named`` are the keys given on
    the command line), then run its mode; returns what the mode returns (a run id, a path...)."""
    run, setup = validate_run(cfg)
    check_mode(run, named)
    return COMMANDS[run.mode](cfg, run, setup)


def _named_keys() -> list[str]:
    """The keys given on the command line (empty outside a Hydra run)."""
    try:
        return [o.lstrip("+~").split("=", 1)[0] for o in HydraConfig.get().overrides.task]
    except ValueError:
        return []


def _resolve(spec: str, setup: Setup) -> tuple[Policy, dict[str, str]]:
    """:func:`resolve_policy`, saying first when it trains a bandit (a minute or more)."""
    kind = next((k for k in kinds() if k.name == spec.strip()), None)
    if kind is not None and kind.trained_on_the_spot:
        print(f"training {spec} on {BANDIT_TIMESTEPS:,} client-days first ...", flush=True)
    elif spec.strip().startswith("run:"):
        print(f"loading {spec.strip()} ...", flush=True)
    return resolve_policy(spec, setup)


def record_log(cfg: DictConfig, run: RunConfig, setup: Setup) -> Path:
    """``mode=record``: ``record.policy`` with ε-exploration logged in the simulator, written to
    ``record.out``; returns the path."""
    from evaluation.logs import write_logs
    from evaluation.record import log_policy

    rec, e = run.record, run.eval
    mlflow.set_tracking_uri(tracking_uri(run.tracking.uri))  # where run:<id> policies are found
    policy, _ = _resolve(rec.policy, setup)
    targets = [_resolve(spec, setup)[0] for spec in rec.truth]
    print(
        f"logging {policy.name} (ε = {rec.epsilon:g}) on {e.num_clients:,} clients over "
        f"{e.horizon_days} days"
        + (f", with the counterfactual rewards of {', '.join(rec.truth)}" if rec.truth else ""),
        flush=True,
    )
    try:
        frame = log_policy(
            policy,
            setup,
            e.num_clients,
            e.horizon_days,
            run.seed,
            rec.epsilon,
            progress=True,
            counterfactual=targets,
            yardstick=e.reward,
        )
        path = write_logs(frame, rec.out, setup.env.guardrails)
    except OSError as exc:
        raise ConfigError(f"record.out: cannot write {rec.out}: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"record: {exc}") from exc
    print(f"wrote {frame.height:,} client-days of {policy.name} to {path}")
    return path


def _read_log(key: str, path: str, setup: Setup):
    """The logged dataset at ``path``, held to ``setup``'s guardrails; a file it cannot use is a
    :class:`ConfigError` naming ``key``."""
    from evaluation.logs import read_logs

    print(f"reading {path} ...", flush=True)
    try:
        frame = read_logs(path, guardrails=setup.env.guardrails)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key}: cannot use {path}: {exc}") from exc
    print(
        f"{frame.height:,} client-days of {frame['client_id'].n_unique():,} clients over "
        f"{frame['day'].n_unique()} days",
        flush=True,
    )
    return frame


def estimate_from_log(cfg: DictConfig, run: RunConfig, setup: Setup) -> list[str]:
    """``mode=estimate``: off-policy estimates of ``policies`` from ``estimate.data``, printed
    and (``estimate.mlflow``) logged to MLflow, one run per policy; returns the run ids."""
    from evaluation.offline import estimate, log_results, table

    est = run.estimate
    mlflow.set_tracking_uri(tracking_uri(run.tracking.uri))  # where run:<id> policies are found
    if not run.policies:
        raise ConfigError("policies must name at least one policy to estimate")
    frame = _read_log("estimate.data", est.data, setup)
    policies = [_resolve(spec, setup)[0] for spec in run.policies]
    print(
        f"estimating {', '.join(p.name for p in policies)} (targets softened by "
        f"{est.soften:g}, {run.eval.n_boot} bootstrap replicates) ...",
        flush=True,
    )
    start = time.monotonic()
    try:
        results = estimate(
            frame,
            policies,
            setup,
            est.soften,
            n_boot=run.eval.n_boot,
            pscore_floor=est.pscore_floor,
            below_floor=est.below_floor,
            progress=True,
            yardstick=run.eval.reward,
        )
    except ValueError as exc:
        raise ConfigError(f"estimate.data: {exc}") from exc
    print(f"estimated in {time.monotonic() - start:.0f} s\n")
    print(table(results))
    if not est.mlflow:
        return []
    setup_mlflow(run.tracking.uri, run.tracking.experiment)
    ids = log_results(results, est.data, git_commit())
    print(f"MLflow runs (experiment {run.tracking.experiment}): {', '.join(ids)}")
    return ids


def watch_log(cfg: DictConfig, run: RunConfig, setup: Setup) -> Path | None:
    """``mode=watch``: the crisis monitor over ``watch.data``: its alert log printed and, with
    ``watch.circuit``, the serving circuit file written; returns that file's path."""
    import datetime as dt
    import json

    import polars as pl

    from evaluation.monitor import watch_logs, write_circuit
    from serve.files import NotARegularFile

    watch = run.watch
    frame = _read_log("watch.data", watch.data, setup)
    monitor = watch_logs(frame, run.crisis.monitor, progress=True)
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=160):
        print(monitor.alert_log())
    if watch.circuit is None:
        return None
    first = dt.date.fromisoformat(str(watch.first_day)) if watch.first_day else None
    try:
        path = write_circuit(monitor, watch.circuit, first)
    except (NotARegularFile, OSError) as exc:
        raise ConfigError(f"watch.circuit: cannot write {watch.circuit}: {exc}") from exc
    print(f"wrote {path}: {json.loads(path.read_text())['tripped']}")
    return path


def _common_tags(run: RunConfig) -> dict[str, str]:
    tags = {
        "reward": run.reward.name,
        "scenario": run.scenario.name,
        "seed": str(run.seed),
        "git_commit": git_commit(),
    }
    try:
        tags["population"] = str(HydraConfig.get().runtime.choices.get("population", "default"))
    except ValueError:
        tags["population"] = "default"
    return tags


def _resolve_policies(run: RunConfig, setup: Setup) -> list[tuple[Policy, dict[str, str]]]:
    """MLflow set up and ``run.policies`` resolved (a clear error when there are none)."""
    setup_mlflow(run.tracking.uri, run.tracking.experiment)
    if not run.policies:
        raise ConfigError("policies must name at least one policy")
    return [_resolve(spec, setup) for spec in run.policies]


@contextmanager
def _parent_run(cfg: DictConfig, name: str, tags: dict[str, str], *sections: str):
    """The parent run of a comparison or a crisis study, with the evaluation's parameters."""
    prefixes = ("eval.", "scenario.", "population.", "policies", *sections)
    with mlflow.start_run(run_name=name, tags=tags) as parent:
        mlflow.log_params({k: v for k, v in flatten(cfg).items() if k.startswith(prefixes)})
        yield parent


def crisis_policies(cfg: DictConfig, run: RunConfig, setup: Setup) -> str:
    """``mode=monitor``: the crisis study (each policy with and without the circuit breaker, under
    the scenario and under calm); returns the parent run id."""
    from evaluation.crisis import METRICS, crisis_study

    resolved = _resolve_policies(run, setup)
    e = run.eval
    result = crisis_study(
        [p for p, _ in resolved],
        setup,
        run.crisis,
        e.num_clients,
        e.horizon_days,
        seeds=e.seeds,
        progress=True,
    )
    common = _common_tags(run)
    work = Path(tempfile.mkdtemp(prefix="cadence-crisis-"))
    with _parent_run(
        cfg, f"crisis {run.scenario.name}", {**common, "crisis": "true"}, "crisis."
    ) as parent:
        (work / "crisis.md").write_text(result.markdown() + "\n")
        result.rows.write_parquet(work / "crisis_per_seed.parquet")
        result.logs().write_parquet(work / "alerts_and_switches.parquet")
        plots.crisis_timeline(result, work / f"timeline_{run.scenario.name}.png")
        mlflow.log_artifacts(str(work))
        for row in result.table().iter_rows(named=True):
            name, arm = row["policy"], row["monitor"]
            extra = next((tags for p, tags in resolved if p.name == name), {"agent": name})
            with mlflow.start_run(
                run_name=f"{name} monitor={arm}",
                nested=True,
                tags={
                    **common,
                    **extra,
                    "policy": name,
                    "monitor": arm,
                    "mlflow.parentRunId": parent.info.run_id,
                },
            ):
                mlflow.log_metrics(
                    {f"crisis/{m}": row[m] for m in METRICS if not math.isnan(row[m])}
                )
    print(result.markdown())
    if result.crisis.start_day is not None:
        for name in dict.fromkeys(result.rows["policy"]):
            print(result.summary(name))
    print(
        f"\nMLflow crisis run {parent.info.run_id}; see `mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}`"
    )
    return parent.info.run_id


def evaluate_policies(cfg: DictConfig, run: RunConfig, setup: Setup) -> str:
    """``mode=compare``: ``run.policies`` on the same fresh clients; returns the parent run id."""
    resolved = _resolve_policies(run, setup)
    policies = [p for p, _ in resolved]
    e = run.eval
    result = compare(
        policies,
        setup,
        e.num_clients,
        e.horizon_days,
        seeds=e.seeds,
        n_boot=e.n_boot,
        progress=True,
        yardstick=e.reward,
    )
    common = _common_tags(run)
    work = Path(tempfile.mkdtemp(prefix="cadence-eval-"))
    title = compare_run_name(run.scenario.name, run.reward.name, len(policies))
    with _parent_run(cfg, title, {**common, "comparison": "true"}, "env.") as parent:
        best = best_policy(result)
        baseline = best_heuristic(result, other_than=best)
        view = log_view(
            result,
            best,
            baseline,
            evaluation_clients(
                e.num_clients, e.horizon_days, e.seeds, common["population"], run.scenario.name
            ),
            f"Comparison of {', '.join(p.name for p in policies)} on {e.num_clients:,} fresh "
            f"clients x {e.horizon_days} days x {len(e.seeds)} evaluation seed(s), scenario "
            f"`{run.scenario.name}`, scored with reward `{run.reward.name}`; a child run per "
            "policy and reference.",
            run.tracking.ui,
            e.n_boot,
        )
        write_tables(result, work, "comparison")
        plots.kpi_bars(result.metrics, KPI_PLOT, work / "kpis.png")
        plots.retention_curves(result.rollouts, work / "retention.png")
        plots.tone_mix(result.rollouts, work / "tone_mix.png")
        mlflow.log_artifacts(str(work))
        for name in result.metrics:
            extra = next(
                (tags for p, tags in resolved if p.name == name),
                {"agent": name, "reference": "true"},
            )
            with mlflow.start_run(
                run_name=name,
                nested=True,
                tags={**common, **extra, "policy": name, "mlflow.parentRunId": parent.info.run_id},
            ):
                out = work / f"policy-{name.replace('@', '-')}"
                out.mkdir()
                log_comparison(result, name, out, with_artifacts=False)
                log_policy_role(name, baseline, view.margins[name])
                mlflow.set_tag(NOTE, child_note(name, view.margins[name], baseline, title))
    print(markdown_table(result, TABLE))
    print("\n" + tier_table(result))
    print(f"\n{view.headline.sentence()}".replace("**", ""))
    print(
        f"\nMLflow comparison run {parent.info.run_id}: {view.link} (start the UI with "
        f"`mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}`)"
    )
    return parent.info.run_id


COMMANDS: dict[str, Callable[[DictConfig, RunConfig, Setup], object]] = {
    "compare": evaluate_policies,
    "record": record_log,
    "estimate": estimate_from_log,
    "monitor": crisis_policies,
    "watch": watch_log,
}
"""what each ``mode=`` runs (:data:`experiment.schema.MODES`)"""


if __name__ == "__main__":
    freeze_long_lived()  # the collector's full passes would walk what torch and MLflow made
    renamed = refuse_renamed(sys.argv[1:])
    if renamed:
        print(f"evaluate.py: {renamed}", file=sys.stderr)
        sys.exit(2)
    sys.exit(main())
