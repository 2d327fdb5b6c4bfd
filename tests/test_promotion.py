"""promote.py: the alias `champion` moves only on evidence from a log, and rolls back.

Real MLflow (a SQLite store in tmp_path), real logs from the simulator (`log_policy`, the
observable reward), registered versions whose source runs hold the policy as train.py saves it.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import preloaded
import pytest

from agents.heuristics import HEURISTICS
from agents.registry import save_policy
from envs.config import load_setup
from evaluation.logs import write_logs
from evaluation.record import log_policy
from experiment import promotion
from experiment.tracking import setup_mlflow

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import promote  # noqa: E402

FAST = ["n_boot=200", "fqe_boot=10"]
SOFTEN = 0.1


def _soft_truth(frame: pl.DataFrame, name: str) -> float:
    """The one-step truth of ``name`` served ε-soft (ε = SOFTEN) on the logged states: its own
    action's counterfactual reward, and a uniform allowed action's for the ε share."""
    own = frame[f"counterfactual_{name}"].mean()
    return (1 - SOFTEN) * own + SOFTEN * frame["counterfactual_uniform"].mean()


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> dict[str, Path]:
    """Three simulated logs with the observable reward: batch_and_blast served with ε = 0.8
    (3,000 clients x 14 days), a fully exploring log (ε = 1), and a small segment_rules log."""
    setup = load_setup(reward="observable")
    folder = tmp_path_factory.mktemp("logs")
    targets = [HEURISTICS["segment_rules"](), HEURISTICS["batch_and_blast"]()]
    made = {
        "blast": (HEURISTICS["batch_and_blast"](), 3000, 14, 0.8),
        "uniform": (HEURISTICS["segment_rules"](), 3000, 14, 1.0),
        "small": (HEURISTICS["segment_rules"](), 300, 7, 0.3),
    }
    paths = {}
    for name, (logger, clients, days, eps) in made.items():
        frame = log_policy(logger, setup, clients, days, seed=3, epsilon=eps,
                           yardstick=setup.reward, counterfactual=targets)  # fmt: skip
        paths[name] = write_logs(frame, folder / f"{name}.parquet")
    return paths


@pytest.fixture
def store(mlflow_store, monkeypatch) -> str:
    uri = mlflow_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    setup_mlflow(uri, "cadence")
    return uri


def _register(name: str, tmp_path: Path) -> str:
    """A run holding heuristic ``name`` as train.py saves a policy, registered as a version of
    cadence-policy (what export.py does with a trained run); the version number."""
    client = mlflow.MlflowClient()
    if not client.search_registered_models(f"name='{promotion.REGISTERED_NAME}'"):
        client.create_registered_model(promotion.REGISTERED_NAME)
    mlflow.set_experiment("cadence")
    with mlflow.start_run(tags={"agent": name}) as run:
        folder = save_policy(HEURISTICS[name](), tmp_path / f"saved-{name}-{run.info.run_id}")
        mlflow.log_artifacts(str(folder), "policy")
    version = client.create_model_version(
        promotion.REGISTERED_NAME, f"runs:/{run.info.run_id}/policy", run_id=run.info.run_id
    )
    return str(version.version)


def _alias() -> str | None:
    return promotion.current_champion()


@pytest.mark.slow  # simulated logs (module fixture) and registered versions in an empty store
def test_a_truly_better_challenger_is_promoted_and_rollback_restores_the_champion(
    logs, store, tmp_path, capsys
):
    frame = pl.read_parquet(logs["blast"])
    truth = _soft_truth(frame, "segment_rules") - _soft_truth(frame, "batch_and_blast")
    assert truth > 0.05  # segment_rules is truly better on these states, by a wide margin
    old = _register("batch_and_blast", tmp_path)
    mlflow.MlflowClient().set_registered_model_alias(promotion.REGISTERED_NAME, "champion", old)
    new = _register("segment_rules", tmp_path)

    status = promote.cli([f"challenger=models:/cadence-policy/{new}", f"data={logs['blast']}",
                          *FAST])  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0, out
    assert _alias() == new
    version = mlflow.MlflowClient().get_model_version(promotion.REGISTERED_NAME, new)
    tags = version.tags
    assert tags["previous_champion"] == old
    assert tags["promotion.decision"] == "promoted"
    sha = hashlib.sha256(Path(logs["blast"]).read_bytes()).hexdigest()
    assert tags["promotion.log_sha256"] == f"sha256:{sha}"
    low, high = (float(v) for v in tags["promotion.reward_diff_ci"].strip("[]").split(","))
    assert 0 < low <= truth <= high  # the paired interval clears 0 and holds the truth
    assert "clears the gate" in version.description and "pdwis" in version.description
    run = mlflow.get_run(tags["promotion.run_id"])
    assert run.data.tags["decision"] == "cleared"
    assert mlflow.get_experiment(run.info.experiment_id).name == promotion.EXPERIMENT
    assert run.data.params["data_sha256"] == f"sha256:{sha}"
    assert run.data.metrics["reward/diff_ci_low"] == pytest.approx(low, rel=1e-5)
    assert "promotion.md" in {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}

    assert promote.cli(["mode=rollback", "reason=complaints up"]) == 0
    assert _alias() == old
    rolled = mlflow.MlflowClient().get_model_version(promotion.REGISTERED_NAME, new)
    note = mlflow.get_run(rolled.tags["rolled_back_by"])
    assert note.data.params["reason"] == "complaints up" and note.data.params["to"] == old


@pytest.mark.slow  # simulated logs (module fixture) and registered versions in an empty store
def test_a_worse_challenger_is_refused_naming_the_lower_bound_and_the_margin(
    logs, store, tmp_path, capsys
):
    frame = pl.read_parquet(logs["uniform"])
    assert _soft_truth(frame, "batch_and_blast") < _soft_truth(frame, "segment_rules")
    worse = _register("batch_and_blast", tmp_path)
    status = promote.cli([f"challenger=models:/cadence-policy/{worse}", "champion=segment_rules",
                          f"data={logs['uniform']}", "shadow=true", *FAST])  # fmt: skip
    out = capsys.readouterr().out
    assert status == promote.REFUSED, out
    evidence = mlflow.MlflowClient().get_model_version(promotion.REGISTERED_NAME, worse).tags
    low = float(evidence["promotion.reward_diff_ci"].strip("[]").split(",")[0])
    assert low < 0
    assert f"the lower bound of the paired difference (challenger - champion) is {low:.4g}" in out
    assert "not above the margin 0" in out
    assert "too little support" not in out  # the log supports both: the reward decided
    assert _alias() is None  # the alias never moved
    assert evidence["promotion.decision"] == "refused" and "previous_champion" not in evidence


@pytest.mark.slow  # simulated logs (module fixture) and registered versions in an empty store
def test_too_little_support_is_refused_naming_the_effective_sample_size(logs, store, capsys):
    status = promote.cli(["challenger=batch_and_blast", "champion=segment_rules", "shadow=true",
                          f"data={logs['small']}", *FAST])  # fmt: skip
    out = capsys.readouterr().out
    assert status == promote.REFUSED, out
    setup = load_setup(reward="observable")
    frame = pl.read_parquet(logs["small"])
    probs = promotion.target_pscores(HEURISTICS["batch_and_blast"](), frame, setup, SOFTEN)
    ess = promotion.effective_sample_size(probs / frame["pscore"].to_numpy())
    assert ess < promotion.MIN_ESS
    assert (
        f"effective sample size for the challenger batch_and_blast is {ess:,.1f}, "
        "below min_ess 200" in out
    )


@pytest.mark.slow  # simulated logs (module fixture), a shadow period served and joined
def test_promoting_from_the_firms_rules_needs_a_shadow_period(logs, store, tmp_path, capsys):
    better = _register("segment_rules", tmp_path)
    run_id = mlflow.MlflowClient().get_model_version(promotion.REGISTERED_NAME, better).run_id
    args = [f"challenger=run:{run_id[:8]}", "champion=batch_and_blast",  # its version moves
            f"data={logs['blast']}", *FAST]  # fmt: skip
    assert promote.cli(args) == promote.REFUSED
    assert "no shadow evidence" in capsys.readouterr().out and _alias() is None
    # a log whose decision-log mode says serve is no shadow period, whatever is stated
    served = pl.read_parquet(logs["blast"]).with_columns(mode=pl.lit("serve"))
    check = promotion.shadow_check(served, "batch_and_blast", None, stated=True)
    assert not check.passed and f"{served.height:,} of {served.height:,}" in check.reason
    shadowed = served.with_columns(mode=pl.lit("shadow"))
    assert promotion.shadow_check(shadowed, "batch_and_blast", None, stated=False).passed
    assert promote.cli([*args, "shadow=true"]) == 0  # stated, and recorded as stated
    assert _alias() == better
    tags = mlflow.MlflowClient().get_model_version(promotion.REGISTERED_NAME, better).tags
    assert tags["previous_champion"] == "heuristic:batch_and_blast"
    # judged against the rules while a version is champion: recorded, the alias not moved
    assert promote.cli([*args, "shadow=true"]) == 2
    assert "not at the champion judged against (no alias)" in capsys.readouterr().err
    assert _alias() == better
    assert promote.cli(["mode=rollback"]) == 0 and _alias() is None  # the firm's rules again


@pytest.mark.slow  # simulated logs (module fixture)
def test_the_decision_log_says_whether_a_joined_log_is_a_shadow_periods(logs):
    frame = pl.read_parquet(logs["small"]).with_columns(
        decision_id=pl.format("d{}", pl.int_range(pl.len()))
    )
    modes = ["shadow"] * (frame.height - 2) + ["serve", "serve"]
    decisions = pl.DataFrame({"decision_id": frame["decision_id"], "mode": modes})
    check = promotion.shadow_check(frame, "segment_rules", decisions, stated=True)
    assert not check.passed and "2 of 2,092 logged decisions are not in shadow mode" in check.reason
    decisions = decisions.with_columns(mode=pl.lit("shadow"))
    check = promotion.shadow_check(frame, "segment_rules", decisions, stated=False)
    assert check.passed and check.value == "2,092 of 2,092 rows shadow (the decision log)"


def test_the_same_resamples_for_both_policies_make_a_policy_against_itself_exactly_zero():
    rng = np.random.default_rng(0)
    reward, pscore = rng.normal(size=500), rng.uniform(0.1, 1, 500)
    target = rng.uniform(0, 1, 500)
    paired = promotion.paired_differences({"reward": reward}, pscore, target, target,
                                          rng.integers(0, 50, 500), n_boot=100)  # fmt: skip
    assert (paired["reward"].ci_low, paired["reward"].ci_high) == (0.0, 0.0)


BAD = [
    (
        ["challenger=models:/cadence-policy/9", "data={small}"],
        "no models:/cadence-policy/9 in the registry",
    ),
    (
        ["challenger=random", "champion=segment_rules", "data={small}"],
        "draws its actions at random",
    ),
    (["challenger=segment_rules", "data=/nowhere/log.parquet"], "no logged dataset at"),
    (["challenger=segment_rules", "champion=no_send", "data={unlogged}"], "pscore"),
    (["challenger=segment_rules", "data={small}", "harm_margin.fear=1"], "harm_margin.fear"),
    (["challenger=segment_rules", "data={small}"], "has no 'champion' alias"),
    (["mode=rollback"], "has no 'champion' alias"),
    (["challenger=segment_rules", "reason=x"], "reason is not read by mode=promote"),
    (["challenger=segment_rules", "margin=much"], "could not be converted to Float"),
]


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory, empty_store) -> Iterator[str]:
    """One store for the refusals (none of them writes a version or moves an alias)."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{shutil.copyfile(empty_store, folder / 'mlflow.db')}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        setup_mlflow(uri, "cadence")
        _register("segment_rules", folder)
        yield uri


@pytest.mark.slow  # simulated logs (module fixture) and a registered store
@pytest.mark.parametrize("args, message", BAD)
def test_bad_inputs_are_refused_in_one_line(logs, shared_store, tmp_path, capsys, args, message):
    unlogged = tmp_path / "no_pscore.parquet"  # a log without propensities
    pl.read_parquet(logs["small"]).drop("pscore").write_parquet(unlogged)
    given = [a.format(small=logs["small"], unlogged=unlogged) for a in args]
    assert promote.cli(given) == 2
    err = capsys.readouterr().err.splitlines()  # MLflow may log a line first (a new experiment)
    assert [line for line in err if line.startswith("error: ")] == err[-1:], err
    assert message in err[-1], err
    assert _alias() is None


@pytest.mark.slow  # a promote.py process: Hydra + MLflow start-up
def test_the_command_line_refuses_an_unknown_key_in_one_line():
    done = preloaded.run([sys.executable, str(ROOT / "promote.py"), "chalenger=x"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert "chalenger" in done.stderr
