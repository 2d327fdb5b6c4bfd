"""SB3 agents (PPO, A2C, DQN on the flat view, MaskablePPO, PPO-Lagrangian, RecurrentPPO) on the
batched VecEnv.

Observations are divided by their upper bounds (``envs.features.OBS_HIGH``) before the
network sees them; the same division is part of the exported graph. ``recurrent_ppo`` keeps an
LSTM state per client from day to day (reset by ``start_rollout``); it is not exportable, since
the serving runtime decides each request from its features alone. Acting for evaluation
and export is deterministic and within masks: send when the allowed sends together are likelier
than no-send, then the likeliest allowed send (``agents.base.best_factored``); DQN takes the best
allowed of its 361 Q-values.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces as gym_spaces
from sb3_contrib import MaskablePPO, RecurrentPPO
from sb3_contrib.common.maskable.buffers import MaskableRolloutBuffer
from sb3_contrib.common.maskable.distributions import MaskableDistribution
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.utils import explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecNormalize

from agents.base import ExportKind, Policy, best_factored, in_chunks
from agents.config import AgentConfig
from agents.training import (  # noqa: F401 (the training options' names, as before)
    TORCH_THREADS,
    TRAIN_ENVS,
    UPDATE_THREADS,
    TrainingOptions,
    check_device,
    cpus_available,
    current_options,
    default_train_envs,
    training_options,
)
from envs.config import Setup
from envs.features import OBS_DIM, OBS_HIGH
from envs.sb3_vec_env import CadenceVecEnv, StepInfos
from envs.spaces import JOINT_ACTIONS

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {
    "ppo": PPO,
    "a2c": A2C,
    "dqn": DQN,
    "maskable_ppo": MaskablePPO,
    "ppo_lagrangian": PPO,
    "recurrent_ppo": RecurrentPPO,
    "propensity_distilled": PPO,  # the propensity agent taught to a network (agents/propensity.py)
}
OBS_SCALE = 1.0 / OBS_HIGH


MASKED_LOGIT = -1e8
"""the logit of an option the mask forbids (sb3-contrib's value: probability 0, finite)"""
PADDING_LOGIT = -1e9
"""the logit of a padding slot (components with fewer options than the widest): below
:data:`MASKED_LOGIT`, so a component whose options were all forbidden stays uniform over them"""


_LANES = 64
"""columns :func:`log_softmax_components` pads to: a multiple of every CPU vector width torch
uses (8 or 16 floats), so no column falls in a kernel's scalar remainder"""


def log_softmax_components(logits: torch.Tensor) -> torch.Tensor:
    """``torch.log_softmax(logits, dim=-1)`` of (N, K, W) logits, to the last bit, forward and
    backward, several times faster on CPU (forward + backward at 4,096 x 4 x 7: 1.32 -> 0.38 ms
    on one thread of a 2-core x86_64 machine).

    torch's kernel for the last dimension walks row by row, which for rows of W = 7 options costs
    ~25 ns an element; its kernel for another dimension runs down columns a CPU vector at a time.
    Both take the maximum, sum ``exp(x - max)`` in option order with the same vector ``exp``,
    take the same vector ``log`` and return ``(x - max) - log(sum)``, so the options are laid out
    as (W, N*K) rows, padded with zero columns to a multiple of :data:`_LANES` (a remainder of
    columns would take a scalar ``exp``, with other bits), reduced over dim 0 and laid back as a
    contiguous (N, K, W). ``tests/test_sb3_fast.py`` holds the values and gradients equal to
    ``torch.log_softmax(logits, -1)`` bit for bit across sizes, scales, masked and padded options
    and thread counts; on CUDA torch's own call is kept."""
    if logits.device.type != "cpu":
        return torch.log_softmax(logits, dim=-1)
    n, k, w = logits.shape
    cols = n * k
    pad = -cols % _LANES
    rows = logits.permute(2, 0, 1).reshape(w, cols)
    if pad:
        rows = torch.cat([rows, rows.new_zeros(w, pad)], dim=1)
    out = torch.log_softmax(rows, dim=0)
    if pad:
        out = out[:, :cols]
    return out.reshape(w, n, k).permute(1, 2, 0).contiguous()


class MaskedMultiCategorical(MaskableDistribution):
    """A masked MultiDiscrete distribution computed once per call on one padded tensor.

    The flat logits (N, sum(dims)) are laid out as (N, K, W) (K components, W the widest, padded
    with :data:`PADDING_LOGIT`); forbidden options get :data:`MASKED_LOGIT`, and one
    ``log_softmax`` (:func:`log_softmax_components`) gives every component's log-probabilities.
    Sampling, the mode, log-probs and entropy read that one tensor: no per-component
    ``Categorical`` is built. Same probabilities, log-probs and entropy as sb3-contrib's
    ``MaskableMultiCategoricalDistribution``.
    """

    def __init__(self, action_dims: list[int]) -> None:
        super().__init__()
        self.action_dims = [int(d) for d in action_dims]
        k, w = len(self.action_dims), max(self.action_dims)
        starts = np.concatenate([[0], np.cumsum(self.action_dims)[:-1]])
        real = np.arange(w)[None, :] < np.array(self.action_dims)[:, None]
        index = np.where(real, starts[:, None] + np.arange(w)[None, :], 0)
        self._index = torch.as_tensor(index.reshape(-1), dtype=torch.long)
        self._real = torch.as_tensor(real)
        self._fill = torch.where(self._real, MASKED_LOGIT, PADDING_LOGIT).float()
        self._shape = (k, w)
        self._raw: torch.Tensor | None = None
        self._masks: torch.Tensor | None = None
        self._log_p: torch.Tensor | None = None

    def proba_distribution_net(self, latent_dim: int) -> torch.nn.Module:
        """The action head: one linear layer to the flat logits (N, sum(dims))."""
        return torch.nn.Linear(latent_dim, sum(self.action_dims))

    def proba_distribution(self, action_logits: torch.Tensor) -> MaskedMultiCategorical:
        self._raw = action_logits.view(-1, sum(self.action_dims))
        self._masks, self._log_p = None, None
        return self

    def apply_masking(self, masks: Any) -> None:
        """``masks`` (N, sum(dims)), true where allowed (bool or 0/1, tensor or array), or a
        bool (N, K, W) tensor already laid out by :meth:`padded_masks`; None lifts the masks."""
        if masks is None:
            self._masks = None
        else:
            t = torch.as_tensor(masks)
            if t.dtype == torch.bool and t.dim() == 3:
                self._masks = t.to(self._raw.device)
            else:
                self._masks = self.padded_masks(t.to(self._raw.device))
        self._log_p = None

    def padded_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """(N, K, W) bool: true where a real option is allowed, from ``masks`` (N, sum(dims))
        (bool or 0/1); padding slots are false."""
        if masks.dtype != torch.bool:
            masks = masks != 0
        masks = masks.view(-1, sum(self.action_dims))
        index, real = self._index.to(masks.device), self._real.to(masks.device)
        return masks.index_select(1, index).view(len(masks), *self._shape) & real

    @property
    def log_probs(self) -> torch.Tensor:
        """(N, K, W) log-probabilities per component (padding slots about -1e9)."""
        if self._log_p is None:
            if self._raw is None:
                raise RuntimeError("proba_distribution(action_logits) must come first")
            n = self._raw.shape[0]
            index, real = self._index.to(self._raw.device), self._real.to(self._raw.device)
            padded = self._raw.index_select(1, index).view(n, *self._shape)
            allowed = real if self._masks is None else self._masks
            logits = torch.where(allowed, padded, self._fill.to(self._raw.device))
            self._log_p = log_softmax_components(logits)
        return self._log_p

    def component_log_probs(self) -> torch.Tensor:
        """(N, sum(dims)) per-component log-probabilities in the flat layout (the scores)."""
        n = self.log_probs.shape[0]
        return self.log_probs.view(n, -1)[:, self._real.reshape(-1).to(self.log_probs.device)]

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        a = actions.view(-1, len(self.action_dims)).long().unsqueeze(-1)
        return self.log_probs.gather(2, a).squeeze(-1).sum(dim=1)

    def entropy(self) -> torch.Tensor:
        log_p = self.log_probs  # forbidden and padding options: p = 0 and finite log p
        return -(log_p.exp() * log_p).sum(dim=(1, 2))

    def sample(self) -> torch.Tensor:
        p = self.log_probs.exp()
        n, k, w = p.shape
        return torch.multinomial(p.view(n * k, w), 1, replacement=True).view(n, k)

    def mode(self) -> torch.Tensor:
        return self.log_probs.argmax(dim=-1)

    def actions_from_params(
        self, action_logits: torch.Tensor, deterministic: bool = False
    ) -> torch.Tensor:
        self.proba_distribution(action_logits)
        return self.get_actions(deterministic=deterministic)

    def log_prob_from_params(
        self, action_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        actions = self.actions_from_params(action_logits)
        return actions, self.log_prob(actions)


class FastMaskablePolicy(MaskableActorCriticPolicy):
    """sb3-contrib's masked actor-critic with :class:`MaskedMultiCategorical` as its action
    distribution (same networks, same action head, same saved parameters)."""

    def _build(self, lr_schedule: Any) -> None:
        if not isinstance(self.action_space, gym_spaces.MultiDiscrete):
            raise TypeError(
                f"FastMaskablePolicy is for MultiDiscrete actions, got {self.action_space}"
            )
        self.action_dist = MaskedMultiCategorical(list(self.action_space.nvec))
        super()._build(lr_schedule)


def _mask_source(env: VecEnv) -> CadenceVecEnv:
    """The :class:`CadenceVecEnv` under ``env``'s wrappers (its masks are the whole batch's)."""
    for layer in _wrappers(env):
        if isinstance(layer, CadenceVecEnv):
            return layer
    raise TypeError(f"{type(env).__name__} has no CadenceVecEnv underneath to read masks from")


_BUFFER_FIELDS = ("observations", "actions", "values", "log_probs", "advantages", "returns")
"""the rollout buffer's arrays a minibatch reads, beside the masks"""


class FastMaskablePPO(MaskablePPO):
    """MaskablePPO whose rollouts read the batch's masks as one array (no per-slot
    ``env_method``), keep them as one tensor from the env to the distribution, and bootstrap
    every truncated episode of a step in one batched value call. The update (:meth:`train`) is
    MaskablePPO's, computed from the rollout as tensors made once per rollout (minibatches
    gathered by ``index_select``, the masks laid out for the distribution once), with the
    logged losses read after the last minibatch: the same parameters to the last bit. About 8%
    less time per update than MaskablePPO's (188 vs 204 ms for a rollout of 16,384 client-days,
    median of 12 alternating calls in one process), about 5% of the whole training."""

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: MaskableRolloutBuffer,
        n_rollout_steps: int,
        use_masking: bool = True,
    ) -> bool:
        assert self._last_obs is not None, "No previous observation was provided"
        source = _mask_source(env) if use_masking else None
        self.policy.set_training_mode(False)
        rollout_buffer.reset()
        callback.on_rollout_start()
        n_steps = 0
        dones = self._last_episode_starts
        new_obs = self._last_obs
        while n_steps < n_rollout_steps:
            masks_np = source.action_masks() if source is not None else None
            with torch.no_grad():
                obs_tensor = obs_as_tensor(self._last_obs, self.device)
                masks = None
                if masks_np is not None:
                    masks = torch.from_numpy(masks_np).to(self.device)
                actions, values, log_probs = self.policy(obs_tensor, action_masks=masks)
            actions = actions.cpu().numpy()
            new_obs, rewards, dones, infos = env.step(actions)
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            for i in np.flatnonzero(dones):  # only finished slots carry an episode record
                episode = infos[i].get("episode")
                if episode is not None:
                    self.ep_info_buffer.extend([episode])
            n_steps += 1
            self._bootstrap_truncated(rewards, dones, infos)
            rollout_buffer.add(
                self._last_obs,
                actions,
                rewards,
                self._last_episode_starts,
                values,
                log_probs,
                action_masks=masks_np,
            )
            self._last_obs = new_obs
            self._last_episode_starts = dones
        with torch.no_grad():
            values = self.policy.predict_values(obs_as_tensor(new_obs, self.device))
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        callback.on_rollout_end()
        return True

    def _rollout_tensors(self) -> dict[str, torch.Tensor]:
        """The rollout buffer's arrays flattened as sb3's ``RolloutBuffer.get`` flattens them
        (the buffer keeps them so, as after sb3's update), as tensors on the model's device:
        actions as int64, values and the like as vectors, the masks laid out (N, K, W) for
        :class:`MaskedMultiCategorical`."""
        buffer = self.rollout_buffer
        if not buffer.generator_ready:
            for name in (*_BUFFER_FIELDS, "action_masks"):
                buffer.__dict__[name] = buffer.swap_and_flatten(buffer.__dict__[name])
            buffer.generator_ready = True
        out = {
            name: torch.as_tensor(np.ascontiguousarray(buffer.__dict__[name]), device=self.device)
            for name in _BUFFER_FIELDS
        }
        for name in ("values", "log_probs", "advantages", "returns"):
            out[name] = out[name].flatten()
        out["actions"] = out["actions"].long()
        masks = torch.as_tensor(buffer.action_masks, device=self.device)
        out["action_masks"] = self.policy.action_dist.padded_masks(masks)
        return out

    def train(self) -> None:
        """MaskablePPO's update (``sb3_contrib.ppo_mask.MaskablePPO.train``): the same
        minibatches (one ``np.random.permutation`` per epoch), the same losses in the same order,
        the same optimiser steps and logged values. Models whose distribution is not a
        :class:`MaskedMultiCategorical` take MaskablePPO's own. Either runs on
        ``TrainingOptions.update_threads`` torch threads (:data:`UPDATE_THREADS`)."""
        before = torch.get_num_threads()
        torch.set_num_threads(max(1, min(current_options().update_threads, cpus_available())))
        try:
            self._train()
        finally:
            torch.set_num_threads(before)

    def _train(self) -> None:
        buffer = self.rollout_buffer
        if not isinstance(self.policy.action_dist, MaskedMultiCategorical) or not isinstance(
            buffer, MaskableRolloutBuffer
        ):
            return super().train()
        assert buffer.full, ""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)
        clip_range_vf = None
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)
        total = buffer.buffer_size * buffer.n_envs
        data: dict[str, torch.Tensor] | None = None
        entropy_losses: list[torch.Tensor] = []
        pg_losses: list[torch.Tensor] = []
        value_losses: list[torch.Tensor] = []
        clip_fractions: list[torch.Tensor] = []
        approx_kl_divs: list[torch.Tensor] = []
        continue_training = True
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            # the global numpy generator, as RolloutBuffer.get draws each epoch's order
            order = np.random.permutation(total)  # noqa: NPY002
            if data is None:
                data = self._rollout_tensors()
            order_t = torch.from_numpy(order).to(self.device)
            for start in range(0, total, self.batch_size):
                rows = order_t[start : start + self.batch_size]
                advantages = data["advantages"].index_select(0, rows)
                old_log_prob = data["log_probs"].index_select(0, rows)
                values, log_prob, entropy = self.policy.evaluate_actions(
                    data["observations"].index_select(0, rows),
                    data["actions"].index_select(0, rows),
                    action_masks=data["action_masks"].index_select(0, rows),
                )
                values = values.flatten()
                if self.normalize_advantage:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
                ratio = torch.exp(log_prob - old_log_prob)
                policy_loss_1 = advantages * ratio
                policy_loss_2 = advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
                policy_loss = -torch.min(policy_loss_1, policy_loss_2).mean()
                pg_losses.append(policy_loss.detach())
                with torch.no_grad():
                    clip_fractions.append(torch.mean((torch.abs(ratio - 1) > clip_range).float()))
                if clip_range_vf is None:
                    values_pred = values
                else:
                    old_values = data["values"].index_select(0, rows)
                    values_pred = old_values + torch.clamp(
                        values - old_values, -clip_range_vf, clip_range_vf
                    )
                returns = data["returns"].index_select(0, rows)
                value_loss = torch.nn.functional.mse_loss(returns, values_pred)
                value_losses.append(value_loss.detach())
                if entropy is None:
                    entropy_loss = -torch.mean(-log_prob)
                else:
                    entropy_loss = -torch.mean(entropy)
                entropy_losses.append(entropy_loss.detach())
                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
                with torch.no_grad():
                    log_ratio = log_prob - old_log_prob
                    approx_kl_divs.append(torch.mean((torch.exp(log_ratio) - 1) - log_ratio))
                if self.target_kl is not None:
                    approx_kl_div = approx_kl_divs[-1].cpu().numpy()
                    if approx_kl_div > 1.5 * self.target_kl:
                        continue_training = False
                        if self.verbose >= 1:
                            print(
                                f"Early stopping at step {epoch} due to reaching max kl: "
                                f"{approx_kl_div:.2f}"
                            )
                        break
                self.policy.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
            self._n_updates += 1
            if not continue_training:
                break
        explained_var = explained_variance(buffer.values.flatten(), buffer.returns.flatten())
        logger = self.logger
        logger.record("train/entropy_loss", np.mean([t.item() for t in entropy_losses]))
        logger.record("train/policy_gradient_loss", np.mean([t.item() for t in pg_losses]))
        logger.record("train/value_loss", np.mean([t.item() for t in value_losses]))
        logger.record("train/approx_kl", np.mean([t.cpu().numpy() for t in approx_kl_divs]))
        logger.record("train/clip_fraction", np.mean([t.item() for t in clip_fractions]))
        logger.record("train/loss", loss.item())
        logger.record("train/explained_variance", explained_var)
        logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        logger.record("train/clip_range", clip_range)
        if clip_range_vf is not None:
            logger.record("train/clip_range_vf", clip_range_vf)

    def _bootstrap_truncated(
        self, rewards: np.ndarray, dones: np.ndarray, infos: list[dict[str, Any]]
    ) -> None:
        """Add ``gamma * V(last observation)`` to the reward of every slot the horizon (not
        churn) ended this step, in one value call (SB3 makes one call per slot)."""
        rows = [
            i
            for i in np.flatnonzero(dones)
            if infos[i].get("terminal_observation") is not None
            and infos[i].get("TimeLimit.truncated", False)
        ]
        if not rows:
            return
        last = np.stack([infos[i]["terminal_observation"] for i in rows])
        with torch.no_grad():
            values = self.policy.predict_values(obs_as_tensor(last, self.device))
        rewards[rows] += self.gamma * values.cpu().numpy().reshape(-1).astype(rewards.dtype)


def algorithm(cfg: AgentConfig) -> type[BaseAlgorithm]:
    """The SB3 class that trains ``cfg``: MaskablePPO for ppo_lagrangian with action masking, as
    :class:`FastMaskablePPO` on the fast path (:class:`TrainingOptions`)."""
    if cfg.name == "ppo_lagrangian" and cfg.action_masking:
        return FastMaskablePPO if current_options().fast else MaskablePPO
    return ALGORITHMS[cfg.name]


def _saved_class_is_masked(policy_class: dict) -> bool:
    """Whether a saved policy class (SB3's serialized entry; SB3 unpickles the same bytes to
    load the model) is a masked actor-critic."""
    import base64

    import cloudpickle

    try:
        cls = cloudpickle.loads(base64.b64decode(policy_class[":serialized:"]))
    except Exception:  # an unreadable entry: SB3's own load will name it
        return False
    return isinstance(cls, type) and issubclass(cls, MaskableActorCriticPolicy)


def saved_algorithm(path: str | Path, name: str) -> type[BaseAlgorithm]:
    """The SB3 class of a saved model of agent ``name`` (a masked ppo_lagrangian is a MaskablePPO
    model: its zip names the policy's module)."""
    if name == "ppo_lagrangian":
        import json
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                policy_class = json.loads(z.read("data"))["policy_class"]
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path}: not a readable SB3 model ({err})") from err
        module = policy_class.get("__module__", "")
        if "maskable" in module:  # sb3-contrib's masked policies
            return MaskablePPO
        if module == __name__:  # FastMaskablePolicy or the asymmetric critic's (plain PPO's)
            return MaskablePPO if _saved_class_is_masked(policy_class) else ALGORITHMS[name]
    return ALGORITHMS[name]


class ScaledObs(VecEnvWrapper):
    """Divides observations (and terminal observations) by their upper bounds."""

    def reset(self) -> np.ndarray:
        return self.venv.reset() * OBS_SCALE

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        for i in np.flatnonzero(dones):
            infos[i]["terminal_observation"] = infos[i]["terminal_observation"] * OBS_SCALE
        return obs * OBS_SCALE, rewards, dones, infos


PRIVILEGED_NAMES: tuple[str, ...] = (
    "trust",
    "anxiety",
    "fatigue",
    *(f"slot_preference_{k}" for k in range(6)),
    *(f"channel_affinity_{k}" for k in range(3)),
    *(f"tone_affinity_{k}" for k in range(5)),
    "base_open",
    "susceptibility",
    "literacy",
    "weekend_affinity",
)
"""what an asymmetric critic reads beyond the observation (never the actor)"""


def privileged_features(world: Any) -> np.ndarray:
    """(N, len(PRIVILEGED_NAMES)) float32 latent state and hidden traits of every client, on
    scales near 0..1 (fatigue / 5)."""
    t, s = world.traits, world.latent
    slot = np.zeros((world.n, 6), dtype=np.float32)
    slot[np.arange(world.n), t.slot_preference] = 1.0
    return np.concatenate(
        [
            np.stack([s.trust, s.anxiety, np.minimum(s.fatigue / 5.0, 2.0)], axis=1),
            slot,
            t.channel_affinity,
            t.tone_affinity,
            np.stack([t.base_open, t.susceptibility, t.literacy, t.weekend_affinity], axis=1),
        ],
        axis=1,
    ).astype(np.float32)


class PrivilegedObs(VecEnvWrapper):
    """Appends :func:`privileged_features` to the (scaled) observation, for an asymmetric critic.
    A finished slot's terminal observation gets the privileged part of the client who replaced
    it (the world has moved on); it only bootstraps a truncated episode's last value."""

    def __init__(self, venv: VecEnv) -> None:
        low = np.concatenate([venv.observation_space.low, np.full(len(PRIVILEGED_NAMES), -10.0)])
        high = np.concatenate([venv.observation_space.high, np.full(len(PRIVILEGED_NAMES), 10.0)])
        space = gym_spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)
        super().__init__(venv, observation_space=space)
        self.world_of = next(
            layer for layer in _wrappers(venv) if isinstance(layer, CadenceVecEnv)
        ).core

    def _with(self, obs: np.ndarray) -> np.ndarray:
        return np.concatenate([obs, privileged_features(self.world_of.world)], axis=1)

    def reset(self) -> np.ndarray:
        return self._with(self.venv.reset())

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        extra = privileged_features(self.world_of.world)
        for i in np.flatnonzero(dones):
            infos[i]["terminal_observation"] = np.concatenate(
                [infos[i]["terminal_observation"], extra[i]]
            )
        return np.concatenate([obs, extra], axis=1), rewards, dones, infos


class ObservationOnly(BaseFeaturesExtractor):
    """The actor's features: the observation, with every privileged input set to 0."""

    def __init__(self, observation_space: gym_spaces.Box) -> None:
        super().__init__(observation_space, int(observation_space.shape[0]))
        keep = torch.zeros(int(observation_space.shape[0]))
        keep[:OBS_DIM] = 1.0
        self.register_buffer("keep", keep)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return obs.flatten(1) * self.keep


class AsymmetricPolicy(ActorCriticPolicy):
    """An actor-critic whose critic reads the whole (privileged) input and whose actor reads
    only the observation's features."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["share_features_extractor"] = False
        super().__init__(*args, **kwargs)
        self.pi_features_extractor = ObservationOnly(self.observation_space)


class LagrangianCosts(VecEnvWrapper):
    """Subtracts ``lambda_churn * cost_churn + lambda_anxiety * cost_anxiety`` from the reward and
    records each finished episode's costs, which :class:`LagrangeUpdate` compares with the limits."""

    def __init__(self, venv: VecEnv) -> None:
        super().__init__(venv)
        self.multipliers = {"churn": 0.0, "anxiety": 0.0}
        self._running = {k: np.zeros(venv.num_envs) for k in self.multipliers}
        self.episode_costs: dict[str, deque] = {k: deque(maxlen=2000) for k in self.multipliers}
        self.episode_returns: deque = deque(maxlen=2000)
        self._return = np.zeros(venv.num_envs)

    def reset(self) -> np.ndarray:
        return self.venv.reset()

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        if isinstance(infos, StepInfos):  # the batch's columns, without a dict per slot
            costs = {k: infos.column(f"cost_{k}").astype(np.float64) for k in self.multipliers}
        else:
            costs = {k: np.array([info[f"cost_{k}"] for info in infos]) for k in self.multipliers}
        self._return += rewards
        shaped = rewards - sum(self.multipliers[k] * costs[k] for k in costs)
        for k in costs:
            self._running[k] += costs[k]
        for i in np.flatnonzero(dones):
            for k in costs:
                self.episode_costs[k].append(self._running[k][i])
                self._running[k][i] = 0.0
            self.episode_returns.append(self._return[i])
            self._return[i] = 0.0
        return obs, shaped.astype(np.float32), dones, infos


class LagrangeUpdate(BaseCallback):
    """After each rollout: ``lambda <- max(0, lambda + lr * (mean episode cost - limit) / limit)``.

    The step is the *relative* violation, so one ``lr`` suits costs of very different sizes
    (churn is a few hundredths of a client per episode, anxious clicks a few tenths); a limit of
    0 is treated as 0.01 in the divisor. Logs costs, limits and multipliers.
    """

    def __init__(self, costs: LagrangianCosts, limits: dict[str, float], lr: float) -> None:
        super().__init__()
        self.costs, self.limits, self.lr = costs, limits, lr

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        for k, limit in self.limits.items():
            history = self.costs.episode_costs[k]
            if not history:
                continue
            mean = float(np.mean(history))
            step = self.lr * (mean - limit) / max(limit, 0.01)
            self.costs.multipliers[k] = max(0.0, self.costs.multipliers[k] + step)
            self.logger.record(f"train/cost_{k}", mean)
            self.logger.record(f"train/cost_{k}_limit", limit)
            self.logger.record(f"train/lambda_{k}", self.costs.multipliers[k])
        if self.costs.episode_returns:
            self.logger.record("train/episode_return", float(np.mean(self.costs.episode_returns)))


def _wrappers(env: VecEnv):
    while True:
        yield env
        if not isinstance(env, VecEnvWrapper):
            return
        env = env.venv


def training_state(env: VecEnv) -> dict[str, Any]:
    """What a checkpoint must keep beside the model so a resumed run goes on where it stopped:
    the Lagrange multipliers and the reward-normalisation statistics (JSON-ready)."""
    state: dict[str, Any] = {}
    for layer in _wrappers(env):
        if isinstance(layer, LagrangianCosts):
            state["multipliers"] = {k: float(v) for k, v in layer.multipliers.items()}
        if isinstance(layer, VecNormalize):
            rms = layer.ret_rms
            state["return_normalisation"] = {
                "mean": float(np.asarray(rms.mean)),
                "var": float(np.asarray(rms.var)),
                "count": float(rms.count),
            }
    return state


def restore_training_state(env: VecEnv, state: dict[str, Any]) -> None:
    """Put a checkpoint's :func:`training_state` back into a freshly built training env."""
    for layer in _wrappers(env):
        if isinstance(layer, LagrangianCosts) and "multipliers" in state:
            layer.multipliers.update({k: float(v) for k, v in state["multipliers"].items()})
        if isinstance(layer, VecNormalize) and "return_normalisation" in state:
            saved = state["return_normalisation"]
            layer.ret_rms.mean = np.float64(saved["mean"])
            layer.ret_rms.var = np.float64(saved["var"])
            layer.ret_rms.count = float(saved["count"])


def make_training_env(cfg: AgentConfig, setup: Setup, num_envs: int | None = None) -> VecEnv:
    """The batched SB3 env an agent trains on (flat view for DQN), observations scaled."""
    view = "flat" if cfg.name == "dqn" else "multi"
    env: VecEnv = ScaledObs(CadenceVecEnv(setup, num_envs=num_envs, action_view=view))
    if cfg.asymmetric_critic:
        env = PrivilegedObs(env)
    if cfg.name == "ppo_lagrangian":
        env = LagrangianCosts(env)
    if cfg.normalize_reward:
        env = VecNormalize(env, norm_obs=False, norm_reward=True, gamma=cfg.gamma)
    return env


def build_model(cfg: AgentConfig, env: VecEnv, seed: int = 0) -> BaseAlgorithm:
    """An untrained SB3 model of ``cfg.name`` on ``env``, on the device of the
    :class:`TrainingOptions` in force, with its torch threads set."""
    algo = algorithm(cfg)
    options = current_options()
    check_device(options.device)
    torch.set_num_threads(options.threads)
    policy_kwargs: dict[str, Any] = {"net_arch": list(cfg.net_arch)}
    common = {
        "learning_rate": cfg.learning_rate,
        "gamma": cfg.gamma,
        "seed": seed,
        "device": options.device,
        "verbose": 0,
        "policy_kwargs": policy_kwargs,
    }
    if cfg.name == "dqn":
        return DQN(
            "MlpPolicy",
            env,
            buffer_size=cfg.buffer_size,
            batch_size=min(cfg.batch_size, 1024),
            learning_starts=cfg.learning_starts,
            exploration_fraction=cfg.exploration_fraction,
            exploration_final_eps=cfg.exploration_final_eps,
            train_freq=1,
            gradient_steps=max(1, env.num_envs // 64),
            target_update_interval=cfg.target_update_interval,
            **common,
        )
    policy: Any = AsymmetricPolicy if cfg.asymmetric_critic else "MlpPolicy"
    if algo is FastMaskablePPO:
        policy = FastMaskablePolicy
    if cfg.name == "a2c":
        return A2C(
            policy,
            env,
            n_steps=cfg.n_steps,
            gae_lambda=cfg.gae_lambda,
            ent_coef=cfg.ent_coef,
            **common,
        )
    rollout = cfg.n_steps * env.num_envs
    batch = min(cfg.batch_size, rollout)
    if cfg.name == "recurrent_ppo":
        policy_kwargs["lstm_hidden_size"] = cfg.lstm_hidden_size
    return algo(
        "MlpLstmPolicy" if cfg.name == "recurrent_ppo" else policy,
        env,
        n_steps=cfg.n_steps,
        batch_size=batch,
        n_epochs=cfg.n_epochs,
        gae_lambda=cfg.gae_lambda,
        ent_coef=cfg.ent_coef,
        clip_range=cfg.clip_range,
        **common,
    )


class SB3Policy(Policy):
    """A trained SB3 model behind the :class:`agents.base.Policy` contract (deterministic,
    within masks). Exported (``export_kind = "network"``) as its actor network, except DQN and
    recurrent_ppo (:attr:`export_refusal` says why)."""

    def __init__(self, model: BaseAlgorithm, name: str) -> None:
        self.model = model
        self.name = name
        self._memory: tuple[torch.Tensor, torch.Tensor] | None = None
        """recurrent_ppo: each client's LSTM state after the last day it acted on"""

    @property
    def flat_view(self) -> bool:
        return isinstance(self.model, DQN)

    @property
    def recurrent(self) -> bool:
        return isinstance(self.model, RecurrentPPO)

    @property
    def history_dependent(self) -> bool:
        """recurrent_ppo decides from its memory of each client's days, which logged states do
        not hold: off-policy estimation refuses it"""
        return self.recurrent

    @property
    def export_kind(self) -> ExportKind | None:
        """``network`` for the on-policy agents with per-component logits; None for DQN (361
        joint Q-values) and recurrent_ppo (a memory per client)."""
        return None if self.recurrent or self.flat_view else "network"

    @property
    def export_refusal(self) -> str:
        if self.recurrent:
            return (
                "recurrent_ppo carries an LSTM memory per client from day to day; the serving "
                "runtime decides each request from its features alone, so it has no stateless "
                "ONNX form (export ppo_lagrangian, ppo, a2c or maskable_ppo instead)"
            )
        if self.flat_view:
            return (
                "DQN scores the 361 joint actions; its Q-values do not factor into the 19 "
                "per-component scores the export contract gives"
            )
        return super().export_refusal

    def start_rollout(self) -> None:
        """Forget every client's memory (recurrent_ppo): the next act() is each client's first day."""
        self._memory = None

    def _recurrent_distribution(self, x: torch.Tensor, remember: bool):
        """The distribution of a recurrent policy for rows ``x``: from each client's memory when
        the rows are the clients it has been acting for, from a fresh one otherwise."""
        n = len(x)
        fresh = self._memory is None or self._memory[0].shape[1] != n
        if fresh:
            size = self.model.policy.lstm_actor.hidden_size
            layers = self.model.policy.lstm_actor.num_layers
            memory = (
                torch.zeros(layers, n, size, device=x.device),
                torch.zeros(layers, n, size, device=x.device),
            )
        else:
            memory = self._memory
        starts = torch.full((n,), 1.0 if fresh else 0.0, device=x.device)
        dist, after = self.model.policy.get_distribution(x, memory, starts)
        if remember:
            self._memory = after
        return dist

    def scores(self, obs: np.ndarray, remember: bool = False) -> np.ndarray:
        """Per-component log-probabilities (N, 19), or Q-values (N, 361) for DQN, from raw
        observations. ``remember`` (recurrent_ppo): this is a day the clients live through, so
        their memories move on."""
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32) * OBS_SCALE.astype(np.float32))
        width = int(self.model.observation_space.shape[0])
        if width > x.shape[1]:  # an asymmetric critic's privileged inputs: the actor ignores them
            x = torch.cat([x, torch.zeros(len(x), width - x.shape[1])], dim=1)
        x = x.to(self.model.device)  # a policy trained with trainer.device=cuda scores there
        with torch.no_grad():
            if self.flat_view:
                return self.model.q_net(x).cpu().numpy()
            if self.recurrent:
                dist = self._recurrent_distribution(x, remember)
            else:
                dist = self.model.policy.get_distribution(x)
            if isinstance(dist, MaskedMultiCategorical):
                return dist.component_log_probs().cpu().numpy()
            parts = getattr(dist, "distributions", None) or dist.distribution  # maskable vs plain
            return torch.cat([d.logits for d in parts], dim=1).cpu().numpy()

    def act(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        if self.flat_view:  # DQN: the best allowed of the 361 Q-values
            return in_chunks(
                lambda o, m: JOINT_ACTIONS[np.where(m, self.scores(o), -np.inf).argmax(axis=1)],
                obs,
                masks,
            )
        if self.recurrent:  # one pass: the memories are the whole population's
            return best_factored(
                self.scores(obs, remember=True).astype(np.float64), masks, "log_probs"
            )
        return in_chunks(
            lambda o, m: best_factored(self.scores(o).astype(np.float64), m, "log_probs"),
            obs,
            masks,
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path).with_suffix(".zip")
        self.model.save(path)
        return path

    @classmethod
    def load(cls, path: str | Path, name: str) -> SB3Policy:
        algo = saved_algorithm(Path(path), name)
        return cls(algo.load(Path(path), device="cpu"), name)
