"""The decision log: every decision the runtime returns, with what off-policy evaluation needs.

Needs polars and the serving package only (``serve.contract`` for the labels, ``serve.files``
for the atomic write), so a served model can write it.

One row per decision (per client and day): the action returned, its exact probability under
the runtime's decision distribution (masks, consent and exploration applied), the policy that
decided and the exploration setting, and the policy's own choice beside it (which in shadow
mode differs from the returned action: the firm's). :data:`SCHEMA` holds the columns in order
and :data:`COLUMNS` says what each one means; columns are only ever added, never renamed.

Files. The log is a folder of Parquet files, ``decisions-<UTC time>-<sequence>-<token>.parquet``
(names sort in the order they were written). :class:`DecisionLog` buffers decisions in memory
and writes the buffer as one new file when it holds ``rows_per_file`` rows or its oldest row is
``seconds_per_file`` old (rotation by rows and by time), on :meth:`DecisionLog.flush` and on
close. Each file is written whole to a temporary name in the folder, flushed to disk and renamed
into place (:func:`serve.files.write_atomic`): a reader sees a complete file or none, never a
torn one; a crash loses the unflushed buffer (at most ``rows_per_file`` rows, at most
``seconds_per_file`` old once :meth:`DecisionLog.flush_if_due` is called that often) and nothing
else. Temporary files start with a dot and are never read.

:func:`read_decisions` reads a folder (or files) back, checks the schema and the values
(:func:`check_decisions`) and refuses a log with a decision id twice.

Example::

    log = DecisionLog("outputs/decisions", rows_per_file=10_000, seconds_per_file=5.0)
    log.append(decision_frame(client_id=ids, day=7, action=actions, propensity=p, ...))
    log.close()
    frame = read_decisions("outputs/decisions")
"""

from __future__ import annotations

import datetime as dt
import io
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import polars as pl

from serve.compiled import uuid4_bits
from serve.contract import CHANNELS, CONTENTS, NVEC, SLOT_KEYS, TONES
from serve.files import write_atomic

MODES: tuple[str, ...] = ("serve", "shadow")
"""``serve``: the runtime's own (explored) decision is returned; ``shadow``: the firm's action,
carried by the request, is returned (explored around when asked) and the policy's own choice
is logged beside it"""

ACTION_COLUMNS: tuple[str, ...] = ("a_slot", "a_tone", "a_channel", "a_content")
POLICY_COLUMNS: tuple[str, ...] = tuple(f"policy_{c}" for c in ACTION_COLUMNS)
LABEL_COLUMNS: tuple[str, ...] = ("slot", "tone", "channel", "content")
LABELS: dict[str, tuple[str, ...]] = {
    "slot": SLOT_KEYS,
    "tone": TONES,
    "channel": CHANNELS,
    "content": CONTENTS,
}
"""labels of the text columns, as in the export's ``sends`` table (slot ``a`` >= 1 is
``SLOT_KEYS[a - 1]``)"""

SCHEMA: dict[str, pl.DataType] = {
    "decision_id": pl.String(),
    "client_id": pl.Int64(),
    "day": pl.Int32(),
    "a_slot": pl.Int8(),
    "a_tone": pl.Int8(),
    "a_channel": pl.Int8(),
    "a_content": pl.Int8(),
    "slot": pl.String(),
    "tone": pl.String(),
    "channel": pl.String(),
    "content": pl.String(),
    "propensity": pl.Float64(),
    "policy_version": pl.String(),
    "exploration": pl.String(),
    "mode": pl.String(),
    "policy_a_slot": pl.Int8(),
    "policy_a_tone": pl.Int8(),
    "policy_a_channel": pl.Int8(),
    "policy_a_content": pl.Int8(),
    "policy_propensity": pl.Float64(),
    "agree": pl.Boolean(),
    "needs_review": pl.Boolean(),
    "decided_at": pl.Datetime("us", "UTC"),
    "allowed_actions": pl.Int32(),
}
"""the decision log's columns, in order, and their types"""

COLUMNS: dict[str, str] = {
    "decision_id": "unique id of the decision (uuid4, 32 hex digits); a send it led to carries "
    "it in the export's sends.decision_id",
    "client_id": "the client decided for (the export's clients.client_id)",
    "day": "the decision day (calendar day, 0 is a Monday, as in the export)",
    "a_slot": "the returned action's slot: 0 = no send, s >= 1 = SLOT_KEYS[s - 1]",
    "a_tone": "the returned action's tone (index into TONES); 0 where a_slot is 0",
    "a_channel": "the returned action's channel (index into CHANNELS); 0 where a_slot is 0",
    "a_content": "the returned action's content (index into CONTENTS); 0 where a_slot is 0",
    "slot": "the returned slot's name (SLOT_KEYS, as in the export); null where no send",
    "tone": "the returned tone's name; null where no send",
    "channel": "the returned channel's name; null where no send",
    "content": "the returned content's name; null where no send",
    "propensity": "exact probability, in (0, 1], that the runtime returns this action for this "
    "row: masks, consent and exploration applied (epsilon-greedy: (1 - eps) * [a is the "
    "greedy action] + eps / allowed_actions; softmax: the masked softmax at the temperature; "
    "no exploration: 1); 1 for the safe fallback of a tripped circuit",
    "policy_version": "what decided: the registered model's name and version "
    "(models:/name/version), or the export's digest (sha256:<hex> of its manifest's integrity)",
    "exploration": "the exploration setting: 'epsilon=0.1', 'softmax:temperature=0.5' or 'none'; "
    "shadow mode with a policy share adds ';policy_share=0.2'",
    "mode": "'serve' (the runtime's decision is returned) or 'shadow' (the firm's own action, "
    "carried by the request, is returned)",
    "policy_a_slot": "the policy's own choice's slot (its best allowed action, before "
    "exploration); equals a_slot in serve mode without exploration",
    "policy_a_tone": "the policy's own choice's tone; 0 where policy_a_slot is 0",
    "policy_a_channel": "the policy's own choice's channel; 0 where policy_a_slot is 0",
    "policy_a_content": "the policy's own choice's content; 0 where policy_a_slot is 0",
    "policy_propensity": "the policy's own probability, in [0, 1], of its choice among the "
    "allowed actions (its masked distribution at temperature 1, as Decisions.probability)",
    "agree": "the returned action equals the policy's own choice (every component where a "
    "message is sent; both no-send otherwise)",
    "needs_review": "the returned action is a sensitive send a person approves first",
    "decided_at": "when the runtime decided (UTC, microseconds)",
    "allowed_actions": "how many joint actions the guards and consent allowed for this row "
    "(no-send included, so >= 1)",
}
"""what each column of :data:`SCHEMA` means"""

ROWS_PER_FILE = 100_000
"""default most decisions held in memory, and so in one file"""
SECONDS_PER_FILE = 60.0
"""default oldest age, in seconds, of a buffered decision before the buffer is written"""
FILE_PREFIX = "decisions-"


class DecisionLogError(ValueError):
    """A decision frame or a log file breaks the schema; the message names the file, the column
    and the first row at fault."""


def new_decision_ids(n: int) -> list[str]:
    """``n`` fresh decision ids (uuid4, 32 hex digits), from a cryptographically strong
    generator (:func:`random_bytes`): unique across runs and processes even when the decisions
    themselves are seeded. :func:`decision_id_bits` written in hex (:func:`ids_in_hex`): the same
    ids at a fraction of the time per id (a batch of 4,096 in ~0.2 ms instead of ~10 ms)."""
    return ids_in_hex(decision_id_bits(n))


def decision_id_bits(n: int) -> bytes:
    """The 16 ``n`` bytes of ``n`` fresh decision ids, from one draw of :func:`random_bytes`,
    with the version-4 and variant bits set as :func:`uuid.uuid4` sets them (RFC 4122)."""
    if n <= 0:
        return b""
    bits = id_entropy(n)
    uuid4_bits(np.frombuffer(bits, dtype=np.uint8).reshape(n, 16))  # a view: written in place
    return bytes(bits)


def id_entropy(n: int) -> bytearray:
    """The 16 ``n`` random bytes of ``n`` decision ids (:func:`random_bytes`), before the
    version and variant bits are set (:func:`decision_id_bits` sets them; the runtime sets
    them in its last pass over the actions, :meth:`serve.guards.Guards.finish`)."""
    return bytearray(random_bytes(16 * max(n, 0)))


def random_bytes(n: int) -> bytes:
    """``n`` cryptographically strong random bytes: OpenSSL's generator (``ssl.RAND_bytes``, a
    NIST SP 800-90A DRBG seeded and reseeded from the OS's entropy), where Python has it, else
    :func:`os.urandom`. A batch of 4,096 ids' 64 KiB takes ~10 µs from OpenSSL's generator
    against ~120 µs from the kernel's. A forked child mixes fresh OS entropy into its copy of
    the generator before its first draw (:func:`_reseed_after_fork`), so parent and child
    never draw the same bytes, whatever OpenSSL's own fork detection does. Where OpenSSL's
    generator fails (``ssl.SSLError``, an :class:`OSError`), the kernel's is read instead."""
    try:
        return _RAND_BYTES(n)
    except OSError:
        return os.urandom(n)


def _reseed_after_fork() -> None:
    _RAND_ADD(os.urandom(32), 32.0)


try:
    import ssl

    _RAND_BYTES: Callable[[int], bytes] = ssl.RAND_bytes
    _RAND_ADD = ssl.RAND_add
    os.register_at_fork(after_in_child=_reseed_after_fork)
except (ImportError, AttributeError):  # a Python without OpenSSL (or without fork)
    _RAND_BYTES = os.urandom


def ids_in_hex(bits: bytes) -> list[str]:
    """The decision ids of :func:`decision_id_bits`, 32 hex digits each: the bytes written in hex
    with a space after every 16 and split there."""
    return bits.hex(" ", 16).split(" ") if bits else []


def exploration_label(epsilon: float = 0.0, temperature: float | None = None) -> str:
    """The text of :data:`COLUMNS` ``exploration`` for a setting: ``softmax:temperature=T``,
    ``epsilon=E`` or ``none`` (epsilon 0 and no temperature)."""
    if temperature is not None:
        return f"softmax:temperature={temperature:g}"
    return "none" if epsilon == 0 else f"epsilon={epsilon:g}"


def canonical_actions(action: np.ndarray) -> np.ndarray:
    """(N, 4) int8 actions with tone, channel and content set to 0 where slot is 0 (a no-send
    is one action whatever the other components say)."""
    action = np.asarray(action, dtype=np.int64).reshape(-1, 4).copy()
    action[action[:, 0] == 0, 1:] = 0
    return action.astype(np.int8)


def decision_frame(
    *,
    client_id: Sequence[int] | np.ndarray,
    day: int | Sequence[int] | np.ndarray,
    action: np.ndarray,
    propensity: np.ndarray,
    policy_version: str,
    exploration: str,
    mode: str,
    policy_action: np.ndarray,
    policy_propensity: np.ndarray,
    needs_review: np.ndarray,
    allowed_actions: np.ndarray,
    decision_id: Sequence[str] | None = None,
    decided_at: dt.datetime | None = None,
) -> pl.DataFrame:
    """A decision-log frame (:data:`SCHEMA`) from arrays of N rows: actions are (N, 4) in
    (slot, tone, channel, content) order, probabilities (N,); the labels and ``agree`` are
    derived. ``decision_id`` defaults to fresh ids, ``decided_at`` to now (UTC). The frame is
    checked (:func:`check_decisions`) before it is returned."""
    act, pol = canonical_actions(action), canonical_actions(policy_action)
    n = len(act)
    if mode not in MODES:
        raise DecisionLogError(f"mode must be one of {MODES}, got {mode!r}")
    ids = new_decision_ids(n) if decision_id is None else list(decision_id)
    when = dt.datetime.now(dt.UTC) if decided_at is None else decided_at
    send = act[:, 0] > 0
    columns: dict[str, object] = {
        "decision_id": ids,
        "client_id": np.asarray(client_id, dtype=np.int64).reshape(-1),
        "day": np.broadcast_to(np.asarray(day, dtype=np.int32), (n,)),
    }
    for j, name in enumerate(ACTION_COLUMNS):
        columns[name] = act[:, j]
    for j, name in enumerate(LABEL_COLUMNS):
        index = act[:, j] - 1 if j == 0 else act[:, j]
        labels = np.array(LABELS[name], dtype=object)[np.where(send, index, 0)]
        columns[name] = np.where(send, labels, None).tolist()
    columns |= {
        "propensity": np.asarray(propensity, dtype=np.float64).reshape(-1),
        "policy_version": [policy_version] * n,
        "exploration": [exploration] * n,
        "mode": [mode] * n,
    }
    for j, name in enumerate(POLICY_COLUMNS):
        columns[name] = pol[:, j]
    columns |= {
        "policy_propensity": np.asarray(policy_propensity, dtype=np.float64).reshape(-1),
        "agree": (act == pol).all(axis=1),
        "needs_review": np.asarray(needs_review, dtype=bool).reshape(-1),
        "decided_at": [when] * n,
        "allowed_actions": np.asarray(allowed_actions, dtype=np.int32).reshape(-1),
    }
    lengths = {k: len(v) for k, v in columns.items()}  # type: ignore[arg-type]
    if len(set(lengths.values())) != 1:
        raise DecisionLogError(f"decision columns differ in length: {lengths}")
    frame = pl.DataFrame(columns, schema=SCHEMA)
    check_decisions(frame)
    return frame


def frame_of(
    decisions: Any,
    client_id: Sequence[int] | np.ndarray | None = None,
    day: int | Sequence[int] | np.ndarray | None = None,
    decided_at: dt.datetime | None = None,
) -> pl.DataFrame:
    """The decision-log frame of the runtime's :class:`serve.runtime.Decisions` (client ids and
    days from the request, or given here). :class:`DecisionLogError` when neither says them:
    a decision that names no client and no day cannot be joined to its outcome."""
    ids = decisions.client_id if client_id is None else client_id
    days = decisions.day if day is None else day
    if ids is None or days is None:
        missing = [n for n, v in (("client_id", ids), ("day", days)) if v is None]
        raise DecisionLogError(
            f"the decision log needs {' and '.join(missing)} for every decision: send the "
            f"column(s) {', '.join(missing)} with the features"
        )
    return decision_frame(
        client_id=ids,
        day=days,
        action=decisions.action,
        propensity=decisions.propensity,
        policy_version=decisions.policy_version,
        exploration=decisions.exploration,
        mode=decisions.mode,
        policy_action=decisions.policy_action,
        policy_propensity=decisions.policy_probability,
        needs_review=decisions.needs_review,
        allowed_actions=decisions.allowed_actions,
        decision_id=decisions.decision_id,
        decided_at=decided_at,
    )


def _first_bad(frame: pl.DataFrame, bad: pl.Expr) -> tuple[int, int] | None:
    """(first row, count) where ``bad`` holds, or None."""
    flags = frame.select(bad.fill_null(True).alias("bad"))["bad"]
    count = int(flags.sum())
    if count == 0:
        return None
    return int(flags.arg_true()[0]), count


def check_decisions(frame: pl.DataFrame, where: str = "decisions") -> pl.DataFrame:
    """``frame`` if it holds :data:`SCHEMA` (columns in order, types) and sound values, else a
    :class:`DecisionLogError` naming ``where``, the column and the first row at fault.

    Values: ids non-empty and unique; actions in range and canonical (0 after a no-send); labels
    that match the actions; propensity in (0, 1]; policy_propensity in [0, 1]; mode one of
    :data:`MODES`; ``agree`` as the actions say; ``allowed_actions`` >= 1; no nulls but in the
    label columns of a no-send.
    """
    if frame.columns != list(SCHEMA):
        missing = [c for c in SCHEMA if c not in frame.columns]
        extra = [c for c in frame.columns if c not in SCHEMA]
        raise DecisionLogError(
            f"{where}: columns must be {list(SCHEMA)} in that order; missing {missing}, "
            f"unexpected {extra}"
        )
    for name, dtype in SCHEMA.items():
        if frame.schema[name] != dtype:
            raise DecisionLogError(
                f"{where}: column {name} must be {dtype}, got {frame.schema[name]}"
            )
    send = pl.col("a_slot") > 0
    rules: list[tuple[str, pl.Expr, str]] = [
        (c, pl.col(c).is_null(), "must not be null") for c in SCHEMA if c not in LABEL_COLUMNS
    ]
    rules += [
        ("decision_id", pl.col("decision_id").str.len_chars() == 0, "must not be empty"),
        ("decision_id", pl.col("decision_id").is_duplicated(), "must be unique"),
        ("propensity", ~pl.col("propensity").is_between(0, 1, closed="right"), "lies in (0, 1]"),
        (
            "policy_propensity",
            ~pl.col("policy_propensity").is_between(0, 1),
            "lies in [0, 1]",
        ),
        ("mode", ~pl.col("mode").is_in(list(MODES)), f"is one of {list(MODES)}"),
        ("allowed_actions", pl.col("allowed_actions") < 1, "is >= 1"),
    ]
    for prefix in ("", "policy_"):
        for name, size in zip(ACTION_COLUMNS, NVEC, strict=True):
            col = pl.col(prefix + name)
            rules.append((prefix + name, ~col.is_between(0, size - 1), f"lies in 0..{size - 1}"))
        rest = [pl.col(prefix + n) != 0 for n in ACTION_COLUMNS[1:]]
        no_send = pl.col(prefix + "a_slot") == 0
        rules.append(
            (
                prefix + "a_tone",
                no_send & pl.any_horizontal(rest),
                "is 0 (with channel and content) where the slot is 0 (no send)",
            )
        )
    for name, code in zip(LABEL_COLUMNS, ACTION_COLUMNS, strict=True):
        index = pl.col(code) - 1 if name == "slot" else pl.col(code)
        expected = index.replace_strict(
            list(range(len(LABELS[name]))), list(LABELS[name]), default=None
        )
        rules.append(
            (
                name,
                pl.when(send).then(pl.col(name) != expected).otherwise(pl.col(name).is_not_null()),
                f"is the label of {code} (null where no send)",
            )
        )
    same = pl.all_horizontal(
        [pl.col(a) == pl.col(p) for a, p in zip(ACTION_COLUMNS, POLICY_COLUMNS, strict=True)]
    )
    rules.append(("agree", pl.col("agree") != same, "says whether the action is the policy's"))
    for column, bad, rule in rules:
        hit = _first_bad(frame, bad)
        if hit is not None:
            row, count = hit
            value = frame[column][row]
            raise DecisionLogError(
                f"{where}: row {row}: {column} {rule}, got {value!r} ({count} row(s) break it)"
            )
    return frame


class DecisionLog:
    """A folder of decision-log files, appended to through a bounded buffer.

    Args:
        directory: the folder (created if missing).
        rows_per_file: most decisions buffered; the buffer is written as one file when it
            reaches this many rows (a larger append is written in files of this many).
        seconds_per_file: the buffer is written when its oldest decision is this many seconds
            old, checked on every :meth:`append` and :meth:`flush_if_due` (call it from a
            timer so a quiet server still writes).
        on_flush: called with (path, rows) after each file is in place (a server reports
            what is safe on disk with it).
        clock: seconds, monotonic (replaceable in tests).

    Thread-safe: one lock guards the buffer and the writes.
    """

    def __init__(
        self,
        directory: str | Path,
        rows_per_file: int = ROWS_PER_FILE,
        seconds_per_file: float = SECONDS_PER_FILE,
        on_flush: Callable[[Path, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(rows_per_file, int) or rows_per_file < 1:
            raise ValueError(f"rows_per_file must be a whole number >= 1, got {rows_per_file!r}")
        if not seconds_per_file > 0:
            raise ValueError(f"seconds_per_file must be > 0 seconds, got {seconds_per_file!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rows_per_file = rows_per_file
        self.seconds_per_file = float(seconds_per_file)
        self.on_flush = on_flush
        self.clock = clock
        self._buffer: list[pl.DataFrame] = []
        self._rows = 0
        self._since: float | None = None
        self._sequence = 0
        self._token = secrets.token_hex(4)
        self._lock = threading.Lock()
        self.files: list[Path] = []
        """the files this log wrote, in order"""
        self.flushed_rows = 0
        """decisions written to files so far"""

    @property
    def buffered_rows(self) -> int:
        """decisions held in memory, not yet in a file"""
        return self._rows

    def append(self, frame: pl.DataFrame) -> list[Path]:
        """Buffer ``frame`` (checked against :data:`SCHEMA`); write files when the buffer is full
        or old. Returns the files written by this call (often none)."""
        check_decisions(frame)
        written: list[Path] = []
        with self._lock:
            start = 0
            while start < frame.height:
                take = min(self.rows_per_file - self._rows, frame.height - start)
                if self._since is None:
                    self._since = self.clock()
                self._buffer.append(frame.slice(start, take))
                self._rows += take
                start += take
                if self._rows >= self.rows_per_file:
                    written += self._write()
            if self._due():
                written += self._write()
        return written

    def flush(self) -> list[Path]:
        """Write the buffer as one file now (nothing when it is empty); the files written."""
        with self._lock:
            return self._write()

    def flush_if_due(self) -> list[Path]:
        """Write the buffer if its oldest decision is ``seconds_per_file`` old."""
        with self._lock:
            return self._write() if self._due() else []

    def close(self) -> None:
        """Write what is buffered."""
        self.flush()

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def _due(self) -> bool:
        return self._since is not None and self.clock() - self._since >= self.seconds_per_file

    def _write(self) -> list[Path]:
        """The buffer as one new file, atomically (the lock is held)."""
        if not self._rows:
            return []
        frame = pl.concat(self._buffer, how="vertical")
        now = dt.datetime.now(dt.UTC)
        name = f"{FILE_PREFIX}{now:%Y%m%dT%H%M%S%fZ}-{self._sequence:06d}-{self._token}.parquet"
        path = self.directory / name
        data = io.BytesIO()
        frame.write_parquet(data, compression="zstd", statistics=True)
        write_atomic(path, data.getvalue())
        self._sequence += 1
        self._buffer, self._rows, self._since = [], 0, None
        self.files.append(path)
        self.flushed_rows += frame.height
        if self.on_flush is not None:
            self.on_flush(path, frame.height)
        return [path]


def log_files(source: str | Path | Iterable[str | Path]) -> list[Path]:
    """The decision-log files of a folder (``*.parquet``, temporary dot-files left out, in name
    order), or the given files."""
    if isinstance(source, str | Path):
        source = Path(source)
        if source.is_dir():
            return sorted(p for p in source.glob("*.parquet") if not p.name.startswith("."))
        return [source]
    return [Path(p) for p in source]


def read_decisions(source: str | Path | Iterable[str | Path]) -> pl.DataFrame:
    """Every decision of a log folder (or files), in file order, checked file by file and as a
    whole (a decision id twice is refused); an empty :data:`SCHEMA` frame for an empty folder.

    Raises:
        DecisionLogError: a file breaks the schema (named with its column and row), or two rows
            share a decision id.
        FileNotFoundError: ``source`` does not exist.
    """
    if isinstance(source, str | Path) and not Path(source).exists():
        raise FileNotFoundError(f"no decision log at {source}")
    frames = []
    for path in log_files(source):
        try:
            frame = pl.read_parquet(path)
        except Exception as exc:  # polars raises its own types for a file that is not Parquet
            raise DecisionLogError(f"{path}: not a readable Parquet file ({exc})") from exc
        frames.append(check_decisions(frame, str(path)))
    if not frames:
        return pl.DataFrame(schema=SCHEMA)
    return check_decisions(pl.concat(frames, how="vertical"), str(source))


def scan_decisions(source: str | Path | Iterable[str | Path]) -> pl.LazyFrame:
    """A lazy view of a log's files (schema as :data:`SCHEMA`; values unchecked: use
    :func:`read_decisions` for a checked read)."""
    files = log_files(source)
    if not files:
        return pl.LazyFrame(schema=SCHEMA)
    return pl.scan_parquet(files, schema=SCHEMA)
