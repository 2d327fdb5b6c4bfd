"""Served days: a simulated firm whose every decision is made by the guarded runtime, in process
or over HTTP, while the simulator keeps the world going and records the firm's export.

Each day the simulator's observation of every client still with the firm (which is
:func:`loop.features.build_features` on the export so far, bit for bit; :func:`serve_days`
checks it on the days it is told) goes to the runtime with the clients' ids and the day; the
runtime's decisions (decision id, action, exact propensity) are appended to a decision log, and
the returned actions are what the simulator steps. A send the runtime holds for review
(``needs_review``) goes out only when approved: a reviewer approves each held decision with
probability ``approve`` on its own day (the outcome goes to the review-outcomes table of
:mod:`loop.review`), and a rejected one falls back to no send. The
:class:`~loop.simulated.ExportRecorder` writes each send with the decision id behind it, so
the export and the decision log join (``python join.py``) into the logged dataset the
estimators read.

Three ways to reach the runtime:

* ``via="runtime"``: :class:`PolicyRuntime` in this process, the log written here
  (:class:`serve.decisions.DecisionLog`);
* ``via="http"``: ``POST /invocations`` of ``python serve.py`` (started here on a free
  loopback port with the same exploration setting and ``decision_log.dir``, and stopped with
  SIGTERM at the end so that its buffer is written; or a server already running at ``url``,
  whose own ``decision_log.dir`` then holds the log). The server writes the log: what it
  answered is what it logged;
* ``via="batch"``: the batch command, ``python decide.py``, once a day on the export recorded
  so far (written to disk): the features come from the feature builder, not from the
  simulator, and the whole client base is decided and logged.

With the same exploration seed, the runtime and HTTP ways decide the same actions with the same
propensities (the draws follow the requests in order; requests carry the same rows in the same
batches). The batch way explores day ``d`` with seed ``seed + d``; at epsilon 0 all three
decide the same actions.

Served days start from the simulator's day 0 on fresh clients: an export alone cannot restart
the world behind it (it holds nothing latent), so a firm's warm-up under another policy is not
continued here. Starting at day 0 with ids from :data:`evaluation.record.LOG_CLIENT_OFFSET`
is also what lets ``python join.py seed=<seed>`` write a ``seed`` column from which
``evaluate.py`` rolls each target out on the same clients and luck (the truth).
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import polars as pl

from agents.base import Policy
from envs.config import Setup
from envs.core import CadenceCore
from envs.features import FEATURE_NAMES
from envs.spaces import multi_to_flat
from evaluation.record import LOG_CLIENT_OFFSET
from loop.events import Export, validate_export, write_export
from loop.features import build_features
from loop.review import OUTCOME_SCHEMA, write_table
from loop.simulated import ExportRecorder
from serve.decisions import DecisionLog, frame_of, log_files, read_decisions
from serve.runtime import FIRM_COLUMNS, Exploration, PolicyRuntime

ROOT = Path(__file__).resolve().parents[1]
"""the repository root (where ``serve.py`` is)"""
BATCH_ROWS = 5_000
"""clients decided per runtime call or HTTP request (the same batches both ways)"""
HTTP_TIMEOUT_S = 60.0
"""seconds an HTTP request (connect, send, answer) may take before it is abandoned"""
START_TIMEOUT_S = 120.0
"""seconds ``python serve.py`` may take to load the export and listen"""
STOP_TIMEOUT_S = 60.0
"""seconds ``python serve.py`` may take to write its decision log's buffer and exit"""
DECIDE_TIMEOUT_S = 600.0
"""seconds one day's ``python decide.py`` may take"""
VIAS = ("runtime", "http", "batch")


@dataclass
class Served:
    """One batch of decisions as the simulator needs them (N rows)."""

    action: np.ndarray
    """(N, 4) int64 (slot, tone, channel, content); slot 0 is no-send"""
    decision_id: np.ndarray
    """(N,) object: the decision id of each row"""
    propensity: np.ndarray
    """(N,) exact probability of the returned action"""
    needs_review: np.ndarray
    """(N,) bool: a person approves the send first"""


class Decider(Protocol):
    """Decides a batch of clients on a day (and sees that the decisions are logged); in shadow
    mode ``firm`` is the firm's own (N, 4) action, which is what is returned (explored around)."""

    def decide(
        self, x: np.ndarray, client_id: np.ndarray, day: int, firm: np.ndarray | None = None
    ) -> Served: ...


class RuntimeDecider:
    """The runtime in this process; every decision is appended to ``log``."""

    def __init__(self, runtime: PolicyRuntime, log: DecisionLog) -> None:
        self.runtime, self.log = runtime, log

    def decide(
        self, x: np.ndarray, client_id: np.ndarray, day: int, firm: np.ndarray | None = None
    ) -> Served:
        """Decide the (N, D) float32 observations ``x`` (in ``FEATURE_NAMES`` order)."""
        table = dict(zip(FEATURE_NAMES, x.T, strict=True))
        decisions = self.runtime.decide(
            table, explain=False, client_id=client_id, day=day, firm_action=firm
        )
        self.log.append(frame_of(decisions))
        return Served(
            action=np.asarray(decisions.action, dtype=np.int64),
            decision_id=np.array(decisions.decision_id, dtype=object),
            propensity=np.asarray(decisions.propensity, dtype=np.float64),
            needs_review=np.asarray(decisions.needs_review, dtype=bool),
        )


class HttpDecider:
    """A client of ``python serve.py``'s ``POST /invocations`` (the server logs the decisions).

    Args:
        url: the server's base address, e.g. ``http://127.0.0.1:5001``.
        action_labels: the export's ``action_labels`` (manifest.json), to read the answer's
            labels back into indices.
        timeout_s: seconds one request may take.
    """

    def __init__(
        self, url: str, action_labels: dict[str, list[str]], timeout_s: float = HTTP_TIMEOUT_S
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.index = {
            part: {label: i for i, label in enumerate(v)} for part, v in action_labels.items()
        }

    def decide(
        self, x: np.ndarray, client_id: np.ndarray, day: int, firm: np.ndarray | None = None
    ) -> Served:
        """Decide the (N, D) float32 observations ``x`` (in ``FEATURE_NAMES`` order); float32
        values travel exactly (as float64 decimal text). ``firm``: the firm's action, sent as
        the shadow-mode columns."""
        rows = [
            [*values, int(cid), int(day)]
            for values, cid in zip(x.astype(np.float64).tolist(), client_id.tolist(), strict=True)
        ]
        columns = [*FEATURE_NAMES, "client_id", "day"]
        if firm is not None:
            columns += list(FIRM_COLUMNS)
            rows = [row + a for row, a in zip(rows, firm.astype(np.int64).tolist(), strict=True)]
        body = {
            "dataframe_split": {"columns": columns, "data": rows},
            "params": {"explain": False},
        }
        answer = self._post(json.dumps(body).encode())
        predictions = answer.get("predictions")
        if not isinstance(predictions, list) or len(predictions) != len(x):
            raise RuntimeError(
                f"{self.url}/invocations answered {len(predictions or [])} predictions for "
                f"{len(x)} rows"
            )
        action = np.zeros((len(x), 4), dtype=np.int64)
        for i, p in enumerate(predictions):
            action[i, 0] = self.index["slot"][p["slot"]]
            if action[i, 0] > 0:
                for j, part in enumerate(("tone", "channel", "content"), start=1):
                    action[i, j] = self.index[part][p[part]]
        return Served(
            action=action,
            decision_id=np.array([p["decision_id"] for p in predictions], dtype=object),
            propensity=np.array([p["propensity"] for p in predictions], dtype=np.float64),
            needs_review=np.array([p["needs_review"] for p in predictions], dtype=bool),
        )

    def _post(self, data: bytes) -> dict:
        request = urllib.request.Request(
            f"{self.url}/invocations", data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:500]
            raise RuntimeError(f"{self.url}/invocations answered {error.code}: {detail}") from error
        except (urllib.error.URLError, TimeoutError) as error:
            raise RuntimeError(
                f"{self.url}/invocations did not answer within {self.timeout_s:g} s: {error}"
            ) from error


class BatchDecider:
    """The batch command's path: each day the export recorded so far is written next to
    ``decisions_dir`` (``.<name>-export``) and ``python decide.py`` decides that day for the
    whole client base from it (features by the feature builder), appending to the log in
    ``decisions_dir``.
    Day ``d`` explores with seed ``seed + d`` (a daily run with a fresh seed; the same seed
    every day would repeat the same draws for the same rows).

    :attr:`recorder` must be set (the simulator's :class:`~loop.simulated.ExportRecorder`)
    before the first :meth:`decide`.
    """

    def __init__(
        self,
        export_dir: Path,
        exploration: Exploration,
        decisions_dir: Path,
        require_signature: bool = False,
    ) -> None:
        self.export_dir, self.exploration = export_dir, exploration
        self.decisions_dir, self.require_signature = decisions_dir, require_signature
        self.recorder: ExportRecorder | None = None
        self._day: int | None = None
        self._frame = pl.DataFrame()
        self.printed: list[str] = []
        """what each day's ``decide.py`` printed"""

    def decide(
        self, x: np.ndarray, client_id: np.ndarray, day: int, firm: np.ndarray | None = None
    ) -> Served:
        """The day's decisions of ``client_id`` (the whole day is decided at its first call;
        ``x`` is not sent: the batch command builds the features from the export)."""
        if firm is not None:
            raise ValueError("the batch command decides in serve mode only (no shadow mode)")
        if day != self._day:
            self._frame = self._decide_day(day)
            self._day = day
        got = pl.DataFrame({"client_id": client_id.astype(np.int64)}).join(
            self._frame, on="client_id", how="left", maintain_order="left"
        )
        missing = got.filter(pl.col("decision_id").is_null())
        if missing.height:
            raise RuntimeError(
                f"day {day}: the batch command decided no action for client "
                f"{missing['client_id'][0]} ({missing.height} client(s) like it)"
            )
        return Served(
            action=got.select("a_slot", "a_tone", "a_channel", "a_content")
            .to_numpy()
            .astype(np.int64),
            decision_id=np.array(got["decision_id"].to_list(), dtype=object),
            propensity=got["propensity"].to_numpy().astype(np.float64),
            needs_review=got["needs_review"].to_numpy().astype(bool),
        )

    def _decide_day(self, day: int) -> pl.DataFrame:
        """Write the export so far, run ``python decide.py`` for ``day`` on it, and return the
        decisions it appended to the log."""
        if self.recorder is None:
            raise RuntimeError("BatchDecider.recorder must be set before deciding")
        events_dir = self.decisions_dir.parent / f".{self.decisions_dir.name}-export"
        write_export(validate_export(self.recorder.export(), "served export"), events_dir)
        before = set(log_files(self.decisions_dir)) if self.decisions_dir.exists() else set()
        seed = self.exploration.seed
        command = [
            sys.executable,
            str(ROOT / "decide.py"),
            f"export_dir={self.export_dir}",
            f"events_dir={events_dir}",
            f"day={day}",
            f"exploration.epsilon={self.exploration.epsilon}",
            f"exploration.seed={'null' if seed is None else seed + day}",
            f"decision_log.dir={self.decisions_dir}",
            f"require_signature={str(self.require_signature).lower()}",
        ]
        if self.exploration.temperature is not None:
            command.append(f"exploration.temperature={self.exploration.temperature}")
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=DECIDE_TIMEOUT_S
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"decide.py for day {day} exited with status {done.returncode}: "
                f"{(done.stderr or done.stdout)[-2000:]}"
            )
        self.printed.append(done.stdout.strip())
        new = sorted(set(log_files(self.decisions_dir)) - before)
        if not new:
            raise RuntimeError(f"decide.py for day {day} wrote no decision-log file")
        return read_decisions(new)


class ServedPolicy(Policy):
    """A :class:`agents.base.Policy` that decides through a :class:`Decider`: the firm's
    serving path, seen from the simulator.

    Call :meth:`begin_day` with the day, the clients' ids and who is still a client before
    each :meth:`act`; clients who left get no send (and no decision). :attr:`last` holds the
    day's decisions of every row (decision ids None for rows not decided).

    ``firm``: the firm's own rules, for shadow mode: their action on each row goes with the
    request, and the runtime returns it (explored around) while logging its own choice beside.
    """

    name = "served"

    def __init__(
        self, decider: Decider, batch_rows: int = BATCH_ROWS, firm: Policy | None = None
    ) -> None:
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
        self.decider, self.batch_rows, self.firm = decider, batch_rows, firm
        self._context: tuple[int, np.ndarray, np.ndarray] | None = None
        self.last: Served | None = None
        self.decided = 0
        """decisions made so far (rows decided, over every day)"""

    def begin_day(self, day: int, client_id: np.ndarray, live: np.ndarray) -> None:
        """The calendar ``day`` the next :meth:`act` decides, each row's ``client_id`` and
        ``live`` (bool, still a client)."""
        self._context = (day, np.asarray(client_id, dtype=np.int64), np.asarray(live, dtype=bool))

    def act(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """(N, 4) actions for the (N, OBS_DIM) observations of the day :meth:`begin_day` named;
        raises if an action is not allowed by ``masks`` (the simulator's guardrails)."""
        if self._context is None:
            raise RuntimeError("ServedPolicy.act needs begin_day(day, client_id, live) first")
        day, ids, live = self._context
        self._context = None
        n = len(obs)
        served = Served(
            action=np.zeros((n, 4), dtype=np.int64),
            decision_id=np.full(n, None, dtype=object),
            propensity=np.ones(n),
            needs_review=np.zeros(n, dtype=bool),
        )
        rows = np.flatnonzero(live)
        firm = None if self.firm is None else np.asarray(self.firm.act(obs, masks), np.int64)
        for start in range(0, len(rows), self.batch_rows):
            batch = rows[start : start + self.batch_rows]
            got = self.decider.decide(
                obs[batch], ids[batch], day, None if firm is None else firm[batch]
            )
            served.action[batch] = got.action
            served.decision_id[batch] = got.decision_id
            served.propensity[batch] = got.propensity
            served.needs_review[batch] = got.needs_review
            self.decided += len(batch)
        flat = multi_to_flat(served.action)
        against = np.flatnonzero(~masks[np.arange(n), flat])
        if against.size:
            i = int(against[0])
            raise RuntimeError(
                f"day {day}: client {ids[i]} was served {served.action[i].tolist()}, which the "
                f"simulator's guardrails do not allow ({against.size} row(s) like it)"
            )
        self.last = served
        return served.action


@dataclass
class ServedRun:
    """What :func:`serve_days` wrote and decided."""

    export: Export
    """the firm's export of the served days (validated; sends carry their decision ids)"""
    decisions: pl.DataFrame
    """the decision log, as read back from its folder"""
    reviews: pl.DataFrame
    """review outcomes of the held decisions (:data:`loop.review.OUTCOME_SCHEMA`)"""
    checked_days: list[int]
    """days on which the env's observations were checked against the feature builder"""
    decisions_dir: Path
    """the decision log's folder"""


def serve_days(
    export_dir: str | Path,
    setup: Setup,
    clients: int,
    days: int,
    seed: int,
    exploration: Exploration,
    via: str = "runtime",
    url: str | None = None,
    decisions_dir: str | Path = "outputs/decisions",
    events_dir: str | Path | None = None,
    reviews_path: str | Path | None = None,
    approve: float = 1.0,
    batch_rows: int = BATCH_ROWS,
    check_days: Sequence[int] | None = None,
    require_signature: bool = False,
    timeout_s: float = HTTP_TIMEOUT_S,
    firm: Policy | None = None,
) -> ServedRun:
    """Simulate ``days`` days of a firm of ``clients`` clients (simulator seed ``seed``) whose
    every decision the runtime of the policy export ``export_dir`` makes, exploring as
    ``exploration`` says; write the decision log to ``decisions_dir`` (which must hold no log
    yet), and the export to ``events_dir`` and the review outcomes to ``reviews_path`` where
    given.

    Args:
        via: ``"runtime"`` (in process), ``"http"`` (``python serve.py``: started here unless
            ``url`` names a running server, whose ``decision_log.dir`` must be
            ``decisions_dir`` and whose exploration setting is its own) or ``"batch"`` (the
            batch command, ``python decide.py``, on the export so far, every day).
        approve: probability (0..1) that a held send is approved on its decision day (drawn
            from ``seed``); a rejected one is not sent.
        batch_rows: clients per runtime call or HTTP request.
        check_days: days on which the observations the runtime is given are checked to be the
            feature builder's on the export so far, bit for bit (None: the last served day;
            ``()``: none). A difference raises.
        require_signature: refuse an unsigned policy export.
        timeout_s: seconds an HTTP request may take.
        firm: the firm's own rules (a heuristic) for a shadow period: they decide every
            client-day, explored around as ``exploration`` says, while the export's policy
            only watches (its choice is logged beside, the log's mode is ``shadow``).
            ``via`` runtime or http (a server started here; a running one at ``url`` must
            be in shadow mode itself).
    """
    if via not in VIAS:
        raise ValueError(f"via must be one of {VIAS}, got {via!r}")
    if firm is not None and via == "batch":
        raise ValueError("a shadow period (firm=...) is served via runtime or http, not batch")
    if url is not None and via != "http":
        raise ValueError(f"url={url!r} is for via='http', not via={via!r}")
    if not 0.0 <= approve <= 1.0:
        raise ValueError(f"approve must be a probability in [0, 1], got {approve!r}")
    if days < 1 or clients < 1:
        raise ValueError(f"days and clients must be at least 1, got days={days}, clients={clients}")
    decisions_dir = Path(decisions_dir)
    if decisions_dir.exists() and log_files(decisions_dir):
        raise ValueError(
            f"{decisions_dir} already holds a decision log; served days write a fresh one "
            "(one decision a client-day): choose an empty folder"
        )
    check = {days - 1} if check_days is None else set(check_days)
    with _decider(
        Path(export_dir),
        exploration,
        via,
        url,
        decisions_dir,
        require_signature,
        timeout_s,
        shadow=firm is not None,
    ) as decider:
        policy = ServedPolicy(decider, batch_rows, firm)
        export, reviews, checked = _run(policy, setup, clients, days, seed, approve, check)
    decisions = _read_log(decisions_dir, policy.decided, STOP_TIMEOUT_S if url else 0.0)
    if events_dir is not None:
        write_export(export, events_dir)
    if reviews_path is not None:
        write_table(reviews, reviews_path)
    return ServedRun(
        export=export,
        decisions=decisions,
        reviews=reviews,
        checked_days=checked,
        decisions_dir=decisions_dir,
    )


def _read_log(folder: Path, expected: int, wait_s: float) -> pl.DataFrame:
    """The decision log in ``folder``, once it holds the ``expected`` decisions (a running
    server writes its buffer within its ``decision_log.seconds_per_file``: waited for up to
    ``wait_s`` seconds); raises when it holds another number."""
    deadline = time.monotonic() + wait_s
    while True:
        files = log_files(folder) if folder.exists() else []
        decisions = read_decisions(files) if files else None
        rows = 0 if decisions is None else decisions.height
        if rows == expected and decisions is not None:
            return decisions
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"{folder} holds {rows:,} decisions, but {expected:,} were made (is it the "
                "decision_log.dir of the server that decided them?)"
            )
        time.sleep(0.5)


def _run(
    policy: ServedPolicy,
    setup: Setup,
    clients: int,
    days: int,
    seed: int,
    approve: float,
    check: set[int],
) -> tuple[Export, pl.DataFrame, list[int]]:
    """The simulator's loop: (the export, the review outcomes, the days checked)."""
    core = CadenceCore(setup, clients, autoreset=False, client_id_offset=LOG_CLIENT_OFFSET)
    obs = core.reset(seed)
    recorder = ExportRecorder(core)
    if isinstance(policy.decider, BatchDecider):
        policy.decider.recorder = recorder
    rng = np.random.default_rng([seed, 1])  # the reviewer's draws, apart from the world's
    gone = np.zeros(clients, dtype=bool)
    reviews, checked = [], []
    for day in range(days):
        ids = core.world.client_id.astype(np.int64)
        if day in check:
            _check_features(recorder, day, ids[~gone], obs[~gone])
            checked.append(day)
        policy.begin_day(core.day, ids, ~gone)
        action = policy.act(obs, core.joint_masks())
        served = policy.last
        assert served is not None
        held = np.flatnonzero(served.needs_review & ~gone)
        approved = rng.random(len(held)) < approve
        reviews.append(
            pl.DataFrame(
                {
                    "decision_id": served.decision_id[held].tolist(),
                    "outcome": np.where(approved, "approved", "rejected").tolist(),
                    "reviewed_day": np.full(len(held), core.day),
                },
                schema=OUTCOME_SCHEMA,
            )
        )
        delivered = action.copy()
        delivered[held[~approved]] = 0
        result = core.step(delivered)
        recorder.record(delivered, result, served.decision_id)
        gone |= result.outcomes["churned"]
        obs = result.obs
    export = validate_export(recorder.export(), "served export")
    return export, pl.concat(reviews), checked


def _check_features(recorder: ExportRecorder, day: int, ids: np.ndarray, obs: np.ndarray) -> None:
    """Raise unless the feature builder, on the export recorded so far, gives ``obs`` (the
    env's observations of the clients ``ids``) on ``day``, bit for bit."""
    export = validate_export(recorder.export(), "served export")
    features = build_features(export, day)
    built_ids = features["client_id"].to_numpy().astype(np.int64)
    if not np.array_equal(built_ids, ids):
        raise RuntimeError(
            f"day {day}: the feature builder has {len(built_ids)} clients, the simulator "
            f"{len(ids)} (first differing id: "
            f"{np.setxor1d(built_ids, ids)[:1].tolist()})"
        )
    built = features.select(FEATURE_NAMES).to_numpy().astype(np.float32)
    differ = np.argwhere(built.view(np.uint32) != obs.astype(np.float32).view(np.uint32))
    if differ.size:
        row, col = (int(v) for v in differ[0])
        raise RuntimeError(
            f"day {day}: client {ids[row]}: {FEATURE_NAMES[col]} is {built[row, col]!r} from "
            f"the export but {obs[row, col]!r} in the simulator ({len(differ)} value(s) differ)"
        )


@contextmanager
def _decider(
    export_dir: Path,
    exploration: Exploration,
    via: str,
    url: str | None,
    decisions_dir: Path,
    require_signature: bool,
    timeout_s: float,
    shadow: bool = False,
) -> Iterator[Decider]:
    """The decider ``via`` says, closed (log flushed, server stopped) on the way out."""
    if via == "batch":
        yield BatchDecider(export_dir, exploration, decisions_dir, require_signature)
        return
    if via == "runtime":
        runtime = PolicyRuntime.load(
            export_dir,
            exploration=exploration,
            require_signature=require_signature,
            shadow=shadow,
        )
        with DecisionLog(decisions_dir) as log:
            yield RuntimeDecider(runtime, log)
        return
    labels = json.loads((export_dir / "manifest.json").read_text())["action_labels"]
    if url is not None:
        yield HttpDecider(url, labels, timeout_s)
        return
    with serve_process(
        export_dir, exploration, decisions_dir, require_signature, shadow
    ) as address:
        yield HttpDecider(address, labels, timeout_s)


@contextmanager
def serve_process(
    export_dir: Path,
    exploration: Exploration,
    decisions_dir: Path,
    require_signature: bool = False,
    shadow: bool = False,
) -> Iterator[str]:
    """Run ``python serve.py`` for ``export_dir`` on a free loopback port with ``exploration``
    and its decision log in ``decisions_dir``; yield its address (``http://127.0.0.1:<port>``);
    stop it with SIGTERM on the way out (its log's buffer is written) and raise if it did not
    exit cleanly."""
    command = [
        sys.executable,
        str(ROOT / "serve.py"),
        f"export_dir={export_dir}",
        "port=0",
        f"exploration.epsilon={exploration.epsilon}",
        f"exploration.seed={'null' if exploration.seed is None else exploration.seed}",
        f"exploration.policy_share={exploration.policy_share}",
        f"decision_log.dir={decisions_dir}",
        f"require_signature={str(require_signature).lower()}",
        f"shadow={str(shadow).lower()}",
    ]
    if exploration.temperature is not None:
        command.append(f"exploration.temperature={exploration.temperature}")
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        address = _address(lines, output, process)
        yield address
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise RuntimeError(
                f"serve.py did not stop within {STOP_TIMEOUT_S:g} s of SIGTERM"
            ) from None
        _drain(lines, output)
        if status != 0:
            raise RuntimeError(f"serve.py exited with status {status}: {''.join(output)[-2000:]}")


def _address(lines: queue.Queue[str | None], output: list[str], process: subprocess.Popen) -> str:
    """The address ``serve.py`` prints once it listens (``serving ... on http://h:p/...``)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        if line is None:
            raise RuntimeError(
                f"serve.py exited (status {process.wait()}) before listening: "
                f"{''.join(output)[-2000:]}"
            )
        output.append(line)
        if line.startswith("serving ") and " on http://" in line:
            return line.split(" on ", 1)[1].strip().removesuffix("/invocations")
    raise RuntimeError(f"serve.py did not listen within {START_TIMEOUT_S:g} s")


def _drain(lines: queue.Queue[str | None], output: list[str]) -> None:
    """Move what the server printed after it stopped into ``output``."""
    while True:
        try:
            line = lines.get(timeout=5.0)
        except queue.Empty:
            return
        if line is None:
            return
        output.append(line)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m loop.served``: serve days of a simulated firm and write the export, the
    decision log and the review outcomes (``--help`` lists the flags)."""
    import argparse

    from envs.config import load_setup

    parser = argparse.ArgumentParser(
        prog="python -m loop.served",
        description="A simulated firm whose every decision the guarded runtime makes (in "
        "process, over python serve.py's HTTP, or by python decide.py each day), exploring: "
        "writes the firm's export, the decision log and the review outcomes, ready for "
        "python join.py.",
    )
    parser.add_argument("--export-dir", required=True, help="the policy export (export.py)")
    parser.add_argument("--via", choices=VIAS, default="runtime", help="how decisions are made")
    parser.add_argument("--url", default=None, help="a running serve.py (--via http)")
    parser.add_argument("--clients", type=int, default=1_000, help="simulated clients")
    parser.add_argument("--days", type=int, default=20, help="served days, from day 0")
    parser.add_argument("--seed", type=int, default=0, help="the simulator's seed")
    parser.add_argument("--epsilon", type=float, default=0.1, help="exploration epsilon")
    parser.add_argument("--exploration-seed", type=int, default=7, help="seed of the draws")
    parser.add_argument("--approve", type=float, default=1.0, help="approval rate of held sends")
    parser.add_argument("--decisions", required=True, help="decision-log folder (fresh)")
    parser.add_argument("--events", required=True, help="where the firm's export is written")
    parser.add_argument("--reviews", required=True, help="review-outcomes file (Parquet)")
    parser.add_argument(
        "--horizon-days", type=int, default=90, help="env.horizon_days of the simulated world"
    )
    args = parser.parse_args(argv)
    setup = load_setup(overrides=[f"env.horizon_days={args.horizon_days}"])
    try:
        run = serve_days(
            args.export_dir,
            setup,
            args.clients,
            args.days,
            args.seed,
            Exploration(epsilon=args.epsilon, seed=args.exploration_seed),
            via=args.via,
            url=args.url,
            decisions_dir=args.decisions,
            events_dir=args.events,
            reviews_path=args.reviews,
            approve=args.approve,
        )
    except (ValueError, RuntimeError, OSError) as error:
        print(f"loop.served: {' '.join(str(error).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    d = run.decisions
    sends = run.export.sends
    print(
        f"served {args.days} days of {args.clients:,} clients via {args.via} "
        f"({d['exploration'][0]}): {d.height:,} decisions, {sends.height:,} sends "
        f"(every one with its decision id: {sends['decision_id'].is_not_null().all()}), "
        f"mean propensity {d['propensity'].mean():.4f}, {run.reviews.height:,} held for review "
        f"({(run.reviews['outcome'] == 'approved').sum():,} approved); features checked "
        f"against the builder on day(s) {run.checked_days}"
    )
    print(f"wrote {args.events}, {args.decisions} and {args.reviews}")


if __name__ == "__main__":
    main()
