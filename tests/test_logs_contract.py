"""The logged-data contract equals the serving contract: a log that breaks the guardrails or the
consent it was made under, or the exactness serving demands of its features, is refused naming
rule, column and first row; ``day`` lies within the documented horizon; a Parquet file is refused
from its metadata when it holds more rows than allowed, before anything is decoded."""

from __future__ import annotations

import os

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from agents.heuristics import HEURISTICS
from envs.config import GuardrailConfig, load_setup
from envs.features import FEATURE_NAMES
from envs.masks import MaskRules, is_allowed, mask_inputs
from envs.spaces import JOINT_ACTIONS
from evaluation.logs import (
    MAX_DAY,
    MAX_ROWS,
    LogError,
    guardrail_breaches,
    read_logs,
    validate,
    write_logs,
)
from evaluation.record import log_policy
from serve.guards import Guards
from simulate.labels import CHANNELS, TONES


@pytest.fixture(scope="module")
def log() -> pl.DataFrame:
    """Three weeks of segment_rules with 30 % exploration on 500 clients (a valid log)."""
    return log_policy(HEURISTICS["segment_rules"](), load_setup(), 500, 21, seed=2, epsilon=0.3)


def _edit(frame: pl.DataFrame, where: pl.Expr, **values) -> pl.DataFrame:
    """``frame`` with the given columns set to the given values in the rows ``where`` selects."""
    return frame.with_columns(
        pl.when(where).then(pl.lit(v)).otherwise(pl.col(c)).cast(frame.schema[c]).alias(c)
        for c, v in values.items()
    )


def _first(frame: pl.DataFrame, where: pl.Expr) -> tuple[int, int]:
    """(first row, number of rows) that ``where`` selects."""
    rows = frame.with_row_index("_row").filter(where)["_row"]
    return int(rows[0]), len(rows)


def _refused(frame: pl.DataFrame, message: str) -> None:
    with pytest.raises(LogError, match=message):
        validate(frame)


def test_the_project_logger_writes_logs_the_contract_accepts(log, tmp_path):
    assert validate(log) is log
    assert guardrail_breaches(log).null_count() == log.height
    assert read_logs(write_logs(log, tmp_path / "logs.parquet")).equals(log)


def test_emails_to_clients_who_opted_out_of_email_are_refused_naming_row_and_rule(log):
    # the log: every day of every client flagged opted_out_email became an e-mail
    opted = pl.col("opted_out_email") == 1
    bad = _edit(log, opted, slot=2, tone=0, channel=0, content=0)
    row, count = _first(bad, opted)
    assert count > 10
    _refused(
        bad,
        rf"row {row} logs a send on email \(morning 08-11, portfolio_summary\) to client "
        rf"{bad['client_id'][row]} on day {bad['day'][row]} that the guardrails forbid "
        rf"\(opt-out\): the client opted out of email \(opted_out_email is 1\).*"
        rf"\({count:,} rows break this rule\)",
    )


def test_tier_zero_rows_carrying_goal_or_engagement_features_are_refused(log):
    tier0 = pl.col("consent_tier_0") == 1
    row, count = _first(log, tier0)
    assert count > 10 and log.filter(tier0)["goal_saver_debt"].sum() == 0
    _refused(
        _edit(log, tier0, goal_saver_debt=1.0),
        rf"feature 'goal_saver_debt' is 1.0 in row {row}, but the client's consent tier 0 does "
        rf"not allow it \(tier 1 needed\).*\({count:,} rows break this rule\)",
    )
    _refused(
        _edit(log, tier0, ema_open_email=0.4),
        rf"feature 'ema_open_email' is 0.4\d* in row {row}, but the client's consent tier 0 .*"
        r"\(tier 3 needed\)",
    )
    tier2 = pl.col("consent_tier_2") == 1
    _refused(
        _edit(log, tier2, ema_click_tone_urgent=0.5),
        rf"feature 'ema_click_tone_urgent' is 0.5 in row {_first(log, tier2)[0]}, but the "
        r"client's consent tier 2",
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"opted_out_email": 0.5}, "feature 'opted_out_email' is 0.5 in row 3; a flag must be"),
        ({"declared_slot_late": 0.999}, "feature 'declared_slot_late' is 0.99.* in row 3; a flag"),
        (
            {"sent_7d_email": 2.5},
            "feature 'sent_7d_email' is 2.5 in row 3; a count must be a whole number",
        ),
        ({"urgent_7d": 0.25}, "feature 'urgent_7d' is 0.25 in row 3; a count must be a whole"),
        (
            {f"weekday_{d}": 1.0 for d in ("mon", "tue")},
            r"features weekday_\* have 2 set in row 3; exactly one must be",
        ),
        ({f"weekday_{d}": 0.0 for d in ("mon",)}, r"features weekday_\* have 0 set in row 3"),
        (
            {f"consent_tier_{k}": 0.0 for k in range(4)},
            r"features consent_tier_\* have 0 set in row 3; exactly one must be",
        ),
        (
            {"consent_tier_0": 1.0, "consent_tier_3": 1.0},
            r"features consent_tier_\* have 2 set in row 3",
        ),
        (
            {"goal_retirement": 1.0, "goal_saver_debt": 1.0, "consent_tier_0": 0.0}
            | {"consent_tier_1": 1.0, "consent_tier_2": 0.0, "consent_tier_3": 0.0},
            r"features goal_\* have 2 set in row 3; at most 1 may be",
        ),
        (
            {"market_stress": float("nan")},
            r"feature 'market_stress' is nan in row 3; allowed 0..10",
        ),
        ({"sent_30d": float("inf")}, r"feature 'sent_30d' is inf in row 3; allowed 0..30"),
        ({"day": 10**9}, r"day is 1000000000 in row 3; days lie in 0..3660"),
        ({"day": -1}, r"day is -1 in row 3; days lie in 0..3660"),
    ],
)
def test_inexact_features_and_days_beyond_the_horizon_are_refused_naming_row_and_rule(
    log, values, message
):
    # row 3 is a day-0 client (a Monday); the edit makes it break exactly the named rule
    _refused(_edit(log, pl.int_range(pl.len()) == 3, **values), message)


def test_a_firms_log_with_integer_flags_and_counts_is_read_as_serving_reads_it(log):
    from evaluation.logs import COUNTS, FLAGS

    whole = log.with_columns(pl.col(*FLAGS, *COUNTS).cast(pl.Int64))
    assert validate(whole) is whole
    _refused(
        _edit(whole, pl.int_range(pl.len()) == 5, opted_out_sms=2),
        "feature 'opted_out_sms' is 2.0 in row 5; allowed 0..1",
    )


def _one_send(log: pl.DataFrame, tier: int, slot: int, channel: int, content: int, **features):
    """``log`` with its first row of the given consent tier turned into the named send, the
    client's sends in 7 days and opt-outs set by ``features`` (all others 0)."""
    row, _ = _first(log, pl.col(f"consent_tier_{tier}") == 1)
    base = {f"sent_7d_{c}": 0.0 for c in CHANNELS} | {f"opted_out_{c}": 0.0 for c in CHANNELS}
    at = pl.int_range(pl.len()) == row
    edited = _edit(log, at, slot=slot, tone=0, channel=channel, content=content)
    return _edit(edited, at, **(base | features)), row


@pytest.mark.parametrize(
    ("send", "message"),
    [
        (
            {"tier": 1, "slot": 6, "channel": 1, "content": 0},
            r"send on push \(late 20-23, portfolio_summary\) .* \(quiet hours\): late 20-23 is quiet "
            "hours for push",
        ),
        (
            {"tier": 1, "slot": 1, "channel": 2, "content": 1},
            r"send on sms \(early 06-08, education\) .* \(quiet hours\): early 06-08 is quiet hours",
        ),
        (
            {"tier": 1, "slot": 2, "channel": 2, "content": 0, "sent_7d_sms": 2.0},
            r"\(channel cap\): the sms cap of 2 a week was reached \(sent_7d_sms is 2\)",
        ),
        (
            {"tier": 1, "slot": 2, "channel": 0, "content": 0}
            | {"sent_7d_email": 3.0, "sent_7d_push": 2.0},
            r"\(weekly cap\): the weekly cap of 5 messages was reached \(sent_7d_\* sum to 5\)",
        ),
        (
            {"tier": 0, "slot": 2, "channel": 0, "content": 2},
            r"\(content tier\): consent tier 0 does not allow product_offer \(tier 1 needed\)",
        ),
        (
            {"tier": 3, "slot": 3, "channel": 1, "content": 0, "opted_out_push": 1.0},
            r"\(opt-out\): the client opted out of push \(opted_out_push is 1\)",
        ),
    ],
)
def test_a_logged_send_past_a_guardrail_is_refused_naming_row_and_rule(log, send, message):
    bad, row = _one_send(log, **send)
    _refused(bad, rf"row {row} logs a .*{message}")


def test_the_rules_are_the_logs_own_guardrails():
    # a firm whose push has no quiet hours logs late pushes; under its own rules they are sends
    # it was allowed to make, under the project's default rules they are not
    setup = load_setup(overrides=["env.guardrails.quiet_hours.push=[]"])
    policy = HEURISTICS["batch_and_blast"]()
    frame = log_policy(policy, setup, 300, 3, seed=0, epsilon=1.0)
    late_push = (pl.col("slot") == 6) & (pl.col("channel") == 1)
    assert frame.filter(late_push).height > 0
    assert validate(frame, guardrails=setup.env.guardrails) is frame
    with pytest.raises(LogError, match=r"\(quiet hours\): late 20-23 is quiet hours for push"):
        validate(frame)


def test_guardrail_breaches_agree_with_the_env_masks_and_the_serving_guards(log):
    # every (slot, channel, content) send on every logged state, judged three ways
    from serve.onnx_export import build_manifest

    rng = np.random.default_rng(0)
    states = log.sample(3000, with_replacement=True, seed=1)
    actions = JOINT_ACTIONS[rng.integers(1, len(JOINT_ACTIONS), states.height)]
    states = states.with_columns(
        pl.Series(c, actions[:, i]) for i, c in enumerate(("slot", "tone", "channel", "content"))
    )
    obs = states.select(FEATURE_NAMES).to_numpy()
    rules = MaskRules.from_config(GuardrailConfig())
    env_allowed = is_allowed(rules, actions, *mask_inputs(obs))
    ours = guardrail_breaches(states)
    assert 0 < ours.null_count() < states.height
    assert np.array_equal(ours.is_null().to_numpy(), env_allowed)
    serving = Guards(build_manifest("x", "argmax", None, None, None)).blocked_reason(obs, actions)
    words = {
        "opt-out": "opted out",
        "weekly cap": "weekly cap",
        "channel cap": "a week reached",
        "quiet hours": "quiet hours",
        "content tier": "does not allow",
    }
    for rule, reason in zip(ours.to_list(), serving, strict=True):
        assert (rule is None) == (reason is None)
        assert rule is None or words[rule] in reason, (rule, reason)
    assert TONES  # every tone is allowed: the tone never decides a breach


def test_a_parquet_file_with_more_rows_than_allowed_is_refused_before_it_is_decoded(log, tmp_path):
    # The file was a constant-valued Parquet: 2.6 MB on disk, 1.7 GB once decoded. The
    # row count must be read from the footer before any column is decoded: here every byte
    # between the magic number and the footer is garbage, so decoding anything would fail with
    # another error than the cap's.
    path = write_logs(log, tmp_path / "bomb.parquet")
    raw = bytearray(path.read_bytes())
    footer = len(raw) - 8 - int.from_bytes(raw[-8:-4], "little")
    raw[4:footer] = b"\xff" * (footer - 4)
    path.write_bytes(bytes(raw))
    assert pq.ParquetFile(path).metadata.num_rows == log.height  # the footer is intact
    with pytest.raises(LogError, match=rf"{log.height:,} rows, more than the 100 allowed"):
        read_logs(path, max_rows=100)
    with pytest.raises(Exception) as decoded:  # within the cap the garbage is decoded, and fails
        read_logs(path, max_rows=log.height)
    assert "allowed" not in str(decoded.value)
    # the cap is an argument: a small valid log is refused past it and read within it
    small = write_logs(log, tmp_path / "logs.parquet")
    with pytest.raises(LogError, match=rf"{log.height:,} rows, more than the 100 allowed"):
        read_logs(small, max_rows=100)
    assert read_logs(small, max_rows=log.height).height == log.height
    with pytest.raises(ValueError, match="max_rows must be a positive whole number"):
        read_logs(small, max_rows=0)


def test_the_cap_is_checked_before_the_schema(tmp_path):
    # one column of zeros: refused by its row count, not by the columns it lacks
    path = tmp_path / "zeros.parquet"
    pl.DataFrame({"day": np.zeros(MAX_ROWS + 1, dtype=np.int8)}).write_parquet(path)
    with pytest.raises(LogError, match=f"{MAX_ROWS + 1:,} rows"):
        read_logs(path)
    fifo = tmp_path / "fifo.parquet"
    os.mkfifo(fifo)
    with pytest.raises(LogError, match="not a regular file"):
        read_logs(fifo)


def test_the_logger_keeps_within_the_horizon():
    with pytest.raises(ValueError, match=f"days must lie in 1..{MAX_DAY + 1}"):
        log_policy(HEURISTICS["segment_rules"](), load_setup(), 10, MAX_DAY + 2, seed=0)


def test_estimates_hold_a_log_to_the_guardrails_of_their_setup():
    """A firm with looser caps estimates on its own log under its own rules; the project's
    defaults refuse the same log by the rule it breaks."""
    from evaluation.offline import estimate

    looser = load_setup(
        overrides=["env.guardrails.max_per_week=7", "env.guardrails.channel_caps.email=7"]
    )
    frame = log_policy(HEURISTICS["batch_and_blast"](), looser, 150, 14, seed=4, epsilon=0.3)
    with pytest.raises(LogError, match="cap"):
        estimate(frame, [HEURISTICS["segment_rules"]()], load_setup(), n_boot=10)
    (result,) = estimate(frame, [HEURISTICS["segment_rules"]()], looser, n_boot=10)
    assert result.policy == "segment_rules"
