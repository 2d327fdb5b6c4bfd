"""The realism scorecard: every simulated protocol's statistics set beside their targets and
bands, as a table (Polars, Markdown), curves (PNG) and one MLflow run.

The protocols are in :mod:`realism.protocols`; ``python calibrate.py mode=report`` runs them and
prints :func:`printout`. Nothing here points MLflow at a store: the caller does that
(and gives the run's tags, its commit among them) before :func:`log_scorecard`.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import polars as pl  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from envs.config import Setup  # noqa: E402
from realism import protocols  # noqa: E402
from realism.targets import Targets, load_targets  # noqa: E402
from simulate.labels import SLOT_KEYS  # noqa: E402

EXPERIMENT = "cadence-realism"
"""the MLflow experiment a scorecard and a fit are logged to unless ``tracking.experiment=``
says otherwise"""


def simulated_targets(path: str | Path) -> Targets:
    """A targets file whose every statistic a simulated protocol computes (unknown names fail,
    named, before any work)."""
    return load_targets(path, protocols.statistic_names())


def simulate_protocols(
    setup: Setup, clients: int, seed: int, progress: bool = True
) -> dict[str, float]:
    """Every protocol's statistics on ``clients`` fresh clients of ``setup`` (seed ``seed``)."""
    simulated: dict[str, float] = {}
    for protocol in tqdm(
        protocols.PROTOCOLS.values(), desc="protocols", disable=not progress, unit="protocol"
    ):
        simulated.update(protocol(setup, clients, seed))
    return simulated


def scorecard(simulated: dict[str, float], targets: Targets) -> pl.DataFrame:
    """One row per statistic: the targeted ones first, in the file's order, then the rest."""
    rows = []
    for t in targets.targets:
        value = simulated[t.statistic]
        rows.append(
            {
                "statistic": t.statistic,
                "target": t.target,
                "low": t.low,
                "high": t.high,
                "simulated": value,
                "in_band": bool(t.holds(value)),
                "weight": t.weight,
            }
        )
    named = set(targets.names())
    for name, value in simulated.items():
        if name not in named:
            rows.append(
                {
                    "statistic": name,
                    "target": None,
                    "low": None,
                    "high": None,
                    "simulated": value,
                    "in_band": None,
                    "weight": None,
                }
            )
    return pl.DataFrame(rows)


def markdown(table: pl.DataFrame) -> str:
    """The scorecard as a Markdown table (a statistic without a target: its value alone)."""
    lines = [
        "| statistic | target | band | simulated | in band |",
        "|---|---:|---|---:|:---:|",
    ]
    for r in table.iter_rows(named=True):
        if r["target"] is None:
            lines.append(f"| {r['statistic']} | | | {r['simulated']:.4g} | |")
            continue
        band = f"[{_g(r['low'])}, {_g(r['high'])}]"
        mark = "yes" if r["in_band"] else "**no**"
        lines.append(
            f"| {r['statistic']} | {_g(r['target'])} | {band} | {r['simulated']:.4g} | {mark} |"
        )
    return "\n".join(lines)


def _g(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.4g}"


def printout(
    simulated: dict[str, float],
    targets: Targets,
    population: str,
    clients: int,
    seed: int,
    run_id: str,
    experiment: str = EXPERIMENT,
) -> str:
    """The scorecard as printed: the Markdown table, then a line saying how many targets are
    in band, what was simulated and where the MLflow run is."""
    table = scorecard(simulated, targets)
    return (
        f"{markdown(table)}\n\n"
        f"{int(table['in_band'].sum())} of {len(targets.targets)} targets in band "
        f"({population} population, {clients:,} clients per protocol "
        f"run, seed {seed}); MLflow run {run_id} in experiment {experiment}"
    )


def plots(simulated: dict[str, float], folder: Path, targets: Targets | None = None) -> list[Path]:
    """Volume, recovery and time-of-day curves (what the ratios in the table summarise), and the
    bank protocol's success by contact, over the data's where the targets hold them."""
    return [
        _volume_recovery(simulated, folder / "volume_recovery.png"),
        _time_of_day(simulated, folder / "time_of_day.png"),
        _bank_contacts(simulated, folder / "bank_contacts.png", targets),
    ]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _volume_recovery(simulated: dict[str, float], path: Path) -> Path:
    k = list(range(1, 8))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(
        k, [simulated[f"volume/clicks_per_message/{i}"] for i in k], "o-", label="per message"
    )
    axes[0].plot(
        k,
        [simulated[f"volume/clicks_per_client_week/{i}"] for i in k],
        "s-",
        label="per client-week",
    )
    axes[0].set(xlabel="e-mails a week", ylabel="clicks", title="volume: response")
    axes[0].legend()
    axes[1].plot(
        k,
        [100 * simulated[f"volume/unsubscribes_per_message/{i}"] for i in k],
        "o-",
        label="unsubscribes",
    )
    axes[1].plot(
        k,
        [100 * simulated[f"volume/complaints_per_message/{i}"] for i in k],
        "s-",
        label="complaints",
    )
    axes[1].set(xlabel="e-mails a week", ylabel="% per message", title="volume: cost")
    axes[1].legend()
    gaps = list(protocols.GAPS)
    axes[2].plot(gaps, [simulated[f"recovery/second_vs_first/{g}"] for g in gaps], "o-")
    axes[2].axhline(1.0, color="grey", lw=0.8)
    axes[2].set(
        xscale="log",
        xlabel="days since the same content",
        ylabel="second click rate / first",
        title="recovery",
    )
    return _save(fig, path)


def _time_of_day(simulated: dict[str, float], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.bar(SLOT_KEYS, [100 * simulated[f"time_of_day/push_click_rate/{s}"] for s in SLOT_KEYS])
    ax.set(ylabel="clicks per push (%)", title="time of day: weekday push (target peak: evening)")
    return _save(fig, path)


def _bank_contacts(simulated: dict[str, float], path: Path, targets: Targets | None) -> Path:
    labels = [*map(str, range(1, 10)), "10plus"]
    names = [f"bank/relative_success/contact_{k}" for k in labels[1:]]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(labels, [1.0] + [simulated[n] for n in names], "o-", label="simulated")
    named = set(targets.names()) if targets else set()
    if targets is not None and all(n in named for n in names):
        real = [targets[n] for n in names]
        ax.errorbar(
            labels,
            [1.0] + [t.target for t in real],
            yerr=[
                [0.0] + [t.target - t.low for t in real],
                [0.0] + [t.high - t.target for t in real],
            ],
            fmt="s--",
            capsize=3,
            label="data (band)",
        )
    ax.set(
        xlabel="contact number",
        ylabel="success / first contact's",
        title="bank protocol: repeated offers",
    )
    ax.legend()
    return _save(fig, path)


def log_scorecard(
    simulated: dict[str, float],
    targets: Targets,
    targets_path: str,
    params: dict[str, Any],
    tags: dict[str, str],
) -> str:
    """One MLflow run (in the active experiment) holding the scorecard: ``params``, a metric
    ``realism/<statistic>`` per finite statistic, ``realism/in_band`` and ``realism/targets``,
    and the table (Markdown, Parquet) and plots under ``scorecard/``; run name ``report
    <tags['population']>``; returns its id."""
    table = scorecard(simulated, targets)
    with tempfile.TemporaryDirectory(prefix="cadence-realism-") as folder:
        work = Path(folder)
        (work / "scorecard.md").write_text(
            f"targets: {targets_path}\nsource: {targets.source}\n\n{markdown(table)}\n"
        )
        table.write_parquet(work / "scorecard.parquet")
        plots(simulated, work, targets)
        with mlflow.start_run(run_name=f"report {tags['population']}", tags=tags) as run:
            mlflow.log_params({k: str(v) for k, v in params.items()})
            mlflow.log_metrics(
                {f"realism/{k}": v for k, v in simulated.items() if math.isfinite(v)}
                | {
                    "realism/in_band": int(table["in_band"].sum()),
                    "realism/targets": len(targets.targets),
                }
            )
            mlflow.log_artifacts(str(work), "scorecard")
    return run.info.run_id
