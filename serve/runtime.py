"""The guarded runtime: ONNX + manifest in, one decision per client out. Needs numpy and onnxruntime only.

Order of work for each request: validate the features (names, numeric type, finiteness, ranges,
exact guard inputs: flags 0 or 1, one consent tier, whole counts), apply consent (a feature the
client's tier does not allow is zeroed, or the request refused, before the network and before
any reason is written), run the network, rebuild the guardrail masks from the features and the
manifest's rules, pick the best *allowed* action (a policy can never override consent, opt-outs,
quiet hours or caps), then explain it and flag sensitive sends for review. Each step has its
module: ``serve/request.py`` validates the table, ``serve/choice.py`` makes the masked choice,
``serve/explain.py`` writes the reasons; this one loads an export and runs the steps in order.

An export made with the masked choice inside its graph (``serve/graph_choice.py``; the
manifest's ``graph_choice`` section says so) makes the network pass, the masks and the choice in
one onnxruntime call; the runtime still checks every chosen action against the manifest's rules
and decides again in numpy the rows the graph marks doubtful (near ties of log-probabilities)
and any row it cannot vouch for (:meth:`PolicyRuntime.graph_decide`). Older exports, without
that section, are decided in numpy as before.

Loading verifies the whole export (``serve/integrity.py``): the manifest's integrity block holds
a SHA-256 of each of its sections and of the ONNX bytes (and, when the export was made with a
key, an HMAC-SHA256 over them), the fixed fields must equal the contract (``serve/contract.py``),
the rules must be complete and in range, and the session is built from the very bytes that were
hashed. An unsigned export loads with an :class:`UnsignedExportWarning` (anyone who can write its
folder can relax its rules), or not at all with ``require_signature=True``.

The policy's scores are never trusted to be finite: see ``serve/choice.py`` for what +inf, -inf
and NaN scores decide.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from serve import choice
from serve import circuit as circuit_state
from serve.choice import SCORE_CAP as SCORE_CAP
from serve.choice import Exploration as Exploration
from serve.choice import Explorer
from serve.contract import ACTION_LABELS
from serve.explain import EXPLAIN_AT_MOST as EXPLAIN_AT_MOST
from serve.explain import EXPLAIN_UP_TO as EXPLAIN_UP_TO
from serve.explain import WEEKDAYS as WEEKDAYS
from serve.explain import Explainer
from serve.explain import wants_reasons as wants_reasons
from serve.guards import Guards
from serve.integrity import FORMAT_VERSION as FORMAT_VERSION
from serve.integrity import KEY_ENV as KEY_ENV
from serve.integrity import ExportError as ExportError
from serve.integrity import UnsignedExportWarning as UnsignedExportWarning
from serve.integrity import canonical as canonical
from serve.integrity import check_signed, read_manifest, signing_key, verify_manifest
from serve.integrity import integrity_block as integrity_block
from serve.request import FeatureChecks
from serve.request import RequestError as RequestError
from serve.request import TooLarge as TooLarge

ONNX_FILE, MANIFEST_FILE = "policy.onnx", "manifest.json"
MAX_ROWS = 100_000
"""default most rows one request may carry"""
CONSENT_MODES = ("zero", "refuse")
NOT_ALLOWED_MODES = ("fallback", "refuse")
"""what shadow mode does with a firm's action the guards do not allow: replace it by the safe
fallback (``serve/circuit.py``), or refuse the request"""
KEY_COLUMNS = ("client_id", "day")
"""columns a request may carry beside the features: the client's id (whole number >= 0) and the
decision day (whole number, calendar days, 0 is a Monday); the decision log needs both"""
FIRM_COLUMNS = ("firm_slot", "firm_tone", "firm_channel", "firm_content")
"""the firm's own action, one column per component (slot 0 = no send), read in shadow mode"""
MAX_DAY = 3_660
"""largest decision day in absolute value (ten years, as ``evaluation.logs.MAX_DAY``)"""


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
    reasons: list[list[str]] | list[tuple[()]]
    """why this message (features that pushed most toward it; guardrails that changed it);
    empty tuples when decided with ``explain=False``"""
    needs_review: np.ndarray
    """a person approves the send first (sensitive tone on a sensitive topic)"""
    decision_id: list[str] = field(default_factory=list)
    """a fresh id per decision (uuid4, 32 hex digits): a send it leads to carries it"""
    propensity: np.ndarray = field(default_factory=lambda: np.ones(0))
    """exact probability, in (0, 1], that the runtime returns this action for this row: masks,
    consent and exploration applied (``serve/choice.py``, :class:`~serve.choice.Exploration`)"""
    policy_action: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.int64))
    """(N, 4) the policy's own choice: its best allowed action, before exploration, the firm's
    action of shadow mode and the circuit's fallback"""
    policy_probability: np.ndarray = field(default_factory=lambda: np.ones(0))
    """the policy's probability of its own choice among the allowed actions"""
    allowed_actions: np.ndarray = field(default_factory=lambda: np.ones(0, dtype=np.int64))
    """how many joint actions were allowed (no-send included)"""
    policy_version: str = ""
    """what decided: a registered model's ``models:/name/version`` or the export's digest"""
    exploration: str = "none"
    """the exploration setting (:attr:`serve.choice.Exploration.label`)"""
    mode: str = "serve"
    """``serve``, or ``shadow`` (the firm's action, carried by the request, is returned)"""
    client_id: np.ndarray | None = None
    """(N,) int64 client ids, where the request carried a ``client_id`` column"""
    day: np.ndarray | None = None
    """(N,) int32 decision days, where the request carried a ``day`` column"""

    @property
    def agree(self) -> np.ndarray:
        """(N,) the returned action is the policy's own choice (a no-send is one action)."""
        return same_actions(self.action, self.policy_action)

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per decision."""
        send = self.policy_action[:, 0] > 0
        policy = {
            "policy_slot": self._labels("slot", self.policy_action[:, 0], None),
            "policy_tone": self._labels("tone", self.policy_action[:, 1], send),
            "policy_channel": self._labels("channel", self.policy_action[:, 2], send),
            "policy_content": self._labels("content", self.policy_action[:, 3], send),
        }
        agree = self.agree
        return [
            {
                "decision_id": self.decision_id[i],
                "slot": self.slot[i],
                "tone": self.tone[i],
                "channel": self.channel[i],
                "content": self.content[i],
                "probability": float(self.probability[i]),
                "propensity": float(self.propensity[i]),
                "reasons": self.reasons[i],
                "needs_review": bool(self.needs_review[i]),
                **{k: v[i] for k, v in policy.items()},
                "policy_probability": float(self.policy_probability[i]),
                "agree": bool(agree[i]),
                "policy_version": self.policy_version,
                "exploration": self.exploration,
                "mode": self.mode,
            }
            for i in range(len(self.slot))
        ]

    def _labels(self, part: str, index: np.ndarray, send: np.ndarray | None) -> list[str | None]:
        names = np.array(ACTION_LABELS[part], dtype=object)[index]
        if send is None:
            return names.tolist()
        return np.where(send, names, np.array([None], dtype=object)).tolist()


def same_actions(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) whether (N, 4) actions ``a`` and ``b`` are the same action (any two no-sends are)."""
    both_quiet = (a[:, 0] == 0) & (b[:, 0] == 0)
    return both_quiet | (a == b).all(axis=1)


class PolicyRuntime:
    """Load with :meth:`load`; call :meth:`decide`."""

    def __init__(
        self,
        session: ort.InferenceSession,
        manifest: dict[str, Any],
        consent: str = "zero",
        max_rows: int = MAX_ROWS,
        circuit: str | Path | None = None,
        graph_choice: bool = True,
        exploration: Exploration | None = None,
        shadow: bool = False,
        not_allowed: str = "fallback",
        policy_version: str | None = None,
    ) -> None:
        if consent not in CONSENT_MODES:
            raise ValueError(f"consent must be one of {CONSENT_MODES}, got {consent!r}")
        if not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows must be a positive whole number, got {max_rows!r}")
        if not_allowed not in NOT_ALLOWED_MODES:
            raise ValueError(f"not_allowed must be one of {NOT_ALLOWED_MODES}, got {not_allowed!r}")
        self.explorer = Explorer(exploration)
        """the exploration setting and its random stream (``serve/choice.py``)"""
        if shadow and self.explorer.setting.kind == "softmax":
            raise ValueError(
                "shadow mode explores around the firm's action with epsilon only; got "
                f"{self.explorer.setting.label}"
            )
        self.shadow = shadow
        """requests carry the firm's own action (:data:`FIRM_COLUMNS`), which is returned"""
        self.not_allowed = not_allowed
        """shadow mode: a firm's action the guards refuse is replaced by the safe fallback
        (``fallback``) or refuses the request (``refuse``)"""
        self.session = session
        self.manifest = manifest
        self.policy_version = policy_version or export_digest(manifest)
        """what decides, as the decision log records it: ``models:/name/version`` where the
        caller says so, else the export's digest (``sha256:<hex>``)"""
        self.consent = consent
        self.max_rows = max_rows
        self.circuit = None if circuit is None else Path(circuit)
        """the circuit file (serve/circuit.py), checked on every request (parsed again only when it
        changes); None: no breaker"""
        if self.circuit is not None:
            circuit_state.read(self.circuit)  # refuse a bad file at load, not at the first request
        self.today = lambda: dt.datetime.now(dt.UTC).date()
        """today's date (UTC) for the circuit's first message; replace it to decide for another day"""
        self.guards = Guards(manifest)
        self.checks = FeatureChecks(manifest, self.guards.i_tier)
        """what a request's features must satisfy (``serve/request.py``)"""
        self.feature_names: list[str] = self.checks.feature_names
        self.low, self.high = self.checks.low, self.checks.high
        self.nvec = np.asarray(manifest["nvec"], dtype=np.int64)
        self.min_tier = self.checks.min_tier
        self.labels = manifest["action_labels"]
        self.score_rule: str = manifest["score_rule"]
        self.explainer = Explainer(
            self.feature_names, self.labels, self.min_tier, self.guards.i_tier
        )
        """the reasons (``serve/explain.py``)"""
        self._labels = {k: np.array(v, dtype=object) for k, v in self.labels.items()}
        self._bounds = choice.component_bounds(self.nvec)
        # slots open to each channel (not its quiet hours), ascending
        self._open_slots = [
            np.flatnonzero(~self.guards.quiet[:, k]) for k in range(self.guards.quiet.shape[1])
        ]
        self._all_slots = [np.arange(self.guards.quiet.shape[0])] * self.guards.quiet.shape[1]
        self._has_open_slot = np.array([len(rows) > 0 for rows in self._open_slots])
        self.graph_choice = graph_choice and self._check_graph_choice()
        """the graph makes the masked choice (an export with a ``graph_choice`` section, unless
        ``graph_choice=False``); else numpy makes it, as for exports made before"""

    def _check_graph_choice(self) -> bool:
        """Whether the manifest says the graph makes the masked choice; :class:`ExportError` when
        it says so but the section or the graph do not match."""
        section = self.manifest.get("graph_choice")
        if section is None:
            return False
        expected = {"outputs": list(choice.GRAPH_OUTPUTS), "score_rule": self.score_rule}
        if section != expected:
            raise ExportError(f"graph_choice must be {expected}, got {str(section)[:200]}")
        shapes = {o.name: o.shape for o in self.session.get_outputs()}
        missing = [name for name in choice.GRAPH_OUTPUTS if name not in shapes]
        if missing:
            raise ExportError(
                f"the manifest says the graph makes the masked choice, but the graph lacks the "
                f"output(s) {missing} (it gives {sorted(shapes)})"
            )
        return True

    @classmethod
    def load(
        cls,
        directory: str | Path,
        threads: int = 1,
        consent: str = "zero",
        max_rows: int = MAX_ROWS,
        key: str | bytes | None = None,
        circuit: str | Path | None = None,
        require_signature: bool = False,
        graph_choice: bool = True,
        exploration: Exploration | None = None,
        shadow: bool = False,
        not_allowed: str = "fallback",
        policy_version: str | None = None,
    ) -> PolicyRuntime:
        """Read ``manifest.json`` and ``policy.onnx`` from ``directory``; refuse anything not
        trustworthy (:class:`ExportError` naming what differs).

        An unsigned export loads with an :class:`UnsignedExportWarning` naming the risk, unless
        ``require_signature`` refuses it. A manifest that records it was signed but arrives
        without its signature is refused, key or not; an editor who also deletes that record
        and recomputes the hashes makes an export that cannot be told from an unsigned one, so
        only ``require_signature`` (the default of ``serve.http``) protects against that
        (see ``serve/integrity.py``).

        Args:
            directory: the export folder.
            threads: onnxruntime intra-op threads.
            consent: ``"zero"`` reads a feature the client's consent tier does not allow as 0;
                ``"refuse"`` rejects a request that carries one (non-zero).
            max_rows: most rows one request may carry.
            key: the signing key (default $CADENCE_EXPORT_KEY); when set, the export must carry
                a valid HMAC signature made with it.
            circuit: a circuit file (``serve/circuit.py``) naming segments tripped to the safe
                fallback; checked on every request, parsed again only when it changes.
            require_signature: refuse an export that carries no HMAC signature (unsigned, or
                signed with its signature stripped): anyone who can write an unsigned export's
                folder can relax the caps, quiet hours and consent rules and recompute its
                hashes. A signed export always needs the key to be verified.
            graph_choice: let the graph make the masked choice where the export has it inside
                (``serve/graph_choice.py``); False makes it in numpy for every export.
            exploration: epsilon or softmax temperature, and the seed of the draws
                (:class:`~serve.choice.Exploration`); None: the best allowed action, always.
            shadow: every request carries the firm's own action (:data:`FIRM_COLUMNS`), which
                is returned (explored around at epsilon); the policy's own choice is logged
                beside it.
            not_allowed: shadow mode, a firm's action the guards refuse: ``fallback`` replaces
                it by the safe fallback (a reason says so), ``refuse`` refuses the request.
            policy_version: what the decision log records as the policy (e.g.
                ``models:/cadence/3``); None: the export's digest.
        """
        directory = Path(directory)
        manifest_path, onnx_path = directory / MANIFEST_FILE, directory / ONNX_FILE
        for path in (manifest_path, onnx_path):
            if not path.is_file():
                raise ExportError(f"{path} is missing: not a complete export")
        manifest = read_manifest(manifest_path)
        onnx = onnx_path.read_bytes()  # hashed and loaded from these same bytes
        verify_manifest(manifest, onnx, signing_key(key), manifest_path)
        check_signed(manifest, manifest_path, require=require_signature)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for a bad graph
            raise ExportError(f"{onnx_path} is not a loadable ONNX graph: {exc}") from exc
        inputs, outputs = session.get_inputs(), {o.name: o.shape for o in session.get_outputs()}
        if [i.name for i in inputs] != ["obs"] or inputs[0].shape[1] != len(
            manifest["feature_names"]
        ):
            raise ExportError(
                f"{onnx_path} takes {[(i.name, i.shape) for i in inputs]}, not obs "
                f"[batch, {len(manifest['feature_names'])}]"
            )
        if "logits" not in outputs or outputs["logits"][1] != sum(manifest["nvec"]):
            raise ExportError(
                f"{onnx_path} gives {outputs}, not logits [batch, {sum(manifest['nvec'])}] "
                f"(the sum of nvec {manifest['nvec']})"
            )
        return cls(
            session,
            manifest,
            consent=consent,
            max_rows=max_rows,
            circuit=circuit,
            graph_choice=graph_choice,
            exploration=exploration,
            shadow=shadow,
            not_allowed=not_allowed,
            policy_version=policy_version,
        )

    def validate(self, features: Any) -> np.ndarray:
        """(N, D) float32 features, consent applied, from a mapping/DataFrame with one column per
        feature name (or an (N, D) array already in ``feature_names`` order). Integer, float32
        and float64 columns are all accepted. Raises :class:`RequestError` naming the feature
        (and row) at fault: never a guess toward sending (see ``serve/request.py``)."""
        return self.checks.validate(features, self.consent, self.max_rows)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(N, 19) per-component scores from the network."""
        return self.session.run(["logits"], {"obs": x})[0]

    def choose(
        self, logits: np.ndarray, x: np.ndarray, guarded: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) best allowed actions and their probabilities among the allowed actions
        (``guarded=False``: over every action, as if no rule applied). How the factored rules
        are combined, and what +inf, -inf and NaN scores decide: ``serve/choice.py``."""
        z = self.scores(logits).T  # (19, N), contiguous
        c, k = int(self.nvec[2]), int(self.nvec[3])  # channels, contents
        if guarded:
            channel_ok, content_ok = self.guards.allowed_channels_contents(x)  # (c, N), (k, N)
            channel_ok &= self._has_open_slot[:, None]  # a channel quiet all day takes nothing
        else:
            channel_ok = np.ones((c, z.shape[1]), dtype=bool)
            content_ok = np.ones((k, z.shape[1]), dtype=bool)
        open_slots = self._open_slots if guarded else self._all_slots
        return choice.choose(z, self.nvec, self.score_rule, channel_ok, content_ok, open_slots)

    def decide(
        self,
        features: Any,
        explain: bool = True,
        client_id: Any = None,
        day: Any = None,
        firm_action: Any = None,
    ) -> Decisions:
        """One decision per row of ``features`` (see :class:`Decisions`).

        ``features`` may also carry the columns :data:`KEY_COLUMNS` (or pass ``client_id`` and
        ``day``, a column or one day for all) and, in shadow mode, :data:`FIRM_COLUMNS` (or pass
        ``firm_action``, (N, 4)). The returned action is the best allowed one (serve mode) or
        the firm's (shadow mode), explored around by the runtime's exploration setting; its
        exact probability is ``propensity``. Tripped circuits still hand their rows to the safe
        fallback, with probability 1."""
        table, keys, firm = self.split_request(features)
        x = self.validate(table)
        n = len(x)
        client_id = self._ids(keys.get("client_id", client_id), n)
        day = self._days(keys.get("day", day), n)
        firm = self._firm(firm if firm is not None else firm_action, n)
        if self.graph_choice:
            logits, greedy, probability = self.graph_decide(x)
        else:
            logits = self.logits(x)
            greedy, probability = self.choose(logits, x)
        policy_action, policy_probability = greedy.copy(), probability.copy()
        reasons: list[list[str]] | list[tuple[()]] = [()] * n  # nothing to say without explain
        notes: dict[int, str] = {}
        base = greedy
        if firm is not None:
            base, notes = self._firm_checked(x, firm)
        actions, propensity, allowed, explored = self.explore(x, logits, base)
        tripped, first = self._tripped(x)
        if tripped is not None:  # the circuit breaker: these rows get the safe fallback
            actions[tripped] = circuit_state.fallback(
                self.feature_names,
                self.labels,
                x[tripped],
                self.guards.joint_mask(x[tripped]),
                first[tripped],
            )
            probability[tripped] = 1.0
            propensity[tripped] = 1.0
            explored &= ~tripped
        if not self.guards.is_allowed(x, actions).all():  # never: every draw is within the masks
            raise RuntimeError("an action outside the guards was drawn; no decision is returned")
        send = actions[:, 0] > 0
        if explain:
            reasons = self._reasons(x, logits, actions, greedy, tripped, explored, notes)
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
            decision_id=[uuid.uuid4().hex for _ in range(n)],
            propensity=propensity,
            policy_action=policy_action,
            policy_probability=policy_probability,
            allowed_actions=allowed,
            policy_version=self.policy_version,
            exploration=self.explorer.setting.label,
            mode="shadow" if firm is not None else "serve",
            client_id=client_id,
            day=day,
        )

    def _reasons(
        self,
        x: np.ndarray,
        logits: np.ndarray,
        actions: np.ndarray,
        greedy: np.ndarray,
        tripped: np.ndarray | None,
        explored: np.ndarray,
        notes: dict[int, str],
    ) -> list[list[str]]:
        """Why each row's action: the features that pushed most toward it, the guardrail that
        changed the policy's wish, exploration, the firm's action, the circuit."""
        reasons: list[list[str]] = [[] for _ in range(len(x))]
        wanted, _ = self.choose(logits, x, guarded=False)
        changed = (wanted != greedy).any(axis=1) & (actions == greedy).all(axis=1)
        for i, why in enumerate(self.guards.blocked_reason(x, wanted)):
            if why and changed[i]:
                reasons[i].append(why)
        for i, text in enumerate(self._explain(x, logits, actions)):
            reasons[i][:0] = text
        label = self.explorer.setting.label
        for i in np.flatnonzero(explored):
            reasons[i].append(f"exploration ({label}): an allowed action drawn at random")
        for i, note in notes.items():
            reasons[i].append(note)
        for i in np.flatnonzero(np.isnan(logits).any(axis=1)):
            reasons[i] = ["the policy's scores for this client are not numbers: no message"]
        if tripped is not None:
            segment = circuit_state.segment_of(self.feature_names, x)
            for i in np.flatnonzero(tripped):
                reasons[i] = [f"circuit tripped for {segment[i]}: the safe fallback decides"]
        return reasons

    def explore(
        self, x: np.ndarray, logits: np.ndarray, base: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(N, 4) actions drawn around the (N, 4) allowed ``base`` actions by the exploration
        setting, their exact (N,) probabilities (:meth:`probability_of`), the (N,) number of
        allowed actions, and (N,) True where the draw changed the action."""
        n, setting = len(x), self.explorer.setting
        parts = self._allowed_parts(x, logits)
        pair_ok, content_ok, allowed, dist, undefined = parts
        if setting.kind == "none":
            return base.copy(), np.ones(n), allowed, np.zeros(n, dtype=bool)
        if setting.kind == "softmax":
            drawn = dist.sample(self.explorer.uniforms(4, n))
            actions = np.where(undefined[:, None], base, drawn)
        else:
            tones, channels = int(self.nvec[1]), int(self.nvec[2])
            u = self.explorer.uniforms(5, n)
            drawn = choice.uniform(pair_ok, tones, content_ok, channels).sample(u[1:])
            explore = (u[0] < float(setting.epsilon)) & ~undefined
            actions = np.where(explore[:, None], drawn, base)
        propensity = self.probability_of(x, logits, base, actions, parts)
        # a drawn action has probability > 0, but a product of four parts may underflow
        propensity = np.maximum(propensity, np.finfo(np.float64).tiny)
        return actions, propensity, allowed, ~same_actions(actions, base)

    def probability_of(
        self,
        x: np.ndarray,
        logits: np.ndarray,
        base: np.ndarray,
        actions: np.ndarray,
        parts: tuple | None = None,
    ) -> np.ndarray:
        """(N,) exact probability that :meth:`explore` returns each row's (N, 4) ``actions``
        around the (N, 4) allowed ``base`` actions (the policy's best, or the firm's), for
        features ``x`` (consent applied) and the network's ``logits``; 0 for an action the
        guards do not allow.

        epsilon: ``(1 - eps) * [a = base] + eps / allowed``; softmax: the masked softmax of the
        policy's scores at the temperature (``base`` unused); none: ``[a = base]``. Rows the
        policy gives no distribution (a NaN score, or every allowed action of weight 0) keep
        ``base``: ``[a = base]``."""
        setting = self.explorer.setting
        _pair_ok, _content_ok, allowed, dist, undefined = parts or self._allowed_parts(x, logits)
        same = same_actions(actions, base).astype(np.float64)
        if setting.kind == "none":
            return same
        if setting.kind == "softmax":
            return np.where(undefined, same, dist.probability(actions))
        eps = float(setting.epsilon)
        uniform = self.guards.is_allowed(x, actions) / allowed
        return np.where(undefined, same, (1.0 - eps) * same + eps * uniform)

    def _allowed_parts(self, x: np.ndarray, logits: np.ndarray) -> tuple:
        """(allowed (slot, channel) pairs (slots * channels, N), allowed contents (contents, N),
        (N,) allowed joint actions, the masked softmax at the exploration's temperature (1 for
        epsilon), (N,) rows where the policy gives no distribution)."""
        channel_ok, content_ok = self.guards.allowed_channels_contents(x)
        channel_ok &= self._has_open_slot[:, None]
        pair_ok = choice.allowed_pairs(channel_ok, self._open_slots, int(self.nvec[0]) - 1)
        allowed = choice.allowed_count(pair_ok, int(self.nvec[1]), content_ok)
        z = np.ascontiguousarray(self.scores(logits).T)  # (19, N)
        temperature = self.explorer.setting.temperature or 1.0
        dist, undefined = choice.softmax(z, self.nvec, pair_ok, content_ok, float(temperature))
        return pair_ok, content_ok, allowed, dist, undefined

    def split_request(self, features: Any) -> tuple[Any, dict[str, np.ndarray], np.ndarray | None]:
        """(the feature table, the :data:`KEY_COLUMNS` it carried, the (N, 4) firm's action of
        :data:`FIRM_COLUMNS` or None). An array carries features only. :class:`RequestError`
        when firm columns come outside shadow mode, or only some of them."""
        if isinstance(features, np.ndarray) or not (
            isinstance(features, Mapping) or hasattr(features, "columns")
        ):
            return features, {}, None
        columns = list(features.columns) if hasattr(features, "columns") else list(features)
        keys = {c: features[c] for c in KEY_COLUMNS if c in columns}
        firm_given = [c for c in FIRM_COLUMNS if c in columns]
        if firm_given and not self.shadow:
            raise RequestError(
                f"column {firm_given[0]} is read in shadow mode only (the firm's own action); "
                "this runtime serves its own decisions (shadow=false)"
            )
        if firm_given and len(firm_given) < len(FIRM_COLUMNS):
            missing = [c for c in FIRM_COLUMNS if c not in columns]
            raise RequestError(f"the firm's action lacks column(s) {', '.join(missing)}")
        firm = (
            np.stack([_whole(c, features[c]) for c in FIRM_COLUMNS], axis=1) if firm_given else None
        )
        drop = [c for c in (*KEY_COLUMNS, *FIRM_COLUMNS) if c in columns]
        if not drop:
            return features, keys, firm
        if hasattr(features, "drop"):
            table = (
                features.drop(columns=drop) if hasattr(features, "iloc") else features.drop(drop)
            )
        else:
            table = {k: v for k, v in features.items() if k not in drop}
        return table, keys, firm

    def _ids(self, values: Any, n: int) -> np.ndarray | None:
        if values is None:
            return None
        ids = (
            np.broadcast_to(_whole("client_id", values), (n,))
            if np.ndim(values) == 0
            else (_whole("client_id", values))
        )
        if len(ids) != n or (ids < 0).any():
            raise RequestError(f"client_id must be {n} whole numbers >= 0, one per row")
        return ids.astype(np.int64)

    def _days(self, values: Any, n: int) -> np.ndarray | None:
        if values is None:
            return None
        days = _whole("day", np.atleast_1d(values))
        days = np.broadcast_to(days, (n,)) if len(days) == 1 else days
        if len(days) != n:
            raise RequestError(
                f"day must be one whole number, or one per row ({n}), got {len(days)}"
            )
        bad = np.flatnonzero(np.abs(days) > MAX_DAY)
        if len(bad):
            raise RequestError(
                f"day = {days[bad[0]]} in row {bad[0]} is outside -{MAX_DAY}..{MAX_DAY} (calendar "
                "days, 0 is a Monday)"
            )
        return days.astype(np.int32)

    def _firm(self, values: Any, n: int) -> np.ndarray | None:
        """The (N, 4) firm's action, checked (shadow mode needs it; serve mode refuses it)."""
        if values is None:
            if self.shadow:
                raise RequestError(
                    f"shadow mode needs the firm's own action: columns {', '.join(FIRM_COLUMNS)}"
                )
            return None
        if not self.shadow:
            raise RequestError("the firm's action is read in shadow mode only (shadow=false)")
        firm = np.asarray(values)
        if firm.shape != (n, 4):
            raise RequestError(f"the firm's action must be ({n}, 4), got shape {firm.shape}")
        firm = np.stack([_whole(c, firm[:, j]) for j, c in enumerate(FIRM_COLUMNS)], axis=1)
        bad = (firm < 0) | (firm >= self.nvec[None, :])
        if bad.any():
            row, j = np.argwhere(bad)[0]
            raise RequestError(
                f"{FIRM_COLUMNS[j]} = {firm[row, j]} in row {row} must lie in 0..{self.nvec[j] - 1}"
            )
        firm[firm[:, 0] == 0, 1:] = 0
        return firm

    def _firm_checked(self, x: np.ndarray, firm: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
        """The firm's actions held to the guards: one not allowed is replaced by the safe fallback
        (with a note per row) or refuses the request, as ``not_allowed`` says."""
        ok = self.guards.is_allowed(x, firm)
        if ok.all():
            return firm, {}
        rows = np.flatnonzero(~ok)
        why = self.guards.blocked_reason(x[rows], firm[rows])
        if self.not_allowed == "refuse":
            raise RequestError(
                f"the firm's action in row {rows[0]} is not allowed ({why[0]}); {len(rows)} row(s) "
                "break the guards"
            )
        firm = firm.copy()
        firm[rows] = circuit_state.fallback(
            self.feature_names, self.labels, x[rows], self.guards.joint_mask(x[rows])
        )
        notes = {
            int(r): f"the firm's action was not allowed ({w}): the safe fallback decides"
            for r, w in zip(rows, why, strict=True)
        }
        return firm, notes

    def graph_decide(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, 19) scores, (N, 4) best allowed actions and their probabilities from one run of a
        graph that makes the masked choice itself, held to the guards (:meth:`hold_to_guards`)."""
        logits, actions, probability, doubtful = self.session.run(
            ["logits", *choice.GRAPH_OUTPUTS], {"obs": x}
        )
        return logits, *self.hold_to_guards(x, logits, actions, probability, doubtful)

    def hold_to_guards(
        self,
        x: np.ndarray,
        logits: np.ndarray,
        actions: np.ndarray,
        probability: np.ndarray,
        doubtful: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The graph's (N, 4) actions and (N,) probabilities, checked: rows it marks doubtful are
        decided in numpy (:meth:`choose`), and so is any other row whose action is out of range
        or not allowed by the manifest's rules, or whose probability is not in [0, 1], with a
        :class:`RuntimeWarning` (a graph that disagrees with its manifest). No action gets past
        the guards either way."""
        n = len(x)
        if actions.shape != (n, 4) or probability.shape != (n,) or doubtful.shape != (n,):
            raise ExportError(
                f"the graph's choice has shapes {actions.shape}, {probability.shape}, "
                f"{doubtful.shape} for {n} rows; expected ({n}, 4), ({n},), ({n},)"
            )
        doubtful = doubtful.astype(bool, copy=False)
        in_range = ((actions >= 0) & (actions < self.nvec)).all(axis=1)
        actions = np.where(in_range[:, None], actions, 0).astype(np.int64, copy=False)
        probability = probability.astype(np.float64)  # a copy: rows below are replaced
        broken = ~in_range | ~self.guards.is_allowed(x, actions)
        broken |= ~((probability >= 0) & (probability <= 1))
        broken &= ~doubtful
        if broken.any():
            warnings.warn(
                f"the graph's choice for {int(broken.sum())} of {n} rows (first: row "
                f"{int(np.flatnonzero(broken)[0])}) is out of range or not allowed by the "
                "manifest's rules; those rows were decided in numpy",
                RuntimeWarning,
                stacklevel=3,
            )
        again = np.flatnonzero(broken | doubtful)
        if len(again):
            actions[again], probability[again] = self.choose(logits[again], x[again])
        return actions, probability

    def _tripped(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Rows whose segment the circuit file trips (None when none is), and the rows whose
        segment switched yesterday by the runtime's ``today``."""
        if self.circuit is None:
            return None, None
        state = circuit_state.read(self.circuit, today=self.today())
        if not state:
            return None, None
        segment = circuit_state.segment_of(self.feature_names, x)
        rows = circuit_state.covered(state, segment)
        if not rows.any():
            return None, None
        return rows, circuit_state.first_message(state, segment, self.today())

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """(N, 19) float64 scores the choice compares: per-component log-probabilities for
        ``log_probs`` exports (the graph gives raw logits), the additive scores otherwise; the
        transpose of a contiguous (19, N) array."""
        return choice.scores(logits, self.score_rule, self._bounds)

    def action_scores(self, logits: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """(N,) score of each given action: its components' sum, or the no-send entry."""
        return choice.action_scores(self.scores(logits), self.nvec, actions)

    def _explain(self, x: np.ndarray, logits: np.ndarray, actions: np.ndarray) -> list[list[str]]:
        """The two feature groups whose absence would lower the chosen action's score most."""
        groups = len(self.explainer.groups)
        without = self.logits(self.explainer.occluded(x))
        scores = self.action_scores(without, np.tile(actions, (groups, 1))).reshape(groups, len(x))
        with np.errstate(invalid="ignore"):  # NaN or capped scores: no group is quoted
            push = self.action_scores(logits, actions)[None, :] - scores  # (groups, N)
        return self.explainer.strongest(x, push)


def _whole(name: str, values: Any) -> np.ndarray:
    """(N,) int64 from a column of whole numbers, or :class:`RequestError` naming the column
    and the row of the first value that is not one."""
    array = np.asarray(values)
    if array.dtype.kind not in "iuf":
        raise RequestError(f"{name} must be whole numbers, got {array.dtype} values")
    array = array.reshape(-1)
    if array.dtype.kind == "f":
        bad = np.flatnonzero(
            ~np.isfinite(array) | (array != np.floor(array)) | (np.abs(array) > 2**53)
        )
        if len(bad):
            raise RequestError(f"{name} = {array[bad[0]]} in row {bad[0]} must be a whole number")
    return array.astype(np.int64)


def export_digest(manifest: dict[str, Any]) -> str:
    """``sha256:<hex>`` over the manifest's integrity sections (the hashes of every section and
    of the ONNX bytes), or over the whole manifest where it has none: one value per export."""
    block = manifest.get("integrity")
    covered = block["sections"] if isinstance(block, dict) and "sections" in block else manifest
    return "sha256:" + hashlib.sha256(canonical(covered)).hexdigest()
