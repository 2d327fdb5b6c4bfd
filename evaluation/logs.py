"""Logged datasets: one row per client-day, as a firm's send log or the simulator writes it.

The schema (``docs/logged-data.md``) is :data:`SCHEMA`: identifiers, every observation feature,
the action components, the logging policy's propensity of the logged action (after masks),
every outcome and the reward.

A log must also obey the contract the serving runtime enforces on a request (``serve/contract.py``,
``serve/runtime.py``) and the guardrails the environment enforces on a send (``envs/masks.py``):
flags exactly 0 or 1, exactly one weekday and one consent tier, whole counts, nothing the client's
consent tier hides, and no logged send to an opted-out channel, in quiet hours, past a frequency
cap or of a content above the client's tier. A firm's log that breaks its own rules is data the
estimators cannot trust, so it is refused, not repaired.

:func:`validate` names the rule, the column and the first row that breaks it (every check is a
polars expression over whole columns); :func:`read_logs` reads and validates a Parquet file
without touching it, refusing one with more than ``max_rows`` rows from its metadata before
anything is decoded; :func:`write_logs` validates first and replaces the target file atomically
(a temporary file in the same folder, then a rename), so a failed write leaves any earlier file as
it was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from envs.config import GuardrailConfig
from envs.consent import MIN_TIER
from envs.features import FEATURE_NAMES, OBS_HIGH
from envs.masks import MaskRules
from envs.reward import LATENT_OUTCOMES
from serve import contract
from simulate.labels import ACTION_LABELS, CHANNELS, CONTENTS, SLOTS
from simulate.world import OUTCOMES

ACTIONS: tuple[str, ...] = tuple(ACTION_LABELS)
"""action component columns, in action order (slot 0 = no send)"""

SCHEMA: dict[str, str] = {
    "client_id": "integer",
    "day": "integer",
    **dict.fromkeys(FEATURE_NAMES, "float"),
    **dict.fromkeys(ACTIONS, "integer"),
    "pscore": "float",
    **dict.fromkeys((o for o in OUTCOMES if o not in LATENT_OUTCOMES), "boolean"),
    "reward": "float",
}
"""column -> kind (integer, float, boolean); extra columns are allowed and kept"""

OPTIONAL: dict[str, str] = dict.fromkeys(LATENT_OUTCOMES, "boolean")
"""columns a log may hold and the simulator writes, held to their kind where present: whether a
click was calm or anxious is the simulator's label, which no firm's export has
(``envs.reward.LATENT_OUTCOMES``); the monitor watches anxious clicks only where they are logged"""

MAX_DAY = 3_660
"""largest ``day`` a log may hold (days; 0 is a Monday): ten years of daily decisions. A larger
day is a mapping error (a timestamp, a sentinel), and the truth rollouts and day-indexed
estimators would run to it."""

MAX_ROWS = 2_000_000
"""most rows :func:`read_logs` decodes unless told otherwise (client-days). A simulated log takes
about 325 bytes a row in memory, a float64 one about 580, so the default bounds a read near
1.2 GB. Counted from the Parquet metadata before any column is decoded: a few MB of constant
values can expand to gigabytes."""

MAX_COLUMNS = 1_000
"""most columns :func:`read_logs` accepts (the schema has 85; extra columns are kept)"""

_KIND = dict(zip(contract.FEATURE_NAMES, contract.FEATURE_KIND, strict=True))
"""feature -> "flag" (exactly 0 or 1), "count" (a whole number) or "value", as serving checks"""
FLAGS = tuple(n for n in FEATURE_NAMES if _KIND[n] == "flag")
COUNTS = tuple(n for n in FEATURE_NAMES if _KIND[n] == "count")
TIER_COLUMNS = tuple(f"consent_tier_{k}" for k in range(contract.N_TIERS))


class LogError(ValueError):
    """A logged dataset breaks the schema or the contract; the message names the rule, the
    column and the first row that breaks it."""


@dataclass(frozen=True)
class _Rule:
    """One row-wise rule: ``bad`` is True in each row that breaks it."""

    bad: pl.Expr
    message: Callable[[pl.DataFrame, int], str]
    """what is wrong in the given row (of the frame), and what would be right"""


def _kind_ok(kind: str, dtype: pl.DataType) -> bool:
    if kind == "integer":
        return dtype.is_integer()
    if kind == "float":
        return dtype.is_float() or dtype.is_integer()
    return dtype == pl.Boolean


_TIER = "_consent_tier"
"""a working column: each row's consent tier"""


def _value(column: str) -> pl.Expr:
    return pl.col(column).cast(pl.Float64)


def _tier() -> pl.Expr:
    """The consent tier of each row (meaningful once exactly one tier flag is set)."""
    return pl.sum_horizontal(pl.col(c) * k for k, c in enumerate(TIER_COLUMNS))


def _row_tier(frame: pl.DataFrame, row: int) -> int:
    return int(np.argmax([frame[c][row] for c in TIER_COLUMNS]))


def _range_rules(max_day: int) -> list[_Rule]:
    """The day within the documented horizon, each action component within the action space."""
    rules = [
        _Rule(
            (pl.col("day") < 0) | (pl.col("day") > max_day),
            lambda f, r: (
                f"day is {f['day'][r]} in row {r}; days lie in 0..{max_day} (0 is a Monday; "
                "the horizon is ten years, evaluation.logs.MAX_DAY)"
            ),
        )
    ]
    for column, labels in ACTION_LABELS.items():
        rules.append(
            _Rule(
                (pl.col(column) < 0) | (pl.col(column) >= len(labels)),
                lambda f, r, c=column, ls=labels: (
                    f"column {c!r} is {f[c][r]} in row {r}; the action space allows "
                    f"0..{len(ls) - 1} ({', '.join(ls)})"
                ),
            )
        )
    return rules


def _feature_rules() -> list[_Rule]:
    """Bounds, exact flags, whole counts, one-hot groups and consent: the serving contract
    (feature columns already float, the working tier column present)."""
    rules = []
    for i, name in enumerate(FEATURE_NAMES):
        high = float(OBS_HIGH[i])
        rules.append(
            _Rule(
                # NaN and infinities fall outside too (polars orders NaN above every number)
                ~pl.col(name).is_between(0.0, high),
                lambda f, r, n=name, h=high: (
                    f"feature {n!r} is {f[n][r]} in row {r}; allowed 0..{h:g}"
                ),
            )
        )
    for name in FLAGS:
        rules.append(
            _Rule(
                (pl.col(name) != 0) & (pl.col(name) != 1),
                lambda f, r, n=name: (
                    f"feature {n!r} is {f[n][r]} in row {r}; a flag must be exactly 0 or 1"
                ),
            )
        )
    for name in COUNTS:
        rules.append(
            _Rule(
                pl.col(name) != pl.col(name).floor(),
                lambda f, r, n=name: (
                    f"feature {n!r} is {f[n][r]} in row {r}; a count must be a whole number"
                ),
            )
        )
    for prefix, (fewest, most) in contract.ONE_HOT_GROUPS.items():
        group = [n for n in FEATURE_NAMES if n.startswith(prefix)]
        set_ = pl.sum_horizontal(group)
        rules.append(
            _Rule(
                (set_ < fewest) | (set_ > most),
                lambda f, r, p=prefix, g=group, lo=fewest, hi=most: (
                    f"features {p}* have {int(sum(f[n][r] for n in g))} set in row {r}; "
                    + ("exactly one must be" if lo == hi else f"at most {hi} may be")
                ),
            )
        )
    for i, name in enumerate(FEATURE_NAMES):
        need = int(MIN_TIER[i])
        if need == 0:
            continue
        rules.append(
            _Rule(
                (pl.col(name) != 0) & (pl.col(_TIER) < need),
                lambda f, r, n=name, t=need: (
                    f"feature {n!r} is {f[n][r]} in row {r}, but the client's consent tier "
                    f"{_row_tier(f, r)} does not allow it (tier {t} needed); a feature the "
                    "tier hides must read 0"
                ),
            )
        )
    return rules


def _send_text(frame: pl.DataFrame, row: int) -> str:
    channel = CHANNELS[frame["channel"][row]]
    slot = SLOTS[frame["slot"][row] - 1]
    return (
        f"row {row} logs a send on {channel} ({slot}, {CONTENTS[frame['content'][row]]}) to client "
        f"{frame['client_id'][row]} on day {frame['day'][row]}"
    )


def _guardrail_rules(rules: MaskRules) -> list[tuple[str, pl.Expr, Callable]]:
    """(rule, expression True where a logged send breaks it, why) in the serving runtime's order
    (``serve/guards.py``): opt-out, weekly cap, channel cap, quiet hours, content tier."""
    send, channel, slot = pl.col("slot") > 0, pl.col("channel"), pl.col("slot")
    sent = [pl.col(f"sent_7d_{c}") for c in CHANNELS]

    def on_channel(per_channel: list[pl.Expr]) -> pl.Expr:
        return pl.any_horizontal(
            [pl.lit(False), *((channel == k) & e for k, e in enumerate(per_channel))]
        )

    opted = on_channel([pl.col(f"opted_out_{c}") > 0.5 for c in CHANNELS])
    over_channel = on_channel(
        [s >= int(cap) for s, cap in zip(sent, rules.channel_cap, strict=True)]
    )
    quiet = pl.any_horizontal(
        [pl.lit(False)]
        + [(slot == s + 1) & (channel == k) for s, k in np.argwhere(rules.quiet).tolist()]
    )
    tier = _tier()
    above_tier = pl.any_horizontal(
        [pl.lit(False)]
        + [(pl.col("content") == k) & (tier < int(t)) for k, t in enumerate(rules.content_min_tier)]
    )
    weekly = pl.sum_horizontal(sent) >= rules.max_per_week

    def channel_name(f: pl.DataFrame, r: int) -> str:
        return CHANNELS[f["channel"][r]]

    return [
        (
            "opt-out",
            send & opted,
            lambda f, r: (
                f"the client opted out of {channel_name(f, r)} "
                f"(opted_out_{channel_name(f, r)} is 1)"
            ),
        ),
        (
            "weekly cap",
            send & weekly,
            lambda f, r: (
                f"the weekly cap of {rules.max_per_week} messages was reached "
                f"(sent_7d_* sum to {int(sum(f[f'sent_7d_{c}'][r] for c in CHANNELS))})"
            ),
        ),
        (
            "channel cap",
            send & over_channel,
            lambda f, r: (
                f"the {channel_name(f, r)} cap of "
                f"{int(rules.channel_cap[f['channel'][r]])} a week was reached "
                f"(sent_7d_{channel_name(f, r)} is {f[f'sent_7d_{channel_name(f, r)}'][r]:g})"
            ),
        ),
        (
            "quiet hours",
            send & quiet,
            lambda f, r: f"{SLOTS[f['slot'][r] - 1]} is quiet hours for {channel_name(f, r)}",
        ),
        (
            "content tier",
            send & above_tier,
            lambda f, r: (
                f"consent tier {_row_tier(f, r)} does not allow "
                f"{CONTENTS[f['content'][r]]} (tier "
                f"{int(rules.content_min_tier[f['content'][r]])} needed)"
            ),
        ),
    ]


def _rules_of(guardrails: GuardrailConfig | None) -> MaskRules:
    return MaskRules.from_config(guardrails if guardrails is not None else GuardrailConfig())


def guardrail_breaches(frame: pl.DataFrame, guardrails: GuardrailConfig | None = None) -> pl.Series:
    """(rows,) the guardrail each logged send breaks, judged from the row's own features as the
    environment (``envs.masks.is_allowed``) and the serving runtime (``serve/guards.py``) judge an
    action: ``"opt-out"``, ``"weekly cap"``, ``"channel cap"``, ``"quiet hours"`` or
    ``"content tier"`` (the first in that order), null where the action is allowed.

    ``guardrails``: the rules the log was made under (default :class:`envs.config.GuardrailConfig`).
    """
    (first, bad, _), *rest = _guardrail_rules(_rules_of(guardrails))
    breach = pl.when(bad).then(pl.lit(first))
    for name, bad, _ in rest:
        breach = breach.when(bad).then(pl.lit(name))
    return frame.select(breach.otherwise(pl.lit(None, pl.Utf8)).alias("guardrail")).to_series()


def _contract_rules(guardrails: GuardrailConfig | None, max_day: int) -> list[_Rule]:
    guards = [
        _Rule(
            bad,
            lambda f, r, name=name, why=why: (
                f"{_send_text(f, r)} that the guardrails forbid ({name}): {why(f, r)}; a log that "
                "breaks its own rules is data the estimators cannot trust"
            ),
        )
        for name, bad, why in _guardrail_rules(_rules_of(guardrails))
    ]
    pscore = _value("pscore")
    reward = _value("reward")
    return [
        *_range_rules(max_day),
        *_feature_rules(),
        *guards,
        _Rule(
            ~pscore.is_finite() | (pscore <= 0) | (pscore > 1),
            lambda f, r: (
                f"pscore is {f['pscore'][r]} in row {r}; the logging policy's probability of "
                "the logged action must lie in (0, 1] (0 means it could not have been logged)"
            ),
        ),
        _Rule(
            ~reward.is_finite(),
            lambda f, r: f"reward is {f['reward'][r]} in row {r}; it must be finite",
        ),
        _Rule(
            pl.struct("client_id", "day").is_duplicated(),
            lambda f, r: (
                f"client {f['client_id'][r]} on day {f['day'][r]} appears more than once "
                f"(row {r}); one row per client-day"
            ),
        ),
    ]


def _check_structure(frame: pl.DataFrame, where: str) -> None:
    """Every schema column present, of its kind, never empty; at least one row."""
    missing = [c for c in SCHEMA if c not in frame.columns]
    if missing:
        raise LogError(f"{where}: missing column {missing[0]!r} ({len(missing)} missing in all)")
    checked = {**SCHEMA, **{c: k for c, k in OPTIONAL.items() if c in frame.columns}}
    schema = frame.schema  # built anew on each access
    for column, kind in checked.items():
        dtype = schema[column]
        if not _kind_ok(kind, dtype):
            raise LogError(f"{where}: column {column!r} must be {kind}, got {dtype}")
    nulls = frame.select(pl.col(c).is_null().arg_true().first() for c in checked).row(0)
    for column, row in zip(checked, nulls, strict=True):
        if row is not None:
            raise LogError(f"{where}: column {column!r} is empty in row {row}")
    if frame.height == 0:
        raise LogError(f"{where}: no rows")


def validate(
    frame: pl.DataFrame,
    where: str = "logs",
    guardrails: GuardrailConfig | None = None,
    max_day: int = MAX_DAY,
) -> pl.DataFrame:
    """``frame`` if it follows :data:`SCHEMA` and the contract, else :class:`LogError`.

    Args:
        frame: the log, one row per client-day.
        where: what to call it in an error (a path).
        guardrails: the rules the log's sends were made under (default
            :class:`envs.config.GuardrailConfig`, the project's defaults).
        max_day: largest ``day`` allowed (days; default :data:`MAX_DAY`).

    The first rule broken (in the order of ``docs/logged-data.md``) is reported with its first
    row and how many rows break it.
    """
    _check_structure(frame, where)
    schema = frame.schema
    work = frame.with_columns(
        pl.col(n).cast(pl.Float64) for n in FEATURE_NAMES if schema[n].is_integer()
    ).with_columns(_tier().alias(_TIER))
    rules = _contract_rules(guardrails, max_day)
    broken = work.select(rule.bad.any().alias(str(i)) for i, rule in enumerate(rules)).row(0)
    if any(broken):
        rule = rules[broken.index(True)]
        row, count = work.select(
            rule.bad.arg_true().first().alias("row"), rule.bad.sum().alias("count")
        ).row(0)
        total = f" ({count:,} rows break this rule)" if count > 1 else ""
        raise LogError(f"{where}: {rule.message(work, int(row))}{total}")
    if frame.select((pl.col("pscore") == 1).all()).item():
        raise LogError(
            f"{where}: every pscore is 1: the logging policy was deterministic, and no "
            "off-policy estimate can be made from it (log a stochastic policy, e.g. with epsilon "
            "exploration)"
        )
    return frame


def _parquet_shape(path: Path) -> tuple[int, int]:
    """(rows, columns) from the Parquet footer alone: no column is decoded."""
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise LogError(f"{path}: not a readable Parquet file ({exc})") from exc
    try:
        return parquet.metadata.num_rows, parquet.metadata.num_columns
    finally:
        parquet.close()


def read_logs(
    path: str | Path,
    guardrails: GuardrailConfig | None = None,
    max_rows: int = MAX_ROWS,
    max_day: int = MAX_DAY,
) -> pl.DataFrame:
    """Read and validate a logged Parquet file (never written to).

    Args:
        path: the Parquet file.
        guardrails: the rules the log's sends were made under (default: the project's).
        max_rows: most rows to decode (client-days; default :data:`MAX_ROWS`); a file with more
            is refused from its metadata before any column is read.
        max_day: largest ``day`` allowed (days; default :data:`MAX_DAY`).
    """
    path = Path(path)
    if not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows must be a positive whole number of rows, got {max_rows!r}")
    if not path.exists():
        raise LogError(f"{path}: no such file")
    if not path.is_file():
        raise LogError(f"{path}: not a regular file (a log is a Parquet file)")
    rows, columns = _parquet_shape(path)
    if rows > max_rows:
        raise LogError(
            f"{path}: {rows:,} rows, more than the {max_rows:,} allowed (read_logs(max_rows=...) "
            "raises the cap; split a larger log by day)"
        )
    if columns > MAX_COLUMNS:
        raise LogError(f"{path}: {columns:,} columns; at most {MAX_COLUMNS:,} are read")
    try:
        frame = pl.read_parquet(path, n_rows=max_rows + 1)
    except Exception as exc:  # polars raises several types for a file that is not Parquet
        raise LogError(f"{path}: not a readable Parquet file ({exc})") from exc
    if frame.height > max_rows:  # the footer understated its rows
        raise LogError(f"{path}: more than the {max_rows:,} rows allowed")
    return validate(frame, str(path), guardrails, max_day)


def write_logs(
    frame: pl.DataFrame, path: str | Path, guardrails: GuardrailConfig | None = None
) -> Path:
    """Validate ``frame`` (under ``guardrails``, default the project's) and write it to ``path``
    atomically; returns the path."""
    path = Path(path)
    validate(frame, str(path), guardrails)
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
