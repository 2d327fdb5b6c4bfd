"""What an analyst reads in the MLflow UI, checked in a real SQLite MLflow store: runs named for
what they compare, descriptions on the experiment and the runs, each policy's role and its margin
over the baseline with a paired interval, the headline on the top run, the comparison as an
MLflow table, the evaluation clients as a dataset input, the printed UI link, and a registered
version's evaluation figures."""

from __future__ import annotations

import re

import mlflow
import pytest
from hydra import compose, initialize_config_dir

import evaluate
from agents.config import AgentConfig
from agents.registry import make_policy
from envs.config import CONF_DIR, load_setup
from evaluation.compare import compare
from experiment import registry, reporting
from experiment.schema import register, validate_run
from simulate.config import ConfigError

SMALL = ["eval.num_clients=60", "eval.horizon_days=7", "eval.num_seeds=2", "eval.n_boot=30"]


def _compose(*overrides: str):
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _store(uri: str) -> str:
    """MLflow pointed at ``uri`` (an empty store, its tables made: :func:`mlflow_store`)."""
    mlflow.set_tracking_uri(uri)
    return uri


@pytest.fixture(scope="module")
def small_comparison():
    """Three heuristics and the references on 60 clients x 7 days x 2 seeds."""
    setup = load_setup()
    policies = [make_policy(AgentConfig(name=n)) for n in ("segment_rules", "fixed_weekly")]
    return compare(policies, setup, 60, 7, seeds=[1000, 1001], n_boot=30, progress=False)


def test_roles_name_references_heuristics_and_learned_policies():
    assert [reporting.role(n) for n in reporting.REFERENCES] == ["reference"] * 3
    assert reporting.role("segment_rules") == "heuristic"
    assert reporting.role("random") == "heuristic"
    assert reporting.role("linucb") == "learned"
    assert reporting.role("ppo_lagrangian@ab12cd34") == "learned"


def test_paired_margin_matches_the_table_and_its_interval_holds_it(small_comparison):
    result = small_comparison
    m = result.metrics
    margins = reporting.paired_margins(result, "segment_rules", "fixed_weekly", n_boot=50)
    for name in reporting.MARGIN_NAMES:
        est, low, high = margins[name]
        expected = m["segment_rules"][f"eval/{name}"][0] - m["fixed_weekly"][f"eval/{name}"][0]
        assert est == pytest.approx(expected, abs=1e-12), name
        assert low <= est <= high, name
    # a policy against itself differs by nothing, on every resample
    assert reporting.paired_margins(result, "fixed_weekly", "fixed_weekly", 20) == {
        name: (0.0, 0.0, 0.0) for name in reporting.MARGIN_NAMES
    }
    with pytest.raises(ValueError, match="no rollouts of 'linucb'"):
        reporting.paired_margins(result, "linucb", "fixed_weekly")


def test_train_run_names_say_what_is_compared():
    name = reporting.train_run_name("calm", "balanced", "ppo", ["segment_rules"], 3)
    assert name == "calm · balanced · ppo vs segment_rules · seed 3"
    assert "vs best of segment_rules, fixed_weekly" in reporting.train_run_name(
        "calm", "balanced", "ppo", ["segment_rules", "fixed_weekly"], 0
    )
    assert reporting.compare_run_name("misfire", "engagement", 4) == (
        "misfire · engagement · compare 4 policies"
    )


def test_tracking_ui_must_be_an_address():
    with pytest.raises(ConfigError, match="tracking.ui must be the MLflow UI's address"):
        validate_run(_compose("tracking.ui=localhost:5000"))


@pytest.mark.slow  # a comparison logged to an empty MLflow store
@pytest.mark.usefixtures("mlflow_store")  # an empty store, its tables made
def test_evaluate_compare_gives_the_analyst_view(tmp_path, capsys, mlflow_store):
    uri = _store(mlflow_store)
    cfg = _compose(
        "policies=[segment_rules,fixed_weekly,random]",
        f"tracking.uri={uri}",
        "tracking.ui=http://ui.example:8080/",
        *SMALL,
    )
    parent_id = evaluate.run_mode(cfg)
    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    experiment = client.get_experiment(parent.info.experiment_id)

    # the experiment: described, and a model-development one (the UI opens on its runs)
    assert "0 is never sending and 1 is the oracle" in experiment.tags[reporting.NOTE]
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    # the parent: named for what it compares, with the headline and its paired interval
    assert parent.data.tags["mlflow.runName"] == "calm · balanced · compare 3 policies"
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    nv = {c.data.tags["policy"]: c.data.metrics["eval/normalized_value"] for c in children}
    candidates = {"segment_rules", "fixed_weekly", "random"}
    best = max(candidates, key=nv.get)
    baseline = max(candidates - {best}, key=nv.get)
    tags, metrics = parent.data.tags, parent.data.metrics
    assert (tags["headline.policy"], tags["headline.baseline"]) == (best, baseline)
    assert tags["headline.best_policy"] == best
    margin = metrics["headline/margin"]
    assert margin == pytest.approx(nv[best] - nv[baseline], abs=1e-9)
    assert metrics["headline/margin_lo"] <= margin <= metrics["headline/margin_hi"]
    assert metrics["headline/margin_lo"] < metrics["headline/margin_hi"]
    assert metrics["headline/normalized_value"] == pytest.approx(nv[best])
    note = tags[reporting.NOTE]
    assert f"**{best}**: normalized value" in note and f"over **{baseline}**" in note
    assert "| oracle | reference |" in note and "Rows that are references" in note

    # each child: named by its policy, its role, its margin over the baseline with an interval
    assert {c.data.tags["mlflow.runName"] for c in children} == candidates | set(
        reporting.REFERENCES
    )
    for child in children:
        policy = child.data.tags["policy"]
        params, m = child.data.params, child.data.metrics
        assert params["role"] == reporting.role(policy)
        assert params["baseline"] == baseline
        est = m["eval/margin/normalized_value"]
        assert est == pytest.approx(nv[policy] - nv[baseline], abs=1e-9), policy
        assert m["eval/margin/normalized_value_ci_low"] <= est, policy
        assert est <= m["eval/margin/normalized_value_ci_high"], policy
        assert {"eval/margin/retention_ci_low", "eval/margin/anxious_click_share_ci_high"} <= set(m)
        assert f"**{policy}**" in child.data.tags[reporting.NOTE]
    roles = {c.data.tags["policy"]: c.data.params["role"] for c in children}
    assert roles["oracle"] == roles["no_send"] == roles["deployable_ceiling"] == "reference"

    # the comparison as an MLflow table, the evaluation clients as a dataset input
    table = mlflow.load_table(reporting.COMPARISON_TABLE, run_ids=[parent_id])
    assert set(table["policy"]) == candidates | set(reporting.REFERENCES)
    assert list(table["normalized_value"]) == sorted(table["normalized_value"], reverse=True)
    row = table.set_index("policy").loc[best]
    assert row["margin"] == pytest.approx(margin, abs=1e-4) and row["role"] == "heuristic"
    (dataset,) = parent.inputs.dataset_inputs
    assert [t.value for t in dataset.tags if t.key == "mlflow.data.context"] == ["evaluation"]
    assert "60 clients x 2 seed(s) · 7 days" in dataset.dataset.name
    assert '"num_rows": 2' in dataset.dataset.profile  # one row per evaluation seed

    # the printed link opens the run's page in the configured UI
    out = capsys.readouterr().out
    link = f"http://ui.example:8080/#/experiments/{experiment.experiment_id}/runs/{parent_id}"
    assert link in out


def test_merge_section_keeps_other_sections():
    first = registry.merge_section(None, "evaluation", "figures v1")
    both = registry.merge_section(first, "promotion", "evidence")
    again = registry.merge_section(both, "evaluation", "figures v2")
    assert "figures v2" in again and "figures v1" not in again and "evidence" in again
    assert again.index("figures v2") < again.index("evidence")
    with pytest.raises(ValueError, match="section key"):
        registry.merge_section("", "Bad Key", "x")


@pytest.mark.slow  # trains, evaluates and exports into an empty MLflow store
@pytest.mark.usefixtures("mlflow_store")  # an empty store, its tables made
def test_train_then_export_carries_the_evaluation_figures(
    tmp_path, monkeypatch, capsys, mlflow_store
):
    """A bandit trained briefly, evaluated and exported (about 15 s)."""
    import export
    import train

    monkeypatch.chdir(tmp_path)
    uri = _store(mlflow_store)
    cfg = _compose(
        "agent=epsilon_greedy",
        "trainer.total_timesteps=3000",
        "env.num_clients=100",
        f"tracking.uri={uri}",
        *SMALL,
    )
    run, setup = validate_run(cfg)
    train.run_training(cfg, run, setup)
    client = mlflow.MlflowClient()
    (found,) = client.search_runs([client.get_experiment_by_name("cadence").experiment_id])
    run_id, tags, m = found.info.run_id, found.data.tags, found.data.metrics
    assert tags["mlflow.runName"] == "calm · balanced · epsilon_greedy vs segment_rules · seed 0"
    assert found.data.params["role"] == "learned"
    assert (tags["headline.policy"], tags["headline.baseline"]) == (
        "epsilon_greedy",
        "segment_rules",
    )
    assert m["headline/margin"] == pytest.approx(m["eval/margin/normalized_value"], abs=1e-9)
    assert m["headline/margin_lo"] <= m["headline/margin"] <= m["headline/margin_hi"]
    assert m["eval/margin/normalized_value_ci_low"] == m["headline/margin_lo"]
    assert "Training run of **epsilon_greedy**" in tags[reporting.NOTE]
    assert mlflow.load_table(reporting.COMPARISON_TABLE, run_ids=[run_id]).shape[0] == 5
    assert len(found.inputs.dataset_inputs) == 1
    out = capsys.readouterr().out
    assert re.search(rf"http://127\.0\.0\.1:5000/#/experiments/\d+/runs/{run_id}", out)

    export.run_export(
        export.ExportConfig(run_id=run_id, out=str(tmp_path / "export"), tracking=run.tracking)
    )
    version = client.get_model_version(export.REGISTERED_NAME, "1")
    vt = version.tags
    assert vt["evaluation.run_id"] == run_id and vt["evaluation.baseline"] == "segment_rules"
    nv = m["eval/normalized_value"]
    assert vt["evaluation.normalized_value"] == (
        f"{nv:.3f} [{m['eval/normalized_value_ci_low']:.3f}, "
        f"{m['eval/normalized_value_ci_high']:.3f}]"
    )
    margin = m["eval/margin/normalized_value"]
    assert vt["evaluation.margin"].startswith(f"{margin:+.3f} [")
    assert (
        "evaluation.ceiling_share" in vt
        and "60 fresh clients x 7 days x 2" in vt["evaluation.clients"]
    )
    assert vt["evaluation.normalized_value"] in version.description
    assert f"runs/{run_id}" in version.description
    assert "/#/models/cadence-policy/versions/1" in capsys.readouterr().out
