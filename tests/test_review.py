"""Human review (loop/review.py, review.py): held decisions wait in a queue with their reasons,
go out only when approved, expire after the review window; the commands apply and refuse."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import polars as pl
import preloaded
import pytest

from envs.features import FEATURE_NAMES
from loop.review import (
    OUTCOME_SCHEMA,
    ReviewError,
    apply_reviews,
    read_outcomes,
    releasable,
    review_queue,
)
from serve.decisions import DecisionLog, decision_frame
from simulate.labels import CONTENTS, SEGMENTS, TONES

URGENT, CALM = TONES.index("urgent"), TONES.index("informative")
MARKET = CONTENTS.index("market_update")


def _decisions(day: int = 4) -> pl.DataFrame:
    """Four decisions of ``day``: an urgent send to a debt client (held), a calm send (not held),
    a market update under stress (held), a no-send (not held)."""
    actions = np.array([[2, URGENT, 0, 2], [2, CALM, 0, 1], [3, CALM, 0, MARKET], [0, 0, 0, 0]])
    return decision_frame(
        client_id=[1, 2, 3, 4],
        day=day,
        action=actions,
        propensity=np.full(4, 0.5),
        policy_version="sha256:test",
        exploration="epsilon=0.1",
        mode="serve",
        policy_action=actions,
        policy_propensity=np.ones(4),
        needs_review=np.array([True, False, True, False]),
        allowed_actions=np.full(4, 100),
        decision_id=["a", "b", "c", "d"],
    )


def _features() -> pl.DataFrame:
    values = {name: [0.0] * 4 for name in FEATURE_NAMES}
    values[f"goal_{SEGMENTS[SEGMENTS.index('saver_debt')]}"] = [1.0, 0.0, 0.0, 0.0]
    values["goal_growth_investor"] = [0.0, 1.0, 1.0, 1.0]
    values["market_stress"] = [0.0, 0.0, 1.5, 0.0]
    return pl.DataFrame({"client_id": [1, 2, 3, 4]} | values)


def _verdicts(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=OUTCOME_SCHEMA, orient="row")


def test_queue_holds_flagged_sends_with_their_reasons_and_deadline():
    queue = review_queue(_decisions(), {4: _features()}, window_days=2)
    assert queue["decision_id"].to_list() == ["a", "c"]
    assert queue["reasons"].to_list() == [
        "urgent tone to a saver_debt client",
        "market_update while markets are stressed (stress 1.5)",
    ]
    assert queue["deadline_day"].to_list() == [6, 6]
    decided = _verdicts([("a", "approved", 4)])
    assert review_queue(_decisions(), {4: _features()}, decided)["decision_id"].to_list() == ["c"]


def test_only_approved_held_sends_go_out_and_unreviewed_ones_expire():
    decisions = _decisions()
    outcomes = apply_reviews(
        decisions, read_outcomes(None), _verdicts([("a", "approved", 5)]), today=5
    )
    assert releasable(decisions, outcomes, 4)["decision_id"].to_list() == ["b"]
    assert releasable(decisions, outcomes, 5)["decision_id"].to_list() == ["a"]
    later = apply_reviews(decisions, outcomes, _verdicts([]), today=6)
    assert later.filter(pl.col("decision_id") == "c").row(0) == ("c", "expired", 6)
    assert releasable(decisions, later, 6).height == 0


@pytest.mark.parametrize(
    ("verdict", "message"),
    [
        (("zz", "approved", 4), "row 0: 'zz': no such decision in the decision log"),
        (("b", "approved", 4), "'b': this decision was not held for review"),
        (("a", "approved", 6), r"'reviewed_day', row 0: 6: on or after the decision's deadline"),
        (("a", "approved", 3), "a review cannot come before the decision's day"),
        (("a", "maybe", 4), "column 'outcome', row 0: 'maybe': allowed: approved, rejected"),
    ],
)
def test_a_broken_verdict_is_refused_by_column_and_row(verdict, message):
    with pytest.raises(ReviewError, match=message):
        apply_reviews(_decisions(), read_outcomes(None), _verdicts([verdict]), today=9)


def test_a_second_verdict_for_a_decided_decision_is_refused_the_same_one_accepted():
    decisions = _decisions()
    once = apply_reviews(decisions, read_outcomes(None), _verdicts([("a", "rejected", 4)]), 4)
    again = apply_reviews(decisions, once, _verdicts([("a", "rejected", 4)]), 4)
    assert again.equals(once)
    with pytest.raises(ReviewError, match="already has an outcome"):
        apply_reviews(decisions, once, _verdicts([("a", "approved", 5)]), 5)


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return preloaded.run(
        [sys.executable, script, *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow  # review.py processes: Hydra start-up
def test_review_command_applies_verdicts_and_refuses_in_one_line(tmp_path):
    log = tmp_path / "decisions"
    with DecisionLog(log) as writer:
        writer.append(_decisions())
    verdicts = tmp_path / "verdicts.csv"
    _verdicts([("a", "approved", 4)]).write_csv(verdicts)
    outcomes = tmp_path / "outcomes.parquet"
    done = _run(
        "review.py",
        "action=apply",
        f"decisions={log}",
        f"verdicts={verdicts}",
        f"outcomes={outcomes}",
        "today=7",
    )
    assert done.returncode == 0, done.stderr
    assert "recorded 2 outcomes (approved 1, expired 1)" in done.stdout
    assert sorted(read_outcomes(outcomes)["outcome"]) == ["approved", "expired"]
    _verdicts([("b", "approved", 4)]).write_csv(verdicts)
    refused = _run(
        "review.py", "action=apply", f"decisions={log}", f"verdicts={verdicts}", "today=7"
    )
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1
    assert "'b': this decision was not held for review" in refused.stderr
