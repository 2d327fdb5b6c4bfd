"""Export and the guarded runtime: parity with the in-process policy, refusal of untrustworthy
files and malformed requests, and guardrails that no network output can get around."""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.config import AgentConfig
from agents.heuristics import RandomPolicy
from agents.registry import train_agent
from envs.config import GuardrailConfig, load_setup
from envs.core import CadenceCore
from envs.features import FEATURE_NAMES, OBS_HIGH
from envs.masks import MaskRules, joint_mask, mask_inputs
from envs.spaces import multi_to_flat
from serve.onnx_export import NotExportable, export_policy
from serve.runtime import ExportError, PolicyRuntime, RequestError

SETUP = load_setup()
EXPORTABLE = (
    "ppo",
    "a2c",
    "maskable_ppo",
    "ppo_lagrangian",
    "ppo_lagrangian:asymmetric",  # its critic read privileged state in training; its actor did not
    "ppo_lagrangian:masked",  # the default preset: MaskablePPO under the Lagrangian costs
    "epsilon_greedy",
    "linucb",
    "thompson",
)


@pytest.fixture(scope="module")
def observations() -> np.ndarray:
    """10,000 observations from clients with varied histories (2,000 clients x 5 days)."""
    core = CadenceCore(SETUP, 2000, client_id_offset=1 << 44)
    obs = core.reset(3)
    policy, seen = RandomPolicy(1), []
    for day in range(40):
        step = core.step(policy.act(obs, core.joint_masks()))
        obs = step.obs
        if day % 8 == 7:
            seen.append(obs.copy())
    return np.concatenate(seen)


def _train(name: str):
    name, _, variant = name.partition(":")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train_agent(
            AgentConfig(
                name=name,
                **(
                    {"n_steps": 16}
                    if name in ("ppo", "a2c", "maskable_ppo", "ppo_lagrangian")
                    else {}
                ),
                **({"asymmetric_critic": True} if variant == "asymmetric" else {}),
                **({"action_masking": True} if variant == "masked" else {}),
            ),
            SETUP,
            # one rollout of 128 clients x 16 days (one update for the SB3 agents): what the
            # export is checked against is the policy as trained, however briefly
            2048,
            128,
            progress=False,
        )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = {}
    for name in EXPORTABLE:
        policy = _train(name)
        folder = tmp_path_factory.mktemp(name.replace(":", "-"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_policy(policy, folder, run_id=f"test-{name}", metrics={"eval/value": 1.0})
        out[name] = (policy, folder)
    return out


@pytest.mark.slow  # nine agents trained and exported (module fixture)
@pytest.mark.parametrize("name", EXPORTABLE)
def test_onnx_actions_equal_the_in_process_policy(name, exported, observations):
    policy, folder = exported[name]
    runtime = PolicyRuntime.load(folder)
    assert len(observations) == 10_000
    onnx_action, logits = runtime.session.run(["action", "logits"], {"obs": observations})
    assert onnx_action.dtype == np.int64 and onnx_action.shape == (10_000, 4)
    assert logits.dtype == np.float32 and logits.shape == (10_000, 19)
    every = np.ones((len(observations), 361), dtype=bool)
    np.testing.assert_array_equal(onnx_action, policy.act(observations, every))
    masks = joint_mask(MaskRules.from_config(GuardrailConfig()), *mask_inputs(observations))
    decided = runtime.decide(observations, explain=False).action
    np.testing.assert_array_equal(decided, policy.act(observations, masks))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["feature_names"] == list(FEATURE_NAMES)
    assert manifest["training_run_id"] == f"test-{name}" and manifest["metrics"] == {
        "eval/value": 1.0
    }
    assert manifest["action_labels"]["slot"][0] == "no_send"
    assert {"numpy", "onnxruntime", "torch"} <= set(manifest["package_versions"])


@pytest.mark.parametrize("name", ["dqn", "recovering", "recurrent_ppo"])
def test_policies_without_a_stateless_factored_action_are_refused(name, tmp_path):
    with pytest.raises(NotExportable, match="DQN|memory"):
        export_policy(_train(name), tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_runtime_masks_equal_the_env_masks(observations):
    runtime = PolicyRuntime.load(_any_export())
    ours = runtime.guards.joint_mask(observations)
    np.testing.assert_array_equal(
        ours, joint_mask(MaskRules.from_config(GuardrailConfig()), *mask_inputs(observations))
    )


_CACHE: dict[str, Path] = {}


def _any_export() -> Path:
    if "ppo" not in _CACHE:
        import tempfile

        folder = Path(tempfile.mkdtemp())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_policy(_train("ppo"), folder)
        _CACHE["ppo"] = folder
    return _CACHE["ppo"]


def test_tampered_onnx_is_refused(tmp_path):
    folder = tmp_path / "export"
    import shutil

    shutil.copytree(_any_export(), folder)
    data = bytearray((folder / "policy.onnx").read_bytes())
    data[-10] ^= 0xFF
    (folder / "policy.onnx").write_bytes(bytes(data))
    with pytest.raises(ExportError, match="SHA-256"):
        PolicyRuntime.load(folder)


def test_manifest_of_another_version_is_refused(tmp_path):
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(_any_export(), folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format_version"] = 99
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="format_version 99; this runtime reads 3"):
        PolicyRuntime.load(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(ExportError, match="manifest.json is missing"):
        PolicyRuntime.load(folder)


def _request(observations: np.ndarray) -> dict[str, np.ndarray]:
    return {name: observations[:5, i] for i, name in enumerate(FEATURE_NAMES)}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("market_stress"), "missing feature\\(s\\): market_stress"),
        (
            lambda r: r.update(favourite_colour=np.zeros(5)),
            "unknown feature\\(s\\): favourite_colour",
        ),
        (
            lambda r: r["declared_risk"].__setitem__(2, np.nan),
            "feature declared_risk is not finite \\(nan\\) in row 2",
        ),
        (
            lambda r: r["sent_7d_sms"].__setitem__(1, 12.0),
            "feature sent_7d_sms = 12.0 in row 1 is outside \\[0.0, 7.0\\]",
        ),
        (
            lambda r: r["days_since_last_send"].__setitem__(0, -3.0),
            "feature days_since_last_send = -3.0 in row 0",
        ),
        (
            lambda r: r.__setitem__("goal_retirement", ["yes"] * 5),
            "feature goal_retirement must be numeric",
        ),
    ],
)
def test_malformed_requests_are_refused_naming_the_feature(change, message, observations):
    runtime = PolicyRuntime.load(_any_export())
    request = {k: v.copy() for k, v in _request(observations).items()}
    change(request)
    with pytest.raises(RequestError, match=message):
        runtime.decide(request)


def test_decisions_carry_labels_probability_reasons_and_review(observations):
    runtime = PolicyRuntime.load(_any_export())
    d = runtime.decide(_request(observations))
    assert len(d.slot) == 5 and ((d.probability > 0) & (d.probability <= 1)).all()
    assert all(r for r in d.reasons)  # every decision says why
    for record in d.records():
        assert record["slot"] in runtime.labels["slot"]
        assert (record["tone"] is None) == (record["slot"] == "no_send")


def test_needs_review_flags_pressing_tones_on_sensitive_topics():
    runtime = PolicyRuntime.load(_any_export())
    names = list(FEATURE_NAMES)
    x = np.zeros((3, len(names)), dtype=np.float32)
    x[:, names.index("consent_tier_2")] = 1
    x[0, names.index("goal_saver_debt")] = 1
    x[1, names.index("goal_growth_investor")] = 1
    x[2, names.index("goal_growth_investor")] = 1
    urgent, calm = (2, 4, 0, 2), (2, 1, 0, 2)
    flags = runtime.guards.needs_review(x, np.array([urgent, urgent, calm]))
    assert flags.tolist() == [True, False, False]
    x[1, names.index("market_stress")] = 0.8
    market_urgent = (2, 4, 0, 3)
    assert runtime.guards.needs_review(x, np.array([market_urgent] * 3)).tolist() == [
        True,
        True,
        False,
    ]


@functools.cache
def _numpy_choice_runtime() -> PolicyRuntime:
    """The runtime over :func:`_any_export` choosing in numpy (not in the graph), loaded once."""
    return PolicyRuntime.load(_any_export(), graph_choice=False)


feature_rows = st.lists(
    st.tuples(
        st.integers(0, 6),
        st.integers(0, 3),
        st.lists(st.booleans(), min_size=3, max_size=3),
        st.lists(st.integers(0, 7), min_size=3, max_size=3),
    ),
    min_size=1,
    max_size=20,
)


@settings(max_examples=150, deadline=None)
@given(rows=feature_rows, logits=st.data())
def test_no_network_output_gets_past_the_guardrails(rows, logits):
    # the numpy choice, fed forced scores (the graph's choice: tests/test_onnx_choice.py); one
    # runtime loaded for every example, its scores replaced by each example's
    runtime = _numpy_choice_runtime()
    names = list(FEATURE_NAMES)
    x = np.zeros((len(rows), len(names)), dtype=np.float32)
    for i, (weekday, tier, opted, sent) in enumerate(rows):
        x[i, names.index("weekday_mon") + weekday] = 1
        x[i, names.index("consent_tier_0") + tier] = 1
        x[i, names.index("opted_out_email") : names.index("opted_out_email") + 3] = opted
        x[i, names.index("sent_7d_email") : names.index("sent_7d_email") + 3] = sent
    assert (x <= OBS_HIGH).all()
    forced = np.array(
        logits.draw(
            st.lists(
                st.lists(st.floats(-50, 50, allow_nan=False, width=32), min_size=19, max_size=19),
                min_size=len(rows),
                max_size=len(rows),
            )
        ),
        dtype=np.float32,
    )
    runtime.logits = lambda _x, forced=forced: np.repeat(forced, len(_x) // len(forced), axis=0)
    actions = runtime.decide(x).action
    rules = MaskRules.from_config(GuardrailConfig())
    opted, sent, tier = mask_inputs(x)
    allowed = joint_mask(rules, opted, sent, tier)[np.arange(len(x)), multi_to_flat(actions)]
    assert allowed.all(), "a decision went past opt-outs, quiet hours, caps or consent"


def test_export_leaves_only_complete_files(tmp_path):
    folder = tmp_path / "exp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        policy = _train("epsilon_greedy")
        export_policy(policy, folder)
        export_policy(policy, folder)  # overwriting an export replaces each file whole
    assert sorted(p.name for p in folder.iterdir()) == [
        "example_request.json",
        "manifest.json",
        "policy.onnx",
    ]
    PolicyRuntime.load(folder)


@pytest.mark.parametrize("rule", ["log_probs", "additive"])
def test_guarded_choice_equals_the_joint_table_even_for_extreme_and_tied_scores(rule, observations):
    from scipy.special import logsumexp

    from agents.base import best_factored
    from envs.spaces import JOINT_ACTIONS

    runtime = PolicyRuntime.load(_any_export())
    runtime.score_rule = rule
    x = observations[:3000]
    logits = np.random.default_rng(3).normal(0.0, 3.0, (len(x), 19)).astype(np.float32)
    logits[:500] *= 400  # scores far apart: the factored sums' exponentials under- and overflow
    logits[500:700] = 0  # every score tied: the lowest slot, then channel, wins
    if rule == "additive":
        logits[:, 0] = 0  # a bandit's no-send scores 0
    actions, probability = runtime.choose(logits, x)
    scores, masks = runtime.scores(logits), runtime.guards.joint_mask(x)
    np.testing.assert_array_equal(actions, best_factored(scores, masks, rule))
    # the probability of the chosen action among the allowed ones, from the 361-action table
    joint = scores[:, JOINT_ACTIONS + np.array([0, 7, 12, 15])].sum(axis=2)
    joint[:, 0] = scores[:, 0]
    allowed = np.where(masks, joint, -np.inf)
    chosen = allowed[np.arange(len(x)), multi_to_flat(actions)]
    np.testing.assert_allclose(
        probability, np.exp(chosen - logsumexp(allowed, axis=1)), rtol=1e-9, atol=1e-12
    )
