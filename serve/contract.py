"""The export contract as the runtime knows it (numpy-free constants; the runtime cannot import
the training stack). ``tests/test_serve_contract.py`` holds every name here equal to the
training side (``envs/features.py``, ``envs/consent.py``, ``simulate/labels.py``,
``envs/config.py``), so the two cannot drift apart unnoticed.

A manifest is checked against this on load: the feature list, bounds and consent tiers must be
these exactly, the action layout too, and the guardrail rules must lie in the allowed ranges and
name every channel and content (a dropped key is not read as "no limit").
"""

from __future__ import annotations

from typing import Any

CHANNELS = ("email", "push", "sms")
SLOT_KEYS = ("early", "morning", "midday", "afternoon", "evening", "late")
TONES = ("informative", "educational", "reassuring", "opportunity", "urgent")
CONTENTS = ("portfolio_summary", "education", "product_offer", "market_update")
SEGMENTS = ("retirement", "growth_investor", "active_trader", "saver_debt")
N_TIERS = 4
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

ACTION_LABELS: dict[str, list[str]] = {
    "slot": [
        "no_send",
        "early 06-08",
        "morning 08-11",
        "midday 11-14",
        "afternoon 14-17",
        "evening 17-20",
        "late 20-23",
    ],
    "tone": list(TONES),
    "channel": list(CHANNELS),
    "content": list(CONTENTS),
}
NVEC = [len(v) for v in ACTION_LABELS.values()]

# (name, upper bound, lowest consent tier that may see it, kind); every lower bound is 0.
# kind: "flag" 0 or 1; "count" a whole number; "value" any number in range.
_FEATURES: list[tuple[str, float, int, str]] = [
    *((f"weekday_{d}", 1.0, 0, "flag") for d in WEEKDAYS),
    *((f"consent_tier_{k}", 1.0, 0, "flag") for k in range(N_TIERS)),
    *((f"opted_out_{c}", 1.0, 0, "flag") for c in CHANNELS),
    *((f"sent_7d_{c}", 7.0, 0, "count") for c in CHANNELS),
    ("days_since_last_send", 30.0, 0, "value"),
    ("days_since_last_visit", 30.0, 1, "value"),
    ("visits_30d", 30.0, 1, "count"),
    *((f"goal_{s}", 1.0, 1, "flag") for s in SEGMENTS),
    ("declared_risk", 1.0, 1, "value"),
    ("market_stress", 10.0, 2, "value"),
    *((f"ema_open_{c}", 1.0, 3, "value") for c in CHANNELS),
    *((f"ema_click_{c}", 1.0, 3, "value") for c in CHANNELS),
    *((f"ema_open_slot_{s}", 1.0, 3, "value") for s in SLOT_KEYS),
    *((f"ema_click_tone_{t}", 1.0, 3, "value") for t in TONES),
    *((f"days_since_channel_{c}", 30.0, 0, "value") for c in CHANNELS),
    *((f"days_since_tone_{t}", 30.0, 0, "value") for t in TONES),
    *((f"days_since_content_{c}", 30.0, 0, "value") for c in CONTENTS),
    ("urgent_7d", 7.0, 0, "count"),
    ("sent_30d", 30.0, 0, "count"),
    *((f"declared_slot_{s}", 1.0, 1, "flag") for s in SLOT_KEYS),
]
FEATURE_NAMES = [f[0] for f in _FEATURES]
FEATURE_HIGH = [f[1] for f in _FEATURES]
FEATURE_MIN_TIER = [f[2] for f in _FEATURES]
FEATURE_KIND = [f[3] for f in _FEATURES]

ONE_HOT_GROUPS = {
    "weekday_": (1, 1),
    "consent_tier_": (1, 1),
    "goal_": (0, 1),
    "declared_slot_": (0, 1),
}
"""feature-name prefix -> (fewest, most) flags set per row (no goal or contact time: undeclared
or not consented)"""

CONTRACT_FIELDS: dict[str, Any] = {
    "feature_names": FEATURE_NAMES,
    "feature_low": [0.0] * len(FEATURE_NAMES),
    "feature_high": FEATURE_HIGH,
    "feature_min_tier": FEATURE_MIN_TIER,
    "nvec": NVEC,
    "action_labels": ACTION_LABELS,
}
"""manifest fields that must equal the contract exactly"""

MAX_PER_WEEK = 7
"""caps count messages in 7 days; a cap above one a day means nothing"""


def rule_problems(rules: Any) -> list[str]:
    """What is wrong with a manifest's ``mask_rules`` (empty when they are complete and in range)."""
    if not isinstance(rules, dict):
        return ["mask_rules is not a mapping"]
    problems = []
    for key in ("quiet_hours", "max_per_week", "channel_caps", "content_min_tier"):
        if key not in rules:
            problems.append(f"mask_rules lacks {key!r}")
    extra = sorted(set(rules) - {"quiet_hours", "max_per_week", "channel_caps", "content_min_tier"})
    if extra:
        problems.append(f"mask_rules has unknown key(s) {_shown(extra)}")
    weekly = rules.get("max_per_week")
    if "max_per_week" in rules and not _whole_in(weekly, 0, MAX_PER_WEEK):
        problems.append(
            f"mask_rules.max_per_week must be a whole number in [0, 7], got {_shown(weekly)}"
        )
    problems += _per_name(rules, "channel_caps", CHANNELS, 0, MAX_PER_WEEK)
    problems += _per_name(rules, "content_min_tier", CONTENTS, 0, N_TIERS - 1)
    quiet = rules.get("quiet_hours", {})
    if not isinstance(quiet, dict):
        problems.append("mask_rules.quiet_hours is not a mapping")
    else:
        for channel in CHANNELS:
            if channel not in quiet:
                problems.append(f"mask_rules.quiet_hours lacks channel {channel!r}")
        for channel, slots in quiet.items():
            if channel not in CHANNELS:
                problems.append(f"mask_rules.quiet_hours has unknown channel {_shown(channel)}")
            elif not isinstance(slots, list) or any(s not in SLOT_KEYS for s in slots):
                problems.append(
                    f"mask_rules.quiet_hours.{channel} must list slots among {list(SLOT_KEYS)}, "
                    f"got {_shown(slots)}"
                )
    return problems


REVIEW_NAMES: dict[str, tuple[str, ...]] = {
    "tones": TONES,
    "goals": SEGMENTS,
    "loss_contents": CONTENTS,
}
"""review_rules key -> the names its list may hold"""


def review_problems(rules: Any) -> list[str]:
    """What is wrong with a manifest's ``review_rules`` (empty when each of its three lists names
    only known tones, goals and contents)."""
    if not isinstance(rules, dict):
        return ["review_rules is not a mapping"]
    problems = [f"review_rules lacks {key!r}" for key in REVIEW_NAMES if key not in rules]
    extra = sorted(set(rules) - set(REVIEW_NAMES))
    if extra:
        problems.append(f"review_rules has unknown key(s) {_shown(extra)}")
    for key, names in REVIEW_NAMES.items():
        listed = rules.get(key, [])
        if not isinstance(listed, list) or any(
            not isinstance(n, str) or n not in names for n in listed
        ):
            problems.append(
                f"review_rules.{key} must list names among {list(names)}, got {_shown(listed)}"
            )
    return problems


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (a hostile manifest can hold megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _whole_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _per_name(rules: dict, key: str, names: tuple[str, ...], low: int, high: int) -> list[str]:
    table = rules.get(key)
    if key not in rules:
        return []
    if not isinstance(table, dict):
        return [f"mask_rules.{key} is not a mapping"]
    problems = [f"mask_rules.{key} lacks {n!r}" for n in names if n not in table]
    problems += [f"mask_rules.{key} has unknown name {_shown(n)}" for n in table if n not in names]
    problems += [
        f"mask_rules.{key}.{n} must be a whole number in [{low}, {high}], got {_shown(v)}"
        for n, v in table.items()
        if n in names and not _whole_in(v, low, high)
    ]
    return problems
