"""The guarded runtime: ONNX + manifest in, one decision per client out. Needs numpy and onnxruntime only.

Order of work for each request: validate the features (names, finiteness, ranges), run the
network, rebuild the guardrail masks from the features and the manifest's rules, pick the best
*allowed* action (a policy can never override consent, opt-outs, quiet hours or caps), then
explain it and flag sensitive sends for review.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from serve.guards import Guards

FORMAT_VERSION = 1
"""manifest format this runtime reads"""
ONNX_FILE, MANIFEST_FILE = "policy.onnx", "manifest.json"
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


class ExportError(ValueError):
    """The export on disk cannot be trusted (tampered, incomplete, or of another format)."""


class RequestError(ValueError):
    """A request is malformed; the message names the feature (and row) at fault."""


@dataclass
class Decisions:
    """Per-client decisions of one request (arrays/lists of length N)."""

    action: np.ndarray
    """(N, 4) int64 (slot, tone, channel, content); slot 0 is no-send"""
    slot: list[str]
    tone: list[str | None]
    channel: list[str | None]
    content: list[str | None]
    probability: np.ndarray
    """the policy's probability of the chosen action among the allowed ones"""
    reasons: list[list[str]]
    """why this message (features that pushed most toward it; guardrails that changed it)"""
    needs_review: np.ndarray
    """a person approves the send first (sensitive tone on a sensitive topic)"""

    def records(self) -> list[dict[str, Any]]:
        return [{"slot": self.slot[i], "tone": self.tone[i], "channel": self.channel[i], "content": self.content[i],
                 "probability": float(self.probability[i]), "reasons": self.reasons[i],
                 "needs_review": bool(self.needs_review[i])} for i in range(len(self.slot))]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class PolicyRuntime:
    """Load with :meth:`load`; call :meth:`decide`."""

    def __init__(self, session: ort.InferenceSession, manifest: dict[str, Any]) -> None:
        self.session = session
        self.manifest = manifest
        self.feature_names: list[str] = list(manifest["feature_names"])
        self.low = np.asarray(manifest["feature_low"], dtype=np.float32)
        self.high = np.asarray(manifest["feature_high"], dtype=np.float32)
        self.nvec = np.asarray(manifest["nvec"], dtype=np.int64)
        self.labels = manifest["action_labels"]
        self.score_rule: str = manifest["score_rule"]
        self.guards = Guards(manifest)
        self._groups = self._feature_groups()
        self._labels = {k: np.array(v, dtype=object) for k, v in self.labels.items()}

    @classmethod
    def load(cls, directory: str | Path, threads: int = 1) -> PolicyRuntime:
        """Read ``manifest.json`` and ``policy.onnx`` from ``directory``; refuse anything not trustworthy."""
        directory = Path(directory)
        manifest_path, onnx_path = directory / MANIFEST_FILE, directory / ONNX_FILE
        for path in (manifest_path, onnx_path):
            if not path.is_file():
                raise ExportError(f"{path} is missing: not a complete export")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise ExportError(f"{manifest_path} is not valid JSON: {exc}") from exc
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise ExportError(f"{manifest_path} has format_version {version!r}; this runtime reads {FORMAT_VERSION}")
        required = ("feature_names", "feature_low", "feature_high", "nvec", "action_labels", "mask_rules",
                    "review_rules", "score_rule", "onnx_sha256")
        missing = [k for k in required if k not in manifest]
        if missing:
            raise ExportError(f"{manifest_path} lacks {missing}")
        actual = sha256(onnx_path)
        if actual != manifest["onnx_sha256"]:
            raise ExportError(f"{onnx_path} has SHA-256 {actual}, but the manifest says {manifest['onnx_sha256']}: "
                              "the file was changed after export; refusing to load it")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(onnx_path.read_bytes(), options, providers=["CPUExecutionProvider"])
        inputs = session.get_inputs()
        if [i.name for i in inputs] != ["obs"] or inputs[0].shape[1] != len(manifest["feature_names"]):
            raise ExportError(f"{onnx_path} takes {[(i.name, i.shape) for i in inputs]}, not obs "
                              f"[batch, {len(manifest['feature_names'])}]")
        return cls(session, manifest)

    # ----- validation ---------------------------------------------------------------------
    def validate(self, features: Any) -> np.ndarray:
        """(N, D) float32 features from a mapping/DataFrame with one column per feature name
        (or an (N, D) array already in ``feature_names`` order). Raises :class:`RequestError`."""
        if isinstance(features, np.ndarray):
            x = features
            if x.ndim != 2 or x.shape[1] != len(self.feature_names):
                raise RequestError(f"expected an array of shape (N, {len(self.feature_names)}), got {x.shape}")
        else:
            if not isinstance(features, Mapping) and not hasattr(features, "columns"):
                raise RequestError("a request is a table with one column per feature name")
            columns = list(features.columns) if hasattr(features, "columns") else list(features.keys())
            missing = [n for n in self.feature_names if n not in columns]
            extra = [c for c in columns if c not in self.feature_names]
            if missing:
                raise RequestError(f"missing feature(s): {', '.join(missing)}")
            if extra:
                raise RequestError(f"unknown feature(s): {', '.join(map(str, extra))}; expected {self.feature_names}")
            try:
                x = np.stack([np.asarray(features[n], dtype=np.float64) for n in self.feature_names], axis=1)
            except (TypeError, ValueError) as exc:
                bad = next((n for n in self.feature_names if not _numeric(features[n])), "?")
                raise RequestError(f"feature {bad} must be numeric") from exc
        x = np.asarray(x, dtype=np.float64)
        if len(x) == 0:
            raise RequestError("the request has no rows")
        finite = np.isfinite(x)
        if not finite.all():
            row, col = np.argwhere(~finite)[0]
            raise RequestError(f"feature {self.feature_names[col]} is not finite ({x[row, col]}) in row {row}")
        out_of_range = (x < self.low - 1e-6) | (x > self.high + 1e-6)
        if out_of_range.any():
            row, col = np.argwhere(out_of_range)[0]
            raise RequestError(f"feature {self.feature_names[col]} = {x[row, col]} in row {row} is outside "
                               f"[{self.low[col]}, {self.high[col]}]")
        return x.astype(np.float32)

    # ----- decisions ----------------------------------------------------------------------
    def logits(self, x: np.ndarray) -> np.ndarray:
        """(N, 19) per-component scores from the network."""
        return self.session.run(["logits"], {"obs": x})[0]

    def choose(self, logits: np.ndarray, x: np.ndarray, guarded: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) best allowed actions and their probabilities among the allowed actions.

        Works on the factored rules (allowed slot-channel pairs, allowed contents, every tone),
        so it never builds the 361 joint actions: the best allowed send is the best allowed pair
        plus the best tone plus the best allowed content, and the total weight of the allowed
        sends is the product of the three parts' sums. ``log_probs`` rule: send when the allowed
        sends together are likelier than no-send; ``additive``: when the best send beats it.
        """
        n, (s, t, c, _k) = len(x), self.nvec
        slot, tone = logits[:, 1:s], logits[:, s:s + t]
        channel, content = logits[:, s + t:s + t + c], logits[:, s + t + c:]
        if guarded:
            pairs_ok, content_ok = self.guards.allowed_parts(x)
        else:
            pairs_ok, content_ok = np.ones((n, s - 1, c), dtype=bool), np.ones((n, len(content[0])), dtype=bool)
        pair = np.where(pairs_ok, slot[:, :, None] + channel[:, None, :], -np.inf).reshape(n, -1)
        content = np.where(content_ok, content, -np.inf)
        best_pair, best_tone, best_content = pair.argmax(axis=1), tone.argmax(axis=1), content.argmax(axis=1)
        rows = np.arange(n)
        with np.errstate(invalid="ignore", divide="ignore"):
            best_send = pair[rows, best_pair] + tone[rows, best_tone] + content[rows, best_content]
            all_sends = _logsumexp(pair) + _logsumexp(tone) + _logsumexp(content)
        no_send = logits[:, 0]
        deciding = all_sends if self.score_rule == "log_probs" else best_send
        send = np.isfinite(best_send) & (deciding > no_send)
        actions = np.zeros((n, 4), dtype=np.int64)
        actions[send] = np.stack([1 + best_pair // c, best_tone, best_pair % c, best_content], axis=1)[send]
        chosen = np.where(send, best_send, no_send)
        return actions, np.exp(chosen - np.logaddexp(no_send, all_sends))

    def decide(self, features: Any, explain: bool = True) -> Decisions:
        """One decision per row of ``features`` (see :class:`Decisions`)."""
        x = self.validate(features)
        logits = self.logits(x)
        actions, probability = self.choose(logits, x)
        send = actions[:, 0] > 0
        reasons: list[list[str]] = [[] for _ in range(len(x))]
        if explain:
            wanted, _ = self.choose(logits, x, guarded=False)
            changed = (wanted != actions).any(axis=1)
            for i, why in enumerate(self.guards.blocked_reason(x, wanted)):
                if why and changed[i]:
                    reasons[i].append(why)
            for i, text in enumerate(self._explain(x, logits, actions)):
                reasons[i][:0] = text
        none = np.array([None], dtype=object)
        return Decisions(
            action=actions,
            slot=self._labels["slot"][actions[:, 0]].tolist(),
            tone=np.where(send, self._labels["tone"][actions[:, 1]], none).tolist(),
            channel=np.where(send, self._labels["channel"][actions[:, 2]], none).tolist(),
            content=np.where(send, self._labels["content"][actions[:, 3]], none).tolist(),
            probability=probability,
            reasons=reasons,
            needs_review=self.guards.needs_review(x, actions),
        )

    def action_scores(self, logits: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """(N,) score of each given action: its components' sum, or the no-send entry."""
        offsets = np.concatenate([[0], np.cumsum(self.nvec)[:-1]])
        send = logits[np.arange(len(logits))[:, None], actions + offsets[None, :]].sum(axis=1)
        return np.where(actions[:, 0] > 0, send, logits[:, 0])

    # ----- reasons ------------------------------------------------------------------------
    def _feature_groups(self) -> list[tuple[str, np.ndarray]]:
        names = self.feature_names
        prefixes = (("weekday", "weekday_"), ("consent", "consent_tier_"), ("opt_outs", "opted_out_"),
                    ("recent_sends", "sent_7d_"), ("recency", "days_since_last_send"), ("goal", "goal_"),
                    ("risk", "declared_risk"), ("market", "market_stress"), ("engagement", "ema_"))
        return [(g, np.array([i for i, n in enumerate(names) if n.startswith(p)])) for g, p in prefixes]

    def _explain(self, x: np.ndarray, logits: np.ndarray, actions: np.ndarray) -> list[list[str]]:
        """The two feature groups whose absence would lower the chosen action's score most."""
        n, groups = len(x), len(self._groups)
        occluded = np.repeat(x[None], groups, axis=0)
        for g, (_, cols) in enumerate(self._groups):
            occluded[g][:, cols] = 0.0
        without = self.logits(occluded.reshape(-1, x.shape[1]))
        scores = self.action_scores(without, np.tile(actions, (groups, 1))).reshape(groups, n)
        push = self.action_scores(logits, actions)[None, :] - scores  # (groups, N)
        out = []
        for i in range(n):
            order = np.argsort(-push[:, i])[:2]
            out.append([self._say(self._groups[g][0], x[i]) for g in order if push[g, i] > 1e-6])
        return out

    def _say(self, group: str, row: np.ndarray) -> str:
        v = dict(zip(self.feature_names, row.tolist(), strict=True))
        if group == "weekday":
            return f"it is {WEEKDAYS[int(np.argmax([v[f'weekday_{d}'] for d in ('mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun')]))]}"
        if group == "consent":
            return f"consent tier {int(np.argmax([v[f'consent_tier_{k}'] for k in range(4)]))}"
        if group == "opt_outs":
            out = [c for c in self.labels["channel"] if v[f"opted_out_{c}"] > 0.5]
            return f"opted out of {', '.join(out)}" if out else "reachable on every channel"
        if group == "recent_sends":
            return f"{int(sum(v[f'sent_7d_{c}'] for c in self.labels['channel']))} messages in the last 7 days"
        if group == "recency":
            return f"{v['days_since_last_send']:.0f} days since the last message"
        if group == "goal":
            goals = [n[5:] for n in self.feature_names if n.startswith("goal_") and v[n] > 0.5]
            return f"declared goal: {goals[0].replace('_', ' ')}" if goals else "no declared goal"
        if group == "risk":
            return f"declared risk tolerance {v['declared_risk']:.2f}"
        if group == "market":
            return f"market stress {v['market_stress']:.2f}"
        return "past engagement with these channels, times and tones"


def _logsumexp(a: np.ndarray) -> np.ndarray:
    """Row-wise log-sum-exp; -inf for a row with nothing allowed."""
    top = a.max(axis=1)
    safe = np.where(np.isfinite(top), top, 0.0)
    return np.log(np.exp(a - safe[:, None]).sum(axis=1)) + safe


def _numeric(values: Any) -> bool:
    try:
        np.asarray(values, dtype=np.float64)
        return True
    except (TypeError, ValueError):
        return False
