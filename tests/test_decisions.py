"""The decision log: its schema checked value by value, files rotated by rows and by time, written
whole or not at all, read back checked; and a server killed mid-stream (SIGKILL) leaves only
readable files holding every decision it reported written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from serve import contract
from serve.decisions import (
    COLUMNS,
    SCHEMA,
    DecisionLog,
    DecisionLogError,
    check_decisions,
    decision_frame,
    frame_of,
    log_files,
    new_decision_ids,
    read_decisions,
    scan_decisions,
)
from serve.runtime import Exploration, PolicyRuntime

ROOT = Path(__file__).resolve().parents[1]
NAMES = list(contract.FEATURE_NAMES)


def frame(n: int, start: int = 0, day: int = 3) -> pl.DataFrame:
    """``n`` decisions for clients ``start..start + n - 1``: every third a send."""
    action = np.zeros((n, 4), dtype=np.int64)
    send = np.arange(n) % 3 == 0
    action[send] = (2, 1, 0, 3)
    return decision_frame(
        client_id=np.arange(start, start + n),
        day=day,
        action=action,
        propensity=np.where(send, 0.05, 0.9),
        policy_version="sha256:abc",
        exploration="epsilon=0.1",
        mode="serve",
        policy_action=np.zeros((n, 4), dtype=np.int64),
        policy_propensity=np.full(n, 0.7),
        needs_review=np.zeros(n, dtype=bool),
        allowed_actions=np.full(n, 19),
    )


@pytest.mark.parametrize("n", [0, 1, 3, 4096])
def test_decision_ids_are_distinct_version_4_uuids(n):
    ids = new_decision_ids(n)
    assert len(ids) == n and len(set(ids)) == n
    for text in ids:
        parsed = uuid.UUID(hex=text)
        assert parsed.hex == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert not set(ids) & set(new_decision_ids(n))  # fresh on every call


def test_every_column_is_documented_and_typed():
    assert list(COLUMNS) == list(SCHEMA)
    f = frame(6)
    assert f.schema == pl.Schema(SCHEMA)
    assert f["slot"].to_list()[:2] == ["morning", None]
    assert f["tone"][0] == "educational" and f["content"][0] == "market_update"
    assert f["agree"].to_list() == [False, True, True, False, True, True]
    assert f["decision_id"].n_unique() == 6 and all(len(i) == 32 for i in f["decision_id"])


@pytest.mark.parametrize(
    "edit, message",
    [
        (pl.col("propensity") * 0, "row 0: propensity lies in \\(0, 1\\], got 0.0"),
        (pl.lit("aa").alias("decision_id"), "decision_id must be unique"),
        (pl.lit("replay").alias("mode"), "mode is one of"),
        (pl.col("a_slot") + 7, "a_slot lies in 0..6"),
        (pl.lit("sms").alias("channel"), "row 0: channel is the label of a_channel"),
        (pl.lit(True).alias("agree"), "row 0: agree says whether"),
        (pl.lit(None, pl.Int64).alias("client_id"), "client_id must not be null"),
    ],
)
def test_a_bad_value_is_refused_naming_column_and_row(edit, message):
    with pytest.raises(DecisionLogError, match=message):
        check_decisions(frame(3).with_columns(edit))


def test_a_missing_or_mistyped_column_is_refused():
    with pytest.raises(DecisionLogError, match="missing \\['agree'\\]"):
        check_decisions(frame(2).drop("agree"))
    with pytest.raises(DecisionLogError, match="column day must be Int32, got Int64"):
        check_decisions(frame(2).with_columns(pl.col("day").cast(pl.Int64)))


def test_files_rotate_by_rows_and_by_time(tmp_path):
    now = [0.0]
    written: list[tuple[Path, int]] = []
    log = DecisionLog(
        tmp_path,
        rows_per_file=10,
        seconds_per_file=5.0,
        on_flush=lambda p, n: written.append((p, n)),
        clock=lambda: now[0],
    )
    assert log.append(frame(4)) == [] and log.buffered_rows == 4
    files = log.append(frame(23, start=4))  # fills 10, 10, and leaves 7 buffered
    assert len(files) == 2 and log.buffered_rows == 7
    now[0] = 4.9
    assert log.flush_if_due() == []
    now[0] = 5.0
    assert len(log.flush_if_due()) == 1 and log.buffered_rows == 0
    assert [n for _, n in written] == [10, 10, 7]
    back = read_decisions(tmp_path)
    assert back["client_id"].to_list() == list(range(27))  # in the order decided
    assert len(log_files(tmp_path)) == 3 == len(sorted(tmp_path.iterdir()))  # no temporaries
    assert scan_decisions(tmp_path).select(pl.len()).collect().item() == 27


def test_a_failed_write_leaves_no_file_and_keeps_the_buffer(tmp_path):
    folder = tmp_path / "log"
    log = DecisionLog(folder, rows_per_file=100)
    log.append(frame(5))
    folder.rename(tmp_path / "moved")  # the folder is gone: the write fails
    with pytest.raises(FileNotFoundError, match="no such directory"):
        log.flush()
    assert log.buffered_rows == 5 and log.files == []
    folder.mkdir()
    assert len(log.flush()) == 1 and read_decisions(folder).height == 5


def test_the_reader_refuses_a_bad_file_by_name_and_ids_twice(tmp_path):
    with DecisionLog(tmp_path) as log:
        log.append(frame(3))
    (tmp_path / "decisions-zz-broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DecisionLogError, match="decisions-zz-broken.parquet: not a readable"):
        read_decisions(tmp_path)
    (tmp_path / "decisions-zz-broken.parquet").unlink()
    again = log_files(tmp_path)[0]
    (tmp_path / "decisions-zz-again.parquet").write_bytes(again.read_bytes())
    with pytest.raises(DecisionLogError, match="decision_id must be unique"):
        read_decisions(tmp_path)
    (tmp_path / ".decisions-x.parquet.1234.tmp").write_bytes(b"torn")  # a temporary: not read
    assert len(log_files(tmp_path)) == 2
    with pytest.raises(FileNotFoundError, match="no decision log at"):
        read_decisions(tmp_path / "nowhere")


@pytest.fixture
def export(bandit_export: Path) -> Path:
    """The shared read-only export of a LinUCB with fixed random weights (tests/conftest.py)."""
    return bandit_export


def requests(n: int, start: int, day: int = 5, seed: int = 0) -> dict:
    """A dataframe_split body of ``n`` varied clients, ids ``start..``, with client_id and day."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, len(NAMES)))
    x[:, NAMES.index("weekday_mon")] = 1
    x[np.arange(n), NAMES.index("consent_tier_0") + rng.integers(0, 4, n)] = 1
    x[np.arange(n), NAMES.index("goal_retirement") + rng.integers(0, 4, n)] = 1
    x[:, NAMES.index("declared_risk")] = rng.random(n)
    x[:, NAMES.index("sent_7d_email")] = rng.integers(0, 3, n)
    rows = [[*r, start + i, day] for i, r in enumerate(x.tolist())]
    return {"dataframe_split": {"columns": [*NAMES, "client_id", "day"], "data": rows}}


def test_the_in_process_runtime_logs_what_it_decides(export, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runtime = PolicyRuntime.load(export, exploration=Exploration(epsilon=0.5, seed=2))
    split = requests(200, 1000)["dataframe_split"]
    table = dict(zip(split["columns"], np.array(split["data"]).T, strict=True))
    decisions = runtime.decide(table, explain=False)
    with DecisionLog(tmp_path) as log:
        log.append(frame_of(decisions))
    back = read_decisions(tmp_path)
    assert back["decision_id"].to_list() == decisions.decision_id
    np.testing.assert_array_equal(back["propensity"].to_numpy(), decisions.propensity)
    assert set(back["exploration"]) == {"epsilon=0.5"} and set(back["day"]) == {5}
    table.pop("client_id")
    with pytest.raises(DecisionLogError, match="needs client_id"):
        frame_of(runtime.decide(table, explain=False))


@pytest.mark.slow
def test_a_server_killed_mid_stream_leaves_readable_files_with_every_flushed_decision(
    export, tmp_path
):
    """``python serve.py`` with a decision log, requests streamed from two threads, SIGKILL
    mid-stream: every file left is readable, every file the server reported is there with its
    rows, and what is lost is at most the buffer (rows_per_file)."""
    folder, rows_per_file = tmp_path / "decisions", 40
    server = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "serve.py"),
            f"export_dir={export}",
            "port=0",
            "require_signature=false",
            "exploration.epsilon=0.2",
            "exploration.seed=3",
            f"decision_log.dir={folder}",
            f"decision_log.rows_per_file={rows_per_file}",
            "decision_log.seconds_per_file=0.3",
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(server.stdout.readline, "")))
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any(line.startswith("serving") for line in lines):
            assert server.poll() is None and time.monotonic() < deadline, "no server"
            time.sleep(0.1)
        url = lines[0].split(" on ")[1].strip()
        answered: dict[str, dict] = {}
        stop = threading.Event()

        def stream(first: int) -> None:
            start = first
            while not stop.is_set():
                body = json.dumps(requests(7, start, seed=start)).encode()
                request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
                try:
                    reply = json.loads(urllib.request.urlopen(request, timeout=10).read())
                except OSError:
                    return  # the server is gone
                for row in reply["predictions"]:
                    answered[row["decision_id"]] = row
                start += 7 * 2

        streams = [threading.Thread(target=stream, args=(i * 7,)) for i in range(2)]
        for s in streams:
            s.start()
        while len(answered) < 600:
            assert time.monotonic() < deadline, f"only {len(answered)} decisions answered"
            time.sleep(0.02)
        server.send_signal(signal.SIGKILL)  # mid-stream: requests still arriving
        server.wait(timeout=30)
        stop.set()
        for s in streams:
            s.join(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(timeout=30)
        reader.join(timeout=10)
    reported = {}
    for line in lines:
        if line.startswith("decision log: wrote"):
            words = line.split()
            reported[Path(words[-1])] = int(words[3])
    assert len(reported) >= 3, lines[:5]
    logged = read_decisions(folder)  # every file left readable, no decision twice
    for path, rows in reported.items():
        assert pl.read_parquet(path).height == rows
    assert logged.height >= sum(reported.values())
    ids = set(logged["decision_id"])
    answered_ids = set(answered)
    lost = answered_ids - ids
    assert len(lost) <= rows_per_file, f"{len(lost)} answered decisions are in no file"
    for row in logged.filter(pl.col("decision_id").is_in(list(answered_ids))).iter_rows(named=True):
        said = answered[row["decision_id"]]
        assert said["propensity"] == row["propensity"] and said["slot"] in (
            "no_send",
            *contract.ACTION_LABELS["slot"],
        )


def test_the_pyfunc_model_explores_and_logs_as_its_model_config_says(export, tmp_path):
    import mlflow.pyfunc
    import pandas as pd

    from serve.pyfunc import MODEL_CONFIG, PIP_REQUIREMENTS, CadencePolicyModel

    path = tmp_path / "model"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.pyfunc.save_model(
            path,
            python_model=CadencePolicyModel(),
            artifacts={"export": str(export)},
            code_paths=[str(ROOT / "serve")],
            model_config=MODEL_CONFIG,  # MLflow takes overrides of the logged keys only
            pip_requirements=PIP_REQUIREMENTS,  # as export.py logs it (not inferred)
        )
        model = mlflow.pyfunc.load_model(
            str(path),
            model_config={
                "exploration_epsilon": 0.4,
                "exploration_seed": 1,
                "decision_log_dir": str(tmp_path / "log"),
                "policy_version": "models:/cadence-policy/3",
            },
        )
    split = requests(50, 0)["dataframe_split"]
    out = model.predict(pd.DataFrame(split["data"], columns=split["columns"]))
    assert set(out["exploration"]) == {"epsilon=0.4"} and (~out["agree"]).any()
    model.unwrap_python_model().log.flush()
    logged = read_decisions(tmp_path / "log")
    assert logged["decision_id"].to_list() == out["decision_id"].to_list()
    assert set(logged["policy_version"]) == {"models:/cadence-policy/3"}
    np.testing.assert_array_equal(logged["propensity"].to_numpy(), out["propensity"].to_numpy())
