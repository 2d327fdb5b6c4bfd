"""Agent configuration: one documented dataclass; ``conf/agent/<name>.yaml`` chooses values."""

from __future__ import annotations

from dataclasses import dataclass, field

from simulate.config import ConfigError, num

_FAMILY_NAMES = {
    "SB3_AGENTS": "sb3",
    "BANDITS": "bandit",
    "HEURISTIC_AGENTS": "heuristic",
    "MODEL_BASED": "model_based",
}


def __getattr__(attr: str) -> tuple[str, ...]:
    """``AGENTS`` (every agent name ``agent=`` accepts) and the names of each family
    (``SB3_AGENTS``, ``BANDITS``, ``HEURISTIC_AGENTS``, ``MODEL_BASED``), read from the agent
    registry (:mod:`agents.kinds`), where each kind is registered once."""
    from agents.kinds import names

    if attr == "AGENTS":
        return names()
    if attr in _FAMILY_NAMES:
        return names(_FAMILY_NAMES[attr])  # type: ignore[arg-type]
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


@dataclass
class AgentConfig:
    """Hyperparameters of every agent kind; each kind reads the fields its registration in
    :mod:`agents.kinds` lists (``AgentKind.fields``)."""

    name: str = "ppo_lagrangian"
    """which agent: a kind registered in :mod:`agents.kinds` (``agents.config.AGENTS``)"""
    # --- SB3 (ppo, a2c, maskable_ppo, ppo_lagrangian; dqn where marked) ---
    learning_rate: float = num(1e-3, 1e-7, 1.0)
    """optimiser step size (all SB3 agents)"""
    n_steps: int = num(64, 1, 10_000)
    """days collected per client slot before each update (on-policy agents)"""
    batch_size: int = num(4096, 8, 1_000_000)
    """minibatch size in client-days (PPO variants, DQN)"""
    n_epochs: int = num(4, 1, 100)
    """passes over each rollout (PPO variants)"""
    gamma: float = num(0.98, 0.0, 1.0)
    """discount per day (0.98: a horizon of about 50 days)"""
    gae_lambda: float = num(0.95, 0.0, 1.0)
    """GAE lambda (on-policy agents)"""
    ent_coef: float = num(0.003, 0.0, 1.0)
    """entropy bonus (on-policy agents)"""
    clip_range: float = num(0.2, 0.0, 1.0)
    """PPO clipping"""
    normalize_reward: bool = False
    """scale rewards by a running estimate of the return's spread while training (rare churn
    penalties otherwise swamp the value function); evaluation always uses raw rewards"""
    net_arch: list[int] = field(default_factory=lambda: [64, 64])
    """hidden layer sizes of the policy and value networks"""
    lstm_hidden_size: int = num(64, 1, 4096)
    """recurrent_ppo: units of the LSTM that carries each client's memory from day to day"""
    asymmetric_critic: bool = False
    """ppo, ppo_lagrangian, a2c: while training in simulation the critic also reads each client's
    latent state and hidden traits; the actor sees only the observation, so the trained (and
    exported) policy needs nothing a firm lacks"""
    action_masking: bool = False
    """ppo_lagrangian: sample only the options the guardrails and consent allow while training
    (sb3-contrib's MaskablePPO under the Lagrangian costs), as maskable_ppo does"""
    buffer_size: int = num(200_000, 1000, 10_000_000)
    """DQN replay buffer, client-days"""
    exploration_fraction: float = num(0.3, 0.0, 1.0)
    """DQN: share of training over which epsilon anneals"""
    exploration_final_eps: float = num(0.02, 0.0, 1.0)
    """DQN: final epsilon"""
    learning_starts: int = num(20_000, 0, 10_000_000)
    """DQN: client-days before learning starts"""
    target_update_interval: int = num(2_000, 1, 10_000_000)
    """DQN: steps between target network updates"""
    # --- ppo_lagrangian ---
    churn_limit: float = num(0.03, 0.0, 1.0)
    """allowed churn per episode (share of clients lost over the horizon)"""
    anxiety_limit: float = num(0.02, 0.0, 100.0)
    """allowed anxiety-driven clicks per client episode (0.02: about one client in fifty clicks
    in fear once in 90 days; segment_rules' calm tones give about 0.03)"""
    multiplier_lr: float = num(1.0, 0.0, 1000.0)
    """step of the Lagrange multipliers per rollout per unit of *relative* violation
    ((cost - limit) / limit)"""
    # --- bandits ---
    ridge: float = num(1.0, 1e-6, 1e6)
    """prior precision of the linear reward model"""
    alpha: float = num(0.3, 0.0, 100.0)
    """LinUCB / recovering: width of the confidence bonus"""
    epsilon: float = num(0.05, 0.0, 1.0)
    """epsilon-greedy: share of random allowed actions"""
    noise: float = num(0.3, 0.0, 100.0)
    """Thompson sampling: posterior scale"""
    recovery_days: float = num(4.0, 0.1, 365.0)
    """recovering bandit: time scale (days) over which an arm's value recovers after use"""
    # --- propensity (model-based) ---
    send_threshold: float = num(0.05, -100.0, 100.0)
    """propensity: a message goes out only when its one-step value beats not sending by this
    (reward units): the allowance for tomorrow's fatigue, which a one-day model cannot see"""
    model_rounds: int = num(3, 1, 100)
    """propensity: rounds of collect-then-refit (the first explores at random)"""
    explore: float = num(0.2, 0.0, 1.0)
    """propensity: share of random allowed messages after the first round"""
    model_epochs: int = num(3, 1, 1000)
    """propensity: passes of the optimiser over the data per fit"""
    distil: bool = False
    """propensity: teach the fitted agent's choices to an exportable network (``net_arch``)"""
    # --- oracle and propensity ---
    lookahead_days: int = num(30, 1, 365)
    """days over which the oracle counts an action's effect on churn"""
    churn_value: float = num(60.0, 0.0, 10_000.0)
    """value the oracle puts on keeping a client (churn penalty plus future value)"""
    fatigue_cost: float = num(0.02, 0.0, 100.0)
    """value the oracle charges per unit of fatigue per day it lasts"""

    def check(self, prefix: str) -> None:
        from agents.kinds import kind, kinds

        reads = kind(self.name, f"{prefix}.name").fields
        for switch in ("asymmetric_critic", "action_masking"):
            if getattr(self, switch) and switch not in reads:
                readers = [k.name for k in kinds() if switch in k.fields]
                raise ConfigError(
                    f"{prefix}.{switch} is for {', '.join(readers)}, not {self.name!r}"
                )
        if self.action_masking and self.asymmetric_critic:
            raise ConfigError(
                f"{prefix}.action_masking and {prefix}.asymmetric_critic cannot be combined "
                "(the masked policy has no asymmetric form)"
            )
        if not self.net_arch or any(int(h) < 1 for h in self.net_arch):
            raise ConfigError(
                f"{prefix}.net_arch must be a non-empty list of positive sizes, got {self.net_arch}"
            )
