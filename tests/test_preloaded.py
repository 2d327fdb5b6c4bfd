"""The tests' command runner (``tests/preloaded.py``) gives what a fresh ``python script.py``
gives: the same exit status, output and error text, argv, folder, environment, standard input,
exit handlers and signals. The other tests start the project's commands through it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import preloaded
import pytest

pytestmark = pytest.mark.slow  # processes of their own, and the server's start in each worker

PROBE = """\
import atexit, os, sys, threading, time
mode = sys.argv[1]
if mode == "echo":
    print("argv", sys.argv)
    print("cwd", os.getcwd())
    print("env", os.environ.get("PRELOADED_PROBE"), "PATH" in os.environ)
    print("path0", sys.path[0])
    print("main", __name__, __file__)
    print("stdin", sys.stdin.read())
    print("to stderr", file=sys.stderr)
elif mode == "exit":
    sys.exit(int(sys.argv[2]))
elif mode == "message":
    sys.exit("a message for stderr")
elif mode == "raise":
    def inner():
        raise ValueError("boom")
    inner()
elif mode == "atexit":
    atexit.register(lambda: print("atexit ran", flush=True))
    def late():
        time.sleep(0.3)
        print("thread done", flush=True)
    threading.Thread(target=late).start()
    print("main done", flush=True)
elif mode == "sleep":
    print("ready", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def probe(tmp_path: Path) -> Path:
    path = tmp_path / "probe.py"
    path.write_text(PROBE)
    return path


@pytest.mark.parametrize(
    "args",
    [["echo", "a b", "--x=1"], ["exit", "0"], ["exit", "3"], ["message"], ["raise"], ["atexit"]],
)
def test_a_command_gives_what_a_fresh_process_gives(probe, tmp_path, args):
    env = {**os.environ, "PRELOADED_PROBE": "seen"}
    kwargs = dict(cwd=tmp_path, env=env, input="typed in", capture_output=True, text=True)
    command = [sys.executable, str(probe), *args]
    fresh = subprocess.run(command, timeout=60, **kwargs)
    forked = preloaded.run(command, timeout=60, **kwargs)
    assert forked.returncode == fresh.returncode
    assert forked.stdout == fresh.stdout
    assert forked.stderr == fresh.stderr
    if args[0] == "echo":  # the probe printed what it saw
        assert f"cwd {tmp_path}\nenv seen True\npath0 {tmp_path}\n" in forked.stdout
        assert "stdin typed in" in forked.stdout
    if args[0] == "raise":  # the traceback starts at the script, as Python's own does
        assert forked.stderr.startswith("Traceback (most recent call last):\n  File ")
        assert "runpy" not in forked.stderr and "preloaded" not in forked.stderr


def test_a_relative_script_runs_from_its_folder_as_given(probe, tmp_path):
    command = [sys.executable, probe.name, "echo"]
    fresh = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    forked = preloaded.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert forked.stdout == fresh.stdout and "argv ['probe.py', 'echo']" in forked.stdout


def test_a_signal_ends_it_with_a_negative_code_and_its_pid_is_its_own(probe):
    job = preloaded.Popen([sys.executable, str(probe), "sleep"], stdout=subprocess.PIPE, text=True)
    assert isinstance(job, preloaded.Process)
    deadline = time.time() + 60
    while "ready" not in job.stdout.read() and time.time() < deadline:
        time.sleep(0.05)
    assert job.poll() is None and job.pid not in (os.getpid(), os.getppid())
    job.send_signal(signal.SIGTERM)
    out, err = job.communicate(timeout=60)
    assert job.returncode == -signal.SIGTERM
    assert out == "ready\n" and err is None


def test_a_command_past_its_timeout_is_killed(probe):
    started = time.time()
    with pytest.raises(subprocess.TimeoutExpired) as late:
        preloaded.run([sys.executable, str(probe), "sleep"], capture_output=True, timeout=1)
    assert time.time() - started < 30
    assert late.value.output == b"ready\n"


def test_what_it_cannot_preload_runs_as_a_fresh_process(tmp_path):
    done = preloaded.run(
        [sys.executable, "-c", "import sys; print(len(sys.modules) < 200)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout == "True\n"  # a bare interpreter: none of the server's libraries
    other_tree = {**os.environ, "PYTHONPATH": str(tmp_path)}
    assert not preloaded._preloadable([sys.executable, "train.py"], other_tree)
    assert preloaded._preloadable([sys.executable, "train.py"], {"PYTHONPATH": str(preloaded.ROOT)})
