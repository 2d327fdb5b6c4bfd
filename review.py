"""Human review of sensitive sends: the queue a reviewer reads, and the outcomes their verdicts give.

    python review.py action=queue export=outputs/firm_export decisions=outputs/decisions queue=outputs/review_queue.csv
    python review.py action=apply decisions=outputs/decisions verdicts=outputs/verdicts.csv today=31
    python join.py export=outputs/firm_export decisions=outputs/decisions reviews=outputs/review_outcomes.parquet

``action=queue`` writes the held decisions (served, flagged ``needs_review``, with a send, no
outcome yet) with the reasons they are held and their deadline (``loop/review.py``).
``action=apply`` checks a reviewer's verdicts (``decision_id``, ``outcome`` approved or rejected,
``reviewed_day``; CSV or Parquet) against the log, adds them to the review-outcomes table
(``outcomes``) and marks ``expired`` every held decision whose window closed by ``today`` without
a verdict (it falls back to no send). Files are replaced atomically. A config or input it cannot
use ends it with one line on stderr (``error:``) and exit status 2, and nothing is written.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from experiment.process import as_typed, freeze_long_lived

ACTIONS = ("queue", "apply")


@dataclass
class ReviewConfig:
    """The review command's keys (``conf/review.yaml``)."""

    action: str = "queue"
    """``queue``: write the review queue; ``apply``: record verdicts and expiries"""
    decisions: str = MISSING
    """the decision log: a folder of decision-log files (``serve.decisions``)"""
    export: str | None = None
    """the export's folder (``action=queue``: the features the reasons are read from)"""
    queue: str = "outputs/review_queue.csv"
    """the review queue written by ``action=queue`` (CSV, or Parquet for a .parquet name)"""
    outcomes: str = "outputs/review_outcomes.parquet"
    """the review-outcomes table (read by both actions, written by ``apply``)"""
    verdicts: str | None = None
    """``action=apply``: the reviewer's verdicts file; None: expiries only"""
    today: int | None = None
    """``action=apply``: the calendar day the verdicts are applied on (required)"""
    window_days: int = 2
    """review window (days): a decision of day d may be approved up to day d + window - 1"""


ConfigStore.instance().store(name="review_schema", node=ReviewConfig)


def queue(settings: ReviewConfig) -> str:
    """``action=queue``: the review queue written; returns what was done."""
    from loop.events import read_export
    from loop.features import build_features
    from loop.review import held, read_outcomes, review_queue, write_table
    from serve.decisions import read_decisions

    if settings.export is None:
        raise ValueError("export is required with action=queue (the reasons read its features)")
    decisions = read_decisions(settings.decisions)
    export = read_export(settings.export)
    outcomes = read_outcomes(settings.outcomes)
    days = sorted(held(decisions)["day"].unique().to_list())
    features = {day: build_features(export, day) for day in days}
    frame = review_queue(decisions, features, outcomes, settings.window_days)
    path = write_table(frame, settings.queue)
    return f"{frame.height:,} decisions wait for review; wrote {path}"


def apply(settings: ReviewConfig) -> str:
    """``action=apply``: verdicts and expiries recorded; returns what was done."""
    import polars as pl

    from loop.review import OUTCOME_SCHEMA, apply_reviews, read_outcomes, read_table, write_table
    from serve.decisions import read_decisions

    if settings.today is None:
        raise ValueError("today is required with action=apply (the day verdicts are applied on)")
    decisions = read_decisions(settings.decisions)
    before = read_outcomes(settings.outcomes)
    verdicts = (
        read_table(settings.verdicts)
        if settings.verdicts is not None
        else pl.DataFrame(schema=OUTCOME_SCHEMA)
    )
    after = apply_reviews(
        decisions, before, verdicts, settings.today, settings.window_days, str(settings.verdicts)
    )
    path = write_table(after, settings.outcomes)
    added = after.join(before, on="decision_id", how="anti")
    counts = ", ".join(f"{k} {v:,}" for k, v in sorted(added.group_by("outcome").len().iter_rows()))
    return f"recorded {added.height:,} outcomes ({counts or 'none'}); wrote {path}"


@hydra.main(version_base="1.3", config_path="conf", config_name="review")
def main(cfg: DictConfig) -> None:
    as_typed(cfg)  # key=1e05 is the text typed, not 100000.0
    if OmegaConf.is_missing(cfg, "decisions"):
        _fail("decisions is required: python review.py action=queue|apply decisions=<folder> ...")
    settings: ReviewConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    if settings.action not in ACTIONS:
        _fail(f"action must be one of {', '.join(ACTIONS)}, got {settings.action!r}")
    try:
        print(queue(settings) if settings.action == "queue" else apply(settings))
    except (ValueError, OSError) as exc:  # the log, the export, the verdicts, a key's value
        _fail(str(exc))


def _fail(message: str) -> None:
    """End with ``message`` as one line on stderr and exit status 2."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    freeze_long_lived()  # the collector's full passes would walk what torch and MLflow made
    main()
