"""The runtime fails closed on what comes in from disk and from callers: unsigned exports are
refused on request and loudly flagged otherwise, a signature cannot be stripped unnoticed, any
edit of the manifest's JSON is an ExportError (never a crash of another kind), features are
numbers and never strings or booleans, any logits (infinite or NaN) give an allowed action with
a finite probability, and export folders are readable by a server running as another account."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import stat
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from agents.bandits import LinearBandit, LinUCB
from envs.features import FEATURE_NAMES, OBS_HIGH
from envs.spaces import multi_to_flat
from serve import contract
from serve.integrity import MAX_MANIFEST_BYTES
from serve.onnx_export import export_policy
from serve.runtime import (
    ExportError,
    PolicyRuntime,
    RequestError,
    UnsignedExportWarning,
    canonical,
    integrity_block,
)

NAMES = list(FEATURE_NAMES)
COL = {n: i for i, n in enumerate(NAMES)}


@pytest.fixture(scope="module")
def bandit() -> LinearBandit:
    """A linear bandit with a fixed random model: exported in about a second, no training."""
    policy = LinUCB(seed=0)
    policy.theta = np.random.default_rng(0).normal(0, 0.5, policy.theta.shape)
    return policy


def _export(policy: LinearBandit, folder: Path, key: str | None) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_policy(policy, folder, key=key)
    return folder


@pytest.fixture(scope="module")
def unsigned(bandit, tmp_path_factory) -> Path:
    return _export(bandit, tmp_path_factory.mktemp("unsigned") / "export", key=None)


@pytest.fixture(scope="module")
def signed(bandit, tmp_path_factory) -> Path:
    return _export(bandit, tmp_path_factory.mktemp("signed") / "export", key="s3cret")


def _load(folder: Path, **kwargs: Any) -> PolicyRuntime:
    """Load without the unsigned-export warning (tested on its own below)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsignedExportWarning)
        return PolicyRuntime.load(folder, **kwargs)


def _manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def _write(
    source: Path,
    folder: Path,
    manifest: dict[str, Any],
    rehash: bool = True,
    key: bytes | None = None,
    onnx_bytes: bytes | None = None,
) -> Path:
    """A copy of the export at ``source`` with ``manifest`` (and ``onnx_bytes``), its integrity
    block recomputed as someone who can write the folder would (unsigned unless ``key``)."""
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(source, folder)
    if onnx_bytes is not None:
        (folder / "policy.onnx").write_bytes(onnx_bytes)
    if rehash:
        body = {k: v for k, v in manifest.items() if k != "integrity"}
        graph = (folder / "policy.onnx").read_bytes()
        body["onnx_sha256"] = integrity_block({}, graph, None)["sections"]["policy.onnx"]
        manifest = {**body, "integrity": integrity_block(body, graph, key)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def clients(n: int, seed: int = 0) -> np.ndarray:
    """(n, D) valid requests: flags exact, one tier, whole counts, the rest at random."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, len(NAMES))) * OBS_HIGH
    for prefix in ("weekday_", "consent_tier_", "goal_", "opted_out_", "declared_slot_"):
        x[:, [COL[c] for c in NAMES if c.startswith(prefix)]] = 0
    x[np.arange(n), COL["weekday_mon"] + rng.integers(0, 7, n)] = 1
    x[np.arange(n), COL["consent_tier_0"] + rng.integers(0, 4, n)] = 1
    x[np.arange(n), COL["goal_retirement"] + rng.integers(0, 4, n)] = 1
    x[:, [COL[f"opted_out_{c}"] for c in contract.CHANNELS]] = rng.integers(0, 2, (n, 3))
    x[:, [COL[f"sent_7d_{c}"] for c in contract.CHANNELS]] = rng.integers(0, 4, (n, 3))
    for name in ("visits_30d", "urgent_7d", "sent_30d"):
        x[:, COL[name]] = np.floor(x[:, COL[name]])
    return x


def _assert_allowed(runtime: PolicyRuntime, x: np.ndarray, actions: np.ndarray) -> None:
    mask = runtime.guards.joint_mask(runtime.validate(x))
    assert mask[np.arange(len(x)), multi_to_flat(actions)].all()


# ----- 11. signatures -----------------------------------------------------------------------------
def test_require_signature_refuses_an_unsigned_export_naming_the_risk(unsigned, signed):
    with pytest.raises(ExportError, match="no signature.*relax its caps, quiet hours"):
        PolicyRuntime.load(unsigned, require_signature=True)
    PolicyRuntime.load(signed, key="s3cret", require_signature=True)


def test_an_unsigned_export_loads_with_a_warning_naming_the_risk(unsigned, signed, monkeypatch):
    monkeypatch.delenv("CADENCE_EXPORT_KEY", raising=False)
    with pytest.warns(UnsignedExportWarning, match="unsigned.*relax its caps, quiet hours and"):
        PolicyRuntime.load(unsigned)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a verified signature loads in silence
        PolicyRuntime.load(signed, key="s3cret")


def _strip(manifest: dict[str, Any]) -> dict[str, Any]:
    """The signature replaced by the plain digest an unsigned export carries."""
    sections = copy.deepcopy(manifest["integrity"]["sections"])
    digest = hashlib.sha256(canonical(sections)).hexdigest()
    return {**manifest, "integrity": {"sections": sections, "sha256": digest}}


def test_a_stripped_signature_is_refused_with_or_without_the_key(signed, tmp_path, monkeypatch):
    monkeypatch.delenv("CADENCE_EXPORT_KEY", raising=False)
    manifest = _manifest(signed)
    assert manifest["signing"]["signed"] is True and len(manifest["signing"]["key_id"]) == 16
    stripped = _write(signed, tmp_path / "stripped", _strip(manifest), rehash=False)
    for kwargs in ({}, {"key": "s3cret"}, {"require_signature": True}):
        with pytest.raises(ExportError, match="says it was signed .* carries no signature"):
            PolicyRuntime.load(stripped, **kwargs)
    # the limit, as documented: strip the record of signing too and recompute every hash, and
    # only a runtime that requires a signature can tell
    manifest.pop("signing")
    disguised = _write(signed, tmp_path / "disguised", manifest, rehash=True)
    with pytest.warns(UnsignedExportWarning):
        PolicyRuntime.load(disguised)
    with pytest.raises(ExportError, match="no signature"):
        PolicyRuntime.load(disguised, require_signature=True)


def test_another_key_is_named_by_its_key_id(signed):
    with pytest.raises(ExportError, match="signed with key id [0-9a-f]{16}, the key given has id"):
        PolicyRuntime.load(signed, key="guess")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.pop("goals"), "review_rules lacks 'goals'"),
        (lambda r: r.__setitem__("tones", "urgent"), "review_rules.tones must list names"),
        (lambda r: r.__setitem__("goals", ["pension"]), "review_rules.goals must list names"),
        (lambda r: r.__setitem__("goals", [1]), "review_rules.goals must list names"),
        (lambda r: r.__setitem__("loss_contents", {"a": 1}), "loss_contents must list names"),
        (lambda r: r.__setitem__("extra", []), "review_rules has unknown key"),
    ],
)
def test_malformed_review_rules_are_an_export_error(unsigned, tmp_path, edit, message):
    manifest = _manifest(unsigned)
    edit(manifest["review_rules"])
    with pytest.raises(ExportError, match=message):
        _load(_write(unsigned, tmp_path / "edited", manifest))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"format_version": 3, "a": 1, "a": 2}', "key 'a' appears twice"),
        ('{"format_version": 3, "x": NaN}', "NaN is not a JSON number"),
        ('{"format_version": 3, "x": 1e400}', "number 1e400 is beyond the float range"),
        ('{"format_version": 3, "x": ' + "9" * 5000 + "}", "not valid JSON"),
        ("[" * 100_000, "not valid JSON"),
        ('{"format_version": 3, "x": ' + "[" * 20 + "]" * 20 + "}", "more than 16 levels"),
        ('{"format_version": 3.0}', "format_version 3.0"),
        ('{"format_version": 3', "not valid JSON"),
        ("\xff\xfe", "not valid JSON"),
    ],
)
def test_a_manifest_file_that_is_not_sound_json_is_an_export_error(
    unsigned, tmp_path, text, message
):
    folder = tmp_path / "bad"
    shutil.copytree(unsigned, folder)
    (folder / "manifest.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ExportError, match=message):
        _load(folder)


def test_an_oversized_manifest_is_refused_before_parsing(unsigned, tmp_path):
    folder = tmp_path / "big"
    shutil.copytree(unsigned, folder)
    (folder / "manifest.json").write_bytes(b" " * (MAX_MANIFEST_BYTES + 1))
    with pytest.raises(ExportError, match="is over 1,048,576 bytes"):
        _load(folder)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a parsed JSON value (keys and list positions)."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


_NAMES = st.sampled_from(
    ["urgent", "retirement", "email", "early", "market_update", "log_probs", "additive", "signed"]
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | _NAMES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)


def _apply(manifest: dict[str, Any], path: tuple, op: str, value: Any) -> None:
    """One edit at ``path``: replace the value, delete it, or add a key or an element."""
    if not path:
        return
    parent: Any = manifest
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if op == "set":
        parent[last] = value
    elif op == "delete":
        del parent[last]
    elif isinstance(parent[last], dict):
        parent[last][str(value)[:8]] = value
    elif isinstance(parent[last], list):
        parent[last].append(value)
    else:
        parent[last] = [parent[last], value]


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), rehash=st.sampled_from([True, True, True, False]))
def test_any_json_edit_of_the_manifest_loads_or_is_an_export_error(
    unsigned, tmp_path, data, rehash
):
    """An edit of any field, hashes recomputed or not: ExportError or a runtime whose decisions
    keep the guardrails, never a KeyError, TypeError or other crash."""
    manifest = _manifest(unsigned)
    # values of the export itself, to be moved where they do not belong
    found = [_value_at(manifest, p) for p in _paths(manifest) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from([p for p in _paths(manifest) if p]))
        op = data.draw(st.sampled_from(["set", "delete", "add"]))
        value = data.draw(JSON | st.sampled_from(found))
        _apply(manifest, path, op, copy.deepcopy(value))
    folder = tmp_path / "fuzzed"
    try:
        _write(unsigned, folder, manifest, rehash=rehash and "integrity" in manifest)
        runtime = _load(folder)
    except ExportError:
        return
    x = clients(64)
    decisions = runtime.decide(x)
    _assert_allowed(runtime, x, decisions.action)
    assert np.isfinite(decisions.probability).all()


def _value_at(value: Any, path: tuple) -> Any:
    for step in path:
        value = value[step]
    return value


# ----- 12. features are numbers, as over HTTP --------------------------------------------------------
def _request(x: np.ndarray) -> dict[str, list]:
    return {name: x[:, j].tolist() for j, name in enumerate(NAMES)}


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "declared_risk",
            "0.5",
            "feature declared_risk must be numeric, got '0.5' \\(str\\) in row 2",
        ),
        (
            "opted_out_sms",
            True,
            "feature opted_out_sms must be numeric, got True \\(bool\\) in row 2",
        ),
        ("opted_out_sms", np.True_, "feature opted_out_sms must be numeric, got .*True.* in row 2"),
        (
            "visits_30d",
            None,
            "feature visits_30d must be numeric, got None \\(NoneType\\) in row 2",
        ),
        ("visits_30d", 10**400, "feature visits_30d in row 2 is an integer beyond the float range"),
    ],
)
def test_strings_and_booleans_are_refused_naming_feature_and_row(unsigned, name, value, message):
    runtime = _load(unsigned)
    request = _request(clients(4))
    request[name][2] = value
    with pytest.raises(RequestError, match=message):
        runtime.decide(request)


def test_boolean_columns_and_arrays_are_refused(unsigned):
    import pandas as pd

    runtime = _load(unsigned)
    x = clients(3)
    frame = pd.DataFrame(x, columns=NAMES)
    frame["opted_out_push"] = frame["opted_out_push"].astype(bool)
    with pytest.raises(RequestError, match="feature opted_out_push must be numeric, got .*bool"):
        runtime.decide(frame)
    frame["opted_out_push"] = frame["opted_out_push"].astype("boolean")
    with pytest.raises(RequestError, match="feature opted_out_push must be numeric"):
        runtime.decide(frame)
    with pytest.raises(RequestError, match="feature weekday_mon must be numeric, got .*bool"):
        runtime.decide(x.astype(bool))
    # an object column that holds only numbers is still a number column
    frame["opted_out_push"] = pd.Series(x[:, COL["opted_out_push"]].tolist(), dtype=object)
    np.testing.assert_array_equal(runtime.decide(frame).action, runtime.decide(x).action)


# ----- 12. any scores give an allowed action and a probability in [0, 1] -------------------------
SCORE = st.one_of(
    st.floats(width=32, allow_nan=True, allow_infinity=True),
    st.sampled_from([np.inf, -np.inf, np.nan, 0.0, 3e38, -3e38]),
)
SLOTS = st.lists(st.sampled_from(contract.SLOT_KEYS), unique=True)


@settings(max_examples=200, deadline=None)
@given(
    scores=st.lists(st.lists(SCORE, min_size=19, max_size=19), min_size=1, max_size=6),
    rule=st.sampled_from(["log_probs", "additive"]),
    quiet=st.fixed_dictionaries({c: SLOTS for c in contract.CHANNELS}),
    caps=st.fixed_dictionaries({c: st.integers(0, 7) for c in contract.CHANNELS}),
    weekly=st.integers(0, 7),
    content_tier=st.fixed_dictionaries({k: st.integers(0, 3) for k in contract.CONTENTS}),
    opted=st.lists(st.lists(st.integers(0, 1), min_size=3, max_size=3), min_size=6, max_size=6),
    sent=st.lists(st.lists(st.integers(0, 7), min_size=3, max_size=3), min_size=6, max_size=6),
    tier=st.lists(st.integers(0, 3), min_size=6, max_size=6),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_any_scores_give_an_allowed_action_and_a_probability_in_0_1(
    runtime_parts, scores, rule, quiet, caps, weekly, content_tier, opted, sent, tier, dtype
):
    session, manifest = runtime_parts
    manifest = copy.deepcopy(manifest)
    manifest["score_rule"] = rule
    manifest.pop("graph_choice")  # the numpy choice (the graph's: tests/test_onnx_choice.py)
    manifest["mask_rules"] = {
        "quiet_hours": quiet,
        "max_per_week": weekly,
        "channel_caps": caps,
        "content_min_tier": content_tier,
    }
    runtime = PolicyRuntime(session, manifest)
    logits = np.array(scores, dtype=dtype)
    n = len(logits)
    x = clients(n)
    x[:, [COL[f"opted_out_{c}"] for c in contract.CHANNELS]] = np.array(opted)[:n]
    x[:, [COL[f"sent_7d_{c}"] for c in contract.CHANNELS]] = np.array(sent)[:n]
    x[:, COL["consent_tier_0"] : COL["consent_tier_0"] + 4] = np.eye(4)[np.array(tier)[:n]]
    before = logits.copy()
    actions, probability = runtime.choose(logits, x)
    np.testing.assert_array_equal(logits, before)  # the caller's scores are not written
    mask = runtime.guards.joint_mask(x)
    assert mask[np.arange(n), multi_to_flat(actions)].all()
    assert np.isfinite(probability).all() and (probability >= 0).all() and (probability <= 1).all()
    # a send never uses a part scored -inf, and a client with a NaN score gets no message
    offsets = np.array([0, 7, 12, 15])
    parts = logits[np.arange(n)[:, None], actions + offsets]
    send = actions[:, 0] > 0
    assert not (np.isneginf(parts) & send[:, None]).any()
    assert not (np.isnan(logits).any(axis=1) & send).any()
    again, _ = runtime.choose(logits, x)
    np.testing.assert_array_equal(actions, again)  # ties, infinite ones included, are determined


@pytest.fixture(scope="module")
def runtime_parts(unsigned):
    runtime = _load(unsigned)
    return runtime.session, runtime.manifest


def test_finite_scores_keep_their_probabilities(unsigned):
    """The rules for infinite scores leave finite ones as they were: probabilities sum to 1
    over the allowed actions, checked on the 361-action table."""
    from scipy.special import logsumexp

    from envs.spaces import JOINT_ACTIONS

    runtime = _load(unsigned)
    x = clients(300, seed=3)
    logits = np.random.default_rng(1).normal(0, 3, (300, 19)).astype(np.float32)
    actions, probability = runtime.choose(logits, x)
    scores = runtime.scores(logits)
    joint = scores[:, JOINT_ACTIONS + np.array([0, 7, 12, 15])].sum(axis=2)
    joint[:, 0] = scores[:, 0]
    allowed = np.where(runtime.guards.joint_mask(x), joint, -np.inf)
    chosen = allowed[np.arange(300), multi_to_flat(actions)]
    np.testing.assert_allclose(probability, np.exp(chosen - logsumexp(allowed, axis=1)))


def _constant_graph(scores: np.ndarray) -> bytes:
    """An ONNX graph whose logits are ``scores`` for every client (obs times zeros plus them)."""
    d = len(NAMES)
    weight = numpy_helper.from_array(np.zeros((d, 19), dtype=np.float32), "weight")
    bias = numpy_helper.from_array(scores.astype(np.float32), "bias")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["obs", "weight"], ["product"]),
            helper.make_node("Add", ["product", "bias"], ["logits"]),
        ],
        "constant_scores",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", d])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 19])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("rule", ["log_probs", "additive"])
@pytest.mark.parametrize(
    "scores",
    [
        np.full(19, np.nan),
        np.full(19, np.inf),
        np.full(19, -np.inf),
        np.r_[-np.inf, np.full(18, np.inf)],
        np.r_[0.0, np.full(6, -np.inf), np.ones(12)],
        np.r_[np.ones(18), np.nan],
        np.r_[-np.inf, np.ones(6), np.full(5, -np.inf), np.ones(7)],
    ],
    ids=["nan", "+inf", "-inf", "no-send -inf, rest +inf", "slots -inf", "one nan", "tones -inf"],
)
def test_decide_with_infinite_or_nan_scores_keeps_the_guardrails(unsigned, tmp_path, rule, scores):
    manifest = _manifest(unsigned)
    manifest["score_rule"] = rule
    manifest.pop("graph_choice")  # a graph of scores alone: the numpy choice decides
    folder = _write(unsigned, tmp_path / "odd", manifest, onnx_bytes=_constant_graph(scores))
    onnx.checker.check_model(onnx.load(folder / "policy.onnx"))
    runtime = _load(folder)
    x = clients(200, seed=7)
    decisions = runtime.decide(x, explain=True)
    _assert_allowed(runtime, x, decisions.action)
    assert np.isfinite(decisions.probability).all()
    assert ((decisions.probability >= 0) & (decisions.probability <= 1)).all()
    if np.isnan(scores).any():
        assert (decisions.action[:, 0] == 0).all() and (decisions.probability == 1).all()
        assert all(
            r == ["the policy's scores for this client are not numbers: no message"]
            for r in decisions.reasons
        )


# ----- 8. export folders readable by another account ------------------------------------------
def test_an_export_is_0755_with_0644_files_whatever_the_umask(bandit, tmp_path):
    previous = os.umask(0o077)
    try:
        folder = _export(bandit, tmp_path / "served", key=None)
        first = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
        _export(bandit, folder, key=None)  # swapped in over the previous export
    finally:
        os.umask(previous)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert first == {"policy.onnx": 0o644, "manifest.json": 0o644, "example_request.json": 0o644}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]  # nothing left beside it
    _load(folder)


def test_a_trip_dated_after_the_runtimes_today_waits_for_its_date(unsigned, tmp_path):
    """The runtime's ``today`` decides which dated trips are in force: a switch dated tomorrow
    leaves today's decisions as without a breaker."""
    import datetime

    state = tmp_path / "circuit.json"
    state.write_text(json.dumps({"tripped": {"all": "2026-11-23"}}))
    runtime, plain = _load(unsigned, circuit=state), _load(unsigned)
    x = clients(400, seed=3)
    runtime.today = lambda: datetime.date(2026, 11, 22)
    np.testing.assert_array_equal(runtime.decide(x).action, plain.decide(x).action)
    runtime.today = lambda: datetime.date(2026, 11, 24)
    tripped = runtime.decide(x)
    assert not np.array_equal(tripped.action, plain.decide(x).action)
    assert all(r[0].startswith("circuit tripped for") for r in tripped.reasons)
