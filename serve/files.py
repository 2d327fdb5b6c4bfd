"""Files written for a server to read (the circuit file): replaced atomically, readable by the
account the server runs as, through a symlink to its target, never onto a pipe or a device.

Standard library only, so the serving runtime and evaluation can both import it.

:func:`write_atomic` writes ``data`` to a temporary file in the target's own directory, flushes
it to disk (``fsync``) and renames it over the target (``os.replace``), so a reader sees the old
bytes or the new, never a torn file. What it keeps of the file it replaces:

- the permission bits (a new file is created ``0644`` less the process umask, as ``open`` would
  under the usual umask ``022``; ``tempfile`` would give ``0600`` and lock out a server running
  as another account), and the group (and owner, where the process may set them);
- a symlink at ``path``: the link's target is replaced and the link stays a link (replacing the
  link would leave the server, which may read the target, with the old state).

A FIFO, device, socket or directory at ``path`` (or at the symlink's target) is refused by name
(:class:`NotARegularFile`): writing to a FIFO blocks until someone reads it, and replacing a
device or a directory is never what was meant.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

NEW_FILE_MODE = 0o644
"""permission bits of a file :func:`write_atomic` creates (less the process umask)"""

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class NotARegularFile(ValueError):
    """A path that must be a regular file is something else (a FIFO, device, socket,
    directory)."""


def kind_of(mode: int) -> str:
    """What an ``st_mode`` describes, in words: "a regular file", "a FIFO (named pipe)", ..."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def resolve(path: str | Path) -> Path:
    """``path`` with every symlink followed (the file a write through it must replace); a
    dangling link resolves to the missing target, which a write creates."""
    try:
        return Path(os.path.realpath(path, strict=False))
    except OSError as exc:  # a symlink loop, on Pythons that raise for it
        raise NotARegularFile(f"{path}: cannot follow the symlink ({exc.strerror})") from exc


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Replace the file at ``path`` (or at the target of a symlink there) with ``data``,
    atomically and durably; returns the path written (the resolved target).

    Raises:
        NotARegularFile: ``path`` or its target is a FIFO, device, socket or directory, or the
            symlink at ``path`` cannot be followed.
        OSError: the target's directory is missing or not writable, or the disk is full.
    """
    target = resolve(path)
    try:
        old: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        old = None
    if old is not None and not stat.S_ISREG(old.st_mode):
        where = "" if target == Path(path) else f" (the target of the symlink {path})"
        raise NotARegularFile(
            f"{target}{where} is {kind_of(old.st_mode)}, not a regular file: refusing to write "
            "over it; remove it or choose another path"
        )
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, NEW_FILE_MODE)
    except FileNotFoundError as exc:
        raise FileNotFoundError(exc.errno, "no such directory", str(target.parent)) from None
    try:
        try:
            if old is not None:
                _keep_owner_and_mode(fd, old)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _sync_directory(target.parent)
    return target


def _keep_owner_and_mode(fd: int, old: os.stat_result) -> None:
    """Give the open temporary file the replaced file's owner, group and permission bits (owner
    and group where this process may set them; the mode always)."""
    for uid, gid in ((old.st_uid, old.st_gid), (-1, old.st_gid)):
        try:
            os.fchown(fd, uid, gid)
            break
        except PermissionError:
            continue
    os.fchmod(fd, stat.S_IMODE(old.st_mode))


def _sync_directory(directory: Path) -> None:
    """Flush the rename to disk (best effort: some filesystems cannot fsync a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
