"""How long the comparison's references take to roll out, beside a heuristic on the same clients.

Every comparison (train.py, evaluate.py) rolls out the privileged oracle and the deployable
ceiling beside the policies it compares; both value every allowed send of every client each
day. Rolled out here one after another on the same fresh clients (one evaluation seed):

  * segment_rules (the peer: a heuristic's rollout, the simulator's own cost),
  * the oracle valuing all of a day's allowed sends in one block,
  * the oracle valuing them a block of clients at a time (``Oracle.block``, the default),
  * the deployable ceiling (which plans with the oracle's valuation, blocked).

Prints seconds, client-days per second and each rollout's time over the peer's (the fastest
of ``--repeats`` interleaved rounds: the ratios hold on a busy machine); the two
oracles' actions are checked to be identical day by day (same values, only faster).

    python benchmarks/reference_speed.py [--clients 5000] [--days 90] [--repeats 1]

Writes the table to docs/results/reference_speed.md at the defaults (the file the docs include);
with any other size to outputs/results/reference_speed.md; --results-dir DIR writes
DIR/reference_speed.md instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy is imported

import numpy as np  # noqa: E402

from agents.base import Policy  # noqa: E402
from agents.ceiling import DeployableCeiling  # noqa: E402
from agents.config import AgentConfig  # noqa: E402
from agents.oracle import Oracle  # noqa: E402
from agents.registry import make_policy  # noqa: E402
from envs.config import Setup, eval_seeds, load_setup  # noqa: E402
from evaluation.rollout import rollout  # noqa: E402
from experiment.results import Report, add_results_argument, at_documented_size  # noqa: E402

WHOLE_DAY = 1 << 40
"""an ``Oracle.block`` no day reaches: every allowed send of the day valued in one block"""


def timed(policy: Policy, setup: Setup, clients: int, days: int, seed: int) -> tuple[float, list]:
    """Seconds of one rollout of ``policy`` and the actions it took each day."""
    actions: list[np.ndarray] = []
    start = time.perf_counter()
    rollout(policy, setup, clients, days, seed, on_day=lambda _d, a, _o, _al: actions.append(a))
    return time.perf_counter() - start, actions


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=5000, help="fresh clients (default 5000)")
    parser.add_argument("--days", type=int, default=90, help="days rolled out (default 90)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="rounds of the four rollouts, interleaved; each row shows its fastest (default 1)",
    )
    add_results_argument(parser)
    args = parser.parse_args()
    if min(args.clients, args.days, args.repeats) < 1:
        parser.error(
            "--clients, --days and --repeats must be at least 1, got "
            f"{args.clients}, {args.days}, {args.repeats}"
        )
    setup = load_setup()
    seed = eval_seeds(1)[0]
    whole = Oracle()
    whole.block = WHOLE_DAY
    runs = [
        ("segment_rules (peer)", make_policy(AgentConfig(name="segment_rules"), 0)),
        ("oracle, all of a day's sends in one block", whole),
        (f"oracle, blocks of {Oracle().block:,} sends (default)", Oracle()),
        ("deployable_ceiling (blocked)", DeployableCeiling(setup)),
    ]
    client_days = args.clients * args.days
    report = Report()
    report(
        f"{args.clients:,} fresh clients x {args.days} days, evaluation seed {seed}, one core; "
        f"the fastest of {args.repeats} round(s)."
    )
    report()
    report("| rollout | seconds | client-days/s | seconds / peer's |")
    report("|---|---:|---:|---:|")
    seconds = {label: float("inf") for label, _ in runs}
    taken: dict[str, list] = {}
    for _ in range(args.repeats):  # interleaved: a busy spell on the machine slows every row
        for label, policy in runs:
            took, taken[label] = timed(policy, setup, args.clients, args.days, seed)
            seconds[label] = min(seconds[label], took)
    peer = seconds[runs[0][0]]
    for label, _ in runs:
        report(
            f"| {label} | {seconds[label]:.1f} | {client_days / seconds[label]:,.0f} | "
            f"{seconds[label] / peer:.1f} |"
        )
    plain, blocked = taken[runs[1][0]], taken[runs[2][0]]
    same = all(np.array_equal(a, b) for a, b in zip(plain, blocked, strict=True))
    report()
    report(
        f"Blocked oracle / plain oracle: {seconds[runs[2][0]] / seconds[runs[1][0]]:.2f} of the "
        f"time; the same actions every day: {'yes' if same else 'NO'}."
    )
    report.write(
        "reference_speed", args.results_dir, documented_size=at_documented_size(parser, args)
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
