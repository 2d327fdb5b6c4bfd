"""The guarded runtime: ONNX + manifest in, one decision per client out. Needs numpy, onnxruntime
and numba (``serve/compiled.py``) only.

Order of work for each request: validate the features (names, numeric type, finiteness, ranges,
exact guard inputs: flags 0 or 1, one consent tier, whole counts), apply consent (a feature the
client's tier does not allow is zeroed, or the request refused, before the network and before
any reason is written), run the network, rebuild the guardrail masks from the features and the
manifest's rules, pick the best *allowed* action (a policy can never override consent, opt-outs,
quiet hours or caps), then explain it and flag sensitive sends for review. Each step has its
module: ``serve/request.py`` validates the features, ``serve/response.py`` reads the client ids,
days and shadow mode's firm action and holds the :class:`Decisions`, ``serve/choice.py`` makes the
masked choice, ``serve/exploration.py`` draws around it and gives each draw's exact probability,
``serve/explain.py`` writes the reasons; this one loads an export and runs the steps in order.

An export made with the masked choice inside its graph (``serve/graph_choice.py``; the
manifest's ``graph_choice`` section says so) makes the network pass, the masks and the choice in
one onnxruntime call; the runtime still checks every chosen action against the manifest's rules
and decides again in numpy the rows the graph marks doubtful (near ties of log-probabilities)
and any row it cannot vouch for (:meth:`PolicyRuntime.hold_to_guards`). Where nothing is drawn
around the graph's choice (no exploration, no firm's action, no tripped circuit), one compiled
pass after the graph checks, copies, flags and stamps every row (:meth:`Guards.settle`); a
doubtful or refused row sends the request down the general path instead. Older exports, without
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
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from serve import choice, compiled, explain, response
from serve import circuit as circuit_state
from serve.choice import SCORE_CAP as SCORE_CAP
from serve.choice import Exploration as Exploration
from serve.choice import Explorer
from serve.decisions import id_entropy
from serve.explain import EXPLAIN_AT_MOST as EXPLAIN_AT_MOST
from serve.explain import EXPLAIN_UP_TO as EXPLAIN_UP_TO
from serve.explain import WEEKDAYS as WEEKDAYS
from serve.explain import Explainer
from serve.explain import wants_reasons as wants_reasons
from serve.exploration import Allowed, Draws
from serve.guards import Guards, Masks, Settled
from serve.intake import Intake
from serve.integrity import FORMAT_VERSION as FORMAT_VERSION
from serve.integrity import KEY_ENV as KEY_ENV
from serve.integrity import ExportError as ExportError
from serve.integrity import UnsignedExportWarning as UnsignedExportWarning
from serve.integrity import canonical as canonical
from serve.integrity import check_signed, read_manifest, signing_key, verify_manifest
from serve.integrity import integrity_block as integrity_block
from serve.request import CONSENT_MODES as CONSENT_MODES
from serve.request import MAX_ROWS as MAX_ROWS
from serve.request import FeatureChecks, check_settings
from serve.request import RequestError as RequestError
from serve.request import TooLarge as TooLarge
from serve.response import FIRM_COLUMNS as FIRM_COLUMNS
from serve.response import KEY_COLUMNS as KEY_COLUMNS
from serve.response import MAX_DAY as MAX_DAY
from serve.response import NOT_ALLOWED_MODES as NOT_ALLOWED_MODES
from serve.response import Decisions as Decisions
from serve.response import export_digest as export_digest
from serve.response import same_actions as same_actions

ONNX_FILE, MANIFEST_FILE = "policy.onnx", "manifest.json"


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
        check_settings(consent, max_rows)
        self.explorer = Explorer(exploration)
        """the exploration setting and its random stream (``serve/choice.py``)"""
        response.check_shadow(shadow, not_allowed, self.explorer.setting)
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
        self.intake = Intake(self.checks, self.guards)
        """the checks, consent, masks and review inputs in one compiled pass (``serve/intake.py``)"""
        compiled.warm_up()  # the compiled loops are built now, not on the first request
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
        self._words = response.Labeller(self.labels)
        """the actions in words (``serve/response.py``)"""
        self._tier_as_read = not self.min_tier[self.guards.i_tier].any()
        """consent never hides the tier's own columns: the tier the checks read is the masks'"""
        self._bounds = choice.component_bounds(self.nvec)
        # slots open to each channel (not its quiet hours), ascending
        self._open_slots = [
            np.flatnonzero(~self.guards.quiet[:, k]) for k in range(self.guards.quiet.shape[1])
        ]
        self._all_slots = [np.arange(self.guards.quiet.shape[0])] * self.guards.quiet.shape[1]
        self._has_open_slot = np.array([len(rows) > 0 for rows in self._open_slots])
        self.draws = Draws(
            self.explorer, self.guards, self.nvec, self._open_slots, self._has_open_slot
        )
        """exploration's draws around a base action (``serve/exploration.py``)"""
        outputs = [o.name for o in session.get_outputs()]
        self.graph_choice = graph_choice and choice.graph_makes_choice(manifest, outputs)
        """the graph makes the masked choice (an export with a ``graph_choice`` section, unless
        ``graph_choice=False``); else numpy makes it, as for exports made before"""

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
        return self.read(features)[0]

    def read(self, features: Any) -> tuple[np.ndarray, Masks, tuple[np.ndarray, np.ndarray]]:
        """:meth:`validate`'s features, their guardrail masks (:meth:`Guards.masks`) and review
        inputs (:meth:`Guards.review_inputs`): from the compiled pass over the request
        (``serve/intake.py``), or, for a request it does not accept, from the checks one by one,
        which name the problem (:class:`RequestError`)."""
        x = self.checks.matrix(features, self.max_rows)
        accepted = self.intake.read(x, self.consent)
        if accepted is not None:
            return accepted
        x, tier = self.checks.checked(x, self.consent, self.max_rows)
        masks = self.guards.masks(x, tier if self._tier_as_read else None)
        return x, masks, self.guards.review_inputs(x)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(N, 19) per-component scores from the network."""
        return self.session.run(["logits"], {"obs": x})[0]

    def choose(
        self, logits: np.ndarray, x: np.ndarray, guarded: bool = True, masks: Masks | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) best allowed actions and their probabilities among the allowed actions
        (``guarded=False``: over every action, as if no rule applied). How the factored rules
        are combined, and what +inf, -inf and NaN scores decide: ``serve/choice.py``.
        ``masks``: the rules for ``x`` (:meth:`Guards.masks`) where already computed."""
        z = self.scores(logits).T  # (19, N), contiguous
        c, k = int(self.nvec[2]), int(self.nvec[3])  # channels, contents
        if guarded:
            channel_ok, content_ok = self.guards.allowed_channels_contents(x, masks)  # (c|k, N)
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
        # the checked features, the rules for these rows (shared by every check below) and the
        # review inputs, read before the network runs: its pass over a large request leaves the
        # core's caches cold for what follows it
        x, masks, review = self.read(table)
        n = len(x)
        id_bits = id_entropy(n)  # the ids' random bytes, drawn once; stamped uuid4 below
        client_id = response.client_ids(keys.get("client_id", client_id), n)
        day = response.days(keys.get("day", day), n)
        firm = firm if firm is not None else firm_action
        firm = response.firm_action(firm, n, self.nvec, self.shadow)
        tripped, first = self._tripped(x)
        ids = np.frombuffer(id_bits, dtype=np.uint8).reshape(n, 16)
        if self.graph_choice:
            outputs = self.session.run(["logits", *choice.GRAPH_OUTPUTS], {"obs": x})
            logits = outputs[0]
            if firm is None and tripped is None and self.draws.deterministic():
                settled = self._settle(outputs, masks, review, ids)
                if settled is not None:  # the graph's choice is the answer
                    reasons = (
                        self._reasons(
                            x,
                            logits,
                            settled.action,
                            settled.policy_action,
                            None,
                            settled.explored,
                            {},
                        )
                        if explain
                        else [()] * n
                    )
                    return self._decisions(
                        outputs[2], settled, reasons, id_bits, "serve", client_id, day
                    )
            greedy, probability = self.hold_to_guards(x, *outputs, masks, copy=False)
        else:
            logits = self.logits(x)
            greedy, probability = self.choose(logits, x, masks=masks)
        policy_action, policy_probability = greedy.copy(), probability.copy()
        reasons: list[list[str]] | list[tuple[()]] = [()] * n  # nothing to say without explain
        notes: dict[int, str] = {}
        base = greedy
        if firm is not None:
            base, notes = response.firm_held(
                x, firm, self.guards, self.feature_names, self.labels, self.not_allowed, masks
            )
        actions, propensity, allowed, explored = self.explore(
            x, logits, base, None if firm is None else greedy, masks
        )
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
        # never: every draw is within the masks; each final action is checked all the same
        # (one that is not is set to no-send where it lies, and the whole request refused),
        # in one pass that also writes the review flags and stamps the ids
        actions = np.require(actions, np.int64, "C")
        at_fault, needs_review = self.guards.finish(masks, actions, review, ids)
        if at_fault:
            raise RuntimeError("an action outside the guards was drawn; no decision is returned")
        if explain:
            reasons = self._reasons(x, logits, actions, greedy, tripped, explored, notes)
        parts = Settled(
            actions, policy_action, policy_probability, propensity, allowed, explored, needs_review
        )
        mode = "shadow" if firm is not None else "serve"
        return self._decisions(probability, parts, reasons, id_bits, mode, client_id, day)

    def _settle(
        self,
        outputs: list[np.ndarray],
        masks: Masks,
        review: tuple[np.ndarray, np.ndarray],
        ids: np.ndarray,
    ) -> Settled | None:
        """The graph's choice (``outputs``: logits, actions, probabilities, doubtful rows) as
        the request's answer, where every row passes (:meth:`Guards.settle`); None where a row
        is doubtful or fails, or the outputs' types are not the graph's own, and the general
        path (:meth:`hold_to_guards`) then decides."""
        _, actions, probability, doubtful = outputs
        n = len(ids)
        if (
            actions.dtype != np.int64
            or actions.shape != (n, 4)
            or not actions.flags.c_contiguous
            or probability.dtype != np.float64
            or probability.shape != (n,)
            or doubtful.dtype != np.bool_
            or doubtful.shape != (n,)
        ):
            return None
        return self.guards.settle(
            masks, actions, probability, doubtful, review, ids, self.draws.state_count
        )

    def _decisions(
        self,
        probability: np.ndarray,
        parts: Settled,
        reasons: list[list[str]] | list[tuple[()]],
        id_bits: bytearray,
        mode: str,
        client_id: np.ndarray,
        day: np.ndarray,
    ) -> Decisions:
        """The :class:`Decisions` of a request's final arrays."""
        return Decisions(
            action=parts.action,
            probability=probability,
            reasons=reasons,
            needs_review=parts.needs_review,
            id_bits=bytes(id_bits),
            propensity=parts.propensity,
            policy_action=parts.policy_action,
            policy_probability=parts.policy_probability,
            allowed_actions=parts.allowed,
            policy_version=self.policy_version,
            exploration=self.explorer.setting.label,
            mode=mode,
            client_id=client_id,
            day=day,
            labeller=self._words,
        )

    def split_request(self, features: Any) -> tuple[Any, dict[str, np.ndarray], np.ndarray | None]:
        """(the feature table, the :data:`KEY_COLUMNS` it carried, the firm's (N, 4) action of
        :data:`FIRM_COLUMNS` or None): :func:`serve.response.split_request`."""
        return response.split_request(features, self.shadow)

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
        wanted, _ = self.choose(logits, x, guarded=False)
        changed = (wanted != greedy).any(axis=1) & (actions == greedy).all(axis=1)
        segments = None
        if tripped is not None:
            segment = circuit_state.segment_of(self.feature_names, x)
            segments = {int(i): str(segment[i]) for i in np.flatnonzero(tripped)}
        return explain.compose(
            pushed=self._explain(x, logits, actions),
            blocked=self.guards.blocked_reason(x, wanted),
            changed=changed,
            explored=explored,
            exploration=self.explorer.setting.label,
            notes=notes,
            no_scores=np.isnan(logits).any(axis=1),
            tripped=segments,
        )

    def explore(
        self,
        x: np.ndarray,
        logits: np.ndarray,
        base: np.ndarray,
        policy: np.ndarray | None = None,
        masks: Masks | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(N, 4) actions drawn around the (N, 4) allowed ``base`` actions by the exploration
        setting, their exact (N,) probabilities (:meth:`probability_of`), the (N,) number of
        allowed actions, and (N,) True where the draw changed the action
        (``serve/exploration.py``); ``policy``: shadow mode's policy choice (``policy_share``);
        ``masks``: the rules for ``x`` (:meth:`Guards.masks`) where already computed. Without
        exploration the scores are not computed: the base action has probability 1."""
        scores = None if self.draws.deterministic(policy) else self.scores(logits)
        return self.draws.explore(x, scores, base, policy, masks)

    def probability_of(
        self,
        x: np.ndarray,
        logits: np.ndarray,
        base: np.ndarray,
        actions: np.ndarray,
        parts: Allowed | None = None,
        policy: np.ndarray | None = None,
    ) -> np.ndarray:
        """(N,) exact probability that :meth:`explore` returns each row's (N, 4) ``actions``
        around the (N, 4) allowed ``base`` actions, for features ``x`` (consent applied) and the
        network's ``logits``; 0 for an action the guards do not allow
        (:meth:`serve.exploration.Draws.probability_of` says how)."""
        return self.draws.probability_of(x, self.scores(logits), base, actions, parts, policy)

    def hold_to_guards(
        self,
        x: np.ndarray,
        logits: np.ndarray,
        actions: np.ndarray,
        probability: np.ndarray,
        doubtful: np.ndarray,
        masks: Masks | None = None,
        copy: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The graph's (N, 4) actions and (N,) probabilities, checked: rows it marks doubtful are
        decided in numpy (:meth:`choose`), and so is any other row whose action is out of range
        or not allowed by the manifest's rules, or whose probability is not in [0, 1], with a
        :class:`RuntimeWarning` (a graph that disagrees with its manifest). No action gets past
        the guards either way. ``copy=False``: ``actions`` and ``probability`` are the caller's
        own, to be written in place (the graph's fresh outputs)."""
        masks = masks or self.guards.masks(x)
        actions, probability, again = choice.graph_rows_checked(
            x, actions, probability, doubtful, self.nvec, self.guards, masks, copy=copy
        )
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
