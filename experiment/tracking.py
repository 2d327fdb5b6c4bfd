"""MLflow tracking: the URI rule, flattened params, tags, the parent run of a sweep, and the
named locks that keep two processes from writing one run or one preset at once."""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from omegaconf import DictConfig, OmegaConf

from simulate.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
"""the project root (where ``mlflow.db`` lives by default)"""
LOCKS = ROOT / ".locks"
"""where :func:`hold` keeps its lock files (one per name held; removed on release)"""


def tracking_uri(uri: str | None) -> str:
    """``uri`` if given, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<project root>/mlflow.db``.

    A SQLite file is always named by its absolute path (a relative one is taken from the current
    directory now), so a URI printed for another command (:func:`serve_command`) or read from
    Hydra's run directory names the same store wherever it is used."""
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'mlflow.db'}"
    path = sqlite_path(chosen)
    if path is not None and not path.is_absolute():
        return f"sqlite:///{os.path.abspath(path)}"
    return chosen


def serve_command(model_uri: str, port: int) -> str:
    """The shell command that serves ``model_uri`` (a ``models:/`` URI of the store MLflow points
    at) with MLflow's scoring server on ``port``, runnable from any directory: it names the store
    by its absolute URI (without it MLflow opens ``./mlflow.db`` of the directory it is run from,
    which is empty anywhere but the project root, and finds no model)."""
    store = tracking_uri(mlflow.get_tracking_uri())
    return (
        f"MLFLOW_TRACKING_URI={shlex.quote(store)} mlflow models serve -m {shlex.quote(model_uri)} "
        f"--env-manager local -p {port}"
    )


def setup_mlflow(uri: str | None, experiment: str) -> str:
    """Point MLflow at the store and experiment; returns the URI in use.

    A SQLite store is created (schema migrations included) under a file lock beside it, so
    several jobs started at once on a fresh ``mlflow.db`` all land; a store that cannot be
    opened (corrupt, read-only, not MLflow's) is a :class:`ConfigError` naming it."""
    resolved = tracking_uri(uri)
    mlflow.set_tracking_uri(resolved)
    path = sqlite_path(resolved)
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        with store_lock():
            found = _activate(experiment)
    except Exception as exc:
        raise ConfigError(
            f"tracking.uri: cannot use the MLflow store {resolved}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''} (is it an MLflow SQLite file, and "
            "is it and its folder writable?)"
        ) from exc
    return found


@contextmanager
def store_lock() -> Iterator[None]:
    """Hold the file lock beside the SQLite store MLflow points at (``mlflow.db.lock``) for the
    ``with`` block: jobs on one machine that would race to create the same row (the store's
    tables, an experiment, a dataset) take turns. Nothing to hold for a tracking server."""
    path = sqlite_path(mlflow.get_tracking_uri())
    if path is None:
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def taking_turns(write: Callable[[], object]) -> None:
    """``write``, a store write that jobs logging at once race on: MLflow looks the row up (the
    same dataset, the same experiment tag) and inserts it if missing, so two jobs both insert and
    one fails (``UNIQUE constraint failed``). They take turns on a SQLite store
    (:func:`store_lock`); through a server the loser tries again and finds the row there,
    :data:`RACE_ATTEMPTS` tries at most."""
    for attempt in range(RACE_ATTEMPTS):
        try:
            with store_lock():
                write()
            return
        except mlflow.exceptions.MlflowException as exc:
            if "UNIQUE constraint" not in str(exc) or attempt == RACE_ATTEMPTS - 1:
                raise


RACE_ATTEMPTS = 3
"""tries at a write that parallel jobs race on (:func:`taking_turns`)"""


def _activate(experiment: str) -> str:
    try:
        found = mlflow.set_experiment(experiment)
    except mlflow.exceptions.MlflowException:
        # parallel jobs on a fresh store race to create the experiment; the loser finds it made
        found = mlflow.set_experiment(experiment)
    # a set_experiment that loses that race inside MLflow returns the experiment without making
    # it the active one (runs would land in "Default"); activating it by id always takes
    mlflow.set_experiment(experiment_id=found.experiment_id)
    return mlflow.get_tracking_uri()


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI, else None."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :]) if uri.startswith(prefix) else None


def flatten(cfg: DictConfig | dict, prefix: str = "") -> dict[str, str]:
    """Dotted-key params of a nested config (MLflow keeps values up to 6000 characters)."""
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = str(value)[:6000]
    return out


def git_commit() -> str:
    """The project's current commit, or ``unknown`` outside a git checkout."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def sweep_id(sweep_dir: Path) -> str:
    """A sweep's id: its directory's last two parts (Hydra's default is ``multirun/<date>/<time>``)."""
    return "-".join(Path(sweep_dir).resolve().parts[-2:])


def sweep_parent(sweep_dir: Path, experiment: str, sweep_id: str, tags: dict[str, Any]) -> str:
    """Run id of the sweep's parent run, created by the first job that asks (a file lock in
    the shared sweep directory makes that safe for parallel jobs on one machine)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    id_file = sweep_dir / "mlflow_parent_run_id"
    with open(sweep_dir / ".mlflow_parent.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if id_file.is_file():
            return id_file.read_text().strip()
        client = mlflow.MlflowClient()
        run = client.create_run(
            mlflow.get_experiment_by_name(experiment).experiment_id,
            run_name=f"sweep {sweep_id}",
            tags={
                **{k: str(v) for k, v in tags.items()},
                "sweep_id": sweep_id,
                "sweep_parent": "true",
            },
        )
        client.set_terminated(run.info.run_id, "FINISHED")
        id_file.write_text(run.info.run_id)
        return run.info.run_id


MIN_PREFIX = 6
"""fewest leading hex digits of a run id accepted in its place (the docs print 8)"""
_PREFIX = re.compile(rf"[0-9a-f]{{{MIN_PREFIX},31}}")
_SHOWN = 5
"""candidates an ambiguous prefix names"""


def find_run(run_id: str, key: str) -> mlflow.entities.Run:
    """The MLflow run ``run_id`` in the store MLflow points at, or the one run whose id starts
    with it: a prefix of at least :data:`MIN_PREFIX` hex digits (the docs print the first 8)
    that no other run's id starts with. Callers use ``.info.run_id``, the full id, afterwards.

    A :class:`ConfigError` naming ``key`` and the store for an id no run has or starts with, a
    prefix shorter than :data:`MIN_PREFIX`, or a prefix several runs share (naming them)."""
    store = mlflow.get_tracking_uri()
    try:
        return mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        missing = exc
    prefix = run_id.lower()
    if not _PREFIX.fullmatch(prefix):
        short = len(prefix) < MIN_PREFIX and re.fullmatch(r"[0-9a-f]+", prefix) is not None
        hint = f" (a prefix must have at least {MIN_PREFIX} hex digits)" if short else ""
        raise ConfigError(f"{key}: no MLflow run {run_id!r} in {store}{hint}") from missing
    matches = _runs_starting_with(prefix)
    if not matches:
        raise ConfigError(
            f"{key}: no MLflow run {run_id!r} in {store} (no run id there starts with it)"
        ) from missing
    if len(matches) > 1:
        shown = ", ".join(sorted(run.info.run_id for run in matches[:_SHOWN]))
        more = " and more" if len(matches) > _SHOWN else ""
        raise ConfigError(
            f"{key}: {run_id!r} is the start of several run ids in {store}: {shown}{more}; "
            "give more of the id"
        )
    return matches[0]


def _runs_starting_with(prefix: str) -> list[mlflow.entities.Run]:
    """Up to ``_SHOWN + 1`` runs, of every experiment (deleted ones included), whose id starts
    with ``prefix`` (hex digits only, so nothing in it is a LIKE wildcard)."""
    client = mlflow.MlflowClient()
    everything = mlflow.entities.ViewType.ALL
    experiments = [e.experiment_id for e in client.search_experiments(view_type=everything)]
    if not experiments:
        return []
    return list(
        client.search_runs(
            experiments,
            filter_string=f"attributes.run_id LIKE '{prefix}%'",
            run_view_type=everything,
            max_results=_SHOWN + 1,
        )
    )


def download_policy(run_id: str, key: str, dst: Path) -> Path:
    """The ``policy`` artifact folder of a train.py run, downloaded under ``dst``."""
    try:
        return Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="policy", dst_path=str(dst)
            )
        )
    except Exception as exc:
        raise ConfigError(
            f"{key}: run {run_id} has no 'policy' artifact (was it made by train.py?)"
        ) from exc


class Busy(ConfigError):
    """Another live process holds the lock asked for."""


@contextmanager
def hold(name: str, refusal: str, folder: Path | None = None) -> Iterator[Path]:
    """Hold the lock ``<folder>/<name>.lock`` (``folder`` defaults to :data:`LOCKS`) for the block.

    The lock is the kernel's (``flock``): it goes with its process, so a holder that crashes or is
    killed never leaves it stuck, and the next taker needs no staleness check. A lock held by a
    live process is refused at once with :class:`Busy`: ``refusal`` followed by the holder's pid.
    The file names its holder's pid while held and is removed on release. ``name``: letters,
    digits, ``_``, ``-`` and ``.``, at most 128 characters (never a path)."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", name):
        raise ValueError(f"lock name must be letters, digits, _, - and ., got {name!r}")
    folder = LOCKS if folder is None else folder
    path = folder / f"{name}.lock"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path, refusal)
    except OSError as exc:
        raise ConfigError(
            f"cannot take the lock {path}: {exc.strerror or exc} (is {folder} writable?)"
        ) from exc
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        # unlinked while still held: a process that opened the old file finds it gone and retries
        path.unlink(missing_ok=True)
        os.close(fd)


def _acquire(path: Path, refusal: str) -> int:
    """An open descriptor of ``path`` holding its exclusive flock; :class:`Busy` if held."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise Busy(f"{refusal} (held by process {holder}; lock {path})") from None
        try:
            current = os.stat(path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            return fd
        os.close(fd)  # the holder released and removed it between our open and lock: again
