"""The event export: what a simulated firm writes, how bad data is refused, consent changes."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from agents.heuristics import SegmentRules
from envs.config import load_setup
from envs.consent import MIN_TIER
from envs.features import FEATURE_NAMES
from loop.events import (
    TABLES,
    Export,
    ExportError,
    read_export,
    validate_export,
    write_export,
)
from loop.features import build_features, feature_matrix
from loop.simulated import simulate_export

SETUP = load_setup(overrides=["env.horizon_days=90"])
LATENT = ("trust", "anxiety", "fatigue", "novelty", "calm", "anxious", "susceptib", "literacy")


@pytest.fixture(scope="module")
def export() -> Export:
    return simulate_export(SegmentRules(), SETUP, num_clients=200, days=15, seed=2)


def test_the_simulated_export_holds_the_schema_and_nothing_latent(export):
    for name, frame in export.tables().items():
        assert frame.columns == [c.name for c in TABLES[name]]
        for column in frame.columns:
            assert not any(word in column for word in LATENT), (name, column)
    kinds = set(export.events["kind"].cast(pl.String).unique())
    assert {"open", "click", "visit"} <= kinds
    assert all(not any(w in k for w in LATENT) for k in kinds)
    assert export.sends.height > 0 and export.market.height == 16


def test_a_written_export_reads_back_the_same(export, tmp_path):
    write_export(export, tmp_path / "firm")
    back = read_export(tmp_path / "firm")
    for name, frame in export.tables().items():
        assert back.tables()[name].equals(frame), name


def test_csv_is_accepted(export, tmp_path):
    folder = tmp_path / "csv"
    folder.mkdir()
    for name, frame in export.tables().items():
        if name != "consents":  # an absent consents table means no changes
            frame.write_csv(folder / f"{name}.csv")
    back = read_export(folder)
    assert back.events.height == export.events.height
    assert back.consents.height == 0
    np.testing.assert_array_equal(
        feature_matrix(build_features(back, 10)), feature_matrix(build_features(export, 10))
    )


def _with(export: Export, table: str, frame: pl.DataFrame) -> Export:
    return Export(**{**export.tables(), table: frame})


def test_a_bad_label_is_refused_naming_file_column_and_row(export):
    sends = export.sends.with_columns(pl.col("channel").cast(pl.String))
    sends = sends.with_columns(
        pl.when(pl.int_range(pl.len()) == 7)
        .then(pl.lit("fax"))
        .otherwise("channel")
        .alias("channel")
    )
    with pytest.raises(ExportError, match=r"firm/sends: column 'channel', row 7: 'fax'.*email"):
        validate_export(_with(export, "sends", sends), "firm")


def test_an_event_of_an_unknown_client_is_refused(export):
    events = export.events.with_columns(
        pl.when(pl.int_range(pl.len()) == 3)
        .then(pl.lit(999_999_999, pl.UInt64))
        .otherwise("client_id")
        .alias("client_id")
    )
    with pytest.raises(ExportError, match=r"events: column 'client_id', row 3: client 999999999"):
        validate_export(_with(export, "events", events), "firm")


def test_an_unsubscribe_without_its_channel_is_refused(export):
    events = export.events.with_columns(
        pl.when(pl.col("kind") == "unsubscribe").then(None).otherwise("channel").alias("channel")
    )
    if not (export.events["kind"] == "unsubscribe").any():
        pytest.skip("no unsubscribe in this export")
    with pytest.raises(ExportError, match="an unsubscribe must name its channel"):
        validate_export(_with(export, "events", events), "firm")


def test_two_sends_on_one_client_day_are_refused(export):
    sends = pl.concat(
        [export.sends, export.sends.head(1).with_columns(send_id=pl.lit(10**9, pl.UInt64))]
    )
    with pytest.raises(ExportError, match="has two sends on day"):
        validate_export(_with(export, "sends", sends), "firm")


def test_a_bad_table_leaves_nothing_half_read(export, tmp_path):
    write_export(export, tmp_path / "firm")
    market = export.market.with_columns(stress=pl.lit(-1.0))
    market.write_parquet(tmp_path / "firm" / "market.parquet")
    with pytest.raises(ExportError, match=r"market: column 'stress', row 0: -1.0 is out of range"):
        read_export(tmp_path / "firm")


def test_a_table_over_the_row_cap_is_refused_from_its_footer(export, tmp_path):
    write_export(export, tmp_path / "firm")
    with pytest.raises(ExportError, match=r"clients.parquet: 200 rows, more than the 150 allowed"):
        read_export(tmp_path / "firm", max_rows=150)


def test_an_unknown_column_is_refused(export):
    clients = export.clients.with_columns(trust=pl.lit(0.5))
    with pytest.raises(ExportError, match="unknown column 'trust'"):
        validate_export(_with(export, "clients", clients), "firm")


def test_a_consent_change_gates_features_from_its_day_on(export):
    tier3 = export.clients.filter(pl.col("consent_tier") == 3)["client_id"][0]
    consents = pl.DataFrame(
        {"client_id": [tier3], "day": [8], "consent_tier": [0]},
        schema=export.consents.schema,
    )
    changed = validate_export(_with(export, "consents", consents))
    for day, tier in ((7, 3), (8, 0), (12, 0)):
        before = build_features(export, day).filter(pl.col("client_id") == tier3)
        after = build_features(changed, day).filter(pl.col("client_id") == tier3)
        expected = feature_matrix(before)[0] * (MIN_TIER <= tier)
        expected[7:11] = np.eye(4, dtype=np.float32)[tier]
        np.testing.assert_array_equal(feature_matrix(after)[0], expected, err_msg=f"day {day}")
    assert FEATURE_NAMES[7] == "consent_tier_0"
