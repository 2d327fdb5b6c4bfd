"""Every wait over a few seconds shows progress: a bar on a terminal, and off one (a pipe, a CI
log) plain lines on stderr, without changing a figure."""

from __future__ import annotations

import importlib

import numpy as np

from agents.heuristics import HEURISTICS
from envs.config import Setup
from evaluation.compare import compare
from evaluation.rollout import Progress, evaluate

rollout_module = importlib.import_module("evaluation.rollout")  # the module, not its function


def _policies():
    return [HEURISTICS["segment_rules"](), HEURISTICS["batch_and_blast"]()]


def test_evaluation_off_a_terminal_prints_plain_progress_lines(capsys, monkeypatch):
    monkeypatch.setattr(rollout_module, "LINE_EVERY_S", 0.0)  # a line for every day
    quiet = evaluate(_policies(), Setup(), 30, 5, seeds=(1000,), progress=False)
    assert capsys.readouterr().err == ""
    shown = evaluate(_policies(), Setup(), 30, 5, seeds=(1000,), progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("evaluating: 0/10 days")
    assert lines[-1].startswith("evaluating: 10/10 days (batch_and_blast seed 1000)")
    assert len(lines) == 11 and "\r" not in "".join(lines)  # readable in a log
    for a, b in zip(quiet, shown, strict=True):  # the same figures either way
        assert np.array_equal(a.value, b.value)


def test_a_progress_line_comes_at_the_start_and_the_end_however_long_between(capsys):
    with Progress(3, "work", "step") as bar:
        for _ in range(3):
            bar.update()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == ["work: 0/3 steps", "work: 3/3 steps"]


def test_comparing_shows_the_confidence_intervals_being_computed(capsys):
    compare(_policies()[:1], Setup(), num_clients=20, horizon_days=3, seeds=(1000,), n_boot=10)
    err = capsys.readouterr().err
    assert "evaluating: 12/12 days" in err  # segment_rules and the three references
    assert "confidence intervals: 4/4 policies (deployable_ceiling)" in err
