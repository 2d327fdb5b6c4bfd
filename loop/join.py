"""The outcome join: a decision log and a firm's export give the logged dataset the off-policy
estimators read (``docs/logged-data.md``).

One row per final decision (a client and a day): the client's features as of the decision day
from the one feature builder (:func:`loop.features.build_features`, the definitions the policy
decided on), the action the decision log returned, its propensity from the log, the outcomes the
export's events record within the attribution window, and the observable reward of those
outcomes (``reward=observable``: weights on what a firm sees).

**Attribution.** Each event of the export answers at most one decision (so an event is counted
once, however late it comes and however often the join is rerun):

1. the send it names (``events.send_id``) where known, if the event came within
   ``window_days`` of that send's day (days ``send day .. send day + window_days - 1``); a named
   send's event after that is *late*, and counts for nothing;
2. otherwise the latest send to that client on or before the event's day within the window;
3. otherwise the client's latest decision on or before the event's day within the window (an
   organic visit, conversion or closure after a no-send day).

An event answering a send that no logged decision made (a firm's own campaign) counts for no
decision. A decision is *final*, and gets a row, once its window has closed: its day +
``window_days`` - 1 is on or before ``as_of`` (the last day the export covers); later ones are
*pending* and left out until a later export. Nothing arriving is an outcome too: every outcome
False, and the reward of the bare send (the message cost) or 0 for a no-send.

**Review.** A decision held for review (:mod:`loop.review`) went out only if approved; a rejected
or expired one fell back to no send. Such an overridden decision is not the logging policy's
action, and the row is **left out**. An approved one stays, with propensity = the decision log's
propensity x the approval rate (approved / all held decisions' outcomes in the join): the
logging policy is the policy followed by the review, under which a held send goes out with the
policy's probability times the approval probability. With the overridden rows left out and the
approved ones reweighted this way, the target's value of every action is estimated as if every
held send were approved (SNIPS and DR normalise by the weights; IPS divides by the rows kept, so
it reads high by the share left out, which the summary reports). The rate is one number over the
join: exact when the reviewer approves held sends alike, an approximation when the reviewer
favours some. A held decision with no outcome is pending while its review window is open and
expired once it has passed.

**Latent outcomes.** The schema's ``calm_click`` and ``anxious_click`` (why a client clicked)
are not in any export; they are written False, and nothing computed here reads them.

Memory: O(rows of the decisions, sends and events in the decisions' span) plus the features of
one day at a time; nothing is sized by a day's value. The decision log is refused beyond
``max_rows`` rows (counted from its files' footers before any column is decoded).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from envs.config import GuardrailConfig, RewardConfig
from envs.features import FEATURE_NAMES
from envs.reward import observable_value
from evaluation.logs import ACTIONS, MAX_ROWS, write_logs
from evaluation.rollout import Progress
from loop.events import Export
from loop.features import build_features
from loop.review import WINDOW_DAYS, held, read_outcomes
from serve.decisions import ACTION_COLUMNS, read_decisions, scan_decisions
from simulate.world import OUTCOMES

WINDOW = 3
"""default attribution window (days): an event counts for a send of day d on days d..d + 2"""

EVENT_OUTCOMES: dict[str, str] = {
    "open": "opened",
    "click": "clicked",
    "conversion": "converted",
    "visit": "visited",
    "unsubscribe": "unsubscribed",
    "complaint": "complaint",
    "panic_trade": "harmful",
    "account_closure": "churned",
}
"""export event kind -> the logged outcome it sets"""

LATENT: tuple[str, ...] = ("calm_click", "anxious_click")
"""outcomes of the logged schema no export holds (written False)"""


class JoinError(ValueError):
    """Decisions and an export that cannot be joined; the message names the table, the column
    and the first row at fault."""


@dataclass
class JoinSummary:
    """What the join did (counts of decisions, sends and events)."""

    rows: int = 0
    """client-days written"""
    pending: int = 0
    """decisions whose attribution window had not closed by ``as_of`` (left out)"""
    overridden: int = 0
    """held decisions rejected or expired: no send, not the policy's action (left out)"""
    pending_review: int = 0
    """held decisions still in their review window (left out)"""
    approved: int = 0
    """held decisions approved (kept, propensity x ``approval_rate``)"""
    approval_rate: float | None = None
    """approved / held decisions with an outcome; None where nothing was held"""
    sends: int = 0
    """sends of the kept decisions"""
    events: dict[str, int] = field(default_factory=dict)
    """events counted for a kept decision, ``late`` (a named send's, after its window),
    ``other sends`` (answering a send no logged decision made) and ``unattributed`` (no send or
    decision in the window)"""
    as_of: int = 0
    """the last day the export covers (events after it do not exist yet)"""

    def lines(self) -> str:
        """The summary in words, one fact a line."""
        rate = "-" if self.approval_rate is None else f"{self.approval_rate:.3f}"
        events = ", ".join(f"{k} {v:,}" for k, v in self.events.items())
        return "\n".join(
            [
                f"{self.rows:,} client-days joined (as of day {self.as_of}), {self.sends:,} sends",
                f"left out: {self.pending:,} pending (window open), {self.overridden:,} "
                f"overridden by review, {self.pending_review:,} awaiting review",
                f"review: {self.approved:,} approved, approval rate {rate}",
                f"events: {events}",
            ]
        )


def _refuse(frame: pl.DataFrame, where: str, column: str, bad: pl.Expr, why) -> None:
    """Raise :class:`JoinError` naming the first row of ``frame`` where ``bad`` holds."""
    flags = frame.select(bad.fill_null(False).alias("bad"))["bad"]
    count = int(flags.sum())
    if count:
        row = int(flags.arg_true()[0])
        more = f" ({count:,} rows break this rule)" if count > 1 else ""
        raise JoinError(f"{where}: column {column!r}, row {row}: {why(frame, row)}{more}")


def _check_window(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise JoinError(f"{name} must be a whole number of days >= 1, got {value!r}")


def last_day(export: Export) -> int:
    """The last day an export covers: its latest send or event (days)."""
    days = [
        frame["day"].max()
        for frame in (export.sends, export.events)
        if frame.height and frame["day"].max() is not None
    ]
    if not days:
        raise JoinError("export: no sends and no events; there is nothing to join")
    return int(max(days))  # type: ignore[arg-type]


def _check_decisions(decisions: pl.DataFrame, export: Export, where: str) -> None:
    """Decisions of known clients, one a client-day, on or after onboarding."""
    _refuse(
        decisions,
        where,
        "day",
        pl.struct("client_id", "day").is_duplicated(),
        lambda f, r: (
            f"client {f['client_id'][r]} has two decisions on day {f['day'][r]}; "
            "one decision a client-day"
        ),
    )
    onboarding = export.clients.select(
        pl.col("client_id").cast(pl.Int64), pl.col("onboarding_day").alias("_onboarded")
    )
    work = decisions.join(onboarding, on="client_id", how="left", maintain_order="left")
    _refuse(
        work,
        where,
        "client_id",
        pl.col("_onboarded").is_null(),
        lambda f, r: f"client {f['client_id'][r]} is not in the export's clients table",
    )
    _refuse(
        work,
        where,
        "day",
        pl.col("day") < pl.col("_onboarded"),
        lambda f, r: (
            f"day {f['day'][r]} is before client {f['client_id'][r]}'s onboarding day "
            f"{f['_onboarded'][r]}"
        ),
    )


def _sends_of_decisions(decisions: pl.DataFrame, export: Export) -> pl.DataFrame:
    """The export's sends that carry a decision id of ``decisions``, checked against them:
    same client, not before the decision, the decision's own message, one send a decision."""
    sends = export.sends.filter(pl.col("decision_id").is_not_null()).join(
        decisions.select(
            "decision_id",
            pl.col("client_id").alias("_client"),
            pl.col("day").alias("_day"),
            *ACTION_COLUMNS,
            pl.col("slot").alias("_slot"),
            pl.col("tone").alias("_tone"),
            pl.col("channel").alias("_channel"),
            pl.col("content").alias("_content"),
        ),
        on="decision_id",
        how="inner",
    )
    where = "export/sends"
    _refuse(
        sends,
        where,
        "decision_id",
        pl.col("decision_id").is_duplicated(),
        lambda f, r: f"decision {f['decision_id'][r]} has two sends; a decision sends at most once",
    )
    _refuse(
        sends,
        where,
        "client_id",
        pl.col("client_id").cast(pl.Int64) != pl.col("_client"),
        lambda f, r: (
            f"send {f['send_id'][r]} went to client {f['client_id'][r]}, but decision "
            f"{f['decision_id'][r]} was for client {f['_client'][r]}"
        ),
    )
    _refuse(
        sends,
        where,
        "day",
        pl.col("day") < pl.col("_day"),
        lambda f, r: (
            f"send {f['send_id'][r]} on day {f['day'][r]} comes before its decision's "
            f"day {f['_day'][r]}"
        ),
    )
    _refuse(
        sends,
        where,
        "decision_id",
        pl.col("a_slot") == 0,
        lambda f, r: (
            f"decision {f['decision_id'][r]} was a no-send, yet send {f['send_id'][r]} carries it"
        ),
    )
    for column in ("slot", "tone", "channel", "content"):
        _refuse(
            sends,
            where,
            column,
            pl.col(column).cast(pl.String) != pl.col(f"_{column}"),
            lambda f, r, c=column: (
                f"send {f['send_id'][r]} has {c} {f[c][r]!r} but its decision "
                f"{f['decision_id'][r]} chose {f[f'_{c}'][r]!r}; a send is its decision's message"
            ),
        )
    return sends.select("send_id", "decision_id", pl.col("day").alias("send_day"))


def attribute_events(
    export: Export, decisions: pl.DataFrame, window_days: int = WINDOW
) -> pl.DataFrame:
    """Each export event in the decisions' span with the decision it answers (rules 1-3 of the
    module's docstring): columns ``client_id``, ``day``, ``kind``, ``decision_id`` (null where it
    answers none) and ``why`` (``send``, ``latest send``, ``decision``, ``late``, ``other send``,
    ``unattributed``).

    Args:
        export: a validated export.
        decisions: a decision log (:func:`serve.decisions.read_decisions`).
        window_days: the attribution window (days, >= 1).
    """
    _check_window("window_days", window_days)
    first = decisions["day"].min()
    if first is None:
        return pl.DataFrame(
            schema={
                "client_id": pl.Int64(),
                "day": pl.Int32(),
                "kind": pl.String(),
                "decision_id": pl.String(),
                "why": pl.String(),
            }
        )
    last = int(decisions["day"].max()) + window_days - 1  # type: ignore[arg-type]
    sends = (
        export.sends.lazy()
        .filter(pl.col("day").is_between(int(first) - window_days + 1, last))  # type: ignore[arg-type]
        .select(
            "send_id",
            pl.col("client_id").cast(pl.Int64),
            pl.col("day").alias("send_day"),
            "decision_id",
        )
    )
    events = (
        export.events.lazy()
        .filter(pl.col("day").is_between(int(first), last))  # type: ignore[arg-type]
        .select(
            pl.col("client_id").cast(pl.Int64),
            "day",
            pl.col("kind").cast(pl.String),
            "send_id",
        )
        .with_row_index("_event")
    )
    within = pl.col("day") - pl.col("send_day") < window_days
    named = (
        events.filter(pl.col("send_id").is_not_null())
        .join(sends.drop("client_id"), on="send_id", how="left")
        .select(
            "_event",
            "client_id",
            "day",
            "kind",
            pl.when(within).then(pl.col("decision_id")).alias("decision_id"),
            pl.when(~within)
            .then(pl.lit("late"))
            .when(pl.col("decision_id").is_null())
            .then(pl.lit("other send"))
            .otherwise(pl.lit("send"))
            .alias("why"),
        )
    )
    unnamed = events.filter(pl.col("send_id").is_null()).drop("send_id").sort("day")
    latest_send = unnamed.join_asof(
        sends.sort("send_day").select("client_id", "send_day", "decision_id"),
        left_on="day",
        right_on="send_day",
        by="client_id",
        strategy="backward",
        tolerance=window_days - 1,
        check_sortedness=False,  # sorted by day; within each client too
    )
    by_send = latest_send.filter(pl.col("send_day").is_not_null()).select(
        "_event",
        "client_id",
        "day",
        "kind",
        "decision_id",
        pl.when(pl.col("decision_id").is_null())
        .then(pl.lit("other send"))
        .otherwise(pl.lit("latest send"))
        .alias("why"),
    )
    no_send = latest_send.filter(pl.col("send_day").is_null()).drop("send_day", "decision_id")
    by_decision = no_send.join_asof(
        decisions.lazy()
        .select("client_id", pl.col("day").alias("decision_day"), "decision_id")
        .sort("decision_day"),
        left_on="day",
        right_on="decision_day",
        by="client_id",
        strategy="backward",
        tolerance=window_days - 1,
        check_sortedness=False,  # sorted by day; within each client too
    ).select(
        "_event",
        "client_id",
        "day",
        "kind",
        "decision_id",
        pl.when(pl.col("decision_id").is_null())
        .then(pl.lit("unattributed"))
        .otherwise(pl.lit("decision"))
        .alias("why"),
    )
    return (
        pl.concat([named, by_send, by_decision])
        .sort("_event")
        .drop("_event")
        .collect()
        .with_columns(pl.col("day").cast(pl.Int32))
    )


def _final_decisions(
    decisions: pl.DataFrame,
    outcomes: pl.DataFrame,
    as_of: int,
    window_days: int,
    review_window_days: int,
    summary: JoinSummary,
) -> pl.DataFrame:
    """The decisions that get a row, with ``review`` (the held ones' outcome, else null) and
    ``pscore``; counts what is left out in ``summary``."""
    closed = pl.col("day") + (window_days - 1) <= as_of
    summary.pending = int(decisions.select((~closed).sum()).item())
    decisions = decisions.filter(closed)
    held_ids = held(decisions).select("decision_id", pl.lit(True).alias("_held"))
    work = (
        decisions.join(held_ids, on="decision_id", how="left", maintain_order="left")
        .join(
            outcomes.select("decision_id", pl.col("outcome").alias("_outcome")),
            on="decision_id",
            how="left",
            maintain_order="left",
        )
        .with_columns(
            review=pl.when(pl.col("_held").is_null())
            .then(None)
            .when(pl.col("_outcome").is_not_null())
            .then(pl.col("_outcome"))
            .when(pl.col("day") + review_window_days <= as_of)
            .then(pl.lit("expired"))
            .otherwise(pl.lit("pending"))
        )
    )
    counts = dict(work.group_by("review").len().iter_rows())
    summary.approved = counts.get("approved", 0)
    summary.overridden = counts.get("rejected", 0) + counts.get("expired", 0)
    summary.pending_review = counts.get("pending", 0)
    decided = summary.approved + summary.overridden
    rate = summary.approved / decided if decided else None
    summary.approval_rate = rate
    return work.filter(pl.col("review").is_null() | (pl.col("review") == "approved")).with_columns(
        pscore=pl.when(pl.col("review") == "approved")
        .then(pl.col("propensity") * (rate or 1.0))
        .otherwise(pl.col("propensity"))
    )


def _features(export: Export, decisions: pl.DataFrame, where: str, progress: bool) -> pl.DataFrame:
    """``decisions`` with each client's features as of its decision day, one day at a time."""
    days = sorted(decisions["day"].unique().to_list())
    parts = []
    with Progress(len(days), "building features", "day", enabled=progress) as bar:
        for day in days:
            of_day = decisions.filter(pl.col("day") == day)
            features = build_features(export, day).with_columns(pl.col("client_id").cast(pl.Int64))
            joined = of_day.join(features, on="client_id", how="left", maintain_order="left")
            _refuse(
                joined,
                f"{where} (day {day})",
                "client_id",
                pl.col(FEATURE_NAMES[0]).is_null(),
                lambda f, r: (
                    f"client {f['client_id'][r]} has no features on day {f['day'][r]} "
                    "(the export records its account closed before that day)"
                ),
            )
            parts.append(joined)
            bar.update()
    return pl.concat(parts)


def join_outcomes(
    export: Export,
    decisions: pl.DataFrame,
    outcomes: pl.DataFrame | None = None,
    window_days: int = WINDOW,
    review_window_days: int = WINDOW_DAYS,
    reward: RewardConfig | None = None,
    as_of: int | None = None,
    seed: int | None = None,
    where: str = "decisions",
    progress: bool = False,
) -> tuple[pl.DataFrame, JoinSummary]:
    """The logged dataset of ``decisions`` and ``export`` (``docs/logged-data.md``), and what the
    join did.

    Args:
        export: a validated export (:func:`loop.events.read_export`).
        decisions: a checked decision log (:func:`serve.decisions.read_decisions`).
        outcomes: the review-outcomes table (:func:`loop.review.read_outcomes`); None: no review
            has been recorded.
        window_days: the attribution window (days).
        review_window_days: the review window (days): a held decision with no outcome is
            expired once its day + this is on or before ``as_of``.
        reward: an observable reward (default ``conf/reward/observable.yaml``'s weights).
        as_of: the last day the export covers (default :func:`last_day`).
        seed: a simulated export's simulator seed, written as the ``seed`` column (so
            ``evaluate.py mode=estimate`` can roll the truth out); None for a firm's export.
        where: what to call the decisions in an error.
        progress: report the per-day feature build on stderr.

    Rows are sorted by day, then client; extra columns: ``decision_id``, ``decision_propensity``
    (the log's), ``mode`` (the decision log's: ``serve``, or ``shadow`` where the firm's own
    action was returned while the policy watched), ``review`` (approved, or null where nothing was held) and ``seed`` if given.
    """
    _check_window("window_days", window_days)
    _check_window("review_window_days", review_window_days)
    reward = reward if reward is not None else observable_reward()
    if not reward.observable:
        raise JoinError(
            f"reward {reward.name!r} weighs outcomes no export holds (why a client clicked); "
            "use an observable reward (reward_preset=observable with join.py)"
        )
    outcomes = outcomes if outcomes is not None else read_outcomes(None)
    _check_decisions(decisions, export, where)
    as_of = last_day(export) if as_of is None else int(as_of)
    summary = JoinSummary(as_of=as_of)
    _refuse(
        decisions.join(outcomes, on="decision_id", how="right"),
        "review outcomes",
        "decision_id",
        pl.col("client_id").is_null(),
        lambda f, r: f"decision {f['decision_id'][r]} is not in the decision log",
    )
    sends = _sends_of_decisions(decisions, export)
    final = _final_decisions(decisions, outcomes, as_of, window_days, review_window_days, summary)
    _refuse(
        sends.join(held(decisions).select("decision_id"), on="decision_id", how="semi")
        .join(outcomes, on="decision_id", how="left")
        .with_columns(pl.col("outcome").fill_null("no outcome")),
        "export/sends",
        "decision_id",
        pl.col("outcome") != "approved",
        lambda f, r: (
            f"send {f['send_id'][r]} carries decision {f['decision_id'][r]}, which was "
            f"held for review and not approved ({f['outcome'][r]}); only an approved held decision "
            "is sent"
        ),
    )
    events = attribute_events(export, decisions, window_days)
    why = dict(events.group_by("why").len().iter_rows())
    kept = events.filter(pl.col("decision_id").is_in(final["decision_id"].implode()))
    summary.events = {
        "counted": kept.height,
        "late": why.get("late", 0),
        "other sends": why.get("other send", 0),
        "unattributed": why.get("unattributed", 0),
        "for decisions left out": events.filter(pl.col("decision_id").is_not_null()).height
        - kept.height,
    }
    answered = kept.group_by("decision_id").agg(
        (pl.col("kind") == kind).any().alias(outcome) for kind, outcome in EVENT_OUTCOMES.items()
    )
    rows = (
        final.join(
            sends.select("decision_id", pl.lit(True).alias("sent")), on="decision_id", how="left"
        )
        .join(answered, on="decision_id", how="left")
        .with_columns(pl.col(o).fill_null(False) for o in ("sent", *EVENT_OUTCOMES.values()))
        .with_columns(pl.lit(False).alias(o) for o in LATENT)
    )
    summary.sends = int(rows["sent"].sum())
    rows = _features(export, rows, where, progress)
    value = observable_value(
        {o: rows[o].to_numpy() for o in OUTCOMES} | {"violation": np.zeros(rows.height)}, reward
    )
    frame = rows.select(
        "client_id",
        pl.col("day").cast(pl.Int64),
        *FEATURE_NAMES,
        *(pl.col(a).cast(pl.Int64).alias(n) for a, n in zip(ACTION_COLUMNS, ACTIONS, strict=True)),
        "pscore",
        *OUTCOMES,
        pl.Series("reward", value, dtype=pl.Float64),
        "decision_id",
        pl.col("propensity").alias("decision_propensity"),
        "mode",
        "review",
    ).sort("day", "client_id")
    if seed is not None:
        frame = frame.with_columns(pl.lit(int(seed), pl.Int64).alias("seed"))
    summary.rows = frame.height
    return frame, summary


def observable_reward(name: str = "observable") -> RewardConfig:
    """The ``conf/reward/<name>.yaml`` preset (default the observable reward)."""
    from envs.config import load_setup

    return load_setup(reward=name).reward


def read_decision_log(path: str | Path, max_rows: int = MAX_ROWS) -> pl.DataFrame:
    """The decision log at ``path`` (a folder of files or one file), refused beyond ``max_rows``
    rows from its files' footers before any column is decoded, then read and checked."""
    if not Path(path).exists():
        raise JoinError(f"{path}: no decision log there (a folder of decision-log files)")
    rows = int(scan_decisions(path).select(pl.len()).collect().item())
    if rows > max_rows:
        raise JoinError(
            f"{path}: {rows:,} decisions, more than the {max_rows:,} a logged dataset may hold "
            "(evaluation.logs.MAX_ROWS); join a shorter span of days"
        )
    return read_decisions(path)


def write_joined(
    frame: pl.DataFrame, path: str | Path, guardrails: GuardrailConfig | None = None
) -> Path:
    """Validate ``frame`` as a logged dataset (:func:`evaluation.logs.validate`, under
    ``guardrails``) and write it to ``path`` atomically: nothing is half-written."""
    if frame.height == 0:
        raise JoinError(
            f"{path}: no final decisions to write (every decision is pending or left out by review)"
        )
    return write_logs(frame, path, guardrails)
