"""How the SB3 learners train, beside their hyperparameters: torch threads, the device, the fast
path (:class:`TrainingOptions`, set for a block by :func:`training_options`) and the client
slots per vector step (:func:`default_train_envs`). Without torch or SB3 at import, so that a
command training a heuristic or a bandit does not load them (``agents.sb3_agents`` reads these
options and re-exports their names)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

from envs.config import Setup
from simulate.config import ConfigError

TORCH_THREADS = 1
"""torch threads while training (``torch.set_num_threads``). One: at the default sizes the
networks are [64, 64] and a minibatch is a few thousand rows, where a second thread's hand-off
costs about what it saves, and the simulator's numpy work runs between the network calls on the
same core; the other core stays free for whatever runs beside (a second seed, the evaluation)."""

UPDATE_THREADS = 2
"""torch threads in the masked agents' update (``agents.sb3_agents.FastMaskablePPO.train``), capped by the
CPUs this process may use (:func:`cpus_available`). Two: a minibatch of 4,096 rows is large
enough that the second core pays for its hand-off (the linear layers, ``tanh`` and the
distribution's ``log_softmax`` split by clients; ``benchmarks/train_throughput.py
--update-threads 1`` measures the difference), while the rollouts, whose batches of 256 rows are
too small to split, keep :data:`TORCH_THREADS`. The same parameters to the last bit as one
thread (``tests/test_sb3_fast.py``: torch splits elementwise and row-wise work by rows, and the
matrix products' sums keep their order). Parallel launchers set 1 (``trainer.update_threads``),
so that two jobs on two cores do not contend."""


def cpus_available() -> int:
    """CPUs this process may use: its affinity where the OS reports one, and no more than
    ``OMP_NUM_THREADS`` where that is set to a positive number (the usual way to say how many
    threads a process may take: ``make test`` sets 1, its two workers already fill the cores)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    limit = os.environ.get("OMP_NUM_THREADS", "").strip()
    if limit.isdigit() and int(limit) > 0:
        cpus = min(cpus, int(limit))
    return cpus


@dataclass(frozen=True)
class TrainingOptions:
    """How SB3 learners train, beside their hyperparameters (:func:`training_options`)."""

    device: str = "cpu"
    """torch device of the networks and the update: ``cpu`` or ``cuda`` (``cuda:N``)"""
    fast: bool = True
    """the masked agents' fast path (:class:`FastMaskablePPO`: masks read once a step as one
    array, one masked multi-categorical per step, truncated episodes bootstrapped in one batch);
    False trains with sb3-contrib's own MaskablePPO path, as before (benchmarks compare them)"""
    threads: int = TORCH_THREADS
    """``torch.set_num_threads`` while training"""
    update_threads: int = UPDATE_THREADS
    """torch threads in the masked agents' update (at most the CPUs available; see
    :data:`UPDATE_THREADS`)"""


_OPTIONS: ContextVar[TrainingOptions] = ContextVar(
    "training_options",
    default=TrainingOptions(),  # noqa: B039 (frozen: no one can change the shared default)
)


def current_options() -> TrainingOptions:
    """The :class:`TrainingOptions` in force (see :func:`training_options`)."""
    return _OPTIONS.get()


@contextmanager
def training_options(**changes: Any) -> Iterator[TrainingOptions]:
    """Train with these :class:`TrainingOptions` fields changed inside the block, e.g.
    ``with training_options(device="cuda"): train_agent(...)``; the device is checked first."""
    options = replace(_OPTIONS.get(), **changes)
    check_device(options.device)
    for key in ("threads", "update_threads"):
        if not 1 <= getattr(options, key) <= 1024:
            raise ConfigError(f"{key} must be in [1, 1024], got {getattr(options, key)}")
    token = _OPTIONS.set(options)
    try:
        yield options
    finally:
        _OPTIONS.reset(token)


def check_device(device: str, key: str = "trainer.device") -> None:
    """Raise :class:`ConfigError` unless ``device`` is ``cpu`` or a CUDA device torch can use."""
    if device == "cpu":
        return
    if device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ConfigError(f"{key} must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    import torch  # only where a GPU is asked for: CPU runs of bandits and heuristics skip it

    if not torch.cuda.is_available():
        built = "with" if torch.backends.cuda.is_built() else "without"
        raise ConfigError(
            f"{key}={device}: torch {torch.__version__} (built {built} CUDA) finds no CUDA "
            f"device on this machine; use {key}=cpu"
        )
    index = int(device[5:]) if device.startswith("cuda:") else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(
            f"{key}={device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
            f"numbered from 0"
        )


TRAIN_ENVS: dict[str, int] = {}
"""client slots simulated together per vector step while training, per agent kind, where it is
not ``env.num_clients`` (``trainer.num_envs`` overrides). Empty: the default agent keeps 256.
1,024 clients a step with 2 epochs trains it 3x as fast per CPU second but, over training seeds
0-2 on the same 5,000 fresh clients, to 0.521 +- 0.031 of the oracle against 0.558 +- 0.021
(studies/speed_quality.py; docs/results/train_throughput.md), so it is not the default."""


def default_train_envs(name: str, setup: Setup) -> int:
    """Client slots per vector step the agent kind ``name`` trains with by default."""
    return TRAIN_ENVS.get(name, setup.env.num_clients)
