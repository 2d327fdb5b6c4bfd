"""How long evaluating 8 policies on 100,000 clients x 90 days takes on this machine.

The 8 deployable policies: the five heuristics, two bandits and PPO (the learners trained
briefly: only their acting cost matters here). Prints the time per policy and in total.

    python benchmarks/eval_throughput.py [--clients 100000] [--days 90]

Writes the table to docs/results/eval_throughput.md at the defaults (the file the docs include);
with any other size to outputs/results/eval_throughput.md; --results-dir DIR writes
DIR/eval_throughput.md instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from agents.config import AgentConfig
from agents.heuristics import HEURISTICS
from agents.registry import train_agent
from envs.config import load_setup
from evaluation.rollout import evaluate, rollout
from experiment.results import Report, add_results_argument, at_documented_size


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes for the parallel run"
    )
    add_results_argument(parser)
    args = parser.parse_args()
    setup = load_setup()
    policies = [cls(0) if name == "random" else cls() for name, cls in HEURISTICS.items()]
    for name in ("epsilon_greedy", "linucb", "ppo"):
        policies.append(train_agent(AgentConfig(name=name), setup, 20_000, 256, progress=False))
    report = Report()
    report(f"| policy | seconds for {args.clients:,} clients x {args.days} days |")
    report("|---|---:|")
    total = 0.0
    for policy in policies:
        start = time.perf_counter()
        rollout(policy, setup, args.clients, args.days, seed=1000)
        took = time.perf_counter() - start
        total += took
        report(f"| {policy.name} | {took:.1f} |")
    report(f"| **all {len(policies)}, one after another** | **{total:.1f}** |")
    start = time.perf_counter()
    evaluate(
        policies,
        setup,
        args.clients,
        args.days,
        seeds=(1000,),
        progress=False,
        workers=args.workers,
    )
    report(
        f"| **all {len(policies)}, {args.workers} worker processes** | **{time.perf_counter() - start:.1f}** |"
    )
    report.write(
        "eval_throughput", args.results_dir, documented_size=at_documented_size(parser, args)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
