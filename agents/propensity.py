"""A model-based agent in the spirit of the propensity models firms already run.

Response models, one logistic regression per outcome, are fitted to what the firm sees: the
observation (consent-gated, the send log included) and the action, and the day's outcomes. Each
model is bilinear, ``logit = context(obs) @ theta @ action_features(a)``, so every pairing of a
client feature with an action component has its own weight (the declared contact time with the
send slot, a channel's open average with the channel, days since a content with that content,
market stress with the tone). The outcomes and the rows each is fitted on:

- ``opened`` (messages delivered), ``calm_click`` and ``anxious_click`` (opened messages);
- ``harmful``, ``unsubscribed``, ``complaint`` (messages delivered);
- ``converted`` and ``churned`` (every client-day, sent or not: a message's effect is the
  difference from not sending).

A message is scored one step ahead as the oracle scores today's part, with the balanced reward's
weights: calm and anxious clicks, the conversions it adds over not sending, harm, unsubscribes,
complaints, the message's own cost, and the change of the day's churn risk held for
``lookahead_days`` (the oracle's horizon). It sends the best allowed message when that beats not
sending by more than ``send_threshold``: the allowance for what a one-day model cannot see (a
message's fatigue tomorrow).

Data come from simulation on training clients: a first round explores (a random allowed message
on about half the days), later rounds follow the fitted models with ``explore`` of random
messages, and the models are refitted on everything. The agent reads only observations, masks
and outcomes; :func:`distil` teaches its choices to an exportable network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from agents.base import Policy
from agents.config import AgentConfig
from envs.config import Setup
from envs.core import CadenceCore
from envs.features import I_RECENCY, I_SINCE_CHANNEL, I_URGENT_7D, OBS_DIM, OBS_HIGH
from envs.reward import RewardConfig
from envs.spaces import JOINT_ACTIONS, multi_to_flat
from simulate.labels import N_CHANNELS, N_CONTENTS, N_JOINT_ACTIONS, N_SLOTS, N_TONES

_RECENCY = np.r_[I_RECENCY, I_SINCE_CHANNEL:I_URGENT_7D]
"""the days-since features, also read through a recovery curve"""
RECOVERY_DAYS = 4.0
"""time scale of that curve, ``exp(-days / RECOVERY_DAYS)``"""
N_CONTEXT = 1 + OBS_DIM + len(_RECENCY)
"""constant, the scaled observation, the recovery curves"""
N_ACTION = 2 + N_SLOTS + N_TONES + N_CHANNELS + N_CONTENTS
"""constant, send flag, one-hot slot, tone, channel, content"""

MODELS: dict[str, str] = {
    "opened": "sent",
    "calm_click": "opened",
    "anxious_click": "opened",
    "harmful": "sent",
    "unsubscribed": "sent",
    "complaint": "sent",
    "converted": "all",
    "churned": "all",
}
"""each response model and the rows it is fitted on"""


def context(obs: np.ndarray) -> np.ndarray:
    """(N, N_CONTEXT) float32 client context from raw (N, OBS_DIM) observations."""
    obs = np.asarray(obs, dtype=np.float32)
    out = np.empty((len(obs), N_CONTEXT), dtype=np.float32)
    out[:, 0] = 1.0
    out[:, 1 : 1 + OBS_DIM] = obs / OBS_HIGH
    out[:, 1 + OBS_DIM :] = np.exp(-obs[:, _RECENCY] / RECOVERY_DAYS)
    return out


def action_features() -> np.ndarray:
    """(361, N_ACTION) float32: [1, send, slot, tone, channel, content one-hots]; no-send is [1, 0...]."""
    b = np.zeros((N_JOINT_ACTIONS, N_ACTION), dtype=np.float32)
    b[:, 0] = 1.0
    a = JOINT_ACTIONS[1:]
    rows = np.arange(1, N_JOINT_ACTIONS)
    b[rows, 1] = 1.0
    at = 2
    for k, size in enumerate((N_SLOTS, N_TONES, N_CHANNELS, N_CONTENTS)):
        b[rows, at + a[:, k] - (1 if k == 0 else 0)] = 1.0
        at += size
    return b


ACTION_FEATURES = action_features()
MIN_STEPS = 400
"""optimiser steps per fit, at least (small logs get more passes)"""
MAX_ROWS = 1_500_000
"""client-days kept for fitting, at most (a random share of each day when training runs longer)"""


@dataclass
class Batch:
    """Logged client-days: raw observations, flat actions, outcomes."""

    obs: np.ndarray
    action: np.ndarray
    outcomes: dict[str, np.ndarray]


def fit_model(
    ctx: np.ndarray, action: np.ndarray, y: np.ndarray, ridge: float, epochs: int, seed: int
) -> np.ndarray:
    """(N_CONTEXT, N_ACTION) weights of one bilinear logistic regression, by Adam on the
    log-likelihood with an L2 penalty ``ridge`` (``epochs`` passes of 8,192-row batches, at
    least ``MIN_STEPS`` steps)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(ctx)
    b = torch.from_numpy(ACTION_FEATURES)[torch.from_numpy(action)]
    target = torch.from_numpy(y.astype(np.float32))
    theta = torch.zeros(N_CONTEXT, N_ACTION, requires_grad=True)
    with torch.no_grad():  # start from the overall rate
        rate = float(np.clip(y.mean(), 1e-5, 1 - 1e-5))
        theta[0, 0] = np.log(rate / (1 - rate))
    opt = torch.optim.Adam([theta], lr=0.02)
    n = len(y)
    size = min(n, 8192)
    per_epoch = -(-n // size)
    steps = max(epochs * per_epoch, MIN_STEPS)
    order = torch.randperm(n, generator=gen)
    for step in range(steps):
        if step and step % per_epoch == 0:
            order = torch.randperm(n, generator=gen)
        idx = order[(step % per_epoch) * size : (step % per_epoch + 1) * size]
        logit = ((x[idx] @ theta) * b[idx]).sum(dim=1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, target[idx])
        loss = loss + ridge / n * (theta**2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return theta.detach().numpy().copy()


class PropensityAgent(Policy):
    """One-step planning on fitted response models; see the module's docstring.

    Args:
        cfg: agent configuration (``lookahead_days``, ``send_threshold``, ``ridge``, ...).
        weights: the reward whose weights score a message (the balanced one, whatever the run
        trains on, as the oracle).
    """

    name = "propensity"
    history_dependent = False
    export_kind = None

    def __init__(self, cfg: AgentConfig | None = None, weights: RewardConfig | None = None) -> None:
        self.cfg = cfg or AgentConfig(name="propensity")
        self.weights = weights or RewardConfig()
        self.theta: dict[str, np.ndarray] = {}

    @property
    def fitted(self) -> bool:
        return set(self.theta) == set(MODELS)

    def probabilities(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        """(N, 361) predicted probability of each outcome under each action, per model."""
        if not self.fitted:
            raise RuntimeError("the propensity agent has no response models yet: fit() it first")
        ctx = context(obs)
        out = {}
        for name, theta in self.theta.items():
            logit = (ctx @ theta) @ ACTION_FEATURES.T
            out[name] = 1.0 / (1.0 + np.exp(-np.clip(logit, -30.0, 30.0)))
        return out

    def action_values(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """(N, 361) one-step value of each action over not sending (no-send 0; masked -inf)."""
        p, w = self.probabilities(obs), self.weights
        opened = p["opened"]
        value = (
            w.calm_click * opened * p["calm_click"]
            + w.anxious_click * opened * p["anxious_click"]
            + w.harmful * p["harmful"]
            + w.unsubscribe * p["unsubscribed"]
            + w.complaint * p["complaint"]
            + w.message
            + w.conversion * (p["converted"] - p["converted"][:, :1])
            + w.churn * self.cfg.lookahead_days * (p["churned"] - p["churned"][:, :1])
            - self.cfg.send_threshold
        )
        value[:, 0] = 0.0
        return np.where(masks, value, -np.inf)

    def act(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return JOINT_ACTIONS[self.action_values(obs, masks).argmax(axis=1)]

    def fit(self, batch: Batch, seed: int = 0) -> PropensityAgent:
        """Fit every response model to ``batch``."""
        ctx = context(batch.obs)
        out = batch.outcomes
        for k, (name, rows) in enumerate(MODELS.items()):
            keep = np.ones(len(ctx), dtype=bool) if rows == "all" else out[rows].astype(bool)
            if not keep.any():
                raise ValueError(f"no {rows} rows to fit the {name!r} model on")
            self.theta[name] = fit_model(
                ctx[keep],
                batch.action[keep],
                out[name][keep],
                self.cfg.ridge,
                self.cfg.model_epochs,
                seed + k,
            )
        return self

    @property
    def export_refusal(self) -> str:
        return (
            "the propensity agent scores all 361 joint actions with its response models, which "
            "do not factor into the 19 per-component scores the export contract gives; train it "
            "with agent.distil=true to teach its choices to an exportable network"
        )

    def agent_config(self) -> AgentConfig:
        return self.cfg

    def save(self, path: str | Path) -> Path:
        path = Path(path).with_suffix(".npz")
        np.savez(path, **{f"theta_{k}": v for k, v in self.theta.items()})
        return path

    @classmethod
    def load(cls, path: str | Path, cfg: AgentConfig | None = None) -> PropensityAgent:
        agent = cls(cfg)
        with np.load(Path(path)) as f:
            agent.theta = {k: f[f"theta_{k}"] for k in MODELS}
        for k, v in agent.theta.items():
            if v.shape != (N_CONTEXT, N_ACTION):
                raise ValueError(
                    f"{path}: model {k!r} has shape {v.shape}, expected {(N_CONTEXT, N_ACTION)} "
                    "(saved for another observation?)"
                )
        return agent


def _random_allowed(rng: np.random.Generator, masks: np.ndarray) -> np.ndarray:
    """(N,) a uniformly random allowed *send* per row (no-send where none is allowed)."""
    weights = masks[:, 1:] * rng.random(masks[:, 1:].shape)
    pick = weights.argmax(axis=1) + 1
    return np.where(masks[:, 1:].any(axis=1), pick, 0)


def collect(
    setup: Setup,
    client_days: int,
    num_envs: int,
    seed: int,
    choose,
    progress: bool,
    desc: str,
    keep: float = 1.0,
) -> Batch:
    """Roll ``choose(obs, masks, rng) -> (N,) flat actions`` on training clients for
    ``client_days`` and keep a random share ``keep`` of the client-days."""
    core = CadenceCore(setup, num_envs)
    obs = core.reset(seed)
    rng = np.random.default_rng(seed)
    days = max(1, client_days // core.n)
    keep_obs, keep_action, keep_out = [], [], {k: [] for k in (*MODELS, "sent")}
    for _ in tqdm(range(days), desc=desc, unit="day", disable=None if progress else True):
        masks = core.joint_masks()
        flat = choose(obs, masks, rng)
        r = core.step(JOINT_ACTIONS[flat])
        rows = rng.random(core.n) < keep
        sent = r.outcomes["sent"]
        keep_obs.append(obs[rows].astype(np.float32))
        keep_action.append(np.where(sent, flat, 0)[rows].astype(np.int64))  # blocked: none went
        for k in keep_out:
            keep_out[k].append(r.outcomes[k][rows].astype(bool))
        obs = r.obs
    return Batch(
        np.concatenate(keep_obs),
        np.concatenate(keep_action),
        {k: np.concatenate(v) for k, v in keep_out.items()},
    )


def train_propensity(
    cfg: AgentConfig,
    setup: Setup,
    total_timesteps: int,
    num_envs: int,
    seed: int = 0,
    progress: bool = True,
    hook=None,
) -> PropensityAgent:
    """Explore, fit, then follow the models (with ``cfg.explore`` of random messages) and refit,
    ``cfg.model_rounds`` rounds over ``total_timesteps`` client-days of training clients."""
    agent = PropensityAgent(cfg)
    rounds = cfg.model_rounds
    num_envs = max(num_envs, 2048)  # more clients a day, fewer days to simulate
    per_round = max(num_envs, total_timesteps // rounds)
    batches: list[Batch] = []
    for k in range(rounds):

        def choose(obs, masks, rng, first=(k == 0)):
            explore = _random_allowed(rng, masks)
            if first:
                return np.where(rng.random(len(obs)) < 0.5, explore, 0)
            greedy = multi_to_flat(agent.act(obs, masks))
            return np.where(rng.random(len(obs)) < cfg.explore, explore, greedy)

        batches.append(
            collect(
                setup,
                per_round,
                num_envs,
                seed + 7919 * k,
                choose,
                progress,
                f"round {k + 1}/{rounds}",
                keep=min(1.0, MAX_ROWS / max(total_timesteps, 1)),
            )
        )
        data = Batch(
            np.concatenate([b.obs for b in batches]),
            np.concatenate([b.action for b in batches]),
            {n: np.concatenate([b.outcomes[n] for b in batches]) for n in batches[0].outcomes},
        )
        agent.fit(data, seed)
        if hook is not None:
            hook(
                (k + 1) * per_round,
                {
                    "train/model_rows": float(len(data.action)),
                    "train/messages_per_client_day": float(data.outcomes["sent"].mean()),
                },
            )
    return agent


DISTILLED = "propensity_distilled"
"""name of a network taught the propensity agent's choices (an SB3 PPO policy: exportable)"""


def distil(
    teacher,
    cfg: AgentConfig,
    setup: Setup,
    total_timesteps: int,
    num_envs: int,
    seed: int = 0,
    progress: bool = True,
    hook=None,
):
    """Teach ``teacher``'s choices to a PPO-shaped network (``cfg.net_arch``) that reads only
    the observation, so the export path serves it.

    Two rounds over ``total_timesteps`` client-days of training clients: the teacher acts in the
    first, the student in the second (the teacher labels the days the student leads clients
    into). The loss is the cross-entropy of each action component, the tone, channel and
    content only on days the teacher sends. Returns an :class:`agents.sb3_agents.SB3Policy`.
    """

    from agents.sb3_agents import OBS_SCALE, SB3Policy, build_model, make_training_env

    # a PPO network of the propensity agent's width; PPO's defaults for everything else
    student_cfg = AgentConfig(name="ppo", net_arch=list(cfg.net_arch))
    model = build_model(student_cfg, make_training_env(student_cfg, setup, 8), seed)
    student = SB3Policy(model, DISTILLED)
    net = model.policy
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    num_envs = max(num_envs, 2048)
    per_round = max(num_envs, total_timesteps // 2)
    keep = min(1.0, MAX_ROWS / max(total_timesteps, 1))
    obs_all, label_all, agree = [], [], []
    for k in range(2):
        core = CadenceCore(setup, num_envs)
        obs = core.reset(seed + 104_729 * (k + 1))
        rng = np.random.default_rng(seed + k)
        days = max(1, per_round // core.n)
        for _ in tqdm(
            range(days),
            desc=f"distilling {k + 1}/2",
            unit="day",
            disable=None if progress else True,
        ):
            masks = core.joint_masks()
            label = teacher.act(obs, masks)
            rows = rng.random(core.n) < keep
            obs_all.append(obs[rows].astype(np.float32))
            label_all.append(label[rows])
            if k == 0:
                r = core.step(label)
            else:
                own = student.act(obs, masks)
                agree.append(float((own == label).all(axis=1).mean()))
                r = core.step(own)
            obs = r.obs
        x = torch.from_numpy(np.concatenate(obs_all) * OBS_SCALE.astype(np.float32))
        y = torch.from_numpy(np.concatenate(label_all).astype(np.int64))
        n, size = len(y), 4096
        for _ in range(cfg.model_epochs):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, size):
                idx = order[start : start + size]
                parts = net.get_distribution(x[idx]).distribution
                target = y[idx]
                sends = (target[:, 0] > 0).float()
                loss = -parts[0].log_prob(target[:, 0])
                for j in (1, 2, 3):
                    loss = loss - sends * parts[j].log_prob(target[:, j])
                opt.zero_grad()
                loss.mean().backward()
                opt.step()
    student.distil_agreement = float(np.mean(agree))
    """share of client-days the student chose as the teacher did, on the student's own
    clients, after the first round"""
    if hook is not None:
        hook(2 * per_round, {"train/distil_agreement": student.distil_agreement})
    return student
