"""The guarded runtime: ONNX + manifest in, one decision per client out. Needs numpy and onnxruntime only.

Order of work for each request: validate the features (names, numeric type, finiteness, ranges,
exact guard inputs: flags 0 or 1, one consent tier, whole counts), apply consent (a feature the
client's tier does not allow is zeroed, or the request refused, before the network and before
any reason is written), run the network, rebuild the guardrail masks from the features and the
manifest's rules, pick the best *allowed* action (a policy can never override consent, opt-outs,
quiet hours or caps), then explain it and flag sensitive sends for review.

Loading verifies the whole export (``serve/integrity.py``): the manifest's integrity block holds
a SHA-256 of each of its sections and of the ONNX bytes (and, when the export was made with a
key, an HMAC-SHA256 over them), the fixed fields must equal the contract (``serve/contract.py``),
the rules must be complete and in range, and the session is built from the very bytes that were
hashed. An unsigned export loads with an :class:`UnsignedExportWarning` (anyone who can write its
folder can relax its rules), or not at all with ``require_signature=True``.

The policy's scores are never trusted to be finite: see :meth:`PolicyRuntime.choose` for what
+inf, -inf and NaN scores decide.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from serve import circuit as circuit_state
from serve import contract
from serve.guards import Guards
from serve.integrity import FORMAT_VERSION as FORMAT_VERSION
from serve.integrity import KEY_ENV as KEY_ENV
from serve.integrity import ExportError as ExportError
from serve.integrity import UnsignedExportWarning as UnsignedExportWarning
from serve.integrity import canonical as canonical
from serve.integrity import check_signed, read_manifest, signing_key, verify_manifest
from serve.integrity import integrity_block as integrity_block

ONNX_FILE, MANIFEST_FILE = "policy.onnx", "manifest.json"
MAX_ROWS = 100_000
"""default most rows one request may carry"""
CONSENT_MODES = ("zero", "refuse")
EXPLAIN_UP_TO = 100
"""served without an ``explain`` param, requests of at most this many rows get reasons"""
EXPLAIN_AT_MOST = 1_000
"""served, ``explain: true`` is refused past this many rows (reasons cost one network pass per
feature group: 100,000 rows took 4.9 s and 1.3 GB)"""


def wants_reasons(explain: bool | None, rows: int) -> bool:
    """``explain`` if given, else whether ``rows`` is small enough for reasons by default."""
    return bool(explain) if explain is not None else rows <= EXPLAIN_UP_TO


SCORE_CAP = 1e300
"""+inf scores read as this (float64; the graph gives float32 scores, at most about 3.4e38)"""

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


class RequestError(ValueError):
    """A request is malformed; the message names the feature (and row) at fault."""


class TooLarge(RequestError):
    """A request over the size limits (more rows than allowed; over HTTP, 413)."""


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

    def records(self) -> list[dict[str, Any]]:
        return [
            {
                "slot": self.slot[i],
                "tone": self.tone[i],
                "channel": self.channel[i],
                "content": self.content[i],
                "probability": float(self.probability[i]),
                "reasons": self.reasons[i],
                "needs_review": bool(self.needs_review[i]),
            }
            for i in range(len(self.slot))
        ]


class PolicyRuntime:
    """Load with :meth:`load`; call :meth:`decide`."""

    def __init__(
        self,
        session: ort.InferenceSession,
        manifest: dict[str, Any],
        consent: str = "zero",
        max_rows: int = MAX_ROWS,
        circuit: str | Path | None = None,
    ) -> None:
        if consent not in CONSENT_MODES:
            raise ValueError(f"consent must be one of {CONSENT_MODES}, got {consent!r}")
        if not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows must be a positive whole number, got {max_rows!r}")
        self.session = session
        self.manifest = manifest
        self.consent = consent
        self.max_rows = max_rows
        self.circuit = None if circuit is None else Path(circuit)
        """the circuit file (serve/circuit.py), checked on every request (parsed again only when it
        changes); None: no breaker"""
        if self.circuit is not None:
            circuit_state.read(self.circuit)  # refuse a bad file at load, not at the first request
        self.today = lambda: dt.datetime.now(dt.UTC).date()
        """today's date (UTC) for the circuit's first message; replace it to decide for another day"""
        self.feature_names: list[str] = list(manifest["feature_names"])
        self.low = np.asarray(manifest["feature_low"], dtype=np.float32)
        self.high = np.asarray(manifest["feature_high"], dtype=np.float32)
        self._low_ok, self._high_ok = (
            self.low - 1e-6,
            self.high + 1e-6,
        )  # float32, as the checks below
        self.nvec = np.asarray(manifest["nvec"], dtype=np.int64)
        self.min_tier = np.asarray(manifest["feature_min_tier"], dtype=np.int64)
        names = self.feature_names
        kinds = dict(zip(contract.FEATURE_NAMES, contract.FEATURE_KIND, strict=True))
        self._flags = np.array([i for i, n in enumerate(names) if kinds[n] == "flag"])
        self._counts = np.array([i for i, n in enumerate(names) if kinds[n] == "count"])
        self._one_hot = [
            (prefix, np.array([i for i, n in enumerate(names) if n.startswith(prefix)]), lo, hi)
            for prefix, (lo, hi) in contract.ONE_HOT_GROUPS.items()
        ]
        self._visible = np.stack(
            [(self.min_tier <= t).astype(np.float32) for t in range(contract.N_TIERS)]
        )  # (tiers, D): 1 where a client of that tier lets the policy see the feature
        self._gated = bool((self.min_tier > 0).any())
        self.labels = manifest["action_labels"]
        self.score_rule: str = manifest["score_rule"]
        self.guards = Guards(manifest)
        self._groups = self._feature_groups()
        self._labels = {k: np.array(v, dtype=object) for k, v in self.labels.items()}
        ends = np.cumsum(self.nvec)
        self._bounds = list(
            zip((0, *ends[:-1].tolist()), ends.tolist(), strict=True)
        )  # each component's columns
        # slots open to each channel (not its quiet hours), ascending
        self._open_slots = [
            np.flatnonzero(~self.guards.quiet[:, k]) for k in range(self.guards.quiet.shape[1])
        ]
        self._all_slots = [np.arange(self.guards.quiet.shape[0])] * self.guards.quiet.shape[1]
        self._has_open_slot = np.array([len(rows) > 0 for rows in self._open_slots])

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
        return cls(session, manifest, consent=consent, max_rows=max_rows, circuit=circuit)

    # ----- validation ---------------------------------------------------------------------
    def validate(self, features: Any) -> np.ndarray:
        """(N, D) float32 features, consent applied, from a mapping/DataFrame with one column per
        feature name (or an (N, D) array already in ``feature_names`` order). Integer, float32
        and float64 columns are all accepted. Raises :class:`RequestError` naming the feature
        (and row) at fault: never a guess toward sending."""
        x = self._matrix(features)
        # NaN and infinities fail both comparisons, so one pass finds them with the ranges
        if not ((x >= self._low_ok) & (x <= self._high_ok)).all():
            self._raise_range(x)
        flags = x[:, self._flags]
        if not ((flags == 0) | (flags == 1)).all():
            row, col = np.argwhere((flags != 0) & (flags != 1))[0]
            name = self.feature_names[self._flags[col]]
            raise RequestError(f"feature {name} = {flags[row, col]} in row {row} must be 0 or 1")
        counts = x[:, self._counts]
        if not (counts == np.floor(counts)).all():
            row, col = np.argwhere(counts != np.floor(counts))[0]
            name = self.feature_names[self._counts[col]]
            raise RequestError(
                f"feature {name} = {counts[row, col]} in row {row} must be a whole number"
            )
        for prefix, cols, fewest, most in self._one_hot:
            set_ = x[:, cols].sum(axis=1)
            bad = (set_ < fewest) | (set_ > most)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise RequestError(
                    f"features {prefix}* in row {row} have {int(set_[row])} set; "
                    + ("exactly one must be" if fewest == most else f"at most {most} may be")
                )
        x = np.array(x, dtype=np.float32)  # a copy: consent below never writes the caller's data
        if self._gated:
            tier = np.argmax(x[:, self.guards.i_tier], axis=1)
            visible = self._visible[tier]  # (N, D)
            if self.consent == "refuse":
                leaked = (visible == 0) & (x != 0)
                if leaked.any():
                    row, col = np.argwhere(leaked)[0]
                    raise RequestError(
                        f"feature {self.feature_names[col]} in row {row} is set, but the client's "
                        f"consent tier {tier[row]} does not allow it (tier "
                        f"{self.min_tier[col]} needed)"
                    )
            x *= visible
        return x

    def _check_rows(self, rows: int) -> None:
        """Refuse an empty request or one over ``max_rows`` before any copy is made of it."""
        if rows == 0:
            raise RequestError("the request has no rows")
        if rows > self.max_rows:
            raise TooLarge(
                f"the request has {rows:,} rows; at most {self.max_rows:,} are allowed per "
                "request (split it)"
            )

    def _matrix(self, features: Any) -> np.ndarray:
        """(N, D) float32 or float64 array of the request, columns in contract order."""
        if isinstance(features, np.ndarray):
            if features.ndim != 2 or features.shape[1] != len(self.feature_names):
                raise RequestError(
                    f"expected an array of shape (N, {len(self.feature_names)}), got {features.shape}"
                )
            self._check_rows(len(features))
            if features.dtype.kind == "c":
                raise RequestError(
                    f"features must be numbers (integer or float), got dtype {features.dtype}"
                )
            if features.dtype.kind in "iuf":
                return features if features.dtype == np.float32 else features.astype(np.float64)
            # booleans, strings, objects: the first cell that is not a number is named
            return np.stack(
                [_column(name, features[:, j]) for j, name in enumerate(self.feature_names)],
                axis=1,
            )
        if not isinstance(features, Mapping) and not hasattr(features, "columns"):
            raise RequestError("a request is a table with one column per feature name")
        columns = list(features.columns) if hasattr(features, "columns") else list(features.keys())
        missing = [n for n in self.feature_names if n not in columns]
        extra = [c for c in columns if c not in self.feature_names]
        if missing:
            raise RequestError(f"missing feature(s): {', '.join(missing)}")
        if extra:
            raise RequestError(
                f"unknown feature(s): {', '.join(map(str, extra))}; expected {self.feature_names}"
            )
        first = _column(self.feature_names[0], features[self.feature_names[0]])
        self._check_rows(len(first))
        out = np.empty((len(first), len(self.feature_names)), dtype=np.float64)
        for j, name in enumerate(self.feature_names):
            column = first if j == 0 else _column(name, features[name])
            if len(column) != len(out):
                raise RequestError(f"feature {name} has {len(column)} rows; others have {len(out)}")
            out[:, j] = column
        return out

    def _raise_range(self, x: np.ndarray) -> None:
        finite = np.isfinite(x)
        if not finite.all():
            row, col = np.argwhere(~finite)[0]
            raise RequestError(
                f"feature {self.feature_names[col]} is not finite ({x[row, col]}) in row {row}"
            )
        row, col = np.argwhere((x < self._low_ok) | (x > self._high_ok))[0]
        raise RequestError(
            f"feature {self.feature_names[col]} = {x[row, col]} in row {row} is outside "
            f"[{self.low[col]}, {self.high[col]}]"
        )

    # ----- decisions ----------------------------------------------------------------------
    def logits(self, x: np.ndarray) -> np.ndarray:
        """(N, 19) per-component scores from the network."""
        return self.session.run(["logits"], {"obs": x})[0]

    def choose(
        self, logits: np.ndarray, x: np.ndarray, guarded: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) best allowed actions and their probabilities among the allowed actions.

        Works on the factored rules (allowed channels, the quiet slots of each channel, allowed
        contents, every tone), so it never builds the 361 joint actions: the best allowed send is
        the best allowed (slot, channel) pair plus the best tone plus the best allowed content
        (ties go to the lowest slot, then channel, as in the in-process policies), and the total
        weight of the allowed sends is the product of the parts' sums. ``log_probs`` rule: send
        when the allowed sends together are likelier than no-send; ``additive``: when the best
        send beats it.

        Laid out one row per score and one column per client (long vectors for numpy), in
        float64 as the in-process policies.

        Scores that are not finite never give an action outside the masks or a probability that
        is not a number in [0, 1]:

        * +inf reads as :data:`SCORE_CAP` (1e300, above any float32 score): under ``log_probs``
          a component's probability is then shared equally by its +inf entries (the softmax's
          limit), and among equals the lowest index wins, as for any tie. Under ``additive``
          the probability is then rounded: an action tied with others at +inf reads 1.0.
        * -inf is weight 0: such a slot, tone, channel or content is never part of the chosen
          send (a component whose every entry is -inf allows no send at all).
        * NaN anywhere in a client's 19 scores: the policy defines no distribution for that
          client, who gets no-send with probability 1.0.
        * When every allowed action has weight 0 (no-send's score is -inf and so is every
          allowed send's) the client also gets no-send with probability 1.0: probability 1.0
          with no-send marks a decision the runtime took because the policy gave none.
        """
        n, (s, t, c, _k) = len(x), self.nvec
        z = self.scores(logits).T  # (19, N), contiguous
        slot, tone, channel, content = z[1:s], z[s : s + t], z[s + t : s + t + c], z[s + t + c :]
        if guarded:
            channel_ok, content_ok = self.guards.allowed_channels_contents(x)  # (c, N), (k, N)
            channel_ok &= self._has_open_slot[:, None]  # a channel quiet all day takes nothing
        else:
            channel_ok, content_ok = (
                np.ones(channel.shape, dtype=bool),
                np.ones(content.shape, dtype=bool),
            )
        open_slots = self._open_slots if guarded else self._all_slots
        # best (slot, channel): per channel its best open slot, then the best allowed channel
        best_slot = np.stack(
            [
                rows[_argmax_rows(slot[rows])] if len(rows) else np.zeros(n, dtype=np.int64)
                for rows in open_slots
            ]
        )  # (c, N): lowest slot among equals
        cols = np.arange(n)
        pair_value = np.where(channel_ok, slot[best_slot, cols] + channel, -np.inf)  # (c, N)
        pair_top = pair_value.max(axis=0)
        key = np.where(pair_value == pair_top, best_slot * c + np.arange(c)[:, None], s * c).min(
            axis=0
        )
        best_pair_slot, best_channel = key // c, key % c
        masked_content = np.where(content_ok, content, -np.inf)
        best_tone, best_content = _argmax_rows(tone), _argmax_rows(masked_content)
        tops = pair_top, tone[best_tone, cols], masked_content[best_content, cols]
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            best_send = tops[0] + tops[1] + tops[2]
            all_sends = (
                self._pair_logsumexp(slot, channel, channel_ok, open_slots, pair_top)
                + _logsumexp(tone, None, tops[1])
                + _logsumexp(content, content_ok, tops[2])
            )
        no_send = z[0]
        deciding = all_sends if self.score_rule == "log_probs" else best_send
        with np.errstate(invalid="ignore"):
            total = np.logaddexp(no_send, all_sends)  # log weight of every allowed action
        # no distribution (NaN) or none over the allowed actions: no-send, probability 1
        undefined = np.isnan(z).any(axis=0) | ~(total > -np.inf)
        send = np.isfinite(best_send) & (deciding > no_send) & ~undefined
        actions = np.zeros((n, 4), dtype=np.int64)
        actions[:, 0] = np.where(send, 1 + best_pair_slot, 0)
        actions[:, 1] = np.where(send, best_tone, 0)
        actions[:, 2] = np.where(send, best_channel, 0)
        actions[:, 3] = np.where(send, best_content, 0)
        chosen = np.where(send, best_send, no_send)
        with np.errstate(invalid="ignore", over="ignore"):
            probability = np.exp(chosen - total)
        probability[undefined] = 1.0
        return actions, np.clip(probability, 0.0, 1.0)

    def _pair_logsumexp(
        self,
        slot: np.ndarray,
        channel: np.ndarray,
        channel_ok: np.ndarray,
        open_slots: list[np.ndarray],
        top: np.ndarray,
    ) -> np.ndarray:
        """(N,) log of the summed weight of the allowed (slot, channel) pairs, ``top`` their best
        score: per channel, its weight times the summed weight of its open slots."""
        slot_top = slot.max(axis=0)
        slot_top[~np.isfinite(slot_top)] = 0.0  # every slot -inf: inner sums 0, not NaN
        inner = np.stack(
            [
                np.exp(slot[rows] - slot_top).sum(axis=0) if len(rows) else np.zeros(len(top))
                for rows in open_slots
            ]
        )  # (c, N)
        safe = np.where(np.isfinite(top), top, 0.0)
        weight = (
            np.exp(channel + (slot_top - safe), out=np.zeros_like(channel), where=channel_ok)
            * inner
        )
        total = weight.sum(axis=0)
        out = np.log(total) + safe
        # exact path for the (rare) columns where the shortcut under- or overflows
        bad = np.flatnonzero(np.isfinite(top) & ~((total >= 0.5) & np.isfinite(total)))
        for j in bad:
            values = [
                slot[r, j] + channel[k, j]
                for k, rows in enumerate(open_slots)
                if channel_ok[k, j]
                for r in rows
            ]
            out[j] = np.logaddexp.reduce(np.array(values, dtype=np.float64))
        out[top == -np.inf] = -np.inf  # no allowed pair has weight (0 * inf would say NaN)
        return out

    def decide(self, features: Any, explain: bool = True) -> Decisions:
        """One decision per row of ``features`` (see :class:`Decisions`)."""
        x = self.validate(features)
        logits = self.logits(x)
        actions, probability = self.choose(logits, x)
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
        send = actions[:, 0] > 0
        reasons: list[list[str]] | list[tuple[()]] = [()] * len(x)  # nothing to say without explain
        if explain:
            reasons = [[] for _ in range(len(x))]
            wanted, _ = self.choose(logits, x, guarded=False)
            changed = (wanted != actions).any(axis=1)
            for i, why in enumerate(self.guards.blocked_reason(x, wanted)):
                if why and changed[i]:
                    reasons[i].append(why)
            for i, text in enumerate(self._explain(x, logits, actions)):
                reasons[i][:0] = text
            for i in np.flatnonzero(np.isnan(logits).any(axis=1)):
                reasons[i] = ["the policy's scores for this client are not numbers: no message"]
            if tripped is not None:
                segment = circuit_state.segment_of(self.feature_names, x)
                for i in np.flatnonzero(tripped):
                    reasons[i] = [f"circuit tripped for {segment[i]}: the safe fallback decides"]
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
        z = np.array(logits.T, dtype=np.float64, order="C")  # a copy: the caller's stays as is
        np.minimum(z, SCORE_CAP, out=z)  # +inf (see choose); NaN stays NaN
        if self.score_rule == "log_probs":
            _log_softmax_rows(z, self._bounds)
        return z.T

    def action_scores(self, logits: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """(N,) score of each given action: its components' sum, or the no-send entry."""
        logits = self.scores(logits)
        offsets = np.concatenate([[0], np.cumsum(self.nvec)[:-1]])
        send = logits[np.arange(len(logits))[:, None], actions + offsets[None, :]].sum(axis=1)
        return np.where(actions[:, 0] > 0, send, logits[:, 0])

    # ----- reasons ------------------------------------------------------------------------
    def _feature_groups(self) -> list[tuple[str, np.ndarray]]:
        names = self.feature_names
        prefixes = (
            ("weekday", "weekday_"),
            ("consent", "consent_tier_"),
            ("opt_outs", "opted_out_"),
            ("recent_sends", "sent_7d_"),
            ("recency", "days_since_last_send"),
            ("visits", "days_since_last_visit"),
            ("visits", "visits_30d"),
            ("goal", "goal_"),
            ("risk", "declared_risk"),
            ("market", "market_stress"),
            ("engagement", "ema_"),
        )
        groups: dict[str, list[int]] = {}
        for g, p in prefixes:
            groups.setdefault(g, []).extend(i for i, n in enumerate(names) if n.startswith(p))
        return [(g, np.array(cols)) for g, cols in groups.items()]

    def _explain(self, x: np.ndarray, logits: np.ndarray, actions: np.ndarray) -> list[list[str]]:
        """The two feature groups whose absence would lower the chosen action's score most."""
        n, groups = len(x), len(self._groups)
        occluded = np.repeat(x[None], groups, axis=0)
        for g, (_, cols) in enumerate(self._groups):
            occluded[g][:, cols] = 0.0
        without = self.logits(occluded.reshape(-1, x.shape[1]))
        scores = self.action_scores(without, np.tile(actions, (groups, 1))).reshape(groups, n)
        with np.errstate(invalid="ignore"):  # NaN or capped scores: no group is quoted
            push = self.action_scores(logits, actions)[None, :] - scores  # (groups, N)
        # a group the client's consent tier hides is never quoted (it reads 0 anyway)
        tier = np.argmax(x[:, self.guards.i_tier], axis=1)
        group_tier = np.array([self.min_tier[cols].max() for _, cols in self._groups])
        push[group_tier[:, None] > tier[None, :]] = -np.inf
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
        if group == "visits":
            return (
                f"{v['visits_30d']:.0f} visits in the last 30 days, the last "
                f"{v['days_since_last_visit']:.0f} days ago"
            )
        if group == "goal":
            goals = [n[5:] for n in self.feature_names if n.startswith("goal_") and v[n] > 0.5]
            return f"declared goal: {goals[0].replace('_', ' ')}" if goals else "no declared goal"
        if group == "risk":
            return f"declared risk tolerance {v['declared_risk']:.2f}"
        if group == "market":
            return f"market stress {v['market_stress']:.2f}"
        return "past engagement with these channels, times and tones"


def _column(name: str, values: Any) -> np.ndarray:
    """(N,) integer or float array of one feature's values, or :class:`RequestError` naming the
    feature and the row of the first value that is not a number: a string (even ``"0.5"``), a
    boolean, None, or an integer beyond the float range are refused, as over HTTP."""
    if isinstance(values, list | tuple) and not all(map(_is_number_type, set(map(type, values)))):
        return _cells(name, values)  # numpy would read [0.0, True] as [0.0, 1.0]: look first
    try:
        column = np.asarray(values)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise RequestError(f"feature {name} must be one number per row") from exc
    if column.ndim != 1:
        raise RequestError(f"feature {name} must be one number per row")
    kind = column.dtype.kind
    if kind in "iuf":
        return column
    if kind == "c":
        raise RequestError(f"feature {name} must be numeric, got {column.dtype} values")
    if kind == "b":
        raise RequestError(
            f"feature {name} must be numeric, got {bool(column[0])} (bool) in row 0: a flag is "
            "0 or 1"
        )
    # strings or objects: look at what the caller gave (numpy turns [1, "0.5"] into two strings)
    return _cells(name, column if kind == "O" else np.asarray(values, dtype=object))


def _is_number_type(kind: type) -> bool:
    """Whether values of type ``kind`` are numbers a request may carry (booleans are not)."""
    return kind in (int, float) or issubclass(kind, np.integer | np.floating)


def _cells(name: str, cells: Any) -> np.ndarray:
    """(N,) float64 from a sequence of Python or numpy scalars, one at a time (the slow path,
    for object columns), or :class:`RequestError` at the first that is not a number."""
    out = np.empty(len(cells), dtype=np.float64)
    for row, cell in enumerate(cells):
        if not _is_number_type(type(cell)):
            shown = repr(cell) if len(repr(cell)) <= 40 else repr(cell)[:37] + "..."
            raise RequestError(
                f"feature {name} must be numeric, got {shown} ({type(cell).__name__}) in row {row}"
            )
        try:
            out[row] = cell
        except OverflowError as exc:
            raise RequestError(
                f"feature {name} in row {row} is an integer beyond the float range"
            ) from exc
    return out


def _log_softmax_rows(z: np.ndarray, bounds: list[tuple[int, int]]) -> None:
    """In place: each component's rows ``z[a:b]`` (one column per client) become log-probabilities."""
    for a, b in bounds:
        part = z[a:b]
        top = part.max(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            part -= top
            part -= np.log(np.exp(part).sum(axis=0))
        empty = top == -np.inf  # every entry -inf: each keeps weight 0 (not -inf - -inf = NaN)
        if empty.any():
            part[:, empty] = -np.inf


def _argmax_rows(a: np.ndarray) -> np.ndarray:
    """Column-wise argmax of a non-empty (m, N) array (first of equals); about 1.6x faster than
    ``argmax(axis=0)``, which copies the array to a column-major layout first."""
    return np.where(a == a.max(axis=0), np.arange(len(a))[:, None], len(a) - 1).min(axis=0)


def _logsumexp(a: np.ndarray, allowed: np.ndarray | None, top: np.ndarray) -> np.ndarray:
    """Column-wise log-sum-exp of ``a`` (rows: choices) over the ``allowed`` entries, given their
    max ``top``; -inf for a column with nothing allowed."""
    safe = np.where(np.isfinite(top), top, 0.0)
    if allowed is None:
        return np.log(np.exp(a - safe).sum(axis=0)) + safe
    weights = np.exp(a - safe, out=np.zeros_like(a), where=allowed)
    return np.log(weights.sum(axis=0)) + safe
