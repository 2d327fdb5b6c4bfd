"""A fit's outputs kept together or not at all: the preset, the report and the MLflow runs are
written to temporaries and recorded, then renamed into place only once all of them are made; a
failure at any step (a report that cannot be written, an MLflow store that fails, Ctrl-C) keeps
none of them, so the same ``name=`` works again.

:func:`kept_fit` is the unit of work ``python calibrate.py mode=fit`` uses (with and without
``logs=``); the lock on a fit's name is the command's (``experiment.tracking.hold``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow

from simulate.config import ConfigError


def free(key: str, path: Path, overwrite: bool) -> None:
    """Refuse, by ``key``, a destination that is a directory or other non-file, or one that
    exists without ``overwrite=true``."""
    if not (path.exists() or path.is_symlink()):
        return
    if not path.is_file():
        raise ConfigError(
            f"{key}: {path} exists and is not a file; remove it or pick another name="
        )
    if not overwrite:
        raise ConfigError(f"{key}: {path} exists; pick another name= or pass overwrite=true")


class Unit:
    """A fit's outputs kept or lost together: each file is written to a hidden temporary beside
    its destination (:meth:`stage`), the MLflow runs are made and recorded (:meth:`add_run`), then
    every file is renamed into place (:meth:`commit`); on any failure :meth:`abort` removes the
    temporaries, deletes the runs and puts back whatever a commit had already replaced. Use it
    through :func:`one_unit`, under the fit's name lock."""

    def __init__(self, overwrite: bool) -> None:
        self.overwrite = overwrite
        self.files: list[tuple[str, Path, Path]] = []
        """(key, temporary, destination) of each staged file"""
        self.runs: list[str] = []
        self.placed: list[tuple[Path, Path | None]] = []
        """(destination, backup of the file it replaced or None) of each file already renamed"""

    def stage(self, key: str, path: Path, text: str) -> None:
        """Write ``text`` to a temporary beside ``path`` (mode 0644 less the umask); a
        :class:`ConfigError` naming ``key`` and ``path`` when it cannot be written."""
        free(key, path, self.overwrite)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a fit that was killed
            stale.unlink(missing_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            self.files.append((key, temporary, path))
            with os.fdopen(fd, "w") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            raise ConfigError(f"{key}: cannot write {path}: {exc.strerror or exc}") from exc

    def add_run(self, run_id: str) -> None:
        """Record an MLflow run of the unit (deleted if the unit is aborted)."""
        self.runs.append(run_id)

    def commit(self) -> None:
        """Rename every staged file into place (an existing one moved aside until all are)."""
        for key, temporary, path in self.files:
            free(key, path, self.overwrite)
            try:
                self.placed.append((path, _replace(temporary, path)))
            except OSError as exc:
                raise ConfigError(f"{key}: cannot write {path}: {exc.strerror or exc}") from exc
        for _, backup in self.placed:
            if backup is not None:
                backup.unlink(missing_ok=True)
        self.files, self.placed = [], []

    def abort(self) -> list[str]:
        """Undo everything; returns what could not be undone (each a sentence)."""
        left = []
        for path, backup in reversed(self.placed):
            try:
                path.unlink(missing_ok=True)
                if backup is not None:
                    os.replace(backup, path)
            except OSError as exc:
                left.append(f"{path}: {exc.strerror or exc}")
        for _, temporary, _ in self.files:
            temporary.unlink(missing_ok=True)
        for run_id in self.runs:
            try:
                mlflow.MlflowClient().delete_run(run_id)
            except Exception as exc:  # the store may be what failed
                left.append(f"MLflow run {run_id} could not be deleted ({type(exc).__name__})")
        self.files, self.placed, self.runs = [], [], []
        return left


def _replace(temporary: Path, path: Path) -> Path | None:
    """Rename ``temporary`` to ``path``, the file it replaces moved aside first (its backup is
    returned, None if there was none) and put back if the rename fails."""
    backup = None
    if path.exists() or path.is_symlink():
        backup = path.with_name(f".{path.name}.{os.getpid()}.old")
        os.replace(path, backup)
    try:
        os.replace(temporary, path)
    except OSError:
        if backup is not None:
            os.replace(backup, path)
        raise
    return backup


@contextmanager
def one_unit(name: str, overwrite: bool) -> Iterator[Unit]:
    """A :class:`Unit` committed when the block ends, aborted if it raises (anything, Ctrl-C
    included). A failure to log to MLflow or to write a file becomes a :class:`ConfigError`
    saying that nothing was kept and that the same ``name=`` may be used again."""
    unit = Unit(overwrite)
    try:
        yield unit
        unit.commit()
    except BaseException as exc:
        left = unit.abort()
        tail = "; not undone: " + "; ".join(left) if left else ""
        if isinstance(exc, ConfigError):
            raise ConfigError(f"{exc}; nothing was kept{tail}") from exc
        if isinstance(exc, (mlflow.exceptions.MlflowException, OSError)):
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ConfigError(
                f"mlflow: logging the fit failed ({type(exc).__name__}: {first}); nothing was "
                f"kept, so name={name} may be used again{tail}"
            ) from exc
        raise


def log_search(study, best: dict[str, float]) -> None:
    """The search's objective per trial (``fit/objective`` by trial number) and the fitted values
    (``fit/<param>``, ``fit/best``), to the active run."""
    for trial in study.trials:
        if trial.value is not None:
            mlflow.log_metric("fit/objective", trial.value, step=trial.number)
    mlflow.log_metrics({f"fit/{k}": v for k, v in best.items()} | {"fit/best": study.best_value})


@contextmanager
def kept_fit(
    name: str,
    overwrite: bool,
    files: list[tuple[str, Path, str]],
    run_name: str,
    tags: dict[str, str],
    params: dict[str, Any],
    study,
    best: dict[str, float],
    metrics: dict[str, float],
    artifacts: list[tuple[str, str]],
) -> Iterator[Unit]:
    """A fit's unit of work (:func:`one_unit`), entered with ``files`` (key, destination, text)
    staged and the fit's MLflow run made (tags ``command=fit`` and ``tags``): its ``params``,
    the search, ``metrics`` and ``artifacts`` (text, artifact path). The caller may add to the
    unit (a second run) in the block; it is committed when the block ends, aborted if anything
    in it raises."""
    with one_unit(name, overwrite) as unit:
        for key, path, text in files:
            unit.stage(key, path, text)
        with mlflow.start_run(run_name=run_name, tags={"command": "fit", **tags}) as run:
            unit.add_run(run.info.run_id)
            mlflow.log_params(params)
            log_search(study, best)
            for key, value in metrics.items():
                mlflow.log_metric(key, value)
            for text, artifact in artifacts:
                mlflow.log_text(text, artifact)
        yield unit
