"""Serving fails closed: consent enforced before the network and the reasons, guard inputs exact,
the whole export verified (and signed when a key is set), a killed export leaves the previous
one, request limits, every dtype pandas makes, and errors that name the feature and row."""

from __future__ import annotations

import datetime
import hashlib
import json
import shutil
import threading
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.config import AgentConfig
from agents.registry import train_agent
from envs.config import GuardrailConfig, load_setup
from envs.consent import MIN_TIER
from envs.features import FEATURE_NAMES, OBS_HIGH
from envs.masks import MaskRules, joint_mask
from envs.spaces import multi_to_flat
from serve import contract
from serve.http import make_server
from serve.onnx_export import export_policy
from serve.runtime import (
    KEY_ENV,
    ExportError,
    PolicyRuntime,
    RequestError,
    TooLarge,
    canonical,
)
from simulate.labels import ACTION_LABELS

SETUP = load_setup()
NAMES = list(FEATURE_NAMES)
COL = {n: i for i, n in enumerate(NAMES)}


@pytest.fixture(scope="module")
def policy():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train_agent(
            AgentConfig(name="ppo", n_steps=16), SETUP, 8192, 128, progress=False, seed=4
        )


@pytest.fixture(scope="module")
def export(policy, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serve") / "export"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_policy(policy, folder)
    return folder


def clients(n: int, tier: int, seed: int = 0) -> np.ndarray:
    """(n, D) valid requests: every flag exact, one tier, whole counts; the rest filled in at
    random (as a firm's feature store would send every column it has)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, len(NAMES))) * OBS_HIGH
    for prefix in ("weekday_", "consent_tier_", "goal_", "opted_out_", "declared_slot_"):
        x[:, [COL[c] for c in NAMES if c.startswith(prefix)]] = 0
    x[np.arange(n), COL["weekday_mon"] + rng.integers(0, 7, n)] = 1
    x[:, COL["consent_tier_0"] + tier] = 1
    x[np.arange(n), COL["goal_retirement"] + rng.integers(0, 4, n)] = 1
    sent = [COL[f"sent_7d_{c}"] for c in ("email", "push", "sms")]
    x[:, sent] = rng.integers(0, 2, (n, 3))
    x[:, COL["visits_30d"]] = rng.integers(0, 31, n)
    x[np.arange(n), COL["declared_slot_early"] + rng.integers(0, 6, n)] = 1
    x[:, COL["urgent_7d"]] = rng.integers(0, 2, n)
    x[:, COL["sent_30d"]] = rng.integers(0, 31, n)
    return x


# ----- 1. consent -------------------------------------------------------------------------------
def test_unconsented_features_change_no_tier0_decision_and_no_reason(export):
    runtime = PolicyRuntime.load(export)
    filled = clients(2000, tier=0)
    bare = filled.copy()
    bare[:, MIN_TIER > 0] = 0  # what a tier-0 client lets the firm use
    a = runtime.decide(filled)
    b = runtime.decide(bare)
    np.testing.assert_array_equal(a.action, b.action)
    np.testing.assert_array_equal(a.probability, b.probability)
    assert a.reasons == b.reasons
    quoted = " ".join(r for reasons in a.reasons for r in reasons)
    for word in ("declared goal", "risk", "market", "engaged", "opened", "clicked", "visit"):
        assert word not in quoted, word
    # the caller's array is never written to
    assert (filled[:, MIN_TIER > 0] != 0).any()


def test_the_network_sees_only_consented_features(export):
    runtime = PolicyRuntime.load(export)
    for tier in range(4):
        x = runtime.validate(clients(50, tier=tier))
        hidden = MIN_TIER > tier
        assert (x[:, hidden] == 0).all() and (x[:, ~hidden] != 0).any()


def test_consent_refuse_mode_names_the_feature_and_row(export):
    runtime = PolicyRuntime.load(export, consent="refuse")
    x = clients(5, tier=1)
    x[:, MIN_TIER > 1] = 0
    runtime.decide(x)  # consented features only: accepted
    x[3, COL["market_stress"]] = 2.0
    with pytest.raises(RequestError, match="market_stress in row 3 .* consent tier 1"):
        runtime.decide(x)
    with pytest.raises(ValueError, match="consent must be one of"):
        PolicyRuntime.load(export, consent="ignore")


# ----- 2. guard inputs exact --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"opted_out_sms": 0.5}, "opted_out_sms = 0.5 in row 2 must be 0 or 1"),
        ({"sent_7d_sms": 1.49}, "sent_7d_sms = 1.49 in row 2 must be a whole number"),
        ({"sent_7d_email": 2.5, "sent_7d_push": 2.5}, "sent_7d_email = 2.5 in row 2"),
        (
            {"consent_tier_0": 0.1, "consent_tier_1": 0, "consent_tier_3": 0.2},
            "consent_tier_0 = 0.1",
        ),
        ({"consent_tier_0": 0.49, "consent_tier_1": 0.5}, "consent_tier_0 = 0.49"),
        (
            {"consent_tier_0": 1, "consent_tier_1": 1, "consent_tier_2": 1, "consent_tier_3": 1},
            "consent_tier_\\* in row 2 have 4 set; exactly one",
        ),
        ({"consent_tier_3": 0}, "consent_tier_\\* in row 2 have 0 set"),
        ({"weekday_tue": 1}, "weekday_\\* in row 2 have 2 set"),
        ({"sent_7d_push": -1e-7}, "sent_7d_push = -1e-07 in row 2 must be a whole number"),
    ],
)
def test_fail_open_guard_inputs_are_refused(export, edit, message):
    runtime = PolicyRuntime.load(export)
    frame = pd.DataFrame(clients(4, tier=3), columns=NAMES)
    for name, value in edit.items():
        frame.loc[2, name] = value
    with pytest.raises(RequestError, match=message):
        runtime.decide(frame)


FLAG_VALUES = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(-2, 3), st.just(float("nan")))
COUNT_VALUES = st.one_of(
    st.integers(0, 7).map(float), st.floats(-2, 9), st.just(float("inf")), st.just(float("nan"))
)


@pytest.mark.slow  # property test over the runtime's guards, many examples
@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.lists(FLAG_VALUES, min_size=3, max_size=3),
            st.lists(COUNT_VALUES, min_size=3, max_size=3),
            st.lists(st.sampled_from([0.0, 1.0, 0.5, 0.1, -1.0, 2.0]), min_size=4, max_size=4),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_arbitrary_guard_inputs_are_refused_or_exactly_obeyed(export, rows):
    """Any values in the guard columns, out-of-range ones included: either the request is
    refused naming a feature, or every decision is allowed by the exact rules."""
    runtime = PolicyRuntime.load(export)
    x = clients(len(rows), tier=3, seed=len(rows))
    for i, (opted, sent, tier) in enumerate(rows):
        x[i, COL["opted_out_email"] : COL["opted_out_email"] + 3] = opted
        x[i, COL["sent_7d_email"] : COL["sent_7d_email"] + 3] = sent
        x[i, COL["consent_tier_0"] : COL["consent_tier_0"] + 4] = tier
    try:
        actions = runtime.decide(x, explain=False).action
    except RequestError as error:
        assert any(name in str(error) for name in NAMES) or "consent_tier_*" in str(error)
        return
    opted = x[:, COL["opted_out_email"] : COL["opted_out_email"] + 3]
    sent = x[:, COL["sent_7d_email"] : COL["sent_7d_email"] + 3]
    tiers = x[:, COL["consent_tier_0"] : COL["consent_tier_0"] + 4]
    assert set(np.unique(opted)) <= {0.0, 1.0} and (sent == np.floor(sent)).all()
    assert (tiers.sum(axis=1) == 1).all()
    allowed = joint_mask(
        MaskRules.from_config(GuardrailConfig()),
        opted.astype(bool),
        sent.astype(np.int64),
        tiers.argmax(axis=1),
    )
    assert allowed[np.arange(len(x)), multi_to_flat(actions)].all()


def _allowed(x: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Whether each action passes the exact in-process guardrails."""
    mask = joint_mask(
        MaskRules.from_config(GuardrailConfig()),
        x[:, COL["opted_out_email"] : COL["opted_out_email"] + 3].astype(bool),
        x[:, COL["sent_7d_email"] : COL["sent_7d_email"] + 3].astype(np.int64),
        x[:, COL["consent_tier_0"] : COL["consent_tier_0"] + 4].argmax(axis=1),
    )
    return mask[np.arange(len(x)), multi_to_flat(actions)]


def test_a_tripped_segment_gets_the_safe_fallback_within_the_guards(export, tmp_path):
    from serve.circuit import CircuitError

    state = tmp_path / "circuit.json"
    state.write_text(json.dumps({"tripped": ["saver_debt"], "reason": "wrong fund"}))
    runtime, plain = PolicyRuntime.load(export, circuit=state), PolicyRuntime.load(export)
    x = clients(3000, tier=1, seed=7)
    x[: len(x) // 2, COL["opted_out_email"]] = 1  # half must fall back to push or SMS
    got, base = runtime.decide(x), plain.decide(x)
    saver = x[:, COL["goal_saver_debt"]] == 1
    np.testing.assert_array_equal(got.action[~saver], base.action[~saver])
    fallback = got.action[saver]
    sent = fallback[:, 0] > 0
    weekday = x[saver][sent, COL["weekday_mon"] : COL["weekday_mon"] + 7].argmax(axis=1)
    assert sent.any() and set(weekday) == {0, 3}  # Monday and Thursday
    assert (fallback[:, 0] > 0)[x[saver][:, COL["weekday_mon"]] == 1].all()
    assert set(np.array(got.tone, dtype=object)[saver][sent]) == {"reassuring"}
    assert set(np.array(got.content, dtype=object)[saver][sent]) == {"education"}
    assert _allowed(x[saver], fallback).all()
    assert got.reasons[int(np.flatnonzero(saver)[0])] == [
        "circuit tripped for saver_debt: the safe fallback decides"
    ]
    # tier 0 hides the goal: such clients are 'undeclared', whatever their request says
    hidden = clients(500, tier=0, seed=8)
    np.testing.assert_array_equal(runtime.decide(hidden).action, plain.decide(hidden).action)
    # a dated switch: the day after it, the segment hears from the fallback whatever the weekday
    state.write_text(json.dumps({"tripped": {"saver_debt": "2026-11-23"}}))
    runtime.today = lambda: datetime.date(2026, 11, 24)
    assert (runtime.decide(x).action[saver, 0] > 0).all()
    runtime.today = lambda: datetime.date(2026, 11, 25)
    np.testing.assert_array_equal(runtime.decide(x).action, got.action)
    # 'all' trips every client, tier 0 included
    state.write_text(json.dumps({"tripped": ["all"]}))
    everyone = runtime.decide(hidden)
    assert set(np.array(everyone.tone, dtype=object)[everyone.action[:, 0] > 0]) <= {"reassuring"}
    # the file is read on every request: untripping applies to the next one
    state.write_text(json.dumps({"tripped": []}))
    np.testing.assert_array_equal(runtime.decide(x).action, base.action)
    # a file the runtime cannot read, or that names an unknown segment, is refused by name
    state.write_text(json.dumps({"tripped": ["vip"]}))
    with pytest.raises(CircuitError, match=r"unknown segment\(s\) \['vip'\]"):
        runtime.decide(x)
    state.write_text(json.dumps({"tripped": {"saver_debt": "yesterday"}}))
    with pytest.raises(CircuitError, match="switch date of 'saver_debt' must be YYYY-MM-DD"):
        runtime.decide(x)
    state.write_text("{not json")
    with pytest.raises(CircuitError, match="is not readable JSON"):
        runtime.decide(x)
    with pytest.raises(CircuitError, match="is missing"):
        PolicyRuntime.load(export, circuit=tmp_path / "nope.json")


def test_the_fallback_finds_the_flat_index_the_action_space_uses():
    from envs.spaces import JOINT_ACTIONS
    from serve.circuit import fallback

    labels = {k: list(v) for k, v in ACTION_LABELS.items()}
    x = np.zeros((1, len(NAMES)))
    x[0, COL["weekday_thu"]] = 1
    allowed = np.zeros((1, len(JOINT_ACTIONS)), dtype=bool)
    allowed[0, 0] = True
    action = np.array([[2, 2, 1, 1]])  # morning, reassuring, push, education
    allowed[0, multi_to_flat(action)[0]] = True  # e-mail closed, push open
    np.testing.assert_array_equal(fallback(NAMES, labels, x, allowed), action)


def test_the_serving_fallback_is_the_one_evaluation_uses():
    from evaluation.breaker import SafeFallback
    from serve.circuit import fallback

    labels = {k: list(v) for k, v in ACTION_LABELS.items()}
    rng = np.random.default_rng(5)
    x = np.zeros((700, len(NAMES)), dtype=np.float32)
    x[np.arange(700), COL["weekday_mon"] + np.arange(700) % 7] = 1
    masks = rng.random((700, 361)) < 0.7  # channels and slots closed at random
    masks[:, 0] = True
    first = rng.random(700) < 0.2
    np.testing.assert_array_equal(
        fallback(NAMES, labels, x, masks, first), SafeFallback().act(x, masks, first)
    )


def test_non_numeric_and_complex_requests_are_refused(export):
    runtime = PolicyRuntime.load(export)
    x = clients(3, tier=2)
    with pytest.raises(RequestError, match="must be numbers"):
        runtime.decide(x.astype(np.complex128))
    frame = pd.DataFrame(x, columns=NAMES)
    frame["declared_risk"] = frame["declared_risk"].astype(np.complex128)
    with pytest.raises(RequestError, match="feature declared_risk must be numeric"):
        runtime.decide(frame)


# ----- 3. the whole export verified ---------------------------------------------------------------
def _edited(export: Path, tmp_path: Path, edit, rehash: bool = False) -> Path:
    folder = tmp_path / "edited"
    shutil.copytree(export, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    if rehash:  # an editor who also recomputes the hashes (no key: the contract checks remain)
        sections = manifest["integrity"]["sections"]
        for k in list(sections):
            if k != "policy.onnx":
                sections.pop(k)
        for k, v in manifest.items():
            if k != "integrity":
                sections[k] = hashlib.sha256(canonical(v)).hexdigest()
        manifest["integrity"]["sha256"] = hashlib.sha256(canonical(sections)).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _relax(m):
    m["mask_rules"]["channel_caps"] = {"email": 7, "push": 7, "sms": 7}
    m["mask_rules"]["max_per_week"] = 7


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_relax, "section 'mask_rules' differs from what was exported"),
        (lambda m: m["mask_rules"].pop("channel_caps"), "section 'mask_rules' differs"),
        (lambda m: m["mask_rules"].pop("content_min_tier"), "section 'mask_rules' differs"),
        (lambda m: m["feature_names"].reverse(), "section 'feature_names' differs"),
        (lambda m: m.__setitem__("nvec", [7, 5, 3, 3]), "section 'nvec' differs"),
        (lambda m: m.pop("review_rules"), "lacks \\['review_rules'\\]"),
        (lambda m: m.__setitem__("note", "hi"), "section 'note' was added"),
    ],
)
def test_each_manifest_edit_is_refused_naming_what_differs(export, tmp_path, edit, message):
    with pytest.raises(ExportError, match=message):
        PolicyRuntime.load(_edited(export, tmp_path, edit))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda m: m["feature_names"].reverse(),
            "feature_names differs from the contract at position 0: 'declared_slot_late'",
        ),
        (lambda m: m.__setitem__("nvec", [7, 5, 3, 3]), "nvec differs from the contract"),
        (lambda m: m["mask_rules"].pop("channel_caps"), "mask_rules lacks 'channel_caps'"),
        (
            lambda m: m["mask_rules"]["content_min_tier"].pop("product_offer"),
            "content_min_tier lacks 'product_offer'",
        ),
        (
            lambda m: m["mask_rules"].__setitem__("max_per_week", 9),
            "max_per_week must be a whole number in \\[0, 7\\], got 9",
        ),
        (
            lambda m: m["feature_min_tier"].__setitem__(-1, 0),
            f"feature_min_tier differs from the contract at position {len(NAMES) - 1}",
        ),
    ],
)
def test_edits_with_recomputed_hashes_still_break_the_contract(export, tmp_path, edit, message):
    with pytest.raises(ExportError, match=message):
        PolicyRuntime.load(_edited(export, tmp_path, edit, rehash=True))


def test_a_signed_export_refuses_any_edit_and_any_other_key(policy, tmp_path, monkeypatch):
    folder = tmp_path / "signed"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_policy(policy, folder, key="s3cret")
    PolicyRuntime.load(folder, key="s3cret")
    with pytest.raises(ExportError, match="the export is signed; set \\$CADENCE_EXPORT_KEY"):
        PolicyRuntime.load(folder)
    with pytest.raises(ExportError, match="signature does not match"):
        PolicyRuntime.load(folder, key="guess")
    monkeypatch.setenv(KEY_ENV, "s3cret")
    PolicyRuntime.load(folder)
    # a relaxed rule with every hash recomputed: the signature no longer matches
    relaxed = _edited(folder, tmp_path, _relax, rehash=True)
    with pytest.raises(ExportError, match="signature does not match"):
        PolicyRuntime.load(relaxed)


def test_contract_module_equals_the_training_side():
    assert contract.FEATURE_NAMES == NAMES
    assert contract.FEATURE_HIGH == [float(h) for h in OBS_HIGH]
    assert contract.FEATURE_MIN_TIER == [int(t) for t in MIN_TIER]
    assert contract.ACTION_LABELS == {k: list(v) for k, v in ACTION_LABELS.items()}
    g = GuardrailConfig()
    assert (
        contract.rule_problems(
            {
                "quiet_hours": {c: g.quiet_hours.get(c, []) for c in contract.CHANNELS},
                "max_per_week": g.max_per_week,
                "channel_caps": dict(g.channel_caps),
                "content_min_tier": {k: g.content_min_tier.get(k, 0) for k in contract.CONTENTS},
            }
        )
        == []
    )


# ----- 6. a killed export leaves the previous one ------------------------------------------------
def test_a_failed_export_leaves_the_previous_export_whole(policy, export, tmp_path, monkeypatch):
    folder = tmp_path / "live"
    shutil.copytree(export, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    import serve.onnx_export as exporter

    def killed(new, out):
        raise KeyboardInterrupt("killed before the swap")

    monkeypatch.setattr(exporter, "swap_in", killed)
    with pytest.raises(KeyboardInterrupt), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_policy(policy, folder, run_id="new")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["live"]  # no half-written folder left
    PolicyRuntime.load(folder)


def test_readers_never_see_a_mixed_or_missing_export_during_re_exports(policy, tmp_path):
    from serve.onnx_export import _exchange

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    if not _exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("this filesystem has no atomic exchange; export falls back to rename-aside")
    folder = tmp_path / "live"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_policy(policy, folder, run_id="r0")
    failures: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                PolicyRuntime.load(folder)
            except BaseException as error:  # noqa: BLE001 - collected and asserted below
                failures.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i in range(6):
                export_policy(policy, folder, run_id=f"r{i + 1}")
    finally:
        stop.set()
        reader.join()
    assert failures == []
    assert json.loads((folder / "manifest.json").read_text())["training_run_id"] == "r6"


# ----- 5. limits, dtypes, errors -----------------------------------------------------------------
def test_row_limit(export):
    runtime = PolicyRuntime.load(export, max_rows=10)
    runtime.decide(clients(10, tier=3))
    with pytest.raises(TooLarge, match="11 rows; at most 10"):
        runtime.decide(clients(11, tier=3))


@pytest.fixture(scope="module")
def pyfunc_model(export, tmp_path_factory):
    from export import example_input
    from serve.pyfunc import PIP_REQUIREMENTS, CadencePolicyModel, signature

    path = tmp_path_factory.mktemp("pyfunc") / "model"
    runtime = PolicyRuntime.load(export)
    mlflow.pyfunc.save_model(
        path,
        python_model=CadencePolicyModel(),
        signature=signature(runtime, example_input(runtime)),
        artifacts={"export": str(export)},
        code_paths=[str(Path(__file__).resolve().parents[1] / "serve")],
        pip_requirements=PIP_REQUIREMENTS,  # as export.py logs it (not inferred)
    )
    return mlflow.pyfunc.load_model(str(path))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_pyfunc_accepts_every_numeric_dtype_pandas_makes(pyfunc_model, dtype):
    x = clients(20, tier=3)
    x[:, [COL[n] for n in NAMES if n.startswith(("ema_", "declared", "market", "days"))]] = 0
    frame = pd.DataFrame(x.astype(dtype), columns=NAMES)
    out = pyfunc_model.predict(frame, params={"explain": False})
    assert len(out) == 20 and (out["reasons"] == "").all()
    explained = pyfunc_model.predict(frame)  # a small request: reasons by default
    assert (explained["reasons"] != "").all()
    assert list(explained["slot"]) == list(out["slot"])
    batch = pd.DataFrame(np.repeat(x, 6, axis=0).astype(dtype), columns=NAMES)
    assert (pyfunc_model.predict(batch)["reasons"] == "").all()  # a batch: none unless asked


def test_pyfunc_names_the_feature_of_a_bad_request(pyfunc_model):
    frame = pd.DataFrame(clients(3, tier=3), columns=NAMES)
    frame.loc[1, "declared_risk"] = np.nan
    with pytest.raises(mlflow.exceptions.MlflowException, match="declared_risk is not finite"):
        pyfunc_model.predict(frame)
    frame = pd.DataFrame(clients(3, tier=3), columns=NAMES)
    frame["favourite_colour"] = 1.0
    with pytest.raises(mlflow.exceptions.MlflowException, match="unknown feature.*favourite"):
        pyfunc_model.predict(frame)


def test_pyfunc_refuses_explain_past_its_row_bound(pyfunc_model):
    """Reasons cost one network pass per feature group: ``explain: true`` is bounded by rows."""
    from serve.runtime import EXPLAIN_AT_MOST

    x = clients(EXPLAIN_AT_MOST + 1, tier=3)
    frame = pd.DataFrame(x, columns=NAMES)
    with pytest.raises(mlflow.exceptions.MlflowException, match="explain is served for at most"):
        pyfunc_model.predict(frame, params={"explain": True})
    assert len(pyfunc_model.predict(frame.iloc[:EXPLAIN_AT_MOST], params={"explain": True})) == (
        EXPLAIN_AT_MOST
    )


@pytest.fixture(scope="module")
def server(export):
    runtime = PolicyRuntime.load(export, max_rows=50)
    httpd = make_server(runtime, "127.0.0.1", 0, max_body_bytes=200_000)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _post(url: str, payload) -> tuple[int, dict]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(
        f"{url}/invocations", body, {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_http_server_answers_and_enforces_its_limits(server):
    frame = pd.DataFrame(clients(5, tier=3), columns=NAMES)
    status, answer = _post(server, {"dataframe_split": frame.to_dict(orient="split")})
    assert status == 200 and len(answer["predictions"]) == 5
    status, answer = _post(
        server, {"dataframe_records": frame.to_dict(orient="records"), "params": {"explain": True}}
    )
    assert status == 200 and all(p["reasons"] for p in answer["predictions"])
    big = pd.DataFrame(clients(51, tier=3), columns=NAMES)
    status, answer = _post(server, {"dataframe_split": big.to_dict(orient="split")})
    assert status == 413 and "51 rows; at most 50" in answer["message"]
    status, answer = _post(server, b"{" + b" " * 300_000 + b"}")
    assert status == 413 and "at most 200,000" in answer["message"]
    bad = frame.copy()
    bad.loc[4, "opted_out_sms"] = 0.5
    status, answer = _post(server, {"dataframe_split": bad.to_dict(orient="split")})
    assert status == 400 and "opted_out_sms = 0.5 in row 4" in answer["message"]
    bad = frame.copy()
    bad.loc[2, "market_stress"] = np.nan
    status, answer = _post(server, {"dataframe_split": bad.to_dict(orient="split")})
    assert status == 400 and "market_stress is not finite (nan) in row 2" in answer["message"]
    extra = frame.assign(favourite_colour=1.0)
    status, answer = _post(server, {"dataframe_split": extra.to_dict(orient="split")})
    assert status == 400 and "favourite_colour" in answer["message"]
    status, answer = _post(server, b"not json")
    assert status == 400 and "not valid JSON" in answer["message"]


def test_http_server_serves_the_circuit_and_refuses_an_unreadable_one(export, tmp_path):
    state = tmp_path / "circuit.json"
    state.write_text(json.dumps({"tripped": ["retirement", "growth_investor"]}))
    httpd = make_server(PolicyRuntime.load(export, circuit=state), "127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        x = clients(20, tier=1, seed=3)
        x[:, COL["goal_retirement"] : COL["goal_retirement"] + 4] = 0
        x[:, COL["goal_retirement"]] = 1
        frame = pd.DataFrame(x, columns=NAMES)
        status, answer = _post(
            url, {"dataframe_split": frame.to_dict(orient="split"), "params": {"explain": True}}
        )
        assert status == 200
        assert {p["reasons"] for p in answer["predictions"]} == {
            "circuit tripped for retirement: the safe fallback decides"
        }
        state.write_text("[]")
        status, answer = _post(url, {"dataframe_split": frame.to_dict(orient="split")})
        assert status == 503 and "must be an object" in answer["message"]
    finally:
        httpd.shutdown()
        httpd.server_close()
