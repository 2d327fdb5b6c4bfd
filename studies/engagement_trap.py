"""The engagement trap, measured: the same agent trained on the ``engagement`` reward (clicks
only) and on ``balanced``, both evaluated on the same fresh clients with the balanced value.

    python studies/engagement_trap.py [--agent ppo] [--timesteps 6000000]

Writes the table to docs/results/engagement_trap.md at the defaults (the file the docs include);
with any other option to outputs/results/engagement_trap.md; --results-dir DIR writes
DIR/engagement_trap.md instead.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from agents.config import AgentConfig
from agents.registry import train_agent
from envs.config import eval_seeds, load_setup
from evaluation.compare import compare, markdown_table
from experiment.results import Report, add_results_argument, at_documented_size

COLUMNS = (
    "eval/clicks_per_client",
    "eval/anxious_click_share",
    "eval/retention",
    "eval/value",
    "eval/normalized_value",
    "eval/conversions_per_client",
    "eval/messages_per_client_week",
    "eval/complaints_per_client",
)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agent", default="ppo")
    parser.add_argument("--timesteps", type=int, default=6_000_000)
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--seeds", type=int, default=3)
    add_results_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(2)
    policies = []
    for reward in ("engagement", "balanced"):
        start = time.perf_counter()
        policy = train_agent(
            AgentConfig(name=args.agent), load_setup(reward=reward), args.timesteps, 256
        )
        policy.name = f"{args.agent}@{reward}"
        policies.append(policy)
        print(f"trained {policy.name} in {time.perf_counter() - start:.0f} s", flush=True)
    result = compare(policies, load_setup(), args.clients, 90, seeds=eval_seeds(args.seeds))
    report = Report()
    report()
    report(
        f"{args.agent} trained on {args.timesteps:,} client-days per reward; evaluated with the "
        f"balanced value on {args.clients:,} fresh clients x 90 days x {args.seeds} seeds."
    )
    report()
    report(markdown_table(result, COLUMNS))
    a, b = (p.name for p in policies)
    key = (a, b) if (a, b) in result.differences else (b, a)
    est, lo, hi = result.differences[key]
    report()
    report(f"Value of {key[0]} minus {key[1]} on the same clients: {est:.3f} [{lo:.3f}, {hi:.3f}].")
    report.write(
        "engagement_trap", args.results_dir, documented_size=at_documented_size(parser, args)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
