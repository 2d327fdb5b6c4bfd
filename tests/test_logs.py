"""Logged datasets: a valid simulated log round-trips; every bad file is refused naming column
and row, and nothing on disk changes."""

from __future__ import annotations

import numpy as np
import polars as pl
import preloaded
import pytest

from envs.config import RewardConfig, load_setup
from envs.consent import observe
from envs.features import FEATURE_NAMES
from envs.masks import MaskRules, joint_mask, mask_inputs
from envs.spaces import JOINT_ACTIONS
from evaluation.logs import SCHEMA, LogError, read_logs, validate, write_logs
from evaluation.record import uniform_draw
from simulate.world import OUTCOMES, World


def _simulated_log(clients: int = 50, days: int = 3) -> pl.DataFrame:
    """Actions drawn uniformly from those the guardrails allow (a stochastic logging policy with
    known propensities)."""
    s = load_setup()
    ids = np.arange(clients, dtype=np.uint64)
    world = World(s.population, s.env.response, s.scenario, 0, ids)
    rules = MaskRules.from_config(s.env.guardrails)
    rng = np.random.default_rng(0)
    parts = []
    for day in range(days):
        obs = observe(world, day, 0.0)
        allowed = joint_mask(rules, *mask_inputs(obs))
        a = JOINT_ACTIONS[uniform_draw(allowed, rng)]
        out = world.step(day, *a.T)
        frame = {"client_id": ids.astype(np.int64), "day": np.full(clients, day)}
        frame |= {name: obs[:, i] for i, name in enumerate(FEATURE_NAMES)}
        frame |= {c: a[:, i] for i, c in enumerate(("slot", "tone", "channel", "content"))}
        frame["pscore"] = 1 / allowed.sum(axis=1)
        frame |= {k: out[k] for k in OUTCOMES}
        frame["reward"] = out["clicked"].astype(float)
        parts.append(pl.DataFrame(frame))
    return pl.concat(parts)


def test_the_uniform_draw_is_the_picked_allowed_action_of_each_row():
    # any masks, one allowed action a row at least: the draw is, for each row, its allowed
    # action number floor(u * allowed) in flat order (u the row's uniform), so each allowed
    # action has probability 1 / allowed and a blocked one none
    rng = np.random.default_rng(7)
    masks = rng.random((400, 37)) < rng.random((400, 1))
    masks[np.arange(400), rng.integers(0, 37, 400)] = True
    masks[:3] = False
    masks[0, 0] = masks[1, 36] = masks[2, 17] = True  # one allowed action: always that one
    u = np.random.default_rng(11).random(400)
    allowed = masks.sum(axis=1)
    picked = np.minimum((u * allowed).astype(np.int64), allowed - 1)
    expected = [np.flatnonzero(row)[k] for row, k in zip(masks, picked, strict=True)]
    got = uniform_draw(masks, np.random.default_rng(11))
    assert got.tolist() == expected and masks[np.arange(400), got].all()
    assert got[:3].tolist() == [0, 36, 17]
    masks[5] = False
    with pytest.raises(ValueError, match="row 5 of the masks allows no action"):
        uniform_draw(masks, np.random.default_rng(11))


def test_a_simulated_log_round_trips(tmp_path):
    frame = _simulated_log()
    assert set(SCHEMA) <= set(frame.columns)
    path = write_logs(frame, tmp_path / "logs.parquet")
    assert read_logs(path).equals(frame)
    assert [p.name for p in tmp_path.iterdir()] == ["logs.parquet"]  # no temporary file left


def test_a_log_without_the_latent_click_labels_is_a_firms_log_and_is_accepted(tmp_path):
    """calm_click / anxious_click are the simulator's labels, which no firm has: a log may omit
    them, and where present they are held to their kind like any other column."""
    frame = _simulated_log().drop("calm_click", "anxious_click")
    assert read_logs(write_logs(frame, tmp_path / "firm.parquet")).equals(frame)
    bad = _simulated_log().with_columns(pl.lit(0.5).alias("anxious_click"))
    with pytest.raises(LogError, match="column 'anxious_click' must be boolean"):
        validate(bad)
    nulls = _set_cell(_simulated_log(), "calm_click", 4, None)
    with pytest.raises(LogError, match="column 'calm_click' is empty in row 4"):
        validate(nulls)


def _set_cell(frame: pl.DataFrame, column: str, row: int, value) -> pl.DataFrame:
    """``frame`` with one cell changed."""
    return frame.with_columns(
        pl.when(pl.int_range(pl.len()) == row).then(value).otherwise(pl.col(column)).alias(column)
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.drop("pscore"), "missing column 'pscore'"),
        (lambda f: f.with_columns(pl.col("slot").cast(pl.Utf8)), "column 'slot' must be integer"),
        (lambda f: _set_cell(f, "pscore", 7, 0.0), "pscore is 0.0 in row 7"),
        (
            lambda f: _set_cell(f, "pscore", 3, 1.5),
            r"pscore is 1.5 in row 3; .* must lie in \(0, 1\]",
        ),
        (lambda f: f.with_columns(pl.lit(1.0).alias("pscore")), "every pscore is 1"),
        (lambda f: pl.concat([f, f.head(1)]), "client 0 on day 0 appears more than once"),
        (
            lambda f: _set_cell(f, "channel", 5, 9),
            r"column 'channel' is 9 in row 5; the action space allows 0..2",
        ),
        (lambda f: _set_cell(f, "reward", 2, None), "column 'reward' is empty in row 2"),
        (
            lambda f: f.with_columns(pl.lit(-1.0).alias("days_since_last_visit")),
            "feature 'days_since_last_visit' is -1.0 in row 0",
        ),
    ],
)
def test_a_bad_log_is_refused_naming_column_and_row(tmp_path, edit, message):
    bad = edit(_simulated_log())
    with pytest.raises(LogError, match=message):
        validate(bad)
    # writing refuses it too and leaves the earlier file untouched
    path = write_logs(_simulated_log(), tmp_path / "logs.parquet")
    before = path.read_bytes()
    with pytest.raises(LogError, match=message):
        write_logs(bad, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["logs.parquet"]


def test_a_file_that_is_not_parquet_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "logs.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(LogError, match="not a readable Parquet file"):
        read_logs(path)
    assert path.read_bytes() == b"not parquet"
    with pytest.raises(LogError, match="no such file"):
        read_logs(tmp_path / "missing.parquet")


def test_a_logged_heuristic_has_exact_propensities_and_ips_finds_its_day_zero_value(tmp_path):
    from agents.heuristics import HEURISTICS
    from envs.core import CadenceCore
    from evaluation import ope
    from evaluation.record import LOG_CLIENT_OFFSET, log_policy

    setup = load_setup()
    policy = HEURISTICS["segment_rules"]()
    frame = log_policy(policy, setup, 3000, 4, seed=5, epsilon=0.3)
    validate(frame)
    assert frame.equals(log_policy(policy, setup, 3000, 4, seed=5, epsilon=0.3))
    assert frame["pscore"].min() > 0 and frame["pscore"].max() <= 1
    # the policy's own (deterministic) choices on day 0, on the same clients and luck
    core = CadenceCore(setup, 3000, autoreset=False, client_id_offset=LOG_CLIENT_OFFSET)
    obs = core.reset(5)
    own = np.asarray(policy.act(obs, core.joint_masks()))
    truth = core.step(own)
    weights = RewardConfig().weights()
    true_value = float(np.mean(sum(w * truth.outcomes[k] for k, w in weights.items())))
    day0 = frame.filter(pl.col("day") == 0)
    logged = day0.select("slot", "tone", "channel", "content").to_numpy()
    target = (logged == own).all(axis=1).astype(float)
    est = ope.ips(day0["reward"].to_numpy(), day0["pscore"].to_numpy(), target, n_boot=200)
    assert est.ci_low <= true_value <= est.ci_high, (est, true_value)


def test_a_policy_that_asks_for_blocked_sends_cannot_be_logged():
    from agents.base import Policy
    from evaluation.record import log_policy

    class LatePush(Policy):
        name = "late_push"

        def act(self, obs, masks):
            return np.tile([6, 0, 1, 0], (len(obs), 1))  # push in the late slot: quiet hours

    with pytest.raises(ValueError, match="late_push asked for a blocked action for client row 0"):
        log_policy(LatePush(), load_setup(), 20, 2, seed=0)
    with pytest.raises(ValueError, match="epsilon must lie in"):
        log_policy(LatePush(), load_setup(), 20, 2, seed=0, epsilon=0.0)


@pytest.mark.slow  # a simulated log and its truth rolled out
def test_offline_estimates_from_a_simulated_log_stand_beside_the_truth():
    import math

    from agents.heuristics import HEURISTICS
    from agents.oracle import Oracle
    from evaluation.offline import estimate, table
    from evaluation.record import log_policy

    setup = load_setup()
    frame = log_policy(HEURISTICS["segment_rules"](), setup, 5000, 14, seed=3, epsilon=0.2)
    results = estimate(
        frame,
        [HEURISTICS["segment_rules"](), HEURISTICS["fixed_weekly"]()],
        setup,
        n_boot=200,
        fqe_boot=3,
    )
    same, other = results
    pdwis = same.estimates["pdwis"]
    # the logging policy's own greedy part: supported, and the truth lies in the interval
    assert pdwis.ci_low <= same.truth <= pdwis.ci_high, (pdwis, same.truth)
    assert pdwis.ess > 100
    # a deterministic target the log never follows for two weeks: no evidence, said as NaN
    assert math.isnan(other.estimates["pdwis"].value) and other.truth is not None
    text = table(results)
    assert "| segment_rules | pdwis |" in text
    assert next(r for r in text.splitlines() if "| fixed_weekly | pdwis |" in r).endswith(
        "| no logged support |"
    )
    with pytest.raises(ValueError, match="reads the world it acts in"):
        estimate(frame, [Oracle()], setup, n_boot=5)
    with pytest.raises(ValueError, match="random draws its actions at random"):
        estimate(frame, [HEURISTICS["random"]()], setup, n_boot=5)


@pytest.mark.slow  # estimates logged to an empty MLflow store
def test_evaluate_mode_estimate_prints_and_logs_to_mlflow(tmp_path, mlflow_store, capsys):
    import mlflow

    from agents.heuristics import HEURISTICS
    from evaluation.record import log_policy
    from tests.test_evaluate_modes import _run

    path = write_logs(
        log_policy(HEURISTICS["segment_rules"](), load_setup(), 800, 5, seed=1, epsilon=0.3),
        tmp_path / "logs.parquet",
    )
    uri = mlflow_store
    ids = _run(
        "mode=estimate", f"estimate.data={path}", "policies=[segment_rules]", f"tracking.uri={uri}"
    )
    assert "| segment_rules | pdwis |" in capsys.readouterr().out
    runs = mlflow.MlflowClient(uri).search_runs(
        [mlflow.MlflowClient(uri).get_experiment_by_name("cadence").experiment_id]
    )
    assert [r.info.run_id for r in runs] == ids and runs[0].data.tags["command"] == "ope"
    metrics = runs[0].data.metrics
    assert {"ope/pdwis/value", "ope/pdwis/ci_low", "ope/snips/value", "ope/truth"} <= set(metrics)


@pytest.mark.slow  # 30 refits of a linear Q per day
def test_fitted_q_evaluation_recovers_the_logging_policys_value():
    from agents.heuristics import HEURISTICS
    from evaluation.offline import fqe, true_value
    from evaluation.record import log_policy

    setup = load_setup()
    policy = HEURISTICS["segment_rules"]()
    frame = log_policy(policy, setup, 2000, 7, seed=4, epsilon=0.2)
    est = fqe(frame, policy, setup, epsilon=0.2, n_boot=30)
    truth = true_value(policy, frame, setup, epsilon=0.2)
    assert est.ci_low <= truth <= est.ci_high, (est, truth)
    assert est.n == frame["client_id"].n_unique()


@pytest.mark.slow  # two evaluate.py processes
def test_evaluate_logs_a_policy_and_estimates_from_the_file(tmp_path, mlflow_store):
    import subprocess
    import sys

    import mlflow

    uri = mlflow_store
    out = tmp_path / "logs.parquet"
    common = [f"tracking.uri={uri}", "hydra.run.dir=" + str(tmp_path / "h")]

    def evaluate(*args: str) -> subprocess.CompletedProcess:
        return preloaded.run(
            [sys.executable, "evaluate.py", *args, *common], capture_output=True, text=True
        )

    done = evaluate(
        "mode=record",
        f"record.out={out}",
        "record.epsilon=0.3",
        "eval.num_clients=400",
        "eval.horizon_days=5",
        "record.truth=[no_send]",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_logs(out).height > 0 and "counterfactual_no_send" in read_logs(out).columns
    done = evaluate(
        "mode=estimate",
        f"estimate.data={out}",
        "estimate.soften=0.3",
        "policies=[segment_rules,no_send]",
        "eval.n_boot=20",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| no_send | pdwis |" in done.stdout
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cadence").experiment_id])
    assert sorted(r.data.tags["policy"] for r in runs) == ["no_send", "segment_rules"]
    steps = {r.data.tags["policy"]: "ope/step_truth" in r.data.metrics for r in runs}
    assert steps == {"no_send": True, "segment_rules": False}  # only no_send's was logged
    # (a logger that does not explore, record.epsilon=0, is refused: test_evaluate_modes.py
    # checks that in process, and evaluate.py's one-line exit 2 for a refusal on its own)
