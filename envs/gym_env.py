"""The single-client gymnasium face: ``gymnasium.make("Cadence-v0")``.

One client per episode: churn ends it (``terminated``), the horizon truncates it. A reset
with a seed starts over from that seed's first client; a reset without one brings the next client.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from envs.config import Setup, load_setup
from envs.core import CadenceCore, refuse_unknown
from envs.spaces import (
    INFO_KEYS,
    ActionError,
    check_flat,
    flat_space,
    flat_to_multi,
    multi_discrete_space,
    observation_space,
)
from simulate.labels import ACTION_LABELS, CHANNELS, CONTENTS, SLOTS, TONES

OPTIONS = (
    "setup",
    "population",
    "scenario",
    "reward",
    "seed",
    "horizon_days",
    "action_view",
    "overrides",
    "render_mode",
    "client_id_offset",
)
"""keyword arguments of ``gymnasium.make("Cadence-v0", ...)``"""


class CadenceEnv(gym.Env):
    """One synthetic client at a time; same model and options as :class:`CadenceVectorEnv`.

    Any keyword argument it does not take is a ``TypeError`` that names it.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        setup: Setup | None = None,
        population: str = "default",
        scenario: str = "calm",
        reward: str = "balanced",
        seed: int = 0,
        horizon_days: int | None = None,
        action_view: str = "multi",
        overrides: list[str] | tuple[str, ...] = (),
        render_mode: str | None = None,
        client_id_offset: int = 0,
        **unknown: Any,
    ) -> None:
        refuse_unknown("Cadence-v0 (gymnasium.make)", unknown, OPTIONS)
        if setup is None:
            extra = [f"env.horizon_days={horizon_days}"] if horizon_days is not None else []
            setup = load_setup(
                population=population,
                scenario=scenario,
                reward=reward,
                seed=seed,
                overrides=[*overrides, *extra],
            )
        if action_view not in ("multi", "flat"):
            raise ValueError(f"action_view must be 'multi' or 'flat', got {action_view!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}"
            )
        self.setup = setup
        self.render_mode = render_mode
        self.core = CadenceCore(setup, 1, autoreset=False, client_id_offset=client_id_offset)
        self.action_view = action_view
        self.observation_space = observation_space()
        self.action_space = flat_space() if action_view == "flat" else multi_discrete_space()
        self.action_labels = ACTION_LABELS
        """labels of each action component, in MultiDiscrete order"""
        self._last: dict[str, Any] = {}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None or self.core.world is None:
            obs = self.core.reset(seed)
        else:
            self.core.next_clients(np.array([0]))
            obs = self.core.observe()
        self._last = {}
        return obs[0], {}

    def step(self, action):
        """One day: ``action`` is (slot, tone, channel, content), or a flat index in the flat view.
        An action outside the space raises :class:`envs.spaces.ActionError` before anything moves."""
        if self.action_view == "flat":
            multi = flat_to_multi(check_flat(action, 1))
        else:
            if np.shape(action) != (4,):
                raise ActionError(
                    f"action must have shape (4,): (slot, tone, channel, content), "
                    f"got shape {np.shape(action)}"
                )
            multi = np.asarray(action)[None, :]
        r = self.core.step(multi)
        info = {k: r.outcomes[k][0].item() for k in INFO_KEYS}
        self._last = {"action": multi[0], **info}
        return r.obs[0], float(r.reward[0]), bool(r.terminated[0]), bool(r.truncated[0]), info

    def action_masks(self) -> np.ndarray:
        """(19,) per-component masks, or (361,) in the flat view (for MaskablePPO)."""
        m = self.core.joint_masks() if self.action_view == "flat" else self.core.action_masks()
        return m[0]

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        if not self._last:
            return f"day {self.core.day}: no action yet"
        slot, tone, channel, content = (int(x) for x in self._last["action"])
        what = (
            "no send"
            if slot == 0
            else f"{CHANNELS[channel]} {TONES[tone]} {CONTENTS[content]} at {SLOTS[slot - 1]}"
        )
        outcome = ", ".join(k for k in INFO_KEYS if self._last.get(k) and not k.startswith("cost_"))
        return f"day {self.core.day - 1}: {what} -> {outcome or 'nothing'}"
