"""Training throughput of the default agent, beside its two peers measured in the same run.

    python benchmarks/train_throughput.py                       # 1 M client-days per row
    python benchmarks/train_throughput.py --client-days 500000 --repeats 3
    python benchmarks/train_throughput.py --client-days 300000 --no-write

Rows, each in client-days of training per second of wall time:

- ``default agent``: ``conf/agent/ppo_lagrangian.yaml`` as ``train.py`` trains it (its clients
  per vector step, the fast masked path of ``agents.sb3_agents``, torch threads
  ``agents.training.TORCH_THREADS`` in the rollouts and ``UPDATE_THREADS`` in the update);
- ``1,024 a step, 2 epochs``: the same with :data:`CANDIDATE`'s sizes, the configuration that
  reached 3x but learned less (``studies/speed_quality.py``);
- ``previous configuration``: the settings and code path it had before (256 clients a step,
  64-day rollouts, minibatches of 4,096, 4 epochs, sb3-contrib's own MaskablePPO rollouts and
  per-component ``Categorical`` distributions, one torch thread throughout);
- beside each, ``arithmetic floor``: the same networks' own forward passes (one per vector step,
  no gradient, on the rollouts' threads) and forward + backward + optimiser steps (one per
  minibatch, on the update's threads) on random inputs of the same batch sizes, as many as that
  training makes: what the machine's arithmetic allows
  with no simulator, masks, distributions or bookkeeping. ``of floor`` is training rate / floor
  rate, the figure to drive toward 1.

Each training row also gives client-days per second of the process's CPU time: on a machine
others share, the wall-clock rate falls with their load, the CPU-time rate much less.
``--repeats R`` measures the three configurations R times in turn (so a slow spell of the machine
falls on all of them) and gives each row's median run, with every run's rate beside it.

The table is printed and written to ``docs/results/train_throughput.md`` (``--no-write``: not).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from agents.config import AgentConfig  # noqa: E402
from agents.registry import train_agent  # noqa: E402
from agents.sb3_agents import (  # noqa: E402
    TORCH_THREADS,
    UPDATE_THREADS,
    build_model,
    cpus_available,
    current_options,
    default_train_envs,
    make_training_env,
    training_options,
)
from envs.config import load_setup  # noqa: E402

CANDIDATE = {"num_envs": 1024, "n_epochs": 2}
"""the 3x configuration measured beside (1,024 clients a step, 2 epochs), which learned less"""
OLD = {"num_envs": 256, "n_steps": 64, "batch_size": 4096, "n_epochs": 4}
"""the previous configuration's sizes"""
RESULTS = ROOT / "docs" / "results" / "train_throughput.md"


@dataclass
class Row:
    """One measured configuration."""

    label: str
    num_envs: int
    n_steps: int
    batch_size: int
    n_epochs: int
    client_days: int
    seconds: float
    cpu_seconds: float
    floor_seconds: float
    runs: tuple[float, ...] = ()
    """every run's training rate where the row is the median of several (``--repeats``)"""

    @property
    def rate(self) -> float:
        """client-days of training per second"""
        return self.client_days / self.seconds

    @property
    def cpu_rate(self) -> float:
        """client-days of training per second of this process's CPU time (all its threads): on
        a machine others share, what the same work gives a core of its own"""
        return self.client_days / self.cpu_seconds

    @property
    def floor_rate(self) -> float:
        """client-days per second the networks' arithmetic alone allows"""
        return self.client_days / self.floor_seconds


def preset(overrides: dict[str, object] | None = None) -> AgentConfig:
    """The default agent as ``train.py agent=ppo_lagrangian`` configures it: the values of
    ``conf/agent/ppo_lagrangian.yaml`` over its kind's defaults, with ``overrides`` on top."""
    from omegaconf import OmegaConf

    from envs.config import CONF_DIR

    values = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "agent" / "ppo_lagrangian.yaml"))
    values.pop("defaults", None)  # the kind's schema: AgentConfig(name=...) chooses it
    values.update(overrides or {}, name="ppo_lagrangian")
    return AgentConfig(**values)


def train_seconds(
    cfg: AgentConfig, num_envs: int, client_days: int, fast: bool
) -> tuple[float, float, int]:
    """Wall seconds and CPU seconds to train ``cfg`` for ``client_days``, and the client-days
    actually trained (SB3 finishes the rollout it is in)."""
    setup = load_setup()
    with training_options(fast=fast):
        start, cpu = time.perf_counter(), time.process_time()
        policy = train_agent(cfg, setup, client_days, num_envs, seed=0, progress=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return seconds, cpu, int(policy.model.num_timesteps)


def floor_seconds(
    cfg: AgentConfig, num_envs: int, client_days: int, update_threads: int = 1
) -> float:
    """Seconds the policy's networks take for the forward passes (no gradient, batch
    ``num_envs``, on the torch threads set) and the forward + backward + optimiser steps (batch
    ``cfg.batch_size``, on ``update_threads``) that training ``client_days`` makes, on random
    inputs."""
    setup = load_setup()
    env = make_training_env(cfg, setup, num_envs)
    policy = build_model(cfg, env, seed=0).policy
    rollout = cfg.n_steps * num_envs
    rollouts = math.ceil(client_days / rollout)
    batch = min(cfg.batch_size, rollout)
    minibatches = rollouts * cfg.n_epochs * math.ceil(rollout / batch)
    width = int(env.observation_space.shape[0])

    def heads(x: torch.Tensor) -> torch.Tensor:
        latent_pi, latent_vf = policy.mlp_extractor(policy.extract_features(x))
        return policy.action_net(latent_pi).sum() + policy.value_net(latent_vf).sum()

    step_obs, batch_obs = torch.rand(num_envs, width), torch.rand(batch, width)
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(rollouts * cfg.n_steps):
            heads(step_obs)
    threads = torch.get_num_threads()
    torch.set_num_threads(update_threads)
    for _ in range(minibatches):
        loss = heads(batch_obs)
        policy.optimizer.zero_grad()
        loss.backward()
        policy.optimizer.step()
    torch.set_num_threads(threads)
    return time.perf_counter() - start


def warm() -> None:
    """Import what torch's first optimiser step imports (its compiler stack: seconds, once per
    process) before any clock starts, so the first row does not pay for it."""
    p = torch.nn.Parameter(torch.zeros(1))
    optimiser = torch.optim.Adam([p])
    p.sum().backward()
    optimiser.step()


def measure(label: str, cfg: AgentConfig, num_envs: int, client_days: int, fast: bool) -> Row:
    seconds, cpu, trained = train_seconds(cfg, num_envs, client_days, fast)
    # the fast path's update runs on the update's threads; sb3-contrib's own on the rollouts'
    update = min(current_options().update_threads, cpus_available()) if fast else 1
    floor = floor_seconds(cfg, num_envs, trained, update)
    return Row(
        label, num_envs, cfg.n_steps, cfg.batch_size, cfg.n_epochs, trained, seconds, cpu, floor
    )


def median_run(runs: list[Row]) -> Row:
    """The run with the median training rate (the lower middle one of an even number), carrying
    every run's rate."""
    middle = sorted(runs, key=lambda r: r.rate)[(len(runs) - 1) // 2]
    return replace(middle, runs=tuple(r.rate for r in runs))


def table(rows: list[Row]) -> str:
    """Markdown: each configuration's training rate (wall and CPU time), its floor and the
    ratios; with several runs a row is the median run and the last column lists them all."""
    base = rows[-1]
    repeated = any(len(r.runs) > 1 for r in rows)
    lines = [
        "| configuration | clients a step | n_steps | batch | epochs | client-days | "
        "training, client-days/s | per CPU second | arithmetic floor, client-days/s | of floor "
        "| vs previous (wall; CPU) |" + (" runs, client-days/s |" if repeated else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if repeated else ""),
    ]
    for r in rows:
        runs = " / ".join(f"{x:,.0f}" for x in r.runs)
        lines.append(
            f"| {r.label} | {r.num_envs:,} | {r.n_steps} | {r.batch_size:,} | {r.n_epochs} | "
            f"{r.client_days:,} | {r.rate:,.0f} | {r.cpu_rate:,.0f} | {r.floor_rate:,.0f} | "
            f"{r.rate / r.floor_rate:.2f} | {r.rate / base.rate:.2f}x; "
            f"{r.cpu_rate / base.cpu_rate:.2f}x |" + (f" {runs} |" if repeated else "")
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--client-days", type=int, default=1_000_000, help="per configuration")
    parser.add_argument(
        "--threads", type=int, default=TORCH_THREADS, help="torch threads in the rollouts"
    )
    parser.add_argument(
        "--update-threads",
        type=int,
        default=UPDATE_THREADS,
        help="torch threads in the fast path's update (at most the CPUs available)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each configuration, in turn (median)"
    )
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS}")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    torch.set_num_threads(args.threads)
    warm()
    now = preset()
    candidate = preset({"n_epochs": CANDIDATE["n_epochs"]})
    old = preset({k: v for k, v in OLD.items() if k != "num_envs"})
    envs = default_train_envs("ppo_lagrangian", load_setup())
    configurations = [
        ("default agent (now)", now, envs, True),
        ("1,024 a step, 2 epochs (learned less)", candidate, CANDIDATE["num_envs"], True),
        ("previous configuration", old, OLD["num_envs"], False),
    ]
    runs: dict[str, list[Row]] = {label: [] for label, *_ in configurations}
    with training_options(threads=args.threads, update_threads=args.update_threads):
        for _ in range(args.repeats):
            for label, cfg, num_envs, fast in configurations:
                runs[label].append(measure(label, cfg, num_envs, args.client_days, fast))
    text = table([median_run(runs[label]) for label, *_ in configurations])
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/train_throughput.py"
        if args.client_days != 1_000_000:
            command += f" --client-days {args.client_days}"
        if args.repeats != 1:
            command += f" --repeats {args.repeats}"
        RESULTS.write_text(
            f"Written by `{command}` ({platform.machine()}, {os.cpu_count()} CPUs, load average "
            f"{os.getloadavg()[0]:.1f} when written, torch {torch.__version__}, {args.threads} "
            f"torch thread(s) in the rollouts and "
            f"{min(args.update_threads, cpus_available())} in the fast path's update, "
            f"{time.strftime('%Y-%m-%d')}).\n\n{text}\n"
        )
        print(f"\nwritten to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
