"""The feature builder on a large export: a day's features of 1,000,000 clients from 90 days
of sends and events, time and peak memory, beside a plain pandas implementation of the same
features (the peer), in the same run.

The export is synthesised with vectorised numpy, its labels made from enum codes without a
string per row (rolling the simulator out for a million clients takes longer than the build
being measured): one client table, a send on about a quarter of the
client-days (like ``segment_rules``), opens, clicks, conversions, unsubscribes, complaints and
closures answering them at the simulator's rates, a visit on about a tenth of the client-days
plus each client's last visit before the window, and a stress a day. It is written as Parquet;
each implementation then runs in its own fresh process that reads the export, builds the
features of the day after the last one and reports its wall time and its peak resident memory
(``ru_maxrss``, the export included). The two outputs are compared bit for bit.

    python benchmarks/feature_builder.py            # 1,000,000 clients x 90 days
    python benchmarks/feature_builder.py --quick    # 20,000 clients x 30 days

Writes the table to docs/results/feature_builder.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from envs.consent import MIN_TIER  # noqa: E402
from envs.features import (  # noqa: E402
    FEATURE_NAMES,
    I_ENGAGEMENT,
    LONG_WINDOW_DAYS,
    RECENCY_CAP_DAYS,
    SHORT_WINDOW_DAYS,
    STRESS_CAP,
)
from loop.events import KINDS, TABLES, Export, dtype_of, write_export  # noqa: E402
from simulate.labels import CHANNELS, CONTENTS, SEGMENTS, SLOT_KEYS, TONES  # noqa: E402
from simulate.world import (  # noqa: E402
    E_CLICK_CHANNEL,
    E_CLICK_TONE,
    E_OPEN_CHANNEL,
    E_OPEN_SLOT,
    ENGAGEMENT_EMA,
    ENGAGEMENT_PRIOR_CLICK,
    ENGAGEMENT_PRIOR_OPEN,
    N_ENGAGEMENT,
)

RESULTS = ROOT / "docs" / "results" / "feature_builder.md"
SEND_RATE = 0.27
VISIT_RATE = 0.10


def _labels(table: str, column: str, codes: np.ndarray) -> pl.Series:
    """Column ``column`` of ``table`` in its enum type, row i holding label ``codes[i]`` (an
    index into the column's labels): the enum's few categories gathered by code, so no string
    is made per row (a million clients' sends and events are tens of millions of rows)."""
    spec = next(c for c in TABLES[table] if c.name == column)
    return pl.Series(column, spec.labels, dtype=dtype_of(spec)).gather(codes)


def _constant(name: str, value, n: int, dtype: pl.DataType) -> pl.Series:
    """``n`` copies of ``value`` (None: empty cells), without a Python list of them."""
    return pl.select(pl.repeat(value, n, dtype=dtype).alias(name)).to_series()


def synthesise(clients: int, days: int, seed: int = 0) -> Export:
    """A plausible export of ``clients`` clients over ``days`` days (vectorised numpy)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(clients, dtype=np.uint64)
    client_table = pl.DataFrame(
        {
            "client_id": ids,
            "onboarding_day": np.zeros(clients, dtype=np.int32),
            "consent_tier": rng.choice(4, clients, p=[0.2, 0.3, 0.3, 0.2]).astype(np.int8),
            "goal": _labels("clients", "goal", rng.integers(0, len(SEGMENTS), clients)),
            "declared_risk": rng.uniform(0, 1, clients),
            "preferred_slot": _labels(
                "clients", "preferred_slot", rng.integers(0, len(SLOT_KEYS), clients)
            ),
        }
    )
    sent = rng.random((days, clients)) < SEND_RATE
    send_day, send_client = np.nonzero(sent)
    m = len(send_day)
    channel = rng.integers(0, len(CHANNELS), m)
    sends = pl.DataFrame(
        {
            "send_id": np.arange(m, dtype=np.uint64),
            "client_id": ids[send_client],
            "day": send_day.astype(np.int32),
            "slot": _labels("sends", "slot", rng.integers(0, len(SLOT_KEYS), m)),
            "channel": _labels("sends", "channel", channel),
            "tone": _labels("sends", "tone", rng.integers(0, len(TONES), m)),
            "content": _labels("sends", "content", rng.integers(0, len(CONTENTS), m)),
            "decision_id": _constant("decision_id", None, m, pl.String()),
        }
    )
    opened = rng.random(m) < 0.18
    clicked = opened & (rng.random(m) < 0.19)
    answered = {
        "open": opened,
        "click": clicked,
        "conversion": clicked & (rng.random(m) < 0.5),
        "unsubscribe": rng.random(m) < 0.0015,
        "complaint": rng.random(m) < 0.0001,
        "panic_trade": clicked & (rng.random(m) < 0.01),
    }
    parts = []
    for kind, hit in answered.items():
        at = np.flatnonzero(hit)
        parts.append((send_client[at], send_day[at], kind, channel[at], at))
    visit_day, visit_client = np.nonzero(rng.random((days, clients)) < VISIT_RATE)
    parts.append((visit_client, visit_day, "visit", None, None))
    parts.append((np.arange(clients), -rng.integers(1, 366, clients), "visit", None, None))
    closed = np.flatnonzero(rng.random(clients) < 0.01)
    parts.append((closed, rng.integers(0, days, len(closed)), "account_closure", None, None))
    frames = []
    for who, day, kind, chan, send in parts:
        n = len(who)
        frames.append(
            pl.DataFrame(
                {
                    "client_id": ids[who],
                    "day": np.asarray(day, dtype=np.int32),
                    "kind": _labels("events", "kind", np.full(n, KINDS.index(kind))),
                    "channel": (
                        _constant("channel", None, n, pl.Enum(CHANNELS))
                        if chan is None
                        else _labels("events", "channel", chan)
                    ),
                    "send_id": pl.Series("send_id", send, pl.UInt64)
                    if send is not None
                    else _constant("send_id", None, n, pl.UInt64()),
                }
            )
        )
    market = pl.DataFrame(
        {"day": np.arange(days + 1, dtype=np.int32), "stress": rng.gamma(0.5, 1.0, days + 1)}
    )
    return Export(
        clients=client_table,
        consents=pl.DataFrame(schema={c.name: dtype_of(c) for c in TABLES["consents"]}),
        sends=sends,
        events=pl.concat(frames),
        market=market,
    )


# --- the peer: the same features in plain pandas -------------------------------------------


def pandas_features(folder: Path, day: int):
    """The features of every client still open on ``day``, in pandas (the peer)."""
    import pandas as pd

    clients = pd.read_parquet(folder / "clients.parquet")
    consents = pd.read_parquet(folder / "consents.parquet")
    sends = pd.read_parquet(folder / "sends.parquet")
    events = pd.read_parquet(folder / "events.parquet")
    market = pd.read_parquet(folder / "market.parquet")
    for frame in (sends, events):  # labels as plain strings, as a firm's files hold them
        for column in ("slot", "channel", "tone", "content", "kind"):
            if column in frame:
                frame[column] = frame[column].astype(str)
    sends = sends[sends["day"] < day]
    events = events[events["day"] < day]
    closed = events.loc[events["kind"] == "account_closure", "client_id"].unique()
    base = clients[(clients["onboarding_day"] <= day) & ~clients["client_id"].isin(closed)]
    base = base.sort_values("client_id").set_index("client_id")
    tier = base["consent_tier"].astype(np.int64)
    changes = consents[consents["day"] <= day].sort_values("day").groupby("client_id").last()
    tier.update(changes["consent_tier"])
    out = pd.DataFrame(index=base.index)
    for k, name in enumerate(FEATURE_NAMES[:7]):
        out[name] = float(k == day % 7)
    for k in range(4):
        out[f"consent_tier_{k}"] = (tier == k).astype(float)
    unsub = events[events["kind"] == "unsubscribe"]
    short = sends[sends["day"] >= day - SHORT_WINDOW_DAYS]
    for c in CHANNELS:
        who = unsub.loc[unsub["channel"] == c, "client_id"]
        out[f"opted_out_{c}"] = out.index.isin(who).astype(float)
    for c in CHANNELS:
        counts = short[short["channel"] == c].groupby("client_id").size()
        out[f"sent_7d_{c}"] = counts.reindex(out.index, fill_value=0)

    def since(last):
        return (day - last.reindex(out.index)).clip(upper=RECENCY_CAP_DAYS).fillna(RECENCY_CAP_DAYS)

    out["days_since_last_send"] = since(sends.groupby("client_id")["day"].max())
    visits = events[events["kind"] == "visit"]
    out["days_since_last_visit"] = since(visits.groupby("client_id")["day"].max())
    recent = visits[visits["day"] >= day - LONG_WINDOW_DAYS]
    out["visits_30d"] = (
        recent.groupby("client_id")["day"].nunique().reindex(out.index, fill_value=0)
    )
    for s in SEGMENTS:
        out[f"goal_{s}"] = (base["goal"].astype(str) == s).astype(float)
    out["declared_risk"] = base["declared_risk"]
    stress = market.loc[market["day"] == day, "stress"].iloc[0]
    out["market_stress"] = min(stress, STRESS_CAP)
    for name in FEATURE_NAMES[I_ENGAGEMENT : I_ENGAGEMENT + N_ENGAGEMENT]:
        out[name] = 0.0
    for column, labels in (("channel", CHANNELS), ("tone", TONES), ("content", CONTENTS)):
        last = sends.groupby(["client_id", column])["day"].max().unstack()
        for v in labels:
            values = last[v] if v in last else pd.Series(dtype=float)
            out[f"days_since_{column}_{v}"] = since(values)
    urgent = short[short["tone"] == "urgent"].groupby("client_id").size()
    out["urgent_7d"] = urgent.reindex(out.index, fill_value=0)
    sent_30d = sends[sends["day"] >= day - LONG_WINDOW_DAYS].groupby("client_id").size()
    out["sent_30d"] = sent_30d.reindex(out.index, fill_value=0)
    for s in SLOT_KEYS:
        out[f"declared_slot_{s}"] = (base["preferred_slot"].astype(str) == s).astype(float)
    out = out[list(FEATURE_NAMES)].astype(np.float32)
    shown = tier[tier >= int(MIN_TIER[I_ENGAGEMENT])].index
    ema = _pandas_engagement(sends, events, shown)
    names = list(FEATURE_NAMES[I_ENGAGEMENT : I_ENGAGEMENT + N_ENGAGEMENT])
    out.loc[shown, names] = ema
    out = out * (tier.to_numpy()[:, None] >= MIN_TIER[None, :]).astype(np.float32)
    return out.reset_index()


def _pandas_engagement(sends, events, shown) -> np.ndarray:
    """The engagement averages: a float32 recurrence per client and column, one pass per rank."""
    import pandas as pd

    prior = np.empty(N_ENGAGEMENT, dtype=np.float32)
    prior[:E_OPEN_SLOT] = np.repeat([ENGAGEMENT_PRIOR_OPEN, ENGAGEMENT_PRIOR_CLICK], 3)
    prior[E_OPEN_SLOT:E_CLICK_TONE] = ENGAGEMENT_PRIOR_OPEN
    prior[E_CLICK_TONE:] = ENGAGEMENT_PRIOR_CLICK
    ema = np.tile(prior, (len(shown), 1))
    sends = sends[sends["client_id"].isin(shown)].sort_values(["client_id", "day"])
    answers = events[events["kind"].isin(["open", "click"])]
    opened = sends["send_id"].isin(answers.loc[answers["kind"] == "open", "send_id"])
    clicked = sends["send_id"].isin(answers.loc[answers["kind"] == "click", "send_id"])
    row = pd.Index(shown).get_indexer(sends["client_id"])
    index = {"channel": CHANNELS, "slot": SLOT_KEYS, "tone": TONES}
    for first, component, outcome in (
        (E_OPEN_CHANNEL, "channel", opened),
        (E_CLICK_CHANNEL, "channel", clicked),
        (E_OPEN_SLOT, "slot", opened),
        (E_CLICK_TONE, "tone", clicked),
    ):
        column = first + pd.Categorical(sends[component], categories=index[component]).codes
        frame = pd.DataFrame({"row": row, "column": column, "o": outcome.to_numpy(np.float32)})
        frame["rank"] = frame.groupby(["row", "column"]).cumcount()
        for _, group in frame.groupby("rank", sort=True):
            r, c = group["row"].to_numpy(), group["column"].to_numpy()
            current = ema[r, c]
            ema[r, c] = current + np.float32(ENGAGEMENT_EMA) * (group["o"].to_numpy() - current)
    return ema


# --- measuring -----------------------------------------------------------------------------


def _worker(side: str, folder: Path, day: int, out: Path) -> None:
    """Build the features in this process; print wall seconds and peak memory as JSON."""
    start = time.perf_counter()
    if side == "polars":
        from loop.events import read_export
        from loop.features import build_features

        export = read_export(folder, max_rows=10**9)
        read = time.perf_counter()
        frame = build_features(export, day)
    else:
        read = start
        frame = pl.from_pandas(pandas_features(folder, day))
    took = time.perf_counter() - start
    frame.write_parquet(out)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {"seconds": took, "read": read - start, "peak_mib": peak_mib, "rows": frame.height}
        )
    )


def _run(side: str, folder: Path, day: int, out: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        side,
        "--folder",
        str(folder),
        "--day",
        str(day),
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--quick", action="store_true", help="20,000 clients x 30 days")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--worker", choices=("polars", "pandas"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--day", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.folder, args.day, args.out)
        return 0
    clients, days = (20_000, 30) if args.quick else (args.clients, args.days)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export"
        start = time.perf_counter()
        export = synthesise(clients, days)
        sizes = {name: frame.height for name, frame in export.tables().items()}
        write_export(export, folder)
        del export
        made = time.perf_counter() - start
        print(f"synthesised and wrote the export in {made:.1f} s: {sizes}", flush=True)
        results = {}
        for side in ("polars", "pandas"):
            results[side] = _run(side, folder, days, Path(tmp) / f"{side}.parquet")
            print(side, results[side], flush=True)
        built = pl.read_parquet(Path(tmp) / "polars.parquet")
        peer = pl.read_parquet(Path(tmp) / "pandas.parquet")
        same = built.select(FEATURE_NAMES).to_numpy().view(np.uint32)
        identical = (
            built["client_id"].to_list() == peer["client_id"].cast(pl.UInt64).to_list()
            and (
                same == peer.select(FEATURE_NAMES).to_numpy().astype(np.float32).view(np.uint32)
            ).all()
        )
    command = "python benchmarks/feature_builder.py" + (" --quick" if args.quick else "")
    if not args.quick and (clients, days) != (1_000_000, 90):
        command += f" --clients {clients} --days {days}"
    table = _markdown(command, clients, days, sizes, results, bool(identical))
    print(table)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(table)
    return 0 if identical else 1


def _markdown(
    command: str, clients: int, days: int, sizes: dict, results: dict, identical: bool
) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    polars_s, pandas_s = results["polars"]["seconds"], results["pandas"]["seconds"]
    rows = [
        "| implementation | seconds (read + build) | of which reading | peak memory (MiB) |",
        "|---|---:|---:|---:|",
        f"| `loop.features.build_features` (polars, lazy) | {polars_s:.1f} | "
        f"{results['polars']['read']:.1f} | {results['polars']['peak_mib']:,.0f} |",
        f"| plain pandas (the peer) | {pandas_s:.1f} | (inside) | "
        f"{results['pandas']['peak_mib']:,.0f} |",
    ]
    return "\n".join(
        [
            "# Feature builder benchmark",
            "",
            f"The features of day {days} for {clients:,} clients from {days} days of a synthesised "
            f"export ({sizes['sends']:,} sends, {sizes['events']:,} events), each implementation "
            "in a fresh process that reads the Parquet export and builds the features; peak "
            "memory is the process's peak resident set (the export included).",
            "",
            *rows,
            "",
            f"pandas / polars time: {pandas_s / polars_s:.1f}x; outputs identical (float32 bits): "
            f"{'yes' if identical else 'NO'}; {results['polars']['rows']:,} client rows.",
            "",
            f"Made by `{command}` at commit {commit} on {platform.machine()} with "
            f"{os.cpu_count()} CPUs.",
            "",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
