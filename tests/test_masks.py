"""Guardrails: no action sequence ever delivers where the rules forbid it."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.config import GuardrailConfig, load_setup
from envs.core import CadenceCore
from envs.features import channel_counts
from envs.masks import MaskRules, component_masks, is_allowed, joint_mask
from envs.spaces import JOINT_ACTIONS, MASK_SPLITS

N = 16
action = st.tuples(st.integers(0, 6), st.integers(0, 4), st.integers(0, 2), st.integers(0, 3))


@functools.cache
def _many_opt_outs():
    """The default setup with unsubscribes far likelier (many opt-outs), composed once: each
    example below differs only in its seed."""
    return load_setup(overrides=["env.response.unsub_base=-2.0"])


# arbitrary arrays on every face: tests/test_action_validation.py
@settings(max_examples=30, deadline=None)
@given(
    days=st.lists(st.lists(action, min_size=N, max_size=N), min_size=1, max_size=30),
    seed=st.integers(0, 2**16),
)
def test_no_action_sequence_delivers_against_the_rules(days, seed):
    setup = dataclasses.replace(_many_opt_outs(), seed=seed)
    core = CadenceCore(setup, N)
    core.reset()
    rules = core.rules
    for day_actions in days:
        actions = np.array(day_actions)
        opted_out = core.world.opted_out.copy()
        counts = channel_counts(core.world)
        tier = core.world.traits.consent_tier.copy()
        r = core.step(actions)
        sent = r.outcomes["sent"]
        rows = np.flatnonzero(sent)
        ch, slot, content = actions[rows, 2], actions[rows, 0] - 1, actions[rows, 3]
        assert not opted_out[rows, ch].any(), "delivered on an opted-out channel"
        assert not rules.quiet[slot, ch].any(), "delivered in quiet hours"
        assert (counts[rows, ch] < rules.channel_cap[ch]).all(), "delivered past a channel cap"
        assert (counts[rows].sum(axis=1) < rules.max_per_week).all(), (
            "delivered past the weekly cap"
        )
        assert (tier[rows] >= rules.content_min_tier[content]).all(), "delivered against consent"
        # every blocked attempt is counted, and only those
        attempted = actions[:, 0] > 0
        np.testing.assert_array_equal(r.outcomes["violation"], attempted & ~sent)


@settings(max_examples=200, deadline=None)
@given(
    opted=st.lists(st.booleans(), min_size=3, max_size=3),
    counts=st.lists(st.integers(0, 7), min_size=3, max_size=3),
    tier=st.integers(0, 3),
    max_per_week=st.integers(0, 7),
)
def test_component_masks_are_a_product_set_inside_the_joint_mask(opted, counts, tier, max_per_week):
    rules = MaskRules.from_config(GuardrailConfig(max_per_week=max_per_week))
    args = (np.array([opted]), np.array([counts]), np.array([tier]))
    joint = joint_mask(rules, *args)[0]
    slot, tone, channel, content = np.split(component_masks(rules, *args)[0], MASK_SPLITS)
    product = (
        slot[:, None, None, None]
        & tone[None, :, None, None]
        & channel[None, None, :, None]
        & content[None, None, None, :]
    )
    for index, (s, t, c, k) in enumerate(JOINT_ACTIONS):
        if product[s, t, c, k]:
            assert joint[index], (
                f"component masks allow {JOINT_ACTIONS[index]} which the joint mask forbids"
            )
    assert (
        slot[0] and tone.any() and channel.any() and content.any()
    )  # every component has a choice
    # the joint mask and the direct rule check agree on every action
    np.testing.assert_array_equal(
        joint,
        is_allowed(rules, JOINT_ACTIONS, *(np.repeat(a, len(JOINT_ACTIONS), axis=0) for a in args)),
    )
    if joint[1:].any():
        assert slot[1:].any(), "some send is allowed but the component masks allow none"
