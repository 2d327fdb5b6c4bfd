"""A firm's event export: what a CRM, an e-mail/push/SMS provider and app analytics record.

Five tables (``docs/events.md``), one file each in a folder, Parquet (``<table>.parquet``) or
CSV (``<table>.csv``):

- ``clients``: ``client_id``, ``onboarding_day``, ``consent_tier`` (at onboarding), ``goal``
  (declared goal segment), ``declared_risk`` (0..1), ``preferred_slot`` (declared contact time);
- ``consents`` (may be absent or empty): ``client_id``, ``day``, ``consent_tier``: the client's
  tier from that day's decision on;
- ``sends``: ``send_id``, ``client_id``, ``day``, ``slot``, ``channel``, ``tone``, ``content``,
  ``decision_id`` (null where the send was not decided by a logged decision);
- ``events``: ``client_id``, ``day``, ``kind`` (:data:`KINDS`), ``channel`` (required for an
  unsubscribe), ``send_id`` (the send it answers, null where unknown);
- ``market``: ``day``, ``stress`` (the market stress index, >= 0).

Days are calendar days (0 is a Monday), in ``-MAX_DAY..MAX_DAY`` (history before the first
decision day is allowed). Labels are the orders of :mod:`simulate.labels`.

:func:`validate_export` checks every table and the references between them and returns the
tables in their canonical types (labels as ``pl.Enum``); the first rule broken is reported with
the file, the column, the first row that breaks it and how many rows do. :func:`read_export`
reads a whole folder and validates it before anything is returned: bad data is refused, never
half-used. Each table is refused from its Parquet footer when it holds more than ``max_rows``
rows, before any column is decoded.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from evaluation.logs import MAX_COLUMNS, MAX_DAY
from simulate.labels import CHANNELS, CONTENTS, SEGMENTS, SLOT_KEYS, TONES

KINDS: tuple[str, ...] = (
    "open",
    "click",
    "conversion",
    "visit",
    "unsubscribe",
    "complaint",
    "panic_trade",
    "account_closure",
)
"""what an event records: an open or click of a send, a beneficial action (conversion), a visit
to the app or site, an unsubscribe from a channel, a complaint, a panic trade (a sale in a
market fall), the client closing the account"""

N_TIERS = 4
MAX_ROWS = 50_000_000
"""most rows read from one table unless told otherwise (about 1 GB of events); counted from
the Parquet footer before any column is decoded"""


class ExportError(ValueError):
    """An export breaks the schema; the message names the file, the column and the first row."""


@dataclass(frozen=True)
class Column:
    """One column of a table.

    ``kind``: ``id`` (whole number >= 0), ``day`` (whole number of days), ``tier`` (0..3),
    ``unit`` (a number in 0..1), ``stress`` (a finite number >= 0), ``label`` (one of
    ``labels``) or ``text``.
    """

    name: str
    kind: str
    labels: tuple[str, ...] = ()
    required: bool = True


TABLES: dict[str, tuple[Column, ...]] = {
    "clients": (
        Column("client_id", "id"),
        Column("onboarding_day", "day"),
        Column("consent_tier", "tier"),
        Column("goal", "label", SEGMENTS),
        Column("declared_risk", "unit"),
        Column("preferred_slot", "label", SLOT_KEYS),
    ),
    "consents": (
        Column("client_id", "id"),
        Column("day", "day"),
        Column("consent_tier", "tier"),
    ),
    "sends": (
        Column("send_id", "id"),
        Column("client_id", "id"),
        Column("day", "day"),
        Column("slot", "label", SLOT_KEYS),
        Column("channel", "label", CHANNELS),
        Column("tone", "label", TONES),
        Column("content", "label", CONTENTS),
        Column("decision_id", "text", required=False),
    ),
    "events": (
        Column("client_id", "id"),
        Column("day", "day"),
        Column("kind", "label", KINDS),
        Column("channel", "label", CHANNELS, required=False),
        Column("send_id", "id", required=False),
    ),
    "market": (Column("day", "day"), Column("stress", "stress")),
}
"""every table's columns, in order; extra columns are refused (a misspelt name would otherwise
be silently dropped)"""

_TYPES: dict[str, pl.DataType] = {
    "id": pl.UInt64(),
    "day": pl.Int32(),
    "tier": pl.Int8(),
    "unit": pl.Float64(),
    "stress": pl.Float64(),
    "text": pl.String(),
}


@dataclass(frozen=True)
class Export:
    """The five tables of an export (polars frames in the canonical types of :data:`TABLES`)."""

    clients: pl.DataFrame
    consents: pl.DataFrame
    sends: pl.DataFrame
    events: pl.DataFrame
    market: pl.DataFrame

    def tables(self) -> dict[str, pl.DataFrame]:
        """Table name -> frame, in :data:`TABLES` order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def dtype_of(column: Column) -> pl.DataType:
    """The canonical polars type of ``column``."""
    return pl.Enum(column.labels) if column.kind == "label" else _TYPES[column.kind]


def empty(table: str) -> pl.DataFrame:
    """An empty ``table`` in its canonical types (e.g. an export without consent changes)."""
    return pl.DataFrame(schema={c.name: dtype_of(c) for c in TABLES[table]})


def _first_bad(frame: pl.DataFrame, bad: pl.Expr) -> tuple[int, int] | None:
    """(first row, rows) where ``bad`` holds, or None."""
    bad = bad.fill_null(False)
    row, count = frame.select(bad.arg_true().first().alias("row"), bad.sum().alias("n")).row(0)
    return None if row is None else (int(row), int(count))


def _refuse(where: str, column: str, frame: pl.DataFrame, bad: pl.Expr, why: Callable) -> None:
    """Raise :class:`ExportError` naming the first row of ``frame`` where ``bad`` holds."""
    found = _first_bad(frame, bad)
    if found is None:
        return
    row, count = found
    more = f" ({count:,} rows break this rule)" if count > 1 else ""
    raise ExportError(f"{where}: column {column!r}, row {row}: {why(frame, row)}{more}")


def _kind_ok(column: Column, dtype: pl.DataType) -> bool:
    if column.kind in ("id", "day", "tier"):
        return dtype.is_integer()
    if column.kind in ("unit", "stress"):
        return dtype.is_float() or dtype.is_integer()
    if column.kind == "label":
        return dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum)
    return True  # text: any value is kept as its string


def _range_bad(column: Column) -> tuple[pl.Expr, str] | None:
    """(expression True where a present value is out of range, what would be right)."""
    c = pl.col(column.name)
    if column.kind == "id":
        return c < 0, "an id is a whole number >= 0"
    if column.kind == "day":
        return ~c.is_between(-MAX_DAY, MAX_DAY), f"days lie in -{MAX_DAY}..{MAX_DAY}"
    if column.kind == "tier":
        return ~c.is_between(0, N_TIERS - 1), f"a consent tier is 0..{N_TIERS - 1}"
    if column.kind == "unit":
        return ~c.cast(pl.Float64).is_between(0.0, 1.0), "a declared risk lies in 0..1"
    if column.kind == "stress":
        value = c.cast(pl.Float64)
        return ~value.is_finite() | (value < 0), "market stress is a finite number >= 0"
    if column.kind == "label":
        return ~c.cast(pl.String).is_in(column.labels), f"allowed: {', '.join(column.labels)}"
    return None


def _check_table(frame: pl.DataFrame, table: str, where: str) -> pl.DataFrame:
    """Columns, kinds, empty cells and ranges of one table; returns it in canonical types."""
    columns = TABLES[table]
    names = [c.name for c in columns]
    extra = [n for n in frame.columns if n not in names]
    if extra:
        raise ExportError(f"{where}: unknown column {extra[0]!r}; table {table} has {names}")
    for column in columns:
        if column.name not in frame.columns:
            if column.required:
                raise ExportError(f"{where}: missing column {column.name!r}")
            frame = frame.with_columns(pl.lit(None, dtype_of(column)).alias(column.name))
        dtype = frame.schema[column.name]
        all_null = frame.height == frame[column.name].null_count()
        if not (_kind_ok(column, dtype) or (all_null and not column.required)):
            raise ExportError(f"{where}: column {column.name!r} must be {column.kind}, got {dtype}")
        if column.required:
            _refuse(
                where,
                column.name,
                frame,
                pl.col(column.name).is_null(),
                lambda f, r: "empty cell; this column is required",
            )
        rule = _range_bad(column)
        if rule is not None and not all_null:
            bad, right = rule
            _refuse(
                where,
                column.name,
                frame,
                bad,
                lambda f, r, n=column.name, right=right: f"{f[n][r]!r} is out of range; {right}",
            )
    return frame.select(pl.col(c.name).cast(dtype_of(c)) for c in columns)


def _check_links(tables: dict[str, pl.DataFrame], where: dict[str, str]) -> None:
    """Uniqueness and the references between tables."""
    clients, consents, sends = tables["clients"], tables["consents"], tables["sends"]
    events, market = tables["events"], tables["market"]
    _refuse(
        where["clients"],
        "client_id",
        clients,
        pl.col("client_id").is_duplicated(),
        lambda f, r: f"client {f['client_id'][r]} appears more than once; one row per client",
    )
    onboarding = clients.select("client_id", "onboarding_day")
    for table, after_onboarding in (("consents", True), ("sends", True), ("events", False)):
        frame = tables[table].join(onboarding, on="client_id", how="left", maintain_order="left")
        _refuse(
            where[table],
            "client_id",
            frame,
            pl.col("onboarding_day").is_null(),
            lambda f, r: f"client {f['client_id'][r]} is not in the clients table",
        )
        # a visit may come before onboarding (a prospect browsing); nothing else may
        early = pl.col("day") < pl.col("onboarding_day")
        if not after_onboarding:
            early = early & (pl.col("kind") != "visit")
        _refuse(
            where[table],
            "day",
            frame,
            early,
            lambda f, r: (
                f"day {f['day'][r]} is before client {f['client_id'][r]}'s onboarding day "
                f"{f['onboarding_day'][r]}"
            ),
        )
    _refuse(
        where["consents"],
        "day",
        consents,
        pl.struct("client_id", "day").is_duplicated(),
        lambda f, r: f"client {f['client_id'][r]} has two consent changes on day {f['day'][r]}",
    )
    _refuse(
        where["sends"],
        "send_id",
        sends,
        pl.col("send_id").is_duplicated(),
        lambda f, r: f"send {f['send_id'][r]} appears more than once; send ids are unique",
    )
    _refuse(
        where["sends"],
        "day",
        sends,
        pl.struct("client_id", "day").is_duplicated(),
        lambda f, r: (
            f"client {f['client_id'][r]} has two sends on day {f['day'][r]}; a decision is at "
            "most one message a client-day"
        ),
    )
    _refuse(
        where["events"],
        "channel",
        events,
        (pl.col("kind") == "unsubscribe") & pl.col("channel").is_null(),
        lambda f, r: "an unsubscribe must name its channel (email, push or sms)",
    )
    answered = events.join(
        sends.select(
            "send_id", pl.col("client_id").alias("_send_client"), pl.col("day").alias("_send_day")
        ),
        on="send_id",
        how="left",
        maintain_order="left",
    )
    known = pl.col("send_id").is_not_null()
    _refuse(
        where["events"],
        "send_id",
        answered,
        known & pl.col("_send_client").is_null(),
        lambda f, r: f"send {f['send_id'][r]} is not in the sends table",
    )
    _refuse(
        where["events"],
        "send_id",
        answered,
        known & (pl.col("_send_client") != pl.col("client_id")),
        lambda f, r: (
            f"send {f['send_id'][r]} went to client {f['_send_client'][r]}, not to client "
            f"{f['client_id'][r]}"
        ),
    )
    _refuse(
        where["events"],
        "day",
        answered,
        known & (pl.col("day") < pl.col("_send_day")),
        lambda f, r: (
            f"day {f['day'][r]} is before the day {f['_send_day'][r]} of the send it answers"
        ),
    )
    _refuse(
        where["market"],
        "day",
        market,
        pl.col("day").is_duplicated(),
        lambda f, r: f"day {f['day'][r]} appears more than once; one stress a day",
    )


def validate_export(export: Export, where: str = "export") -> Export:
    """``export`` in canonical types if every table follows :data:`TABLES` and the references
    hold (each client once; consents, sends and events of known clients, on or after onboarding
    except visits; unique send ids; at most one send a client-day; an unsubscribe names its
    channel; an answered send exists, went to the same client and came first; one stress a
    day), else :class:`ExportError` naming ``where/<table>``, the column and the first row."""
    paths = {name: f"{where}/{name}" for name in TABLES}
    tables = {
        name: _check_table(frame, name, paths[name]) for name, frame in export.tables().items()
    }
    _check_links(tables, paths)
    return Export(**tables)


def _find(folder: Path, table: str) -> Path | None:
    for suffix in (".parquet", ".csv"):
        path = folder / f"{table}{suffix}"
        if path.is_file():
            return path
    return None


def _read_table(path: Path, max_rows: int) -> pl.DataFrame:
    """One table, refused before decoding when its footer says more than ``max_rows`` rows."""
    if path.suffix == ".parquet":
        try:
            meta = pq.ParquetFile(path).metadata
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise ExportError(f"{path}: not a readable Parquet file ({exc})") from exc
        if meta.num_rows > max_rows:
            raise ExportError(
                f"{path}: {meta.num_rows:,} rows, more than the {max_rows:,} allowed "
                "(read_export(max_rows=...) raises the cap)"
            )
        if meta.num_columns > MAX_COLUMNS:
            raise ExportError(f"{path}: {meta.num_columns:,} columns; at most {MAX_COLUMNS:,}")
    try:
        if path.suffix == ".parquet":
            frame = pl.read_parquet(path, n_rows=max_rows + 1)
        else:
            frame = pl.read_csv(path, n_rows=max_rows + 1, infer_schema_length=10_000)
    except Exception as exc:  # polars raises several types for an unreadable file
        raise ExportError(f"{path}: not a readable {path.suffix[1:]} file ({exc})") from exc
    if frame.height > max_rows:
        raise ExportError(f"{path}: more than the {max_rows:,} rows allowed")
    return frame


def read_export(folder: str | Path, max_rows: int = MAX_ROWS) -> Export:
    """Read and validate the export in ``folder`` (``<table>.parquet`` or ``<table>.csv`` for
    each table of :data:`TABLES`; ``consents`` may be absent). Every table is read and the whole
    export checked before anything is returned.

    Args:
        folder: the export's folder.
        max_rows: most rows of any one table (default :data:`MAX_ROWS`).
    """
    folder = Path(folder)
    if not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows must be a positive whole number of rows, got {max_rows!r}")
    if not folder.is_dir():
        raise ExportError(f"{folder}: not a folder (an export is a folder of tables)")
    tables = {}
    for table in TABLES:
        path = _find(folder, table)
        if path is None:
            if table == "consents":
                tables[table] = empty(table)
                continue
            raise ExportError(f"{folder}: no {table}.parquet or {table}.csv")
        tables[table] = _read_table(path, max_rows)
    return validate_export(Export(**tables), str(folder))


def write_export(export: Export, folder: str | Path) -> Path:
    """Validate ``export`` and write its tables as Parquet into ``folder``, each file atomically
    (a temporary file beside it, then a rename); nothing is written if any table is bad."""
    folder = Path(folder)
    export = validate_export(export, str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in export.tables().items():
        path = folder / f"{name}.parquet"
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        try:
            frame.write_parquet(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return folder
