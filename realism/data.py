"""The two real campaign datasets, read by written protocols into realism targets.

* Hillstrom (a randomised e-mail experiment, 64,000 customers; ``hillstrom.csv``): the visit and
  conversion rates within two weeks with one e-mail (both e-mail arms together) and without,
  overall and by months since the customer's last purchase (1-4, 5-8, 9-12), and the lift.
* Bank campaign (UCI Bank Marketing, 41,188 phone contacts; ``bank-additional-full.csv``):
  success by the number of contacts in the campaign (1, ..., 9, 10 or more), relative to the
  first contact, and the decline from the first to 10 or more.

Bands follow what the realism work asks a fitted population to reproduce: visits within 1.5
points overall and 2.5 by recency bucket, conversions within 0.3 and 0.5 points, relative
success by contact within 0.12 for contacts 1-7, and a decline of at least 2.5 times.

The files are read-only inputs at ``../shared/realdata/`` beside the project (or
``$CADENCE_REALDATA``); each is checked against its published SHA-256 first.

    python calibrate.py mode=data     # print both protocols, write targets/hillstrom.yaml and targets/bank_campaign.yaml
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import polars as pl

from realism.targets import Target, Targets, write_targets
from simulate.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
HILLSTROM, BANK = "hillstrom.csv", "bank-additional-full.csv"
SHA256 = {
    HILLSTROM: "ff9e59285e9dc3f5fa3e0975419e6631ea5bdccd65d818991473d2367e02979c",
    BANK: "74adfc578bf77a7ff4bb1ba4a9f8709d9e3c6907342959c2c8416847e0afb4d8",
}
RECENCY_BUCKETS = ((1, 4), (5, 8), (9, 12))
"""months since the last purchase, as the realism targets group them"""
CONTACTS = tuple(range(1, 10))
"""contact numbers reported one by one; the rest are pooled as 10 or more"""
TARGETS_DIR = ROOT / "targets"


def data_dir() -> Path:
    """``$CADENCE_REALDATA`` if set, else ``../shared/realdata`` beside the project root."""
    return Path(os.environ.get("CADENCE_REALDATA") or ROOT.parent / "shared" / "realdata")


def dataset(name: str, folder: Path | None = None, verify: bool = True) -> Path:
    """The path of a dataset file, checked to exist and (``verify``) to be the published file."""
    path = (folder or data_dir()) / name
    if not path.is_file():
        raise ConfigError(
            f"realdata: {path} not found; set $CADENCE_REALDATA to the folder holding {name}"
        )
    if verify:
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != SHA256[name]:
            raise ConfigError(
                f"realdata: {path} has SHA-256 {actual}, not the published {SHA256[name]}: "
                "another version of the file (pass verify=False to read it anyway)"
            )
    return path


def _read(path: Path, columns: tuple[str, ...], separator: str = ",") -> pl.DataFrame:
    """The ``columns`` of a CSV file (types inferred from every row), or a ConfigError naming
    the columns it lacks."""
    header = pl.read_csv(path, separator=separator, n_rows=0).columns
    missing = [c for c in columns if c not in header]
    if missing:
        raise ConfigError(f"realdata: {path} lacks column(s) {missing}")
    return pl.read_csv(path, separator=separator, columns=list(columns), infer_schema_length=None)


def hillstrom_statistic_names() -> list[str]:
    """Names of the statistics :func:`hillstrom_statistics` gives, in its order."""
    names = []
    for suffix in ["", *(f"/recency_{lo}_{hi}" for lo, hi in RECENCY_BUCKETS)]:
        for arm in ("no_email", "email"):
            names += [
                f"hillstrom/visit_rate/{arm}{suffix}",
                f"hillstrom/conversion_rate/{arm}{suffix}",
            ]
        names.append(f"hillstrom/visit_lift{suffix}")
    return names


def hillstrom_statistics(path: Path) -> dict[str, float]:
    """Rates of the Hillstrom protocol (fractions, not percentages); names as in the targets."""
    frame = _read(path, ("recency", "segment", "visit", "conversion"))
    arms = set(frame["segment"].unique())
    if not {"No E-Mail"} < arms:
        raise ConfigError(
            f"realdata: {path} has arms {sorted(arms)}; expected 'No E-Mail' and e-mail arms"
        )
    frame = frame.with_columns(
        (pl.col("segment") != "No E-Mail").alias("emailed"),
        pl.when(pl.col("recency") <= 4)
        .then(pl.lit("1-4"))
        .when(pl.col("recency") <= 8)
        .then(pl.lit("5-8"))
        .otherwise(pl.lit("9-12"))
        .alias("bucket"),
    )
    out: dict[str, float] = {}

    def rates(part: pl.DataFrame, suffix: str) -> None:
        for emailed, arm in ((False, "no_email"), (True, "email")):
            rows = part.filter(pl.col("emailed") == emailed)
            out[f"hillstrom/visit_rate/{arm}{suffix}"] = float(rows["visit"].mean())
            out[f"hillstrom/conversion_rate/{arm}{suffix}"] = float(rows["conversion"].mean())
        out[f"hillstrom/visit_lift{suffix}"] = (
            out[f"hillstrom/visit_rate/email{suffix}"]
            - out[f"hillstrom/visit_rate/no_email{suffix}"]
        )

    rates(frame, "")
    for lo, hi in RECENCY_BUCKETS:
        rates(frame.filter(pl.col("bucket") == f"{lo}-{hi}"), f"/recency_{lo}_{hi}")
    return out


def bank_statistics(path: Path) -> dict[str, float]:
    """Success by contact number in the bank campaigns, relative to the first contact."""
    frame = _read(path, ("campaign", "y"), separator=";")
    frame = frame.with_columns(
        (pl.col("y") == "yes").cast(pl.Float64).alias("success"),
        pl.col("campaign").clip(upper_bound=10).alias("contact"),
    )
    by = frame.group_by("contact").agg(pl.col("success").mean()).sort("contact")
    rate = dict(zip(by["contact"].to_list(), by["success"].to_list(), strict=True))
    first = rate[1]
    out = {
        "bank/success_rate": float(frame["success"].mean()),
        "bank/success_rate/contact_1": first,
    }
    for k in (*CONTACTS[1:], 10):
        label = "10plus" if k == 10 else str(k)
        out[f"bank/relative_success/contact_{label}"] = rate[k] / first
    out["bank/decline_1_to_10plus"] = first / rate[10]
    return out


def hillstrom_targets(stats: dict[str, float]) -> Targets:
    targets = []
    for name, value in stats.items():
        bucketed = "/recency_" in name
        if name.startswith("hillstrom/visit"):
            half = 0.025 if bucketed else 0.015
        else:
            half = 0.005 if bucketed else 0.003
        targets.append(
            Target(name, round(value, 5), round(value - half, 5), round(value + half, 5))
        )
    return Targets(
        "hillstrom.csv (MineThatData E-Mail Analytics Challenge, 2008): two-week visit and "
        "conversion rates with one e-mail (both e-mail arms) and without, overall and by months "
        "since the last purchase; computed by python calibrate.py mode=data",
        tuple(targets),
    )


def bank_targets(stats: dict[str, float]) -> Targets:
    targets = []
    for name, value in stats.items():
        if name == "bank/decline_1_to_10plus":
            targets.append(Target(name, round(value, 4), 2.5, float("inf"), note="at least 2.5x"))
        elif name.startswith("bank/relative_success/contact_") and name.rsplit("_", 1)[1] in {
            str(k) for k in range(2, 8)
        }:
            targets.append(
                Target(name, round(value, 4), round(value - 0.12, 4), round(value + 0.12, 4))
            )
        else:  # reported with the scorecard, not fitted: a wide band and a small weight
            targets.append(
                Target(name, round(value, 4), round(value * 0.5, 4), round(value * 1.5, 4), 0.1)
            )
    return Targets(
        "bank-additional-full.csv (UCI Bank Marketing; Moro, Cortez & Rita, Decision Support "
        "Systems 62, 2014; CC BY 4.0): success by contact number in the campaign relative to the "
        "first contact; observational (clients called often are partly the hard to convince); "
        "computed by python calibrate.py mode=data",
        tuple(targets),
    )


def _table(title: str, stats: dict[str, float]) -> str:
    lines = [f"| {title} | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in stats.items()]
    return "\n".join(lines)


def write_real_targets(folder: Path | None = None, out: Path = TARGETS_DIR) -> str:
    """Run both protocols on the real datasets (in ``folder``, default :func:`data_dir`), write
    ``hillstrom.yaml`` and ``bank_campaign.yaml`` into ``out``; returns what to print: both
    protocols' tables and the files written."""
    hill = hillstrom_statistics(dataset(HILLSTROM, folder))
    bank = bank_statistics(dataset(BANK, folder))
    lines = [_table("Hillstrom protocol", hill), "", _table("Bank campaign protocol", bank), ""]
    for name, targets in (
        ("hillstrom", hillstrom_targets(hill)),
        ("bank_campaign", bank_targets(bank)),
    ):
        lines.append(f"wrote {write_targets(targets, out / f'{name}.yaml')}")
    return "\n".join(lines)
