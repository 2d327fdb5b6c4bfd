"""What a training or evaluation run logs about a comparison: one policy's contract metrics with
their intervals, its tables and plots, and its margins over the best baseline heuristic; and
what an analyst reads first in the MLflow UI: run names, descriptions, each policy's role, the
headline (the best policy over the best heuristic, with a paired interval), the comparison as an
MLflow table and the evaluation population as a dataset input."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import mlflow
import numpy as np
import polars as pl

from evaluation.compare import KPI_PLOT, Comparison, write_tables
from evaluation.metrics import CONTRACT
from experiment import plots
from experiment.tracking import taking_turns


def log_comparison(
    result: Comparison, policy_name: str, out: Path, with_artifacts: bool = True
) -> dict[str, float]:
    """Log one policy's contract metrics (+ CI bounds) to the active run; write table and plots."""
    m = result.metrics[policy_name]
    metrics = {name: m[name][0] for name in CONTRACT}
    for name in CONTRACT:
        est, lo, hi = m[name]
        if lo != hi:
            metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = lo, hi
    for name in m:
        if name.startswith(("harm/", "tier/")):
            metrics[name] = m[name][0]
    mlflow.log_metrics(metrics)
    if with_artifacts:
        write_tables(result, out, "evaluation")
        own = [r for r in result.rollouts if r.policy == policy_name]
        plots.cadence(own, out / "cadence.png", f"{policy_name}: when and how it messages")
        plots.kpi_bars(result.metrics, KPI_PLOT, out / "kpis.png")
        plots.retention_curves(result.rollouts, out / "retention.png")
        mlflow.log_artifacts(str(out), "evaluation")
    return metrics


MARGINS = ("eval/normalized_value", "eval/retention", "eval/anxious_click_share")
"""compared with the best baseline heuristic: more value, retention no lower, anxious share no higher"""


def log_margins(result: Comparison, policy_name: str, baselines: list[str]) -> str:
    """Log ``eval/margin/*`` (the policy minus the best baseline, on the same clients) and tag
    ``baseline``; returns a one-line verdict for the console."""
    m = result.metrics
    best = max(baselines, key=lambda b: m[b]["eval/normalized_value"][0])
    margins = {
        f"eval/margin/{k.split('/', 1)[1]}": m[policy_name][k][0] - m[best][k][0] for k in MARGINS
    }
    mlflow.log_metrics(margins)
    mlflow.set_tag("baseline", best)
    value, retention, anxious = margins.values()
    holds = retention >= 0 and anxious <= 0
    return (
        f"{policy_name} vs the best baseline {best}: normalized value {value:+.3f}, retention "
        f"{retention:+.3f}, anxious-click share {anxious:+.3f} "
        f"({'retention no lower and anxious share no higher' if holds else 'the guard conditions do not both hold'})"
    )


# --- the analyst's view: what the MLflow UI shows first -------------------------------------

Interval = tuple[float, float, float]
"""(estimate, 95 % CI low, 95 % CI high)"""

REFERENCES = ("oracle", "deployable_ceiling", "no_send")
"""rows every comparison holds as yardsticks, never as candidates: the oracle (sees hidden state:
normalized value 1 by definition), the deployable ceiling (the best a policy seeing what a firm
sees can do: ceiling share 1) and never sending (normalized value 0)"""
ROLES = ("learned", "heuristic", "reference")
"""a policy's ``role`` param: trained here or by train.py, a fixed rule, or a yardstick"""

FIGURES = """\
**Reading the figures.** *Normalized value*: a policy's value per client (the `eval.reward` \
yardstick) rescaled so that 0 is never sending and 1 is the oracle, which sees every client's \
hidden state (no deployable policy reaches it). *Ceiling share*: the same rescaling with the \
deployable ceiling (the best a policy seeing only what the firm sees can do) as 1. *Margin*: a \
policy's normalized value minus the baseline's (the best heuristic), measured on the same \
clients and luck, with a 95 % paired bootstrap interval (evaluation seeds and clients resampled \
together): an interval above 0 means better than the firm's rules beyond noise. Retention and \
anxious-click share margins say whether it keeps clients (retention no lower) and calm \
(anxious share no higher). Every interval is 95 %, `[low, high]`.

**Rows that are references, not candidates**: `oracle`, `deployable_ceiling`, `no_send` \
(param `role` = `reference`); the heuristics (`role` = `heuristic`) are fixed rules such as the \
firm's `segment_rules`; `role` = `learned` marks trained policies. Group compare charts by the \
`role` param."""

EXPERIMENT_NOTE = f"""\
Cadence: messaging cadence policies evaluated in the simulator on fresh clients.

* `train.py` runs (`<scenario> · <reward> · <agent> vs <baseline> · seed <n>`): one agent \
trained and evaluated beside the baseline heuristics; headline metrics `headline/*`, the \
comparison table under *Artifacts* (`comparison_table.json`, also in the evaluation view).
* `evaluate.py` comparisons (`<scenario> · <reward> · compare <n> policies`): a parent run with \
the headline and the table, a child run per policy (its `role` param, its margin over the \
baseline in `eval/margin/*`).

{FIGURES}"""


def role(policy_name: str) -> str:
    """``reference`` (:data:`REFERENCES`), ``heuristic`` (a fixed-rule kind) or ``learned``
    (anything trained: bandits, SB3 agents, the model-based agent, ``<kind>@<run id>``)."""
    from agents.kinds import names

    base = policy_name.split("@", 1)[0]
    if base in REFERENCES:
        return "reference"
    return "heuristic" if base in names("heuristic") else "learned"


def best_policy(result: Comparison) -> str:
    """The compared policy (references left out) with the highest normalized value."""
    candidates = [p for p in result.metrics if role(p) != "reference"]
    if not candidates:
        raise ValueError(
            f"a comparison needs a policy besides the references {list(REFERENCES)}, got "
            f"{list(result.metrics)}"
        )
    return max(candidates, key=lambda p: result.metrics[p]["eval/normalized_value"][0])


def best_heuristic(result: Comparison, other_than: str | None = None) -> str:
    """The heuristic (not a reference) with the highest normalized value, ``other_than`` left
    out; ``no_send`` where the comparison holds none (a margin over it is the normalized value)."""
    heuristics = [p for p in result.metrics if role(p) == "heuristic" and p != other_than]
    if not heuristics:
        return "no_send"
    return max(heuristics, key=lambda p: result.metrics[p]["eval/normalized_value"][0])


MARGIN_NAMES = ("normalized_value", "retention", "anxious_click_share")
"""the margins with a paired interval, as ``eval/margin/<name>`` (+ ``_ci_low``/``_ci_high``)"""


def paired_margins(
    result: Comparison, policy: str, baseline: str, n_boot: int = 200, seed: int = 0
) -> dict[str, Interval]:
    """``policy`` minus ``baseline`` on the same clients and luck, each of :data:`MARGIN_NAMES`
    with a 95 % paired bootstrap interval: one resample of evaluation seeds, then of clients
    within each, shared by the two policies and by never sending and the oracle (the normalized
    value's 0 and 1). The estimates equal the difference of the table's estimates.

    Normalized value: (value of policy - of baseline) / (oracle's - never sending's), in units of
    that span; retention: difference of the shares of clients kept to the horizon; anxious-click
    share: difference of the shares of clicks that were anxious."""
    groups = [_rollouts(result, name) for name in (policy, baseline, "no_send", "oracle")]
    seeds = [r.seed for r in groups[0]]
    for name, group in zip((baseline, "no_send", "oracle"), groups[1:], strict=True):
        if [r.seed for r in group] != seeds:
            raise ValueError(
                f"paired margins need {policy} and {name} on the same evaluation seeds, got "
                f"{seeds} and {[r.seed for r in group]}"
            )

    def stat(picks: list[tuple[int, np.ndarray]]) -> np.ndarray:
        def cat(group: list, get) -> np.ndarray:
            return np.concatenate([get(group[c])[i] for c, i in picks])

        va, vb, v0, vo = (cat(g, lambda r: r.value).mean() for g in groups)
        span = vo - v0
        shares = []
        for g in groups[:2]:
            clicks = cat(g, lambda r: r.totals["clicked"]).sum()
            anxious = cat(g, lambda r: r.totals["anxious_click"]).sum()
            shares.append(anxious / clicks if clicks else 0.0)
        kept = [cat(g, lambda r: r.retained.astype(float)).mean() for g in groups[:2]]
        return np.array(
            [(va - vb) / span if span else 0.0, kept[0] - kept[1], shares[0] - shares[1]]
        )

    rng = np.random.default_rng(seed)
    sizes = [len(r.value) for r in groups[0]]
    full = stat([(c, np.arange(n)) for c, n in enumerate(sizes)])
    boots = []
    for _ in range(n_boot):
        chosen = rng.integers(0, len(sizes), len(sizes))
        boots.append(stat([(c, rng.integers(0, sizes[c], sizes[c])) for c in chosen]))
    low, high = np.percentile(np.array(boots), [2.5, 97.5], axis=0)
    return {
        name: (float(full[k]), float(low[k]), float(high[k])) for k, name in enumerate(MARGIN_NAMES)
    }


def _rollouts(result: Comparison, name: str) -> list:
    """``name``'s rollouts in seed order; a ValueError naming the policies that have some."""
    own = sorted((r for r in result.rollouts if r.policy == name), key=lambda r: r.seed)
    if not own:
        have = sorted({r.policy for r in result.rollouts})
        raise ValueError(f"the comparison has no rollouts of {name!r}; it has {have}")
    return own


def margin_metrics(margins: dict[str, Interval], prefix: str = "eval/margin/") -> dict[str, float]:
    """``<prefix><name>`` with ``_ci_low``/``_ci_high`` for each margin (MLflow metric names)."""
    out: dict[str, float] = {}
    for name, (est, low, high) in margins.items():
        out[f"{prefix}{name}"] = est
        out[f"{prefix}{name}_ci_low"], out[f"{prefix}{name}_ci_high"] = low, high
    return out


def all_margins(
    result: Comparison, baseline: str, n_boot: int = 200
) -> dict[str, dict[str, Interval]]:
    """:func:`paired_margins` over ``baseline`` of every compared policy (references included)."""
    return {p: paired_margins(result, p, baseline, n_boot) for p in result.metrics}


def log_policy_role(policy: str, baseline: str, margins: dict[str, Interval]) -> None:
    """On the active (per-policy) run: params ``role`` and ``baseline``, metrics
    ``eval/margin/*`` with their paired intervals (``margins``: :func:`paired_margins`)."""
    mlflow.log_params({"role": role(policy), "baseline": baseline})
    mlflow.log_metrics(margin_metrics(margins))


def log_margin_intervals(policy: str, margins: dict[str, Interval] | None) -> None:
    """train.py's run: param ``role`` and the paired intervals of the ``eval/margin/*`` that
    :func:`log_margins` logged (``_ci_low``/``_ci_high`` only: the estimates stay as it logged
    them; ``margins``: :func:`paired_margins` over the same baseline; None: no baseline, the
    role only)."""
    if margins is not None:
        bounds = {k: v for k, v in margin_metrics(margins).items() if k.endswith(("_low", "_high"))}
        mlflow.log_metrics(bounds)
    mlflow.log_param("role", role(policy))


@dataclass
class Headline:
    """What a comparison's top run says first: one policy against one baseline heuristic."""

    policy: str
    baseline: str
    normalized_value: Interval
    ceiling_share: Interval | None
    margins: dict[str, Interval]
    """:func:`paired_margins` of ``policy`` over ``baseline``"""
    best: str
    """the best compared policy (references left out), which ``policy`` may or may not be"""

    def sentence(self) -> str:
        """The headline as one Markdown sentence with every interval."""
        nv = self.normalized_value
        share = self.ceiling_share
        m = self.margins
        text = (
            f"**{self.policy}**: normalized value **{nv[0]:.3f}** {_ci(nv)}"
            + ("" if share is None else f", ceiling share {share[0]:.3f} {_ci(share)}")
            + f"; over **{self.baseline}** (same clients): normalized value "
            f"**{m['normalized_value'][0]:+.3f}** {_ci(m['normalized_value'], True)}, retention "
            f"{m['retention'][0]:+.3f} {_ci(m['retention'], True)}, anxious-click share "
            f"{m['anxious_click_share'][0]:+.3f} {_ci(m['anxious_click_share'], True)}."
        )
        verdict = (
            "better than the baseline beyond noise"
            if m["normalized_value"][1] > 0
            else "worse than the baseline beyond noise"
            if m["normalized_value"][2] < 0
            else "not distinguishable from the baseline"
        )
        keeps = m["retention"][0] >= 0 and m["anxious_click_share"][0] <= 0
        return f"{text} It is {verdict}" + (
            ", keeping clients and calm (retention no lower, anxious share no higher)."
            if keeps
            else ", and does not both keep clients and calm (retention lower or anxious share higher)."
        )


def _ci(interval: Interval, signed: bool = False) -> str:
    f = "+.3f" if signed else ".3f"
    return f"[{interval[1]:{f}}, {interval[2]:{f}}]"


def headline(
    result: Comparison,
    policy: str,
    baseline: str,
    n_boot: int = 200,
    margins: dict[str, Interval] | None = None,
) -> Headline:
    """``policy`` over ``baseline`` with paired intervals (``margins``: already computed by
    :func:`paired_margins`), and which compared policy is best."""
    m = result.metrics[policy]
    return Headline(
        policy=policy,
        baseline=baseline,
        normalized_value=m["eval/normalized_value"],
        ceiling_share=m.get("eval/ceiling_share"),
        margins=margins or paired_margins(result, policy, baseline, n_boot),
        best=best_policy(result),
    )


def log_headline(found: Headline) -> dict[str, float]:
    """On the active (top) run: metrics ``headline/margin`` (normalized value over the baseline)
    with ``headline/margin_lo``/``_hi``, ``headline/normalized_value`` (+ ``_lo``/``_hi``),
    ``headline/retention_margin``, ``headline/anxious_margin`` (+ bounds), and tags
    ``headline.policy``, ``headline.baseline``, ``headline.best_policy``; returns the metrics."""
    nv, m = found.normalized_value, found.margins
    metrics = {
        "headline/normalized_value": nv[0],
        "headline/normalized_value_lo": nv[1],
        "headline/normalized_value_hi": nv[2],
    }
    for name, key in (
        ("margin", "normalized_value"),
        ("retention_margin", "retention"),
        ("anxious_margin", "anxious_click_share"),
    ):
        est, low, high = m[key]
        metrics |= {
            f"headline/{name}": est,
            f"headline/{name}_lo": low,
            f"headline/{name}_hi": high,
        }
    mlflow.log_metrics(metrics)
    mlflow.set_tags(
        {
            "headline.policy": found.policy,
            "headline.baseline": found.baseline,
            "headline.best_policy": found.best,
        }
    )
    return metrics


def comparison_rows(
    result: Comparison, baseline: str, margins: dict[str, dict[str, Interval]]
) -> list[dict[str, object]]:
    """One row per compared policy (best normalized value first): its role, normalized value and
    ceiling share with intervals, its paired margins over ``baseline``, retention, anxious-click
    share and messages per client-week (the table :func:`log_comparison_table` logs).
    ``margins``: :func:`all_margins` over ``baseline``."""
    order = sorted(result.metrics, key=lambda p: -result.metrics[p]["eval/normalized_value"][0])
    rows = []
    for p in order:
        m = result.metrics[p]
        own = margins[p]
        nv, share, gap = (
            m["eval/normalized_value"],
            m["eval/ceiling_share"],
            own["normalized_value"],
        )
        rows.append(
            {
                "policy": p,
                "role": role(p),
                "normalized_value": round(nv[0], 4),
                "normalized_value_ci": _ci(nv),
                "ceiling_share": round(share[0], 4),
                "baseline": baseline,
                "margin": round(gap[0], 4),
                "margin_ci": _ci(gap, True),
                "margin_lo": round(gap[1], 4),
                "margin_hi": round(gap[2], 4),
                "retention": round(m["eval/retention"][0], 4),
                "retention_margin": round(own["retention"][0], 4),
                "anxious_click_share": round(m["eval/anxious_click_share"][0], 4),
                "anxious_margin": round(own["anxious_click_share"][0], 4),
                "messages_per_client_week": round(m["eval/messages_per_client_week"][0], 3),
            }
        )
    return rows


COMPARISON_TABLE = "comparison_table.json"
"""the artifact :func:`log_comparison_table` writes (MLflow's table format)"""


def log_comparison_table(rows: list[dict[str, object]]) -> None:
    """The rows of :func:`comparison_rows` as an MLflow table on the active run."""
    import pandas as pd

    mlflow.log_table(pd.DataFrame(rows), artifact_file=COMPARISON_TABLE)


def rows_markdown(rows: list[dict[str, object]]) -> str:
    """The rows as a compact Markdown table (the run description shows it)."""
    baseline = rows[0]["baseline"] if rows else ""
    lines = [
        f"| policy | role | normalized value | ceiling share | over {baseline} | retention | "
        "anxious-click share | messages / week |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['role']} | {r['normalized_value']:.3f} "
            f"{r['normalized_value_ci']} | {r['ceiling_share']:.3f} | {r['margin']:+.3f} "
            f"{r['margin_ci']} | {r['retention']:.3f} | {r['anxious_click_share']:.3f} | "
            f"{r['messages_per_client_week']:.2f} |"
        )
    return "\n".join(lines)


def evaluation_clients(
    num_clients: int, horizon_days: int, seeds: range | list[int], population: str, scenario: str
) -> pl.DataFrame:
    """The evaluation population, described in one row per evaluation seed: that seed, the
    range of fresh client ids (``evaluation.rollout.EVAL_CLIENT_OFFSET`` on: ids training never
    uses), the clients, days followed, population preset and scenario."""
    from evaluation.rollout import EVAL_CLIENT_OFFSET

    return pl.DataFrame(
        {
            "seed": list(seeds),
            "first_client_id": [EVAL_CLIENT_OFFSET] * len(seeds),
            "last_client_id": [EVAL_CLIENT_OFFSET + num_clients - 1] * len(seeds),
            "num_clients": [num_clients] * len(seeds),
            "horizon_days": [horizon_days] * len(seeds),
            "population": [population] * len(seeds),
            "scenario": [scenario] * len(seeds),
        }
    )


def log_evaluation_input(frame: pl.DataFrame) -> None:
    """``frame`` (:func:`evaluation_clients`) as the active run's dataset input, context
    ``evaluation``, named by its population, clients and seeds."""
    first = frame.row(0, named=True)
    name = (
        f"{first['population']} population · {first['num_clients']:,} clients x "
        f"{frame.height} seed(s) · {first['horizon_days']} days"
    )
    dataset = mlflow.data.from_polars(frame, name=name)  # source: the command that ran
    # runs evaluated on the same clients log the same dataset
    taking_turns(lambda: mlflow.log_input(dataset, context="evaluation"))


NOTE = "mlflow.note.content"
"""the tag the MLflow UI shows and edits as a run's or an experiment's description"""


def describe_experiment(experiment_id: str) -> None:
    """The experiment's description (:data:`EXPERIMENT_NOTE`) and kind: a model-development
    experiment, so the UI opens on its runs (not on the GenAI traces view)."""
    client = mlflow.MlflowClient()
    # every job of a sweep sets these tags on one experiment: the first insert, the rest update
    for key, value in (
        (NOTE, EXPERIMENT_NOTE),
        ("mlflow.experimentKind", "custom_model_development"),
    ):
        taking_turns(partial(client.set_experiment_tag, experiment_id, key, value))


def parent_note(found: Headline, rows: list[dict[str, object]], what: str) -> str:
    """A comparison's top-run description: what it is, the headline, the table, the legend."""
    lines = [found.sentence()]
    if found.best != found.policy:
        lines += ["", f"The best compared policy is **{found.best}**."]
    return "\n".join([*lines, "", what, "", rows_markdown(rows), "", FIGURES])


def child_note(policy: str, margins: dict[str, Interval], baseline: str, parent: str) -> str:
    """A per-policy run's description: its role and its margins over the baseline."""
    kind = role(policy)
    gap = margins["normalized_value"]
    meaning = {
        "reference": "a reference row (a yardstick, not a candidate)",
        "heuristic": "a fixed-rule heuristic",
        "learned": "a learned policy",
    }[kind]
    return (
        f"**{policy}**: {meaning}, in the comparison *{parent}*. Over {baseline} on the same "
        f"clients: normalized value {gap[0]:+.3f} {_ci(gap, True)}, retention "
        f"{margins['retention'][0]:+.3f}, anxious-click share "
        f"{margins['anxious_click_share'][0]:+.3f}.\n\n{FIGURES}"
    )


def train_run_name(scenario: str, reward: str, agent: str, baselines: list[str], seed: int) -> str:
    """``<scenario> · <reward> · <agent> vs <baseline> · seed <n>`` (``vs best of a, b`` for
    several baselines, ``alone`` for none)."""
    others = [b for b in dict.fromkeys(baselines) if b != agent]
    versus = (
        "alone"
        if not others
        else f"vs {others[0]}"
        if len(others) == 1
        else f"vs best of {', '.join(others)}"
    )
    return f"{scenario} · {reward} · {agent} {versus} · seed {seed}"


def compare_run_name(scenario: str, reward: str, count: int) -> str:
    """``<scenario> · <reward> · compare <n> policies``."""
    return f"{scenario} · {reward} · compare {count} policies"


def run_link(ui: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI's page of a run, in its model-training view (not the GenAI one):
    ``<ui>/#/experiments/<experiment id>/runs/<run id>?workflowType=machine_learning``."""
    return (
        f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
        "?workflowType=machine_learning"
    )


@dataclass
class View:
    """What :func:`log_view` logged on a comparison's top run."""

    headline: Headline
    margins: dict[str, dict[str, Interval]]
    """every compared policy's :func:`paired_margins` over the headline's baseline"""
    link: str
    """the run's page in the MLflow UI"""


def log_view(
    result: Comparison,
    policy: str,
    baseline: str,
    clients: pl.DataFrame,
    what: str,
    ui: str,
    n_boot: int = 200,
) -> View:
    """On the active run, the top of a comparison: the headline of ``policy`` over ``baseline``
    (:func:`log_headline`), the comparison as an MLflow table, ``clients``
    (:func:`evaluation_clients`) as its dataset input, and its description (``what`` it is, the
    headline, the table, how to read them); the experiment's description too."""
    margins = all_margins(result, baseline, n_boot)
    found = headline(result, policy, baseline, n_boot, margins[policy])
    log_headline(found)
    rows = comparison_rows(result, baseline, margins)
    log_comparison_table(rows)
    log_evaluation_input(clients)
    mlflow.set_tag(NOTE, parent_note(found, rows, what))
    info = mlflow.active_run().info
    describe_experiment(info.experiment_id)
    return View(found, margins, run_link(ui, info.experiment_id, info.run_id))
