"""Is the faster training configuration as good? The default agent trained with the previous
settings and with the new ones, over training seeds, evaluated on the same fresh clients.

Two steps, so the slow arm can train while other work goes on:

    python studies/speed_quality.py train --arm old --seeds 0,1,2 --out outputs/speed_quality
    python studies/speed_quality.py train --arm new --seeds 0,1,2 --out outputs/speed_quality
    python studies/speed_quality.py compare --out outputs/speed_quality
    python studies/speed_quality.py train --arm old-fast --seeds 0   # the code path alone

``train`` trains the default agent (``conf/agent/ppo_lagrangian.yaml``) for each seed with the
arm's settings (:data:`ARMS`) and saves each policy under ``<out>/<arm>-s<seed>`` with its
training time. ``compare`` evaluates every saved policy, the oracle and the deployable ceiling on
the same fresh clients (5,000 x 90 days x 3 seeds, common random numbers, as
``studies/agents_compare.py`` does), and prints per arm the mean over training seeds of
normalized value and ceiling share with a 95 % t-interval, each arm's paired difference from
``old`` (seed k of one arm against seed k of the other, on the same clients) with its
t-interval, and per seed the difference in value per client with its bootstrap CI. A policy already trained
under an arm's settings (``train.py``'s saved ``policy`` folder) may be copied in as
``<out>/<arm>-s<seed>``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

from agents.config import AgentConfig  # noqa: E402
from agents.registry import load_policy, save_policy, train_agent  # noqa: E402
from envs.config import load_setup  # noqa: E402

BUDGET = 6_000_000
"""client-days of training per seed (the default agent's budget)"""

ARMS: dict[str, dict[str, object]] = {
    "old": {
        "num_envs": 256,
        "fast": False,
        "overrides": {"n_steps": 64, "batch_size": 4096, "n_epochs": 4},
    },
    "old-fast": {
        "num_envs": 256,
        "fast": True,
        "overrides": {"n_steps": 64, "batch_size": 4096, "n_epochs": 4},
    },
    "new": {
        "num_envs": 1024,
        "fast": True,
        "overrides": {"n_steps": 64, "batch_size": 4096, "n_epochs": 2},
    },
}
"""per arm: clients per vector step, whether the fast masked path is used, and the agent fields
that differ between the arms, over ``conf/agent/ppo_lagrangian.yaml``: ``old`` the previous
settings and code path, ``old-fast`` the previous settings on the fast path (same maths, other
code), ``new`` 1,024 clients a step and 2 epochs"""


def preset(overrides: dict[str, object] | None = None) -> AgentConfig:
    """The default agent as ``train.py agent=ppo_lagrangian`` configures it: the values of
    ``conf/agent/ppo_lagrangian.yaml`` over its kind's defaults, with ``overrides`` on top."""
    from omegaconf import OmegaConf

    from envs.config import CONF_DIR

    values = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "agent" / "ppo_lagrangian.yaml"))
    values.pop("defaults", None)  # the kind's schema: AgentConfig(name=...) chooses it
    values.update(overrides or {}, name="ppo_lagrangian")
    return AgentConfig(**values)


def train(arm: str, seeds: list[int], out: Path, budget: int) -> None:
    """Train and save the default agent under ``arm``'s settings for each seed."""
    settings = ARMS[arm]
    cfg = preset(dict(settings["overrides"]))  # type: ignore[arg-type]
    setup = load_setup()
    for seed in seeds:
        start = time.perf_counter()
        policy = _train_one(cfg, setup, budget, int(settings["num_envs"]), seed, settings["fast"])
        seconds = time.perf_counter() - start
        folder = out / f"{arm}-s{seed}"
        save_policy(policy, folder)
        (folder / "timing.json").write_text(
            json.dumps({"seconds": seconds, "client_days": budget, "rate": budget / seconds})
        )
        print(
            f"{arm} seed {seed}: {budget:,} client-days in {seconds:.0f} s "
            f"({budget / seconds:,.0f} client-days/s)",
            flush=True,
        )


def _train_one(cfg, setup, budget: int, num_envs: int, seed: int, fast: object):
    try:
        from agents.training import training_options
    except ImportError:  # the code as it was: one path only
        return train_agent(cfg, setup, budget, num_envs, seed=seed, progress=False)
    with training_options(fast=bool(fast)):
        return train_agent(cfg, setup, budget, num_envs, seed=seed, progress=False)


def interval(x: np.ndarray) -> str:
    """``mean ± half-width`` of a 95 % t-interval over training seeds."""
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else 0
    return f"{x.mean():.3f} ± {half:.3f}"


def compare_arms(out: Path, clients: int, days: int, eval_seeds: int) -> str:
    """Evaluate every saved policy on the same fresh clients; Markdown table of the arms."""
    from evaluation.compare import compare

    folders = sorted(p for p in out.iterdir() if (p / "agent.json").is_file())
    policies = []
    for folder in folders:
        policy = load_policy(folder)
        policy.name = folder.name
        policies.append(policy)
    setup = load_setup()
    start = time.perf_counter()
    result = compare(policies, setup, clients, days, seeds=range(1000, 1000 + eval_seeds))
    print(f"evaluated {len(policies)} policies in {time.perf_counter() - start:.0f} s", flush=True)
    keys = ("eval/normalized_value", "eval/ceiling_share")
    by_arm: dict[str, dict[int, dict[str, float]]] = {}
    rates: dict[str, list[float]] = {}
    for folder in folders:
        arm, seed = folder.name.rsplit("-s", 1)
        by_arm.setdefault(arm, {})[int(seed)] = {
            k: float(result.metrics[folder.name][k][0]) for k in keys
        }
        timing = folder / "timing.json"
        if timing.is_file():
            rates.setdefault(arm, []).append(json.loads(timing.read_text())["rate"])
    head = "| arm | seeds | normalized_value | ceiling_share | by seed (normalized value) | client-days/s |"
    lines = [head, "|---|---:|---:|---:|---|---:|"]
    for arm, seeds in by_arm.items():
        order = sorted(seeds)
        cells = [arm, str(len(order))]
        for k in keys:
            cells.append(interval(np.array([seeds[s][k] for s in order])))
        cells.append(", ".join(f"{seeds[s][keys[0]]:.3f}" for s in order))
        cells.append(f"{np.mean(rates.get(arm, [np.nan])):,.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    others = [arm for arm in by_arm if arm != "old"] if "old" in by_arm else []
    for arm in others:
        common = sorted(by_arm["old"].keys() & by_arm[arm].keys())
        cells = [f"{arm} - old (paired by seed)", str(len(common))]
        for k in keys:
            d = np.array([by_arm[arm][s][k] - by_arm["old"][s][k] for s in common])
            cells.append(interval(d))
        cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    if others:
        lines.append("")
        lines.append(
            "| arm | seed | value per client, arm - old (same clients, 95 % bootstrap CI) |"
        )
        lines.append("|---|---:|---|")
        for arm in others:
            for seed in sorted(by_arm["old"].keys() & by_arm[arm].keys()):
                a, b = f"{arm}-s{seed}", f"old-s{seed}"
                mean, lo, hi = result.differences.get((a, b)) or _flip(result.differences[(b, a)])
                lines.append(f"| {arm} | {seed} | {mean:+.3f} [{lo:+.3f}, {hi:+.3f}] |")
    return "\n".join(lines)


def _flip(difference: tuple[float, float, float]) -> tuple[float, float, float]:
    """b - a from a - b: (mean, low, high) negated, bounds swapped."""
    mean, lo, hi = difference
    return -mean, -hi, -lo


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("step", choices=("train", "compare"))
    parser.add_argument("--arm", choices=tuple(ARMS), default="new")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated")
    parser.add_argument("--budget", type=int, default=BUDGET)
    parser.add_argument("--out", type=Path, default=Path("outputs/speed_quality"))
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--eval-seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.step == "train":
        train(args.arm, [int(s) for s in args.seeds.split(",")], args.out, args.budget)
    else:
        print(compare_arms(args.out, args.clients, args.days, args.eval_seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
