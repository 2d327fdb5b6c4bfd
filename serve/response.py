"""What one request's decisions are keyed by and hold, and shadow mode's firm action. Needs numpy
only (the decision *log* that stores them is ``serve/decisions.py``).

:class:`Decisions` holds the per-client decisions :meth:`serve.runtime.PolicyRuntime.decide`
returns (the action, its probability and exact propensity, the policy's own choice, reasons) and
writes them as JSON-ready records. A request may carry, beside its features, the columns
:data:`KEY_COLUMNS` (the client's id and the decision day, which the decision log needs) and, in
shadow mode, :data:`FIRM_COLUMNS` (the firm's own action, which is returned instead of the
policy's): :func:`split_request` takes them off the feature table, :func:`client_ids`,
:func:`days` and :func:`firm_action` check them, and :func:`firm_held` holds the firm's action to
the guards. Every refusal is a :class:`~serve.request.RequestError` naming the column (and row).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from serve import circuit as circuit_state
from serve.choice import Exploration
from serve.contract import ACTION_LABELS
from serve.guards import Guards, Masks
from serve.integrity import canonical
from serve.request import RequestError

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
    """Per-client decisions of one request (arrays/lists of length N).

    The actions' labels (:attr:`slot`, :attr:`tone`, :attr:`channel`, :attr:`content`) and the
    decision ids as text (:attr:`decision_id`) are lists of Python strings, written from
    :attr:`action` and :attr:`id_bits` the first time each is read and kept: a caller that
    reads only the arrays (the decision log builds its own columns from :attr:`action`) does
    not pay for 5 N strings. The ids' random bytes are drawn when the runtime decides, so an id is
    the same on every read."""

    action: np.ndarray
    """(N, 4) int64 (slot, tone, channel, content); slot 0 is no-send"""
    probability: np.ndarray
    """the policy's probability of the chosen action among the allowed ones"""
    reasons: list[list[str]] | list[tuple[()]]
    """why this message (features that pushed most toward it; guardrails that changed it);
    empty tuples when decided with ``explain=False``"""
    needs_review: np.ndarray
    """a person approves the send first (sensitive tone on a sensitive topic)"""
    id_bits: bytes = field(default=b"", repr=False)
    """the decision ids' 16 N bytes (uuid4, cryptographically strong random bytes:
    :func:`serve.decisions.decision_id_bits`); :attr:`decision_id` writes them in hex"""
    propensity: np.ndarray = field(default_factory=lambda: np.ones(0))
    """exact probability, in (0, 1], that the runtime returns this action for this row: masks,
    consent and exploration applied (``serve/exploration.py``, :class:`~serve.choice.Exploration`)"""
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
    labeller: Labeller | None = field(default=None, repr=False, compare=False)
    """the export's labels (:class:`Labeller`; the contract's where None)"""

    @cached_property
    def decision_id(self) -> list[str]:
        """a fresh id per decision (uuid4, 32 hex digits, drawn when deciding): a send it leads
        to carries it"""
        from serve.decisions import ids_in_hex  # the log's module (polars) only when read

        return ids_in_hex(self.id_bits)

    @cached_property
    def _words(self) -> dict[str, list[str | None]]:
        return (self.labeller or Labeller(ACTION_LABELS))(self.action)

    @property
    def slot(self) -> list[str]:
        """each action's slot in words (``no_send`` for a no-send, as the export's labels say)"""
        return self._words["slot"]  # type: ignore[return-value]

    @property
    def tone(self) -> list[str | None]:
        """each action's tone in words; None for a no-send"""
        return self._words["tone"]

    @property
    def channel(self) -> list[str | None]:
        """each action's channel in words; None for a no-send"""
        return self._words["channel"]

    @property
    def content(self) -> list[str | None]:
        """each action's content in words; None for a no-send"""
        return self._words["content"]

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


class Labeller:
    """Actions in words, from an export's ``action_labels``: one object table holding every
    part's labels, each of the tone's, channel's and content's followed by a None (what a
    no-send reads there), so that each part's labels are one gather and one list."""

    PARTS = ("slot", "tone", "channel", "content")

    def __init__(self, labels: dict[str, list[str]]) -> None:
        table: list[str | None] = list(labels["slot"])
        self.first = [0]
        """where each part's labels start in :attr:`table`"""
        self.none = [-1]
        """where the None after each part's labels is (the slot has none: -1)"""
        for part in self.PARTS[1:]:
            self.first.append(len(table))
            table += [*labels[part], None]
            self.none.append(len(table) - 1)
        self.table = np.array(table, dtype=object)

    def __call__(self, actions: np.ndarray) -> dict[str, list[str | None]]:
        """The (N, 4) ``actions`` (components within the action space) in words: ``slot``,
        ``tone``, ``channel`` and ``content`` lists; a no-send's tone, channel and content are
        None. One (N,) index at a time: (4, N) temporaries here cost more than they save, as
        the heap they add at the end of a request is returned to the system and taken again
        on the next."""
        quiet = actions[:, 0] == 0
        words = {}
        for j, part in enumerate(self.PARTS):
            index = actions[:, j] + self.first[j]
            if j:
                np.copyto(index, self.none[j], where=quiet)
            words[part] = self.table.take(index).tolist()
        return words


def export_digest(manifest: dict[str, Any]) -> str:
    """``sha256:<hex>`` over the manifest's integrity sections (the hashes of every section and
    of the ONNX bytes), or over the whole manifest where it has none: one value per export."""
    block = manifest.get("integrity")
    covered = block["sections"] if isinstance(block, dict) and "sections" in block else manifest
    return "sha256:" + hashlib.sha256(canonical(covered)).hexdigest()


def check_shadow(shadow: bool, not_allowed: str, exploration: Exploration) -> None:
    """:class:`ValueError` unless ``not_allowed`` is one of :data:`NOT_ALLOWED_MODES`, or when
    ``shadow`` mode is asked to explore by softmax (it explores around the firm's action with
    epsilon only)."""
    if not_allowed not in NOT_ALLOWED_MODES:
        raise ValueError(f"not_allowed must be one of {NOT_ALLOWED_MODES}, got {not_allowed!r}")
    if not shadow and exploration.policy_share > 0:
        raise ValueError(
            "exploration.policy_share is for shadow mode (the policy's choice in place of the "
            "firm's); in serve mode the policy already decides"
        )
    if shadow and exploration.kind == "softmax":
        raise ValueError(
            "shadow mode explores around the firm's action with epsilon only; got "
            f"{exploration.label}"
        )


def split_request(
    features: Any, shadow: bool
) -> tuple[Any, dict[str, np.ndarray], np.ndarray | None]:
    """(the feature table, the :data:`KEY_COLUMNS` it carried, the (N, 4) firm's action of
    :data:`FIRM_COLUMNS` or None). An array carries features only. :class:`RequestError`
    when firm columns come outside ``shadow`` mode, or only some of them."""
    if isinstance(features, np.ndarray) or not (
        isinstance(features, Mapping) or hasattr(features, "columns")
    ):
        return features, {}, None
    columns = list(features.columns) if hasattr(features, "columns") else list(features)
    keys = {c: features[c] for c in KEY_COLUMNS if c in columns}
    firm_given = [c for c in FIRM_COLUMNS if c in columns]
    if firm_given and not shadow:
        raise RequestError(
            f"column {firm_given[0]} is read in shadow mode only (the firm's own action); "
            "this runtime serves its own decisions (shadow=false)"
        )
    if firm_given and len(firm_given) < len(FIRM_COLUMNS):
        missing = [c for c in FIRM_COLUMNS if c not in columns]
        raise RequestError(f"the firm's action lacks column(s) {', '.join(missing)}")
    firm = np.stack([whole(c, features[c]) for c in FIRM_COLUMNS], axis=1) if firm_given else None
    drop = [c for c in (*KEY_COLUMNS, *FIRM_COLUMNS) if c in columns]
    if not drop:
        return features, keys, firm
    if hasattr(features, "drop"):
        table = features.drop(columns=drop) if hasattr(features, "iloc") else features.drop(drop)
    else:
        table = {k: v for k, v in features.items() if k not in drop}
    return table, keys, firm


def client_ids(values: Any, n: int) -> np.ndarray | None:
    """(N,) int64 client ids from a column (or one id for every row), None where not given;
    :class:`RequestError` unless they are ``n`` whole numbers >= 0."""
    if values is None:
        return None
    ids = (
        np.broadcast_to(whole("client_id", values), (n,))
        if np.ndim(values) == 0
        else (whole("client_id", values))
    )
    if len(ids) != n or (ids < 0).any():
        raise RequestError(f"client_id must be {n} whole numbers >= 0, one per row")
    return ids.astype(np.int64)


def days(values: Any, n: int) -> np.ndarray | None:
    """(N,) int32 decision days (calendar days, 0 is a Monday) from a column or one day for
    every row, None where not given; :class:`RequestError` outside -:data:`MAX_DAY`..MAX_DAY."""
    if values is None:
        return None
    out = whole("day", np.atleast_1d(values))
    out = np.broadcast_to(out, (n,)) if len(out) == 1 else out
    if len(out) != n:
        raise RequestError(f"day must be one whole number, or one per row ({n}), got {len(out)}")
    bad = np.flatnonzero(np.abs(out) > MAX_DAY)
    if len(bad):
        raise RequestError(
            f"day = {out[bad[0]]} in row {bad[0]} is outside -{MAX_DAY}..{MAX_DAY} (calendar "
            "days, 0 is a Monday)"
        )
    return out.astype(np.int32)


def firm_action(values: Any, n: int, nvec: np.ndarray, shadow: bool) -> np.ndarray | None:
    """The (N, 4) firm's action, checked against the action space ``nvec`` (a no-send's other
    components read 0); ``shadow`` mode needs it, serve mode refuses it."""
    if values is None:
        if shadow:
            raise RequestError(
                f"shadow mode needs the firm's own action: columns {', '.join(FIRM_COLUMNS)}"
            )
        return None
    if not shadow:
        raise RequestError("the firm's action is read in shadow mode only (shadow=false)")
    firm = np.asarray(values)
    if firm.shape != (n, 4):
        raise RequestError(f"the firm's action must be ({n}, 4), got shape {firm.shape}")
    firm = np.stack([whole(c, firm[:, j]) for j, c in enumerate(FIRM_COLUMNS)], axis=1)
    bad = (firm < 0) | (firm >= nvec[None, :])
    if bad.any():
        row, j = np.argwhere(bad)[0]
        raise RequestError(
            f"{FIRM_COLUMNS[j]} = {firm[row, j]} in row {row} must lie in 0..{nvec[j] - 1}"
        )
    firm[firm[:, 0] == 0, 1:] = 0
    return firm


def firm_held(
    x: np.ndarray,
    firm: np.ndarray,
    guards: Guards,
    feature_names: list[str],
    labels: dict[str, Any],
    not_allowed: str,
    masks: Masks | None = None,
) -> tuple[np.ndarray, dict[int, str]]:
    """The firm's (N, 4) actions held to the guards for features ``x``: one not allowed is
    replaced by the safe fallback (with a note per row) or refuses the request, as
    ``not_allowed`` (:data:`NOT_ALLOWED_MODES`) says. ``masks``: the rules for ``x``
    (:meth:`Guards.masks`) where already computed."""
    ok = guards.allowed_by(masks or guards.masks(x), firm)
    if ok.all():
        return firm, {}
    rows = np.flatnonzero(~ok)
    why = guards.blocked_reason(x[rows], firm[rows])
    if not_allowed == "refuse":
        raise RequestError(
            f"the firm's action in row {rows[0]} is not allowed ({why[0]}); {len(rows)} row(s) "
            "break the guards"
        )
    firm = firm.copy()
    firm[rows] = circuit_state.fallback(feature_names, labels, x[rows], guards.joint_mask(x[rows]))
    notes = {
        int(r): f"the firm's action was not allowed ({w}): the safe fallback decides"
        for r, w in zip(rows, why, strict=True)
    }
    return firm, notes


def whole(name: str, values: Any) -> np.ndarray:
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
