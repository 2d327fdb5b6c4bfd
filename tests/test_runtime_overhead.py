"""The runtime's cheaper steps around the graph give what the steps they replace gave: the masks
built from the tier the request's checks read are the masks read from the features, each row's
state looks up exactly the 361-action table's answers, the allowed count per state is the
table's, the actions' labels are the labels one row at a time, the decision ids are the
uuid4 of the entropy read, and a decision's labels and ids, written when first read, are those
of the actions decided and of the entropy read when deciding."""

from __future__ import annotations

import json
import os
import ssl
import uuid

import numpy as np
import pytest
from test_exploration import _load
from test_onnx_choice import COL
from test_runtime_fail_closed import clients

from envs.spaces import JOINT_ACTIONS
from serve import compiled, contract, decisions
from serve.decisions import new_decision_ids
from serve.guards import Guards
from serve.response import Labeller
from serve.runtime import Exploration


def _requests(runtime, n: int, seed: int) -> np.ndarray:
    """(n, D) valid requests, the weekly counts spread over every cap (reached or not)."""
    rng = np.random.default_rng(seed)
    x = clients(n, seed=seed)
    x[:, [COL[f"sent_7d_{c}"] for c in contract.CHANNELS]] = rng.integers(0, 8, (n, 3))
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masks_from_the_checks_tier_are_the_masks_read_from_the_features(bandit_export, dtype):
    runtime = _load(bandit_export)
    x = _requests(runtime, 700, seed=11).astype(dtype)
    checked, tier = runtime.checks.checked(x, "zero", 1_000)
    np.testing.assert_array_equal(checked, runtime.validate(x))
    np.testing.assert_array_equal(tier, np.argmax(x[:, runtime.guards.i_tier], axis=1))
    given, read = runtime.guards.masks(checked, tier), runtime.guards.masks(checked)
    for name, value in given._asdict().items():
        other = getattr(read, name)
        assert value.dtype == other.dtype and value.shape == other.shape, name
        np.testing.assert_array_equal(value, other, err_msg=name)
    bits = sum(read.channel_ok[k].astype(np.int64) << k for k in range(len(contract.CHANNELS)))
    np.testing.assert_array_equal(read.state, bits + (read.tier << len(contract.CHANNELS)))


def test_the_state_lookup_allows_exactly_the_action_tables_actions(bandit_export):
    runtime = _load(bandit_export)
    guards, n = runtime.guards, 600
    x = runtime.validate(_requests(runtime, n, seed=12))
    masks, joint = guards.masks(x), guards.joint_mask(x)
    assert len(np.unique(masks.state)) > 20  # most of the 32 states are met
    for index in range(len(JOINT_ACTIONS)):
        actions = np.repeat(JOINT_ACTIONS[index][None, :], n, axis=0)
        np.testing.assert_array_equal(guards.allowed_in_range(masks, actions), joint[:, index])
        np.testing.assert_array_equal(guards.allowed_by(masks, actions), joint[:, index])
    rng = np.random.default_rng(3)
    quiet = np.stack(
        [np.zeros(n, dtype=np.int64)] + [rng.integers(0, k, n) for k in contract.NVEC[1:]], 1
    )
    assert guards.allowed_in_range(masks, quiet).all()  # a no-send, whatever else it says
    # a component out of range: allowed_by reads each component itself, as before the lookup
    odd = np.repeat(JOINT_ACTIONS[200][None, :], n, axis=0)
    odd[:, 1] = -1  # the tone, which no rule reads
    np.testing.assert_array_equal(guards.allowed_by(masks, odd), joint[:, 200])
    odd[:, 3] = len(contract.CONTENTS)
    with pytest.raises(IndexError):
        guards.allowed_by(masks, odd)
    np.testing.assert_array_equal(runtime.draws.count(masks), joint.sum(axis=1))
    assert runtime.draws.count(masks).dtype == np.int64


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_the_one_pass_range_check_is_each_components_bounds(bandit_export, dtype):
    """Int64 actions read as unsigned are in range exactly where every component lies in
    [0, nvec): negative components (a huge unsigned number), each end and past it."""
    guards = _load(bandit_export).guards
    nvec = np.array(contract.NVEC)
    rng = np.random.default_rng(5)
    assert not guards.in_range(np.zeros((0, 4), dtype=dtype))
    for _ in range(300):
        actions = rng.integers(0, nvec, (3, 4)).astype(dtype)
        j, value = rng.integers(0, 4), rng.choice([-(2**31), -2, -1, 0, 1])
        actions[rng.integers(0, 3), j] = value + (nvec[j] - 1 if rng.random() < 0.5 else 0)
        expected = bool(((actions >= 0) & (actions < nvec)).all())
        assert guards.in_range(actions) is expected, actions


def test_review_read_before_the_network_is_review_read_after(bandit_export):
    """The review flags from :meth:`Guards.review_inputs` (read before the network runs) are
    those read for the pressing sends only, for every tone, content and goal."""
    runtime = _load(bandit_export)
    guards, n = runtime.guards, 2_000
    rng = np.random.default_rng(6)
    x = runtime.validate(_requests(runtime, n, seed=13))
    goals = [COL[name] for name in runtime.feature_names if name.startswith("goal_")]
    x[:, goals] = 0
    some = rng.random(n) < 0.8  # a fifth declare no goal
    x[np.flatnonzero(some), rng.choice(goals, n)[some]] = 1
    x[:, COL["market_stress"]] = rng.choice([0.0, 0.4, 1.0], n)
    actions = np.stack([rng.integers(0, k, n) for k in contract.NVEC], 1)
    read = guards.needs_review(x, actions, guards.review_inputs(x))
    np.testing.assert_array_equal(read, guards.needs_review(x, actions))
    assert 0 < read.sum() < (actions[:, 0] > 0).sum()  # some flagged, not every send
    assert len(guards.needs_review(x[:0], actions[:0])) == 0
    for column, value in (
        (1, len(contract.TONES)),
        (3, -1),
    ):  # a tone past the last, a content below 0
        odd = actions.copy()
        odd[5, column] = value
        with pytest.raises(ValueError, match="within the action space"):
            guards.needs_review(x, odd)
    # the rule, one row at a time, from the manifest's review rules
    rules = runtime.manifest["review_rules"]
    for i in range(n):
        slot, tone, _, content = actions[i]
        goal = [g for g in goals if x[i, g] > 0.5]
        sensitive = not goal or runtime.feature_names[goal[0]][5:] in rules["goals"]
        loss = (
            contract.CONTENTS[content] in rules["loss_contents"] and x[i, COL["market_stress"]] > 0
        )
        pressing = slot > 0 and contract.TONES[tone] in rules["tones"]
        assert read[i] == (pressing and (sensitive or loss)), (i, actions[i])


def test_the_compiled_check_of_chosen_actions_is_each_rules_check(bandit_export):
    """:meth:`Guards.rows_at_fault` marks exactly the rows whose action is out of range, not
    allowed (the 361-action table), or whose probability is not in [0, 1] (NaN included),
    sets out-of-range actions to no-send, marks doubtful rows apart and counts the rest."""
    runtime = _load(bandit_export)
    guards, n = runtime.guards, 3_000
    rng = np.random.default_rng(8)
    x = runtime.validate(_requests(runtime, n, seed=14))
    masks, joint = guards.masks(x), guards.joint_mask(x)
    nvec = np.array(contract.NVEC)
    actions = np.stack([rng.integers(0, k, n) for k in nvec], 1)
    odd = rng.random(n) < 0.1  # a component out of range: below 0, at or far past the end
    column = rng.integers(0, 4, n)
    actions[odd, column[odd]] = rng.choice([-(2**62), -1, 0, 1, 2**40], odd.sum()) + np.where(
        rng.random(odd.sum()) < 0.5, 0, nvec[column[odd]]
    )
    probability = rng.choice([0.0, 0.3, 1.0, -1e-12, 1 + 1e-12, np.nan, np.inf], n)
    doubtful = rng.random(n) < 0.05
    inside = ((actions >= 0) & (actions < nvec)).all(axis=1)
    allowed = np.array(
        [inside[i] and joint[i, _joint_index(actions[i])] for i in range(n)], dtype=bool
    )
    at_fault = ~allowed | ~((probability >= 0) & (probability <= 1))
    expected = np.where(doubtful, 2, at_fault.astype(np.uint8))
    checked, fault = actions.copy(), np.empty(n, dtype=np.uint8)
    count = guards.rows_at_fault(masks, checked, probability, doubtful, fault)
    np.testing.assert_array_equal(fault, expected)
    assert count == int((expected == 1).sum()) > 0 and (expected == 0).any()
    np.testing.assert_array_equal(checked, np.where(inside[:, None], actions, 0))
    # without probabilities: the rules alone, as the runtime checks its final actions
    checked = actions.copy()
    assert guards.rows_at_fault(masks, checked) == int((~allowed).sum())
    with pytest.raises(ValueError, match="C-ordered"):
        guards.rows_at_fault(masks, actions.astype(np.int32))


def test_the_last_pass_checks_flags_and_stamps_each_row_as_the_steps_it_replaces(bandit_export):
    """:meth:`Guards.finish` counts the actions :meth:`Guards.allowed_by` refuses (out of range
    included, set to no-send), writes :meth:`Guards.needs_review`'s flags and makes each
    row's 16 random bytes the uuid4 of those bytes."""
    runtime = _load(bandit_export)
    guards, n = runtime.guards, 2_500
    rng = np.random.default_rng(9)
    x = runtime.validate(_requests(runtime, n, seed=15))
    masks, joint, review = guards.masks(x), guards.joint_mask(x), guards.review_inputs(x)
    nvec = np.array(contract.NVEC)
    actions = np.stack([rng.integers(0, k, n) for k in nvec], 1)
    allowed = joint[np.arange(n), [_joint_index(a) for a in actions]]
    assert 0 < allowed.sum() < n
    entropy = rng.bytes(16 * n)
    ids = np.frombuffer(bytearray(entropy), dtype=np.uint8).reshape(n, 16)
    count, flags = guards.finish(masks, actions.copy(), review, ids)
    assert count == int((~allowed).sum())
    np.testing.assert_array_equal(flags, guards.needs_review(x, actions))
    expected = [uuid.UUID(bytes=entropy[16 * i : 16 * i + 16], version=4).bytes for i in range(n)]
    assert [bytes(row) for row in ids] == expected
    allowed_only = np.where(allowed[:, None], actions, 0)  # no-sends where the rules refuse
    assert guards.finish(masks, allowed_only, review, ids.copy())[0] == 0
    odd = allowed_only.copy()
    odd[7] = [1, 0, len(contract.CHANNELS), 0]  # a channel past the last: out of range
    assert guards.finish(masks, odd, review, ids.copy())[0] == 1
    np.testing.assert_array_equal(odd[7], [0, 0, 0, 0])
    with pytest.raises(ValueError, match="ids must be"):
        guards.finish(masks, allowed_only, review, ids[:-1])


def _fields(decided) -> dict:
    """Every field of a :class:`Decisions` but the ids (random bytes), as arrays."""
    names = ("action", "probability", "propensity", "policy_action", "policy_probability")
    names += ("allowed_actions", "needs_review", "client_id", "day")
    out = {name: np.asarray(getattr(decided, name)) for name in names}
    out["reasons"] = [list(r) for r in decided.reasons]
    out["labels"] = [decided.slot, decided.tone, decided.channel, decided.content]
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 63, 700])
def test_a_request_the_graph_answers_is_decided_as_the_general_path_decides(
    bandit_export, monkeypatch, dtype, n
):
    """Where the graph's choice is the answer (nothing drawn, no firm's action, no circuit),
    the runtime's one pass after the graph (:meth:`Guards.settle`) gives every field the
    general path gives (the graph's choice held to the guards, the exploration step, the last
    pass), reasons included; the ids are uuid4s either way."""
    runtime = _load(bandit_export)
    x = _requests(runtime, n, seed=23).astype(dtype)
    settled = [runtime.decide(x, explain=explain) for explain in (False, True)]
    monkeypatch.setattr(runtime, "_settle", lambda *args: None)
    general = [runtime.decide(x, explain=explain) for explain in (False, True)]
    for fast, slow in zip(settled, general, strict=True):
        a, b = _fields(fast), _fields(slow)
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_equal(a[name], b[name], err_msg=name)
        for ids in (fast.decision_id, slow.decision_id):
            assert [str(uuid.UUID(i, version=4)).replace("-", "") for i in ids] == list(ids)
            assert len(set(ids)) == n


def test_a_graph_choice_the_rules_refuse_is_not_settled_but_decided_again(bandit_export):
    """A graph whose choice for some rows the rules refuse, or which leaves rows to numpy
    (doubtful): the one pass after the graph declines the request, and the general path
    decides those rows again in numpy (with a warning for the refused ones), as before."""
    runtime = _load(bandit_export)
    x = _requests(runtime, 120, seed=24)
    x[:, COL["opted_out_email"]] = 1.0  # nobody may be emailed
    expected = runtime.decide(x, explain=False)
    real = runtime.session

    class Forged:  # the export's own graph, then some rows' choices replaced
        def __init__(self, rows, doubtful):
            self.rows, self.doubtful = rows, doubtful

        def run(self, names, feeds):
            outputs = real.run(names, feeds)
            if names is not None and "choice" in names:
                outputs[names.index("choice")][self.rows] = [1, 0, 0, 0]  # email
                outputs[names.index("choice_doubtful")][self.doubtful] = True
            return outputs

        def __getattr__(self, name):
            return getattr(real, name)

    for rows, doubtful in (([5, 77], []), ([], [3, 4, 119])):
        runtime.session = Forged(rows, doubtful)
        if rows:
            with pytest.warns(RuntimeWarning, match="not allowed by the manifest's rules"):
                decided = runtime.decide(x, explain=False)
        else:
            decided = runtime.decide(x, explain=False)
        np.testing.assert_array_equal(decided.action, expected.action)
        np.testing.assert_array_equal(decided.probability, expected.probability)
        assert ((decided.action[:, 0] == 0) | (decided.action[:, 2] != 0)).all()


def test_the_pass_after_the_graph_copies_checks_flags_and_stamps_as_the_steps_it_replaces(
    bandit_export,
):
    """:meth:`Guards.settle` over a graph's choice: the actions checked as
    :meth:`Guards.rows_at_fault` checks them, copied twice, their probabilities, ones, the
    allowed counts of :meth:`Draws.count`, no exploration, :meth:`Guards.needs_review`'s flags
    and the uuid4 of each row's bytes; None, with the inputs as given, where a row is doubtful,
    at fault or of a probability outside [0, 1]; ValueError for arrays of other types."""
    runtime = _load(bandit_export)
    guards, n = runtime.guards, 1_500
    rng = np.random.default_rng(25)
    x = runtime.validate(_requests(runtime, n, seed=25))
    masks, review = guards.masks(x), guards.review_inputs(x)
    greedy, probability = runtime.choose(runtime.logits(x), x, masks=masks)
    doubtful = np.zeros(n, dtype=bool)
    counts = runtime.draws.state_count
    entropy = rng.bytes(16 * n)
    ids = np.frombuffer(bytearray(entropy), dtype=np.uint8).reshape(n, 16)
    out = guards.settle(masks, greedy, probability, doubtful, review, ids, counts)
    assert out is not None
    for copy in (out.action, out.policy_action):
        np.testing.assert_array_equal(copy, greedy)
        assert not np.shares_memory(copy, greedy)
    assert not np.shares_memory(out.action, out.policy_action)
    np.testing.assert_array_equal(out.policy_probability, probability)
    np.testing.assert_array_equal(out.propensity, np.ones(n))
    np.testing.assert_array_equal(out.allowed, runtime.draws.count(masks))
    assert not out.explored.any()
    np.testing.assert_array_equal(out.needs_review, guards.needs_review(x, greedy, review))
    expected = [uuid.UUID(bytes=entropy[16 * i : 16 * i + 16], version=4).bytes for i in range(n)]
    assert [bytes(row) for row in ids] == expected
    # a row out of range or the rules refuse, doubtful, or of a broken probability: declined
    for row, value in ((0, [9, 0, 0, 0]), (1, [1, 0, 0, 0])):
        broken = greedy.copy()
        broken[row] = value
        x_row = x.copy()
        x_row[row, COL["opted_out_email"]] = 1.0
        m = guards.masks(x_row)
        given = broken.copy()
        assert guards.settle(m, broken, probability, doubtful, review, ids, counts) is None
        np.testing.assert_array_equal(broken, given)  # the graph's outputs as they were
    for p, d in (
        (np.where(np.arange(n) == 2, np.nan, probability), doubtful),
        (np.where(np.arange(n) == 2, 1.5, probability), doubtful),
        (probability, np.arange(n) == 2),
    ):
        assert guards.settle(masks, greedy, p, d, review, ids, counts) is None
    with pytest.raises(ValueError, match="float64, bool, int64"):
        guards.settle(masks, greedy, probability.astype(np.float32), doubtful, review, ids, counts)
    with pytest.raises(ValueError, match="ids must be"):
        guards.settle(masks, greedy, probability, doubtful, review, ids[:-1], counts)


@pytest.mark.parametrize("action", [[1, 0, 0, 0], [1, 0, 3, 0], [-1, 0, 0, 0]])
def test_a_final_action_the_rules_refuse_returns_no_decision(bandit_export, monkeypatch, action):
    """Whatever hands the runtime its final actions (here a broken exploration step), one the
    rules refuse (email to a client who opted out of it) or outside the action space stops
    the request: no decision is returned."""
    runtime = _load(bandit_export)
    x = _requests(runtime, 50, seed=16)
    x[:, COL["opted_out_email"]] = 1.0
    decided = runtime.decide(x, explain=False)
    assert (decided.action[:, 2][decided.action[:, 0] > 0] != 0).all()  # never email

    def broken(x, logits, base, policy=None, masks=None):
        actions = base.copy()
        actions[17] = action
        return actions, np.ones(len(x)), np.ones(len(x), dtype=np.int64), np.zeros(len(x), bool)

    # exploration on: the runtime's general path, where the draws hand it the final actions
    runtime = _load(bandit_export, exploration=Exploration(epsilon=0.2, seed=3))
    monkeypatch.setattr(runtime, "explore", broken)
    with pytest.raises(RuntimeError, match="outside the guards"):
        runtime.decide(x, explain=False)


def test_a_loaded_runtime_compiles_nothing_on_its_first_requests(bandit_export):
    """Loading builds every compiled loop for the types deciding calls them with: a request
    of float32 or float64 features, of one row or many, with reasons or without, and a review
    of its actions add no compiled version of any."""
    runtime = _load(bandit_export)
    loops = [getattr(compiled, name) for name in KERNELS]
    before = [list(loop.signatures) for loop in loops]
    assert all(before)
    x = _requests(runtime, 70, seed=17)
    for request in (x, x.astype(np.float64), x[:1]):
        runtime.decide(request, explain=True)
    runtime.guards.needs_review(runtime.validate(x), runtime.decide(x, explain=False).action)
    assert [list(loop.signatures) for loop in loops] == before


KERNELS = ("intake_pass", "rows_at_fault", "finish_rows", "review_flags", "settle_rows")


def _joint_index(action: np.ndarray) -> int:
    """The index of an (slot, tone, channel, content) action among the 361 (no-send: 0)."""
    if action[0] == 0:
        return 0
    return int(np.flatnonzero((JOINT_ACTIONS == action).all(axis=1))[0])


def test_the_labels_are_each_rows_labels_and_a_no_sends_are_none():
    labeller = Labeller(contract.ACTION_LABELS)
    rng = np.random.default_rng(4)
    actions = np.stack([rng.integers(0, k, 2_000) for k in contract.NVEC], axis=1)
    words = labeller(actions)
    assert list(words) == ["slot", "tone", "channel", "content"]
    for j, part in enumerate(words):
        expected = [
            contract.ACTION_LABELS[part][a[j]] if j == 0 or a[0] > 0 else None for a in actions
        ]
        assert type(words[part]) is list and words[part] == expected
        assert all(type(w) is str for w in words[part] if w is not None)
    assert words["tone"].count(None) == int((actions[:, 0] == 0).sum()) > 0
    assert labeller(actions[:0]) == {"slot": [], "tone": [], "channel": [], "content": []}


@pytest.mark.parametrize("n", [1, 2, 4097])
def test_decision_ids_are_the_uuid4_of_the_entropy_read(monkeypatch, n):
    entropy = np.random.default_rng(n).bytes(16 * n)
    monkeypatch.setattr(decisions, "random_bytes", lambda size: entropy[:size])
    ids = new_decision_ids(n)
    expected = [uuid.UUID(bytes=entropy[16 * i : 16 * i + 16], version=4).hex for i in range(n)]
    assert type(ids) is list and ids == expected and all(type(i) is str for i in ids)


@pytest.mark.parametrize("rows", [1, 64, 65, 300])
def test_decisions_keep_their_python_types(bandit_export, rows):
    d = _load(bandit_export).decide(clients(rows, seed=rows), explain=False)
    for name in ("slot", "tone", "channel", "content", "decision_id"):
        value = getattr(d, name)
        assert type(value) is list and len(value) == rows, name
        assert all(v is None or type(v) is str for v in value), name
    assert all(type(i) is str and len(i) == 32 for i in d.decision_id)
    assert d.action.dtype == np.int64 and d.allowed_actions.dtype == np.int64


def test_labels_and_ids_are_written_on_first_read_from_what_was_decided(bandit_export, monkeypatch):
    runtime = _load(bandit_export)
    reads = []
    draw = decisions.random_bytes
    monkeypatch.setattr(decisions, "random_bytes", lambda size: reads.append(size) or draw(size))
    d = runtime.decide(clients(300, seed=5), explain=False)
    assert reads == [16 * 300]  # the ids' bytes are drawn when deciding, once
    assert not {"_words", "decision_id"} & set(vars(d))  # nothing written yet
    ids = d.decision_id
    assert ids is d.decision_id and reads == [16 * 300]  # kept: the same ids on every read
    assert ids == decisions.ids_in_hex(d.id_bits) and len(set(ids)) == 300
    words = Labeller(runtime.labels)(d.action)
    for part in ("slot", "tone", "channel", "content"):
        assert getattr(d, part) is getattr(d, part) and getattr(d, part) == words[part], part
    records = d.records()
    assert [r["slot"] for r in records] == words["slot"]
    assert [r["decision_id"] for r in records] == ids


def test_ids_are_strong_random_bytes_and_a_forked_process_draws_others():
    assert decisions.random_bytes(16) != decisions.random_bytes(16)
    assert len(decisions.random_bytes(64 * 1024)) == 64 * 1024
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out without running the parent's handlers
        try:
            os.write(write, decisions.decision_id_bits(32))
        finally:
            os._exit(0)  # never back into the test session, whatever happened
    os.close(write)
    child = b""
    while chunk := os.read(read, 4096):
        child += chunk
    os.close(read)
    os.waitpid(pid, 0)
    parent = decisions.decision_id_bits(32)  # the same draw in the parent
    assert len(child) == len(parent) == 512 and child != parent


def test_ids_come_from_the_kernel_where_openssls_generator_fails(monkeypatch):
    def failing(n: int) -> bytes:
        raise ssl.SSLError("the generator is not seeded")

    monkeypatch.setattr(decisions, "_RAND_BYTES", failing)
    monkeypatch.setattr(decisions.os, "urandom", lambda n: b"\x01" * n)
    assert decisions.random_bytes(4) == b"\x01" * 4
    assert decisions.new_decision_ids(1) == [uuid.UUID(bytes=b"\x01" * 16, version=4).hex]


def test_guards_refuse_more_channels_than_the_masks_pack(bandit_export):
    manifest = json.loads((bandit_export / "manifest.json").read_text())
    Guards(manifest)  # the contract's three channels
    extra = [f"channel_{k}" for k in range(6)]
    manifest["action_labels"]["channel"] += extra
    manifest["mask_rules"]["channel_caps"] |= {c: 1 for c in extra}
    manifest["feature_names"] += [f"{kind}_{c}" for c in extra for kind in ("opted_out", "sent_7d")]
    with pytest.raises(ValueError, match="at most 8 channels are supported, got 9"):
        Guards(manifest)
