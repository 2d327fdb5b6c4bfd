"""The simulator writes a firm's export: every rollout can emit the tables of
:mod:`loop.events` and nothing latent.

:class:`ExportRecorder` watches a :class:`envs.core.CadenceCore` from outside: after each step
it reads the actions the core was given and the outcomes it returned, and writes what a firm's
systems would have recorded: the clients it onboarded (goal, declared risk, preferred contact
time, consent tier) and the visit the firm's log holds from before, the messages delivered, the
opens, clicks, conversions, visits, unsubscribes (with their channel), complaints, panic trades
(``harmful``) and account closures (``churned``), and the day's market stress. Trust, anxiety,
fatigue, novelty, the calm/anxious label of a click, susceptibility, literacy and the protected
attributes never leave the simulator.

:func:`simulate_export` runs a policy with the recorder and hands each day's observations (what
the env gave the policy) to a callback, which is how the skew test compares them with the
feature builder's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from envs.config import Setup
from envs.core import CadenceCore, StepResult
from loop.events import KINDS, TABLES, Export, dtype_of, empty, validate_export
from simulate.world import NEVER, VISIT_WINDOW

if TYPE_CHECKING:
    from agents.base import Policy

_EVENT_OUTCOMES = {
    "open": "opened",
    "click": "clicked",
    "panic_trade": "harmful",
    "unsubscribe": "unsubscribed",
    "complaint": "complaint",
}
"""event kind -> the world outcome of a delivered message it records (each answers its send)"""


def _frame(table: str, columns: dict[str, np.ndarray]) -> pl.DataFrame:
    """``table`` from arrays (label columns as label indices), in canonical types."""
    out = {}
    for column in TABLES[table]:
        values = columns.get(column.name)
        if values is None:
            out[column.name] = pl.Series(column.name, [None] * _length(columns), dtype_of(column))
            continue
        if column.kind == "text":  # None marks "none"
            out[column.name] = pl.Series(column.name, list(values), dtype_of(column))
            continue
        series = pl.Series(column.name, values)
        if not column.required:  # -1 marks "none"
            series = series.set(series < 0, None)
        if column.kind == "label":
            out[column.name] = series.cast(pl.UInt32).replace_strict(
                list(range(len(column.labels))), list(column.labels), return_dtype=dtype_of(column)
            )
        else:
            out[column.name] = series.cast(dtype_of(column))
    return pl.DataFrame(out)


def _length(columns: dict[str, np.ndarray]) -> int:
    return len(next(iter(columns.values())))


class ExportRecorder:
    """Record a :class:`~envs.core.CadenceCore` rollout as a firm's export.

    Args:
        core: a core just reset (its clients are onboarded on ``core.day``).

    Call :meth:`record` after every ``core.step(actions)`` with the same actions and the
    step's result, then :meth:`export` for the tables. Client ids are the world's; send ids
    count from 0; a send carries the decision id :meth:`record` is given for its row, none
    where it is given none (the simulator's own policies log none).
    """

    def __init__(self, core: CadenceCore) -> None:
        if core.world is None:
            raise RuntimeError("ExportRecorder needs a core that has been reset")
        self.core = core
        self._clients: list[pl.DataFrame] = []
        self._sends: list[dict[str, np.ndarray]] = []
        self._events: list[dict[str, np.ndarray]] = []
        self._market: list[tuple[int, float]] = []
        self._next_send = 0
        self._ids_before = core.world.client_id.copy()
        """the client in each row during the day being stepped"""
        self._onboard(np.arange(core.n), core.day)
        self._record_market(core.day)

    def _record_market(self, day: int) -> None:
        self._market.append((day, float(self.core.world.schedule.effects(day).stress)))

    def _onboard(self, rows: np.ndarray, day: int) -> None:
        """Clients now in ``rows``, onboarded on ``day``, and the visits the firm's visit log
        holds for them (their last visit before onboarding)."""
        world = self.core.world
        traits = world.traits
        ids = world.client_id[rows]
        self._clients.append(
            _frame(
                "clients",
                {
                    "client_id": ids,
                    "onboarding_day": np.full(len(rows), day),
                    "consent_tier": traits.consent_tier[rows],
                    "goal": traits.segment[rows],
                    "declared_risk": traits.declared_risk[rows],
                    "preferred_slot": traits.declared_slot[rows],
                },
            )
        )
        # The visit log's bits (bit i: a visit i + 1 days before `day`) and the last visit day.
        bits = (world.visit_log[rows, None] >> np.arange(VISIT_WINDOW, dtype=np.uint32)) & 1
        who, bit = np.nonzero(bits)
        last = world.last_visit_day[rows]
        older = np.flatnonzero(
            (last > NEVER) & ~np.isin(np.arange(len(rows)), who[(day - 1 - bit) == last[who]])
        )
        self._add_events(
            "visit",
            np.concatenate([ids[who], ids[older]]),
            np.concatenate([day - 1 - bit, last[older]]),
        )

    def _add_events(
        self,
        kind: str,
        client_id: np.ndarray,
        day: np.ndarray | int,
        send_id: np.ndarray | None = None,
        channel: np.ndarray | None = None,
    ) -> None:
        n = len(client_id)
        self._events.append(
            {
                "client_id": np.asarray(client_id, dtype=np.uint64),
                "day": np.broadcast_to(np.asarray(day, dtype=np.int64), (n,)),
                "kind": np.full(n, KINDS.index(kind)),
                "channel": np.full(n, -1) if channel is None else np.asarray(channel),
                "send_id": np.full(n, -1) if send_id is None else np.asarray(send_id),
            }
        )

    def record(
        self,
        actions: np.ndarray,
        result: StepResult,
        decision_ids: np.ndarray | None = None,
    ) -> None:
        """Record the day just stepped: ``actions`` (N, 4) as given to ``core.step`` and its
        ``result``. Only delivered messages become sends (a blocked or undeliverable action
        leaves no trace, as at a firm). ``decision_ids``: (N,) the decision id behind each row's
        action (a str, or None where no logged decision made it), written on its send."""
        core, out = self.core, result.outcomes
        day = core.day - 1
        ids = self._ids_before
        actions = np.asarray(actions)
        rows = np.flatnonzero(out["sent"])
        send_id = self._next_send + np.arange(len(rows))
        self._next_send += len(rows)
        sent_actions = actions[rows]
        ids_of_sends = (
            [None] * len(rows)
            if decision_ids is None
            else np.asarray(decision_ids, dtype=object)[rows].tolist()
        )
        self._sends.append(
            {
                "send_id": send_id,
                "client_id": ids[rows],
                "day": np.full(len(rows), day),
                "slot": sent_actions[:, 0] - 1,
                "tone": sent_actions[:, 1],
                "channel": sent_actions[:, 2],
                "content": sent_actions[:, 3],
                "decision_id": ids_of_sends,
            }
        )
        channel = sent_actions[:, 2]
        for kind, outcome in _EVENT_OUTCOMES.items():
            hit = out[outcome][rows]
            self._add_events(kind, ids[rows[hit]], day, send_id[hit], channel[hit])
        # a conversion or a visit answers the send when it followed its click
        send_of = np.full(core.n, -1)
        send_of[rows[out["clicked"][rows]]] = send_id[out["clicked"][rows]]
        for kind, outcome in (("conversion", "converted"), ("visit", "visited")):
            who = np.flatnonzero(out[outcome])
            self._add_events(kind, ids[who], day, send_of[who])
        self._add_events("account_closure", ids[out["churned"]], day)
        replaced = np.flatnonzero(core.world.client_id != ids)
        if replaced.size:
            self._onboard(replaced, core.day)
        self._ids_before = core.world.client_id.copy()
        self._record_market(core.day)

    def export(self) -> Export:
        """The tables recorded so far (not yet validated: :func:`loop.events.validate_export`)."""
        sends = [_frame("sends", s) for s in self._sends if len(s["send_id"])]
        events = [e for e in self._events if len(e["client_id"])]
        if events:
            merged = {k: np.concatenate([e[k] for e in events]) for k in events[0]}
            events_frame = _frame("events", merged)
        else:
            events_frame = empty("events")
        days, stress = zip(*self._market, strict=True)
        return Export(
            clients=pl.concat(self._clients),
            consents=empty("consents"),
            sends=pl.concat(sends) if sends else empty("sends"),
            events=events_frame.sort("day", "client_id", maintain_order=True),
            market=_frame("market", {"day": np.array(days), "stress": np.array(stress)}),
        )


def simulate_export(
    policy: Policy,
    setup: Setup,
    num_clients: int,
    days: int,
    seed: int,
    client_id_offset: int = 0,
    autoreset: bool = False,
    on_observation: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
) -> Export:
    """Run ``policy`` for ``days`` days on ``num_clients`` clients of ``seed`` and return the
    export a firm would hold (validated).

    Args:
        policy: any :class:`agents.base.Policy` (it acts on the env's observations and joint masks).
        setup: the configuration.
        num_clients: client slots.
        days: decision days recorded (calendar days 0..days-1).
        seed: the simulator seed.
        client_id_offset: added to every client id.
        autoreset: replace a client who closes the account by a new one (as training does); then
            ``setup.env.horizon_days`` must exceed ``days`` (a client leaving at the horizon
            has no event a firm would record).
        on_observation: called as ``on_observation(day, client_ids, obs)`` with each day's
            (N, OBS_DIM) observations the policy sees, for days 0..days (the last one after the
            last step).
    """
    if autoreset and setup.env.horizon_days <= days:
        raise ValueError(
            f"autoreset with env.horizon_days={setup.env.horizon_days} <= days={days} would "
            "replace clients at the horizon with no record of their leaving; set "
            f"env.horizon_days > {days}"
        )
    core = CadenceCore(setup, num_clients, autoreset=autoreset, client_id_offset=client_id_offset)
    obs = core.reset(seed)
    if policy.privileged:
        policy.bind(core)
    policy.start_rollout()
    recorder = ExportRecorder(core)
    churned = np.zeros(core.n, dtype=bool)
    for day in range(days):
        if on_observation is not None:
            on_observation(core.day, core.world.client_id.copy(), obs)
        actions = np.asarray(policy.act(obs, core.joint_masks()), dtype=np.int64)
        result = core.step(actions)
        recorder.record(actions, result)
        alive = ~churned
        policy.after_day(day, result.outcomes, alive)
        churned = (churned | result.outcomes["churned"]) & ~autoreset
        obs = result.obs
    if on_observation is not None:
        on_observation(core.day, core.world.client_id.copy(), obs)
    return validate_export(recorder.export(), "simulated export")
