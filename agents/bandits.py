"""Contextual bandits batched over the population with one shared linear reward model.

Score of action ``a`` for a client with context ``c`` is ``c^T Theta b(a)``: a client context
(declared goal, risk, recency, engagement averages, ...) crossed with action features (send,
slot, tone, channel, content), so one model generalises across the 361 joint actions.
No-send has zero features, so a send is chosen only when its predicted reward beats zero.
The model is ridge regression on the day's reward; exploration differs per agent.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy.linalg import cho_factor, cho_solve, lapack

from agents.base import ExportKind, Policy, best_additive
from agents.config import AgentConfig, saved_config
from envs.features import (
    I_DECLARED_SLOT,
    I_ENGAGEMENT,
    I_GOAL,
    I_RECENCY,
    I_RISK,
    I_SENT_7D,
    I_SENT_30D,
    I_SINCE_CHANNEL,
    I_STRESS,
    I_TIER,
    I_URGENT_7D,
    I_WEEKDAY,
    OBS_DIM,
)
from envs.spaces import JOINT_ACTIONS, N_SCORES, multi_to_flat
from simulate.labels import N_CHANNELS, N_CONTENTS, N_JOINT_ACTIONS, N_SEGMENTS, N_SLOTS, N_TONES
from simulate.world import E_CLICK_TONE, E_OPEN_CHANNEL, E_OPEN_SLOT

N_ACTION_FEATURES = 1 + N_SLOTS + N_TONES + N_CHANNELS + N_CONTENTS
"""send flag, then one-hot slot, tone, channel and content"""
N_SINCE = N_CHANNELS + N_TONES + N_CONTENTS


def action_features() -> np.ndarray:
    """(361, 19) features of each flat action: [send, slot one-hot, tone, channel, content]; no-send is 0."""
    b = np.zeros((N_JOINT_ACTIONS, N_ACTION_FEATURES))
    send = JOINT_ACTIONS[1:]
    rows = np.arange(1, N_JOINT_ACTIONS)
    b[rows, 0] = 1.0
    b[rows, send[:, 0]] = 1.0  # slot numbers 1..6 land in columns 1..6
    b[rows, 1 + N_SLOTS + send[:, 1]] = 1.0
    b[rows, 1 + N_SLOTS + N_TONES + send[:, 2]] = 1.0
    b[rows, 1 + N_SLOTS + N_TONES + N_CHANNELS + send[:, 3]] = 1.0
    return b


def _context_map() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bandit context as ``min(obs, cap) @ weights + bias``: one definition that the
    in-process bandit (numpy) and its exported graph (torch) both apply."""
    e = I_ENGAGEMENT
    columns: list[dict[int, float]] = [
        {},  # the constant (bias 1)
        *({I_GOAL + g: 1.0} for g in range(N_SEGMENTS)),
        {I_RISK: 1.0},
        {I_RECENCY: 1.0 / RECENCY_CAP},  # capped at RECENCY_CAP days, then scaled to 0..1
        {I_SENT_7D + c: 1.0 / 5.0 for c in range(N_CHANNELS)},  # messages in 7 days / 5
        {I_STRESS: 1.0},
        {I_WEEKDAY + 5: 1.0, I_WEEKDAY + 6: 1.0},  # weekend
        *({e + E_OPEN_SLOT + s: 1.0} for s in range(N_SLOTS)),
        *({e + E_OPEN_CHANNEL + c: 1.0} for c in range(N_CHANNELS)),
        *({e + E_CLICK_TONE + t: 1.0} for t in range(N_TONES)),
        {I_TIER + 3: 1.0},
        {I_TIER: 1.0},
        # the firm's send log (every tier), recency capped at RECENCY_CAP and scaled to 0..1:
        # crossed with the action's one-hots these say how long since *this* channel, tone and
        # content was sent (novelty and fatigue per component)
        *({I_SINCE_CHANNEL + k: 1.0 / RECENCY_CAP} for k in range(N_SINCE)),
        {I_URGENT_7D: 1.0 / 3.0},
        {I_SENT_30D: 1.0 / 30.0},
        # the declared preferred contact time (tier >= 1), crossed with the slot one-hot
        *({I_DECLARED_SLOT + s: 1.0} for s in range(N_SLOTS)),
    ]
    weights = np.zeros((OBS_DIM, len(columns)))
    for j, column in enumerate(columns):
        for feature, weight in column.items():
            weights[feature, j] = weight
    bias = np.zeros(len(columns))
    bias[0] = 1.0
    cap = np.full(OBS_DIM, np.inf)
    cap[I_RECENCY] = RECENCY_CAP
    cap[I_SINCE_CHANNEL : I_SINCE_CHANNEL + N_SINCE] = RECENCY_CAP
    return weights, bias, cap


RECENCY_CAP = 14.0
"""days since the last message beyond which the bandit context no longer distinguishes"""
CONTEXT_WEIGHTS, CONTEXT_BIAS, CONTEXT_CAP = _context_map()
N_CONTEXT = CONTEXT_WEIGHTS.shape[1]
"""46 context features: constant, goal, risk, recency, recent volume, stress, weekend, engagement,
tier, days since each channel / tone / content was sent, urgent in 7 days, sent in 30 days, declared
slot"""


def client_context(obs: np.ndarray) -> np.ndarray:
    """(N, N_CONTEXT) float64 bandit context from raw (N, OBS_DIM) observations."""
    return np.minimum(obs, CONTEXT_CAP) @ CONTEXT_WEIGHTS + CONTEXT_BIAS


ACTION_FEATURES = action_features()
"""(361, 19) features of each flat action"""
ACTION_PAIRS = np.ascontiguousarray(
    (ACTION_FEATURES[:, :, None] * ACTION_FEATURES[:, None, :]).reshape(len(ACTION_FEATURES), -1).T
)
"""(19 * 19, 361) each action's features times themselves: a quadratic form in the action
features is one product with this"""
VARIANCE_ROWS = 1024
"""clients whose predictive variances are computed together (bounds the (rows, 46 * 46) block)"""
RECOVERY_FEATURES = 3  # recency of the same content, tone and channel for this client


class LinearBandit(Policy):
    """Shared ridge model over ``context x action`` features; subclasses choose how to explore.

    Exported (``export_kind = "linear"``) as its mean score, additive over the 19 per-component
    scores (``theta``'s context-action block).

    Args:
        cfg: agent configuration (ridge, alpha, epsilon, noise, recovery_days).
        seed: seed of the exploration noise.
    """

    name = "linear_bandit"
    recovering = False
    export_kind: ExportKind | None = "linear"

    def __init__(self, cfg: AgentConfig | None = None, seed: int = 0) -> None:
        self.cfg = cfg or AgentConfig(name=self.name)
        self.rng = np.random.default_rng(seed)
        d = N_CONTEXT * N_ACTION_FEATURES + (RECOVERY_FEATURES if self.recovering else 0)
        self.precision = np.eye(d) * self.cfg.ridge
        self.target = np.zeros(d)
        self.theta = np.zeros(d)
        self._cov: np.ndarray | None = None
        """the posterior covariance, the precision's inverse (from its Cholesky factor, when first
        needed after an update)"""
        self._factor: tuple[np.ndarray, bool] | None = None
        """the precision's Cholesky factor (:func:`scipy.linalg.cho_factor`)"""
        self._cov_pairs: np.ndarray | None = None
        """the context-action block of the covariance as (46 * 46, 19 * 19)"""
        self.deterministic = False
        self._memory: np.ndarray | None = (
            None  # (N, contents + tones + channels) days since last use
        )
        self._recovery_before: np.ndarray | None = None

    # ----- model -------------------------------------------------------------------------
    def _theta_matrix(self) -> np.ndarray:
        return self.theta[: N_CONTEXT * N_ACTION_FEATURES].reshape(N_CONTEXT, N_ACTION_FEATURES)

    def _recovery(self, n: int) -> np.ndarray:
        """(N, 361, 3) how recovered each action's content, tone and channel are (1 = long unused)."""
        if self._memory is None or len(self._memory) != n:
            self._memory = np.full((n, N_CONTENTS + N_TONES + N_CHANNELS), 99.0)
        m = np.exp(-1.0 / self.cfg.recovery_days * self._memory)  # 1 = just used, 0 = long ago
        send = JOINT_ACTIONS[1:]
        z = np.zeros((n, N_JOINT_ACTIONS, RECOVERY_FEATURES))
        z[:, 1:, 0] = m[:, send[:, 3]]
        z[:, 1:, 1] = m[:, N_CONTENTS + send[:, 1]]
        z[:, 1:, 2] = m[:, N_CONTENTS + N_TONES + send[:, 2]]
        return z

    def mean_scores(self, obs: np.ndarray) -> np.ndarray:
        """(N, 361) predicted reward of each action (no-send = 0)."""
        c = client_context(obs)
        scores = c @ self._theta_matrix() @ ACTION_FEATURES.T
        if self.recovering:
            scores += self._recovery(len(obs)) @ self.theta[-RECOVERY_FEATURES:]
        return scores

    def _covariance(self) -> np.ndarray:
        """The posterior covariance (the precision's inverse), from the precision's Cholesky
        factor: about a third of a general inverse's work, and kept until the next update."""
        if self._cov is None:
            if self._factor is None:
                self._factor = cho_factor(self.precision, lower=True, check_finite=False)
            inverse, info = lapack.dpotri(self._factor[0], lower=True)
            if info != 0:  # not positive definite to working precision: the general inverse
                self._cov = np.linalg.inv(self.precision)
            else:
                self._cov = np.tril(inverse) + np.tril(inverse, -1).T
        return self._cov

    def _variance(self, c: np.ndarray) -> np.ndarray:
        """(N, 361) predictive variance of the context-action block, from the posterior covariance:
        for client context c and action features a, sum over (p, r, i, j) of c_p c_r a_i a_j
        cov[(p, i), (r, j)], as two matrix products: the clients' (c_p c_r) with the covariance
        laid out as ((p, r), (i, j)), then with every action's (a_i a_j) (:data:`ACTION_PAIRS`)."""
        p, q = N_CONTEXT, N_ACTION_FEATURES
        if self._cov_pairs is None:
            cov = self._covariance()[: p * q, : p * q].reshape(p, q, p, q)
            self._cov_pairs = np.ascontiguousarray(cov.transpose(0, 2, 1, 3).reshape(p * p, q * q))
        out = np.empty((len(c), N_JOINT_ACTIONS))
        for start in range(0, len(c), VARIANCE_ROWS):
            rows = c[start : start + VARIANCE_ROWS]
            pairs = (rows[:, :, None] * rows[:, None, :]).reshape(len(rows), p * p)
            np.maximum(
                (pairs @ self._cov_pairs) @ ACTION_PAIRS, 0.0, out=out[start : start + len(rows)]
            )
        return out

    def exploration_scores(self, obs: np.ndarray) -> np.ndarray:
        """(N, 361) scores used to act while learning; greedy by default."""
        return self.mean_scores(obs)

    # ----- Policy protocol ---------------------------------------------------------------
    def component_scores(self, obs: np.ndarray) -> np.ndarray:
        """(N, 19) the mean score split over components (no-send 0, the send flag folded into
        the slots): a send's score is the sum of its four components' (no recovery terms)."""
        s = client_context(obs) @ self._theta_matrix()
        out = np.zeros((len(obs), N_SCORES))
        out[:, 1 : 1 + N_SLOTS] = s[:, :1] + s[:, 1 : 1 + N_SLOTS]
        out[:, 1 + N_SLOTS :] = s[:, 1 + N_SLOTS :]
        return out

    def act(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """(N, 4) actions: the best allowed action by the exploration (or, if deterministic, mean) score."""
        if (
            self.deterministic and not self.recovering
        ):  # additive scores: no 361-action table needed
            return best_additive(self.component_scores(obs), masks)
        scores = self.mean_scores(obs) if self.deterministic else self.exploration_scores(obs)
        scores = np.where(masks, scores, -np.inf)
        flat = scores.argmax(axis=1)
        if self.recovering:
            self._remember(flat)
        return JOINT_ACTIONS[flat]

    def _remember(self, flat: np.ndarray) -> None:
        self._memory += 1.0
        sent = flat > 0
        a = JOINT_ACTIONS[flat[sent]]
        rows = np.flatnonzero(sent)
        self._memory[rows, a[:, 3]] = 0.0
        self._memory[rows, N_CONTENTS + a[:, 1]] = 0.0
        self._memory[rows, N_CONTENTS + N_TONES + a[:, 2]] = 0.0

    def features(self, obs: np.ndarray, flat: np.ndarray) -> np.ndarray:
        """(N, d) regression features of the chosen flat actions."""
        c = client_context(obs)
        phi = (c[:, :, None] * ACTION_FEATURES[flat][:, None, :]).reshape(len(obs), -1)
        if self.recovering:
            # the recovery state *before* today's send was recorded
            z = self._recovery_before[np.arange(len(obs)), flat]
            phi = np.concatenate([phi, z], axis=1)
        return phi

    def _refit(self) -> None:
        """The posterior mean from the precision's Cholesky factor (kept for the covariance)."""
        self._factor = cho_factor(self.precision, lower=True, check_finite=False)
        self.theta = cho_solve(self._factor, self.target, check_finite=False)
        self._cov = self._cov_pairs = None

    def update(
        self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, info: dict[str, Any]
    ) -> None:
        """Add the day's (context, action, reward) of every client that was messaged; refit."""
        flat = multi_to_flat(actions)
        sent = flat > 0
        if sent.any():
            phi = self.features(obs, flat)[sent]
            self.precision += phi.T @ phi
            self.target += phi.T @ np.asarray(rewards, dtype=np.float64)[sent]
            self._refit()
        done = info.get("done")
        if self.recovering and done is not None and self._memory is not None:
            self._memory[np.asarray(done, dtype=bool)] = 99.0

    # ----- persistence -------------------------------------------------------------------
    def agent_config(self) -> AgentConfig:
        return self.cfg

    def save(self, path: str | Path) -> Path:
        """Write the model as ``.npz`` (arrays + JSON config; no pickle)."""
        path = Path(path).with_suffix(".npz")
        memory = (
            self._memory
            if self._memory is not None
            else np.zeros((0, N_CONTENTS + N_TONES + N_CHANNELS))
        )
        np.savez(
            path,
            precision=self.precision,
            target=self.target,
            theta=self.theta,
            memory=memory,
            meta=np.array(json.dumps({"name": self.name, "cfg": asdict(self.cfg)})),
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> LinearBandit:
        data = np.load(Path(path), allow_pickle=False)
        meta = json.loads(str(data["meta"]))
        kind = BANDIT_CLASSES[meta["name"]]
        agent = kind(saved_config(meta["cfg"]))
        d = N_CONTEXT * N_ACTION_FEATURES + (RECOVERY_FEATURES if agent.recovering else 0)
        if data["theta"].shape != (d,) or data["precision"].shape != (d, d):
            raise ValueError(
                f"{path}: bandit model has {data['theta'].shape[0]} weights, this version "
                f"expects {d} ({N_CONTEXT} context x {N_ACTION_FEATURES} action features): "
                "it was trained on another observation; retrain it"
            )
        agent.precision, agent.target, agent.theta = (
            data["precision"],
            data["target"],
            data["theta"],
        )
        if len(data["memory"]):  # the recovering bandit's per-client recency, as it was when saved
            agent._memory = data["memory"].copy()
        return agent


class EpsilonGreedy(LinearBandit):
    """Greedy on the mean, a random allowed action with probability epsilon."""

    stochastic = True
    """its actions are draws: off-policy estimation needs probabilities it does not give"""

    name = "epsilon_greedy"

    def act(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        actions = super().act(obs, masks)
        if self.deterministic:
            return actions
        explore = self.rng.random(len(obs)) < self.cfg.epsilon
        if explore.any():
            pick = (self.rng.random(masks[explore].shape) * masks[explore]).argmax(axis=1)
            actions[explore] = JOINT_ACTIONS[pick]
        return actions


class LinUCB(LinearBandit):
    """Mean plus ``alpha`` times the predictive standard deviation."""

    name = "linucb"

    def exploration_scores(self, obs: np.ndarray) -> np.ndarray:
        return self.mean_scores(obs) + self.cfg.alpha * np.sqrt(self._variance(client_context(obs)))


class Thompson(LinearBandit):
    """Linear Thompson sampling: 8 posterior draws a day, each client acting on one of them."""

    stochastic = True
    """its actions are draws: off-policy estimation needs probabilities it does not give"""

    name = "thompson"
    draws = 8

    def exploration_scores(self, obs: np.ndarray) -> np.ndarray:
        cov = self._covariance()
        chol = np.linalg.cholesky(cov + 1e-9 * np.eye(len(cov)))
        c = client_context(obs)
        which = self.rng.integers(0, self.draws, len(obs))
        scores = np.empty((len(obs), N_JOINT_ACTIONS))
        d = N_CONTEXT * N_ACTION_FEATURES
        for k in range(self.draws):
            rows = which == k
            theta = self.theta + self.cfg.noise * chol @ self.rng.standard_normal(len(self.theta))
            scores[rows] = (
                c[rows] @ theta[:d].reshape(N_CONTEXT, N_ACTION_FEATURES) @ ACTION_FEATURES.T
            )
        return scores


class Recovering(LinUCB):
    """LinUCB whose arms recover with time since this client last got the same content, tone
    or channel (a sleeping/recovering bandit for recurring notifications)."""

    name = "recovering"
    recovering = True
    history_dependent = True
    """its actions depend on what it sent each client before, which a logged state does not hold"""
    export_kind = None

    @property
    def export_refusal(self) -> str:
        return (
            "the recovering bandit keeps per-client memory of past sends; it has no "
            "stateless ONNX form"
        )

    def act(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        self._recovery_before = self._recovery(len(obs))
        return super().act(obs, masks)


BANDIT_CLASSES: dict[str, type[LinearBandit]] = {
    cls.name: cls for cls in (EpsilonGreedy, LinUCB, Thompson, Recovering)
}
