"""Promotion on evidence: move the registry alias ``champion`` only when a logged dataset shows
the challenger better than the champion, on the same clients, by more than a margin, with no
harm metric worse beyond its own margin and enough logged support.

The rule (``docs/promotion.md``), on the observable reward of the log's ``reward`` column:

* **paired difference**: both policies are estimated on the same logged rows with self-normalised
  importance weights (SNIPS, each target ε-soft by ``soften``); the difference challenger −
  champion gets a 95 % bootstrap interval that resamples whole clients, the *same* resamples for
  both policies, so what the two estimates share (the clients drawn, their luck) cancels;
* **reward**: the interval's lower bound must be above ``margin`` (reward per client-day);
* **harm**: for each outcome of :data:`HARM_METRICS` (a rate per client-day, estimated the same
  way with the outcome in place of the reward), the upper bound of the paired difference must not
  exceed its margin (:data:`HARM_MARGINS`);
* **support**: the effective sample size of each policy's importance weights, (Σw)² / Σw², must
  be at least ``min_ess`` (:data:`MIN_ESS`); below it the interval is not to be trusted;
* **shadow start**: a champion that is not a registered version (the firm's own rules, a
  heuristic) is replaced only on a log from a shadow period (decision-log mode ``shadow``).

Beside the paired figures, each policy's one-step (IPS, SNIPS, DM, DR) and multi-day (PDWIS, FQE)
estimates with their own intervals (:func:`evaluation.offline.estimate`) go into the evidence.

The evidence is written before anything moves: an MLflow run in experiment
:data:`EXPERIMENT` (params, metrics, the tables as ``promotion.md``), then the challenger's model
version (description and ``promotion.*`` tags, ``previous_champion``), then the alias.
:func:`rollback` points the alias back at the version a promotion replaced.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import polars as pl

from agents.base import Policy
from envs.config import Setup
from evaluation import ope
from evaluation.offline import OffPolicyResult, estimate, target_pscores
from evaluation.offline import table as estimates_table
from experiment.registry import set_section
from simulate.config import ConfigError

EXPERIMENT = "cadence-promotion"
"""the MLflow experiment every promotion and rollback is recorded in"""
REGISTERED_NAME = "cadence-policy"
"""the registered model whose ``champion`` alias is moved (``export.py`` registers it)"""
ALIAS = "champion"

MIN_ESS = 200.0
"""default least effective sample size of each policy's importance weights. The bootstrap's
95 % intervals covered the truth at 88-93 % where the ESS was in the thousands and at 28-85 %
where it was tens to hundreds (``docs/offline-evaluation.md``); 200 keeps a promotion off the
worst of that range while a month of a firm's log (a million client-days, ε = 0.1) still gives a
learned challenger a few hundred"""
MARGIN = 0.0
"""default margin (observable reward per client-day) the lower bound of the paired difference
must clear: 0 asks for 95 % evidence that the challenger is better at all"""
HARM_METRICS: tuple[str, ...] = ("unsubscribed", "complaint", "harmful", "churned")
"""the log's outcome columns read as harm (rates per client-day): more of any is worse"""
HARM_RULES: tuple[str, ...] = ("estimate", "upper")
"""what a harm's margin is held against: the paired difference, or its 95 % upper bound"""
HARM_MARGINS: dict[str, float] = {
    "unsubscribed": 0.0005,
    "complaint": 0.0002,
    "harmful": 0.0002,
    "churned": 0.0002,
}
"""default most each harm rate (per client-day) may rise from champion to challenger: about
segment_rules' own unsubscribe rate (0.0006 a client-day in a simulated log of it: a challenger
may at most double it), a quarter of its churn (0.0008), and 0.0002 for complaints and panic
trades, which it barely causes. Held against the paired difference by default
(:data:`HARM_RULES`): at a few hundred effective samples the 95 % interval of a rate this rare
is tens of times wider than these margins (unsubscribes ±0.01 at an ESS of 222)"""


@dataclass(frozen=True)
class Paired:
    """One metric estimated for both policies on the same rows, and their paired difference."""

    metric: str
    challenger: float
    champion: float
    diff: float
    """challenger − champion (per client-day)"""
    ci_low: float
    ci_high: float
    """95 % bootstrap interval of ``diff``, clients resampled alike for both policies"""


@dataclass(frozen=True)
class Check:
    """One rule of the gate: what was measured, what it had to be, and whether it held."""

    name: str
    value: float | str
    rule: str
    passed: bool
    reason: str = ""
    """the refusal in words, naming the number that decided ('' where it passed)"""


@dataclass
class Evidence:
    """Everything the decision rests on."""

    challenger: str
    champion: str
    rows: int
    clients: int
    ess: dict[str, float]
    """effective sample size of each policy's SNIPS weights ('challenger', 'champion')"""
    paired: dict[str, Paired]
    """'reward' and every harm metric"""
    estimates: list[OffPolicyResult] = field(default_factory=list)
    soften: float = 0.1
    checks: list[Check] = field(default_factory=list)

    @property
    def cleared(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def reasons(self) -> list[str]:
        return [c.reason for c in self.checks if not c.passed]


def digest(path: str | Path) -> str:
    """``sha256:<hex>`` of the file at ``path`` (read a megabyte at a time)."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return f"sha256:{sha.hexdigest()}"


def effective_sample_size(weights: np.ndarray) -> float:
    """(Σw)² / Σw² of non-negative weights, taken on the weights over their largest (finite for
    any finite weights); 0 where every weight is 0."""
    top = float(weights.max()) if weights.size else 0.0
    if not top > 0:
        return 0.0
    scaled = weights / top
    return float(scaled.sum() ** 2 / (scaled * scaled).sum())


def paired_differences(
    columns: Mapping[str, np.ndarray],
    pscore: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    clients: np.ndarray,
    n_boot: int = 500,
    seed: int = 0,
    pscore_floor: float = ope.PSCORE_FLOOR,
) -> dict[str, Paired]:
    """SNIPS of each column for both policies and the paired difference, with one bootstrap.

    ``columns``: per logged row, the quantity to estimate (the reward, an outcome as 0/1);
    ``challenger`` and ``champion``: each policy's probability of the logged action; ``clients``:
    each row's client. Each replicate draws clients with replacement and weighs every column of
    both policies with the same draw. A value is NaN where no logged row supports the policy."""
    weights = {
        "challenger": challenger / np.maximum(pscore, pscore_floor),
        "champion": champion / np.maximum(pscore, pscore_floor),
    }
    index = np.unique(clients, return_inverse=True)[1].reshape(-1)
    m = int(index.max()) + 1
    den = {k: np.bincount(index, weights=w, minlength=m) for k, w in weights.items()}
    num = {
        (name, k): np.bincount(index, weights=w * np.asarray(col, float), minlength=m)
        for name, col in columns.items()
        for k, w in weights.items()
    }

    def ratios(counts: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
        totals = {k: counts @ d for k, d in den.items()}
        with np.errstate(invalid="ignore", divide="ignore"):
            return {
                key: np.where(totals[key[1]] > 0, (counts @ n) / totals[key[1]], np.nan)
                for key, n in num.items()
            }

    point = ratios(np.ones((1, m)))
    rng = np.random.default_rng([seed, 0x9A1])
    chunk = max(1, min(50, 20_000_000 // m))
    draws: dict[str, list[np.ndarray]] = {name: [] for name in columns}
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        counts = np.stack([np.bincount(rng.integers(0, m, m), minlength=m) for _ in range(k)])
        replicate = ratios(counts.astype(np.float64))
        for name in columns:
            draws[name].append(replicate[(name, "challenger")] - replicate[(name, "champion")])
    out = {}
    for name in columns:
        a, b = float(point[(name, "challenger")][0]), float(point[(name, "champion")][0])
        diffs = np.concatenate(draws[name]) if draws[name] else np.array([np.nan])
        if np.isnan(diffs).all():
            lo = hi = float("nan")
        else:
            lo, hi = (float(v) for v in np.nanpercentile(diffs, [2.5, 97.5]))
        out[name] = Paired(name, a, b, a - b, lo, hi)
    return out


def gather(
    frame: pl.DataFrame,
    challenger: Policy,
    champion: Policy,
    setup: Setup,
    soften: float = 0.1,
    n_boot: int = 500,
    fqe_boot: int = 100,
    seed: int = 0,
    progress: bool = False,
) -> Evidence:
    """The evidence of a validated logged dataset about ``challenger`` against ``champion``.

    ``soften``: each target's probability ε spread over the allowed actions (the policies as
    served with that exploration); the paired figures are per client-day."""
    pscore = frame["pscore"].to_numpy().astype(np.float64)
    clients = frame["client_id"].to_numpy()
    probs = {
        "challenger": target_pscores(challenger, frame, setup, soften),
        "champion": target_pscores(champion, frame, setup, soften),
    }
    columns = {"reward": frame["reward"].to_numpy().astype(np.float64)}
    columns |= {m: frame[m].cast(pl.Float64).to_numpy() for m in HARM_METRICS}
    paired = paired_differences(
        columns, pscore, probs["challenger"], probs["champion"], clients, n_boot, seed
    )
    floor = np.maximum(pscore, ope.PSCORE_FLOOR)
    ess = {k: effective_sample_size(p / floor) for k, p in probs.items()}
    estimates = estimate(
        frame,
        [challenger, champion],
        setup,
        epsilon=soften,
        n_boot=n_boot,
        fqe_boot=fqe_boot,
        with_truth=False,
        seed=seed,
        progress=progress,
    )
    return Evidence(
        challenger.name,
        champion.name,
        frame.height,
        int(np.unique(clients).size),
        ess,
        paired,
        estimates,
        soften,
    )


def judge(
    evidence: Evidence,
    margin: float = MARGIN,
    min_ess: float = MIN_ESS,
    harm_margins: Mapping[str, float] | None = None,
    shadow: Check | None = None,
    harm_rule: str = "estimate",
) -> Evidence:
    """Fill ``evidence.checks`` with the gate's rules (support, reward, harm, and ``shadow`` where
    the champion is the firm's own rules); returns ``evidence``.

    ``harm_rule``: ``estimate`` reads each harm's paired difference, ``upper`` its 95 % upper
    bound (a non-inferiority test: rare outcomes need far more support for it)."""
    if harm_rule not in HARM_RULES:
        raise ConfigError(f"harm_rule must be one of {list(HARM_RULES)}, got {harm_rule!r}")
    harm_margins = dict(HARM_MARGINS if harm_margins is None else harm_margins)
    checks = [] if shadow is None else [shadow]
    for role in ("challenger", "champion"):
        ess = evidence.ess[role]
        name = getattr(evidence, role)
        checks.append(
            Check(
                f"support: ESS of the {role} ({name})",
                ess,
                f">= min_ess {min_ess:g}",
                ess >= min_ess,
                f"too little support: the log's effective sample size for the {role} {name} is "
                f"{ess:,.1f}, below min_ess {min_ess:g}",
            )
        )
    reward = evidence.paired["reward"]
    checks.append(
        Check(
            "reward: lower bound of the paired difference",
            reward.ci_low,
            f"> margin {margin:g}",
            math.isfinite(reward.ci_low) and reward.ci_low > margin,
            f"not better by the margin: the lower bound of the paired difference "
            f"(challenger - champion) is {reward.ci_low:.4g} per client-day "
            f"(difference {reward.diff:.4g}, 95 % CI [{reward.ci_low:.4g}, {reward.ci_high:.4g}]), "
            f"not above the margin {margin:g}",
        )
    )
    for metric in HARM_METRICS:
        harm, limit = evidence.paired[metric], harm_margins[metric]
        read = harm.ci_high if harm_rule == "upper" else harm.diff
        what = (
            "upper bound of the paired difference" if harm_rule == "upper" else "paired difference"
        )
        checks.append(
            Check(
                f"harm: {metric}, {what}",
                read,
                f"<= harm_margin.{metric} {limit:g}",
                math.isfinite(read) and read <= limit,
                f"{metric} may rise beyond its margin: the {what} (challenger - champion) is "
                f"{read:.4g} per client-day (95 % CI [{harm.ci_low:.4g}, {harm.ci_high:.4g}]), "
                f"above harm_margin.{metric} {limit:g}",
            )
        )
    evidence.checks = checks
    return evidence


def shadow_check(
    frame: pl.DataFrame, champion: str, decisions: pl.DataFrame | None, stated: bool
) -> Check:
    """Whether the log comes from a shadow period (needed when the champion is the firm's own
    rules): every row's decision-log ``mode`` is ``shadow``, read from the log's own ``mode``
    column, else from ``decisions`` (the decision log, matched on ``decision_id``), else taken
    from the statement ``stated`` (``shadow=true``), which the evidence records as stated."""
    rule = f"a shadow period's log (the champion {champion} is the firm's own rules)"
    modes = None
    if "mode" in frame.columns:
        modes, source = frame["mode"], "the log's mode column"
    elif decisions is not None and "decision_id" in frame.columns:
        matched = frame.select("decision_id").join(
            decisions.select("decision_id", "mode"), on="decision_id", how="left"
        )
        modes, source = matched["mode"].fill_null("not in the decision log"), "the decision log"
    if modes is not None:
        other = int((modes != "shadow").sum())
        found = f"{modes.len() - other:,} of {modes.len():,} rows shadow ({source})"
        return Check(
            "shadow start",
            found,
            rule,
            other == 0,
            f"not a shadow period: {other:,} of {modes.len():,} logged decisions are not in "
            f"shadow mode ({source}); promoting from the firm's rules ({champion}) needs a log "
            "of the rules deciding while the policy only watched",
        )
    return Check(
        "shadow start",
        "stated (shadow=true)" if stated else "unknown",
        rule,
        stated,
        f"no shadow evidence: the champion {champion} is the firm's own rules, and the log has "
        "no mode column; give the decision log (decisions=<folder>) or state shadow=true for a "
        "log of a shadow period",
    )


def checks_table(evidence: Evidence) -> str:
    """Markdown: one row per rule of the gate."""
    lines = ["| check | value | rule | result |", "|---|---:|---|---|"]
    for c in evidence.checks:
        value = c.value
        if isinstance(value, float):
            value = f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"
        lines.append(f"| {c.name} | {value} | {c.rule} | {'pass' if c.passed else 'FAIL'} |")
    return "\n".join(lines)


def paired_table(evidence: Evidence) -> str:
    """Markdown: each metric's SNIPS for both policies and the paired difference."""
    lines = [
        f"| metric (per client-day) | challenger {evidence.challenger} | champion "
        f"{evidence.champion} | difference | 95 % CI |",
        "|---|---:|---:|---:|---|",
    ]
    for p in evidence.paired.values():
        lines.append(
            f"| {p.metric} | {p.challenger:.4g} | {p.champion:.4g} | {p.diff:.4g} | "
            f"[{p.ci_low:.4g}, {p.ci_high:.4g}] |"
        )
    return "\n".join(lines)


def report(evidence: Evidence, header: Sequence[str] = ()) -> str:
    """The evidence in Markdown: the header lines, the gate, the paired figures, the estimates."""
    decision = "clears the gate" if evidence.cleared else "refused"
    parts = [
        *header,
        f"**{decision}**: {evidence.challenger} over {evidence.champion} on {evidence.rows:,} "
        f"logged client-days of {evidence.clients:,} clients (targets ε-soft, ε = "
        f"{evidence.soften:g}).",
        *(f"- {r}" for r in evidence.reasons),
        "",
        checks_table(evidence),
        "",
        paired_table(evidence),
    ]
    if evidence.estimates:
        parts += ["", estimates_table(evidence.estimates)]
    return "\n".join(parts) + "\n"


def metrics_of(evidence: Evidence) -> dict[str, float]:
    """The evidence as MLflow metrics (finite values only)."""
    out: dict[str, float] = {f"ess/{k}": v for k, v in evidence.ess.items()}
    for p in evidence.paired.values():
        out |= {
            f"{p.metric}/challenger": p.challenger,
            f"{p.metric}/champion": p.champion,
            f"{p.metric}/diff": p.diff,
            f"{p.metric}/diff_ci_low": p.ci_low,
            f"{p.metric}/diff_ci_high": p.ci_high,
        }
    for role, res in zip(("challenger", "champion"), evidence.estimates, strict=False):
        for name, e in res.estimates.items():
            out |= {
                f"{role}/{name}/value": e.value,
                f"{role}/{name}/ci_low": e.ci_low,
                f"{role}/{name}/ci_high": e.ci_high,
                f"{role}/{name}/ess": e.ess,
            }
    out["cleared"] = float(evidence.cleared)
    return {k: float(v) for k, v in out.items() if math.isfinite(v)}


def version_tags(evidence: Evidence, run_id: str, log_digest: str) -> dict[str, str]:
    """The ``promotion.*`` tags a challenger's model version carries."""
    reward = evidence.paired["reward"]
    tags = {
        "promotion.decision": "promoted" if evidence.cleared else "refused",
        "promotion.run_id": run_id,
        "promotion.champion": evidence.champion,
        "promotion.log_sha256": log_digest,
        "promotion.reward_diff": f"{reward.diff:.6g}",
        "promotion.reward_diff_ci": f"[{reward.ci_low:.6g}, {reward.ci_high:.6g}]",
        "promotion.ess": f"{evidence.ess['challenger']:.1f}",
    }
    for role, res in zip(("challenger", "champion"), evidence.estimates, strict=False):
        for name in ("snips", "dr", "pdwis", "fqe"):
            e = res.estimates[name]
            tags[f"promotion.{role}.{name}"] = f"{e.value:.6g} [{e.ci_low:.6g}, {e.ci_high:.6g}]"
    if evidence.reasons:
        tags["promotion.reasons"] = " | ".join(evidence.reasons)[:5000]
    return tags


def registry_error(what: str, exc: Exception) -> ConfigError:
    """A :class:`ConfigError` of one line for a registry lookup that failed."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ConfigError(f"{what} ({first}) in {mlflow.get_tracking_uri()}")


@dataclass(frozen=True)
class Candidate:
    """A policy named for promotion, and the registered version it is, where it is one."""

    spec: str
    """as given: ``models:/<name>/<version>``, ``models:/<name>@<alias>``, ``run:<id>`` or a
    heuristic's name"""
    policy: Policy
    version: str | None = None
    """the registered model version (None: a heuristic, or a run never exported)"""
    run_id: str | None = None

    @property
    def label(self) -> str:
        return self.policy.name if self.version is None else f"v{self.version} ({self.policy.name})"


def _version_of_run(model: str, run_id: str) -> str | None:
    """The newest version of ``model`` registered from ``run_id``, or None."""
    found = mlflow.MlflowClient().search_model_versions(f"name='{model}' and run_id='{run_id}'")
    return max((v.version for v in found), key=int, default=None)


def resolve(spec: str, setup: Setup, key: str, model: str = REGISTERED_NAME) -> Candidate:
    """The :class:`Candidate` ``spec`` names (``key``: the config key, for errors); the policy of
    a version is its source run's ``policy`` artifact (what ``train.py`` saved)."""
    from experiment.policies import resolve_policy

    spec = spec.strip()
    client = mlflow.MlflowClient()
    if spec.startswith("models:/"):
        rest = spec[len("models:/") :]
        name, sep, version = rest.partition("/")
        alias = None
        if not sep:
            name, sep, alias = rest.partition("@")
        if not sep or name != model or not (version or alias):
            raise ConfigError(
                f"{key}: {spec!r} is not a version of {model}; use models:/{model}/<version> "
                f"or models:/{model}@<alias>"
            )
        try:
            found = (
                client.get_model_version(model, version)
                if alias is None
                else client.get_model_version_by_alias(model, alias)
            )
        except mlflow.exceptions.MlflowException as exc:
            raise registry_error(f"{key}: no {spec} in the registry", exc) from exc
        if not found.run_id:
            raise ConfigError(f"{key}: {spec} names no source run, so no policy to estimate")
        policy, _ = resolve_policy(f"run:{found.run_id}", setup)
        return Candidate(spec, policy, str(found.version), found.run_id)
    policy, tags = resolve_policy(spec, setup)
    run_id = tags.get("source_run")
    version = _version_of_run(model, run_id) if run_id else None
    return Candidate(spec, policy, version, run_id)


def current_champion(model: str = REGISTERED_NAME) -> str | None:
    """The version the alias ``champion`` of ``model`` points at, or None (no alias, no model)."""
    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(model, ALIAS).version)
    except mlflow.exceptions.MlflowException:
        return None


@dataclass
class Outcome:
    """What a promotion did."""

    evidence: Evidence
    run_id: str
    """the MLflow run holding the evidence"""
    moved: bool
    """the alias now points at the challenger"""
    text: str
    """the report printed (Markdown)"""


def _record_run(
    evidence: Evidence, text: str, params: Mapping[str, object], tags: Mapping[str, str]
) -> str:
    """One finished MLflow run in the active experiment holding the evidence; its id."""
    decision = "cleared" if evidence.cleared else "refused"
    with mlflow.start_run(
        run_name=f"promote {evidence.challenger} over {evidence.champion}: {decision}",
        tags={**tags, "decision": decision, "mlflow.note.content": text},
    ) as run:
        mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
        mlflow.log_metrics(metrics_of(evidence))
        mlflow.log_text(text, "promotion.md")
        return run.info.run_id


def promote(
    frame: pl.DataFrame,
    log_digest: str,
    challenger: Candidate,
    champion: Candidate,
    setup: Setup,
    params: Mapping[str, object],
    margin: float = MARGIN,
    min_ess: float = MIN_ESS,
    harm_margins: Mapping[str, float] | None = None,
    shadow: Check | None = None,
    dry_run: bool = False,
    harm_rule: str = "estimate",
    model: str = REGISTERED_NAME,
    soften: float = 0.1,
    n_boot: int = 500,
    fqe_boot: int = 100,
    seed: int = 0,
    progress: bool = False,
) -> Outcome:
    """Gather and judge the evidence, record it (MLflow run, then the challenger's version), and
    only then point ``model``'s alias ``champion`` at the challenger, where the gate is cleared,
    the challenger is a registered version and ``dry_run`` is false. MLflow must point at the
    store and at experiment :data:`EXPERIMENT` (:func:`experiment.tracking.setup_mlflow`)."""
    evidence = gather(frame, challenger.policy, champion.policy, setup, soften, n_boot, fqe_boot,
                      seed, progress)  # fmt: skip
    evidence.challenger, evidence.champion = challenger.label, champion.label
    judge(evidence, margin, min_ess, harm_margins, shadow, harm_rule)
    previous = champion.version or f"heuristic:{champion.policy.name}"
    header = [
        f"Promotion evidence for {model}: challenger {challenger.spec}, champion {champion.spec}.",
        f"Log: {params.get('data', '')} ({log_digest}).",
    ]
    text = report(evidence, header)
    run_id = _record_run(
        evidence,
        text,
        {**params, "data_sha256": log_digest, "previous_champion": previous},
        {"command": "promote", "challenger": challenger.label, "champion": champion.label},
    )
    client = mlflow.MlflowClient()
    moved = evidence.cleared and challenger.version is not None and not dry_run
    now = current_champion(model)
    if moved and now != champion.version:  # the alias must point at the policy judged against
        was = "no alias" if champion.version is None else f"v{champion.version}"
        raise ConfigError(
            f"the alias {ALIAS} points at {'no version' if now is None else f'v{now}'}, not "
            f"at the champion judged against ({was}); the evidence is recorded (run "
            f"{run_id}), the alias unchanged: judge against the current champion"
        )
    if challenger.version is not None:
        tags = version_tags(evidence, run_id, log_digest)
        if moved:
            tags["previous_champion"] = previous
        for key, value in tags.items():
            client.set_model_version_tag(model, challenger.version, key, value)
        # its own section: the evaluation figures export.py wrote stay beside it
        set_section(model, challenger.version, "promotion", text[:5000])
    if moved:
        client.set_registered_model_alias(model, ALIAS, challenger.version)
    return Outcome(evidence, run_id, moved, text)


def rollback(model: str = REGISTERED_NAME, reason: str = "") -> tuple[str, str | None, str]:
    """Point ``model``'s alias ``champion`` back at the version the current champion replaced
    (its ``previous_champion`` tag); where that was the firm's own rules (``heuristic:<name>``)
    the alias is removed, so serving falls back to them. The note is written first: an MLflow
    run in the active experiment and tags on both versions. Returns (the version rolled back
    from, the version restored or None, the run id)."""
    client = mlflow.MlflowClient()
    current = current_champion(model)
    if current is None:
        raise ConfigError(f"{model} has no {ALIAS!r} alias in {mlflow.get_tracking_uri()}: "
                          "nothing to roll back")  # fmt: skip
    previous = client.get_model_version(model, current).tags.get("previous_champion")
    if not previous:
        raise ConfigError(
            f"{model} v{current} has no previous_champion tag (it was not made champion by "
            "promote.py): no earlier champion to restore"
        )
    restored = None if previous.startswith("heuristic:") else previous
    text = (
        f"Rollback of {model}: {ALIAS} v{current} -> "
        + (f"v{restored}" if restored else f"no alias (the firm's own rules, {previous[10:]})")
        + (f". Reason: {reason}" if reason else ".")
        + "\n"
    )
    with mlflow.start_run(
        run_name=f"rollback v{current} -> {restored or previous}",
        tags={"command": "rollback", "decision": "rolled back", "mlflow.note.content": text},
    ) as run:
        mlflow.log_params({"from_version": current, "to": previous, "reason": reason[:6000]})
        mlflow.log_text(text, "rollback.md")
        run_id = run.info.run_id
    client.set_model_version_tag(model, current, "rolled_back_by", run_id)
    if restored is None:
        client.delete_registered_model_alias(model, ALIAS)
    else:
        client.set_model_version_tag(model, restored, "restored_by", run_id)
        client.set_registered_model_alias(model, ALIAS, restored)
    return current, restored, run_id
