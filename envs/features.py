"""The observation features: what a firm can see of a client, their names and bounds.

Never latent state (fatigue, trust, anxiety, novelty) and never protected attributes.
:func:`raw_features` fills every feature; ``envs/consent.py`` then zeroes what the client's
consent tier does not allow (the tier itself stays visible so a policy knows why).
"""

from __future__ import annotations

import numpy as np

from simulate.labels import (
    CHANNELS,
    CONTENTS,
    N_CHANNELS,
    N_CONTENTS,
    N_SLOTS,
    N_TONES,
    SEGMENTS,
    SLOT_KEYS,
    TONES,
)
from simulate.world import HISTORY_DAYS, N_ENGAGEMENT, VISIT_WINDOW, World

URGENT = TONES.index("urgent")

RECENCY_CAP_DAYS = 30
"""``days_since_last_send`` and ``days_since_last_visit`` are capped here (a never-messaged
client reads 30)"""
STRESS_CAP = 10.0
"""``market_stress`` reads the day's stress, capped here"""
SHORT_WINDOW_DAYS = HISTORY_DAYS
"""``sent_7d_*`` and ``urgent_7d`` count the messages of the days d - 7 .. d - 1 (decision day d)"""
LONG_WINDOW_DAYS = VISIT_WINDOW
"""``sent_30d`` and ``visits_30d`` count the days d - 30 .. d - 1 with a message / a visit"""

FEATURE_NAMES: tuple[str, ...] = (
    *(f"weekday_{d}" for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")),
    *(f"consent_tier_{k}" for k in range(4)),
    *(f"opted_out_{c}" for c in CHANNELS),
    *(f"sent_7d_{c}" for c in CHANNELS),
    "days_since_last_send",
    "days_since_last_visit",
    "visits_30d",
    *(f"goal_{s}" for s in SEGMENTS),
    "declared_risk",
    "market_stress",
    *(f"ema_open_{c}" for c in CHANNELS),
    *(f"ema_click_{c}" for c in CHANNELS),
    *(f"ema_open_slot_{s}" for s in SLOT_KEYS),
    *(f"ema_click_tone_{t}" for t in TONES),
    *(f"days_since_channel_{c}" for c in CHANNELS),
    *(f"days_since_tone_{t}" for t in TONES),
    *(f"days_since_content_{c}" for c in CONTENTS),
    "urgent_7d",
    "sent_30d",
    *(f"declared_slot_{s}" for s in SLOT_KEYS),
)
"""observation features, in vector order (part of the export contract)"""
OBS_DIM = len(FEATURE_NAMES)

IX = {name: i for i, name in enumerate(FEATURE_NAMES)}
I_WEEKDAY = IX["weekday_mon"]
I_TIER = IX["consent_tier_0"]
I_OPTED_OUT = IX["opted_out_email"]
I_SENT_7D = IX["sent_7d_email"]
I_RECENCY = IX["days_since_last_send"]
I_VISIT_RECENCY = IX["days_since_last_visit"]
I_VISITS = IX["visits_30d"]
I_GOAL = IX[f"goal_{SEGMENTS[0]}"]
I_RISK = IX["declared_risk"]
I_STRESS = IX["market_stress"]
I_ENGAGEMENT = IX[f"ema_open_{CHANNELS[0]}"]
I_SINCE_CHANNEL = IX[f"days_since_channel_{CHANNELS[0]}"]
I_SINCE_TONE = IX[f"days_since_tone_{TONES[0]}"]
I_SINCE_CONTENT = IX[f"days_since_content_{CONTENTS[0]}"]
I_URGENT_7D = IX["urgent_7d"]
I_SENT_30D = IX["sent_30d"]
I_DECLARED_SLOT = IX[f"declared_slot_{SLOT_KEYS[0]}"]
N_SEND_LOG = I_SENT_30D + 1 - I_SINCE_CHANNEL
"""the send-log features: days since each channel, tone and content was last sent (capped at
30), urgent messages in 7 days, messages in 30 days"""

OBS_HIGH = np.ones(OBS_DIM, dtype=np.float32)
"""upper bound of each feature (lower bounds are 0)"""
OBS_HIGH[I_SENT_7D : I_SENT_7D + N_CHANNELS] = 7.0
OBS_HIGH[I_RECENCY] = RECENCY_CAP_DAYS
OBS_HIGH[I_VISIT_RECENCY] = RECENCY_CAP_DAYS
OBS_HIGH[I_VISITS] = VISIT_WINDOW
OBS_HIGH[I_STRESS] = STRESS_CAP
OBS_HIGH[I_SINCE_CHANNEL:I_URGENT_7D] = RECENCY_CAP_DAYS
OBS_HIGH[I_URGENT_7D] = HISTORY_DAYS
OBS_HIGH[I_SENT_30D] = VISIT_WINDOW
assert I_ENGAGEMENT + N_ENGAGEMENT == I_SINCE_CHANNEL
assert I_DECLARED_SLOT + N_SLOTS == OBS_DIM
assert N_SEND_LOG == N_CHANNELS + N_TONES + N_CONTENTS + 2

DEFINITIONS: tuple[tuple[str, str], ...] = (
    ("weekday_*", "1 for the weekday of the decision day d (d % 7, 0 is a Monday)"),
    ("consent_tier_*", "1 for the client's consent tier on day d"),
    ("opted_out_*", "1 once the client unsubscribed from the channel (any day before d)"),
    ("sent_7d_*", "messages delivered on the channel on days d - 7 .. d - 1"),
    ("days_since_last_send", "d minus the day of the last message, capped at 30 (none: 30)"),
    ("days_since_last_visit", "d minus the day of the last visit, capped at 30 (none: 30)"),
    ("visits_30d", "days among d - 30 .. d - 1 with a visit"),
    ("goal_*", "1 for the declared goal segment"),
    ("declared_risk", "the declared risk tolerance, 0..1"),
    ("market_stress", "the market stress of day d, capped at 10"),
    (
        "ema_*",
        "average of opens (clicks) of the messages before d on that channel (slot, tone): starts "
        "at 0.3 for opens and 0.05 for clicks, and each message moves it by 0.2 x (outcome - "
        "average), in float32, in the order of the messages",
    ),
    ("days_since_channel_*", "d minus the day of the last message on the channel, capped at 30"),
    ("days_since_tone_*", "d minus the day of the last message in the tone, capped at 30"),
    ("days_since_content_*", "d minus the day of the last message of the content, capped at 30"),
    ("urgent_7d", "urgent messages delivered on days d - 7 .. d - 1"),
    ("sent_30d", "days among d - 30 .. d - 1 with a message delivered"),
    ("declared_slot_*", "1 for the declared preferred contact time"),
)
"""each feature group and its definition from a firm's records as of decision day d (before
acting); :func:`raw_features` computes them from the world's records and
``loop.features`` from an event export, and the two agree bit for bit (``tests/test_loop_skew.py``)"""


def channel_counts(world: World) -> np.ndarray:
    """(N, 3) messages delivered per channel in the 7 days before the next step."""
    return counts_in(world.channel_log)


def counts_in(log: np.ndarray) -> np.ndarray:
    """(N, 3) messages per channel in (N, 7) channel logs."""
    return np.stack([(log == c + 1).sum(axis=1) for c in range(N_CHANNELS)], axis=1)


def raw_features(
    world: World,
    day: int,
    stress: float,
    out: np.ndarray | None = None,
    counts: np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """(N, OBS_DIM) float32 features of every client on calendar ``day`` (before acting),
    *before* consent gating: use :func:`envs.consent.observe` for what a policy may see.

    Args:
        world: the batched world.
        day: calendar day of the decision.
        stress: today's market stress (from the scenario).
        out: optional preallocated array to fill.
        counts: :func:`channel_counts` of ``world`` when the caller has them (of ``rows``
            when given).
        rows: only these clients, in this order: (len(rows), OBS_DIM), each row what the whole
            batch's would be (every feature is a function of the client's own records).
    """
    every = rows is None
    at_rows = slice(None) if every else rows
    n = world.n if every else len(rows)
    obs = np.zeros((n, OBS_DIM), dtype=np.float32) if out is None else out
    if out is not None:
        obs.fill(0.0)
    traits = world.traits
    index = world.rows if every else np.arange(n)
    if counts is None:
        counts = counts_in(world.channel_log[at_rows])
    obs[:, I_WEEKDAY + day % 7] = 1.0
    obs[index, I_TIER + traits.consent_tier[at_rows]] = 1.0
    obs[:, I_OPTED_OUT : I_OPTED_OUT + N_CHANNELS] = world.opted_out[at_rows]
    obs[:, I_SENT_7D : I_SENT_7D + N_CHANNELS] = counts
    obs[:, I_RECENCY] = np.minimum(day - world.last_send_day[at_rows], RECENCY_CAP_DAYS)
    obs[:, I_VISIT_RECENCY] = np.minimum(day - world.last_visit_day[at_rows], RECENCY_CAP_DAYS)
    obs[:, I_VISITS] = np.bitwise_count(world.visit_log[at_rows])
    obs[index, I_GOAL + traits.segment[at_rows]] = 1.0
    obs[:, I_RISK] = traits.declared_risk[at_rows]
    obs[:, I_STRESS] = min(stress, STRESS_CAP)
    obs[:, I_ENGAGEMENT:I_SINCE_CHANNEL] = world.engagement[at_rows]
    at = I_SINCE_CHANNEL
    for last in (world.last_channel_day, world.last_tone_day, world.last_content_day):
        obs[:, at : at + last.shape[1]] = np.minimum(day - last[at_rows], RECENCY_CAP_DAYS)
        at += last.shape[1]
    obs[:, I_URGENT_7D] = (world.tone_log[at_rows] == URGENT + 1).sum(axis=1)
    obs[:, I_SENT_30D] = np.bitwise_count(world.send_log[at_rows])
    obs[index, I_DECLARED_SLOT + traits.declared_slot[at_rows]] = 1.0
    return obs
