"""The skew test: on the simulator's own export, the feature builder reproduces, for every
client and day and every consent tier, exactly what the env gave the policy (float32 bits)."""

from __future__ import annotations

import numpy as np
import pytest

from agents.config import AgentConfig
from agents.heuristics import RandomPolicy, SegmentRules
from agents.registry import train_agent
from envs.config import load_setup
from envs.features import FEATURE_NAMES
from loop.events import N_TIERS
from loop.features import build_features, feature_matrix
from loop.simulated import simulate_export

SETUP = load_setup(overrides=["env.horizon_days=90"])


def _skew(policy, num_clients: int, days: int, seed: int, autoreset: bool = False) -> dict:
    """Roll ``policy`` out recording its export and the env's observations; compare each day's
    observations with the builder's. Returns rows compared per consent tier."""
    seen: list[tuple[int, np.ndarray, np.ndarray]] = []
    export = simulate_export(
        policy,
        SETUP,
        num_clients,
        days,
        seed,
        autoreset=autoreset,
        on_observation=lambda day, ids, obs: seen.append((day, ids, obs.copy())),
    )
    per_tier = dict.fromkeys(range(N_TIERS), 0)
    for day, ids, env_obs in seen:
        frame = build_features(export, day, include_closed=not autoreset)
        order = np.argsort(ids)
        np.testing.assert_array_equal(frame["client_id"].to_numpy(), ids[order])
        built, expected = feature_matrix(frame), env_obs[order]
        differ = built.view(np.uint32) != expected.view(np.uint32)
        if differ.any():
            row, column = np.argwhere(differ)[0]
            raise AssertionError(
                f"day {day}: {int(differ.sum())} values differ; first: client {ids[order][row]}, "
                f"{FEATURE_NAMES[column]} built {built[row, column]!r}, env "
                f"{expected[row, column]!r}"
            )
        tiers = expected[:, 7:11].argmax(axis=1)
        for tier in range(N_TIERS):
            per_tier[tier] += int((tiers == tier).sum())
    return per_tier


def test_builder_matches_the_env_bit_for_bit_on_a_small_rollout():
    compared = _skew(SegmentRules(), num_clients=300, days=20, seed=4)
    assert all(rows > 0 for rows in compared.values()), compared


def test_builder_matches_a_random_sender_with_urgent_messages_and_opt_outs():
    compared = _skew(RandomPolicy(seed=1), num_clients=200, days=25, seed=5)
    assert all(rows > 0 for rows in compared.values()), compared


@pytest.mark.slow
@pytest.mark.parametrize("sender", ["linucb", "segment_rules"])
def test_builder_matches_the_env_on_2000_clients_by_60_days(sender):
    if sender == "linucb":
        cfg = AgentConfig(name="linucb")
        policy = train_agent(cfg, SETUP, total_timesteps=20_000, num_envs=500, progress=False)
    else:
        policy = SegmentRules()
    compared = _skew(policy, num_clients=2_000, days=60, seed=11)
    assert sum(compared.values()) == 2_000 * 61
    assert all(rows > 1_000 for rows in compared.values()), compared


def test_builder_matches_the_env_when_new_clients_take_churned_clients_slots():
    """A client who takes a churned client's slot (training's autoreset) joins on the day it is
    first seen, its last visit ``initial_days_away`` before it, in its visit log and its
    ``last_visit_day`` alike (``World.replace(rows, ids, day)``)."""
    _skew(SegmentRules(), num_clients=500, days=30, seed=4, autoreset=True)
