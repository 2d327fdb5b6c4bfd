"""Screenshots of what an analyst sees in the MLflow UI, taken in headless Chromium.

    python docs/screenshots.py                 # writes docs/mlflow_*.png (about 3 minutes)
    python docs/screenshots.py --out /tmp/shots --port 5056

It makes a store of its own in a temporary folder: a small ``train.py`` run (PPO-Lagrangian,
20,000 client-days), an ``evaluate.py`` comparison of that run with three heuristics, and
``export.py promote=true`` (the version the alias ``champion`` names); starts ``mlflow ui`` on
it, opens the links those commands print and takes four screenshots:

* ``mlflow_landing.png``: the comparison's run page, the link ``evaluate.py`` prints;
* ``mlflow_comparison.png``: the comparison table (``comparison_table.json``) in the run's
  artifacts;
* ``mlflow_compare.png``: MLflow's compare page over the comparison's child runs;
* ``mlflow_champion.png``: the champion's model version page.

Needs Playwright (``pip install playwright``) and a Chromium: ``--chromium PATH``, else the
system's ``chromium`` (Debian: ``apt-get install chromium``), else Playwright's own
(``playwright install chromium``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZE = {"width": 1600, "height": 1000}
"""the browser window, in CSS pixels"""


def run(args: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run one project command; its stdout (an error naming the command if it fails)."""
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def make_store(work: Path, ui: str) -> dict[str, str]:
    """Train, compare, export in a store under ``work``; the links and ids the pages need."""
    uri = f"sqlite:///{work / 'mlflow.db'}"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    common = [f"tracking.uri={uri}", f"tracking.ui={ui}", f"hydra.run.dir={work / 'hydra'}"]
    small = ["eval.num_clients=500", "eval.horizon_days=30", "eval.num_seeds=2"]
    out = run([str(ROOT / "train.py"), "trainer.total_timesteps=20000", *small, *common], env, work)
    train_link = re.search(r"open it in the MLflow UI: (\S+)", out).group(1)
    run_id = re.search(r"/runs/(\w+)", train_link).group(1)
    policies = f"policies=[random,fixed_weekly,segment_rules,run:{run_id}]"
    out = run([str(ROOT / "evaluate.py"), policies, *small, *common], env, work)
    landing = re.search(r"MLflow comparison run (\w+): (\S+)", out)
    exported = run(
        [
            str(ROOT / "export.py"),
            f"run_id={run_id}",
            f"out={work / 'export'}",
            "promote=true",
            f"tracking.uri={uri}",
            f"tracking.ui={ui}",
            f"hydra.run.dir={work / 'hydra'}",
        ],
        env,
        work,
    )
    version = re.search(r"\(its evaluation figures\): (\S+)", exported).group(1)
    return {
        "uri": uri,
        "landing": landing.group(2),
        "parent": landing.group(1),
        "train": train_link,
        "version": version,
    }


def children(uri: str, parent: str) -> tuple[str, list[str]]:
    """The experiment id and the child runs of the comparison ``parent``."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    experiment = client.get_run(parent).info.experiment_id
    runs = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")
    return experiment, [r.info.run_id for r in runs]


def start_ui(uri: str, port: int, log: Path) -> subprocess.Popen:
    """``mlflow ui`` on ``uri``, waited for until it answers (60 s at most)."""
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    ui = subprocess.Popen(
        [
            str(mlflow_bin),
            "ui",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    for _ in range(60):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return ui
        except OSError:
            time.sleep(1)
    ui.terminate()
    raise SystemExit(f"mlflow ui did not answer on port {port}; its log: {log}")


def chromium(path: str | None) -> str | None:
    """The Chromium to drive: ``path``, else the system's, else None (Playwright's own)."""
    if path:
        return path
    return next(
        (shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None
    )


def shoot(pages: list[tuple[str, str, str]], out: Path, browser_path: str | None) -> None:
    """Each (file name, URL, text to wait for) as a PNG under ``out``."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        page = browser.new_page(viewport=SIZE)
        for name, url, wait_for in pages:
            page.goto(url)
            try:
                page.get_by_text(wait_for).first.wait_for(timeout=60_000)
            except PlaywrightTimeout:
                print(f"{name}: {wait_for!r} did not show within 60 s; the page as it is")
            close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
            if close.count():  # the UI's chat assistant panel: closed, as an analyst would
                close.first.click()
            time.sleep(3)  # tables and charts draw after their data arrives
            page.screenshot(path=str(out / name))
            print(f"wrote {out / name} ({url})")
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--port", type=int, default=5055)
    parser.add_argument("--chromium", help="the Chromium executable (default: the system's)")
    parser.add_argument(
        "--store",
        type=Path,
        help="keep the store in this folder and reuse it when it is there (default: a "
        "temporary folder, removed at the end)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ui = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory(prefix="cadence-shots-") as tmp:
        work = args.store or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        saved = work / "links.json"
        if saved.is_file():
            found = json.loads(saved.read_text())
        else:
            print("making the store (train.py, evaluate.py, export.py) ...", flush=True)
            found = make_store(work, ui)
            saved.write_text(json.dumps(found))
        experiment, runs = children(found["uri"], found["parent"])
        server = start_ui(found["uri"], args.port, work / "ui.log")
        try:
            ids = ",".join(f'"{r}"' for r in runs)
            pages = [
                ("mlflow_landing.png", found["landing"], "Reading the figures"),
                (
                    "mlflow_comparison.png",
                    f"{ui}/#/experiments/{experiment}/runs/{found['parent']}/artifacts/"
                    "comparison_table.json?workflowType=machine_learning",
                    "comparison_table.json",
                ),
                (
                    "mlflow_compare.png",
                    f'{ui}/#/compare-runs?runs=[{ids}]&experiments=["{experiment}"]'
                    "&workflowType=machine_learning",
                    "segment_rules",
                ),
                ("mlflow_champion.png", found["version"], "champion"),
            ]
            shoot(pages, args.out, chromium(args.chromium))
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
