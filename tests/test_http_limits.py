"""``python serve.py`` against hostile clients on real loopback sockets: slow and idle
connections hold no thread and are dropped after the read timeout while others are answered,
a body with far more rows than allowed is refused while it streams (the server's memory stays
flat), work past the workers and queue is refused with 503, ``explain`` is bounded by rows,
malformed bodies get 400 naming what is wrong, and unsigned exports are refused by default."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import preloaded
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.config import AgentConfig
from agents.registry import train_agent
from envs.config import load_setup
from envs.features import FEATURE_NAMES, OBS_HIGH
from serve.http import MAX_DEPTH, BodyScan, Limits, ServeConfig, make_server, serve
from serve.integrity import ExportError
from serve.onnx_export import export_policy
from serve.runtime import KEY_ENV, PolicyRuntime, RequestError, TooLarge

ROOT = Path(__file__).resolve().parents[1]
NAMES = list(FEATURE_NAMES)
COL = {n: i for i, n in enumerate(NAMES)}
KEY = "http-limits-test-key"
READ_TIMEOUT = 2.0
"""seconds the test server gives a request's headers, and then its body"""


def clients(n: int, seed: int = 0) -> np.ndarray:
    """(n, D) valid requests (flags exact, one tier, one weekday, whole counts)."""
    rng = np.random.default_rng(seed)
    x = np.round(rng.uniform(0, 1, (n, len(NAMES))) * OBS_HIGH)
    for prefix in ("weekday_", "consent_tier_", "goal_", "opted_out_", "declared_slot_"):
        x[:, [COL[c] for c in NAMES if c.startswith(prefix)]] = 0
    x[np.arange(n), COL["weekday_mon"] + rng.integers(0, 7, n)] = 1
    x[:, COL["consent_tier_3"]] = 1
    x[np.arange(n), COL["goal_retirement"] + rng.integers(0, 4, n)] = 1
    x[np.arange(n), COL["declared_slot_early"] + rng.integers(0, 6, n)] = 1
    return x


def split_body(x: np.ndarray, columns: list[str] | None = None, **params: object) -> bytes:
    body: dict[str, object] = {"dataframe_split": {"columns": columns or NAMES, "data": x.tolist()}}
    if params:
        body["params"] = params
    return json.dumps(body).encode()


# ----- a signed and an unsigned export of one small policy, and a served one ------------------
@pytest.fixture(scope="module")
def policy():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train_agent(AgentConfig(name="linucb"), load_setup(), 512, 64, progress=False)


@pytest.fixture(scope="module")
def exports(policy, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("http_limits")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "signed": export_policy(policy, folder / "signed", key=KEY),
            "unsigned": export_policy(policy, folder / "unsigned", key=""),
        }


def start(export: Path, *settings: str, key: str | None = KEY) -> tuple[subprocess.Popen, int]:
    """``python serve.py export_dir=<export> port=0 *settings`` in a subprocess; (process, port)."""
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    if key:
        env[KEY_ENV] = key
    env["PYTHONPATH"] = str(ROOT)
    runs = Path(tempfile.mkdtemp(prefix="serve-runs-"))  # Hydra's run folder, out of the tree
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "serve.py"),
            f"export_dir={export}",
            "port=0",
            *settings,
            f"hydra.run.dir={runs}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()
    if "serving" not in line:
        process.kill()
        raise AssertionError(f"the server did not start: {line}{process.stderr.read()[-2000:]}")
    return process, int(line.rsplit(":", 1)[1].split("/")[0])


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def served(exports) -> Iterator[tuple[int, int]]:
    """(port, pid) of a server on the signed export (signature required: the default)."""
    process, port = start(exports["signed"], "max_rows=50", f"read_timeout={READ_TIMEOUT}")
    yield port, process.pid
    stop(process)


def status_of(pid: int, field: str) -> int:
    """A number from /proc/<pid>/status (``Threads``, or ``VmRSS``/``VmHWM`` in KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def exchange(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send raw ``request`` bytes, read until the server closes; (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        return parse_answer(read_all(s))


def read_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def parse_answer(raw: bytes) -> tuple[int, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def post(port: int, body: bytes, timeout: float = 10.0) -> tuple[int, dict]:
    head = (
        f"POST /invocations HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    status, answer = exchange(port, head + body, timeout)
    return status, json.loads(answer)


# ----- item 1: slow, idle and big clients -----------------------------------------------------
@pytest.mark.slow
def test_slow_and_idle_clients_hold_no_thread_and_are_dropped_after_the_timeout(served):
    port, pid = served
    assert post(port, split_body(clients(3)))[0] == 200  # the workers exist
    threads_before = status_of(pid, "Threads")
    stalled, idle, trickling = [], [], []
    for _ in range(40):  # bodies that promise 1,000 bytes and send 10
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b'{"datafra'
        )
        stalled.append(s)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
    trickling = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
    attack = [*stalled, *idle, *trickling]
    stop_trickle = threading.Event()

    def trickle() -> None:  # one header byte every 0.3 s, as slowloris does
        for byte in b"POST /invocations HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 1000:
            for s in trickling:
                try:
                    s.send(bytes([byte]))
                except OSError:
                    pass
            if stop_trickle.wait(0.3):
                return

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        time.sleep(0.5)
        threads_during = status_of(pid, "Threads")
        start_time = time.perf_counter()
        status, answer = post(port, split_body(clients(5)), timeout=5)
        latency = time.perf_counter() - start_time
        assert status == 200 and len(answer["predictions"]) == 5
        assert latency < 1.0, f"a normal request took {latency:.2f} s during the attack"
        assert threads_during <= threads_before + 1, (threads_before, threads_during)
        # every attacking connection is closed by the server within the timeout (plus slack)
        deadline = time.monotonic() + 2 * READ_TIMEOUT + 3
        answers = []
        for s in attack:
            s.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                answers.append(read_all(s))
            except TimeoutError as exc:
                raise AssertionError("a connection was still open after the timeout") from exc
            except ConnectionResetError:
                answers.append(b"")
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers[:40]), answers[0]
        assert b"did not arrive within 2 s" in answers[0]
        assert all(a == b"" for a in answers[40:])  # idle and trickling: closed, no answer
    finally:
        stop_trickle.set()
        trickler.join()
        for s in attack:
            s.close()
    assert post(port, split_body(clients(2)))[0] == 200


def send_big_body(port: int, rows: int) -> tuple[int, dict, float]:
    """POST ``rows`` rows as one body streamed in 1 MiB pieces without building it whole;
    (status, answer, seconds)."""
    row = json.dumps(clients(1)[0].tolist()).encode()
    head = b'{"dataframe_split": {"columns": ' + json.dumps(NAMES).encode() + b', "data": ['
    tail = b"]}}"
    length = len(head) + rows * len(row) + (rows - 1) + len(tail)
    piece = b",".join([row] * (2**20 // len(row)))
    per_piece = 2**20 // len(row)
    start_time = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(
            f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()
            + head
        )
        try:
            sent = 0
            while sent + per_piece <= rows:
                s.sendall(piece + (b"," if sent + per_piece < rows else b""))
                sent += per_piece
            s.sendall(b",".join([row] * (rows - sent)) + tail)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the end: the answer is waiting
        status, answer = parse_answer(read_all(s))
    return status, json.loads(answer), time.perf_counter() - start_time


def test_a_body_of_190000_rows_is_refused_while_it_streams_and_memory_stays_flat(served):
    port, pid = served
    rss_before, peak_before = status_of(pid, "VmRSS"), status_of(pid, "VmHWM")
    status, answer, seconds = send_big_body(port, 190_000)  # about 57 MB against --max-rows 50
    assert status == 413 and "at least 51 rows; at most 50" in answer["message"], answer
    assert seconds < 5
    bodies = [None] * 4  # four at once
    senders = [
        threading.Thread(target=lambda i=i: bodies.__setitem__(i, send_big_body(port, 190_000)))
        for i in range(4)
    ]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    assert [b[0] for b in bodies] == [413] * 4
    peak_after = status_of(pid, "VmHWM")
    grown = (peak_after - max(peak_before, rss_before)) / 1024
    assert grown < 30, f"the server's peak memory grew by {grown:.0f} MiB"  # was 560 MiB
    assert post(port, split_body(clients(50)))[0] == 200  # exactly the limit is served


def test_work_past_the_workers_and_queue_is_refused_with_503(exports):
    with pytest.warns(UserWarning, match="unsigned"):
        runtime = PolicyRuntime.load(exports["unsigned"], max_rows=10_000)
    limits = Limits(workers=1, queue=1, read_timeout=READ_TIMEOUT)
    server = make_server(runtime, "127.0.0.1", 0, limits=limits)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    body = split_body(clients(3000))
    request = (
        f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(8)]
    try:
        for s in sockets:  # all but the last byte, then the last bytes together
            s.sendall(request[:-1])
        time.sleep(0.5)
        for s in sockets:
            s.sendall(request[-1:])
        answers = [parse_answer(read_all(s)) for s in sockets]
    finally:
        for s in sockets:
            s.close()
        server.shutdown()
        server.server_close()
    statuses = sorted(status for status, _ in answers)
    assert set(statuses) == {200, 503} and statuses.count(200) >= 2, statuses
    refusal = json.loads(next(a for status, a in answers if status == 503))
    assert "1 workers + a queue of 1" in refusal["message"]


def test_explain_is_served_up_to_a_bounded_number_of_rows(exports):
    with pytest.warns(UserWarning, match="unsigned"):
        runtime = PolicyRuntime.load(exports["unsigned"], max_rows=1000)
    limits = Limits(max_explain_rows=10, read_timeout=READ_TIMEOUT)
    server = make_server(runtime, "127.0.0.1", 0, limits=limits)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        status, answer = post(port, split_body(clients(11), explain=True))
        assert status == 413 and "at most 10 rows; the request has 11" in answer["message"]
        x = clients(10)
        status, answer = post(port, split_body(x, explain=True))
        expected = runtime.decide(dict(zip(NAMES, x.T, strict=True)), explain=True).reasons
        assert status == 200 and any(expected)
        assert [p["reasons"] for p in answer["predictions"]] == ["; ".join(r) for r in expected]
        status, answer = post(port, split_body(clients(11)))  # left out: no reasons past 10
        assert status == 200 and not any(p["reasons"] for p in answer["predictions"])
    finally:
        server.shutdown()
        server.server_close()


# ----- item 6: malformed requests get 400 -----------------------------------------------------
def with_value(feature: str, literal: str) -> bytes:
    """A one-row body whose ``feature`` is written as the JSON ``literal``."""
    values = [json.dumps(v) for v in clients(1)[0].tolist()]
    values[COL[feature]] = literal
    return (
        b'{"dataframe_split": {"columns": '
        + json.dumps(NAMES).encode()
        + b', "data": [['
        + ",".join(values).encode()
        + b"]]}}"
    )


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"[" * 100_000, f"deeper than {MAX_DEPTH} levels"),
        (b'{"a":' * 50_000, f"deeper than {MAX_DEPTH} levels"),
        (with_value("declared_risk", str(10**400)), "declared_risk = 1000000000"),
        (with_value("visits_30d", "7" * 5000), "outside the range of a 64-bit float"),
        (with_value("market_stress", "1e400"), "market_stress = 1e400"),
        (with_value("market_stress", "-1e999"), "outside the range of a 64-bit float"),
        (b'{"dataframe_split": \xff}', "must be UTF-8 JSON"),
        (b'{"instances": [[1, 2]]}', "unknown key(s) instances"),
    ],
    ids=["lists", "objects", "int-10**400", "int-5000-digits", "1e400", "-1e999", "utf8", "key"],
)
def test_malformed_bodies_get_400_naming_what_is_wrong(served, body, named):
    port, _ = served
    status, answer = post(port, body)
    assert status == 400 and named in answer["message"], answer
    assert post(port, split_body(clients(1)))[0] == 200


@pytest.mark.parametrize("length", ["²".encode(), "²".encode("latin-1"), "١٢".encode(), b"12a"])
def test_a_content_length_of_other_than_ascii_digits_gets_400(served, length):
    port, _ = served
    status, _ = exchange(
        port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n{}"
    )
    assert status == 400


# ----- item 7: a column or key named twice ----------------------------------------------------
def test_a_column_named_twice_is_refused_by_name(served):
    port, _ = served
    x = clients(2)
    x[:, COL["opted_out_push"]] = 1
    columns = [*NAMES, "opted_out_push"]  # opted out ... and, last, not opted out
    body = split_body(np.hstack([x, np.zeros((2, 1))]), columns)
    status, answer = post(port, body)
    assert status == 400
    assert "column opted_out_push appears twice" in answer["message"], answer
    record = {n: v for n, v in zip(NAMES, x[0].tolist(), strict=True)}
    text = json.dumps({"dataframe_records": [record, record]})
    twice = text.replace('"opted_out_push": 1.0', '"opted_out_push": 1.0, "opted_out_push": 0', 1)
    status, answer = post(port, twice.encode())
    assert status == 400 and "record 0 names opted_out_push twice" in answer["message"], answer


# ----- item 11 (serving side): a signature is required unless allowed -------------------------
@pytest.mark.slow
def test_an_unsigned_export_is_refused_unless_allowed(exports, monkeypatch, capsys):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ExportError, match="carries no signature"):
            serve(ServeConfig(export_dir=str(exports["unsigned"]), port=0))
    process, port = start(exports["unsigned"], "require_signature=false", key=None)
    try:
        assert post(port, split_body(clients(2)))[0] == 200
    finally:
        stop(process)


@pytest.mark.slow  # serve.py processes: Hydra start-up
def test_serve_py_refuses_in_one_line_and_lists_its_keys(exports, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV} | {"PYTHONPATH": str(ROOT)}

    def serve_py(*args: str) -> subprocess.CompletedProcess:
        return preloaded.run(
            [sys.executable, str(ROOT / "serve.py"), *args, f"hydra.run.dir={tmp_path}"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )

    for args, said in (
        ([f"export_dir={exports['unsigned']}"], "carries no signature"),
        ([f"export_dir={exports['signed']}", "max_rows=0"], "max_rows must be at least 1, got 0"),
        ([f"export_dir={exports['signed']}", "consent=ignore"], "consent must be one of"),
        ([], "export_dir is required"),
    ):
        done = serve_py(*args)
        assert done.returncode == 2, (args, done.stderr[-2000:])
        assert said in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr
        assert "Traceback" not in done.stderr
    listed = serve_py("--help").stdout
    assert "export_dir: ???" in listed and "require_signature: true" in listed
    assert "max_rows: 100000" in listed and "workers: 4" in listed


# ----- the scan itself ------------------------------------------------------------------------
def reference_scan(body: bytes) -> tuple[int, int, int]:
    """(final depth, rows, deepest) of a JSON body, byte by byte."""
    depth = rows = deepest = 0
    in_string = escaped = False
    for byte in body:
        char = chr(byte)
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            rows += (char == "[" and depth == 4) or (char == "{" and depth == 3)
        elif char in "]}":
            depth -= 1
    return depth, rows, deepest


tricky = st.text(alphabet='\\"[]{}a\u00e9\u0101', max_size=8)
values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | tricky,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(tricky, inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(value=values, ascii=st.booleans(), seed=st.integers(0, 2**16))
def test_the_streaming_scan_counts_depth_and_rows_as_a_parser_would(value, ascii, seed):
    body = json.dumps(value, ensure_ascii=ascii).encode()
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(len(body) + 1), min(len(body) + 1, 4)))
    depth, rows, deepest = reference_scan(body)
    scan = BodyScan(max_rows=10**9)
    try:
        for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True):
            scan.feed(body[a:b])
    except RequestError as exc:
        assert deepest > MAX_DEPTH and not isinstance(exc, TooLarge)
        return
    assert deepest <= MAX_DEPTH
    assert (scan.depth, scan.rows, scan.in_string) == (depth, rows, False)
