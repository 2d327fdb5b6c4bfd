"""Log a policy's decisions in the simulator as a logged dataset (``docs/logged-data.md``).

The logging policy is the given policy with ε-exploration over the actions the guardrails allow:
each day, with probability ε, a client gets an action drawn uniformly from its allowed joint
actions, otherwise the policy's own action. The propensity of the logged action is then exact:
``(1 − ε)·[a = policy's action] + ε / (allowed actions)``. The policy must act within the masks
(every heuristic, bandit and masked agent does); one that asks for a blocked send is refused, since
the guardrails would change its action and the propensity would be wrong.

    python evaluate.py mode=record record.policy=segment_rules record.epsilon=0.2 eval.num_clients=5000 eval.horizon_days=30
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from agents.base import Policy
from envs.config import RewardConfig, Setup
from envs.core import CadenceCore
from envs.features import FEATURE_NAMES
from envs.reward import reward
from envs.spaces import JOINT_ACTIONS, multi_to_flat
from evaluation.logs import ACTIONS, MAX_DAY
from evaluation.rollout import begin_rollout
from simulate.world import OUTCOMES

LOG_CLIENT_OFFSET = 1 << 50
"""logged clients' ids: never those of training (from 0), evaluation (2**48) or realism (2**52)"""


def counterfactual_column(policy_name: str) -> str:
    """The column :func:`log_policy` writes with a target's counterfactual reward: the day's
    reward had that policy's own action been taken, same client and luck."""
    return f"counterfactual_{policy_name}"


UNIFORM_COUNTERFACTUAL = counterfactual_column("uniform")
"""the day's reward under an action drawn uniformly from the allowed ones (ε-soft targets)"""


def uniform_draw(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A flat action drawn uniformly from each row's allowed ones: the ``pick``-th allowed
    action of each row (in flat order), read from the positions of all allowed actions at once."""
    allowed = masks.sum(axis=1)
    if not allowed.all():  # never: not sending is always allowed
        raise ValueError(f"row {int(np.argmin(allowed))} of the masks allows no action")
    pick = np.minimum((rng.random(len(masks)) * allowed).astype(np.int64), allowed - 1)
    where = np.flatnonzero(masks)  # row-major: each row's allowed actions, in order
    first = np.cumsum(allowed) - allowed  # where each row's run of allowed actions starts
    return where[first + pick] - np.arange(len(masks)) * masks.shape[1]


def _step_copy(core: CadenceCore, actions: np.ndarray, weights) -> np.ndarray:
    """The day's reward had ``actions`` been taken: a copy of the world steps, the world does not."""
    return reward(copy.deepcopy(core).step(actions).outcomes, weights)


def log_policy(
    policy: Policy,
    setup: Setup,
    num_clients: int,
    days: int,
    seed: int,
    epsilon: float = 0.1,
    progress: bool = False,
    counterfactual: Sequence[Policy] = (),
    yardstick: RewardConfig | None = None,
) -> pl.DataFrame:
    """One row per living client-day of ``policy`` with ε-exploration, in the logged schema.

    The reward column uses ``yardstick``'s weights (the run's ``eval.reward``; default the
    balanced reward, what evaluation scores). Same arguments, same
    frame. A churned client's later days are not logged (the client is gone). ``days`` is at most
    ``MAX_DAY + 1`` (days 0..:data:`evaluation.logs.MAX_DAY`). Every logged send is one the
    guardrails of ``setup`` allow, so the frame passes
    ``evaluation.logs.validate(frame, guardrails=setup.env.guardrails)``.

    ``counterfactual``: target policies whose one-step truth the log should carry. For each, a
    column ``counterfactual_<name>`` holds the day's reward had the target's own action been taken
    instead, for the same client in the same state with the same luck (the world is copied and
    stepped once more); ``counterfactual_uniform`` holds it for an action drawn uniformly from the
    allowed ones (for ε-soft targets). The logged days themselves are unchanged by them.
    """
    if not 1 <= days <= MAX_DAY + 1:
        raise ValueError(
            f"days must lie in 1..{MAX_DAY + 1} (a log's days run 0..{MAX_DAY}, "
            f"evaluation.logs.MAX_DAY), got {days}"
        )
    if not 0.0 < epsilon <= 1.0:
        raise ValueError(
            f"epsilon must lie in (0, 1]; a deterministic log (epsilon 0) cannot be "
            f"evaluated off-policy, got {epsilon}"
        )
    core, obs = begin_rollout(policy, setup, num_clients, seed, LOG_CLIENT_OFFSET)
    rng = np.random.default_rng([seed, 0x10C])
    what_if_rng = np.random.default_rng([seed, 0xCF])  # its own stream: the log is unchanged
    weights = (yardstick or RewardConfig()).weights()
    ids = core.world.client_id.astype(np.int64)
    rows = np.arange(num_clients)
    gone = np.zeros(num_clients, dtype=bool)
    columns: dict[str, list[np.ndarray]] = {}
    for _ in tqdm(range(days), desc="logging", unit="day", disable=None if progress else True):
        day = core.day
        masks = core.joint_masks()
        own = multi_to_flat(np.asarray(policy.act(obs, masks), dtype=np.int64))
        blocked = ~masks[rows, own] & ~gone
        if blocked.any():
            row = int(np.flatnonzero(blocked)[0])
            raise ValueError(
                f"{policy.name} asked for a blocked action for client row {row} on day {day}; "
                "only a policy that acts within the guardrail masks can be logged"
            )
        allowed = masks.sum(axis=1)
        uniform = uniform_draw(masks, rng)
        chosen = np.where(rng.random(num_clients) < epsilon, uniform, own)
        pscore = (1.0 - epsilon) * (chosen == own) + epsilon / allowed
        actions = JOINT_ACTIONS[chosen]
        what_if = {}
        if counterfactual:
            draw = uniform_draw(masks, what_if_rng)
            what_if["uniform"] = _step_copy(core, JOINT_ACTIONS[draw], weights)
            for target in counterfactual:
                target_own = np.asarray(target.act(obs, masks), dtype=np.int64)
                what_if[target.name] = _step_copy(core, target_own, weights)
        r = core.step(actions)
        live = ~gone
        frame = {"client_id": ids[live], "day": np.full(int(live.sum()), day, dtype=np.int64)}
        seen, done = obs[live], actions[live]
        frame |= {name: seen[:, i] for i, name in enumerate(FEATURE_NAMES)}
        frame |= {c: done[:, i] for i, c in enumerate(ACTIONS)}
        frame["pscore"] = pscore[live]
        frame |= {k: r.outcomes[k][live] for k in OUTCOMES}
        frame["reward"] = reward(r.outcomes, weights)[live]
        frame["seed"] = np.full(int(live.sum()), seed, dtype=np.int64)  # lets truth be rerun
        frame |= {counterfactual_column(k): v[live] for k, v in what_if.items()}
        for name, values in frame.items():
            columns.setdefault(name, []).append(values)
        gone |= r.outcomes["churned"]
        obs = r.obs
    return pl.DataFrame({name: np.concatenate(parts) for name, parts in columns.items()})
