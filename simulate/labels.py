"""Names and orders that are part of the public contract (README, *The RL interface*).

Every array indexed by slot, tone, channel, content, segment, gender or age band uses
these orders. The action tuple is ``(slot, tone, channel, content)`` where slot 0 means
*no send* and slot ``s >= 1`` is ``SLOTS[s - 1]``.
"""

from __future__ import annotations

SLOTS: tuple[str, ...] = (
    "early 06-08",
    "morning 08-11",
    "midday 11-14",
    "afternoon 14-17",
    "evening 17-20",
    "late 20-23",
)
"""send slots of the day, in clock order"""
SLOT_KEYS: tuple[str, ...] = ("early", "morning", "midday", "afternoon", "evening", "late")
"""short names of :data:`SLOTS`, used in configs (``quiet_hours``)"""
TONES: tuple[str, ...] = ("informative", "educational", "reassuring", "opportunity", "urgent")
CHANNELS: tuple[str, ...] = ("email", "push", "sms")
CONTENTS: tuple[str, ...] = ("portfolio_summary", "education", "product_offer", "market_update")
SEGMENTS: tuple[str, ...] = ("retirement", "growth_investor", "active_trader", "saver_debt")
"""goal segments, declared at onboarding"""
GENDERS: tuple[str, ...] = ("female", "male", "other")
AGE_BANDS: tuple[str, ...] = ("18-34", "35-49", "50-64", "65+")

N_SLOTS = len(SLOTS)
N_TONES = len(TONES)
N_CHANNELS = len(CHANNELS)
N_CONTENTS = len(CONTENTS)
N_SEGMENTS = len(SEGMENTS)

ACTION_NVEC: tuple[int, int, int, int] = (1 + N_SLOTS, N_TONES, N_CHANNELS, N_CONTENTS)
"""sizes of the MultiDiscrete action: (no-send + slots, tones, channels, contents)"""
N_JOINT_ACTIONS = 1 + N_SLOTS * N_TONES * N_CHANNELS * N_CONTENTS
"""size of the flat action view: index 0 is no-send, then every (slot, tone, channel, content)"""

ACTION_LABELS: dict[str, tuple[str, ...]] = {
    "slot": ("no_send", *SLOTS),
    "tone": TONES,
    "channel": CHANNELS,
    "content": CONTENTS,
}
"""labels of each action component, in MultiDiscrete order"""
