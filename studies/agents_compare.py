"""Every agent side by side on the same fresh clients (the table in README.md).

Trains each learner on training clients (ids from 0), then evaluates all policies, the
never-send baseline, the privileged oracle and the deployable ceiling on fresh clients (ids from
2**48) with common random numbers, and prints Markdown tables of KPIs with 95% bootstrap CIs, of
harm, and of normalized value and ceiling share per consent tier.

    python studies/agents_compare.py                      # default population, balanced, 90 days, 3 seeds
    python studies/agents_compare.py --clients 1000 --quick
    python studies/agents_compare.py --agents ppo_lagrangian,propensity --train-seeds 3
    python studies/agents_compare.py --agents ppo_lagrangian \
        --variant ppo_lagrangian:action_masking=false --train-seeds 3   # a preset with overrides

With ``--train-seeds K`` each learner is trained K times (seeds 0..K-1; policies named
``<agent>@s<seed>``) and a last table gives each learner's normalized value and ceiling share,
overall and per consent tier, as the mean over training seeds with a t-interval: one training's
spread is about +-0.03, so learners are compared over seeds, not on one.

Writes the tables to docs/results/agents_compare.md at the defaults (the file the docs include);
with any other option (--quick, other agents, other sizes) to outputs/results/agents_compare.md;
--results-dir DIR writes DIR/agents_compare.md instead.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from agents.config import AgentConfig
from agents.kinds import kinds
from agents.propensity import distil
from agents.registry import make_policy, train_agent
from envs.config import eval_seeds, load_setup
from evaluation.compare import TABLE, compare, markdown_table, tier_table
from experiment.results import Report, add_results_argument, at_documented_size

BUDGETS = {k.name: k.budget for k in kinds() if k.budget is not None}
"""client-days of training per agent: each kind's default budget in the agent registry"""
NUM_ENVS = {k.name: k.train_envs for k in kinds() if k.train_envs is not None}
"""clients trained at a time, where a kind's registration sets it (else 256)"""
COLUMNS = (*TABLE, "eval/complaints_per_client")
HARM = (
    "harm/vulnerable_anxious_clicks",
    "harm/others_anxious_clicks",
    "harm/vulnerable_complaints",
    "harm/others_complaints",
    "harm/vulnerable_churn",
    "harm/others_churn",
    "fairness/urgent_gap",
    "fairness/volume_gap",
    "fairness/retention_gap",
)


def agent_preset(name: str, overrides: list[str] | tuple[str, ...] = ()) -> AgentConfig:
    """The agent as ``train.py agent=<name> agent.<key>=<value> ...`` configures it: the
    apps' config composed with Hydra's compose API (conf/agent/<name>.yaml over the kind's
    config) and checked; ``overrides`` are ``<key>=<value>`` of the agent."""
    from envs.config import compose_conf
    from experiment.schema import register, validate_run

    register()
    run, _ = validate_run(
        compose_conf("config", [f"agent={name}", *(f"agent.{o}" for o in overrides)])
    )
    return run.agent


def variant(spec: str) -> tuple[str, AgentConfig]:
    """``NAME:KEY=VALUE[:KEY=VALUE]`` -> (NAME, its preset with the overrides), checked."""
    from simulate.config import ConfigError

    name, *overrides = spec.split(":")
    if name not in BUDGETS or not overrides:
        raise SystemExit(
            f"--variant {spec!r}: expected NAME:KEY=VALUE[:KEY=VALUE] with NAME one of "
            f"{list(BUDGETS)}"
        )
    try:
        return name, agent_preset(name, overrides)
    except ConfigError as err:
        raise SystemExit(f"--variant {spec!r}: {err}") from err


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true", help="train each agent on 1/20 of its budget"
    )
    parser.add_argument(
        "--agents", default=",".join(BUDGETS), help="comma-separated learners to train"
    )
    parser.add_argument(
        "--train-seeds", type=int, default=1, help="train each learner on seeds 0..K-1"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[:KEY=VALUE]",
        help="also train agent NAME's preset with these overrides (repeatable), e.g. "
        "ppo_lagrangian:action_masking=false or ppo_lagrangian:net_arch=[64,64]; the policy is "
        "named by the whole spec",
    )
    add_results_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(2)
    setup = load_setup()
    policies = [
        make_policy(AgentConfig(name=k.name)) for k in kinds("heuristic") if k.name != "no_send"
    ]
    learners: dict[str, list[str]] = {}
    specs = [(name, agent_preset(name), None) for name in args.agents.split(",") if name]
    specs += [(*variant(spec), spec) for spec in args.variant]
    for name, cfg, label in specs:
        budget = BUDGETS[name] // (20 if args.quick else 1)
        for seed in range(args.train_seeds):
            start = time.perf_counter()
            trained = [train_agent(cfg, setup, budget, NUM_ENVS.get(name, 256), seed=seed)]
            if name == "propensity":  # the teacher, and the network it teaches
                trained.append(distil(trained[0], cfg, setup, budget, 2048, seed=seed))
            for policy in trained:
                if label is not None:
                    policy.name = label
                if args.train_seeds > 1:
                    base = policy.name
                    policy.name = f"{base}@s{seed}"
                    learners.setdefault(base, []).append(policy.name)
                policies.append(policy)
            print(
                f"trained {label or name} (seed {seed}) on {budget:,} client-days in "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )
    start = time.perf_counter()
    result = compare(policies, setup, args.clients, args.days, seeds=eval_seeds(args.seeds))
    print(f"\nevaluated {len(result.metrics)} policies in {time.perf_counter() - start:.0f} s\n")
    report = Report()
    report(
        f"{len(result.metrics)} policies on {args.clients:,} fresh clients x {args.days} days x "
        f"{args.seeds} evaluation seed(s) (common random numbers); learners trained on "
        f"{'1/20 of ' if args.quick else ''}their budgets, {args.train_seeds} training seed(s)."
    )
    report()
    report(markdown_table(result, COLUMNS))
    report()
    report(markdown_table(result, HARM))
    report()
    report(tier_table(result))  # normalized value and ceiling share per consent tier
    if learners:
        report()
        report(seed_table(result, learners))
    report.write(
        "agents_compare", args.results_dir, documented_size=at_documented_size(parser, args)
    )
    return 0


def seed_table(result, learners: dict[str, list[str]]) -> str:
    """Markdown: per learner, normalized value and ceiling share (overall and per tier) as the
    mean over training seeds with a 95 % t-interval, and each seed's value."""
    from scipy import stats

    keys = ["eval/normalized_value", "eval/ceiling_share"]
    tiers = [k for k in result.metrics[next(iter(result.metrics))] if k.startswith("tier/")]
    keys += sorted(tiers)
    head = [
        "learner",
        "seeds",
        *(k.removeprefix("eval/") for k in keys),
        "normalized_value by seed",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for learner, names in learners.items():
        cells = [learner, str(len(names))]
        for key in keys:
            x = np.array([result.metrics[n][key][0] for n in names])
            half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
            cells.append(f"{x.mean():.3f} ± {half:.3f}")
        by_seed = [result.metrics[n]["eval/normalized_value"][0] for n in names]
        cells.append(", ".join(f"{v:.3f}" for v in by_seed))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
