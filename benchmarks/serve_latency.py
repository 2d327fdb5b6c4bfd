"""Serving speed: the guarded runtime (numpy + onnxruntime, one thread) beside SB3's
``model.predict`` on the same observations of the same PPO policy, in one run.

Prints decisions per second at batch 1, 64 and 4,096 and single-decision p50/p99 latency.
The runtime row includes validation, guardrail masks and the masked choice; the
``+ reasons`` row adds the explanations (one extra network pass per feature group). Two rows
show the ceiling of any runtime on this network: the ONNX graph alone (onnxruntime, no
validation or guardrails) and the same actor network alone in torch (no SB3 around it).

    python benchmarks/serve_latency.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from agents.config import AgentConfig  # noqa: E402
from agents.heuristics import RandomPolicy  # noqa: E402
from agents.registry import train_agent  # noqa: E402
from envs.config import load_setup  # noqa: E402
from envs.core import CadenceCore  # noqa: E402
from envs.features import OBS_HIGH  # noqa: E402
from serve.export import export_policy  # noqa: E402
from serve.runtime import PolicyRuntime  # noqa: E402

BATCHES = (1, 64, 4096)
MIN_SECONDS = 1.0


def rate(fn, batch: np.ndarray) -> float:
    fn(batch)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < MIN_SECONDS or calls < 5:
        fn(batch)
        calls += 1
    return calls * len(batch) / (time.perf_counter() - start)


def latencies(fn, obs: np.ndarray, n: int = 3000) -> tuple[float, float]:
    times = []
    for i in range(n):
        row = obs[i % len(obs) : i % len(obs) + 1]
        start = time.perf_counter()
        fn(row)
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def main() -> int:
    torch.set_num_threads(1)
    setup = load_setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        policy = train_agent(AgentConfig(name="ppo"), setup, 50_000, 256, progress=False)
        folder = export_policy(policy, Path(tempfile.mkdtemp()) / "export")
    runtime = PolicyRuntime.load(folder, threads=1)
    core = CadenceCore(setup, 4096, client_id_offset=1 << 45)
    obs, random = core.reset(5), RandomPolicy(0)
    for _ in range(20):
        obs = core.step(random.act(obs, core.joint_masks())).obs
    model = policy.model
    scale = (1.0 / OBS_HIGH).astype(np.float32)

    @torch.no_grad()
    def actor(x: torch.Tensor) -> torch.Tensor:
        return model.policy.action_net(model.policy.mlp_extractor.forward_actor(x))

    contenders = {
        "SB3 model.predict (peer)": lambda x: model.predict(x * scale, deterministic=True),
        "runtime (guarded)": lambda x: runtime.decide(x, explain=False),
        "runtime + reasons": lambda x: runtime.decide(x, explain=True),
        "ONNX graph alone (ceiling)": lambda x: runtime.session.run(None, {"obs": x}),
        "torch actor network alone": lambda x: actor(torch.as_tensor(x * scale)),
    }
    results = {name: [rate(fn, obs[:b]) for b in BATCHES] for name, fn in contenders.items()}
    lat = {name: latencies(fn, obs) for name, fn in contenders.items()}
    print(
        "| | batch 1 (decisions/s) | batch 64 | batch 4,096 | p50 latency, batch 1 (ms) | p99 (ms) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, rates in results.items():
        print(
            f"| {name} | {rates[0]:,.0f} | {rates[1]:,.0f} | {rates[2]:,.0f} | {lat[name][0]:.3f} | {lat[name][1]:.3f} |"
        )
    peer = results["SB3 model.predict (peer)"]
    for name in [n for n in results if n != "SB3 model.predict (peer)"]:
        print(
            f"\n{name} / SB3: "
            + ", ".join(
                f"batch {b}: {r / p:.1f}x"
                for b, r, p in zip(BATCHES, results[name], peer, strict=True)
            )
        )
    ceiling = results["ONNX graph alone (ceiling)"]
    for name in ("runtime (guarded)", "runtime + reasons"):
        print(
            f"\n{name} / ONNX graph alone at batch {BATCHES[-1]:,}: "
            f"{results[name][-1] / ceiling[-1]:.2f} (the share of the bare network's throughput "
            "left after validation, consent, guardrails and the masked choice)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
