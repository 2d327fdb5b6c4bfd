"""How well does a reward a firm can observe rank policies, against the latent balanced one?

The balanced reward values a click by its cause (calm or anxious), which only the simulator
knows; the observable reward (``conf/reward/observable.yaml``) weighs only what a firm records.
This study rolls the heuristics, the linear bandits and an SB3 learner (trained on the balanced
reward, again on the observable one, and again on clicks alone) out on the same fresh evaluation clients (common random
numbers, :func:`evaluation.rollout.rollout`), scores every client's horizon under both rewards,
and reports how the two rankings agree: Spearman's rho and Kendall's tau with 95 % bootstrap
intervals over evaluation clients, the pairs the two rewards order differently, the largest
balanced-value gap such a wrong ordering costs, and the balanced value lost by deploying the
observable reward's first choice instead of the balanced one's.

    python studies/observable_reward.py            # 1,000 clients x 90 days x 2 seeds (~10 min)
    python studies/observable_reward.py --quick    # 200 clients x 30 days x 1 seed, tiny budgets (~1 min)

It writes the tables to ``docs/results/observable_reward.md`` (``--out``) and prints them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from agents.base import Policy  # noqa: E402
from agents.config import AgentConfig  # noqa: E402
from agents.registry import make_policy, train_agent  # noqa: E402
from envs.config import RewardConfig, Setup, load_setup  # noqa: E402
from envs.reward import observable_value  # noqa: E402
from evaluation.rollout import rollout  # noqa: E402

HEURISTICS = ("random", "no_send", "batch_and_blast", "fixed_weekly", "segment_rules")
BANDITS = ("linucb", "thompson", "epsilon_greedy")
BANDIT_ENVS = 500
"""training clients a bandit learns from at a time (as in the agents comparison)"""
LEARNER_REWARDS = ("balanced", "observable", "engagement")
"""the rewards each SB3 learner is trained on: the yardstick, the observable reward, and clicks
alone (the engagement trap: a policy that buys clicks with anxiety, which only the latent
yardstick sees)"""
SB3_ENVS = 256
"""training clients an SB3 learner steps at a time"""
OUT = ROOT / "docs" / "results" / "observable_reward.md"


@dataclass(frozen=True)
class Sizes:
    """How big a run is: evaluation clients and days, seeds, training budgets (client-days)."""

    clients: int
    days: int
    seeds: int
    bandit_budget: int
    sb3_budget: int
    n_boot: int


FULL = Sizes(clients=1000, days=90, seeds=2, bandit_budget=50_000, sb3_budget=500_000, n_boot=1000)
QUICK = Sizes(clients=200, days=30, seeds=1, bandit_budget=5_000, sb3_budget=20_000, n_boot=200)


@dataclass
class Scores:
    """Per-client value of every policy over the horizon under both rewards, all seeds' clients
    side by side (the same clients in every row: common random numbers)."""

    policies: list[str]
    trained_on: list[str]
    """the reward each policy learned from ("-" for a heuristic)"""
    balanced: np.ndarray
    """(policies, clients) balanced value per client over the horizon"""
    observable: np.ndarray
    """(policies, clients) observable value per client over the horizon"""
    anxious_share: np.ndarray
    """(policies,) anxious clicks over all clicks (latent; shown to explain disagreements)"""


def build_policies(
    setup: Setup, learners: Sequence[str], sizes: Sizes
) -> tuple[list[Policy], list[str]]:
    """The heuristics, the bandits trained on ``setup``'s reward, and each SB3 learner trained on
    every reward of :data:`LEARNER_REWARDS`; returns the policies and the reward each trained on."""
    policies: list[Policy] = [make_policy(AgentConfig(name=name)) for name in HEURISTICS]
    trained_on = ["-"] * len(policies)
    jobs = [(name, setup, sizes.bandit_budget, BANDIT_ENVS) for name in BANDITS]
    jobs += [
        (name, load_setup(reward=reward), sizes.sb3_budget, SB3_ENVS)
        for name in learners
        for reward in LEARNER_REWARDS
    ]
    for name, train_setup, budget, envs in jobs:
        start = time.perf_counter()
        policy = train_agent(
            AgentConfig(name=name), train_setup, budget, envs, seed=0, progress=False
        )
        if train_setup.reward.name != setup.reward.name:
            policy.name = f"{name} ({train_setup.reward.name})"
        policies.append(policy)
        trained_on.append(train_setup.reward.name)
        print(
            f"trained {policy.name} on {budget:,} client-days of the {train_setup.reward.name} "
            f"reward in {time.perf_counter() - start:.0f} s",
            flush=True,
        )
    return policies, trained_on


def score(policies: Sequence[Policy], trained_on: list[str], setup: Setup, sizes: Sizes) -> Scores:
    """Roll every policy out on the same fresh clients of each seed (1000, 1001, ...) and value
    each client's horizon under the balanced yardstick and under the observable reward."""
    observable = load_setup(reward="observable").reward
    balanced_rows, observable_rows, shares = [], [], []
    for policy in policies:
        balanced, seen, clicks, anxious = [], [], 0.0, 0.0
        for seed in range(1000, 1000 + sizes.seeds):
            value = np.zeros(sizes.clients)
            run = rollout(
                policy,
                setup,
                sizes.clients,
                sizes.days,
                seed,
                on_day=_accumulate(value, observable),
                yardstick=RewardConfig(),
            )
            balanced.append(run.value)
            seen.append(value)
            clicks += run.totals["clicked"].sum()
            anxious += run.totals["anxious_click"].sum()
        balanced_rows.append(np.concatenate(balanced))
        observable_rows.append(np.concatenate(seen))
        shares.append(anxious / clicks if clicks else 0.0)
    return Scores(
        [p.name for p in policies],
        trained_on,
        np.stack(balanced_rows),
        np.stack(observable_rows),
        np.array(shares),
    )


def _accumulate(value: np.ndarray, observable: RewardConfig) -> Callable[..., None]:
    """A rollout's ``on_day`` that adds each living client's observable reward of the day to
    ``value`` (in place), as the rollout adds the balanced one to its own value."""

    def add(day: int, actions: np.ndarray, outcomes: dict, alive: np.ndarray) -> None:
        value[:] += alive * observable_value(outcomes, observable)

    return add


def ranks(values: np.ndarray) -> np.ndarray:
    """1-based rank of each value, best (highest) first; ties share the better rank."""
    order = stats.rankdata(-values, method="min")
    return order.astype(int)


@dataclass
class Agreement:
    """How the observable ranking agrees with the balanced one (point estimates and CIs)."""

    spearman: tuple[float, float, float]
    """Spearman's rho (estimate, 95 % low, high)"""
    kendall: tuple[float, float, float]
    """Kendall's tau-b (estimate, 95 % low, high)"""
    discordant: list[tuple[str, str, float]]
    """(balanced's better, observable's better, balanced value gap per client) of each pair
    the two rewards order differently, largest gap first"""
    pairs: int
    """pairs of policies compared"""
    top_regret: float
    """balanced value per client lost by deploying the observable reward's first choice"""
    top_agreement: float
    """share of bootstrap replicates in which both rewards put the same policy first"""


def agreement(scores: Scores, n_boot: int, seed: int = 0) -> Agreement:
    """Rank correlations of the mean values (bootstrap over evaluation clients, paired across
    policies), discordant pairs and what the worst of them costs in balanced value."""
    balanced = scores.balanced.mean(axis=1)
    observable = scores.observable.mean(axis=1)
    rng = np.random.default_rng(seed)
    n = scores.balanced.shape[1]
    rhos, taus, same_top = [], [], []
    for _ in range(n_boot):
        rows = rng.integers(0, n, n)
        b, o = scores.balanced[:, rows].mean(axis=1), scores.observable[:, rows].mean(axis=1)
        rhos.append(stats.spearmanr(b, o).statistic)
        taus.append(stats.kendalltau(b, o).statistic)
        same_top.append(np.argmax(b) == np.argmax(o))
    discordant = []
    for i, j in combinations(range(len(scores.policies)), 2):
        if (balanced[i] - balanced[j]) * (observable[i] - observable[j]) < 0:
            better, worse = (i, j) if balanced[i] > balanced[j] else (j, i)
            discordant.append(
                (
                    scores.policies[better],
                    scores.policies[worse],
                    balanced[better] - balanced[worse],
                )
            )
    discordant.sort(key=lambda pair: -pair[2])
    return Agreement(
        spearman=(
            stats.spearmanr(balanced, observable).statistic,
            *np.percentile(rhos, [2.5, 97.5]),
        ),
        kendall=(
            stats.kendalltau(balanced, observable).statistic,
            *np.percentile(taus, [2.5, 97.5]),
        ),
        discordant=discordant,
        pairs=len(scores.policies) * (len(scores.policies) - 1) // 2,
        top_regret=float(balanced.max() - balanced[np.argmax(observable)]),
        top_agreement=float(np.mean(same_top)),
    )


def _interval(values: np.ndarray, n_boot: int, seed: int = 1) -> tuple[float, float, float]:
    """Mean per client and its 95 % bootstrap interval."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (n_boot, values.size))].mean(axis=1)
    return float(values.mean()), *np.percentile(means, [2.5, 97.5])


def markdown(scores: Scores, agree: Agreement, sizes: Sizes, command: str) -> str:
    """The ranking table, the agreement summary and the discordant pairs, as Markdown."""
    balanced = scores.balanced.mean(axis=1)
    observable = scores.observable.mean(axis=1)
    rank_b, rank_o = ranks(balanced), ranks(observable)
    lines = [
        f"`{command}` at commit `{_commit()}`: {sizes.clients:,} evaluation clients x "
        f"{sizes.days} days x {sizes.seeds} seed(s) (common random numbers); bandits trained on "
        f"{sizes.bandit_budget:,} client-days, SB3 learners on {sizes.sb3_budget:,}; "
        f"{sizes.n_boot} bootstrap replicates over evaluation clients. Values are per client "
        "over the horizon.",
        "",
        "| policy | trained on | balanced value [95% CI] | balanced rank | observable value "
        "[95% CI] | observable rank | anxious click share |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for i in np.argsort(rank_b, kind="stable"):
        b = _interval(scores.balanced[i], sizes.n_boot)
        o = _interval(scores.observable[i], sizes.n_boot)
        lines.append(
            f"| {scores.policies[i]} | {scores.trained_on[i]} | {b[0]:.3f} [{b[1]:.3f}, {b[2]:.3f}]"
            f" | {rank_b[i]} | {o[0]:.3f} [{o[1]:.3f}, {o[2]:.3f}] | {rank_o[i]} | "
            f"{scores.anxious_share[i]:.3f} |"
        )
    rho, tau = agree.spearman, agree.kendall
    worst = agree.discordant[0] if agree.discordant else None
    lines += [
        "",
        "| agreement of the two rankings | value |",
        "|---|---:|",
        f"| Spearman's rho [95% CI] | {rho[0]:.3f} [{rho[1]:.3f}, {rho[2]:.3f}] |",
        f"| Kendall's tau-b [95% CI] | {tau[0]:.3f} [{tau[1]:.3f}, {tau[2]:.3f}] |",
        f"| pairs ordered differently | {len(agree.discordant)} of {agree.pairs} |",
        "| largest balanced-value gap of a wrongly ordered pair (per client) | "
        + (f"{worst[2]:.3f} ({worst[0]} over {worst[1]}) |" if worst else "0 (none) |"),
        "| balanced value lost by deploying the observable reward's first choice (per client) | "
        f"{agree.top_regret:.3f} |",
        f"| bootstrap share in which both rewards choose the same first policy | "
        f"{agree.top_agreement:.2f} |",
    ]
    if agree.discordant:
        lines += [
            "",
            "| balanced prefers | observable prefers | balanced value gap per client |",
            "|---|---|---:|",
            *(f"| {a} | {b} | {gap:.3f} |" for a, b, gap in agree.discordant),
        ]
    return "\n".join(lines) + "\n"


def _commit() -> str:
    """The short git commit of the tree the study ran on ("unknown" outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--clients", type=int, help="evaluation clients per seed")
    parser.add_argument("--days", type=int, help="days each evaluation client is followed")
    parser.add_argument("--seeds", type=int, help="evaluation seeds (1000, 1001, ...)")
    parser.add_argument(
        "--learners",
        default="maskable_ppo",
        help="comma-separated SB3 learners, each trained on every reward of LEARNER_REWARDS "
        "(empty: none)",
    )
    parser.add_argument("--out", type=Path, default=OUT, help="Markdown file written")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    sizes = Sizes(
        clients=args.clients or base.clients,
        days=args.days or base.days,
        seeds=args.seeds or base.seeds,
        bandit_budget=base.bandit_budget,
        sb3_budget=base.sb3_budget,
        n_boot=base.n_boot,
    )
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    setup = load_setup()
    learners = [name for name in args.learners.split(",") if name]
    policies, trained_on = build_policies(setup, learners, sizes)
    start = time.perf_counter()
    scores = score(policies, trained_on, setup, sizes)
    print(f"evaluated {len(policies)} policies in {time.perf_counter() - start:.0f} s\n")
    command = "python studies/observable_reward.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    text = markdown(scores, agreement(scores, sizes.n_boot), sizes, command.strip())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
