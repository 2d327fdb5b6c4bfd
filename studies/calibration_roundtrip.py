"""Calibration from logs, round trip (the table in README.md, *Calibration from logs*).

A "true" simulator with known parameters (not the defaults) writes a log of ``segment_rules``
with ε-exploration; the fit of ``calibrate.py mode=fit logs=`` (:func:`realism.calibration.fit_to_logs`)
fits the parameters back from the log alone, starting from the defaults. Then the default agent is trained on the true simulator, on the
fitted one and (for contrast) on the uncalibrated defaults, with the same budget and seed, and
all three are evaluated on the *true* simulator, same clients and luck.

    python studies/calibration_roundtrip.py                 # 5,000 clients x 60 days, 80 trials
    python studies/calibration_roundtrip.py --quick         # a smoke run (small budgets)

Writes the tables to docs/results/calibration_roundtrip.md at the defaults (the file the docs
include); with --quick or any other size to outputs/results/calibration_roundtrip.md;
--results-dir DIR writes DIR/calibration_roundtrip.md instead.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from agents.config import AgentConfig
from agents.registry import make_policy, train_agent
from envs.config import compose_conf, eval_seeds, load_setup
from evaluation.compare import compare
from evaluation.logs import write_logs
from evaluation.record import log_policy
from experiment.results import Report, add_results_argument, at_documented_size
from experiment.schema import register, validate_run
from realism import fromlogs
from realism.calibration import fit_to_logs

TRUE = {
    "env.response.open_base": -0.9,
    "env.response.click_base": -3.0,
    "population.visit_logit_mean": -2.3,
}
"""the true simulator's parameters (defaults: -1.55, -3.34, -2.5)"""
TOLERANCE = {"env.response.open_base": 0.15, "env.response.click_base": 0.15}
"""how far a fitted parameter may sit from the truth (a logit); visits are reported, not held"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--trials", type=int, default=80)
    parser.add_argument("--timesteps", type=int, default=6_000_000, help="training budget")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1,000 clients x 30 days, 10 trials, 50,000 client-days",
    )
    add_results_argument(parser)
    args = parser.parse_args()
    documented_size = at_documented_size(parser, args)
    if args.quick:
        args.clients, args.days, args.trials, args.timesteps = 1000, 30, 10, 50_000
    true_setup = load_setup(overrides=[f"{k}={v}" for k, v in TRUE.items()])
    work = Path(tempfile.mkdtemp(prefix="cadence-roundtrip-"))
    logger = make_policy(AgentConfig(name="segment_rules"))
    frame = log_policy(logger, true_setup, args.clients, args.days, 11, 0.3, progress=True)
    logs = write_logs(frame, work / "logs.parquet")
    # the two simulated sides at the true parameters: re-running the policy vs replaying its sends
    targets = fromlogs.targets(frame)
    closed = fromlogs.statistics(
        fromlogs.relog(true_setup, logger, args.clients, args.days, 7, 0.3), thin=True
    )
    opened = fromlogs.statistics(fromlogs.replay(true_setup, frame, 7), thin=True)
    report = Report()
    report(
        f"The true simulator's log: segment_rules with ε 0.3, {args.clients:,} clients x "
        f"{args.days} days; {args.trials} trials; trained on {args.timesteps:,} client-days."
    )
    report()
    for label, stats in (("re-running segment_rules", closed), ("replaying its sends", opened)):
        met = sum(t.holds(stats.get(t.statistic, float("nan"))) for t in targets.targets)
        report(f"* true parameters, {label}: {met} of {len(targets.targets)} statistics in band")
    for name in ("logs/open_rate/email/early", "logs/click_rate"):
        report(
            f"* {name}: log {targets[name].target:.4g}, re-run {closed[name]:.4g}, "
            f"replay {opened[name]:.4g}"
        )
    result = fit_to_logs(str(logs), list(TRUE), policy="segment_rules", trials=args.trials)
    report()
    fit_report = result.report("roundtrip", "the true simulator's log")
    report("\n".join(line for line in fit_report.splitlines() if not line.startswith("# ")))
    fitted = result.best
    report()
    report("| parameter | true | default | fitted | within |")
    report("|---|---:|---:|---:|---|")
    default = load_setup()
    for k, v in TRUE.items():
        group, key = k.rsplit(".", 1)
        start = getattr(default.population if group == "population" else default.env.response, key)
        tol = TOLERANCE.get(k)
        if tol is None:
            within = "(not held)"
        else:
            within = f"{'yes' if abs(fitted[k] - v) <= tol else '**no**'} ±{tol}"
        report(f"| {k} | {v} | {start} | {fitted[k]:.3f} | {within} |")

    fitted_setup = load_setup(overrides=[f"{k}={v!r}" for k, v in fitted.items()])
    register()
    cfg = validate_run(compose_conf("config"))[0].agent  # the default agent, as train.py makes it
    policies = []
    for label, setup in (("true", true_setup), ("fitted", fitted_setup), ("default", default)):
        start = time.perf_counter()
        policy = train_agent(cfg, setup, args.timesteps, setup.env.num_clients, 0, progress=True)
        policy.name = f"trained_on_{label}"
        policies.append(policy)
        print(f"trained on the {label} simulator in {time.perf_counter() - start:.0f} s")
    result = compare(policies + [logger], true_setup, 5000, 90, seeds=eval_seeds(3))
    report()
    report("Evaluated on the true simulator (5,000 clients x 90 days x 3 seeds):")
    report()
    report("| policy | eval/value | normalized value | 95 % CI |")
    report("|---|---:|---:|---|")
    values = {}
    for p in [*policies, logger]:
        m = result.metrics[p.name]
        v, (nv, low, high) = m["eval/value"][0], m["eval/normalized_value"]
        values[p.name] = nv
        report(f"| {p.name} | {v:.4f} | {nv:.3f} | [{low:.3f}, {high:.3f}] |")
    gap = values["trained_on_fitted"] / values["trained_on_true"] - 1
    report()
    report(f"Fitted-simulator policy vs true-simulator policy: {gap:+.1%} in normalized value.")
    report.write("calibration_roundtrip", args.results_dir, documented_size=documented_size)


if __name__ == "__main__":
    main()
