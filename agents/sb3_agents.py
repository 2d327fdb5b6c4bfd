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
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecNormalize

from agents.base import ExportKind, Policy, best_factored, in_chunks
from agents.config import AgentConfig
from envs.config import Setup
from envs.features import OBS_DIM, OBS_HIGH
from envs.sb3_vec_env import CadenceVecEnv
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


def algorithm(cfg: AgentConfig) -> type[BaseAlgorithm]:
    """The SB3 class that trains ``cfg``: MaskablePPO for ppo_lagrangian with action masking."""
    if cfg.name == "ppo_lagrangian" and cfg.action_masking:
        return MaskablePPO
    return ALGORITHMS[cfg.name]


def saved_algorithm(path: str | Path, name: str) -> type[BaseAlgorithm]:
    """The SB3 class of a saved model of agent ``name`` (a masked ppo_lagrangian is a MaskablePPO
    model: its zip names the policy's module)."""
    if name == "ppo_lagrangian":
        import json
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                module = json.loads(z.read("data"))["policy_class"].get("__module__", "")
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path}: not a readable SB3 model ({err})") from err
        if "maskable" in module:
            return MaskablePPO
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
    """An untrained SB3 model of ``cfg.name`` on ``env``."""
    algo = algorithm(cfg)
    policy_kwargs: dict[str, Any] = {"net_arch": list(cfg.net_arch)}
    common = {
        "learning_rate": cfg.learning_rate,
        "gamma": cfg.gamma,
        "seed": seed,
        "device": "cpu",
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
    policy = AsymmetricPolicy if cfg.asymmetric_critic else "MlpPolicy"
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
            memory = (torch.zeros(layers, n, size), torch.zeros(layers, n, size))
        else:
            memory = self._memory
        starts = torch.full((n,), 1.0 if fresh else 0.0)
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
        with torch.no_grad():
            if self.flat_view:
                return self.model.q_net(x).numpy()
            if self.recurrent:
                dist = self._recurrent_distribution(x, remember)
            else:
                dist = self.model.policy.get_distribution(x)
            parts = getattr(dist, "distributions", None) or dist.distribution  # maskable vs plain
            return torch.cat([d.logits for d in parts], dim=1).numpy()

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
