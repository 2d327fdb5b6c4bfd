"""Every agent side by side on the same fresh clients (the table in README.md).

Trains each learner on training clients (ids from 0), then evaluates all policies, the
never-send baseline, the privileged oracle and the deployable ceiling on fresh clients (ids from
2**48) with common random numbers, and prints Markdown tables of KPIs with 95% bootstrap CIs, of
harm, and of normalized value and ceiling share per consent tier.

    python studies/agents_compare.py                      # default population, balanced, 90 days, 3 seeds
    python studies/agents_compare.py --clients 1000 --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from agents.config import AgentConfig  # noqa: E402
from agents.heuristics import HEURISTICS  # noqa: E402
from agents.registry import train_agent  # noqa: E402
from envs.config import load_setup  # noqa: E402
from evaluation.compare import TABLE, compare, markdown_table, tier_table  # noqa: E402

# client-days of training per agent, and its hyperparameters (beyond AgentConfig defaults)
BUDGETS = {
    "epsilon_greedy": 200_000,
    "linucb": 200_000,
    "thompson": 200_000,
    "recovering": 200_000,
    "ppo": 6_000_000,
    "maskable_ppo": 6_000_000,
    "ppo_lagrangian": 6_000_000,
    "a2c": 6_000_000,
    "dqn": 1_000_000,
    "recurrent_ppo": 6_000_000,
}
NUM_ENVS = {"epsilon_greedy": 500, "linucb": 500, "thompson": 500, "recovering": 500}
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


def agent_preset(name: str) -> AgentConfig:
    """The agent as ``train.py agent=<name>`` configures it: conf/agent/<name>.yaml over the
    AgentConfig defaults (the default agent's normalised returns and wider networks included)."""
    from omegaconf import OmegaConf

    from envs.config import CONF_DIR

    path = CONF_DIR / "agent" / f"{name}.yaml"
    node = OmegaConf.merge(OmegaConf.structured(AgentConfig), OmegaConf.load(path))
    return OmegaConf.to_object(node)


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
    args = parser.parse_args()
    torch.set_num_threads(2)
    setup = load_setup()
    policies = [
        cls(0) if name == "random" else cls()
        for name, cls in HEURISTICS.items()
        if name != "no_send"
    ]
    for name in args.agents.split(","):
        budget = BUDGETS[name] // (20 if args.quick else 1)
        start = time.perf_counter()
        policies.append(
            train_agent(agent_preset(name), setup, budget, NUM_ENVS.get(name, 256), seed=0)
        )
        print(
            f"trained {name} on {budget:,} client-days in {time.perf_counter() - start:.0f} s",
            flush=True,
        )
    start = time.perf_counter()
    result = compare(policies, setup, args.clients, args.days, seeds=range(1000, 1000 + args.seeds))
    print(f"\nevaluated {len(result.metrics)} policies in {time.perf_counter() - start:.0f} s\n")
    print(markdown_table(result, COLUMNS))
    print()
    print(markdown_table(result, HARM))
    print()
    print(tier_table(result))  # normalized value and ceiling share per consent tier
    return 0


if __name__ == "__main__":
    sys.exit(main())
