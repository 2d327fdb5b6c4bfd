"""Logged datasets: one row per client-day, as a firm's send log or the simulator writes it.

The schema (``docs/logged-data.md``) is :data:`SCHEMA`: identifiers, every observation feature,
the action components, the logging policy's propensity of the logged action (after masks),
every outcome and the reward. :func:`validate` names the column and row of the first problem;
:func:`read_logs` reads and validates a Parquet file without touching it; :func:`write_logs`
validates first and replaces the target file atomically (a temporary file in the same folder,
then a rename), so a failed write leaves any earlier file as it was.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import polars as pl

from envs.features import FEATURE_NAMES, OBS_HIGH
from simulate.labels import ACTION_LABELS
from simulate.world import OUTCOMES

ACTIONS: tuple[str, ...] = tuple(ACTION_LABELS)
"""action component columns, in action order (slot 0 = no send)"""

SCHEMA: dict[str, str] = {
    "client_id": "integer",
    "day": "integer",
    **dict.fromkeys(FEATURE_NAMES, "float"),
    **dict.fromkeys(ACTIONS, "integer"),
    "pscore": "float",
    **dict.fromkeys(OUTCOMES, "boolean"),
    "reward": "float",
}
"""column -> kind (integer, float, boolean); extra columns are allowed and kept"""


class LogError(ValueError):
    """A logged dataset breaks the schema; the message names the column and the row."""


def _kind_ok(kind: str, dtype: pl.DataType) -> bool:
    if kind == "integer":
        return dtype.is_integer()
    if kind == "float":
        return dtype.is_float() or dtype.is_integer()
    return dtype == pl.Boolean


def _first_row(frame: pl.DataFrame, mask: pl.Series) -> int:
    return int(frame.with_row_index("_row").filter(mask)["_row"][0])


def validate(frame: pl.DataFrame, where: str = "logs") -> pl.DataFrame:
    """``frame`` if it follows :data:`SCHEMA`, else :class:`LogError` naming column and row."""
    missing = [c for c in SCHEMA if c not in frame.columns]
    if missing:
        raise LogError(f"{where}: missing column {missing[0]!r} ({len(missing)} missing in all)")
    for column, kind in SCHEMA.items():
        dtype = frame.schema[column]
        if not _kind_ok(kind, dtype):
            raise LogError(f"{where}: column {column!r} must be {kind}, got {dtype}")
        nulls = frame[column].is_null()
        if nulls.any():
            raise LogError(f"{where}: column {column!r} is empty in row {_first_row(frame, nulls)}")
    if frame.height == 0:
        raise LogError(f"{where}: no rows")
    for column, labels in ACTION_LABELS.items():
        values = frame[column]
        bad = (values < 0) | (values >= len(labels))
        if bad.any():
            row = _first_row(frame, bad)
            raise LogError(
                f"{where}: column {column!r} is {values[row]} in row {row}; the action space "
                f"allows 0..{len(labels) - 1} ({', '.join(labels)})"
            )
    for i, name in enumerate(FEATURE_NAMES):
        values = frame[name].cast(pl.Float64)
        bad = ~values.is_finite() | (values < 0) | (values > float(OBS_HIGH[i]))
        if bad.any():
            row = _first_row(frame, bad)
            raise LogError(
                f"{where}: feature {name!r} is {values[row]} in row {row}; allowed 0..{OBS_HIGH[i]:g}"
            )
    pscore = frame["pscore"].cast(pl.Float64)
    bad = ~pscore.is_finite() | (pscore <= 0) | (pscore > 1)
    if bad.any():
        row = _first_row(frame, bad)
        raise LogError(
            f"{where}: pscore is {pscore[row]} in row {row}; the logging policy's probability of "
            "the logged action must lie in (0, 1] (0 means it could not have been logged)"
        )
    if (pscore == 1.0).all():
        raise LogError(
            f"{where}: every pscore is 1: the logging policy was deterministic, and no "
            "off-policy estimate can be made from it (log a stochastic policy, e.g. with epsilon "
            "exploration)"
        )
    reward = frame["reward"].cast(pl.Float64)
    if not reward.is_finite().all():
        row = _first_row(frame, ~reward.is_finite())
        raise LogError(f"{where}: reward is {reward[row]} in row {row}; it must be finite")
    duplicated = frame.select(pl.struct("client_id", "day").is_duplicated()).to_series()
    if duplicated.any():
        row = _first_row(frame, duplicated)
        raise LogError(
            f"{where}: client {frame['client_id'][row]} on day {frame['day'][row]} appears more "
            f"than once (row {row}); one row per client-day"
        )
    return frame


def read_logs(path: str | Path) -> pl.DataFrame:
    """Read and validate a logged Parquet file (never written to)."""
    path = Path(path)
    if not path.is_file():
        raise LogError(f"{path}: no such file")
    try:
        frame = pl.read_parquet(path)
    except Exception as exc:  # polars raises several types for a file that is not Parquet
        raise LogError(f"{path}: not a readable Parquet file ({exc})") from exc
    return validate(frame, str(path))


def write_logs(frame: pl.DataFrame, path: str | Path) -> Path:
    """Validate ``frame`` and write it to ``path`` atomically; returns the path."""
    path = Path(path)
    validate(frame, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        frame.write_parquet(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
