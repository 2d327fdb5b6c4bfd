"""Promote a policy only on evidence, or roll the last promotion back.

    python promote.py challenger=models:/cadence-policy/3 data=outputs/joined.parquet
    python promote.py challenger=run:<id> champion=segment_rules data=<shadow log> decisions=outputs/decisions
    python promote.py mode=rollback reason="complaints up since Tuesday"

The challenger and the champion (default: the version the registry's ``champion`` alias points
at) are estimated on the logged dataset ``data`` (``join.py`` writes one); the alias moves to the
challenger only when the lower bound of the paired difference challenger − champion on the log's
observable reward clears ``margin``, no harm rate is worse beyond its ``harm_margin.<metric>``,
each policy's effective sample size is at least ``min_ess``, and, where the champion is the
firm's own rules (a heuristic), the log comes from a shadow period (``experiment/promotion.py``,
``docs/promotion.md``). The evidence is written first: an MLflow run in experiment
``cadence-promotion`` and the challenger's model version (description and tags).

Exit status: 0 promoted (or cleared, with ``dry_run=true`` or a challenger that is no registered
version), 3 refused (the table says which rule and by what number), 2 an input it cannot use
(one ``error:`` line).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from experiment import promotion
from experiment.process import freeze_long_lived
from experiment.schema import TrackingConfig
from simulate.config import ConfigError

MODES = ("promote", "rollback")
REFUSED = 3
"""exit status of a promotion the evidence does not support (2 is an input error)"""


@dataclass
class PromoteConfig:
    """What promote.py reads (``conf/promote.yaml``)."""

    mode: str = "promote"
    """``promote`` (judge the challenger, move the alias if it clears) or ``rollback`` (restore
    the champion the current one replaced)"""
    challenger: str | None = None
    """``models:/cadence-policy/<version>``, ``run:<id>`` (a train.py run; its registered version
    is moved to) or a heuristic's name (judged only: there is no version to move to)"""
    champion: str | None = None
    """the policy serving now; None: the version the ``champion`` alias points at. A heuristic's
    name (``segment_rules``) for the firm's own rules: then the log must be a shadow period's"""
    data: str | None = None
    """the logged dataset (Parquet, ``docs/logged-data.md``; ``join.py`` writes one)"""
    margin: float = promotion.MARGIN
    """observable reward per client-day the paired difference's lower bound must be above"""
    min_ess: float = promotion.MIN_ESS
    """least effective sample size of each policy's importance weights on the log"""
    harm_margin: dict[str, float] = field(default_factory=lambda: dict(promotion.HARM_MARGINS))
    """per harm outcome, the most its rate per client-day may rise (the paired upper bound)"""
    harm_rule: str = "estimate"
    """what each harm margin is held against: ``estimate`` (the paired difference) or ``upper``
    (its 95 % upper bound, a non-inferiority test that rare outcomes rarely have support for)"""
    soften: float = 0.1
    """each target's probability spread over the allowed actions (the exploration it is served
    with; as ``evaluate.py``'s ``estimate.soften``)"""
    shadow: bool = False
    """state that the log comes from a shadow period, where it has no mode column and no
    ``decisions=`` is given (recorded as stated)"""
    decisions: str | None = None
    """the decision log behind ``data``: its ``mode`` column says whether the period was shadow"""
    dry_run: bool = False
    """judge and record the evidence, never move the alias"""
    n_boot: int = 500
    """bootstrap replicates of every interval"""
    fqe_boot: int = 100
    """refits of FQE's interval"""
    seed: int = 0
    reason: str = ""
    """mode=rollback: why, written in the rollback's note"""
    model: str = promotion.REGISTERED_NAME
    """the registered model whose alias moves"""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


ConfigStore.instance().store(name="promote_schema", node=PromoteConfig)

PROMOTE_ONLY = ("challenger", "champion", "data", "margin", "min_ess", "harm_margin", "soften",
                "shadow", "decisions", "dry_run", "harm_rule", "n_boot", "fqe_boot", "seed")  # fmt: skip
ROLLBACK_ONLY = ("reason",)


def check(cfg: PromoteConfig, given: Sequence[str]) -> None:
    """Refuse, naming the key, a value out of range or a key the mode does not read."""
    if cfg.mode not in MODES:
        raise ConfigError(f"mode must be one of {list(MODES)}, got {cfg.mode!r}")
    named = {g.lstrip("+~").split("=", 1)[0].split(".", 1)[0] for g in given}
    other = ROLLBACK_ONLY if cfg.mode == "promote" else PROMOTE_ONLY
    for key in sorted(named & set(other)):
        raise ConfigError(f"{key} is not read by mode={cfg.mode}")
    if cfg.mode == "rollback":
        return
    if not cfg.challenger:
        raise ConfigError("challenger is required: challenger=models:/cadence-policy/<version>")
    if not cfg.data:
        raise ConfigError("data is required: data=<logged dataset> (join.py writes one)")
    if not 0.0 <= cfg.soften <= 1.0:
        raise ConfigError(f"soften must lie in [0, 1], got {cfg.soften}")
    if cfg.min_ess < 0:
        raise ConfigError(f"min_ess must be >= 0, got {cfg.min_ess}")
    if cfg.n_boot < 20 or cfg.fqe_boot < 1:
        raise ConfigError(
            f"n_boot must be >= 20 and fqe_boot >= 1, got {cfg.n_boot}, {cfg.fqe_boot}"
        )
    if cfg.harm_rule not in promotion.HARM_RULES:
        raise ConfigError(
            f"harm_rule must be one of {list(promotion.HARM_RULES)}, got {cfg.harm_rule!r}"
        )
    unknown = sorted(set(cfg.harm_margin) - set(promotion.HARM_METRICS))
    if unknown:
        raise ConfigError(
            f"harm_margin.{unknown[0]}: not a harm metric; use {list(promotion.HARM_METRICS)}"
        )


def say(message: str) -> None:
    """A progress line (stdout, as join.py's; stderr is kept for the one error line)."""
    print(message, flush=True)


def run_promote(cfg: PromoteConfig) -> int:
    """The promotion ``cfg`` asks for; its exit status (0 promoted or cleared, 3 refused)."""
    from envs.config import load_setup
    from evaluation.logs import read_logs
    from experiment.tracking import hold, setup_mlflow

    setup = load_setup(reward="observable")
    path = Path(cfg.data)
    if not path.is_file():
        raise ConfigError(f"data: no logged dataset at {path} (a Parquet file; join.py writes one)")
    say(f"reading {path} ...")
    frame = read_logs(path, guardrails=setup.env.guardrails)
    log_digest = promotion.digest(path)
    setup_mlflow(cfg.tracking.uri, promotion.EXPERIMENT)
    with hold(f"promote-{cfg.model}", f"another promotion of {cfg.model} is under way"):
        challenger = promotion.resolve(cfg.challenger, setup, "challenger", cfg.model)
        if cfg.champion:
            champion = promotion.resolve(cfg.champion, setup, "champion", cfg.model)
        else:
            version = promotion.current_champion(cfg.model)
            if version is None:
                raise ConfigError(
                    f"champion: {cfg.model} has no {promotion.ALIAS!r} alias; name the policy "
                    "serving now (champion=segment_rules for the firm's own rules, or "
                    f"champion=models:/{cfg.model}/<version>)"
                )
            champion = promotion.resolve(f"models:/{cfg.model}/{version}", setup, "champion",
                                         cfg.model)  # fmt: skip
        shadow = None
        if champion.version is None:
            decisions = None
            if cfg.decisions:
                from serve.decisions import read_decisions

                decisions = read_decisions(cfg.decisions)
            shadow = promotion.shadow_check(frame, champion.label, decisions, cfg.shadow)
        say(f"estimating {challenger.label} and {champion.label} on {frame.height:,} client-days "
            f"({cfg.n_boot} bootstrap replicates; a minute or more on a large log) ...")  # fmt: skip
        params = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name in PROMOTE_ONLY}
        params |= {f"harm_margin.{k}": v for k, v in cfg.harm_margin.items()}
        params.pop("harm_margin")
        outcome = promotion.promote(
            frame, log_digest, challenger, champion, setup, params, cfg.margin, cfg.min_ess,
            cfg.harm_margin, shadow, cfg.dry_run, cfg.harm_rule, cfg.model, cfg.soften, cfg.n_boot,
            cfg.fqe_boot, cfg.seed, progress=True,
        )  # fmt: skip
    print(outcome.text)
    print(f"evidence: MLflow run {outcome.run_id} (experiment {promotion.EXPERIMENT})")
    if outcome.moved:
        print(f"{cfg.model} alias {promotion.ALIAS} -> v{challenger.version} "
              f"(was {champion.label})")  # fmt: skip
        return 0
    if outcome.evidence.cleared:
        why = "dry_run=true" if cfg.dry_run else f"{challenger.label} is no registered version"
        print(f"cleared, alias unchanged ({why})")
        return 0
    print(f"refused: alias {promotion.ALIAS} unchanged")
    return REFUSED


def run_rollback(cfg: PromoteConfig) -> int:
    """Restore the champion the current one replaced; exit status 0."""
    from experiment.tracking import hold, setup_mlflow

    setup_mlflow(cfg.tracking.uri, promotion.EXPERIMENT)
    with hold(f"promote-{cfg.model}", f"another promotion of {cfg.model} is under way"):
        current, restored, run_id = promotion.rollback(cfg.model, cfg.reason)
    target = f"v{restored}" if restored else "no alias (the firm's own rules serve)"
    print(f"{cfg.model} alias {promotion.ALIAS}: v{current} -> {target}; note: MLflow run {run_id}")
    return 0


def run(cfg: DictConfig, given: Sequence[str]) -> int:
    """``python promote.py`` with the composed ``cfg`` and the overrides typed; its exit status."""
    try:
        settings: PromoteConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
        check(settings, given)
        return run_promote(settings) if settings.mode == "promote" else run_rollback(settings)
    except (ValueError, OSError) as exc:  # ConfigError, a log refused, a policy refused
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


def cli(argv: Sequence[str]) -> int:
    """``python promote.py *argv`` in process (Hydra's compose API); its exit status."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(str(Path(__file__).parent / "conf"), version_base="1.3"):
            cfg = compose("promote", overrides=list(argv), return_hydra_config=True)
    except HydraException as exc:  # an unknown key, a value of the wrong type
        cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
        print(f"error: {' '.join(f'{exc}{cause}'.split())}", file=sys.stderr)
        return 2
    given = list(cfg.hydra.overrides.task)
    with open_dict(cfg):
        del cfg["hydra"]
    return run(cfg, given)


@hydra.main(version_base="1.3", config_path="conf", config_name="promote")
def main(cfg: DictConfig) -> None:
    status = run(cfg, list(HydraConfig.get().overrides.task))
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    freeze_long_lived()  # the collector's full passes would walk what torch and MLflow made
    if any(a in ("--help", "-h") or a.startswith("--") for a in sys.argv[1:]):
        main()
    else:
        sys.exit(cli(sys.argv[1:]))
