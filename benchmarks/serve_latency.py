"""Serving speed: the guarded runtime (numpy, numba and onnxruntime, one thread) beside SB3's
``model.predict`` on the same observations of the same PPO policy, in one run.

Prints decisions per second at batch 1, 64 and 4,096 and single-decision p50/p99 latency, and
writes the table to ``docs/results/serve_latency.md`` (``--results-dir DIR`` chooses the
folder). The runtime row includes validation, guardrail masks and the masked choice (inside the
graph: ``serve/graph_choice.py``, with the runtime's checks) and the decision ids' random bytes;
the actions' labels and the ids as Python strings are written when first read (``Decisions``),
which the ``labels and ids read`` row does; the ``+ reasons`` row adds the explanations (one
extra network pass per feature group). Peers measured in the same run: the export's ONNX graph
alone (onnxruntime, no validation or checks: the ceiling of any runtime on this export), the
network alone (the graph of an export without the choice inside), the previous runtime (that
export, the choice in numpy), SB3's ``model.predict`` and the actor network alone in torch.

The table's rates are the median of :data:`ROUNDS` rounds, each measuring every contender in
turn for a twentieth of a second, so a slow spell of the shared machine falls on all of them
rather than on whichever ran during it. The target line also gives the ratio from interleaved
calls (graph alone, runtime, graph alone, ... at batch 4,096: the median time of each): there
the graph runs after the runtime has filled the caches, as it would in a server, where the
table's graph runs after itself.

    python benchmarks/serve_latency.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from agents.config import AgentConfig  # noqa: E402
from agents.heuristics import RandomPolicy  # noqa: E402
from agents.registry import train_agent  # noqa: E402
from envs.config import load_setup  # noqa: E402
from envs.core import CadenceCore  # noqa: E402
from envs.features import OBS_HIGH  # noqa: E402
from experiment.results import add_results_argument, write_results  # noqa: E402
from serve.onnx_export import export_policy  # noqa: E402
from serve.runtime import PolicyRuntime  # noqa: E402

BATCHES = (1, 64, 4096)
MIN_SECONDS = 1.0
"""time each contender is measured at each batch size, over all rounds"""
ROUNDS = 20
PAIRS = 1000
"""interleaved calls of each contender for the paired ratios"""


def rate(fn, batch: np.ndarray, seconds: float = MIN_SECONDS) -> float:
    """Rows per second of ``fn(batch)`` over at least ``seconds`` and 5 calls (after one)."""
    fn(batch)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or calls < 5:
        fn(batch)
        calls += 1
    return calls * len(batch) / (time.perf_counter() - start)


def rates(contenders: dict, obs: np.ndarray) -> dict[str, list[float]]:
    """Each contender's rate at each of :data:`BATCHES`: the median of :data:`ROUNDS` rounds,
    each measuring every contender in turn for ``MIN_SECONDS / ROUNDS``."""
    kept: dict[str, list[list[float]]] = {name: [[] for _ in BATCHES] for name in contenders}
    for _ in range(ROUNDS):
        for name, fn in contenders.items():
            for per_batch, b in zip(kept[name], BATCHES, strict=True):
                per_batch.append(rate(fn, obs[:b], MIN_SECONDS / ROUNDS))
    return {name: [float(np.median(r)) for r in per] for name, per in kept.items()}


def interleaved_ratio(fast, slow, batch: np.ndarray, pairs: int = PAIRS) -> float:
    """median time of ``fast(batch)`` / median time of ``slow(batch)``, the two called in
    turn ``pairs`` times (after one call of each)."""
    fast(batch)
    slow(batch)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(pairs):
        for fn, kept in ((fast, times[0]), (slow, times[1])):
            start = time.perf_counter()
            fn(batch)
            kept.append(time.perf_counter() - start)
    return float(np.median(times[0]) / np.median(times[1]))


def latencies(fn, obs: np.ndarray, n: int = 3000) -> tuple[float, float]:
    times = []
    for i in range(n):
        row = obs[i % len(obs) : i % len(obs) + 1]
        start = time.perf_counter()
        fn(row)
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_results_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    setup = load_setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        policy = train_agent(AgentConfig(name="ppo"), setup, 50_000, 256, progress=False)
        work = Path(tempfile.mkdtemp())
        folder = export_policy(policy, work / "export")
        previous = export_policy(policy, work / "previous", graph_choice=False)
        runtime = PolicyRuntime.load(folder, threads=1)
        before = PolicyRuntime.load(previous, threads=1)
    core = CadenceCore(setup, 4096, client_id_offset=1 << 45)
    obs, random = core.reset(5), RandomPolicy(0)
    for _ in range(20):
        obs = core.step(random.act(obs, core.joint_masks())).obs
    model = policy.model
    scale = (1.0 / OBS_HIGH).astype(np.float32)

    @torch.no_grad()
    def actor(x: torch.Tensor) -> torch.Tensor:
        return model.policy.action_net(model.policy.mlp_extractor.forward_actor(x))

    def read_all(x: np.ndarray) -> list:
        d = runtime.decide(x, explain=False)
        return [d.slot, d.tone, d.channel, d.content, d.decision_id]

    contenders = {
        "SB3 model.predict (peer)": lambda x: model.predict(x * scale, deterministic=True),
        "runtime (guarded)": lambda x: runtime.decide(x, explain=False),
        "runtime, labels and ids read": read_all,
        "runtime + reasons": lambda x: runtime.decide(x, explain=True),
        "ONNX graph alone (ceiling)": lambda x: runtime.session.run(None, {"obs": x}),
        "network alone (graph without the choice)": lambda x: before.session.run(None, {"obs": x}),
        "previous runtime (choice in numpy)": lambda x: before.decide(x, explain=False),
        "torch actor network alone": lambda x: actor(torch.as_tensor(x * scale)),
    }
    results = rates(contenders, obs)
    lat = {name: latencies(fn, obs) for name, fn in contenders.items()}
    lines = [
        "| | batch 1 (decisions/s) | batch 64 | batch 4,096 | p50 latency, batch 1 (ms) | p99 (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, each in results.items():
        lines.append(
            f"| {name} | {each[0]:,.0f} | {each[1]:,.0f} | {each[2]:,.0f} | "
            f"{lat[name][0]:.3f} | {lat[name][1]:.3f} |"
        )
    big = BATCHES[-1]
    share = {
        peer: results["runtime (guarded)"][-1] / results[peer][-1]
        for peer in (
            "ONNX graph alone (ceiling)",
            "network alone (graph without the choice)",
            "previous runtime (choice in numpy)",
        )
    }
    p99 = lat["runtime (guarded)"][1]
    graph = contenders["ONNX graph alone (ceiling)"]
    paired = interleaved_ratio(graph, contenders["runtime (guarded)"], obs[:big])
    paired_read = interleaved_ratio(graph, read_all, obs[:big])
    lines += [
        "",
        f"* runtime (guarded) / ONNX graph alone at batch {big:,}: "
        f"**{share['ONNX graph alone (ceiling)']:.2f}** from the table's rates, "
        f"**{paired:.2f}** from {PAIRS:,} interleaved calls of each (target >= 0.8: "
        f"{'met' if min(paired, share['ONNX graph alone (ceiling)']) >= 0.8 else 'not met'}); "
        f"with the labels and ids read as Python lists (written on first read): "
        f"{paired_read:.2f} interleaved",
        f"* runtime (guarded) / network alone at batch {big:,}: "
        f"{share['network alone (graph without the choice)']:.2f}",
        f"* runtime (guarded) / previous runtime at batch {big:,}: "
        f"{share['previous runtime (choice in numpy)']:.2f}",
        f"* runtime (guarded) batch-1 p99: **{p99:.3f} ms** (target <= 1 ms: "
        f"{'met' if p99 <= 1.0 else 'not met'})",
    ]
    print("\n".join(lines))
    note = (
        f"Load average {os.getloadavg()[0]:.1f} when written (figures from a loaded machine "
        "compare only within the run); one onnxruntime and torch thread; all rows measured in "
        "the same run on the same PPO observations."
    )
    body = "\n".join([note, "", *lines])
    written = write_results("serve_latency", body, root=args.results_dir)
    print(f"\nwrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
