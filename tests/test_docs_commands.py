"""The commands the docs mark ``# quick`` run as written from the project root and exit 0.

A command is quick when the trailing comment of its line (after any ``\\`` continuation lines)
starts with ``# quick``, inside a fenced ``bash`` (or ``sh``/``shell``) block of README.md or a
page under docs/. Each runs with the current interpreter in place of ``python``, the MLflow store
in a temporary folder (``MLFLOW_TRACKING_URI``) and, for the Hydra entry points, Hydra's run folder
there too (``hydra.run.dir=``), so nothing lands in the checkout but what the command itself is
documented to write.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
SHELLS = ("bash", "sh", "shell")
QUICK = re.compile(r"#\s*quick\b")
"""the marker: a trailing comment that starts with ``# quick``"""
HYDRA_APPS = ("train.py", "evaluate.py", "export.py", "calibrate.py")
"""entry points that take ``hydra.run.dir=``"""
TIMEOUT_S = 180
"""the most one quick command may take here before it counts as failed"""


@dataclass(frozen=True)
class DocCommand:
    """One quick command: where the docs say it and its words, as the shell would split them."""

    page: str
    line: int
    words: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def quick_commands(text: str, page: str) -> list[DocCommand]:
    """Every command marked quick in the fenced shell blocks of ``text`` (continuations joined,
    the comment dropped), with the 1-based line it starts on."""
    found: list[DocCommand] = []
    lines = text.splitlines()
    fence: str | None = None
    pending: list[str] = []
    start = 0
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip() or "-"
            pending = []
            continue
        if fence not in SHELLS:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending.append(line.rstrip()[:-1])
            continue
        command = " ".join([*pending, line])
        pending = []
        if not QUICK.search(command):
            continue
        try:
            words = shlex.split(command, comments=False)
        except ValueError as exc:
            raise ValueError(f"{page}:{start}: {exc} in {command!r}") from None
        marker = next((i for i, w in enumerate(words) if w.startswith("#")), None)
        if marker is not None and QUICK.match(" ".join(words[marker:])):
            found.append(DocCommand(page, start, tuple(words[:marker])))
    return found


def _all_quick() -> list[DocCommand]:
    return [
        c for page in PAGES for c in quick_commands(page.read_text(), str(page.relative_to(ROOT)))
    ]


def test_the_parser_finds_marked_commands_only_and_joins_continuations():
    text = "\n".join(
        [
            "```bash",
            "python a.py x=1   # quick: a second",
            "python b.py \\",
            "    y='[a, b]'   # quick",
            "python c.py      # about an hour",
            "python d.py",
            "```",
            "```python",
            "print(1)  # quick",
            "```",
            "```",
            "python e.py  # quick (no language: not a shell block)",
            "```",
        ]
    )
    found = quick_commands(text, "page.md")
    assert [(c.line, c.words) for c in found] == [
        (2, ("python", "a.py", "x=1")),
        (3, ("python", "b.py", "y=[a, b]")),
    ]


def test_the_docs_mark_quick_commands_and_each_can_run_as_written():
    commands = _all_quick()
    assert len(commands) >= 2, "the docs should mark at least two commands '# quick'"
    for command in commands:
        assert command.words[0] in ("python", ".venv/bin/python"), (
            f"{command}: a quick command starts with python, got {command.words[0]!r}"
        )
        placeholders = [w for w in command.words if re.search(r"<[^>]+>", w)]
        assert not placeholders, f"{command}: a quick command has no placeholder {placeholders}"


def _run(command: DocCommand, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    words = [sys.executable, *command.words[1:]]
    if words[1] in HYDRA_APPS and not any(w.startswith("hydra.run.dir=") for w in words):
        words.append(f"hydra.run.dir={tmp_path / 'hydra'}")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    return subprocess.run(
        words, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )


@pytest.mark.slow  # each command starts Python, Hydra and MLflow: about 5-20 s
@pytest.mark.parametrize("command", _all_quick(), ids=str)
@pytest.mark.usefixtures("mlflow_store")  # an empty store, its tables made
def test_a_quick_command_in_the_docs_exits_0(command: DocCommand, tmp_path: Path):
    done = _run(command, tmp_path)
    assert done.returncode == 0, (
        f"{command}: `{shlex.join(command.words)}` exited {done.returncode}:\n"
        f"{(done.stdout + done.stderr)[-3000:]}"
    )
