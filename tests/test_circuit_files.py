"""Files written for serving and read by it fail closed: the circuit file keeps the mode of what
it replaces, is written through a symlink, refuses a FIFO or device by name on either side, is
bounded in size and parsed once while unchanged; a trip dated in the future waits for its date;
the monitor's command line answers a bad log in one line; the crisis summary never says nan%."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import stat
import sys
import threading
import time
from pathlib import Path

import polars as pl
import preloaded
import pytest

from evaluation.crisis import Crisis, CrisisResult
from evaluation.monitor import Monitor, MonitorConfig, write_circuit
from serve import circuit
from serve.circuit import CircuitError
from serve.files import NotARegularFile, write_atomic
from simulate.config import ConfigError

HOUR_AGO = time.time() - 3600


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _alerting_monitor() -> Monitor:
    """A monitor whose saver_debt opt-outs jumped twenty-fold on its last day (in alert)."""
    monitor = Monitor(MonitorConfig(baseline_days=3, guard_days=0))
    for day in range(4):
        monitor.update(day, {("saver_debt", "unsubscribed"): (200.0 if day == 3 else 10.0, 1e4)})
    assert ("saver_debt", "unsubscribe_rate", "up") in monitor.in_alert
    return monitor


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


# --- writing (evaluation/monitor.py --circuit, serve/files.py) ---------------------------------


def test_the_circuit_file_keeps_the_mode_of_the_file_it_replaces(tmp_path, umask_022):
    path = tmp_path / "circuit.json"
    path.write_text('{"tripped": []}')
    for mode in (0o644, 0o640, 0o664):
        path.chmod(mode)
        write_circuit(_alerting_monitor(), path)
        assert _mode(path) == mode  # was 0600 (tempfile's) whatever it replaced
    assert "saver_debt" in circuit.read(path)


def test_a_new_circuit_file_is_readable_by_a_server_running_as_another_account(tmp_path, umask_022):
    path = write_circuit(Monitor(), tmp_path / "new.json")
    assert _mode(path) == 0o644
    assert circuit.read(path) == {}
    assert [p.name for p in tmp_path.iterdir()] == ["new.json"]  # no temporary file left


def test_the_circuit_file_is_written_through_a_symlink_to_its_target(tmp_path):
    target = tmp_path / "releases" / "circuit.json"
    target.parent.mkdir()
    target.write_text('{"tripped": []}')
    target.chmod(0o640)
    link = tmp_path / "circuit.json"
    link.symlink_to(target)
    write_circuit(_alerting_monitor(), link)
    assert link.is_symlink() and os.readlink(link) == str(target)  # the link stays a link
    assert "saver_debt" in circuit.read(target)  # the server reading the target sees the trip
    assert _mode(target) == 0o640
    assert sorted(p.name for p in target.parent.iterdir()) == ["circuit.json"]
    # a dangling link creates its target
    target.unlink()
    write_atomic(link, b'{"tripped": ["all"]}')
    assert link.is_symlink() and circuit.read(target) == {"all": None}


@pytest.mark.parametrize("kind", ["fifo", "directory", "socket"])
def test_a_fifo_socket_or_directory_at_the_circuit_path_is_refused_by_name(tmp_path, kind):
    path = tmp_path / "circuit.json"
    if kind == "fifo":
        os.mkfifo(path)
        said = "a FIFO (named pipe)"
    elif kind == "directory":
        path.mkdir()
        said = "a directory"
    else:
        import socket

        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        said = "a socket"
    with pytest.raises(
        NotARegularFile, match=re.escape(f"circuit.json is {said}, not a regular file")
    ):
        write_circuit(Monitor(), path)
    link = tmp_path / "link.json"
    link.symlink_to(path)
    with pytest.raises(NotARegularFile, match="the target of the symlink .*link.json"):
        write_atomic(link, b"{}")
    assert not stat.S_ISREG(os.stat(path).st_mode)  # left as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["circuit.json", "link.json"]


def test_a_device_at_the_circuit_path_is_refused_by_name():
    with pytest.raises(NotARegularFile, match="/dev/null is a character device"):
        write_atomic("/dev/null", b"{}")


def test_the_watch_mode_refuses_a_fifo_circuit_path_naming_the_key(tmp_path):
    from agents.heuristics import HEURISTICS
    from envs.config import load_setup
    from evaluation.logs import write_logs
    from evaluation.record import log_policy
    from tests.test_evaluate_modes import _run

    frame = log_policy(HEURISTICS["segment_rules"](), load_setup(), 50, 3, seed=0, epsilon=0.2)
    logs = write_logs(frame, tmp_path / "logs.parquet")
    fifo = tmp_path / "circuit.json"
    os.mkfifo(fifo)
    with pytest.raises(
        ConfigError, match="watch.circuit: .*is a FIFO \\(named pipe\\), not a regular"
    ):
        _run("mode=watch", f"watch.data={logs}", f"watch.circuit={fifo}")


# --- reading (serve/circuit.py) ------------------------------------------------------------------


def _in_thread(fn, timeout: float = 10.0):
    """fn() in a daemon thread: (finished, its result or exception)."""
    out: list = []

    def run() -> None:
        try:
            out.append(fn())
        except Exception as exc:  # noqa: BLE001 - handed back to the test
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive(), out[0] if out else None


def test_a_fifo_as_the_circuit_file_is_refused_without_hanging_the_request(tmp_path):
    fifo = tmp_path / "circuit.json"
    os.mkfifo(fifo)
    finished, got = _in_thread(lambda: circuit.read(fifo))
    assert finished, "reading a FIFO circuit file blocked the request"
    assert isinstance(got, CircuitError) and "is a FIFO (named pipe), not a regular file" in str(
        got
    )


def test_a_device_as_the_circuit_file_is_refused_by_name():
    with pytest.raises(CircuitError, match="/dev/null is a character device"):
        circuit.read("/dev/null")


def test_a_circuit_file_over_one_mebibyte_is_refused_unread(tmp_path):
    path = tmp_path / "circuit.json"
    body = b'{"tripped": ["retirement"]}'
    path.write_bytes(body + b" " * (circuit.MAX_BYTES - len(body)))
    assert circuit.read(path) == {"retirement": None}  # 1 MiB exactly: read
    with path.open("ab") as f:
        f.write(b" ")
    with pytest.raises(CircuitError, match=r"is 1,048,577 bytes; .* at most 1,048,576 bytes"):
        circuit.read(path)


def test_an_unchanged_circuit_file_is_parsed_once(tmp_path):
    path = tmp_path / "circuit.json"
    path.write_text('{"tripped": ["retirement"]}')
    os.utime(path, (HOUR_AGO, HOUR_AGO))
    first = circuit.load(path)
    assert circuit.load(path) is first  # the cached parse, not a second read
    assert circuit.read(path) == {"retirement": None}
    # replaced (a new inode), or rewritten in place with the same size and modification time
    write_atomic(path, b'{"tripped": ["growth_investor"]}')
    os.utime(path, (HOUR_AGO, HOUR_AGO))
    assert circuit.read(path) == {"growth_investor": None}
    time.sleep(0.05)  # a later change time than the cached read's
    path.write_text('{"tripped": ["active_trader"]}   ')  # the same 32 bytes
    os.utime(path, (HOUR_AGO, HOUR_AGO))
    assert circuit.read(path) == {"active_trader": None}


def test_a_circuit_file_written_just_now_is_read_again(tmp_path):
    path = tmp_path / "circuit.json"
    path.write_text('{"tripped": ["retirement"]}')
    # a rewrite within the same timestamp tick could keep size, inode and times: not cached yet
    assert circuit.load(path) is not circuit.load(path)


def test_a_trip_dated_in_the_future_waits_for_its_date(tmp_path):
    path = tmp_path / "circuit.json"
    path.write_text(
        json.dumps({"tripped": {"saver_debt": "2026-12-10", "retirement": "2026-11-20"}})
    )
    nov20, dec10 = dt.date(2026, 11, 20), dt.date(2026, 12, 10)
    assert circuit.read(path, today=dt.date(2026, 12, 1)) == {"retirement": nov20}
    assert circuit.read(path, today=dec10) == {"retirement": nov20, "saver_debt": dec10}
    assert circuit.read(path, today=dt.date(2026, 11, 19)) == {}
    assert dict(circuit.load(path)) == {"retirement": nov20, "saver_debt": dec10}
    # the server's today (what the runtime applies per request) is the UTC date
    tomorrow = circuit.today_utc() + dt.timedelta(days=1)
    path.write_text(json.dumps({"tripped": {"all": tomorrow.isoformat()}}))
    assert circuit.read(path) == {}
    path.write_text(json.dumps({"tripped": {"all": circuit.today_utc().isoformat()}}))
    assert circuit.read(path) == {"all": circuit.today_utc()}


def test_deeply_nested_or_huge_numbers_in_the_circuit_file_are_refused_by_name(tmp_path):
    path = tmp_path / "circuit.json"
    for body in ("[" * 200_000, '{"tripped": [' + "9" * 5000 + "]}"):
        path.write_text(body)
        with pytest.raises(CircuitError, match="is not readable JSON"):
            circuit.read(path)


# --- evaluate.py mode=watch on a bad log ------------------------------------------------------


def _bad_logs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    wrong = tmp_path / "wrong.parquet"
    pl.DataFrame({"a": [1, 2]}).write_parquet(wrong)
    text = tmp_path / "text.parquet"
    text.write_text("day,client\n0,1\n")
    return {
        "missing": (tmp_path / "nope.parquet", "no such file"),
        "wrong columns": (wrong, "missing column"),
        "not Parquet": (text, "not a readable Parquet file"),
    }


def test_the_watch_mode_answers_a_bad_log_naming_it(tmp_path):
    from tests.test_evaluate_modes import _run

    for what, (path, said) in _bad_logs(tmp_path).items():
        with pytest.raises(ConfigError) as refused:
            _run("mode=watch", f"watch.data={path}")
        message = str(refused.value)
        assert message.startswith("watch.data: ") and str(path) in message, what
        assert said in message, (what, message)


@pytest.mark.slow  # evaluate.py processes: Hydra + MLflow start-up
def test_the_watch_command_line_prints_no_traceback(tmp_path):
    path, said = _bad_logs(tmp_path)["not Parquet"]
    root = Path(__file__).parents[1]
    done = preloaded.run(
        [
            sys.executable,
            "evaluate.py",
            "mode=watch",
            f"watch.data={path}",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and said in done.stderr
    assert done.stderr.strip().count("\n") == 0


# --- the crisis summary ----------------------------------------------------------------------


def _result(**sums: tuple[float, float]) -> CrisisResult:
    """A study's table with the given (on, off) arm totals per metric, one seed."""
    rows = [
        {"policy": "p", "monitor": arm, "seed": 0}
        | {metric: pair[i] for metric, pair in sums.items()}
        for i, arm in enumerate(("on", "off"))
    ]
    crisis = Crisis("misfire", 29, 60, "growth_investor")
    return CrisisResult(crisis, [], pl.DataFrame(rows))


def test_the_crisis_summary_never_says_nan_percent():
    none = _result(clients_lost=(30.0, 50.0), anxious_clicks=(0.0, 0.0))
    assert none.summary("p") == (
        "p: the breaker cut clients lost by 40%; no anxious clicks in either arm"
    )
    some = _result(clients_lost=(60.0, 50.0), anxious_clicks=(3.0, 0.0))
    assert some.summary("p") == (
        "p: the breaker raised clients lost by 20%; 3 anxious clicks with the breaker, "
        "none without it"
    )
    both = _result(clients_lost=(25.0, 50.0), anxious_clicks=(9.0, 10.0))
    assert both.summary("p") == (
        "p: the breaker cut clients lost by 50% and cut anxious clicks by 10%"
    )
