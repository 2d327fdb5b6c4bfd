"""Structured configuration of the world: who the clients are, how they respond, what happens.

Each dataclass field documents what its number *means*; Hydra's YAML only chooses values.
Ranges live in field metadata and are checked by :func:`validate`, which names the key
and the allowed range on failure, before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simulate.labels import (
    AGE_BANDS,
    CHANNELS,
    CONTENTS,
    GENDERS,
    N_CONTENTS,
    N_SEGMENTS,
    N_SLOTS,
    N_TONES,
    SEGMENTS,
    SLOT_KEYS,
)


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and what would be right."""


def num(default: float, lo: float | None = None, hi: float | None = None) -> Any:
    """A scalar field whose value must lie in ``[lo, hi]`` (either bound may be open)."""
    return field(default=default, metadata={"lo": lo, "hi": hi})


def vec(
    default: list,
    length: int,
    lo: float | None = None,
    hi: float | None = None,
    probs: bool = False,
) -> Any:
    """A list field of fixed ``length``; ``probs`` means non-negative and summing to 1."""
    return field(
        default_factory=lambda: list(default),
        metadata={"lo": lo, "hi": hi, "length": length, "probs": probs},
    )


def _check_number(key: str, value: Any, lo: float | None, hi: float | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{key} must be finite, got {value!r}")
    if lo is not None and value < lo:
        raise ConfigError(f"{key} must be >= {lo}, got {value!r}" + _range_hint(lo, hi))
    if hi is not None and value > hi:
        raise ConfigError(f"{key} must be <= {hi}, got {value!r}" + _range_hint(lo, hi))


def _range_hint(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" (allowed range [{lo}, {hi}])"
    return ""


def validate(cfg: Any, prefix: str = "") -> Any:
    """Check every ranged field of a dataclass tree; return ``cfg`` or raise :class:`ConfigError`.

    Args:
        cfg: a dataclass instance (nested dataclasses and lists of them are walked).
        prefix: dotted key of ``cfg`` in the full config, used in messages (``"reward"``).
    """
    for f in dataclasses.fields(cfg):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(cfg, f.name)
        meta = f.metadata
        if dataclasses.is_dataclass(value):
            validate(value, key)
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                validate(item, f"{key}[{i}]")
        elif "length" in meta:
            if not isinstance(value, (list, tuple)) or len(value) != meta["length"]:
                raise ConfigError(
                    f"{key} must be a list of {meta['length']} numbers, got {value!r}"
                )
            for i, item in enumerate(value):
                if isinstance(item, (list, tuple)):
                    for j, sub in enumerate(item):
                        _check_number(f"{key}[{i}][{j}]", sub, meta["lo"], meta["hi"])
                else:
                    _check_number(f"{key}[{i}]", item, meta["lo"], meta["hi"])
            if meta.get("probs") and abs(sum(value) - 1.0) > 1e-6:
                raise ConfigError(f"{key} must sum to 1 (probabilities), got sum {sum(value):.6g}")
        elif "lo" in meta:
            _check_number(key, value, meta["lo"], meta["hi"])
    check = getattr(cfg, "check", None)
    if check is not None:
        check(prefix)
    return cfg


def check_quiet_hours(key: str, quiet_hours: dict[str, list[str]]) -> None:
    """Raise :class:`ConfigError` unless ``quiet_hours`` maps channels to known slot names."""
    for channel, slots in quiet_hours.items():
        if channel not in CHANNELS:
            raise ConfigError(
                f"{key} has unknown channel {channel!r}; channels are {list(CHANNELS)}"
            )
        for slot in slots:
            if slot not in SLOT_KEYS:
                raise ConfigError(
                    f"{key}.{channel} has unknown slot {slot!r}; slots are {list(SLOT_KEYS)}"
                )


def quiet_table(quiet_hours: dict[str, list[str]]) -> np.ndarray:
    """(slots, channels) bool table: True where a send on that channel in that slot is quiet-hour."""
    table = np.zeros((len(SLOT_KEYS), len(CHANNELS)), dtype=bool)
    for channel, slots in quiet_hours.items():
        for slot in slots:
            table[SLOT_KEYS.index(slot), CHANNELS.index(channel)] = True
    return table


@dataclass
class PopulationConfig:
    """How synthetic clients' fixed traits are drawn (one row per client, for life)."""

    segment_probs: list[float] = vec([0.30, 0.30, 0.15, 0.25], N_SEGMENTS, 0.0, 1.0, probs=True)
    """share of each goal segment, in order retirement, growth_investor, active_trader, saver_debt"""
    consent_tier_probs: list[float] = vec([0.10, 0.30, 0.35, 0.25], 4, 0.0, 1.0, probs=True)
    """share of consent tiers 0 (no personalisation) .. 3 (predictive behavioural)"""
    gender_probs: list[float] = vec([0.49, 0.49, 0.02], len(GENDERS), 0.0, 1.0, probs=True)
    """share of each gender group (protected: seen only by the fairness audit)"""
    age_band_probs: list[float] = vec(
        [0.25, 0.35, 0.25, 0.15], len(AGE_BANDS), 0.0, 1.0, probs=True
    )
    """share of each age band 18-34, 35-49, 50-64, 65+ (protected)"""
    slot_preference_probs: list[float] = vec(
        [0.10, 0.25, 0.20, 0.15, 0.20, 0.10], N_SLOTS, 0.0, 1.0, probs=True
    )
    """share of clients whose favourite send slot is each slot"""
    literacy_mean: float = num(0.55, 0.0, 1.0)
    """mean financial literacy (0..1) before the age shift"""
    literacy_sd: float = num(0.20, 0.0, 1.0)
    """spread of financial literacy (clipped to 0..1)"""
    literacy_age_shift: list[float] = vec([0.05, 0.05, -0.05, -0.15], len(AGE_BANDS), -1.0, 1.0)
    """shift of mean literacy per age band"""
    susceptibility_logit_mean: float = num(-0.6, -5.0, 5.0)
    """mean of anxiety susceptibility on the logit scale"""
    susceptibility_logit_sd: float = num(1.0, 0.0, 5.0)
    """spread of anxiety susceptibility on the logit scale"""
    susceptibility_age_shift: list[float] = vec([0.0, 0.0, 0.4, 0.8], len(AGE_BANDS), -5.0, 5.0)
    """logit shift of anxiety susceptibility per age band"""
    susceptibility_literacy: float = num(-1.5, -10.0, 10.0)
    """logit change of susceptibility per unit of (literacy - 0.5): low literacy, more anxious"""
    risk_logit_sd: float = num(1.0, 0.0, 5.0)
    """spread of risk tolerance on the logit scale"""
    risk_segment_shift: list[float] = vec([-0.8, 0.4, 1.2, -0.6], N_SEGMENTS, -5.0, 5.0)
    """logit mean of risk tolerance per segment"""
    declared_risk_noise_sd: float = num(0.15, 0.0, 1.0)
    """noise between true and declared risk tolerance (declared is observable)"""
    declared_slot_noise_sd: float = num(0.6, 0.0, 5.0)
    """noise, in slots, between the favourite send slot and the contact time a client declares at
    onboarding (declared = favourite + noise, rounded, within the day; observable at tier >= 1)"""
    base_open_sd: float = num(0.5, 0.0, 5.0)
    """spread of a client's own open propensity (logit)"""
    weekend_affinity_sd: float = num(0.4, 0.0, 5.0)
    """spread of the extra open logit a client has on weekends (negative: weekday person)"""
    channel_affinity_mean: list[float] = vec([0.0, 0.2, 0.3], len(CHANNELS), -5.0, 5.0)
    """mean open logit added by each channel email, push, sms"""
    channel_affinity_sd: float = num(0.5, 0.0, 5.0)
    """spread of channel affinity between clients (logit)"""
    tone_affinity_mean: list[float] = vec([0.0, 0.15, 0.1, 0.0, 0.1], N_TONES, -5.0, 5.0)
    """mean calm-click logit added by each tone"""
    tone_affinity_sd: float = num(0.3, 0.0, 5.0)
    """spread of tone affinity between clients (logit)"""
    initial_trust_mean: float = num(0.55, 0.0, 1.0)
    """mean trust (0..1) at onboarding"""
    initial_trust_sd: float = num(0.12, 0.0, 1.0)
    """spread of trust at onboarding"""
    initial_anxiety_scale: float = num(0.3, 0.0, 1.0)
    """anxiety at onboarding = this x susceptibility"""
    visit_logit_mean: float = num(-2.5, -15.0, 5.0)
    """mean daily logit of an organic visit (log-in to the app or site, no message needed) the day
    after a visit, at trust 0.5 on a calm weekday; it falls the longer a client stays away"""
    visit_logit_sd: float = num(1.2, 0.0, 5.0)
    """spread of the own visit propensity between clients (logit)"""


@dataclass
class ResponseConfig:
    """How a client responds to a message and how latent state moves, per day."""

    open_base: float = num(-1.55, -10.0, 10.0)
    """open logit of an average client (before every other term). Set so that a weekly e-mail
    opens at the published financial-services rates (20.5-27.1 %) both as one fixed content
    (21.5 %, the scorecard's levels protocol) and as a varied content and tone mix (26.5 %, its
    varied-mix protocol), default population, 5,000 clients, seed 0"""
    open_trust: float = num(2.0, 0.0, 20.0)
    """open logit per unit of (trust - 0.5)"""
    open_fatigue: float = num(0.14, 0.0, 10.0)
    """open logit lost per unit of fatigue (one unit = one recent message): read rates fall as
    one sender's e-mails pile up (Validity / Return Path, "Frequency Matters"). Carries the
    scorecard's fall of clicks per message with weekly volume (7 vs 1 a week: 0.82, band <= 0.9)
    now that content novelty is bounded; much more and the 7th weekly e-mail loses clicks in
    total (last step vs first step, band >= 0)"""
    open_novelty: float = num(1.0, 0.0, 10.0)
    """open logit lost when the content's novelty drops from 1 to 0: the size of the novelty
    effect (response to a content recovers with days since it was last sent; Yancey & Settles,
    KDD 2020, who give no size that transfers to e-mail opens).

    Bound (a stated assumption): the published open rates are averages over firms' campaigns,
    fixed weekly newsletters and varied mixes alike, so a weekly e-mail of one content and the
    same e-mail with varied contents and tones must both land in the published range: the
    varied mix may open at most 27.1 / 20.5 = 1.32 times the fixed content (Campaign Monitor 2022
    over Mailchimp 2018, financial services), 0.366 in log-odds. A content sent every T days
    is seen at novelty (1 - d ** (T - 1) * (1 - novelty_drop * (1 - d))) / (1 - novelty_drop *
    d ** T), d = 0.5 ** (1 / novelty_half_life_days) a day: 0.66 weekly with the defaults against
    0.98 every 28 days (four contents in turn), so rotating lifts a typical client's opens by
    about open_novelty x 0.32 in log-odds and the bound allows open_novelty up to about 1.15
    with these dynamics. The scorecard checks the measured lift as
    ``email_mix/open_rate_vs_summary`` (1.23 at this default, tones included; the earlier
    defaults fitted on the fixed summary alone, open_novelty 1.74 with open_base -1.23 and
    open_fatigue 0.05, gave 1.39: 23 % fixed, 32 % varied)."""
    open_urgency: float = num(0.4, 0.0, 10.0)
    """open logit per unit of urgency (alarming subject lines get opened)"""
    rhythm_amp: float = num(1.4, 0.0, 10.0)
    """open logit between a client's favourite slot and a far slot"""
    click_base: float = num(-3.34, -10.0, 10.0)
    """calm-click logit given open, before relevance and tone"""
    click_relevance: float = num(2.5, 0.0, 20.0)
    """calm-click logit per unit of relevance (relevance in -1..1)"""
    click_trust: float = num(1.0, 0.0, 20.0)
    """calm-click logit per unit of (trust - 0.5)"""
    anxious_click_max: float = num(0.33, 0.0, 1.0)
    """probability of an anxiety-driven click at anxiety 1 and urgency 1"""
    convert_base: float = num(-2.6, -10.0, 10.0)
    """conversion logit of a calm click"""
    convert_literacy: float = num(2.0, 0.0, 20.0)
    """conversion logit per unit of literacy"""
    convert_relevance: float = num(1.5, 0.0, 20.0)
    """conversion logit per unit of relevance"""
    anxious_convert: float = num(0.02, 0.0, 1.0)
    """probability that an anxiety-driven click converts"""
    harm_given_anxious: float = num(0.4, 0.0, 1.0)
    """probability of a harmful action (panic selling) after an anxious click, x susceptibility"""
    unsub_base: float = num(-6.29, -20.0, 10.0)
    """unsubscribe logit of a delivered message"""
    unsub_fatigue: float = num(0.41, 0.0, 10.0)
    """unsubscribe logit per unit of fatigue"""
    unsub_irrelevance: float = num(1.5, 0.0, 10.0)
    """unsubscribe logit per unit of irrelevance (negative relevance)"""
    unsub_quiet: float = num(1.5, 0.0, 10.0)
    """unsubscribe logit added by a quiet-hour send on that channel"""
    unsub_urgency: float = num(0.8, 0.0, 10.0)
    """unsubscribe logit per unit of urgency"""
    complaint_base: float = num(-9.24, -20.0, 10.0)
    """complaint logit of a delivered message"""
    complaint_quiet: float = num(3.5, 0.0, 20.0)
    """complaint logit added by a quiet-hour push or SMS"""
    complaint_fatigue: float = num(0.6, 0.0, 10.0)
    """complaint logit per unit of fatigue above the tolerance (complaints climb past about five
    messages a week)"""
    complaint_urgency_repeat: float = num(0.6, 0.0, 10.0)
    """complaint logit per urgent message in the previous 7 days, x urgency of this one"""
    fatigue_half_life_days: float = num(2.0, 0.1, 365.0)
    """days for fatigue to halve without messages"""
    novelty_drop: float = num(0.45, 0.0, 1.0)
    """novelty of a content type is multiplied by this each time it is sent"""
    novelty_half_life_days: float = num(6.0, 0.1, 365.0)
    """days for a content type's lost novelty to halve"""
    trust_relevance: float = num(0.03, 0.0, 1.0)
    """trust change per delivered message per unit of relevance"""
    trust_fear: float = num(0.01, 0.0, 1.0)
    """trust lost per delivered message per unit of urgency"""
    trust_late: float = num(0.02, 0.0, 1.0)
    """trust lost by a message in the late slot, any channel"""
    trust_conversion: float = num(0.03, 0.0, 1.0)
    """trust gained by a beneficial action"""
    trust_harm: float = num(0.15, 0.0, 1.0)
    """trust lost by a harmful action"""
    anxiety_half_life_days: float = num(8.0, 0.1, 365.0)
    """days for anxiety to halve without triggers"""
    anxiety_urgency: float = num(0.2, 0.0, 1.0)
    """anxiety added per delivered message per unit of urgency, x susceptibility"""
    stress_anxiety: float = num(0.03, 0.0, 1.0)
    """anxiety added per day per unit of market stress, x susceptibility"""
    visit_trust: float = num(1.5, 0.0, 20.0)
    """organic visit logit per unit of (trust - 0.5)"""
    visit_weekend: float = num(-0.4, -5.0, 5.0)
    """organic visit logit added on Saturdays and Sundays"""
    visit_stress: float = num(0.4, 0.0, 10.0)
    """organic visit logit per unit of market stress (people check more in a crash)"""
    visit_recency: float = num(0.5, 0.0, 10.0)
    """organic visit logit lost per unit of log(days since the last visit): habits fade"""
    visit_convert: float = num(-2.0, -10.0, 10.0)
    """conversion logit of an organic visit relative to a calm click, at the segment's mean
    relevance (the same literacy and relevance terms as a click's)"""
    churn_base: float = num(-7.6, -20.0, 0.0)
    """daily churn logit of a calm, trusting, rested client"""
    churn_trust: float = num(4.0, 0.0, 20.0)
    """daily churn logit per unit of (0.5 - trust)"""
    churn_anxiety: float = num(4.0, 0.0, 20.0)
    """daily churn logit per unit of anxiety"""
    churn_fatigue: float = num(0.5, 0.0, 10.0)
    """daily churn logit per unit of fatigue above the tolerance"""
    fatigue_tolerance: float = num(1.5, 0.0, 30.0)
    """fatigue a client tolerates before it raises churn"""
    tone_urgency: list[float] = vec([0.0, 0.0, 0.0, 0.4, 1.0], N_TONES, 0.0, 1.0)
    """urgency (0..1) of each tone: drives anxious clicks, anxiety and complaints"""
    tone_relief: list[float] = vec([0.0, 0.1, 0.3, 0.0, 0.0], N_TONES, 0.0, 1.0)
    """share of anxiety a delivered message of each tone removes"""
    stress_relevance: list[float] = vec([0.2, 0.4, -0.3, 0.6], N_CONTENTS, -2.0, 2.0)
    """relevance added to each content per unit of market stress"""
    relevance: list[list[float]] = field(
        default_factory=lambda: [
            [0.6, 0.5, -0.2, 0.0],
            [0.5, 0.2, 0.3, 0.5],
            [0.3, -0.3, 0.2, 0.8],
            [-0.2, 0.7, -0.5, -0.4],
        ],
        metadata={"lo": -1.0, "hi": 1.0, "length": N_SEGMENTS},
    )
    """relevance (-1..1) of each content (columns) to each goal segment (rows)"""

    channel_slot_open: list[list[float]] = field(
        default_factory=lambda: [
            [0.1, 0.2, 0.0, 0.0, -0.1, -0.2],
            [-0.3, -0.1, 0.0, 0.1, 0.5, 0.2],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        ],
        metadata={"lo": -5.0, "hi": 5.0, "length": len(CHANNELS)},
    )
    """open logit added by sending on each channel (rows email, push, sms) in each slot (columns
    early .. late): e-mail is read at the desk in the morning, the phone in the evening"""

    quiet_hours: dict[str, list[str]] = field(
        default_factory=lambda: {"email": [], "push": ["late"], "sms": ["early", "late"]}
    )
    """slots (short names) in which a message on each channel disturbs the client"""

    def check(self, prefix: str) -> None:
        check_quiet_hours(f"{prefix}.quiet_hours", self.quiet_hours)
        for i, row in enumerate(self.channel_slot_open):
            if len(row) != N_SLOTS:
                raise ConfigError(
                    f"{prefix}.channel_slot_open[{i}] must have {N_SLOTS} entries (one per slot "
                    f"{', '.join(SLOT_KEYS)}), got {len(row)}"
                )
        for i, row in enumerate(self.relevance):
            if len(row) != N_CONTENTS:
                raise ConfigError(
                    f"{prefix}.relevance[{i}] must have {N_CONTENTS} entries (one per content "
                    f"{', '.join(CONTENTS)}), got {len(row)}"
                )


@dataclass
class ScenarioEvent:
    """One change to the world over calendar days, applied by a single mechanism."""

    name: str = "event"
    """label of the event, for plots and logs"""
    start_day: int = num(0, 0, 100_000)
    """calendar day the event starts (day 0 is a Monday)"""
    end_day: int = num(0, 0, 100_000)
    """last calendar day the relevance and send effects apply (inclusive)"""
    anxiety_shock: float = num(0.0, -1.0, 1.0)
    """anxiety added on ``start_day`` to every active client, x susceptibility"""
    trust_shock: float = num(0.0, -1.0, 1.0)
    """trust added on ``start_day`` to every active client (negative for a crash)"""
    stress_peak: float = num(0.0, 0.0, 10.0)
    """market stress on ``start_day``; observable at consent tier >= 2"""
    stress_half_life_days: float = num(10.0, 0.1, 365.0)
    """days for market stress to halve after ``start_day``"""
    segment: str = "all"
    """goal segment the relevance/send effects target, or ``all``"""
    content: list[str] = field(default_factory=lambda: ["all"])
    """content types the relevance/send effects target (``[all]``: every one)"""
    relevance_delta: float = num(0.0, -2.0, 2.0)
    """relevance added to the targeted (segment, content) between start_day and end_day"""
    send_trust_delta: float = num(0.0, -1.0, 1.0)
    """trust change per delivered targeted message between start_day and end_day"""

    def check(self, prefix: str) -> None:
        if self.end_day < self.start_day:
            raise ConfigError(
                f"{prefix}.end_day must be >= start_day ({self.start_day}), got {self.end_day}"
            )
        if self.segment != "all" and self.segment not in SEGMENTS:
            raise ConfigError(
                f"{prefix}.segment must be 'all' or one of {list(SEGMENTS)}, got {self.segment!r}"
            )
        unknown = [c for c in self.content if c != "all" and c not in CONTENTS]
        if not self.content or unknown:
            raise ConfigError(
                f"{prefix}.content must list 'all' or content types of {list(CONTENTS)}, "
                f"got {list(self.content)!r}"
            )


@dataclass
class ScenarioConfig:
    """A scenario: a named list of events (``calm`` has none)."""

    name: str = "calm"
    """scenario name, logged as the ``scenario`` tag"""
    events: list[ScenarioEvent] = field(default_factory=list)
    """the events, applied in order each day"""
