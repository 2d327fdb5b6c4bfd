"""The default agent's fast training path: the masked multi-categorical distribution against
sb3-contrib's, the rollouts' masks and bootstrapping, saving and loading, torch threads, and
``trainer.device``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sb3_contrib.common.maskable.distributions import MaskableMultiCategoricalDistribution

from agents.config import AgentConfig
from agents.sb3_agents import (
    MASKED_LOGIT,
    PADDING_LOGIT,
    TORCH_THREADS,
    UPDATE_THREADS,
    FastMaskablePolicy,
    FastMaskablePPO,
    MaskedMultiCategorical,
    SB3Policy,
    build_model,
    check_device,
    cpus_available,
    current_options,
    default_train_envs,
    log_softmax_components,
    make_training_env,
    training_options,
)
from envs.config import load_setup
from envs.sb3_vec_env import CadenceVecEnv
from envs.spaces import multi_discrete_space
from experiment.schema import TrainerConfig
from simulate.config import ConfigError, validate

DIMS = [int(d) for d in multi_discrete_space().nvec]
OFFSETS = np.concatenate([[0], np.cumsum(DIMS)[:-1]])


def _env_masks(n: int = 512, days: int = 12) -> np.ndarray:
    """Real masks: ``n`` clients after ``days`` of random allowed actions (caps bite)."""
    env = CadenceVecEnv(load_setup(), num_envs=n)
    env.seed(3)
    env.reset()
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(days):
        m = env.action_masks()
        rows.append(m)
        actions = np.stack(
            [
                rng.choice(np.flatnonzero(r[o : o + d]))
                for r in m
                for o, d in zip(OFFSETS, DIMS, strict=True)
            ]
        ).reshape(n, len(DIMS))
        env.step(actions)
    return np.concatenate(rows)


@pytest.fixture(scope="module")
def masks() -> np.ndarray:
    m = _env_masks()
    assert not m.all(), "the guardrails forbid something in a fortnight of random sends"
    return m


def _pair(masks: np.ndarray, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(len(masks), sum(DIMS), generator=g)).requires_grad_()
    theirs = MaskableMultiCategoricalDistribution(DIMS).proba_distribution(logits)
    theirs.apply_masking(masks)
    ours = MaskedMultiCategorical(DIMS).proba_distribution(logits)
    ours.apply_masking(torch.from_numpy(masks))
    return logits, theirs, ours


def test_masked_distribution_matches_sb3_contrib_on_env_masks(masks):
    logits, theirs, ours = _pair(masks)
    actions = theirs.sample()
    torch.testing.assert_close(ours.log_prob(actions), theirs.log_prob(actions))
    torch.testing.assert_close(ours.entropy(), theirs.entropy())
    assert torch.equal(ours.mode(), theirs.mode())
    flat = torch.cat([d.logits for d in theirs.distributions], dim=1)
    torch.testing.assert_close(ours.component_log_probs(), flat)
    grad_theirs = torch.autograd.grad(
        (theirs.log_prob(actions) + 0.01 * theirs.entropy()).sum(), logits
    )[0]
    grad_ours = torch.autograd.grad((ours.log_prob(actions) + 0.01 * ours.entropy()).sum(), logits)[
        0
    ]
    torch.testing.assert_close(grad_ours, grad_theirs)


def test_masked_distribution_without_masks_is_the_plain_softmax(masks):
    logits = torch.randn(64, sum(DIMS))
    ours = MaskedMultiCategorical(DIMS).proba_distribution(logits)
    plain = torch.cat([s.log_softmax(1) for s in logits.split(DIMS, dim=1)], dim=1)
    torch.testing.assert_close(ours.component_log_probs(), plain)
    ours.apply_masking(torch.from_numpy(masks[:64]))
    ours.apply_masking(None)  # lifting the masks gives the plain distribution back
    torch.testing.assert_close(ours.component_log_probs(), plain)


def test_samples_stay_within_masks_and_follow_the_probabilities(masks):
    torch.manual_seed(1)
    masks = masks[:1024]
    _, _, ours = _pair(masks)
    draws = torch.stack([ours.sample() for _ in range(200)])  # (200, N, 4)
    every = (draws + torch.as_tensor(OFFSETS)).permute(1, 0, 2).reshape(len(masks), -1)
    assert torch.from_numpy(masks).gather(1, every).all(), "a forbidden option was drawn"
    # the channel's empirical frequencies match its probabilities (first client, 200 draws)
    p = ours.log_probs[0, 0, : DIMS[0]].exp()
    freq = torch.bincount(draws[:, 0, 0], minlength=DIMS[0]).float() / 200
    assert (freq - p).abs().max() < 0.12


def _cfg(**changes) -> AgentConfig:
    values = dict(
        name="ppo_lagrangian",
        action_masking=True,
        n_steps=4,
        batch_size=128,
        n_epochs=1,
        net_arch=[16, 16],
    )
    values.update(changes)
    return AgentConfig(**values)


def test_the_default_agent_trains_on_the_fast_path_and_loads_back(tmp_path):
    cfg = _cfg()
    env = make_training_env(cfg, load_setup(), 64)
    env.seed(0)
    model = build_model(cfg, env, seed=0)
    assert isinstance(model, FastMaskablePPO) and isinstance(model.policy, FastMaskablePolicy)
    assert torch.get_num_threads() == TORCH_THREADS
    model.learn(total_timesteps=64 * 4 * 2)
    # the buffer holds each step's masks as the env gave them, and every stored action is allowed
    buf = model.rollout_buffer
    stored = buf.action_masks.reshape(-1, sum(DIMS)) > 0.5
    acts = buf.actions.reshape(-1, len(DIMS)).astype(int) + OFFSETS
    assert np.take_along_axis(stored, acts, axis=1).all()
    assert not stored.all()
    policy = SB3Policy(model, "ppo_lagrangian")
    loaded = SB3Policy.load(policy.save(tmp_path / "policy"), "ppo_lagrangian")
    assert isinstance(loaded.model.policy, FastMaskablePolicy)
    env_raw = CadenceVecEnv(load_setup(), num_envs=32)
    env_raw.seed(1)
    raw = env_raw.reset()
    np.testing.assert_allclose(loaded.scores(raw), policy.scores(raw), rtol=0, atol=1e-6)
    chosen = loaded.act(raw, env_raw.core.joint_masks()) + OFFSETS
    assert np.take_along_axis(env_raw.action_masks(), chosen, axis=1).all()


def test_the_previous_path_is_still_selectable():
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy

    cfg = _cfg()
    env = make_training_env(cfg, load_setup(), 16)
    with training_options(fast=False):
        model = build_model(cfg, env, seed=0)
    assert type(model) is MaskablePPO
    assert type(model.policy) is MaskableActorCriticPolicy
    assert current_options().fast  # the block ends, the default comes back


def test_truncated_episodes_are_bootstrapped_as_sb3_does_one_by_one():
    cfg = _cfg()
    env = make_training_env(cfg, load_setup(), 16)
    model = build_model(cfg, env, seed=0)
    rng = np.random.default_rng(2)
    width = env.observation_space.shape[0]
    dones = np.zeros(16, dtype=bool)
    dones[[1, 4, 5, 9]] = True
    infos = [{} for _ in range(16)]
    for i in (1, 4, 5):
        infos[i] = {"terminal_observation": rng.uniform(0, 1, width).astype(np.float32)}
        infos[i]["TimeLimit.truncated"] = i != 5  # 5 churned: no bootstrap
    infos[9] = {"TimeLimit.truncated": True}  # no terminal observation: no bootstrap
    rewards = rng.normal(size=16).astype(np.float32)
    expected = rewards.copy()
    for i in (1, 4):
        with torch.no_grad():
            obs = model.policy.obs_to_tensor(infos[i]["terminal_observation"])[0]
            expected[i] += model.gamma * model.policy.predict_values(obs)[0].item()
    model._bootstrap_truncated(rewards, dones, infos)
    np.testing.assert_allclose(rewards, expected, rtol=1e-6)


def test_trainer_device_is_cpu_by_default_and_cuda_is_checked():
    assert TrainerConfig().device == "cpu"
    cfg = _cfg()
    model = build_model(cfg, make_training_env(cfg, load_setup(), 8), seed=0)
    assert model.device.type == "cpu"
    with pytest.raises(ConfigError, match=r"trainer.device must be 'cpu', 'cuda' or 'cuda:N'"):
        validate(TrainerConfig(device="gpu"), "trainer")
    if torch.cuda.is_available():
        validate(TrainerConfig(device="cuda"), "trainer")
        with training_options(device="cuda"):
            model = build_model(cfg, make_training_env(cfg, load_setup(), 8), seed=0)
        assert model.device.type == "cuda"
    else:
        with pytest.raises(ConfigError, match=r"trainer.device=cuda: .*finds no CUDA device"):
            validate(TrainerConfig(device="cuda"), "trainer")
        with pytest.raises(ConfigError, match="no CUDA device"), training_options(device="cuda"):
            pass
        with pytest.raises(ConfigError, match="use trainer.device=cpu"):
            check_device("cuda:0")


def test_trainer_num_envs_defaults_per_agent():
    setup = load_setup()
    for name in ("ppo_lagrangian", "ppo"):  # 1,024 a step learned less (TRAIN_ENVS)
        assert default_train_envs(name, setup) == setup.env.num_clients
    with pytest.raises(ConfigError, match="trainer.num_envs must be null or in"):
        validate(TrainerConfig(num_envs=0), "trainer")


def _trained_on(update_threads: int) -> tuple[FastMaskablePPO, list[int]]:
    """Two rollouts of 256 clients x 16 days, each updated in one minibatch of 4,096 rows (big
    enough that torch splits its work between threads), and the torch threads each update ran
    on."""
    cfg = _cfg(n_steps=16, batch_size=4096, net_arch=[64, 64])
    env = make_training_env(cfg, load_setup(), 256)
    env.seed(0)
    seen: list[int] = []
    with training_options(update_threads=update_threads):
        model = build_model(cfg, env, seed=0)
        evaluate = model.policy.evaluate_actions

        def counted(*args, **kwargs):
            seen.append(torch.get_num_threads())
            return evaluate(*args, **kwargs)

        model.policy.evaluate_actions = counted
        model.learn(total_timesteps=256 * 16 * 2)
    return model, seen


def test_the_update_runs_on_its_own_threads_with_the_same_bits_as_one(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # make test sets 1 (checked below)
    if cpus_available() < 2:
        pytest.skip("one CPU: the update cannot take a second thread")
    assert TrainerConfig().update_threads == UPDATE_THREADS == 2
    one, seen_one = _trained_on(1)
    two, seen_two = _trained_on(2)
    assert seen_one == [1, 1] and seen_two == [2, 2]  # one minibatch per update, two updates
    assert torch.get_num_threads() == TORCH_THREADS  # the rollouts' threads come back after
    a, b = one.policy.state_dict(), two.policy.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    sa, sb = one.policy.optimizer.state_dict()["state"], two.policy.optimizer.state_dict()["state"]
    for i, state in sa.items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb[i][key])), key
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the process may take one thread: it takes one
    assert _trained_on(2)[1] == [1, 1]
    with pytest.raises(ConfigError, match=r"update_threads must be in \[1, 1024\], got 0"):
        with training_options(update_threads=0):
            pass
    with pytest.raises(ConfigError, match=r"trainer.update_threads must be >= 1, got 0"):
        validate(TrainerConfig(update_threads=0), "trainer")


def _logits(n: int, scale: float, seed: int) -> torch.Tensor:
    """(n, 4, 7) logits as the distribution lays them out: some options forbidden, the narrower
    components padded, the first rows' first component wholly forbidden."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, len(DIMS), max(DIMS), generator=g) * scale
    x = torch.where(torch.rand(x.shape, generator=g) < 0.3, torch.tensor(MASKED_LOGIT), x)
    for c, d in enumerate(DIMS):
        x[:, c, d:] = PADDING_LOGIT
    x[: max(1, n // 3), 0, :] = MASKED_LOGIT
    return x


@pytest.mark.parametrize("threads", [1, 2])
def test_the_components_log_softmax_is_torchs_to_the_last_bit(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for seed, n in enumerate([1, 3, 5, 17, 100, 255, 256, 1000, 4096, 4099]):
            for scale in (0.01, 1.0, 30.0, 1e4):
                x0 = _logits(n, scale, seed)
                results = []
                for f in (lambda t: torch.log_softmax(t, dim=-1), log_softmax_components):
                    x = x0.clone().requires_grad_(True)
                    y = f(x)
                    assert y.is_contiguous() and y.shape == x0.shape
                    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
                    entropy = -(y.exp() * y).sum(dim=(1, 2))
                    chosen = y.gather(2, torch.zeros(n, len(DIMS), 1, dtype=torch.long))
                    ((y * w).sum() + entropy.mean() + chosen.sum()).backward()
                    results.append((y.detach(), x.grad))
                (y_ref, g_ref), (y, g) = results
                assert torch.equal(y, y_ref), (n, scale)
                assert torch.equal(g, g_ref), (n, scale)
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.usefixtures("mlflow_store")  # an empty store, its tables made
def test_training_a_heuristic_or_a_bandit_loads_no_torch(tmp_path):
    """``train.py`` with a bandit (its training options, training, evaluation, logging) and an
    evaluation in forked workers never import torch (about 1.5 s of every such command)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = f"""
import runpy, sys
sys.argv = ["train.py", "agent=linucb", "trainer.total_timesteps=500", "eval.num_clients=30",
            "eval.horizon_days=5", "eval.num_seeds=1", "eval.n_boot=10", "trainer.progress=false",
            "tracking.uri=sqlite:///{tmp_path / "mlflow.db"}", "hydra.run.dir={tmp_path / "run"}"]
try:
    runpy.run_path("{root / "train.py"}", run_name="__main__")
except SystemExit as stop:
    assert not stop.code, stop.code
assert "torch" not in sys.modules, "train.py imported torch"
from agents.heuristics import HEURISTICS
from envs.config import load_setup
from evaluation.rollout import evaluate

class Watched(type(HEURISTICS["segment_rules"]())):  # acts in the forked evaluation workers
    def act(self, obs, masks):
        assert "torch" not in sys.modules, "an evaluation worker imported torch"
        return super().act(obs, masks)

evaluate([Watched(), HEURISTICS["no_send"]()], load_setup(), 20, 3, seeds=(1, 2),
         progress=False, workers=2)
print("no torch")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "no torch" in done.stdout, done.stderr[-2000:]
