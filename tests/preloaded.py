"""The project's commands (``python train.py ...``, ``python evaluate.py ...``), started by the
tests from an interpreter that has already imported their libraries.

A fresh ``python train.py`` spends 2-6 s of CPU importing MLflow, Hydra, torch, polars and the
project before it reads its config, and the suite starts about seventy such commands. Here
each test process keeps one server (this file, run as a script) that imports those libraries
once; :func:`run` sends it a command, and the server forks a child that becomes the command: its
own process and pid, the test's argv, working folder, environment and standard streams, the
script run as ``__main__``, then what Python does at exit (non-daemon threads joined, ``atexit``
handlers, streams flushed) and its exit status handed back, a signal's as a negative code.

:func:`run` takes :func:`subprocess.run`'s arguments and returns its
:class:`subprocess.CompletedProcess`; :func:`Popen` gives a :class:`Process` to poll, signal and
wait on. A command it cannot start this way (not ``python <script>.py``, or an environment whose
``PYTHONPATH`` names another tree) runs as a fresh process, and so do the tests that check what
a fresh interpreter does: the README's and docs' commands (``test_docs_commands``), which
libraries a command imports (``test_sb3_fast``), and the HTTP servers whose output the tests
read line by line while they run (``subprocess.Popen``).

The server imports nothing of the project's that changes state outside itself, runs nothing,
and forks only while idle; it exits when its test process does.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRELOAD = (
    "numpy",
    "polars",
    "pandas",
    "torch",
    "stable_baselines3",
    "sb3_contrib",
    "hydra",
    "omegaconf",
    "mlflow",
    "mlflow.tracking",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.pyfunc",
    "matplotlib.pyplot",
    "onnxruntime",
    "optuna",
    "simulate",
    "envs",
    "agents",
    "evaluation",
    "experiment",
    "realism",
    "loop",
    "serve.runtime",
    "train",
    "evaluate",
    "export",
    "calibrate",
)
"""what the server imports: the libraries every command loads and the project's packages"""
_MESSAGE = 1 << 20


# the server side ------------------------------------------------------------------------------


def _serve(path: str) -> None:
    parent = os.getppid()
    sys.path[0] = str(ROOT)  # the project's packages, as a command run from the root finds them
    for name in PRELOAD:
        importlib.import_module(name)
    base = sys.path[1:]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path + ".tmp")
    listener.listen(64)
    os.rename(path + ".tmp", path)  # the client waits for this name: the server is ready
    listener.settimeout(0.02)
    waiting: dict[int, socket.socket] = {}
    while os.getppid() == parent:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            conn = None
        if conn is not None:
            conn.settimeout(30)  # a client that connects and says nothing is given up
            try:
                message, fds, _, _ = socket.recv_fds(conn, _MESSAGE, 3)
            except OSError:
                message, fds = b"", []
            if not message or len(fds) != 3:
                for fd in fds:
                    os.close(fd)
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                listener.close()
                conn.close()
                for other in waiting.values():
                    other.close()
                _become(json.loads(message), fds, base)  # never returns
            for fd in fds:
                os.close(fd)
            try:
                conn.send(json.dumps({"pid": pid}).encode())
            except OSError:
                pass  # the test that asked has gone: the child is reaped all the same
            waiting[pid] = conn
        while waiting:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            done = waiting.pop(pid)
            try:
                done.send(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode())
            except OSError:
                pass  # the test that asked has gone
            done.close()
    for pid in waiting:
        os.kill(pid, signal.SIGKILL)


def _become(request: dict, fds: list[int], base: list[str]) -> None:
    """In the forked child: take on the command's streams, folder, environment and argv, run
    its script as ``__main__`` and exit as Python would."""
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        argv = request["argv"]
        sys.argv = list(argv)
        script = os.path.abspath(os.path.join(request["cwd"], argv[0]))
        extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [os.path.dirname(os.path.abspath(script)), *extra, *base]
        import numpy

        numpy.random.seed()  # noqa: NPY002 (a fresh interpreter's legacy global generator)
        code = _run_script(script)
    finally:
        os._exit(code)


def _run_script(script: str) -> int:
    """``script`` run as ``python script`` runs it: a new ``__main__`` module, ``sys.argv`` as
    given (``runpy.run_path`` would change ``argv[0]``), then Python's exit steps."""
    import builtins
    import importlib.machinery
    import types

    main = types.ModuleType("__main__")
    main.__file__ = script
    main.__builtins__ = builtins
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", script)
    main.__cached__ = None
    sys.modules["__main__"] = main
    try:
        with open(script, "rb") as f:
            source = f.read()
        # dont_inherit: this file's ``from __future__`` imports do not reach the script
        exec(compile(source, script, "exec", dont_inherit=True), main.__dict__)
        code = 0
    except SystemExit as stop:
        code = _exit_code(stop.code)
    except BaseException as error:
        # the traceback from the script's own frame on, as ``python script.py`` prints it
        tb = error.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != script:
            tb = tb.tb_next
        if tb is not None:
            error.__traceback__ = tb  # what Python prints (it reads the error's own)
        sys.excepthook(type(error), error, error.__traceback__)
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]  (Python joins non-daemon threads)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return code


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


# the test side -----------------------------------------------------------------------------------

_lock = threading.Lock()
_server: dict[str, object] = {}


def _socket_path() -> str | None:
    """The running server's socket, started at the first call in this process (``None`` where
    it could not start: the command then runs as a fresh process)."""
    with _lock:
        if "path" in _server:
            return _server["path"]  # type: ignore[return-value]
        folder = tempfile.mkdtemp(prefix="preloaded-")
        path = os.path.join(folder, "socket")
        log = open(os.path.join(folder, "server.log"), "wb")  # noqa: SIM115 (lives with it)
        server = subprocess.Popen(
            [sys.executable, __file__, path],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=ROOT,
        )
        atexit.register(_stop, server, folder)
        deadline = time.time() + 180
        while not os.path.exists(path) and server.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        if not os.path.exists(path):
            warnings.warn(
                f"the preloaded command server did not start (see {folder}/server.log): "
                "commands run as fresh processes",
                stacklevel=4,
            )
            _stop(server, None)
            path = None
        _server["path"] = path
        return path


def _stop(server: subprocess.Popen, folder: str | None) -> None:
    if server.poll() is None:
        server.kill()
        server.wait(timeout=30)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def _preloadable(args: list[str], env: dict | None) -> bool:
    if len(args) < 2 or args[0] != sys.executable or not args[1].endswith(".py"):
        return False
    paths = (env if env is not None else os.environ).get("PYTHONPATH", "")
    return all(Path(p).resolve() == ROOT for p in paths.split(os.pathsep) if p)


class Process:
    """A command running in a child of the server: :class:`subprocess.Popen`'s ``pid``,
    ``returncode``, ``poll``, ``wait``, ``communicate``, ``send_signal``, ``terminate`` and
    ``kill``. Its output goes to files (read once it exits, so a chatty command never blocks
    on a full pipe); ``stdout`` / ``stderr`` read what it has written so far."""

    def __init__(self, args, path, *, cwd, env, input, stdout, stderr, text):  # noqa: A002
        self.args, self.text, self.returncode = args, text, None
        self._files: dict = {}
        self._kept: dict = {}
        stdin = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the others)
        self._files["stdin"] = stdin
        if input is not None:
            stdin.write(input.encode() if isinstance(input, str) else input)
            stdin.seek(0)
        out = self._stream(stdout, "stdout")
        err = out if stderr == subprocess.STDOUT else self._stream(stderr, "stderr")
        request = {
            "argv": args[1:],
            "cwd": str(Path(cwd).resolve() if cwd is not None else Path.cwd()),
            "env": dict(env if env is not None else os.environ),
        }
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._conn.connect(path)
        socket.send_fds(self._conn, [json.dumps(request).encode()], [stdin.fileno(), out, err])
        self.pid = json.loads(self._conn.recv(_MESSAGE))["pid"]

    def _stream(self, choice, name: str) -> int:
        if choice == subprocess.PIPE:
            self._files[name] = tempfile.TemporaryFile()  # noqa: SIM115
            return self._files[name].fileno()
        if choice == subprocess.DEVNULL:
            self._files[f"{name} (null)"] = open(os.devnull, "wb")  # noqa: SIM115
            return self._files[f"{name} (null)"].fileno()
        if choice is None:
            return 1 if name == "stdout" else 2
        return choice if isinstance(choice, int) else choice.fileno()

    def _written(self, name: str):
        """What the command wrote to its captured ``name`` so far (None when not captured)."""
        if name in self._kept:
            return self._kept[name]
        f = self._files.get(name)
        if f is None:
            return None
        # a new open file of the same data: the command's own offset is left where it is
        with open(f"/proc/self/fd/{f.fileno()}", "rb") as again:
            data = again.read()
        return data.decode().replace("\r\n", "\n") if self.text else data

    @property
    def stdout(self):
        return _Written(self, "stdout") if "stdout" in self._files else None

    @property
    def stderr(self):
        return _Written(self, "stderr") if "stderr" in self._files else None

    def _settle(self, reply: bytes) -> int:
        if not reply:
            raise RuntimeError(f"the preloaded command server stopped while running {self.args}")
        self.returncode = json.loads(reply)["returncode"]
        self._conn.close()
        return self.returncode

    def poll(self) -> int | None:
        if self.returncode is None:
            self._conn.setblocking(False)
            try:
                self._settle(self._conn.recv(_MESSAGE))
            except BlockingIOError:
                pass
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._conn.settimeout(timeout)
            try:
                self._settle(self._conn.recv(_MESSAGE))
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
        return self.returncode

    def communicate(self, input=None, timeout: float | None = None):  # noqa: A002
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired as late:
            late.output, late.stderr = self._written("stdout"), self._written("stderr")
            raise
        outputs = self._written("stdout"), self._written("stderr")
        self.close()
        return outputs

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        """Close its files, keeping what it wrote (its streams are read at exit)."""
        for name in ("stdout", "stderr"):
            if name in self._files and name not in self._kept:
                self._kept[name] = self._written(name)
        for f in self._files.values():
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.returncode is None:
            self.kill()
            self.wait()
        self.close()


class _Written:
    """``Process.stdout`` / ``.stderr``: ``read()`` gives what the command wrote so far."""

    def __init__(self, process: Process, name: str):
        self._process, self._name = process, name

    def read(self):
        return self._process._written(self._name)


def Popen(args, *, cwd=None, env=None, stdout=None, stderr=None, text: bool = False):  # noqa: N802
    """:class:`subprocess.Popen` for a project command (a :class:`Process`), or the real one
    for a command the server cannot start."""
    args = [str(a) for a in args]
    path = _socket_path() if _preloadable(args, env) else None
    if path is None:
        return subprocess.Popen(args, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=text)
    return Process(
        args, path, cwd=cwd, env=env, input=None, stdout=stdout, stderr=stderr, text=text
    )


def run(
    args,
    *,
    cwd=None,
    env=None,
    timeout=None,
    input=None,  # noqa: A002 (subprocess.run's name)
    capture_output: bool = False,
    text: bool = False,
    stdout=None,
    stderr=None,
    check: bool = False,
) -> subprocess.CompletedProcess:
    """:func:`subprocess.run` for a project command: the same arguments and result."""
    args = [str(a) for a in args]
    path = _socket_path() if _preloadable(args, env) else None
    if path is None:
        return subprocess.run(
            args,
            cwd=cwd,
            env=env,
            timeout=timeout,
            input=input,
            capture_output=capture_output,
            text=text,
            stdout=stdout,
            stderr=stderr,
            check=check,
        )
    if capture_output:
        stdout = stderr = subprocess.PIPE
    process = Process(
        args, path, cwd=cwd, env=env, input=input, stdout=stdout, stderr=stderr, text=text
    )
    with process:  # past the timeout, leaving the block kills and reaps it
        out, err = process.communicate(timeout=timeout)
    done = subprocess.CompletedProcess(args, process.returncode, out, err)
    if check:
        done.check_returncode()
    return done


if __name__ == "__main__":
    _serve(sys.argv[1])
