"""Compare policies on the same fresh clients and log one MLflow run per policy.

    python evaluate.py policies='[random,batch_and_blast,linucb,run:<mlflow_run_id>]'
    python evaluate.py policies='[segment_rules,run:<id>]' eval.num_clients=5000 eval.num_seeds=3 scenario=market_shock
    python evaluate.py log=segment_rules out=logs.parquet log_epsilon=0.2 eval.num_clients=5000 eval.horizon_days=14
    python evaluate.py log=segment_rules out=logs.parquet log_truth='[linucb]' eval.num_clients=5000
    python evaluate.py logs=logs.parquet policies='[segment_rules,fixed_weekly]' log_epsilon=0.2
    python evaluate.py scenario=misfire monitor=on policies='[segment_rules,run:<id>]' eval.num_clients=5000

Names: heuristics (random, no_send, batch_and_blast, fixed_weekly, segment_rules), the oracle,
bandits (trained here on 200,000 client-days, 500 clients at a time), or ``run:<id>`` for a policy
trained by train.py. A parent run holds the comparison table (Markdown + Parquet) and plots;
each policy gets a child run tagged ``policy`` with the same metric names as train.py.
"""

from __future__ import annotations

import math
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import hydra
import mlflow
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from agents.base import Policy
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
from experiment.policies import resolve_policy
from experiment.reporting import log_comparison
from experiment.schema import RunConfig, register, validate_run
from experiment.tracking import flatten, git_commit, setup_mlflow
from simulate.config import ConfigError

register()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run, setup = validate_run(cfg)
    if run.log is not None:
        write_log(run, setup)
    elif run.logs is not None:
        estimate_from_logs(run, setup)
    elif run.monitor == "on":
        crisis_policies(cfg, run, setup)
    else:
        evaluate_policies(cfg, run, setup)


def write_log(run: RunConfig, setup: Setup) -> Path:
    """``log=<policy> out=<file>``: the policy with ε-exploration, logged in the simulator."""
    from evaluation.logged import log_policy
    from evaluation.logs import write_logs

    if not run.out:
        raise ConfigError("out: log= needs out=<file.parquet> to write to")
    if run.log_epsilon <= 0:
        raise ConfigError(
            "log_epsilon: must be > 0 for log= (a deterministic log cannot be evaluated)"
        )
    policy, _ = resolve_policy(run.log, setup)
    targets = [resolve_policy(spec, setup)[0] for spec in run.log_truth]
    frame = log_policy(
        policy,
        setup,
        run.eval.num_clients,
        run.eval.horizon_days,
        run.seed,
        run.log_epsilon,
        True,
        counterfactual=targets,
    )
    path = write_logs(frame, run.out)
    print(f"wrote {frame.height:,} client-days of {policy.name} to {path}")
    return path


def estimate_from_logs(run: RunConfig, setup: Setup) -> list[str]:
    """``logs=<file> policies=[...]``: off-policy estimates, printed and logged to MLflow."""
    from evaluation.logs import read_logs
    from evaluation.offline import estimate, log_results, table

    frame = read_logs(run.logs, guardrails=setup.env.guardrails)
    policies = [resolve_policy(spec, setup)[0] for spec in run.policies]
    results = estimate(frame, policies, setup, run.log_epsilon, n_boot=run.eval.n_boot)
    print(table(results))
    setup_mlflow(run.tracking.uri, run.tracking.experiment)
    ids = log_results(results, run.logs, git_commit())
    print(f"MLflow runs (experiment {run.tracking.experiment}): {', '.join(ids)}")
    return ids


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
    return [resolve_policy(spec, setup) for spec in run.policies]


@contextmanager
def _parent_run(cfg: DictConfig, name: str, tags: dict[str, str], *sections: str):
    """The parent run of a comparison or a crisis study, with the evaluation's parameters."""
    prefixes = ("eval.", "scenario.", "population.", "policies", *sections)
    with mlflow.start_run(run_name=name, tags=tags) as parent:
        mlflow.log_params({k: v for k, v in flatten(cfg).items() if k.startswith(prefixes)})
        yield parent


def crisis_policies(cfg: DictConfig, run: RunConfig, setup: Setup) -> str:
    """``monitor=on``: the crisis study (each policy with and without the circuit breaker, under
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
        seeds=range(1000, 1000 + e.num_seeds),
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
    """Evaluate ``run.policies``; returns the parent run id."""
    resolved = _resolve_policies(run, setup)
    policies = [p for p, _ in resolved]
    e = run.eval
    result = compare(
        policies,
        setup,
        e.num_clients,
        e.horizon_days,
        seeds=range(1000, 1000 + e.num_seeds),
        n_boot=e.n_boot,
        progress=True,
        yardstick=e.reward,
    )
    common = _common_tags(run)
    work = Path(tempfile.mkdtemp(prefix="cadence-eval-"))
    with _parent_run(
        cfg, f"compare {len(policies)} policies", {**common, "comparison": "true"}, "env."
    ) as parent:
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
    print(markdown_table(result, TABLE))
    print("\n" + tier_table(result))
    print(
        f"\nMLflow comparison run {parent.info.run_id}; see `mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}`"
    )
    return parent.info.run_id


if __name__ == "__main__":
    sys.exit(main())
