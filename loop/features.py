"""One feature builder: from a firm's event export to the observation of every client as of a day.

The definitions are the env's (``envs.features.DEFINITIONS``, its windows and caps, the
engagement averages of :mod:`simulate.world`, the consent gating of ``envs.consent.MIN_TIER``),
so what a policy sees in training, in a logged dataset and in serving is one computation:
``tests/test_loop_skew.py`` holds the builder to the env's observations bit for bit (float32)
on the simulator's own export.

Everything but the engagement averages is one lazy polars query over the export's rows before
the decision day. The averages are a recurrence rounded to float32 at every message (as the
firm's log keeps them), so they run in numpy over the messages' rank within each client and
channel (slot, tone), vectorised over clients: one pass per rank, at most one per day of
history. They are computed only for clients whose tier shows them (tier 3).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from envs.consent import MIN_TIER
from envs.features import (
    FEATURE_NAMES,
    I_ENGAGEMENT,
    LONG_WINDOW_DAYS,
    OBS_DIM,
    RECENCY_CAP_DAYS,
    SHORT_WINDOW_DAYS,
    STRESS_CAP,
    URGENT,
)
from loop.events import N_TIERS, Export, ExportError
from simulate.labels import CHANNELS, CONTENTS, N_SLOTS, N_TONES, SEGMENTS, SLOT_KEYS, TONES
from simulate.world import (
    E_CLICK_CHANNEL,
    E_CLICK_TONE,
    E_OPEN_CHANNEL,
    E_OPEN_SLOT,
    ENGAGEMENT_EMA,
    ENGAGEMENT_PRIOR_CLICK,
    ENGAGEMENT_PRIOR_OPEN,
    N_ENGAGEMENT,
)

ENGAGEMENT_TIER = int(MIN_TIER[I_ENGAGEMENT])
"""consent tier from which the engagement averages are visible"""
_EMA_FAMILIES = (
    # (first engagement column, the send's component that picks the column, the outcome)
    (E_OPEN_CHANNEL, "channel", "opened"),
    (E_CLICK_CHANNEL, "channel", "clicked"),
    (E_OPEN_SLOT, "slot", "opened"),
    (E_CLICK_TONE, "tone", "clicked"),
)
_PRIOR = np.empty(N_ENGAGEMENT, dtype=np.float32)
_PRIOR[:E_OPEN_SLOT] = np.repeat([ENGAGEMENT_PRIOR_OPEN, ENGAGEMENT_PRIOR_CLICK], len(CHANNELS))
_PRIOR[E_OPEN_SLOT:E_CLICK_TONE] = ENGAGEMENT_PRIOR_OPEN
_PRIOR[E_CLICK_TONE:] = ENGAGEMENT_PRIOR_CLICK
assert E_CLICK_TONE + N_TONES == N_ENGAGEMENT and E_OPEN_SLOT + N_SLOTS == E_CLICK_TONE


def _recency(last: pl.Expr, day: int) -> pl.Expr:
    """Days from ``last`` to ``day``, capped (none yet: the cap)."""
    return pl.min_horizontal(pl.lit(day) - last, pl.lit(RECENCY_CAP_DAYS)).fill_null(
        RECENCY_CAP_DAYS
    )


def _tiers(export: Export, day: int) -> pl.LazyFrame:
    """client_id, tier on ``day``: the last consent change on or before it, else onboarding's."""
    changes = (
        export.consents.lazy()
        .filter(pl.col("day") <= day)
        .sort("day")
        .group_by("client_id")
        .agg(pl.col("consent_tier").last().alias("_changed"))
    )
    return (
        export.clients.lazy()
        .join(changes, on="client_id", how="left")
        .select("client_id", pl.coalesce("_changed", "consent_tier").alias("tier"))
    )


def _send_aggregates(export: Export, day: int) -> pl.LazyFrame:
    """Per client: counts and last days of the messages before ``day``."""
    sends = export.sends.lazy().filter(pl.col("day") < day)
    short = pl.col("day") >= day - SHORT_WINDOW_DAYS
    aggs = [
        pl.col("day").max().alias("_last_send"),
        *((short & (pl.col("channel") == c)).sum().alias(f"sent_7d_{c}") for c in CHANNELS),
        (short & (pl.col("tone") == TONES[URGENT])).sum().alias("urgent_7d"),
        (pl.col("day") >= day - LONG_WINDOW_DAYS).sum().alias("sent_30d"),
    ]
    for column, labels, prefix in (
        ("channel", CHANNELS, "days_since_channel"),
        ("tone", TONES, "days_since_tone"),
        ("content", CONTENTS, "days_since_content"),
    ):
        aggs += [
            pl.col("day").filter(pl.col(column) == v).max().alias(f"_{prefix}_{v}") for v in labels
        ]
    return sends.group_by("client_id").agg(aggs)


def _event_aggregates(export: Export, day: int) -> pl.LazyFrame:
    """Per client: opt-outs, the last visit and the days with a visit in the long window."""
    events = export.events.lazy().filter(pl.col("day") < day)
    visit = pl.col("kind") == "visit"
    unsubscribe = pl.col("kind") == "unsubscribe"
    return events.group_by("client_id").agg(
        *((unsubscribe & (pl.col("channel") == c)).any().alias(f"opted_out_{c}") for c in CHANNELS),
        pl.col("day").filter(visit).max().alias("_last_visit"),
        pl.col("day")
        .filter(visit & (pl.col("day") >= day - LONG_WINDOW_DAYS))
        .n_unique()
        .alias("visits_30d"),
        pl.col("day").filter(pl.col("kind") == "account_closure").min().alias("_closed"),
    )


def _one_hot(column: str, labels: tuple[str, ...], prefix: str) -> list[pl.Expr]:
    return [(pl.col(column) == v).alias(f"{prefix}_{v}") for v in labels]


def _feature_exprs(day: int, stress: float) -> list[pl.Expr]:
    """Every feature but the engagement averages (zero here), in vector order, before gating."""
    weekday = day % 7
    exprs: dict[str, pl.Expr] = {}
    for k, name in enumerate(FEATURE_NAMES[:7]):
        exprs[name] = pl.lit(k == weekday)
    for k in range(N_TIERS):
        exprs[f"consent_tier_{k}"] = pl.col("tier") == k
    for c in CHANNELS:
        exprs[f"opted_out_{c}"] = pl.col(f"opted_out_{c}").fill_null(False)
        exprs[f"sent_7d_{c}"] = pl.col(f"sent_7d_{c}").fill_null(0)
    exprs["days_since_last_send"] = _recency(pl.col("_last_send"), day)
    exprs["days_since_last_visit"] = _recency(pl.col("_last_visit"), day)
    exprs["visits_30d"] = pl.col("visits_30d").fill_null(0)
    exprs.update((e.meta.output_name(), e) for e in _one_hot("goal", SEGMENTS, "goal"))
    exprs["declared_risk"] = pl.col("declared_risk")
    exprs["market_stress"] = pl.lit(min(stress, STRESS_CAP))
    for prefix, labels in (
        ("days_since_channel", CHANNELS),
        ("days_since_tone", TONES),
        ("days_since_content", CONTENTS),
    ):
        for v in labels:
            exprs[f"{prefix}_{v}"] = _recency(pl.col(f"_{prefix}_{v}"), day)
    exprs["urgent_7d"] = pl.col("urgent_7d").fill_null(0)
    exprs["sent_30d"] = pl.col("sent_30d").fill_null(0)
    exprs.update(
        (e.meta.output_name(), e) for e in _one_hot("preferred_slot", SLOT_KEYS, "declared_slot")
    )
    out = []
    for i, name in enumerate(FEATURE_NAMES):
        value = exprs.get(name, pl.lit(0.0))
        # a feature the tier hides reads 0 (envs.consent.gate)
        shown = pl.when(pl.col("tier") >= int(MIN_TIER[i])).then(value.cast(pl.Float32))
        out.append(shown.otherwise(pl.lit(0.0, pl.Float32)).alias(name))
    return out


def _stress(export: Export, day: int) -> float:
    found = export.market.filter(pl.col("day") == day)["stress"]
    if found.len() == 0:
        raise ExportError(f"market: no stress for day {day}; the features of a day need its stress")
    return float(found[0])


def _engagement(export: Export, day: int, client_id: np.ndarray) -> np.ndarray:
    """(N, N_ENGAGEMENT) float32 engagement averages as of ``day`` for clients ``client_id``
    (sorted ascending): the priors, then one float32 update per message before ``day``."""
    n = len(client_id)
    ema = np.tile(_PRIOR, n)
    if n == 0:
        return ema.reshape(0, N_ENGAGEMENT)
    answered = (
        export.events.lazy()
        .filter(pl.col("day") < day, pl.col("kind").is_in(["open", "click"]))
        .group_by("send_id")
        .agg(
            (pl.col("kind") == "open").any().alias("opened"),
            (pl.col("kind") == "click").any().alias("clicked"),
        )
    )
    sends = (
        export.sends.lazy()
        .filter(pl.col("day") < day, pl.col("client_id").is_in(pl.Series(client_id).implode()))
        .join(answered, on="send_id", how="left")
        .sort("client_id", "day")
        .select(
            "client_id",
            *(pl.col(c).to_physical().cast(pl.Int64) for c in ("slot", "tone", "channel")),
            pl.col("opened").fill_null(False),
            pl.col("clicked").fill_null(False),
        )
        .collect()
    )
    row = np.searchsorted(client_id, sends["client_id"].to_numpy())
    rate = np.float32(ENGAGEMENT_EMA)
    for first, component, outcome in _EMA_FAMILIES:
        key = row * N_ENGAGEMENT + first + sends[component].to_numpy()
        values = sends[outcome].to_numpy().astype(np.float32)
        order = np.argsort(key, kind="stable")  # within a key, messages stay in day order
        key, values = key[order], values[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        rank = np.arange(len(key)) - np.repeat(starts, np.diff(np.r_[starts, len(key)]))
        by_rank = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[by_rank], np.arange(rank.max(initial=-1) + 2))
        for k in range(len(bounds) - 1):
            at = by_rank[bounds[k] : bounds[k + 1]]
            cell = key[at]
            current = ema[cell]
            ema[cell] = current + rate * (values[at] - current)
    return ema.reshape(n, N_ENGAGEMENT)


def build_features(export: Export, day: int, include_closed: bool = False) -> pl.DataFrame:
    """The observation of every client as of calendar ``day`` (before that day's decision).

    Args:
        export: a validated export (:func:`loop.events.read_export` or
            :func:`loop.events.validate_export`).
        day: the decision day; only sends and events of earlier days count, the consent tier is
            the one in force on ``day`` and the market stress is ``day``'s.
        include_closed: keep clients who closed their account before ``day`` (a rollout
            without autoreset keeps observing them); by default they get no row.

    Returns a frame of ``client_id`` and every name of ``envs.features.FEATURE_NAMES`` (float32,
    consent-gated), one row per client onboarded on or before ``day``, sorted by ``client_id``.
    """
    stress = _stress(export, day)
    clients = (
        export.clients.lazy()
        .filter(pl.col("onboarding_day") <= day)
        .join(_tiers(export, day), on="client_id", how="left")
        .join(_send_aggregates(export, day), on="client_id", how="left")
        .join(_event_aggregates(export, day), on="client_id", how="left")
    )
    if not include_closed:
        clients = clients.filter(pl.col("_closed").is_null())
    frame = (
        clients.select("client_id", "tier", *_feature_exprs(day, stress))
        .sort("client_id")
        .collect()
    )
    shown = frame.filter(pl.col("tier") >= ENGAGEMENT_TIER)["client_id"].to_numpy()
    frame = frame.drop("tier")
    if len(shown):
        names = list(FEATURE_NAMES[I_ENGAGEMENT : I_ENGAGEMENT + N_ENGAGEMENT])
        values = pl.DataFrame(_engagement(export, day, shown), schema=names).with_columns(
            client_id=pl.Series(shown)
        )
        frame = frame.update(values, on="client_id", how="left")
    return frame


def feature_matrix(frame: pl.DataFrame) -> np.ndarray:
    """(N, OBS_DIM) float32 observations of a :func:`build_features` frame, in its row order."""
    matrix = frame.select(FEATURE_NAMES).to_numpy().astype(np.float32, copy=False)
    assert matrix.shape[1] == OBS_DIM
    return matrix
