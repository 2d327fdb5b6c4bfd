"""Off-policy estimation memory: peak resident memory and time of every estimator (IPS, SNIPS, DM,
DR, PDWIS and FQE with their bootstrap intervals, two targets) on (a) a million logged
client-days over 90 days and (b) 1,000 logged rows each on its own day, against the peer of
reading and validating the same log file (``read_logs``), in the same run.

    python benchmarks/ope_memory.py                      # (a) 1,000,000 rows, (b) 1,000 rows
    python benchmarks/ope_memory.py --rows 100000        # a smaller (a)
    python benchmarks/ope_memory.py --cap-gb 12          # each measurement refused past 12 GB

Each measurement runs in a fresh process and reads its own high-water mark of resident memory
(``VmHWM``; ``ru_maxrss`` would also count the parent's memory at the fork, which Linux carries
across the exec), after its imports and at its end; ``--cap-gb`` caps each process's address space, and a case that needs more
is reported as refused rather than left to exhaust the machine. BLAS runs on ``--blas-threads``
threads (default 1: on a machine whose cores are shared, OpenBLAS's spinning threads made a
153 x 153 solve 500 times slower, and the figures would measure the neighbours). The logs are made quickly: one
simulated log of segment_rules with ε = 0.2 exploration (``--base-clients`` clients over 90 days)
is tiled with fresh client ids to ``--rows`` rows for (a); for (b), 1,000 of its rows, from 1,000
distinct clients, are spread over days 0..999, each keeping its weekday.

Writes the table to docs/results/ope_memory.md at the defaults (the file the docs include); with
any other size to outputs/results/ope_memory.md; --results-dir DIR writes DIR/ope_memory.md
instead.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

TARGETS = ("segment_rules", "fixed_weekly")


def _base_log(clients: int, days: int, seed: int = 0) -> pl.DataFrame:
    from agents.heuristics import HEURISTICS
    from envs.config import load_setup
    from evaluation.record import log_policy

    return log_policy(HEURISTICS["segment_rules"](), load_setup(), clients, days, seed, 0.2)


def tiled(base: pl.DataFrame, rows: int) -> pl.DataFrame:
    """``base`` repeated with fresh client ids until it holds ``rows`` rows (the last copy cut)."""
    span = int(base["client_id"].max() - base["client_id"].min()) + 1
    copies = -(-rows // base.height)
    base = base.sort("client_id", "day")  # the last copy is cut at a client, not a day
    parts = [base.with_columns(pl.col("client_id") + k * span) for k in range(copies)]
    return pl.concat(parts).head(rows)


def one_row_per_day(base: pl.DataFrame, rows: int) -> pl.DataFrame:
    """``rows`` rows of distinct clients on days 0..rows-1, each row keeping its weekday: the
    clients are split into seven classes, class w giving its rows of day w to days w, w + 7, ..."""
    ranked = base.filter(pl.col("day") < 7).with_columns(
        (pl.col("client_id").rank("dense") - 1).cast(pl.Int64).alias("_rank")
    )
    parts = []
    for weekday in range(7):
        picked = ranked.filter((pl.col("_rank") % 7 == weekday) & (pl.col("day") == weekday))
        picked = picked.sort("client_id").head(-(-rows // 7))
        parts.append(picked.with_columns((pl.int_range(pl.len()) * 7 + weekday).alias("day")))
    frame = pl.concat(parts).sort("day").head(rows).drop("_rank")
    if frame.height < rows or frame["day"].n_unique() != rows:
        raise ValueError(f"the base log has too few clients for {rows} rows on distinct days")
    return frame


def _peak_mb() -> float:
    """This process's high-water mark of resident memory (MB)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, path: str, cap_gb: float) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    if cap_gb > 0:
        cap = int(cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    from agents.heuristics import HEURISTICS
    from envs.config import load_setup
    from evaluation.logs import read_logs
    from evaluation.offline import estimate

    setup = load_setup()
    policies = [HEURISTICS[name]() for name in TARGETS]
    result: dict[str, object] = {"mode": mode, "imports_mb": _peak_mb()}  # the floor of both
    start = time.perf_counter()
    try:
        frame = read_logs(path)
        result["read_s"] = time.perf_counter() - start
        if mode == "estimate":
            start = time.perf_counter()
            estimate(frame, policies, setup, with_truth=False)
            result["estimate_s"] = time.perf_counter() - start
        result["rows"], result["days"] = frame.height, frame["day"].n_unique()
        result["clients"] = frame["client_id"].n_unique()
    except MemoryError as exc:
        result["refused"] = f"MemoryError ({exc})"[:120]
    result["peak_mb"] = _peak_mb()
    print(json.dumps(result))


def measure(mode: str, path: Path, cap_gb: float, threads: int) -> dict:
    env = os.environ | {k: str(threads) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(path), "--cap-gb", str(cap_gb)],
        capture_output=True,
        text=True,
        env=env,
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
    if not lines:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        return {"mode": mode, "refused": tail[0][:120], "peak_mb": float("nan")}
    return json.loads(lines[-1])


def _cell(value, fmt: str) -> str:
    return "refused" if value is None else format(value, fmt)


def main() -> None:
    # imported here, not at the top: a child process measures its own imports' memory
    from experiment.results import Report, add_results_argument, at_documented_size

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of case (a)")
    parser.add_argument("--days", type=int, default=90, help="days of case (a)")
    parser.add_argument("--single-day-rows", type=int, default=1_000, help="rows of case (b)")
    parser.add_argument("--base-clients", type=int, default=1_200, help="clients simulated")
    parser.add_argument("--cap-gb", type=float, default=12.0, help="address-space cap (0: none)")
    parser.add_argument("--blas-threads", type=int, default=1, help="BLAS threads a process")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    add_results_argument(parser)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.cap_gb)
        return
    from evaluation.logs import write_logs

    start = time.perf_counter()
    base = _base_log(args.base_clients, args.days)
    made = time.perf_counter() - start
    cases = {
        f"(a) {args.rows:,} rows over {args.days} days": tiled(base, args.rows),
        f"(b) {args.single_day_rows:,} rows, each on its own day": one_row_per_day(
            base, args.single_day_rows
        ),
    }
    report = Report()
    report(
        f"base log: {base.height:,} client-days of segment_rules, ε 0.2, simulated in {made:.1f} s; "
        f"targets {', '.join(TARGETS)}; n_boot 300, FQE 200; cap {args.cap_gb:g} GB a process; "
        f"{args.blas_threads} BLAS thread(s)"
    )
    report()
    report(
        "| case | rows | days | clients | imports (MB) | read_logs peak (MB) | estimate peak (MB) "
        "| ratio | read_logs (s) | estimate (s) | ratio |"
    )
    report("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, frame in cases.items():
            path = write_logs(frame, Path(tmp) / "logs.parquet")
            days, clients = frame["day"].n_unique(), frame["client_id"].n_unique()
            peer = measure("read", path, args.cap_gb, args.blas_threads)
            full = measure("estimate", path, args.cap_gb, args.blas_threads)
            est_s = full.get("estimate_s")
            peak = None if "refused" in full else full["peak_mb"]
            mem_ratio = None if peak is None else peak / peer["peak_mb"]
            time_ratio = None if est_s is None else est_s / peer["read_s"]
            report(
                f"| {name} | {cases[name].height:,} | {days:,} | {clients:,} | "
                f"{peer['imports_mb']:,.0f} | {peer['peak_mb']:,.0f} | {_cell(peak, ',.0f')} | "
                f"{_cell(mem_ratio, '.1f')} | "
                f"{peer['read_s']:.2f} | {_cell(est_s, '.1f')} | {_cell(time_ratio, '.0f')} |"
            )
            if "refused" in full:
                report(f"<!-- {name}: {full['refused']} -->")
    report.write("ope_memory", args.results_dir, documented_size=at_documented_size(parser, args))


if __name__ == "__main__":
    main()
