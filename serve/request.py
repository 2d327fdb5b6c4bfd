"""Validating a request table: the features of one request, checked against an export's manifest
before the network sees them. Needs numpy only.

A request is a mapping or DataFrame with one column per feature name (or an (N, D) array already
in ``feature_names`` order). Every value must be a number (a string, even ``"0.5"``, a boolean or
None is refused), finite and within the manifest's range; the exact guard inputs must be exact
(flags 0 or 1, one consent tier, whole counts). Consent is then applied: a feature the client's
tier does not allow is zeroed, or the request refused. Every refusal is a :class:`RequestError`
naming the feature (and row) at fault: never a guess toward sending.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from serve import contract

CONSENT_MODES = ("zero", "refuse")
"""what a feature the client's consent tier does not allow does: read as 0, or refuse the request"""
MAX_ROWS = 100_000
"""default most rows one request may carry"""


def check_settings(consent: str, max_rows: int) -> None:
    """:class:`ValueError` unless ``consent`` is one of :data:`CONSENT_MODES` and ``max_rows`` a
    positive whole number."""
    if consent not in CONSENT_MODES:
        raise ValueError(f"consent must be one of {CONSENT_MODES}, got {consent!r}")
    if not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows must be a positive whole number, got {max_rows!r}")


class RequestError(ValueError):
    """A request is malformed; the message names the feature (and row) at fault."""


class TooLarge(RequestError):
    """A request over the size limits (more rows than allowed; over HTTP, 413)."""


class FeatureChecks:
    """What the features of a request must satisfy, read from an export's manifest: names and
    order, ranges, the exact guard inputs and the consent tier each feature needs."""

    def __init__(self, manifest: dict[str, Any], i_tier: np.ndarray) -> None:
        """``i_tier``: the columns of the one-hot consent tier (see :class:`serve.guards.Guards`)."""
        self.feature_names: list[str] = list(manifest["feature_names"])
        self.low = np.asarray(manifest["feature_low"], dtype=np.float32)
        self.high = np.asarray(manifest["feature_high"], dtype=np.float32)
        self.low_ok, self.high_ok = self.low - 1e-6, self.high + 1e-6  # float32, as the checks
        self.min_tier = np.asarray(manifest["feature_min_tier"], dtype=np.int64)
        self.i_tier = i_tier
        names = self.feature_names
        kinds = dict(zip(contract.FEATURE_NAMES, contract.FEATURE_KIND, strict=True))
        self.flags = np.array([i for i, n in enumerate(names) if kinds[n] == "flag"])
        self.counts = np.array([i for i, n in enumerate(names) if kinds[n] == "count"])
        self.one_hot = [
            (prefix, np.array([i for i, n in enumerate(names) if n.startswith(prefix)]), lo, hi)
            for prefix, (lo, hi) in contract.ONE_HOT_GROUPS.items()
        ]
        self.visible = np.stack(
            [(self.min_tier <= t).astype(np.float32) for t in range(contract.N_TIERS)]
        )  # (tiers, D): 1 where a client of that tier lets the policy see the feature
        self.gated = bool((self.min_tier > 0).any())

    def validate(self, features: Any, consent: str, max_rows: int) -> np.ndarray:
        """(N, D) float32 features, ``consent`` applied (``"zero"`` or ``"refuse"``), from a
        request of 1 to ``max_rows`` rows; :class:`RequestError` naming what is wrong.

        The checks run one by one (:meth:`refuse`) and name the first problem; the runtime
        first tries its compiled pass (``serve/intake.py``), which accepts exactly what these
        accept, and comes here for the message."""
        return self.checked(features, consent, max_rows)[0]

    def checked(self, features: Any, consent: str, max_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`validate`'s (N, D) float32 features and the (N,) int64 consent tier the checks
        read from the request (the one-hot tier's set column, before consent is applied)."""
        x = self.matrix(features, max_rows)
        self.refuse(x)
        tier = np.argmax(x[:, self.i_tier], axis=1)
        out = np.empty(x.shape, dtype=np.float32)
        if x.dtype != np.float32:
            x = x.astype(np.float32)  # as float32 before consent, as the network reads it
        if not self.gated:
            np.copyto(out, x)  # a copy: never the caller's data
            return out, tier
        # (N, D) 1 where the tier shows the feature; "clip" writes out unbuffered (tiers 0..3)
        np.take(self.visible, tier, axis=0, out=out, mode="clip")
        np.multiply(x, out, out=out)  # consent applied to a copy: never the caller's data
        if consent == "refuse" and not np.array_equal(out, x):
            self._raise_hidden(x, tier, self.visible[tier])
        return out, tier

    def _raise_hidden(self, x: np.ndarray, tier: np.ndarray, visible: np.ndarray) -> None:
        """:class:`RequestError` naming the first feature set that the client's consent tier
        hides (``refuse`` mode)."""
        leaked = (visible == 0) & (x != 0)
        row, col = np.argwhere(leaked)[0]
        raise RequestError(
            f"feature {self.feature_names[col]} in row {row} is set, but the client's "
            f"consent tier {tier[row]} does not allow it (tier {self.min_tier[col]} needed)"
        )

    def refuse(self, x: np.ndarray) -> None:
        """The checks one by one, in order (ranges and finiteness, flags, whole counts, one-hot
        groups): :class:`RequestError` naming the first feature (and row) at fault."""
        # NaN and infinities fail both comparisons, so one pass finds them with the ranges
        if not ((x >= self.low_ok) & (x <= self.high_ok)).all():
            self._raise_range(x)
        flags = x[:, self.flags]
        if not ((flags == 0) | (flags == 1)).all():
            row, col = np.argwhere((flags != 0) & (flags != 1))[0]
            name = self.feature_names[self.flags[col]]
            raise RequestError(f"feature {name} = {flags[row, col]} in row {row} must be 0 or 1")
        counts = x[:, self.counts]
        if not (counts == np.floor(counts)).all():
            row, col = np.argwhere(counts != np.floor(counts))[0]
            name = self.feature_names[self.counts[col]]
            raise RequestError(
                f"feature {name} = {counts[row, col]} in row {row} must be a whole number"
            )
        for prefix, cols, fewest, most in self.one_hot:
            set_ = x[:, cols].sum(axis=1)
            bad = (set_ < fewest) | (set_ > most)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise RequestError(
                    f"features {prefix}* in row {row} have {int(set_[row])} set; "
                    + ("exactly one must be" if fewest == most else f"at most {most} may be")
                )

    def matrix(self, features: Any, max_rows: int) -> np.ndarray:
        """(N, D) float32 or float64 array of the request, columns in contract order."""
        if isinstance(features, np.ndarray):
            if features.ndim != 2 or features.shape[1] != len(self.feature_names):
                raise RequestError(
                    f"expected an array of shape (N, {len(self.feature_names)}), got {features.shape}"
                )
            check_rows(len(features), max_rows)
            if features.dtype.kind == "c":
                raise RequestError(
                    f"features must be numbers (integer or float), got dtype {features.dtype}"
                )
            if features.dtype.kind in "iuf":
                return features if features.dtype == np.float32 else features.astype(np.float64)
            # booleans, strings, objects: the first cell that is not a number is named
            return np.stack(
                [column(name, features[:, j]) for j, name in enumerate(self.feature_names)],
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
        first = column(self.feature_names[0], features[self.feature_names[0]])
        check_rows(len(first), max_rows)
        out = np.empty((len(first), len(self.feature_names)), dtype=np.float64)
        for j, name in enumerate(self.feature_names):
            values = first if j == 0 else column(name, features[name])
            if len(values) != len(out):
                raise RequestError(f"feature {name} has {len(values)} rows; others have {len(out)}")
            out[:, j] = values
        return out

    def _raise_range(self, x: np.ndarray) -> None:
        finite = np.isfinite(x)
        if not finite.all():
            row, col = np.argwhere(~finite)[0]
            raise RequestError(
                f"feature {self.feature_names[col]} is not finite ({x[row, col]}) in row {row}"
            )
        row, col = np.argwhere((x < self.low_ok) | (x > self.high_ok))[0]
        raise RequestError(
            f"feature {self.feature_names[col]} = {x[row, col]} in row {row} is outside "
            f"[{self.low[col]}, {self.high[col]}]"
        )


def check_rows(rows: int, max_rows: int) -> None:
    """Refuse an empty request or one over ``max_rows`` before any copy is made of it."""
    if rows == 0:
        raise RequestError("the request has no rows")
    if rows > max_rows:
        raise TooLarge(
            f"the request has {rows:,} rows; at most {max_rows:,} are allowed per request "
            "(split it)"
        )


def column(name: str, values: Any) -> np.ndarray:
    """(N,) integer or float array of one feature's values, or :class:`RequestError` naming the
    feature and the row of the first value that is not a number: a string (even ``"0.5"``), a
    boolean, None, or an integer beyond the float range are refused, as over HTTP."""
    if isinstance(values, list | tuple) and not all(map(is_number_type, set(map(type, values)))):
        return _cells(name, values)  # numpy would read [0.0, True] as [0.0, 1.0]: look first
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise RequestError(f"feature {name} must be one number per row") from exc
    if array.ndim != 1:
        raise RequestError(f"feature {name} must be one number per row")
    kind = array.dtype.kind
    if kind in "iuf":
        return array
    if kind == "c":
        raise RequestError(f"feature {name} must be numeric, got {array.dtype} values")
    if kind == "b":
        raise RequestError(
            f"feature {name} must be numeric, got {bool(array[0])} (bool) in row 0: a flag is "
            "0 or 1"
        )
    # strings or objects: look at what the caller gave (numpy turns [1, "0.5"] into two strings)
    return _cells(name, array if kind == "O" else np.asarray(values, dtype=object))


def is_number_type(kind: type) -> bool:
    """Whether values of type ``kind`` are numbers a request may carry (booleans are not)."""
    return kind in (int, float) or issubclass(kind, np.integer | np.floating)


def _cells(name: str, cells: Any) -> np.ndarray:
    """(N,) float64 from a sequence of Python or numpy scalars, one at a time (the slow path,
    for object columns), or :class:`RequestError` at the first that is not a number."""
    out = np.empty(len(cells), dtype=np.float64)
    for row, cell in enumerate(cells):
        if not is_number_type(type(cell)):
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
