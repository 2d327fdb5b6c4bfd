"""Simulator throughput: the batched world vs per-client envs in gymnasium's SyncVectorEnv.

Prints client-days per second for
  * the batched world alone (``World.step``),
  * the batched env (gymnasium VectorEnv face: guardrails, masks, reward, observations),
  * per-client ``gymnasium.make("Cadence-v0")`` envs in ``SyncVectorEnv`` (the peer),
the ratio of the batched env to the peer, and bytes of world state per client.
Pinned to one core. Actions: uniform random components, a send on 3 days in 10.

    python benchmarks/sim_throughput.py            # N = 1k, 10k, 100k, 1M
    python benchmarks/sim_throughput.py --quick    # N = 1k, 10k (for a smoke run)

Writes the table to docs/results/sim_throughput.md (the file the docs include); with --quick to
outputs/results/sim_throughput.md; --results-dir DIR writes DIR/sim_throughput.md instead.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy is imported

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

import envs  # noqa: E402
from envs.config import load_setup  # noqa: E402
from envs.vector_env import CadenceVectorEnv  # noqa: E402
from experiment.results import Report, add_results_argument, at_documented_size  # noqa: E402
from simulate.world import World  # noqa: E402

SEND_RATE = 0.3
MIN_SECONDS = 1.5


def actions_for(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.stack([rng.integers(0, k, n) for k in (7, 5, 3, 4)], axis=1)
    a[:, 0] = np.where(rng.random(n) < SEND_RATE, rng.integers(1, 7, n), 0)
    return a


def timed(step, n: int, min_steps: int = 3) -> float:
    """Client-days per second of ``step(day)``, after one warm-up step."""
    step(0)
    days, start = 0, time.perf_counter()
    while days < min_steps or time.perf_counter() - start < MIN_SECONDS:
        days += 1
        step(days)
    return n * days / (time.perf_counter() - start)


def world_rate(n: int) -> tuple[float, float]:
    s = load_setup()
    world = World(s.population, s.env.response, s.scenario, 0, np.arange(n, dtype=np.uint64))
    a = actions_for(n)
    rate = timed(lambda d: world.step(d, a[:, 0], a[:, 1], a[:, 2], a[:, 3]), n)
    return rate, world.state_nbytes() / n


def vector_env_rate(n: int) -> float:
    env = CadenceVectorEnv(num_envs=n)
    env.reset(seed=0)
    a = actions_for(n)
    return timed(lambda d: env.step(a), n)


def sync_rate(n: int) -> float:
    env = gym.vector.SyncVectorEnv([lambda: gym.make(envs.ENV_ID) for _ in range(n)])
    env.reset(seed=0)
    a = actions_for(n)
    return timed(lambda d: env.step(a), n)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="only N = 1k and 10k")
    add_results_argument(parser)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000, 1_000_000]
    peer_n = 256
    peer = sync_rate(peer_n)
    report = Report()
    report(
        "One core (pinned), random actions with a send on 3 days in 10; the peer: "
        f"{peer_n} per-client envs in gymnasium SyncVectorEnv, {peer:,.0f} client-days/s."
    )
    report()
    report(
        "| clients | batched world (client-days/s) | world / peer | batched env (client-days/s) | env / peer | state bytes/client |"
    )
    report("|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        world, nbytes = world_rate(n)
        env = vector_env_rate(n)
        report(
            f"| {n:,} | {world:,.0f} | {world / peer:,.0f}x | {env:,.0f} | {env / peer:,.0f}x | {nbytes:,.0f} |"
        )
    report.write(
        "sim_throughput", args.results_dir, documented_size=at_documented_size(parser, args)
    )


if __name__ == "__main__":
    main()
