"""Off-policy estimation speed: SNIPS and PDWIS for several policies on about a million logged
client-days, against the peer of simulating each policy on the same clients for its truth.

    python benchmarks/ope_throughput.py                  # 20,000 clients x 50 days
    python benchmarks/ope_throughput.py --clients 2000   # a smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.config import AgentConfig  # noqa: E402
from agents.registry import make_policy  # noqa: E402
from envs.config import load_setup  # noqa: E402
from evaluation.logged import log_policy  # noqa: E402
from evaluation.offline import estimate, true_value  # noqa: E402

POLICIES = ("no_send", "batch_and_blast", "fixed_weekly", "segment_rules", "linucb", "recovering")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=50)
    args = parser.parse_args()
    setup = load_setup()
    start = time.perf_counter()
    frame = log_policy(
        make_policy(AgentConfig(name="segment_rules")), setup, args.clients, args.days, 0, 0.1
    )
    logged = time.perf_counter() - start
    policies = [make_policy(AgentConfig(name=n)) for n in POLICIES]
    start = time.perf_counter()
    estimate(frame, policies, setup, epsilon=0.1, n_boot=100, fqe_boot=0, with_truth=False)
    ope_s = time.perf_counter() - start
    start = time.perf_counter()
    for p in policies:
        true_value(p, frame, setup, epsilon=0.1)
    truth_s = time.perf_counter() - start
    print(f"{frame.height:,} logged client-days (logging took {logged:.1f} s)")
    print("| policies | SNIPS + PDWIS + FQE (s) | simulating each for its truth (s) | ratio |")
    print("|---:|---:|---:|---:|")
    print(f"| {len(policies)} | {ope_s:.1f} | {truth_s:.1f} | {ope_s / truth_s:.2f} |")


if __name__ == "__main__":
    main()
