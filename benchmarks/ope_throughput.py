"""Off-policy estimation speed: eight target policies estimated from about a million logged
client-days (IPS, SNIPS, DM, DR, PDWIS and FQE, each with its bootstrap interval), against the
peer of simulating each policy on the log's own clients for its true value.

    python benchmarks/ope_throughput.py                  # 34,000 clients x 30 days, 8 policies
    python benchmarks/ope_throughput.py --clients 2000   # a smoke run

The targets: four heuristics, a trained LinUCB and three SB3 agents (trained briefly here: the
time to read a policy's actions does not depend on how long it trained).

Writes the table to docs/results/ope_throughput.md at the defaults (the file the docs include);
with any other size to outputs/results/ope_throughput.md; --results-dir DIR writes
DIR/ope_throughput.md instead.
"""

from __future__ import annotations

import argparse
import time

from agents.config import AgentConfig
from agents.registry import make_policy, train_agent
from envs.config import load_setup
from evaluation.offline import estimate, true_value
from evaluation.record import log_policy
from experiment.results import Report, add_results_argument, at_documented_size

HEURISTICS = ("no_send", "batch_and_blast", "fixed_weekly", "segment_rules")
LEARNED = {"linucb": 20_000, "ppo_lagrangian": 4_096, "maskable_ppo": 4_096, "dqn": 4_096}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=34_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--n-boot", type=int, default=300, help="bootstrap replicates (FQE: 200)")
    add_results_argument(parser)
    args = parser.parse_args()
    setup = load_setup()
    policies = [make_policy(AgentConfig(name=n)) for n in HEURISTICS]
    policies += [
        train_agent(AgentConfig(name=n), setup, steps, 64, progress=False)
        for n, steps in LEARNED.items()
    ]
    start = time.perf_counter()
    frame = log_policy(policies[3], setup, args.clients, args.days, 0, 0.1)
    logged = time.perf_counter() - start
    start = time.perf_counter()
    estimate(frame, policies, setup, epsilon=0.0, n_boot=args.n_boot, with_truth=False)
    ope_s = time.perf_counter() - start
    start = time.perf_counter()
    for p in policies:
        true_value(p, frame, setup)
    truth_s = time.perf_counter() - start
    report = Report()
    report(
        f"{frame.height:,} logged client-days of segment_rules, ε 0.1 (logging: {logged:.1f} s); "
        f"{args.n_boot} bootstrap replicates (FQE: 200)."
    )
    report()
    report("| policies | all six estimators (s) | simulating each for its truth (s) | ratio |")
    report("|---:|---:|---:|---:|")
    report(f"| {len(policies)} | {ope_s:.1f} | {truth_s:.1f} | {ope_s / truth_s:.2f} |")
    report.write(
        "ope_throughput", args.results_dir, documented_size=at_documented_size(parser, args)
    )


if __name__ == "__main__":
    main()
