"""Join a decision log and a firm's export into the logged dataset the estimators read.

    python join.py export=outputs/firm_export decisions=outputs/decisions out=outputs/joined.parquet
    python join.py export=<dir> decisions=<dir> reviews=outputs/review_outcomes.parquet window_days=3
    python evaluate.py mode=estimate estimate.data=outputs/joined.parquet policies='[segment_rules]'

Each decision gets the client's features as of its day (the one feature builder), its action and
propensity from the log, the outcomes of the export's events within the attribution window
(``window_days``), and the observable reward (``reward_preset``, a ``conf/reward/`` preset that weighs
only what a firm sees). Held decisions follow their review outcome (``reviews``): rejected and
expired ones are left out, approved ones weigh propensity x approval rate (``loop/join.py``,
``docs/events.md``). A config or input it cannot use ends it with one line on stderr (``error:``)
and exit status 2; nothing is half-written.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from evaluation.logs import MAX_ROWS
from experiment.process import as_typed, freeze_long_lived


@dataclass
class JoinConfig:
    """The join's keys (``conf/join.yaml``)."""

    export: str = MISSING
    """the export's folder (``loop.events.read_export``)"""
    decisions: str = MISSING
    """the decision log: a folder of decision-log files (``serve.decisions``)"""
    out: str = "outputs/joined.parquet"
    """the logged dataset written (Parquet, atomically)"""
    reviews: str | None = None
    """the review-outcomes table (``review.py action=apply`` writes it); None: no review recorded"""
    window_days: int = 3
    """attribution window (days): an event counts for a send of day d on days d..d + window - 1"""
    review_window_days: int = 2
    """review window (days): a held decision with no outcome has expired from its day + this"""
    reward_preset: str = "observable"
    """the reward preset (``conf/reward/``); it must be observable"""
    as_of: int | None = None
    """the last day the export covers (default: its latest send or event)"""
    seed: int | None = None
    """a simulated export's seed, written as the ``seed`` column (lets evaluate.py roll the truth out)"""
    max_rows: int = MAX_ROWS
    """most decisions joined (a logged dataset's cap, ``evaluation.logs.MAX_ROWS``)"""


ConfigStore.instance().store(name="join_schema", node=JoinConfig)


def run(settings: JoinConfig) -> str:
    """The join of ``settings``; returns the summary (what was written and left out)."""
    from envs.config import load_setup
    from loop.events import read_export
    from loop.join import join_outcomes, read_decision_log, write_joined
    from loop.review import read_outcomes

    setup = load_setup(reward=settings.reward_preset)
    print(f"reading {settings.export} and {settings.decisions} ...", flush=True)
    export = read_export(settings.export)
    decisions = read_decision_log(settings.decisions, settings.max_rows)
    frame, summary = join_outcomes(
        export,
        decisions,
        read_outcomes(settings.reviews),
        window_days=settings.window_days,
        review_window_days=settings.review_window_days,
        reward=setup.reward,
        as_of=settings.as_of,
        seed=settings.seed,
        where=settings.decisions,
        progress=True,
    )
    path = write_joined(frame, settings.out, setup.env.guardrails)
    return f"{summary.lines()}\nwrote {path}"


@hydra.main(version_base="1.3", config_path="conf", config_name="join")
def main(cfg: DictConfig) -> None:
    as_typed(cfg)  # key=1e05 is the text typed, not 100000.0
    for key in ("export", "decisions"):
        if OmegaConf.is_missing(cfg, key):
            _fail(f"{key} is required: python join.py export=<folder> decisions=<folder>")
    settings: JoinConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    try:
        print(run(settings))
    except (ValueError, OSError) as exc:  # the export, the log, the reviews, a key's value
        _fail(str(exc))


def _fail(message: str) -> None:
    """End with ``message`` as one line on stderr and exit status 2."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    freeze_long_lived()  # the collector's full passes would walk what torch and MLflow made
    main()
