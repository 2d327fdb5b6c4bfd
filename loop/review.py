"""Human review in the loop: sensitive sends wait for a person's approval before they go out.

The runtime flags a decision ``needs_review`` when it would send a pressing tone (urgent,
opportunity) to a client whose declared goal is debt or retirement adequacy (or who declared
none), or a loss topic (a market update) while markets are stressed: the manifest's
``review_rules``, :data:`REVIEW_RULES` here. Such a decision is held:

1. :func:`review_queue` lists the held decisions of a decision log (served, flagged, with a
   send, and without an outcome yet) with the reasons a reviewer reads, computed from the
   client's features as of the decision day, and the day the review window closes
   (``deadline_day`` = decision day + ``window_days``).
2. A reviewer answers ``approved`` or ``rejected`` for a decision on a day before its deadline
   (a verdicts file: ``decision_id``, ``outcome``, ``reviewed_day``).
   :func:`apply_reviews` checks the verdicts against the log and adds them to the review-outcomes
   table, and marks ``expired`` every held decision whose deadline has come without a verdict.
3. Only an approved decision is sent (on the day of its approval); a rejected or expired one
   falls back to no send. :func:`releasable` says which decisions of a day may go out.

The review-outcomes table (:data:`OUTCOME_SCHEMA`) is the decision log's record of the
reviewer's outcome, joined to it by ``decision_id``: ``outcome`` (``approved``, ``rejected``,
``expired``) and ``reviewed_day`` (the calendar day of the verdict, or the deadline day for an
expired decision). How the outcome join accounts for it is in :mod:`loop.join`.
"""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl

from serve.files import write_atomic
from simulate.labels import SEGMENTS

REVIEW_RULES: dict[str, tuple[str, ...]] = {
    "tones": ("urgent", "opportunity"),
    "goals": ("saver_debt", "retirement"),
    "loss_contents": ("market_update",),
}
"""the review rules every export's manifest carries (``serve/onnx_export.py``, ``review_rules``):
pressing tones, sensitive declared goals, loss topics"""

WINDOW_DAYS = 2
"""default review window (days): a decision of day d may be approved on days d..d + 1; from
day d + 2 on, without a verdict, it has expired and falls back to no send"""

VERDICTS: tuple[str, ...] = ("approved", "rejected")
"""what a reviewer answers"""
OUTCOMES: tuple[str, ...] = ("approved", "rejected", "expired")
"""a held decision's outcome: a reviewer's verdict, or ``expired`` (no verdict in the window)"""

OUTCOME_SCHEMA: dict[str, pl.DataType] = {
    "decision_id": pl.String(),
    "outcome": pl.String(),
    "reviewed_day": pl.Int32(),
}
"""the review-outcomes table (and a verdicts file, whose ``outcome`` is one of :data:`VERDICTS`)"""

QUEUE_COLUMNS: tuple[str, ...] = (
    "decision_id",
    "client_id",
    "day",
    "slot",
    "tone",
    "channel",
    "content",
    "reasons",
    "deadline_day",
)
"""the review queue's columns: the held decision, why it is held, and the first day on which it
has expired (``deadline_day``)"""


class ReviewError(ValueError):
    """A verdicts file or review-outcomes table breaks its rules; the message names the file,
    the column and the first row."""


def held(decisions: pl.DataFrame) -> pl.DataFrame:
    """The decisions that wait for a review: served (``mode`` = serve: in shadow mode the firm
    sends its own message and nothing is held), flagged ``needs_review``, with a send."""
    return decisions.filter(
        pl.col("needs_review") & (pl.col("mode") == "serve") & (pl.col("a_slot") > 0)
    )


def review_reasons(
    decisions: pl.DataFrame,
    features: pl.DataFrame,
    rules: dict[str, tuple[str, ...]] | None = None,
) -> pl.Series:
    """(rows,) why each decision is held, in words ("urgent tone to a saver_debt client; ...";
    null where no rule applies), from its action and its client's ``features`` as of the
    decision day (a :func:`loop.features.build_features` frame, or any frame with ``client_id``
    and the feature columns; ``decisions`` must all be of that day).

    ``rules``: the manifest's ``review_rules`` (default :data:`REVIEW_RULES`)."""
    rules = REVIEW_RULES if rules is None else rules
    goals = [g for g in SEGMENTS if g in rules["goals"]]
    frame = decisions.select("client_id", "tone", "content", "a_slot").join(
        features.select(
            pl.col("client_id").cast(pl.Int64),
            *(pl.col(f"goal_{g}") for g in SEGMENTS),
            "market_stress",
        ),
        on="client_id",
        how="left",
        maintain_order="left",
    )
    pressing = pl.col("tone").is_in(list(rules["tones"])) & (pl.col("a_slot") > 0)
    declared = pl.sum_horizontal(pl.col(f"goal_{g}") for g in SEGMENTS) > 0.5
    goal_parts = [
        pl.when(pressing & (pl.col(f"goal_{g}") > 0.5)).then(
            pl.format("{} tone to a {} client", pl.col("tone"), pl.lit(g))
        )
        for g in goals
    ]
    no_goal = pl.when(pressing & ~declared).then(
        pl.format("{} tone to a client with no declared goal", pl.col("tone"))
    )
    loss = pl.when(
        pl.col("content").is_in(list(rules["loss_contents"]))
        & (pl.col("a_slot") > 0)
        & (pl.col("market_stress") > 0)
    ).then(
        pl.format(
            "{} while markets are stressed (stress {})",
            pl.col("content"),
            pl.col("market_stress").round(2),
        )
    )
    reasons = pl.concat_str([*goal_parts, no_goal, loss], separator="; ", ignore_nulls=True)
    return frame.select(pl.when(reasons != "").then(reasons).alias("reasons"))["reasons"]


def _check_outcomes(frame: pl.DataFrame, where: str, allowed: tuple[str, ...]) -> pl.DataFrame:
    """``frame`` in :data:`OUTCOME_SCHEMA` types if its columns and values are sound."""
    names = list(OUTCOME_SCHEMA)
    extra = [c for c in frame.columns if c not in names]
    if extra:
        raise ReviewError(f"{where}: unknown column {extra[0]!r}; the columns are {names}")
    for name in names:
        if name not in frame.columns:
            raise ReviewError(f"{where}: missing column {name!r}; the columns are {names}")
    if not frame.schema["reviewed_day"].is_integer():
        raise ReviewError(
            f"{where}: column 'reviewed_day' must be a whole calendar day, got "
            f"{frame.schema['reviewed_day']}"
        )
    frame = frame.select(
        pl.col("decision_id").cast(pl.String),
        pl.col("outcome").cast(pl.String),
        pl.col("reviewed_day").cast(pl.Int32),
    )
    rules = [
        *((c, pl.col(c).is_null(), "empty cell; every column is required") for c in OUTCOME_SCHEMA),
        ("outcome", ~pl.col("outcome").is_in(list(allowed)), f"allowed: {', '.join(allowed)}"),
        (
            "decision_id",
            pl.col("decision_id").is_duplicated(),
            "this decision has two outcomes; one per decision",
        ),
    ]
    for column, bad, why in rules:
        _refuse(frame, where, column, bad, why)
    return frame


def _refuse(frame: pl.DataFrame, where: str, column: str, bad: pl.Expr, why: str) -> None:
    flags = frame.select(bad.fill_null(False).alias("bad"))["bad"]
    count = int(flags.sum())
    if count:
        row = int(flags.arg_true()[0])
        more = f" ({count:,} rows break this rule)" if count > 1 else ""
        raise ReviewError(
            f"{where}: column {column!r}, row {row}: {frame[column][row]!r}: {why}{more}"
        )


def read_table(path: str | Path, where: str | None = None) -> pl.DataFrame:
    """A Parquet or CSV file (by suffix) as a frame; an unreadable one is a :class:`ReviewError`."""
    path = Path(path)
    where = where or str(path)
    if not path.is_file():
        raise ReviewError(f"{where}: no such file")
    try:
        if path.suffix == ".csv":
            return pl.read_csv(path, schema_overrides={"decision_id": pl.String})
        return pl.read_parquet(path)
    except Exception as exc:  # polars raises several types for an unreadable file
        raise ReviewError(
            f"{where}: not a readable {path.suffix[1:] or 'Parquet'} file ({exc})"
        ) from exc


def read_outcomes(path: str | Path | None) -> pl.DataFrame:
    """The review-outcomes table at ``path`` (checked), or an empty one for None or no file."""
    if path is None or not Path(path).exists():
        return pl.DataFrame(schema=OUTCOME_SCHEMA)
    return _check_outcomes(read_table(path), str(path), OUTCOMES)


def write_table(frame: pl.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` as Parquet (or CSV for a ``.csv`` path) atomically: a reader sees the
    old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = io.BytesIO()
    if path.suffix == ".csv":
        frame.write_csv(data)
    else:
        frame.write_parquet(data)
    return write_atomic(path, data.getvalue())


def review_queue(
    decisions: pl.DataFrame,
    features_of: dict[int, pl.DataFrame],
    outcomes: pl.DataFrame | None = None,
    window_days: int = WINDOW_DAYS,
    rules: dict[str, tuple[str, ...]] | None = None,
) -> pl.DataFrame:
    """The held decisions (:func:`held`) with no outcome yet, with their reasons and deadline
    (:data:`QUEUE_COLUMNS`), oldest first.

    Args:
        decisions: a decision log (:func:`serve.decisions.read_decisions`).
        features_of: decision day -> the features of its clients as of that day
            (:func:`loop.features.build_features`), for every day the held decisions have.
        outcomes: the review-outcomes table so far (decisions in it are not queued).
        window_days: the review window (days, >= 1).
        rules: the manifest's ``review_rules`` (default :data:`REVIEW_RULES`).
    """
    _check_window(window_days)
    waiting = held(decisions)
    if outcomes is not None and outcomes.height:
        waiting = waiting.join(outcomes.select("decision_id"), on="decision_id", how="anti")
    parts = []
    for day in sorted(waiting["day"].unique().to_list()):
        if day not in features_of:
            raise ReviewError(f"review_queue: no features for decision day {day}")
        of_day = waiting.filter(pl.col("day") == day)
        parts.append(
            of_day.with_columns(
                review_reasons(of_day, features_of[day], rules),
                (pl.col("day") + window_days).cast(pl.Int32).alias("deadline_day"),
            ).select(QUEUE_COLUMNS)
        )
    if not parts:
        return pl.DataFrame(
            schema={
                **{c: decisions.schema[c] for c in QUEUE_COLUMNS[:7]},
                "reasons": pl.String(),
                "deadline_day": pl.Int32(),
            }
        )
    return pl.concat(parts).sort("day", "client_id")


def _check_window(window_days: int) -> None:
    if not isinstance(window_days, int) or window_days < 1:
        raise ReviewError(f"window_days must be a whole number of days >= 1, got {window_days!r}")


def apply_reviews(
    decisions: pl.DataFrame,
    outcomes: pl.DataFrame,
    verdicts: pl.DataFrame,
    today: int,
    window_days: int = WINDOW_DAYS,
    where: str = "verdicts",
) -> pl.DataFrame:
    """The review-outcomes table after ``verdicts`` and the expiries due by ``today``.

    Each verdict (``decision_id``, ``outcome`` approved or rejected, ``reviewed_day``) must name a
    held decision of ``decisions`` (:func:`held`) that has no outcome yet (the same verdict again
    is accepted once more and changes nothing), on a day from the decision day to
    ``today``, before the decision's deadline (decision day + ``window_days``). Then every held
    decision without an outcome whose deadline is ``today`` or earlier is ``expired`` (its
    ``reviewed_day`` is the deadline). A broken verdict is a :class:`ReviewError` naming
    ``where``, the column and the row, and nothing is applied.
    """
    _check_window(window_days)
    outcomes = _check_outcomes(outcomes, "review outcomes", OUTCOMES)
    verdicts = _check_outcomes(verdicts, where, VERDICTS)
    waiting = held(decisions).select(
        "decision_id", pl.col("day").alias("_day"), pl.lit(True).alias("_held")
    )
    known = decisions.select("decision_id", pl.lit(True).alias("_known"))
    work = (
        verdicts.join(known, on="decision_id", how="left", maintain_order="left")
        .join(waiting, on="decision_id", how="left", maintain_order="left")
        .join(
            outcomes.rename({"outcome": "_had", "reviewed_day": "_had_day"}),
            on="decision_id",
            how="left",
            maintain_order="left",
        )
    )
    deadline = pl.col("_day") + window_days
    again = (pl.col("_had") == pl.col("outcome")) & (pl.col("_had_day") == pl.col("reviewed_day"))
    checks = [
        ("decision_id", pl.col("_known").is_null(), "no such decision in the decision log"),
        (
            "decision_id",
            pl.col("_held").is_null(),
            "this decision was not held for review (not flagged needs_review, not served, or "
            "no send)",
        ),
        (
            "decision_id",
            pl.col("_had").is_not_null() & ~again,
            "this decision already has an outcome in the review-outcomes table",
        ),
        (
            "reviewed_day",
            pl.col("reviewed_day") < pl.col("_day"),
            "a review cannot come before the decision's day",
        ),
        ("reviewed_day", pl.col("reviewed_day") > today, f"after today (day {today})"),
        (
            "reviewed_day",
            pl.col("reviewed_day") >= deadline,
            f"on or after the decision's deadline (its day + {window_days}): it had expired "
            "and fell back to no send",
        ),
    ]
    for column, bad, why in checks:
        _refuse(work, where, column, bad, why)
    fresh = work.filter(pl.col("_had").is_null()).select(list(OUTCOME_SCHEMA))
    merged = pl.concat([outcomes, fresh])
    expired = (
        held(decisions)
        .join(merged.select("decision_id"), on="decision_id", how="anti")
        .filter(pl.col("day") + window_days <= today)
        .select(
            "decision_id",
            pl.lit("expired").alias("outcome"),
            (pl.col("day") + window_days).cast(pl.Int32).alias("reviewed_day"),
        )
    )
    return pl.concat([merged, expired])


def releasable(
    decisions: pl.DataFrame, outcomes: pl.DataFrame, day: int, window_days: int = WINDOW_DAYS
) -> pl.DataFrame:
    """The decisions whose message goes out on ``day``: the day's served sends that were not held,
    and every held send approved on ``day`` (still within its window). A held decision without an
    approval is never sent; a rejected or expired one falls back to no send."""
    _check_window(window_days)
    sends = decisions.filter((pl.col("a_slot") > 0) & (pl.col("mode") == "serve"))
    waiting = held(decisions).select("decision_id")
    plain = sends.filter(pl.col("day") == day).join(waiting, on="decision_id", how="anti")
    approved = outcomes.filter((pl.col("outcome") == "approved") & (pl.col("reviewed_day") == day))
    late_ok = sends.join(approved.select("decision_id"), on="decision_id", how="semi").filter(
        pl.col("day") + window_days > day
    )
    return pl.concat([plain, late_ok]).sort("client_id")
