"""Does an agent learn? Its trained policy against its own start and against ``segment_rules``,
over several training seeds, all evaluated on the same fresh clients with common random numbers.

This is where learning quality is measured (it is noisy from one training seed to the next, so
it is not a unit-test threshold): per training seed, the value of the trained policy minus the
value of the same agent after one rollout (its start), and minus ``segment_rules``, each a paired
difference on the same clients with a bootstrap CI; then the mean over training seeds with a
t-interval.

    python studies/learning_check.py                          # ppo, 6 M client-days, seeds 0-4
    python studies/learning_check.py --agent ppo_lagrangian --budget 2000000 --seeds 3

Writes the table to docs/results/learning_check.md at the defaults (the file the docs include);
with any other option to outputs/results/learning_check.md; --results-dir DIR writes
DIR/learning_check.md instead.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from scipy import stats

from agents.config import AgentConfig
from agents.heuristics import SegmentRules
from agents.registry import train_agent
from envs.config import eval_seeds, load_setup
from evaluation.metrics import paired_difference
from evaluation.rollout import evaluate
from experiment.results import Report, add_results_argument, at_documented_size


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval over training seeds."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agent", default="ppo")
    parser.add_argument(
        "--budget", type=int, default=6_000_000, help="client-days of training per seed"
    )
    parser.add_argument("--seeds", type=int, default=5, help="training seeds 0..n-1")
    parser.add_argument("--num-envs", type=int, default=256)
    parser.add_argument(
        "--clients", type=int, default=1500, help="fresh evaluation clients per seed"
    )
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--eval-seeds", type=int, default=2)
    add_results_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(2)
    setup = load_setup(overrides=[f"env.horizon_days={args.days}"])
    cfg = AgentConfig(name=args.agent)
    seeds = tuple(eval_seeds(args.eval_seeds))
    baseline = evaluate([SegmentRules()], setup, args.clients, args.days, seeds, progress=False)
    rows, over_start, over_rules = [], [], []
    report = Report()
    report(
        f"{args.agent}: {args.budget:,} client-days per training seed; value per client, paired on "
        f"{args.clients:,} fresh clients x {args.days} days x {len(seeds)} evaluation seeds "
        "(mean [95% bootstrap CI])."
    )
    report()
    report("| training seed | trained - start | trained - segment_rules | train s |")
    report("|---:|---:|---:|---:|")
    for seed in range(args.seeds):
        began = time.perf_counter()
        start = train_agent(cfg, setup, args.num_envs, args.num_envs, seed=seed, progress=False)
        trained = train_agent(cfg, setup, args.budget, args.num_envs, seed=seed, progress=False)
        seconds = time.perf_counter() - began
        start.name, trained.name = "start", "trained"
        rollouts = evaluate([start, trained], setup, args.clients, args.days, seeds, progress=False)
        by = {name: [r for r in rollouts if r.policy == name] for name in ("start", "trained")}
        vs_start = paired_difference(by["trained"], by["start"])
        vs_rules = paired_difference(by["trained"], baseline)
        over_start.append(vs_start[0])
        over_rules.append(vs_rules[0])
        rows.append((seed, vs_start, vs_rules))
        report(
            f"| {seed} | {vs_start[0]:.3f} [{vs_start[1]:.3f}, {vs_start[2]:.3f}] | "
            f"{vs_rules[0]:.3f} [{vs_rules[1]:.3f}, {vs_rules[2]:.3f}] | {seconds:.0f} |"
        )
    means = [mean_interval(values) for values in (over_start, over_rules)]
    report(
        f"| mean over {len(over_start)} seeds (95% t-interval) | "
        + " | ".join(f"{mean:.3f} [{lo:.3f}, {hi:.3f}]" for mean, lo, hi in means)
        + " | |"
    )
    report.write(
        "learning_check", args.results_dir, documented_size=at_documented_size(parser, args)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
