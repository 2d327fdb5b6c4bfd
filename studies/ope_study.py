"""Off-policy estimators against the truth only a simulator knows (the tables in README.md).

``sizes``: ``segment_rules`` logged with ε-exploration for 30 days, 10k, 100k and 1M client-days,
repeated over seeds; each target's one-step estimates (IPS, SNIPS, DM, DR: the mean daily reward
had the target chosen each logged day's action) against its true value on the logger's state
distribution (the mean counterfactual reward over one large log of its own). Prints the root-mean-square error and the share of 95 % intervals that cover
the truth, per estimator, target and size.

``horizon``: logs of 50,000 clients x 30 days; each target's value per client over the 30 days
from PDWIS and FQE beside its true value (the target rolled out on the log's own clients and luck).

    python studies/ope_study.py sizes                      # 3 sizes x 20 seeds (1M: 5 seeds)
    python studies/ope_study.py horizon --agent run:<id>   # add a trained agent as a target
    python studies/ope_study.py sizes --seeds 3 --quick    # a smoke run

Writes the table to docs/results/ope_study_sizes.md or docs/results/ope_study_horizon.md at the
default sizes (the files the docs include; ``--agent`` may be given); with --quick or any other
size to outputs/results/ instead; --results-dir DIR writes into DIR.
"""

from __future__ import annotations

import argparse

import numpy as np
from tqdm.auto import tqdm

from agents.base import Policy
from agents.config import AgentConfig
from agents.registry import make_policy, train_agent
from envs.config import Setup, load_setup
from evaluation.offline import MULTI_DAY, ONE_STEP, estimate
from evaluation.record import log_policy
from evaluation.truth import step_truth
from experiment.results import Report, add_results_argument, at_documented_size

DAYS = 30
LOG_EPSILON = 0.2


def targets(setup: Setup, agent: str | None) -> list[Policy]:
    """A heuristic that is the logger's own greedy policy, a heuristic that is not, a trained
    bandit, and (``agent``) a trained policy from MLflow."""
    chosen = [make_policy(AgentConfig(name=n)) for n in ("segment_rules", "fixed_weekly")]
    chosen.append(train_agent(AgentConfig(name="linucb"), setup, 200_000, 500, progress=False))
    if agent:
        from experiment.policies import resolve_policy

        chosen.append(resolve_policy(agent, setup)[0])
    return chosen


def population_truth(setup: Setup, policies: list[Policy], clients: int) -> dict[str, float]:
    """Each target's one-step value on the logger's state distribution: the mean counterfactual
    reward over one large log (its own seed), what every smaller log's estimates aim at."""
    logger = make_policy(AgentConfig(name="segment_rules"))
    frame = log_policy(
        logger, setup, clients, DAYS, 999, LOG_EPSILON, progress=True, counterfactual=policies
    )
    return {p.name: step_truth(frame, p.name) for p in policies}


def sizes(args, setup: Setup, policies: list[Policy], report: Report) -> None:
    """RMSE, coverage and ESS of the one-step estimators by log size, reported as Markdown."""
    logger = make_policy(AgentConfig(name="segment_rules"))
    truth = population_truth(setup, policies, args.truth_clients)
    rows = {}
    grid = [(10_000, args.seeds), (100_000, args.seeds), (1_000_000, max(1, args.seeds // 4))]
    if args.quick:
        grid = grid[:2]
    for size, seeds in grid:
        clients = size // DAYS
        for seed in tqdm(range(seeds), desc=f"{size:,} rows", unit="log"):
            frame = log_policy(logger, setup, clients, DAYS, 5000 + seed, LOG_EPSILON)
            results = estimate(
                frame, policies, setup, 0.0, n_boot=args.n_boot, fqe_boot=0, with_truth=False
            )
            for res in results:
                for name in ONE_STEP:
                    e, true = res.estimates[name], truth[res.policy]
                    rows.setdefault((res.policy, name, size), []).append(
                        (e.value - true, e.ci_low <= true <= e.ci_high, e.ess)
                    )
    report()
    report(
        f"Logger: segment_rules, ε = {LOG_EPSILON}, {DAYS} days; targets deterministic; truth "
        f"from {args.truth_clients:,} clients' counterfactuals: "
        + ", ".join(f"{k} {v:.5f}" for k, v in truth.items())
        + f"; {args.n_boot} bootstrap replicates."
    )
    report()
    report("| target | estimator | rows | logs | RMSE | 95 % CI covers truth | median ESS |")
    report("|---|---|---:|---:|---:|---:|---:|")
    for (policy, name, size), got in rows.items():
        err, cover, ess = (np.array(x, dtype=float) for x in zip(*got, strict=True))
        report(
            f"| {policy} | {name} | {size:,} | {len(err)} | {np.sqrt(np.mean(err**2)):.2e} | "
            f"{cover.mean():.0%} | {np.median(ess):,.0f} |"
        )


def horizon(args, setup: Setup, policies: list[Policy], report: Report) -> None:
    """PDWIS and FQE over the whole horizon beside each target's true value, as Markdown."""
    loggers = [make_policy(AgentConfig(name="segment_rules"))]
    if args.agent:
        loggers.append(policies[-1])
    report(
        f"Logs of {args.clients:,} clients x {DAYS} days, the logger's ε {args.log_epsilon}; "
        f"value per client over the {DAYS} days; {args.n_boot} bootstrap replicates."
    )
    report()
    report("| logger | target | estimator | estimate | 95 % CI | ESS | truth | covered |")
    report("|---|---|---|---:|---|---:|---:|---|")
    for logger in loggers:
        frame = log_policy(logger, setup, args.clients, DAYS, 7, args.log_epsilon, progress=True)
        for res in estimate(frame, policies, setup, 0.0, n_boot=args.n_boot):
            for name in MULTI_DAY:
                e = res.estimates[name]
                covered = e.ci_low <= res.truth <= e.ci_high
                report(
                    f"| {logger.name} ε={args.log_epsilon} | {res.policy} | {name} | "
                    f"{e.value:.4f} | [{e.ci_low:.4f}, {e.ci_high:.4f}] | {e.ess:,.0f} | "
                    f"{res.truth:.4f} | {'yes' if covered else 'no'} |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("study", choices=("sizes", "horizon"))
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=50_000, help="horizon: logged clients")
    parser.add_argument("--log-epsilon", type=float, default=0.1, help="horizon: the logger's ε")
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--truth-clients", type=int, default=100_000, help="sizes: truth's log")
    parser.add_argument("--agent", default=None, help="run:<mlflow run id> of a trained policy")
    parser.add_argument("--quick", action="store_true", help="sizes: 10k and 100k only")
    add_results_argument(parser)
    args = parser.parse_args()
    setup = load_setup()
    policies = targets(setup, args.agent)
    report = Report()
    (sizes if args.study == "sizes" else horizon)(args, setup, policies, report)
    report.write(
        f"ope_study_{args.study}",
        args.results_dir,
        documented_size=at_documented_size(parser, args, ignore=("study", "agent")),
    )


if __name__ == "__main__":
    main()
