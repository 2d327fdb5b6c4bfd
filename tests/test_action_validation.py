"""Every env face checks actions before anything moves; nothing outside the action space is
delivered, and no client's action touches another client's records.

The first tests reproduce what got past the caps before actions were validated (negative
channel indices read as real channels by the masks, logged as ``channel + 1 <= 0`` so no cap
counted them, and written into a neighbouring client's engagement averages). The property
tests then drive each face with arbitrary integer arrays, out-of-range and wrong-shaped ones
included.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import envs
from envs.config import load_setup
from envs.core import CadenceCore
from envs.features import channel_counts
from envs.sb3_vec_env import CadenceVecEnv
from envs.spaces import JOINT_ACTIONS, NVEC
from simulate.labels import N_JOINT_ACTIONS
from simulate.world import World

N = 8
SETUP = load_setup(
    overrides=["env.response.unsub_base=-2.0", "env.horizon_days=200"]
)  # many opt-outs


def world_state(world: World) -> dict[str, np.ndarray]:
    """Copies of every per-client array the world holds."""
    s = world.latent
    return {
        "client_id": world.client_id.copy(),
        "fatigue": s.fatigue.copy(),
        "novelty": s.novelty.copy(),
        "trust": s.trust.copy(),
        "anxiety": s.anxiety.copy(),
        "opted_out": world.opted_out.copy(),
        "churned": world.churned.copy(),
        "channel_log": world.channel_log.copy(),
        "tone_log": world.tone_log.copy(),
        "last_send_day": world.last_send_day.copy(),
        "engagement": world.engagement.copy(),
        "urgency_last_week": world.urgency_last_week.copy(),
    }


def core_state(core: CadenceCore) -> dict[str, np.ndarray]:
    return {
        **world_state(core.world),
        "day": np.array(core.day),
        "age": core.age.copy(),
        "episode_return": core.episode_return.copy(),
    }


def assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray], rows=slice(None)) -> None:
    for name in a:
        if a[name].ndim == 0:
            assert a[name] == b[name], name
        else:
            np.testing.assert_array_equal(a[name][rows], b[name][rows], err_msg=name)


# --- the faces, each with a `step(actions)` that takes the face's own batch ---------------------
class Face:
    """One env face in one action view, with access to its core."""

    def __init__(self, kind: str, view: str, seed: int = 0, setup=SETUP) -> None:
        self.kind, self.view = kind, view
        if kind == "make":
            self.env = gym.make(envs.ENV_ID, action_view=view, setup=setup)
            self.env.reset(seed=seed)
            self.core = self.env.unwrapped.core
        elif kind == "make_vec":
            self.env = gym.make_vec(
                envs.ENV_ID,
                num_envs=N,
                vectorization_mode="vector_entry_point",
                action_view=view,
                setup=setup,
            )
            self.env.reset(seed=seed)
            self.core = self.env.core
        else:
            self.env = CadenceVecEnv(setup, num_envs=N, action_view=view)
            self.env.seed(seed)
            self.env.reset()
            self.core = self.env.core

    @property
    def n(self) -> int:
        return self.core.n

    def step(self, actions):
        """(sent (n,), done (n,)) of one day."""
        if self.kind == "make":
            _, _, terminated, truncated, info = self.env.step(actions)
            if terminated or truncated:  # as a user would: the next client
                self.env.reset()
            return np.array([info["sent"]]), np.array([terminated or truncated])
        if self.kind == "make_vec":
            _, _, terminated, truncated, info = self.env.step(actions)
            return info["sent"], terminated | truncated
        _, _, dones, infos = self.env.step(actions)
        return np.array([i["sent"] for i in infos]), dones

    def batch(self, multi: np.ndarray):
        """The face's action for (n, 4) valid MultiDiscrete actions."""
        from envs.spaces import multi_to_flat

        out = multi_to_flat(multi) if self.view == "flat" else multi
        return out[0] if self.kind == "make" else out


FACES = [(kind, view) for kind in ("make", "make_vec", "sb3") for view in ("multi", "flat")]


# --- reproductions ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["make", "make_vec", "sb3"])
@pytest.mark.parametrize("channel", [-1, -3, 3, 5])
def test_out_of_range_channel_is_refused_and_moves_nothing(kind, channel):
    face = Face(kind, "multi")
    action = np.array([2, 0, channel, 0])
    for _day in range(3):  # before validation, channel -1 every day got past the SMS cap
        before = core_state(face.core)
        actions = action if kind == "make" else np.tile(action, (face.n, 1))
        with pytest.raises(
            ValueError, match=rf"'channel' of row 0 is {channel}; allowed range is 0..2"
        ):
            face.step(actions)
        assert_same_state(before, core_state(face.core))
        face.step(
            face.batch(np.zeros((face.n, 4), dtype=np.int64))
        )  # the day goes on with no-sends


def test_negative_channel_no_longer_bypasses_the_caps_through_the_world():
    """The world is the second line: it refuses what the env would."""
    setup = load_setup()
    world = World(
        setup.population, setup.env.response, setup.scenario, 0, np.arange(4, dtype=np.uint64)
    )
    before = world_state(world)
    slot, tone, content = np.full(4, 2), np.zeros(4, np.int64), np.zeros(4, np.int64)
    for bad in (np.array([0, 0, -1, 0]), np.array([0, 0, 3, 0])):
        with pytest.raises(ValueError, match="channel of row 2 is"):
            world.step(0, slot, tone, bad, content)
    with pytest.raises(ValueError, match="tone of row 0 is -2"):
        world.step(0, slot, np.full(4, -2), np.zeros(4, np.int64), content)
    with pytest.raises(ValueError, match="slot must be an integer array"):
        world.step(0, slot.astype(float), tone, np.zeros(4, np.int64), content)
    with pytest.raises(ValueError, match=r"content must have shape \(4,\)"):
        world.step(0, slot, tone, np.zeros(4, np.int64), np.zeros(3, np.int64))
    assert_same_state(before, world_state(world))


@pytest.mark.parametrize("kind", ["make", "make_vec", "sb3"])
@pytest.mark.parametrize("channel", [-1, -3])
def test_a_week_of_negative_channels_delivers_nothing_past_the_caps(kind, channel):
    """Before validation, channel -1 every day delivered 56 messages a week to 8 clients."""
    face = Face(kind, "multi", setup=load_setup())
    delivered = np.zeros(face.n, dtype=int)
    for _day in range(7):
        action = np.array([2, 0, channel, 0])
        try:
            sent, _ = face.step(action if kind == "make" else np.tile(action, (face.n, 1)))
            delivered += sent
        except ValueError:
            face.step(face.batch(np.zeros((face.n, 4), dtype=np.int64)))
    # whichever channel the index could be read as (numpy reads -1 as sms), at most its weekly cap
    assert (delivered <= face.core.rules.channel_cap[channel]).all(), delivered
    assert (face.core.world.channel_log >= 0).all()  # the send log holds only real channels or 0


@pytest.mark.parametrize("kind", ["make_vec", "sb3"])
def test_one_clients_bad_action_leaves_every_other_client_as_it_was(kind):
    """Before validation, a negative index overwrote a neighbouring client's engagement averages."""
    face, control = Face(kind, "multi"), Face(kind, "multi")
    for bad in ([2, 0, -1, 0], [2, -1, 0, 0], [2, 0, 0, -1]):
        actions = np.zeros((N, 4), dtype=np.int64)
        actions[3] = bad
        try:
            face.step(actions)
        except ValueError:
            face.step(np.zeros((N, 4), dtype=np.int64))
        control.step(np.zeros((N, 4), dtype=np.int64))
    others = np.arange(N) != 3
    assert_same_state(core_state(face.core), core_state(control.core), rows=others)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((4, N), dtype=np.int64), r"must have shape \(8, 4\).*got shape \(4, 8\)"),
        (np.full((N, 4), 1.5), "whole numbers, got 1.5"),
        (np.full((N, 4), np.nan), "whole numbers"),
        (np.tile([9, 0, 0, 0], (N, 1)), "'slot' of row 0 is 9; allowed range is 0..6"),
        (np.tile([1, -1, 0, 0], (N, 1)), "'tone' of row 0 is -1; allowed range is 0..4"),
        (np.tile([1, 0, 0, 4], (N, 1)), "'content' of row 0 is 4; allowed range is 0..3"),
        (np.tile(["1", "0", "0", "0"], (N, 1)), "must hold integers, got dtype <U1"),
        (np.ones((N, 4), dtype=bool), "must hold integers, got dtype bool"),
    ],
)
def test_malformed_batches_are_refused_naming_the_problem(bad, message):
    face = Face("make_vec", "multi")
    before = core_state(face.core)
    with pytest.raises(ValueError, match=message):
        face.step(bad)
    assert_same_state(before, core_state(face.core))


def test_whole_floats_are_accepted_as_their_integers():
    a, b = Face("make_vec", "multi"), Face("make_vec", "multi")
    actions = np.tile([2, 1, 0, 1], (N, 1))
    a.step(actions)
    b.step(actions.astype(np.float64))
    assert_same_state(core_state(a.core), core_state(b.core))


def test_flat_views_refuse_indices_outside_discrete_361():
    for kind in ("make", "make_vec", "sb3"):
        face = Face(kind, "flat")
        before = core_state(face.core)
        for bad in (-1, N_JOINT_ACTIONS):
            actions = bad if kind == "make" else np.full(face.n, bad)
            with pytest.raises(
                ValueError, match=f"flat action of row 0 is {bad}; allowed range is 0..360"
            ):
                face.step(actions)
        assert_same_state(before, core_state(face.core))


def test_single_env_refuses_a_batch_shaped_action():
    face = Face("make", "multi")
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        face.step(np.array([[1, 0, 0, 0]]))


# --- property tests: arbitrary integer arrays on every face --------------------------------------
def _valid(face: Face, actions: np.ndarray) -> bool:
    """Independent statement of the action space (not the code under test)."""
    if face.view == "flat":
        shape = () if face.kind == "make" else (face.n,)
        return actions.shape == shape and bool(((actions >= 0) & (actions < N_JOINT_ACTIONS)).all())
    shape = (4,) if face.kind == "make" else (face.n, 4)
    return actions.shape == shape and bool(((actions >= 0) & (actions < NVEC)).all())


def _shapes(face_kind: str, view: str):
    good = {
        ("make", "multi"): (4,),
        ("make", "flat"): (),
        ("make_vec", "multi"): (N, 4),
        ("sb3", "multi"): (N, 4),
    }.get((face_kind, view), (N,))
    wrong = st.sampled_from([(4, N), (N,), (N, 3), (N + 1, 4), (1, 4), (2,), (N, 4, 1)])
    return st.one_of(st.just(good), st.just(good), st.just(good), wrong)


def _as_multi(face: Face, actions: np.ndarray) -> np.ndarray:
    if face.view == "flat":
        return JOINT_ACTIONS[np.asarray(actions).reshape(-1)]
    return np.asarray(actions).reshape(-1, 4)


@pytest.mark.parametrize(("kind", "view"), FACES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_no_array_gets_past_the_guardrails_or_touches_another_client(kind, view, data, seed):
    face, twin = Face(kind, view, seed), Face(kind, view, seed)
    rules = face.core.rules
    high = N_JOINT_ACTIONS + 3 if view == "flat" else 9
    sent_log: dict[int, list[tuple[int, int]]] = {
        row: [] for row in range(face.n)
    }  # row -> (day, channel)
    days = data.draw(st.integers(1, 21), label="days")
    changed = data.draw(st.integers(0, face.n - 1), label="row the twin acts differently in")
    for _ in range(days):
        shape = data.draw(_shapes(kind, view), label="shape")
        # mostly in range, with out-of-range values mixed in
        values = st.one_of(
            st.integers(0, 6 if view == "multi" else N_JOINT_ACTIONS - 1), st.integers(-4, high)
        )
        actions = data.draw(hnp.arrays(np.int64, shape, elements=values), label="actions")
        before = core_state(face.core)
        if not _valid(face, actions):
            with pytest.raises(ValueError):
                face.step(actions)
            assert_same_state(before, core_state(face.core))
            continue
        day = face.core.day
        opted_out = face.core.world.opted_out.copy()
        multi = _as_multi(face, actions)
        sent, done = face.step(actions)
        rows = np.flatnonzero(sent)
        channel, slot = multi[rows, 2], multi[rows, 0] - 1
        assert not opted_out[rows, channel].any(), "delivered on an opted-out channel"
        assert not rules.quiet[slot, channel].any(), "delivered in quiet hours"
        for row in range(face.n):
            if sent[row]:
                sent_log[row].append((day, int(multi[row, 2])))
            if done[row]:  # a new client takes the slot
                sent_log[row] = []
        # every 7-day window: the one ending today is the only new one
        for row, log in sent_log.items():
            week = [c for d, c in log if d > day - 7]
            per_channel = np.bincount(week, minlength=3)
            assert (per_channel <= rules.channel_cap).all(), (
                f"row {row} past a channel cap: {per_channel}"
            )
            assert len(week) <= rules.max_per_week, f"row {row} got {len(week)} messages in 7 days"
        # the send log the caps read is exactly what was delivered
        world = face.core.world
        expected_log = np.zeros((face.n, 7), dtype=np.int8)
        for row, log in sent_log.items():
            for d, c in log:
                if d > day - 7:
                    expected_log[row, d % 7] = c + 1
        np.testing.assert_array_equal(world.channel_log, expected_log)
        np.testing.assert_array_equal(
            channel_counts(world),
            np.stack([(expected_log == c + 1).sum(axis=1) for c in range(3)], axis=1),
        )
        # the twin got the same actions but another action in one row: every other row is unchanged
        if face.n > 1:
            other = np.array(actions, copy=True)
            if view == "flat":
                other[changed] = data.draw(
                    st.integers(0, N_JOINT_ACTIONS - 1), label="other action"
                )
            else:
                other[changed] = [data.draw(st.integers(0, int(k) - 1)) for k in NVEC]
            twin.step(other)
            keep = np.arange(face.n) != changed
            assert_same_state(core_state(face.core), core_state(twin.core), rows=keep)
        else:
            twin.step(actions)
