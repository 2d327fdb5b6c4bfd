"""The outcome join (loop/join.py): a simulated firm's decisions and export give the logged
dataset read_logs accepts, every event counted once, the window, the default outcome, review."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from agents.heuristics import SegmentRules
from envs.config import load_setup
from envs.core import CadenceCore
from envs.reward import observable_value
from envs.spaces import JOINT_ACTIONS, multi_to_flat
from evaluation.logs import read_logs
from evaluation.record import LOG_CLIENT_OFFSET, uniform_draw
from loop.events import validate_export
from loop.features import build_features
from loop.join import JoinError, attribute_events, join_outcomes, write_joined
from loop.review import OUTCOME_SCHEMA, REVIEW_RULES, review_queue, review_reasons
from loop.simulated import ExportRecorder
from serve.decisions import decision_frame
from serve.guards import Guards
from serve.onnx_export import build_manifest
from simulate.world import OUTCOMES

SEEN = tuple(o for o in OUTCOMES if o not in ("calm_click", "anxious_click"))


def simulate_decisions(n=300, days=12, seed=3, epsilon=0.2, approve=0.5, reject=0.25):
    """A simulated firm deciding every day with epsilon-exploration over the allowed actions,
    its held sends reviewed (approved, rejected or left to expire; only approved ones go out):
    (export with decision ids on its sends, decision log, review outcomes, the simulator's
    outcomes per client-day)."""
    setup = load_setup(overrides=["env.horizon_days=90"])
    core = CadenceCore(setup, n, autoreset=False, client_id_offset=LOG_CLIENT_OFFSET)
    obs = core.reset(seed)
    recorder = ExportRecorder(core)
    guards = Guards(build_manifest("segment_rules", "argmax", None, None, None))
    base, rng = SegmentRules(), np.random.default_rng(seed)
    gone = np.zeros(n, dtype=bool)
    decisions, reviews, truth = [], [], []
    for day in range(days):
        masks = core.joint_masks()
        own = multi_to_flat(np.asarray(base.act(obs, masks), dtype=np.int64))
        chosen = np.where(rng.random(n) < epsilon, uniform_draw(masks, rng), own)
        propensity = (1 - epsilon) * (chosen == own) + epsilon / masks.sum(axis=1)
        action = JOINT_ACTIONS[chosen]
        flagged = guards.needs_review(obs, action)
        draw = rng.random(n)
        verdict = np.where(
            draw < approve, "approved", np.where(draw < approve + reject, "rejected", "expired")
        )
        live = np.flatnonzero(~gone)
        frame = decision_frame(
            client_id=core.world.client_id[live],
            day=day,
            action=action[live],
            propensity=propensity[live],
            policy_version="sha256:test",
            exploration=f"epsilon={epsilon}",
            mode="serve",
            policy_action=JOINT_ACTIONS[own][live],
            policy_propensity=np.ones(len(live)),
            needs_review=flagged[live],
            allowed_actions=masks.sum(axis=1)[live],
        )
        decisions.append(frame)
        held = live[flagged[live]]
        reviews.append(
            pl.DataFrame(
                {
                    "decision_id": frame.filter(pl.col("needs_review"))["decision_id"],
                    "outcome": verdict[held],
                    "reviewed_day": np.where(verdict[held] == "expired", day + 2, day),
                },
                schema=OUTCOME_SCHEMA,
            )
        )
        delivered = action.copy()
        delivered[held[verdict[held] != "approved"]] = 0
        delivered[gone] = 0
        result = core.step(delivered)
        recorder.record(delivered, result)
        truth.append(
            pl.DataFrame(
                {"client_id": core.world.client_id[live].astype(np.int64), "day": day}
                | {o: result.outcomes[o][live] for o in SEEN}
            )
        )
        gone |= result.outcomes["churned"]
        obs = result.obs
    log = pl.concat(decisions)
    export = recorder.export()
    sent_ids = export.sends.join(
        log.select(pl.col("client_id").cast(pl.UInt64), "day", pl.col("decision_id").alias("_id")),
        on=["client_id", "day"],
        how="left",
    ).select(pl.exclude("decision_id", "_id"), pl.col("_id").alias("decision_id"))
    export = validate_export(
        type(export)(**(export.tables() | {"sends": sent_ids.select(export.sends.columns)}))
    )
    return export, log, pl.concat(reviews), pl.concat(truth)


@pytest.fixture(scope="module")
def firm():
    return simulate_decisions()


def test_one_day_window_gives_the_simulators_own_outcomes_and_reward(firm):
    export, log, reviews, truth = firm
    frame, summary = join_outcomes(export, log, reviews, window_days=1, seed=3)
    got = frame.join(truth, on=["client_id", "day"], how="left", suffix="_sim")
    for outcome in SEEN:
        assert (got[outcome] == got[f"{outcome}_sim"]).all(), outcome
    weights = load_setup(reward="observable").reward
    expected = observable_value(
        {o: got[f"{o}_sim"].to_numpy() for o in SEEN} | {"violation": np.zeros(got.height)},
        weights,
    )
    np.testing.assert_allclose(got["reward"].to_numpy(), expected)
    assert not frame["calm_click"].any() and not frame["anxious_click"].any()
    assert summary.events["late"] == 0 and summary.rows == frame.height


def test_every_event_counted_once_whatever_the_window(firm):
    export, log, _, _ = firm
    span = export.events.filter(pl.col("day").is_between(0, 11))
    for window in (1, 3, 5):
        events = attribute_events(export, log, window)
        assert events.height == span.height  # each event once, with at most one decision
        counted = events.filter(pl.col("decision_id").is_not_null())
        assert counted["why"].is_in(["send", "latest send", "decision"]).all()


def test_window_leaves_late_events_out_and_later_decisions_pending(firm):
    export, log, reviews, _ = firm
    # a click 4 days after its send: late under a 3-day window, counted under a 5-day one
    send = export.sends.filter(pl.col("day") == 2).row(0, named=True)
    late = pl.DataFrame(
        {
            "client_id": [send["client_id"]],
            "day": [6],
            "kind": ["click"],
            "channel": [send["channel"]],
            "send_id": [send["send_id"]],
        }
    )
    events = pl.concat([export.events, late.cast(export.events.schema)])
    moved = validate_export(type(export)(**(export.tables() | {"events": events})))
    short = attribute_events(moved, log, 3)
    assert short["why"][-1] == "late" and short["decision_id"][-1] is None
    long = attribute_events(moved, log, 5)
    assert long["decision_id"][-1] == send["decision_id"]
    frame, summary = join_outcomes(moved, log, reviews, window_days=3)
    assert frame["day"].max() == 11 - 2  # days 10 and 11 still have their window open
    assert summary.pending == log.filter(pl.col("day") >= 10).height
    assert summary.events["late"] == 1


def test_no_event_is_the_default_outcome(firm):
    export, log, reviews, _ = firm
    frame, _ = join_outcomes(export, log, reviews, window_days=1)
    quiet = frame.filter(~pl.any_horizontal(SEEN))
    assert quiet.height > 0 and (quiet["reward"] == 0).all()
    bare = frame.filter(pl.col("sent") & ~pl.any_horizontal([o for o in SEEN if o != "sent"]))
    assert bare.height > 0 and np.allclose(bare["reward"].to_numpy(), -0.05)


def test_review_outcomes_exclude_overrides_and_scale_approved_propensities(firm):
    export, log, reviews, _ = firm
    frame, summary = join_outcomes(export, log, reviews, window_days=1)
    counts = dict(reviews.group_by("outcome").len().iter_rows())
    assert summary.approved == counts["approved"] > 0
    assert summary.overridden == counts["rejected"] + counts["expired"]
    rate = counts["approved"] / reviews.height
    assert summary.approval_rate == pytest.approx(rate)
    overridden = reviews.filter(pl.col("outcome") != "approved")["decision_id"]
    assert not frame["decision_id"].is_in(overridden.implode()).any()
    approved = frame.filter(pl.col("review") == "approved")
    assert approved.height == counts["approved"]
    np.testing.assert_allclose(approved["pscore"], approved["decision_propensity"] * rate)
    plain = frame.filter(pl.col("review").is_null())
    assert (plain["pscore"] == plain["decision_propensity"]).all()
    # each row carries its decision's mode (promotion's shadow-start check reads it)
    modes = frame.join(log.select("decision_id", pl.col("mode").alias("logged")), on="decision_id")
    assert modes.height == frame.height and (modes["mode"] == modes["logged"]).all()
    # a held decision that went out with no approval on record is refused
    with pytest.raises(JoinError, match=r"held for review and not approved \(no outcome\)"):
        join_outcomes(export, log, None, window_days=1)


def test_held_decisions_without_outcome_expire_after_the_review_window(firm):
    export, log, reviews, _ = firm
    unsent = reviews.filter(pl.col("outcome") != "approved")["decision_id"]
    approved = reviews.filter(pl.col("outcome") == "approved")
    _, summary = join_outcomes(export, log, approved, window_days=1, review_window_days=2)
    late = log.filter(pl.col("decision_id").is_in(unsent.implode()) & (pl.col("day") + 2 > 11))
    assert summary.pending_review == late.height > 0
    assert summary.overridden == unsent.len() - late.height


def test_a_send_of_a_rejected_decision_is_refused(firm):
    export, log, reviews, _ = firm
    approved = reviews.filter(pl.col("outcome") == "approved")["decision_id"][0]
    flipped = reviews.with_columns(
        pl.when(pl.col("decision_id") == approved)
        .then(pl.lit("rejected"))
        .otherwise(pl.col("outcome"))
        .alias("outcome")
    )
    with pytest.raises(
        JoinError, match=f"carries decision {approved}, which was held for review and not approved"
    ):
        join_outcomes(export, log, flipped, window_days=1)


def test_joined_log_is_read_by_read_logs(firm, tmp_path):
    export, log, reviews, _ = firm
    frame, _ = join_outcomes(export, log, reviews, window_days=3, seed=3)
    path = write_joined(frame, tmp_path / "joined.parquet")
    logs = read_logs(path)
    assert logs.height == frame.height and set(logs["seed"]) == {3}
    assert logs.select(pl.struct("client_id", "day").is_unique().all()).item()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e, d: (e, pl.concat([d, d.head(1)])), "decision id|two decisions"),
        (
            lambda e, d: (e, d.with_columns(pl.col("client_id") + 10**9)),
            "column 'client_id', row 0: client .* is not in the export's clients table",
        ),
        (
            lambda e, d: (
                e,
                d.with_columns(
                    pl.when(pl.col("a_slot") > 0)
                    .then(pl.lit("education"))
                    .otherwise(pl.col("content"))
                    .alias("content")
                ),
            ),
            "content .* but its decision .* chose 'education'",
        ),
    ],
)
def test_refusals_name_the_table_column_and_row(firm, change, message):
    export, log, reviews, _ = firm
    export, log = change(export, log)
    with pytest.raises(JoinError, match=message):
        join_outcomes(export, log, reviews, window_days=1)


def test_a_window_of_zero_days_is_refused(firm):
    export, log, reviews, _ = firm
    with pytest.raises(JoinError, match="window_days must be a whole number of days >= 1, got 0"):
        join_outcomes(export, log, reviews, window_days=0)


def test_every_decision_the_runtime_holds_has_a_reason_from_the_manifests_rules(firm):
    export, log, _, _ = firm
    manifest = build_manifest("segment_rules", "argmax", None, None, None)
    assert {k: tuple(v) for k, v in manifest["review_rules"].items()} == REVIEW_RULES
    days = sorted(log.filter(pl.col("needs_review"))["day"].unique().to_list())
    queue = review_queue(log, {day: build_features(export, day) for day in days})
    assert queue.height == log["needs_review"].sum() > 0
    assert queue["reasons"].null_count() == 0
    unflagged = log.filter(~pl.col("needs_review") & (pl.col("day") == days[0]))
    assert (
        review_reasons(unflagged, build_features(export, days[0])).null_count() == unflagged.height
    )
