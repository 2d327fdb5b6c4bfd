"""Slow and big clients against fast ones: ``python serve.py`` on loopback, bounded in count
and time.

Serves a small signed export (a LinUCB policy trained for 512 client-days) in a subprocess
(``max_rows=1000 read_timeout=5``) and runs two phases of ``--seconds`` each:

* ``no attack`` (the peer): ``--fast-clients`` threads, each posting 5-row requests on its own
  keep-alive connection (``TCP_NODELAY``, as requests/urllib3 set it) as fast as answers come;
* ``attack``: the same fast clients while another process holds 40 stalled bodies
  (``Content-Length: 1000``, 10 bytes sent), 10 idle sockets and 10 sockets trickling header
  bytes (each reopened when the server drops it), and sends 190,000-row bodies (about 57 MB)
  against the 1,000-row limit, four at a time.

Prints, per phase, the server's thread count and resident memory (before, and the most seen
while sampling every 0.1 s), the fast clients' requests and their latency p50/p99 (and p99
over the peer's), refusals by status, and how many attacking connections the server dropped.
``--legacy FILE`` serves the same export with another server module instead (for instance the
previous standard-library server, ``git show <commit>:serve/http.py > old_http.py``), given
given the flags the earlier servers shared (``EXPORT --port --max-rows``), to compare in the same
run.

    python benchmarks/http_load.py [--seconds 12] [--fast-clients 4] [--legacy old_http.py]

Writes the table to docs/results/http_load.md at the defaults (the file the docs include); with
any other option (a shorter phase, ``--legacy``) to outputs/results/http_load.md; --results-dir
DIR writes DIR/http_load.md instead.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from envs.features import FEATURE_NAMES
from experiment.results import Report, add_results_argument, at_documented_size
from serve.runtime import KEY_ENV

ROOT = Path(__file__).resolve().parents[1]
"""the project root: where ``serve.py`` runs from"""

KEY = "http-load-benchmark-key"
MAX_ROWS = 1000
READ_TIMEOUT_S = 5
BIG_ROWS = 190_000


def make_export(folder: Path) -> Path:
    """A signed export of a LinUCB policy trained briefly (seconds)."""
    from agents.config import AgentConfig
    from agents.registry import train_agent
    from envs.config import load_setup
    from serve.onnx_export import export_policy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        policy = train_agent(AgentConfig(name="linucb"), load_setup(), 512, 64, progress=False)
        return export_policy(policy, folder / "export", key=KEY)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(export: Path, port: int, legacy: Path | None, runs: Path) -> subprocess.Popen:
    """``python serve.py`` (or the ``legacy`` module, with its flags) on ``export`` at ``port``;
    Hydra's run folder goes to ``runs``."""
    env = {**os.environ, KEY_ENV: KEY, "PYTHONPATH": str(ROOT)}
    if legacy is None:
        command = [
            "serve.py",
            f"export_dir={export}",
            f"read_timeout={READ_TIMEOUT_S}",
            f"port={port}",
            f"max_rows={MAX_ROWS}",
            f"hydra.run.dir={runs}",
        ]
    else:
        command = [str(legacy), str(export), "--port", str(port), "--max-rows", str(MAX_ROWS)]
    process = subprocess.Popen(
        [sys.executable, *command],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(600):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1."):
                    return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the server did not start")


def proc_status(pid: int) -> tuple[int, float]:
    """(threads, resident MiB) of a process."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["Threads"]), int(fields["VmRSS"].split()[0]) / 1024


def small_body(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    names = list(FEATURE_NAMES)
    x = np.zeros((5, len(names)))
    col = {n: i for i, n in enumerate(names)}
    x[:, col["consent_tier_3"]] = 1
    x[np.arange(5), col["weekday_mon"] + rng.integers(0, 7, 5)] = 1
    x[np.arange(5), col["goal_retirement"] + rng.integers(0, 4, 5)] = 1
    x[np.arange(5), col["declared_slot_early"] + rng.integers(0, 6, 5)] = 1
    x[:, col["days_since_last_send"]] = rng.integers(0, 30, 5)
    return json.dumps({"dataframe_split": {"columns": names, "data": x.tolist()}}).encode()


def fast_client(port: int, until: float, seed: int, out: list, statuses: Counter) -> None:
    """Post 5-row requests on one keep-alive connection until ``until``; latencies in ``out``."""
    body, connection = small_body(seed), None
    while time.monotonic() < until:
        start = time.perf_counter()
        try:
            if connection is None:  # no Nagle delay on the client, as requests/urllib3 do
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                connection.connect()
                connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
            answer = connection.getresponse()
            answer.read()
            statuses[answer.status] += 1
            if answer.status == 200:
                out.append(time.perf_counter() - start)
            if answer.getheader("connection", "").lower() == "close":
                connection.close()
                connection = None
        except (OSError, http.client.HTTPException) as exc:
            statuses[type(exc).__name__] += 1
            if connection is not None:
                connection.close()
            connection = None


# ----- the attacker (its own process, so its work does not slow the fast clients' timing) -----
def stalled_body(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{}        ")
    return s


def idle(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def trickling(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nX-Padding: ")
    return s


def hold_slow_sockets(port: int, until: float, dropped: multiprocessing.Value) -> None:
    """Keep 40 stalled bodies, 10 idle and 10 trickling sockets open, reopening any the
    server closes; count the closes in ``dropped``."""
    kinds = [stalled_body] * 40 + [idle] * 10 + [trickling] * 10
    held: list[socket.socket | None] = [None] * len(kinds)
    while time.monotonic() < until:
        for i, kind in enumerate(kinds):
            s = held[i]
            if s is not None:
                s.setblocking(False)
                try:
                    closed = s.recv(65536) == b""
                    if not closed:
                        closed = True  # an answer (408): the server is closing it
                except BlockingIOError:
                    closed = False
                except OSError:
                    closed = True
                if closed:
                    s.close()
                    held[i] = s = None
                    with dropped.get_lock():
                        dropped.value += 1
                elif kind is trickling:
                    try:
                        s.send(b"a")
                    except OSError:
                        pass
            if s is None:
                try:
                    held[i] = kind(port)
                except OSError:
                    held[i] = None
        time.sleep(0.2)
    for s in held:
        if s is not None:
            s.close()


def send_big_bodies(port: int, until: float, statuses: dict) -> None:
    """190,000-row bodies, one after another, until ``until``."""
    row = json.dumps([0.0] * len(FEATURE_NAMES)).encode()
    head = b'{"dataframe_split": {"columns": ' + json.dumps(list(FEATURE_NAMES)).encode()
    head += b', "data": ['
    piece = b",".join([row] * 4096) + b","
    length = len(head) + BIG_ROWS * (len(row) + 1) - 1 + 3
    while time.monotonic() < until:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(
                    f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
                    "Connection: close\r\n\r\n".encode()
                    + head
                )
                try:
                    sent = 0
                    while sent + 4096 < BIG_ROWS:
                        s.sendall(piece)
                        sent += 4096
                    s.sendall(b",".join([row] * (BIG_ROWS - sent)) + b"]}}")
                except OSError:
                    pass
                answer = s.recv(64)
                key = answer.split(b" ")[1].decode() if answer else "closed"
        except OSError as exc:
            key = type(exc).__name__
        statuses[key] = statuses.get(key, 0) + 1


def attack(port: int, until: float, dropped: multiprocessing.Value, statuses: dict) -> None:
    threads = [threading.Thread(target=hold_slow_sockets, args=(port, until, dropped))]
    threads += [
        threading.Thread(target=send_big_bodies, args=(port, until, statuses)) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def phase(name: str, port: int, pid: int, seconds: float, fast: int, attacked: bool) -> dict:
    threads_before, rss_before = proc_status(pid)
    until = time.monotonic() + seconds
    manager = multiprocessing.Manager()
    dropped, big = multiprocessing.Value("i", 0), manager.dict()
    attacker = None
    if attacked:
        attacker = multiprocessing.Process(target=attack, args=(port, until, dropped, big))
        attacker.start()
        time.sleep(1.0)  # the attack is in place before the fast clients start
    latencies: list[float] = []
    statuses: Counter = Counter()
    clients = [
        threading.Thread(target=fast_client, args=(port, until, i, latencies, statuses))
        for i in range(fast)
    ]
    for t in clients:
        t.start()
    threads_most, rss_most = threads_before, rss_before
    while any(t.is_alive() for t in clients):
        threads, rss = proc_status(pid)
        threads_most, rss_most = max(threads_most, threads), max(rss_most, rss)
        time.sleep(0.1)
    if attacker is not None:
        attacker.join()
    out = {
        "phase": name,
        "threads": f"{threads_before} -> {threads_most}",
        "rss_mib": f"{rss_before:.0f} -> {rss_most:.0f}",
        "requests": len(latencies),
        "p50_ms": 1e3 * float(np.percentile(latencies, 50)) if latencies else float("nan"),
        "p99_ms": 1e3 * float(np.percentile(latencies, 99)) if latencies else float("nan"),
        "fast_other": dict((k, v) for k, v in statuses.items() if k != 200),
        "dropped": dropped.value,
        "big_bodies": dict(big),
    }
    manager.shutdown()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=12.0, help="length of each phase")
    parser.add_argument("--fast-clients", type=int, default=4)
    parser.add_argument("--legacy", type=Path, default=None, help="another server module")
    add_results_argument(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        export = make_export(Path(tmp))
        port = free_port()
        server = start_server(export, port, args.legacy, Path(tmp) / "runs")
        try:
            rows = [
                phase("no attack", port, server.pid, args.seconds, args.fast_clients, False),
                phase("attack", port, server.pid, args.seconds, args.fast_clients, True),
            ]
        finally:
            server.terminate()
            server.wait(timeout=30)
    label = f"legacy {args.legacy}" if args.legacy else "serve.py"
    report = Report()
    report(f"{label} on loopback: {args.fast_clients} fast clients, {args.seconds:g} s a phase.")
    report()
    report(
        "| phase | server threads | server RSS (MiB) | fast requests | p50 (ms) | p99 (ms) "
        "| p99 / no attack | attacking connections dropped | other answers |"
    )
    report("|---|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        report(
            f"| {r['phase']} | {r['threads']} | {r['rss_mib']} | {r['requests']:,} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['p99_ms'] / rows[0]['p99_ms']:.2f} | "
            f"{r['dropped']:,} | fast {r['fast_other']}, big bodies {r['big_bodies']} |"
        )
    report.write("http_load", args.results_dir, documented_size=at_documented_size(parser, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
