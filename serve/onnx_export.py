"""Export a trained policy to ``policy.onnx`` + ``manifest.json`` (and ``example_request.json``,
a request body for the served policy built from simulated clients).

The graph takes ``obs`` float32 [batch, obs_dim] (raw features: the scaling is inside) and
gives ``action`` int64 [batch, 4] (the deterministic action, no masks), ``logits`` float32
[batch, 19] (per-component scores: each component's raw logits for SB3 agents; additive scores
for bandits) and the masked choice made inside the graph under the manifest's rules
(``serve/graph_choice.py``): ``choice`` int64 [batch, 4], ``choice_probability`` float64
[batch] and ``choice_doubtful`` bool [batch], the rows the runtime decides again in numpy.

The export is written into a new sibling folder and then swapped in for ``out`` in one step, so
a reader (or a killed export) sees the old export or the new one, never a mix, and never none.
The folder is 0755 and its files 0644, so a server running under another account can read it.
The manifest's integrity block covers every manifest section and the ONNX bytes; with a key
(``key=`` or $CADENCE_EXPORT_KEY) it is an HMAC-SHA256 signature the runtime then requires, and
the ``signing`` section records that the export was signed, and by which key
(``serve/integrity.py`` says what that does and does not protect).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import json
import os
import platform
import shutil
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx as onnx_format
import torch
from stable_baselines3.common.policies import BaseModel
from torch import nn

from agents.bandits import (
    CONTEXT_BIAS,
    CONTEXT_CAP,
    CONTEXT_WEIGHTS,
    N_ACTION_FEATURES,
    N_CONTEXT,
    LinearBandit,
)
from agents.base import Policy
from agents.heuristics import RandomPolicy
from agents.sb3_agents import SB3Policy
from envs.config import GuardrailConfig, load_setup
from envs.consent import MIN_TIER
from envs.core import CadenceCore
from envs.features import FEATURE_NAMES, OBS_HIGH
from envs.spaces import NVEC
from serve.choice import GRAPH_OUTPUTS
from serve.graph_choice import append_choice
from serve.guards import Guards
from serve.integrity import signing_section
from serve.request import FeatureChecks
from serve.runtime import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    ONNX_FILE,
    integrity_block,
    signing_key,
    verify_manifest,
)
from simulate.labels import ACTION_LABELS, CHANNELS, CONTENTS, N_SLOTS

SPLITS = [int(k) for k in NVEC]


class NotExportable(ValueError):
    """The policy has no stateless deterministic action over the 19 per-component scores."""


def _decide(logits: torch.Tensor, rule: str) -> torch.Tensor:
    """Deterministic (slot, tone, channel, content) from per-component scores, no masks."""
    slot, tone, channel, content = torch.split(logits, SPLITS, dim=1)
    sends = slot[:, 1:]
    best_slot = 1 + torch.argmax(sends, dim=1)
    others = [torch.argmax(t, dim=1) for t in (tone, channel, content)]
    if (
        rule == "log_probs"
    ):  # raw logits: P(no send) < 1/2, i.e. its logit below the sends' log-sum-exp
        send = slot[:, 0] < torch.logsumexp(sends, dim=1)
    else:  # additive scores: the best send's total against no-send's 0
        send = (
            sends.max(dim=1).values + sum(t.max(dim=1).values for t in (tone, channel, content)) > 0
        )
    # no-send is (0, 0, 0, 0), as in the flat view: the other components mean nothing then
    return torch.stack([best_slot, *others], dim=1) * send[:, None].to(torch.int64)


class SB3Graph(nn.Module):
    """Scaling and the actor network of an on-policy SB3 agent; ``logits`` are the raw
    per-component logits (log-probabilities up to a constant per component, which the runtime
    removes: normalising inside the graph cost more than the network's last layer)."""

    rule = "log_probs"

    def __init__(self, policy: Any) -> None:
        super().__init__()
        self.policy = policy
        self.register_buffer("scale", torch.as_tensor(1.0 / OBS_HIGH, dtype=torch.float32))

    def forward(self, obs: torch.Tensor):
        x = obs * self.scale
        width = int(self.policy.observation_space.shape[0])
        if width > x.shape[1]:  # an asymmetric critic's privileged inputs: the actor ignores them
            x = torch.cat([x, torch.zeros(x.shape[0], width - x.shape[1], dtype=x.dtype)], dim=1)
        # the actor's own features (a critic with its own extractor is left out)
        features = BaseModel.extract_features(self.policy, x, self.policy.pi_features_extractor)
        raw = self.policy.action_net(self.policy.mlp_extractor.forward_actor(features))
        return _decide(raw, self.rule), raw


class BanditGraph(nn.Module):
    """A linear bandit's score, additive over action components: no-send 0, a send the sum of
    its components' scores (the send flag is folded into the slot scores)."""

    rule = "additive"

    def __init__(self, bandit: LinearBandit) -> None:
        super().__init__()
        theta = bandit.theta[: N_CONTEXT * N_ACTION_FEATURES].reshape(N_CONTEXT, N_ACTION_FEATURES)
        self.register_buffer("theta", torch.as_tensor(theta, dtype=torch.float32))
        # the same context map the in-process bandit applies (agents.bandits.client_context)
        for name, value in (
            ("context_weights", CONTEXT_WEIGHTS),
            ("context_bias", CONTEXT_BIAS),
            ("context_cap", CONTEXT_CAP),
        ):
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.float32))

    def forward(self, obs: torch.Tensor):
        context = torch.minimum(obs, self.context_cap) @ self.context_weights + self.context_bias
        s = context @ self.theta  # (N, 19): send flag, slots, tones, channels, contents
        slot = torch.cat([torch.zeros_like(s[:, :1]), s[:, :1] + s[:, 1 : 1 + N_SLOTS]], dim=1)
        logits = torch.cat([slot, s[:, 1 + N_SLOTS :]], dim=1)
        return _decide(logits, self.rule), logits


def graph_for(policy: Policy) -> nn.Module:
    """The exportable module of ``policy``, by the form it declares (:attr:`Policy.export_kind`),
    or :class:`NotExportable` with the reason it gives (:attr:`Policy.export_refusal`)."""
    kind = policy.export_kind
    if kind is None:
        raise NotExportable(policy.export_refusal)
    if kind == "linear" and isinstance(policy, LinearBandit):
        return BanditGraph(policy)
    if kind == "network" and isinstance(policy, SB3Policy):
        return SB3Graph(policy.model.policy)
    raise NotExportable(
        f"{policy.name} declares export_kind {kind!r}, which the export builds for "
        "agents.bandits.LinearBandit ('linear') and agents.sb3_agents.SB3Policy ('network') only"
    )


RENAME_EXCHANGE = 2
"""renameat2 flag: swap two paths in one step (Linux)"""


def _exchange(a: Path, b: Path) -> bool:
    """Swap folders ``a`` and ``b`` atomically; False where the system cannot."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    done = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), RENAME_EXCHANGE)
    return done == 0


def swap_in(new: Path, out: Path) -> None:
    """Make folder ``new`` the folder ``out``: an atomic exchange where the system offers one
    (the old export then goes), else rename the old aside, rename the new in, drop the old."""
    if not out.exists():
        os.rename(new, out)
        return
    if _exchange(new, out):
        shutil.rmtree(new)  # ``new`` now holds the previous export
        return
    aside = out.with_name(f".{out.name}.previous")
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(out, aside)
    os.rename(new, out)
    shutil.rmtree(aside)


FOLDER_MODE, FILE_MODE = 0o755, 0o644
"""an export's folder and files: readable by a server running under another account (the
temporary folder they are written in is created 0700), writable by the exporting account only"""


def _readable_by_all(folder: Path) -> None:
    """Give ``folder`` :data:`FOLDER_MODE` and each file in it :data:`FILE_MODE`, whatever the
    umask, before it is swapped in (so the export never appears with other modes)."""
    for path in folder.iterdir():
        os.chmod(path, FILE_MODE)
    os.chmod(folder, FOLDER_MODE)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def package_versions() -> dict[str, str]:
    """The versions of Python and of the packages an export depends on (a new dict each call)."""
    return dict(_package_versions())


@functools.cache
def _package_versions() -> dict[str, str]:
    """Read once per process: each version is read from its package's metadata on disk
    (~1.5 ms each), and what the process imported does not change while it runs."""
    out = {"python": platform.python_version()}
    for name in (
        "cadence-rl",
        "numpy",
        "torch",
        "onnx",
        "onnxruntime",
        "stable-baselines3",
        "gymnasium",
        "mlflow",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def export_policy(
    policy: Policy,
    out: str | Path,
    guardrails: GuardrailConfig | None = None,
    run_id: str | None = None,
    metrics: dict[str, float] | None = None,
    key: str | bytes | None = None,
    graph_choice: bool = True,
) -> Path:
    """Write ``policy.onnx`` and ``manifest.json`` into ``out``; returns ``out``.

    Both files are written and checked in a new folder beside ``out``, which is then swapped in
    (see the module notes); a signing key (``key`` or $CADENCE_EXPORT_KEY) signs the manifest.
    ``graph_choice`` puts the masked choice inside the graph (outputs ``choice``,
    ``choice_probability``, ``choice_doubtful``; the manifest's ``graph_choice`` section says
    so); without it the runtime makes the choice in numpy, as for exports made before.
    """
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    graph = graph_for(policy).eval()
    example = torch.zeros((2, len(FEATURE_NAMES)), dtype=torch.float32)
    new = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    try:
        torch.onnx.export(
            graph,
            (example,),
            str(new / ONNX_FILE),
            input_names=["obs"],
            output_names=["action", "logits"],
            dynamic_axes={"obs": {0: "batch"}, "action": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        manifest = build_manifest(policy.name, graph.rule, guardrails, run_id, metrics)
        if graph_choice:  # the masked choice inside the graph (serve/graph_choice.py)
            model = append_choice(onnx_format.load(str(new / ONNX_FILE)), manifest)
            _write(new / ONNX_FILE, model.SerializeToString())
            manifest["graph_choice"] = graph_choice_section(graph.rule)
        onnx = (new / ONNX_FILE).read_bytes()
        manifest["signing"] = signing_section(signing_key(key))
        manifest["onnx_sha256"] = hashlib.sha256(onnx).hexdigest()
        manifest["integrity"] = integrity_block(manifest, onnx, signing_key(key))
        verify_manifest(manifest, onnx, signing_key(key), new / MANIFEST_FILE)
        _write(new / MANIFEST_FILE, json.dumps(manifest, indent=2).encode())
        _write(new / EXAMPLE_FILE, json.dumps(example_request(manifest), indent=1).encode())
        _sync(new / ONNX_FILE)  # on disk before the swap makes it the export
        _readable_by_all(new)
        swap_in(new, out)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    return out


EXAMPLE_FILE = "example_request.json"
"""a request body for the served policy, written beside the export (not part of what is hashed:
the runtime never reads it)"""


def example_request(manifest: dict[str, Any], rows: int = 3, seed: int = 0) -> dict[str, Any]:
    """A body the served policy accepts (``dataframe_split``, as ``serve.http`` and MLflow's
    scoring server read it): ``rows`` clients of the default population after 14 days of a random
    policy's messages, their features checked as a request is (consent applied: a feature the
    client's tier does not allow is 0, so the body passes with ``consent="refuse"`` too)."""
    core = CadenceCore(load_setup(), rows, client_id_offset=1 << 40)
    obs, policy = core.reset(seed), RandomPolicy(seed)
    for _ in range(14):
        obs = core.step(policy.act(obs, core.joint_masks())).obs
    checks = FeatureChecks(manifest, Guards(manifest).i_tier)
    x = checks.validate(np.asarray(obs, dtype=np.float32), "zero", rows)
    return {"dataframe_split": {"columns": list(manifest["feature_names"]), "data": x.tolist()}}


def graph_choice_section(rule: str) -> dict[str, Any]:
    """The manifest's ``graph_choice`` section: the outputs the graph's masked choice gives and
    the score rule it was built for (hashed with the rest, so the runtime trusts it as much)."""
    return {"outputs": list(GRAPH_OUTPUTS), "score_rule": rule}


def build_manifest(
    agent: str,
    rule: str,
    guardrails: GuardrailConfig | None,
    run_id: str | None,
    metrics: dict[str, float] | None,
) -> dict:
    """The manifest without its integrity block: the contract, the rules (every channel and
    content named, so nothing falls back to a default when read), provenance."""
    g = guardrails or GuardrailConfig()
    return {
        "format_version": FORMAT_VERSION,
        "agent": agent,
        "score_rule": rule,
        "feature_names": list(FEATURE_NAMES),
        "feature_low": [0.0] * len(FEATURE_NAMES),
        "feature_high": [float(h) for h in OBS_HIGH],
        "feature_min_tier": [int(t) for t in MIN_TIER],
        "nvec": [int(k) for k in NVEC],
        "action_labels": {k: list(v) for k, v in ACTION_LABELS.items()},
        "mask_rules": {
            "quiet_hours": {c: list(g.quiet_hours.get(c, [])) for c in CHANNELS},
            "max_per_week": int(g.max_per_week),
            "channel_caps": {c: int(g.channel_caps.get(c, 7)) for c in CHANNELS},
            "content_min_tier": {k: int(g.content_min_tier.get(k, 0)) for k in CONTENTS},
        },
        "review_rules": {
            "tones": ["urgent", "opportunity"],
            "goals": ["saver_debt", "retirement"],
            "loss_contents": ["market_update"],
        },
        "training_run_id": run_id,
        "metrics": {k: float(v) for k, v in (metrics or {}).items() if np.isfinite(v)},
        "package_versions": package_versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
