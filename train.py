"""Default job: until the learning agents land, a rollout of the heuristic baselines on the
default population, balanced reward, 90 days, fresh clients, 3 seeds, with KPIs and 95% CIs.

    python train.py [--clients N] [--days D] [--seeds K] [--scenario NAME] [--reward NAME]
"""

from __future__ import annotations

import argparse
import sys
import time

from rich.console import Console
from rich.table import Table

from agents.heuristics import HEURISTICS
from envs.config import load_setup
from evaluation import evaluate, kpis

SHOWN = ("eval/value", "eval/retention", "eval/clicks_per_client", "eval/anxious_click_share",
         "eval/conversions_per_client", "eval/messages_per_client_week", "eval/unsubscribes_per_client",
         "eval/guardrail_violations")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=5000, help="fresh clients per seed (default 5000)")
    parser.add_argument("--days", type=int, default=90, help="horizon in days (default 90)")
    parser.add_argument("--seeds", type=int, default=3, help="evaluation seeds (default 3)")
    parser.add_argument("--scenario", default="calm", help="scenario preset in conf/scenario")
    parser.add_argument("--reward", default="balanced", help="reward preset in conf/reward")
    args = parser.parse_args(argv)
    console = Console(width=200)
    setup = load_setup(scenario=args.scenario, reward=args.reward)
    policies = [cls() for cls in HEURISTICS.values()]
    start = time.perf_counter()
    rollouts = evaluate(policies, setup, args.clients, args.days, seeds=range(1000, 1000 + args.seeds))
    table = Table(title=f"Heuristic baselines: {args.clients} fresh clients x {args.days} days x "
                        f"{args.seeds} seeds, scenario {args.scenario} (mean ± half-width of the 95% bootstrap CI)")
    table.add_column("policy")
    for name in SHOWN:
        table.add_column(name.split("/", 1)[1], justify="right")
    for policy in policies:
        k = kpis([r for r in rollouts if r.policy == policy.name])
        cells = [f"{k[n][0]:.3g}" if n == "eval/guardrail_violations" else
                 f"{k[n][0]:.3f} ± {(k[n][2] - k[n][1]) / 2:.3f}" for n in SHOWN]
        table.add_row(policy.name, *cells)
    console.print(table)
    console.print(f"evaluated {len(policies)} policies in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
