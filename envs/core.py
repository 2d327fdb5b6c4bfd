"""One implementation behind the three env faces: world + guardrails + observation + reward.

Each row is a client slot. When a client churns (``terminated``) or reaches the horizon
(``truncated``) a new client takes the slot at once, unless ``autoreset`` is off.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs import consent, features, masks
from envs.config import Setup
from envs.reward import costs, reward
from envs.spaces import check_actions, multi_to_flat
from simulate.world import World

GENERATION_SHIFT = np.uint64(32)
"""a slot's k-th client has id ``offset + (k << 32) + slot``: independent of the batch size"""


ALIASES = {"num_clients": "num_envs", "horizon": "horizon_days", "n_envs": "num_envs"}
"""names users reach for, and the argument each face calls it"""


def refuse_unknown(face: str, extra: dict[str, Any], known: Iterable[str]) -> None:
    """Raise ``TypeError`` naming every keyword argument ``face`` does not take (with the
    closest known name), instead of silently running on defaults."""
    if not extra:
        return
    known = sorted(known)
    hints = []
    for name in sorted(extra):
        guess = ALIASES.get(name) if ALIASES.get(name) in known else None
        guess = guess or next(iter(difflib.get_close_matches(name, known, n=1)), None)
        hints.append(f"{name!r}" + (f" (did you mean {guess!r}?)" if guess else ""))
    raise TypeError(f"{face} got unknown keyword argument(s) {', '.join(hints)}; it takes {known}")


@dataclass
class StepResult:
    """What one day returns for every slot."""

    obs: np.ndarray
    """(N, OBS_DIM) next observations (a new client's first one where a slot was reset)"""
    reward: np.ndarray
    """(N,) float32 weighted outcome counts"""
    terminated: np.ndarray
    """(N,) the client churned"""
    truncated: np.ndarray
    """(N,) the client reached the horizon"""
    outcomes: dict[str, np.ndarray]
    """per-client outcome arrays: world outcomes, ``violation``, ``cost_churn``, ``cost_anxiety``"""
    final_obs: np.ndarray | None
    """(N, OBS_DIM) last observation of each finished client (rows where done), else None"""
    episode_return: np.ndarray
    """(N,) return of the episode that just ended (valid where done)"""
    episode_length: np.ndarray
    """(N,) length in days of the episode that just ended (valid where done)"""


class CadenceCore:
    """The batched environment logic.

    Args:
        setup: the validated configuration.
        num_clients: slots simulated at once (defaults to ``setup.env.num_clients``).
        autoreset: replace finished clients in the same step.
        client_id_offset: added to every client id; evaluation uses it for clients training never saw.
    """

    def __init__(
        self,
        setup: Setup,
        num_clients: int | None = None,
        autoreset: bool = True,
        client_id_offset: int = 0,
    ) -> None:
        self.setup = setup
        self.n = int(num_clients if num_clients is not None else setup.env.num_clients)
        if self.n < 1:
            raise ValueError(f"num_clients must be >= 1, got {self.n}")
        self.autoreset = autoreset
        self.offset = np.uint64(client_id_offset)
        self.horizon = int(setup.env.horizon_days)
        self.rules = masks.MaskRules.from_config(setup.env.guardrails)
        self.reward_weights = setup.reward.weights()
        self.slots = np.arange(self.n, dtype=np.uint64)
        self.world: World | None = None
        self.seed = int(setup.seed)
        self.day = 0

    def _ids(self) -> np.ndarray:
        return self.offset + (self.generation << GENERATION_SHIFT) + self.slots

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Fresh clients in every slot at calendar day 0; returns (N, OBS_DIM) observations."""
        if seed is not None:
            self.seed = int(seed)
        self.day = 0
        self.generation = np.zeros(self.n, dtype=np.uint64)
        self.age = np.zeros(self.n, dtype=np.int64)
        self.episode_return = np.zeros(self.n)
        s = self.setup
        self.world = World(s.population, s.env.response, s.scenario, self.seed, self._ids())
        self._forget()
        return self.observe()

    def _forget(self) -> None:
        """Drop what was read from the world's records (the world moved)."""
        self._counts: np.ndarray | None = None
        self._states: np.ndarray | None = None

    def _channel_counts(self) -> np.ndarray:
        """:func:`envs.features.channel_counts` of the world, read once per state of it."""
        if self._counts is None:
            self._counts = features.channel_counts(self.world)
        return self._counts

    def _row_states(self) -> np.ndarray:
        """:func:`envs.masks.row_states` of every slot, read once per state of the world."""
        if self._states is None:
            self._states = masks.row_states(self.rules, *self.mask_inputs())
        return self._states

    def next_clients(self, rows: np.ndarray) -> None:
        """Put each slot's next client in ``rows`` (the calendar goes on)."""
        self.generation[rows] += np.uint64(1)
        self.world.replace(rows, self._ids()[rows], self.day)
        self.age[rows] = 0
        self.episode_return[rows] = 0.0
        self._forget()

    def observe(self) -> np.ndarray:
        """(N, OBS_DIM) float32 observations for today's decision."""
        stress = self.world.schedule.effects(self.day).stress
        return consent.observe(self.world, self.day, stress, counts=self._channel_counts())

    def mask_inputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(opted_out, sends per channel in the last 7 days, consent tier) of every slot.

        Read from the world once per day (the step and the resets move it): a change made to
        ``self.world`` by hand between steps is not seen until the next step."""
        w = self.world
        return w.opted_out, self._channel_counts(), w.traits.consent_tier

    def action_masks(self) -> np.ndarray:
        """(N, 19) per-component masks (see :func:`envs.masks.component_masks`)."""
        return masks.state_tables(self.rules).component[self._row_states()]

    def joint_masks(self) -> np.ndarray:
        """(N, 361) exact masks over the flat actions."""
        return masks.state_tables(self.rules).joint[self._row_states()]

    def step(self, actions: np.ndarray) -> StepResult:
        """Advance one day with (N, 4) MultiDiscrete actions.

        Actions are checked before anything moves (:func:`envs.spaces.check_actions`: shape,
        integer values, each component in range); an invalid batch raises
        :class:`envs.spaces.ActionError` and leaves every client as it was. A valid send the
        guardrails forbid becomes no-send and counts in ``violation``.
        """
        if self.world is None:
            raise RuntimeError("call reset() before step()")
        actions = check_actions(actions, self.n)
        # the joint mask's entry of each action is masks.is_allowed's answer
        allowed = masks.state_tables(self.rules).joint[self._row_states(), multi_to_flat(actions)]
        violation = (actions[:, 0] > 0) & ~allowed
        slot = np.where(allowed, actions[:, 0], 0)
        # check_actions held every component of `actions` to its range (int64, shape (N,)), and
        # `slot` is a component or 0: the world need not check them again
        out = self.world.step_checked(self.day, slot, actions[:, 1], actions[:, 2], actions[:, 3])
        self._forget()
        out["violation"] = violation
        today = reward(out, self.reward_weights)
        out.update(costs(out))
        self.day += 1
        self.age += 1
        self.episode_return += today
        terminated = out["churned"].copy()
        truncated = (self.age >= self.horizon) & ~terminated
        done = terminated | truncated
        final_obs = None
        ep_return, ep_length = self.episode_return.copy(), self.age.copy()
        obs = self.observe()
        if done.any():
            final_obs = obs
            if self.autoreset:
                rows = np.flatnonzero(done)
                counts = self._counts
                self.next_clients(rows)
                # only the new clients' rows change: the others' observations and send counts
                # are those just read
                new_counts = features.counts_in(self.world.channel_log[rows])
                stress = self.world.schedule.effects(self.day).stress
                obs = final_obs.copy()
                obs[rows] = consent.observe(
                    self.world, self.day, stress, counts=new_counts, rows=rows
                )
                self._counts = counts.copy()
                self._counts[rows] = new_counts
            else:
                obs = final_obs.copy()
        return StepResult(
            obs,
            today.astype(np.float32),
            terminated,
            truncated,
            out,
            final_obs,
            ep_return,
            ep_length,
        )
