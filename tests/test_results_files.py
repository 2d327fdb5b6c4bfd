"""Result files: the docs' measured tables are written by the command that measures them.

``experiment.results.write_results`` heads each file with the command and the commit; the docs
include the files with ``--8<--`` (``pymdownx.snippets``), and every include must name a file
that exists (``mkdocs build --strict`` fails too, through ``check_paths``)."""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

import preloaded
import pytest
import yaml

from experiment.results import (
    DOCS_RESULTS,
    SMOKE_RESULTS,
    Report,
    at_documented_size,
    command_line,
    git_revision,
    results_path,
    write_results,
)

ROOT = Path(__file__).resolve().parents[1]
INCLUDE = re.compile(r"""^\s*--8<--\s+["']([^"']+)["']\s*$""", re.MULTILINE)
"""a block include of pymdownx.snippets: ``--8<-- "results/<name>.md"``"""
WRITES_ELSEWHERE = {"studies/speed_quality.py"}
"""scripts that print their tables without writing a results file yet"""


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_the_file_starts_with_the_command_and_the_commit(tmp_path: Path) -> None:
    path = write_results(
        "sim_throughput",
        "| a | b |\n|---|---:|\n| x | 1 |\n",
        "python benchmarks/sim_throughput.py --quick",
        root=tmp_path / "results",
    )
    assert path == (tmp_path / "results" / "sim_throughput.md").resolve()
    first, blank, *table = path.read_text().splitlines()
    assert first.startswith("Made by `python benchmarks/sim_throughput.py --quick` at commit `")
    head = _git(ROOT, "rev-parse", "--short", "HEAD")
    assert f"at commit `{head}" in first
    assert re.search(r" on \d{4}-\d{2}-\d{2} \(.+, \d+ CPU cores?\)\.$", first), first
    assert blank == ""
    assert table == ["| a | b |", "|---|---:|", "| x | 1 |"]
    assert not list(path.parent.glob(".*.tmp")), "the atomic write left its temporary file"


def test_the_commit_says_dirty_when_a_tracked_file_changed(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("1\n")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-q", "-m", "one")
    head = _git(tmp_path, "rev-parse", "--short", "HEAD")
    (tmp_path / "untracked.txt").write_text("not part of the commit\n")
    assert git_revision(tmp_path) == head
    (tmp_path / "a.txt").write_text("2\n")
    assert git_revision(tmp_path) == f"{head}+dirty"


def test_outside_a_checkout_the_commit_is_unknown(tmp_path: Path) -> None:
    assert git_revision(tmp_path) == "unknown"


def test_an_empty_body_or_a_bad_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="body is empty"):
        write_results("x", "\n\n", "python x.py", root=tmp_path)
    with pytest.raises(ValueError, match="'../escape'"):
        write_results("../escape", "| a |", "python x.py", root=tmp_path)
    assert not any(tmp_path.iterdir())


def test_documented_runs_write_the_docs_file_and_smoke_runs_do_not(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("study", choices=("sizes", "horizon"))
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--results-dir", type=Path, default=None)

    def where(*argv: str) -> Path:
        args = parser.parse_args(argv)
        documented = at_documented_size(parser, args, ignore=("study",))
        return results_path("ope_study", args.results_dir, documented_size=documented)

    assert where("sizes") == DOCS_RESULTS / "ope_study.md"
    assert where("horizon", "--quick") == SMOKE_RESULTS / "ope_study.md"
    assert where("sizes", "--clients", "100") == SMOKE_RESULTS / "ope_study.md"
    assert where("sizes", "--quick", "--results-dir", str(tmp_path)) == tmp_path / "ope_study.md"


def test_a_report_prints_each_line_and_writes_them_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = Report()
    report("| n |")
    report("|---:|")
    report("| 1 |")
    path = report.write("report_check", tmp_path, documented_size=False)
    out = capsys.readouterr().out
    assert out.startswith("| n |\n|---:|\n| 1 |\n")
    assert path.read_text().splitlines()[2:] == ["| n |", "|---:|", "| 1 |"]


def test_the_command_is_named_from_the_project_root() -> None:
    script = str(ROOT / "studies" / "ope_study.py")
    assert command_line([script, "sizes", "--agent", "run:a b"]) == (
        "python studies/ope_study.py sizes --agent 'run:a b'"
    )
    assert command_line(["/elsewhere/x.py", "-q"]) == "python /elsewhere/x.py -q"


def test_every_include_in_the_docs_names_a_file_that_exists() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    snippets = next(
        e["pymdownx.snippets"]
        for e in config["markdown_extensions"]
        if isinstance(e, dict) and "pymdownx.snippets" in e
    )
    assert snippets["check_paths"] is True
    bases = [ROOT / b for b in snippets["base_path"]]
    includes = [
        (page, name)
        for page in sorted((ROOT / "docs").rglob("*.md"))
        for name in INCLUDE.findall(page.read_text())
    ]
    missing = [
        f"{page.relative_to(ROOT)}: --8<-- {name!r}"
        for page, name in includes
        if not any((base / name).is_file() for base in bases)
    ]
    assert not missing, f"includes of files that do not exist: {missing}"


def _writes_results(path: Path) -> bool:
    """Whether a script imports experiment.results (or names docs/results: it writes there)."""
    source = path.read_text()
    imports = {
        node.module
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    return "experiment.results" in imports or "docs/results" in source


def _scripts() -> dict[str, Path]:
    """Every study and benchmark script, by its path from the root."""
    return {
        str(p.relative_to(ROOT)): p
        for folder in ("studies", "benchmarks")
        for p in sorted((ROOT / folder).glob("*.py"))
        if p.name != "__init__.py"
    }


def test_every_study_and_benchmark_writes_its_results_file() -> None:
    silent = [
        name
        for name, path in _scripts().items()
        if name not in WRITES_ELSEWHERE and not _writes_results(path)
    ]
    assert not silent, f"scripts that print tables without writing a results file: {silent}"


def _train(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    """``python train.py`` at a tiny size from ``tmp_path`` (its outputs, store and run folder
    there)."""
    return preloaded.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "agent=linucb",
            "trainer.total_timesteps=2000",
            "trainer.progress=false",
            "eval.num_clients=100",
            "eval.horizon_days=10",
            "eval.num_seeds=1",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"hydra.run.dir={tmp_path / 'hydra'}",
            *overrides,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow  # a train.py process: Hydra + MLflow start-up
def test_train_refuses_an_unknown_results_target_before_any_work(tmp_path: Path) -> None:
    done = _train(tmp_path, "results=site")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "error: results must be one of ['run', 'docs'], got 'site'"
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("mlflow_store")  # an empty store, its tables made
def test_train_writes_its_comparison_and_headline_to_the_run_folder(tmp_path: Path) -> None:
    done = _train(tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (written,) = (tmp_path / "outputs" / "train").glob("*/results.md")
    run_id = written.parent.name
    first, _, headline, _, margins, *rest = written.read_text().splitlines()
    assert first.startswith("Made by `python train.py agent=linucb ")
    assert f"at commit `{_git(ROOT, 'rev-parse', '--short', 'HEAD')}" in first
    assert headline.startswith(f"**linucb** (run `{run_id}`, training seed 0, 2,000 client-days)")
    assert "normalized value **" in headline
    assert margins.startswith("Against the best baseline heuristic: linucb vs the best baseline ")
    assert rest[1].startswith("| policy | normalized_value | ceiling_share |")


HYDRA_SCRIPTS = {"studies/closed_loop.py"}
"""scripts that are Hydra apps (``key=value`` and Hydra's ``--help``), not argparse ones"""


def test_every_study_and_benchmark_takes_its_flags_from_argparse() -> None:
    """``python <script> --help`` says what it measures and runs nothing (docs/layout.md's
    convention); a script without a parser would run its whole measurement on ``--help``."""
    without = [
        name
        for name, path in _scripts().items()
        if name not in HYDRA_SCRIPTS and "ArgumentParser(" not in path.read_text()
    ]
    assert not without, f"scripts with no argparse parser: {without}"
