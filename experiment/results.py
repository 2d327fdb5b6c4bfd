"""Result files: the Markdown tables a study, benchmark or training run writes for the docs.

The docs never retype a measured figure: they include ``docs/results/<name>.md`` (MkDocs'
``pymdownx.snippets``, ``--8<-- "results/<name>.md"``), and the command that measures the figures
writes that file with :func:`write_results`. Its first line says how the figures were made: the
exact command, the commit (``+dirty`` when tracked files differ from it), the date and the
machine; then come the tables. A file holds no heading, so that it reads as part of the page
that includes it.

Where a script writes: at its documented size to ``docs/results/<name>.md`` (the file the docs
include); at a smoke size (``--quick``) to ``outputs/results/<name>.md``, so a smoke run never
replaces the documented figures; ``--results-dir DIR`` sends it to ``DIR/<name>.md`` either way.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from serve.files import write_atomic

ROOT = Path(__file__).resolve().parents[1]
"""the project root (the checkout the docs and the scripts live in)"""
DOCS_RESULTS = ROOT / "docs" / "results"
"""where the documented runs write: the folder the docs' includes read"""
SMOKE_RESULTS = Path("outputs") / "results"
"""where smoke runs write (relative to the working directory, as every output under outputs/)"""
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
"""what a results file may be called (its stem): lower-case letters, digits, ``_`` and ``-``"""
_started_at: str | None = None
"""the checkout's revision when the running script started (:func:`note_start`), if it said"""
RESULTS_HELP = (
    "folder to write <name>.md into (default: docs/results at the documented size, "
    "outputs/results with --quick or any smaller size)"
)


def git_revision(root: Path = ROOT) -> str:
    """The checkout's short commit hash, with ``+dirty`` when a tracked file differs from it;
    ``unknown`` outside a git checkout (or without git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if changed else head


def machine() -> str:
    """The machine, in words: its architecture and its CPU cores (all of them, whichever a
    benchmark pins itself to)."""
    cores = os.cpu_count() or 1
    return f"{platform.machine() or 'unknown machine'}, {cores} CPU core{'s' * (cores != 1)}"


def command_line(argv: Sequence[str] | None = None, root: Path = ROOT) -> str:
    """The command that is running, as a reader would type it from the project root:
    ``python studies/ope_study.py sizes --quick`` (the script named relative to ``root`` when it
    lies under it; each argument quoted for a POSIX shell where it needs it)."""
    args = list(sys.argv if argv is None else argv)
    if not args:
        return "python"
    script = Path(args[0])
    try:
        shown = str(script.resolve().relative_to(root.resolve()))
    except ValueError:
        shown = args[0]
    return "python " + shlex.join([shown, *args[1:]])


def note_start() -> str:
    """Record the checkout's revision now, as the script starts, so that a results file written
    at the end of a long run names the commit of the code that ran, not a later one."""
    global _started_at
    _started_at = git_revision()
    return _started_at


def header(command: str, revision: str | None = None, when: dt.date | None = None) -> str:
    """The line a results file starts with: command, commit (default: the one recorded by
    :func:`note_start`, else the checkout's now), date and machine."""
    if revision is None:
        revision = _started_at if _started_at is not None else git_revision()
    when = dt.date.today() if when is None else when
    return f"Made by `{command}` at commit `{revision}` on {when.isoformat()} ({machine()})."


def results_path(name: str, folder: str | Path | None, *, documented_size: bool) -> Path:
    """Where ``<name>.md`` goes: ``folder`` if given, else ``docs/results`` for a run at its
    documented size and ``outputs/results`` for a smoke (``--quick``) or smaller run."""
    if not NAME.fullmatch(name):
        raise ValueError(
            f"results file name {name!r}: expected lower-case letters, digits, '_' or '-' "
            "(at most 64, starting with a letter or digit), e.g. 'sim_throughput'"
        )
    if folder is None:
        folder = DOCS_RESULTS if documented_size else SMOKE_RESULTS
    return Path(folder) / f"{name}.md"


def write_results(
    name: str,
    markdown_body: str,
    command: str | None = None,
    *,
    root: str | Path | None = None,
    revision: str | None = None,
) -> Path:
    """Write ``root/<name>.md`` (default ``docs/results/<name>.md``) atomically: the header line
    (:func:`header`: ``command``, default the running one, and the commit, default the one the
    script started from), a blank line, then ``markdown_body`` (the tables, no heading). Creates ``root``
    if missing; returns the path written."""
    path = results_path(name, DOCS_RESULTS if root is None else root, documented_size=True)
    body = markdown_body.strip("\n")
    if not body:
        raise ValueError(f"results file {name!r}: the Markdown body is empty; nothing to write")
    text = header(command_line() if command is None else command, revision) + "\n\n" + body + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode())
    return path


def add_results_argument(parser: argparse.ArgumentParser) -> None:
    """Give a script's parser ``--results-dir`` (where its results file goes; see the module),
    and record the revision the script starts from (:func:`note_start`)."""
    note_start()
    parser.add_argument("--results-dir", type=Path, default=None, metavar="DIR", help=RESULTS_HELP)


def at_documented_size(
    parser: argparse.ArgumentParser, args: argparse.Namespace, ignore: Sequence[str] = ()
) -> bool:
    """True when every option of ``args`` holds its default (``--quick`` off included), so the
    run is the documented one whose file the docs include; ``ignore`` names options (their
    ``dest``) that choose what is measured rather than how much, e.g. a study's positional
    name. ``--results-dir`` is always ignored."""
    skip = {"results_dir", *ignore}
    return all(
        value == parser.get_default(dest) for dest, value in vars(args).items() if dest not in skip
    )


class Report:
    """Markdown made line by line: each line printed as soon as it is made (a long study shows
    its rows as they come) and kept for the results file (:meth:`write`)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    @property
    def text(self) -> str:
        """Everything reported so far, one Markdown document."""
        return "\n".join(self.lines)

    def write(self, name: str, folder: str | Path | None, *, documented_size: bool) -> Path:
        """Write what was reported to :func:`results_path` and say where it went."""
        path = results_path(name, folder, documented_size=documented_size)
        written = write_results(name, self.text, root=path.parent)
        print(f"\nwrote {written}", flush=True)
        return written
