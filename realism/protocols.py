"""The simulator's side of the realism scorecard: each statistic is computed by a written
protocol (which messages, to which clients, on which days), on fresh clients with common random
numbers, so two protocols that differ in one choice differ only by that choice.

Protocols (every send is delivered by the world directly: no policy, no guardrail masks, so a
protocol measures the clients, not a cadence rule):

* **levels**: a weekly informative e-mail (portfolio summary, Monday morning) for 12 weeks.
  Opens, clicks, click-to-open, unsubscribes and complaints per e-mail.
* **varied mix**: the same weekly e-mail (Monday morning, 12 weeks) with the content and tone a
  firm's newsletter actually varies: the four contents in turn, each in the tone a firm would
  give it (:data:`MIX`). The published open, click, unsubscribe and complaint rates are averages
  over firms' real mixes, so the levels must hold here as well as for the fixed summary: the
  difference between the two is the novelty effect at a weekly cadence, reported as the mix's
  open rate over the fixed summary's on the same clients.
* **volume**: the same clients, 1 to 7 informative e-mails a week (spread over the week, the
  contents in turn) for 12 weeks. Clicks per message, clicks per client-week, unsubscribes and
  complaints per message at each volume, and their shape as ratios.
* **recovery**: a portfolio summary on day 0 and again after a gap of 1 to 28 days: the second
  send's click rate relative to the first, by gap.
* **time of day**: a weekday push (informative portfolio summary) every weekday for 4 weeks, in
  one slot for all clients, for each slot in turn: clicks per push by slot.
* **urgency**: the weekly e-mail of *levels* in an urgent tone beside the informative one, over
  the first 4 weeks: opens, clicks and unsubscribes relative to informative, on 8x ``clients``
  (four e-mails a client give few unsubscribes).
* **bank contacts** (the bank campaign's protocol): a product offer by SMS at midday every 3
  days to each client until they convert, unsubscribe or churn, up to 12 contacts. Success at
  contact k is the share of clients reached a k-th time who convert on it (10 or more pooled),
  reported relative to the first contact, and the share of clients who convert at all. The data
  give success by the number of contacts a client had in the campaign, which is this share where
  the campaign stops at a conversion; it is observational, this is not. Runs on 4x ``clients``
  (successes are rare at late contacts). A conversion here is
  the offer taken up after a click (an organic purchase the same day does not count).
* **hillstrom** (the Hillstrom hold-out experiment): clients live a year (52 weeks) with no
  messages, visiting and buying on their own; those who bought in that year and are still clients
  (the experiment's population) are split by months since their last purchase (1-4, 5-8, 9-12).
  On the next Monday each gets one e-mail (a product offer, opportunity tone, morning) or none, on
  the same clients and luck (common random numbers: the two arms differ only by the e-mail);
  visits and purchases in the two weeks from the send are the outcome. ``clients`` is the number
  of such customers: candidates are drawn in batches until there are at least that many.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from envs.config import Setup
from realism.data import RECENCY_BUCKETS, hillstrom_statistic_names
from simulate.labels import CHANNELS, CONTENTS, SLOT_KEYS, TONES
from simulate.world import NEVER, World

CLIENT_OFFSET = 1 << 52
"""realism clients' ids: never those of training (from 0) or evaluation (from 2**48)"""
WEEKS = 12
GAPS = (1, 2, 4, 7, 14, 28)
"""days between two sends of the same content in the recovery protocol"""
EMAIL, PUSH = CHANNELS.index("email"), CHANNELS.index("push")
INFORMATIVE, URGENT = TONES.index("informative"), TONES.index("urgent")
OPPORTUNITY = TONES.index("opportunity")
EDUCATIONAL, REASSURING = TONES.index("educational"), TONES.index("reassuring")
SUMMARY = CONTENTS.index("portfolio_summary")
EDUCATION, UPDATE = CONTENTS.index("education"), CONTENTS.index("market_update")
MORNING = 1 + SLOT_KEYS.index("morning")
COUNTED = ("sent", "opened", "clicked", "unsubscribed", "complaint")
SMS = CHANNELS.index("sms")
OFFER = CONTENTS.index("product_offer")
MIDDAY = 1 + SLOT_KEYS.index("midday")
BANK_CONTACTS, BANK_EVERY = 12, 3
"""the bank protocol's most contacts per client and days between them"""
BANK_CANDIDATES = 4
"""the bank protocol's clients per requested client: a few in a hundred take the offer at each
contact, and the late contacts reach fewer clients still"""
HILLSTROM_YEAR, HILLSTROM_WINDOW, HILLSTROM_CANDIDATES, HILLSTROM_MAX_CHUNKS = 364, 14, 4, 25
"""days lived before the send (52 weeks: the send is a Monday), days of outcome after it,
candidates per requested customer in each batch, and the most batches drawn"""
MONTH_DAYS = 365.25 / 12
URGENCY_CANDIDATES = 8
"""the urgency protocol's clients per requested client: four e-mails each give few unsubscribes
(about 40 per 20,000 e-mails), so its ratios need more clients than the other protocols"""


@dataclass(frozen=True)
class Send:
    """One message to every client on a day: 1-based slot and component indices."""

    slot: int
    tone: int
    channel: int
    content: int


Plan = Callable[[int], Send | None]
"""day -> the message every client gets that day, or None"""


def run(setup: Setup, clients: int, days: int, seed: int, plan: Plan) -> dict[str, np.ndarray]:
    """Run ``plan`` on ``clients`` fresh clients for ``days``; per-day totals of each counted
    outcome, (days,) arrays."""
    ids = np.uint64(CLIENT_OFFSET) + np.arange(clients, dtype=np.uint64)
    world = World(setup.population, setup.env.response, setup.scenario, seed, ids)
    zeros = np.zeros(clients, dtype=np.int64)
    totals = {k: np.zeros(days) for k in COUNTED}
    for day in range(days):
        send = plan(day)
        if send is None:
            out = world.step(day, zeros, zeros, zeros, zeros)
        else:
            out = world.step(
                day,
                zeros + send.slot,
                zeros + send.tone,
                zeros + send.channel,
                zeros + send.content,
            )
        for k in COUNTED:
            totals[k][day] = out[k].sum()
    return totals


def _per(totals: dict[str, np.ndarray], what: str, per: str = "sent", days=slice(None)) -> float:
    denominator = totals[per][days].sum()
    return float(totals[what][days].sum() / denominator) if denominator else float("nan")


def weekly(tone: int = INFORMATIVE) -> Plan:
    """The weekly e-mail: a portfolio summary every Monday morning."""
    return lambda day: Send(MORNING, tone, EMAIL, SUMMARY) if day % 7 == 0 else None


LEVELS = (
    "open_rate",
    "click_rate",
    "click_to_open",
    "unsubscribes_per_email",
    "complaints_per_email",
)
"""the per-e-mail level statistics of the levels and varied-mix protocols"""


def _levels(t: dict[str, np.ndarray], prefix: str) -> dict[str, float]:
    """Opens, clicks, click-to-open, unsubscribes and complaints per e-mail of a run."""
    values = (
        _per(t, "opened"),
        _per(t, "clicked"),
        _per(t, "clicked", "opened"),
        _per(t, "unsubscribed"),
        _per(t, "complaint"),
    )
    return {f"{prefix}/{name}": v for name, v in zip(LEVELS, values, strict=True)}


def levels(setup: Setup, clients: int, seed: int) -> dict[str, float]:
    return _levels(run(setup, clients, 7 * WEEKS, seed, weekly()), "email")


MIX: tuple[tuple[int, int], ...] = (
    (SUMMARY, INFORMATIVE),
    (EDUCATION, EDUCATIONAL),
    (OFFER, OPPORTUNITY),
    (UPDATE, INFORMATIVE),
    (SUMMARY, REASSURING),
    (EDUCATION, EDUCATIONAL),
    (OFFER, OPPORTUNITY),
    (UPDATE, URGENT),
    (SUMMARY, INFORMATIVE),
    (EDUCATION, EDUCATIONAL),
    (OFFER, OPPORTUNITY),
    (UPDATE, INFORMATIVE),
)
"""(content, tone) of the varied mix's e-mail in each of its 12 weeks: the four contents in turn
(each comes back every 4 weeks), in the tone a firm gives it: summaries informative (one
reassuring), lessons educational, offers as opportunities, market updates informative with one
urgent alert a quarter. Tones over the quarter: 4 informative, 3 educational, 3 opportunity,
1 reassuring, 1 urgent (an assumed house mix: calm and useful first, one alert)."""


def varied_weekly(day: int) -> Send | None:
    """The varied mix: week ``day // 7``'s content and tone of :data:`MIX`, Monday morning."""
    if day % 7:
        return None
    content, tone = MIX[day // 7 % len(MIX)]
    return Send(MORNING, tone, EMAIL, content)


def varied_mix(setup: Setup, clients: int, seed: int) -> dict[str, float]:
    """The levels of the varied mix, and its open rate over the fixed summary's on the same
    clients and luck (the novelty effect at a weekly cadence, with the tones' part)."""
    out = _levels(run(setup, clients, 7 * WEEKS, seed, varied_weekly), "email_mix")
    fixed = _per(run(setup, clients, 7 * WEEKS, seed, weekly()), "opened")
    out["email_mix/open_rate_vs_summary"] = _ratio(out["email_mix/open_rate"], fixed)
    return out


def volume_days(k: int) -> set[int]:
    """Weekdays (0 = Monday) of ``k`` sends a week, spread over the week."""
    return {int(d) for d in np.floor(np.arange(k) * 7 / k)}


def volume(setup: Setup, clients: int, seed: int) -> dict[str, float]:
    out: dict[str, float] = {}
    per_message, per_week, unsub, complaint = {}, {}, {}, {}
    for k in range(1, 8):
        days_of_week = volume_days(k)

        def plan(day: int, days_of_week=days_of_week) -> Send | None:
            if day % 7 not in days_of_week:
                return None
            return Send(MORNING, INFORMATIVE, EMAIL, (day // 7 * 7 + day % 7) % len(CONTENTS))

        t = run(setup, clients, 7 * WEEKS, seed, plan)
        per_message[k] = _per(t, "clicked")
        per_week[k] = float(t["clicked"].sum() / (clients * WEEKS))
        unsub[k] = _per(t, "unsubscribed")
        complaint[k] = _per(t, "complaint")
        out[f"volume/clicks_per_message/{k}"] = per_message[k]
        out[f"volume/clicks_per_client_week/{k}"] = per_week[k]
        out[f"volume/unsubscribes_per_message/{k}"] = unsub[k]
        out[f"volume/complaints_per_message/{k}"] = complaint[k]
    out["volume/per_message_7_vs_1"] = per_message[7] / per_message[1]
    out["volume/total_7_vs_1"] = per_week[7] / per_week[1]
    first_step = per_week[2] - per_week[1]
    out["volume/last_step_vs_first_step"] = (per_week[7] - per_week[6]) / first_step
    out["volume/unsubscribes_per_message_7_vs_4"] = _ratio(unsub[7], unsub[4])
    out["volume/complaints_per_message_7_vs_4"] = _ratio(complaint[7], complaint[4])
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf") if a > 0 else float("nan")


def recovery(setup: Setup, clients: int, seed: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for gap in GAPS:

        def plan(day: int, gap: int = gap) -> Send | None:
            return Send(MORNING, INFORMATIVE, EMAIL, SUMMARY) if day in (0, gap) else None

        t = run(setup, clients, gap + 1, seed, plan)
        first, second = t["clicked"][0] / t["sent"][0], t["clicked"][gap] / t["sent"][gap]
        out[f"recovery/second_vs_first/{gap}"] = float(_ratio(second, first))
    out["recovery/28_vs_1"] = float(
        _ratio(out["recovery/second_vs_first/28"], out["recovery/second_vs_first/1"])
    )
    return out


def time_of_day(setup: Setup, clients: int, seed: int) -> dict[str, float]:
    out: dict[str, float] = {}
    rates = []
    for s, name in enumerate(SLOT_KEYS):

        def plan(day: int, slot: int = s + 1) -> Send | None:
            return Send(slot, INFORMATIVE, PUSH, SUMMARY) if day % 7 < 5 else None

        t = run(setup, clients, 28, seed, plan)
        rates.append(_per(t, "clicked"))
        out[f"time_of_day/push_click_rate/{name}"] = rates[-1]
    out["time_of_day/push_peak_slot"] = float(np.argmax(rates))
    out["time_of_day/push_evening_vs_midday"] = (
        rates[SLOT_KEYS.index("evening")] / rates[SLOT_KEYS.index("midday")]
    )
    return out


def urgency(setup: Setup, clients: int, seed: int) -> dict[str, float]:
    first_weeks = slice(0, 28)
    n = clients * URGENCY_CANDIDATES
    calm = run(setup, n, 28, seed, weekly(INFORMATIVE))
    urgent = run(setup, n, 28, seed, weekly(URGENT))
    out = {
        f"urgency/{what}_ratio": _ratio(
            _per(urgent, outcome, days=first_weeks), _per(calm, outcome, days=first_weeks)
        )
        for what, outcome in (
            ("open", "opened"),
            ("click", "clicked"),
            ("unsubscribe", "unsubscribed"),
        )
    }
    out["urgency/unsubscribes_rise_more"] = out["urgency/unsubscribe_ratio"] - max(
        out["urgency/open_ratio"], out["urgency/click_ratio"]
    )
    return out


def bank_contacts(setup: Setup, clients: int, seed: int) -> dict[str, float]:
    clients *= BANK_CANDIDATES
    ids = np.uint64(CLIENT_OFFSET) + np.arange(clients, dtype=np.uint64)
    world = World(setup.population, setup.env.response, setup.scenario, seed, ids)
    zeros = np.zeros(clients, dtype=np.int64)
    active = np.ones(clients, dtype=bool)
    converted_any = np.zeros(clients, dtype=bool)
    reached, success = np.zeros(BANK_CONTACTS + 1), np.zeros(BANK_CONTACTS + 1)
    for day in range(BANK_CONTACTS * BANK_EVERY):
        contact = day // BANK_EVERY + 1
        calling = active & (day % BANK_EVERY == 0) & ~world.churned & ~world.opted_out[:, SMS]
        slot = np.where(calling, MIDDAY, 0)
        out = world.step(day, slot, zeros + INFORMATIVE, zeros + SMS, zeros + OFFER)
        accepted = out["converted"] & out["clicked"]  # the offer taken up, not an organic visit
        if day % BANK_EVERY == 0:
            reached[contact] += calling.sum()
            success[contact] += (accepted & calling).sum()
        converted_any |= accepted
        active &= ~accepted
    rate = {k: success[k] / reached[k] if reached[k] else float("nan") for k in range(1, 10)}
    rate[10] = success[10:].sum() / reached[10:].sum() if reached[10:].sum() else float("nan")
    first = rate[1]
    out_stats = {
        "bank/success_rate": float(converted_any.mean()),
        "bank/success_rate/contact_1": float(first),
    }
    for k in (*range(2, 10), 10):
        label = "10plus" if k == 10 else str(k)
        out_stats[f"bank/relative_success/contact_{label}"] = float(_ratio(rate[k], first))
    out_stats["bank/decline_1_to_10plus"] = float(_ratio(first, rate[10]))
    return out_stats


def _hillstrom_customers(setup: Setup, first_id: int, n: int, seed: int):
    """``n`` candidates live a year with no messages: (world, months since the last purchase,
    who bought in that year and is still a client)."""
    ids = np.uint64(CLIENT_OFFSET + first_id) + np.arange(n, dtype=np.uint64)
    world = World(setup.population, setup.env.response, setup.scenario, seed, ids)
    zeros = np.zeros(n, dtype=np.int64)
    last_purchase = np.full(n, NEVER)
    for day in range(HILLSTROM_YEAR):
        out = world.step(day, zeros, zeros, zeros, zeros)
        last_purchase[out["converted"]] = day
    months = np.ceil((HILLSTROM_YEAR - last_purchase) / MONTH_DAYS)
    return world, months, (months <= 12) & ~world.churned


def _hillstrom_arms(world: World) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """arm -> (visited, bought) in the two weeks from the send, on copies of the same world."""
    zeros = np.zeros(world.n, dtype=np.int64)
    start, out_arms = HILLSTROM_YEAR, {}
    for arm in ("no_email", "email"):
        w = copy.deepcopy(world)
        visited = np.zeros(world.n, dtype=bool)
        bought = np.zeros(world.n, dtype=bool)
        for day in range(start, start + HILLSTROM_WINDOW):
            slot = MORNING if (arm == "email" and day == start) else 0
            out = w.step(day, zeros + slot, zeros + OPPORTUNITY, zeros + EMAIL, zeros + OFFER)
            visited |= out["visited"]
            bought |= out["converted"]
        out_arms[arm] = (visited, bought)
    return out_arms


def hillstrom(setup: Setup, clients: int, seed: int) -> dict[str, float]:
    chunk = clients * HILLSTROM_CANDIDATES
    months_all, visited, bought = [], {"no_email": [], "email": []}, {"no_email": [], "email": []}
    customers, first_id = 0, 0
    while customers < clients:
        if first_id >= chunk * HILLSTROM_MAX_CHUNKS:
            raise ValueError(
                f"hillstrom protocol: only {customers} of {first_id:,} simulated clients bought "
                f"within a year; {clients} customers needed (raise the visit or conversion rates)"
            )
        world, months, eligible = _hillstrom_customers(setup, first_id, chunk, seed)
        first_id += chunk
        rows = np.flatnonzero(eligible)
        customers += len(rows)
        months_all.append(months[rows])
        for arm, (v, b) in _hillstrom_arms(world).items():
            visited[arm].append(v[rows])
            bought[arm].append(b[rows])
    months = np.concatenate(months_all)
    v = {arm: np.concatenate(x) for arm, x in visited.items()}
    b = {arm: np.concatenate(x) for arm, x in bought.items()}
    stats: dict[str, float] = {}
    buckets = [("", np.ones(len(months), dtype=bool))] + [
        (f"/recency_{lo}_{hi}", (months >= lo) & (months <= hi)) for lo, hi in RECENCY_BUCKETS
    ]
    for suffix, who in buckets:
        count = max(int(who.sum()), 1)
        for arm in ("no_email", "email"):
            stats[f"hillstrom/visit_rate/{arm}{suffix}"] = float(v[arm][who].sum() / count)
            stats[f"hillstrom/conversion_rate/{arm}{suffix}"] = float(b[arm][who].sum() / count)
        stats[f"hillstrom/visit_lift{suffix}"] = (
            stats[f"hillstrom/visit_rate/email{suffix}"]
            - stats[f"hillstrom/visit_rate/no_email{suffix}"]
        )
        stats[f"hillstrom/customers{suffix}"] = float(who.sum())
    return stats


PROTOCOLS: dict[str, Callable[[Setup, int, int], dict[str, float]]] = {
    "levels": levels,
    "varied_mix": varied_mix,
    "volume": volume,
    "recovery": recovery,
    "time_of_day": time_of_day,
    "urgency": urgency,
    "bank_contacts": bank_contacts,
    "hillstrom": hillstrom,
}
"""every simulated protocol, by name"""


def statistic_names() -> list[str]:
    """Every statistic the simulated protocols report (what a targets file may name)."""
    names = [f"email/{name}" for name in LEVELS] + [f"email_mix/{name}" for name in LEVELS]
    names += ["email_mix/open_rate_vs_summary"]
    for k in range(1, 8):
        names += [
            f"volume/clicks_per_message/{k}",
            f"volume/clicks_per_client_week/{k}",
            f"volume/unsubscribes_per_message/{k}",
            f"volume/complaints_per_message/{k}",
        ]
    names += [
        "volume/per_message_7_vs_1",
        "volume/total_7_vs_1",
        "volume/last_step_vs_first_step",
        "volume/unsubscribes_per_message_7_vs_4",
        "volume/complaints_per_message_7_vs_4",
    ]
    names += [f"recovery/second_vs_first/{g}" for g in GAPS] + ["recovery/28_vs_1"]
    names += [f"time_of_day/push_click_rate/{s}" for s in SLOT_KEYS]
    names += ["time_of_day/push_peak_slot", "time_of_day/push_evening_vs_midday"]
    names += [
        "urgency/open_ratio",
        "urgency/click_ratio",
        "urgency/unsubscribe_ratio",
        "urgency/unsubscribes_rise_more",
    ]
    names += ["bank/success_rate", "bank/success_rate/contact_1"]
    names += [f"bank/relative_success/contact_{k}" for k in (*range(2, 10), "10plus")]
    names += ["bank/decline_1_to_10plus"]
    names += hillstrom_statistic_names()
    names += [
        f"hillstrom/customers{s}" for s in ["", *(f"/recency_{a}_{b}" for a, b in RECENCY_BUCKETS)]
    ]
    return names
