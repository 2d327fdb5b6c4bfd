"""Decide one day for a whole client base from a firm's event export, exploring, and log it.

    python decide.py export_dir=exports/<run_id> events_dir=outputs/firm day=30
    python decide.py export_dir=exports/<run_id> events_dir=outputs/firm day=30 \\
        exploration.epsilon=0.1 exploration.seed=7 decision_log.dir=outputs/decisions \\
        sends_out=outputs/firm/sends-day30.parquet
    python decide.py --help                                   # every key, its default

The firm's export (``docs/events.md``) is read and validated (``loop.events.read_export``), the
observation of every client as of ``day`` is built by the one feature builder
(``loop.features.build_features``), and the guarded runtime decides every client in batches of
``batch_rows``, exploring as ``exploration.*`` says (``serve.choice.Exploration``). Every
decision goes to the decision log (``serve/decisions.py``) with its id, its exact propensity,
the policy version and the exploration setting. ``sends_out`` also writes the day's sends in the
export's ``sends`` format (``send_id`` numbered after the export's last, ``decision_id`` set),
ready to be appended to the firm's ``sends`` table. Sends flagged ``needs_review`` are written
like the others (the decision log marks them).

An export, an event export or a setting it cannot use ends it with one line on stderr naming
the problem and exit status 2.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import numpy as np
import polars as pl
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from experiment.process import as_typed, freeze_long_lived
from loop.events import TABLES, Export, dtype_of, read_export
from loop.features import build_features
from serve.decisions import DecisionLog, frame_of
from serve.files import write_atomic
from serve.http import ExplorationConfig
from serve.runtime import MAX_ROWS, PolicyRuntime
from simulate.labels import CHANNELS, CONTENTS, SLOT_KEYS, TONES


@dataclass
class DecideLogConfig:
    """``decision_log.*`` of ``python decide.py``."""

    dir: str = "outputs/decisions"
    """folder of the decision log (created if missing; appended to)"""
    rows_per_file: int = 100_000
    """decisions per file of the log"""


@dataclass
class DecideConfig:
    """What ``python decide.py`` reads (``key=value``; ``--help`` lists them)."""

    export_dir: str = MISSING
    """the policy's export folder (policy.onnx + manifest.json, written by export.py)"""
    events_dir: str = MISSING
    """the firm's event export (clients, consents, sends, events, market; docs/events.md)"""
    day: int = MISSING
    """the decision day (calendar days, 0 is a Monday); the export's rows before it count"""
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    """``exploration.epsilon``, ``exploration.temperature``, ``exploration.seed``"""
    decision_log: DecideLogConfig = field(default_factory=DecideLogConfig)
    """where the decisions are appended"""
    sends_out: str | None = None
    """write the day's sends here (Parquet, the export's sends columns); null: not written"""
    policy_version: str | None = None
    """what the log names as the policy (e.g. ``models:/cadence-policy/3``); null: the
    export's digest"""
    require_signature: bool = True
    """refuse an export without an HMAC signature (``false`` decides with an unsigned one)"""
    consent: str = "zero"
    """features a client's tier hides: ``zero`` them (``refuse`` would stop at the first)"""
    batch_rows: int = MAX_ROWS
    """clients decided per runtime call (bounds the memory of one call)"""


ConfigStore.instance().store(name="decide_schema", node=DecideConfig)


@dataclass
class DayDecided:
    """What :func:`decide_day` did."""

    clients: int
    """clients decided"""
    sends: pl.DataFrame
    """the day's sends, in the export's sends columns"""
    files: list[Path]
    """decision-log files written"""
    mean_propensity: float
    """mean propensity of the returned actions"""


def decide_day(cfg: DecideConfig, export: Export | None = None) -> DayDecided:
    """Decide ``cfg.day`` for every client of the event export (read from ``cfg.events_dir``
    unless given), append the decisions to the decision log and return the sends."""
    if cfg.batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {cfg.batch_rows}")
    runtime = PolicyRuntime.load(
        Path(cfg.export_dir),
        consent=cfg.consent,
        max_rows=cfg.batch_rows,
        require_signature=cfg.require_signature,
        exploration=cfg.exploration.setting(),
        policy_version=cfg.policy_version,
    )
    export = read_export(cfg.events_dir) if export is None else export
    features = build_features(export, cfg.day)
    if features.height == 0:
        raise ValueError(f"the event export has no client onboarded by day {cfg.day}")
    ids = features["client_id"].to_numpy().astype(np.int64)
    x = features.select(runtime.feature_names).to_numpy()
    log = DecisionLog(cfg.decision_log.dir, rows_per_file=cfg.decision_log.rows_per_file)
    sends, propensity = [], []
    with log:
        for start in range(0, len(ids), cfg.batch_rows):
            rows = slice(start, start + cfg.batch_rows)
            decisions = runtime.decide(x[rows], explain=False, client_id=ids[rows], day=cfg.day)
            frame = frame_of(decisions)
            log.append(frame)
            sends.append(frame.filter(pl.col("a_slot") > 0))
            propensity.append(decisions.propensity)
    first_id = int(export.sends["send_id"].max() or 0) + 1 if export.sends.height else 0
    return DayDecided(
        clients=len(ids),
        sends=sends_table(pl.concat(sends), first_id),
        files=list(log.files),
        mean_propensity=float(np.concatenate(propensity).mean()),
    )


def sends_table(decisions: pl.DataFrame, first_send_id: int) -> pl.DataFrame:
    """The sends of decision-log rows (those with a send) in the export's ``sends`` columns and
    types, ``send_id`` numbered from ``first_send_id`` in the decisions' order."""
    labels = {"slot": SLOT_KEYS, "tone": TONES, "channel": CHANNELS, "content": CONTENTS}
    columns = {
        "send_id": pl.int_range(first_send_id, first_send_id + pl.len()),
        "client_id": pl.col("client_id"),
        "day": pl.col("day"),
        **{name: pl.col(name).cast(pl.Enum(list(labels[name]))) for name in labels},
        "decision_id": pl.col("decision_id"),
    }
    spec = {c.name: dtype_of(c) for c in TABLES["sends"]}
    return decisions.select(
        **{name: expr.cast(spec[name]) for name, expr in columns.items() if name in spec}
    ).select(list(spec))


@hydra.main(version_base="1.3", config_path="conf", config_name="decide")
def main(cfg: DictConfig) -> None:
    as_typed(cfg)  # key=1e05 is the text typed, not 100000.0
    for key in ("export_dir", "events_dir", "day"):
        if OmegaConf.is_missing(cfg, key):
            _fail(
                f"{key} is required: python decide.py export_dir=exports/<run id> "
                "events_dir=<event export> day=<decision day>"
            )
    settings: DecideConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    try:
        done = decide_day(settings)
    except (ValueError, FileNotFoundError) as exc:  # settings, ExportError, RequestError...
        _fail(f"cannot decide day {settings.day}: {exc}")
    print(
        f"decided day {settings.day} for {done.clients:,} clients: {done.sends.height:,} sends "
        f"(mean propensity {done.mean_propensity:.4f}, {settings.exploration.setting().label}); "
        f"decision log: {len(done.files)} file(s) in {settings.decision_log.dir}"
    )
    if settings.sends_out is not None:
        out = Path(settings.sends_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        data = io.BytesIO()
        done.sends.write_parquet(data)
        write_atomic(out, data.getvalue())
        print(f"sends: {done.sends.height:,} rows written to {out}")


def _fail(message: str) -> None:
    """End with ``message`` as one line on stderr and exit status 2."""
    print(f"decide.py: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    freeze_long_lived()  # the collector's full passes would walk what torch and MLflow made
    main()
