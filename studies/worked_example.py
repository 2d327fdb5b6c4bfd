"""The learning loop's worked example, end to end, each step a command that is printed and run.

    python studies/worked_example.py                         # 1,000 clients x 20 days, eps 0.1
    python studies/worked_example.py --via runtime http batch --clients 1000 --days 20
    python studies/worked_example.py --quick                 # 200 clients x 6 days (a smoke run)

The chain (``docs/events.md``, "Worked example"):

1. ``python train.py agent=linucb ...``: a bandit trained briefly (``--train-steps``
   client-days), logged to an MLflow store in the output folder (``--run-id`` skips it);
2. ``python export.py run_id=<id> ...``: its ONNX export;
3. ``python -m loop.served --via <via> ...``: a simulated firm served every day by the guarded
   runtime with epsilon exploration (``--epsilon``) in process (``runtime``), through
   ``python serve.py``'s HTTP (``http``) or by ``python decide.py`` on the export so far
   (``batch``): the firm's export (the features are checked against the feature builder),
   the decision log and the review outcomes;
4. ``python join.py ... seed=<seed>``: the logged dataset with the observable reward;
5. ``python evaluate.py mode=estimate ... policies='[segment_rules,run:<id>]'
   reward@eval.reward=observable``: both policies estimated from that log, the truth (rolled
   out on the same simulated clients and luck, valued with the same observable reward) beside.

Every command runs from the repository root with ``MLFLOW_TRACKING_URI`` set to the output
folder's own store; a step that fails stops the example with its output. The commands and what
they printed are written to ``<out>/worked_example.md``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from experiment.process import freeze_long_lived
from experiment.results import write_results

ROOT = Path(__file__).resolve().parents[1]
VIAS = ("runtime", "http", "batch")


def run(command: list[str], env: dict[str, str], transcript: list[str]) -> str:
    """Run ``command`` from the repository root, print it and its output, and return the
    output; exit with its status when it fails."""
    shown = " ".join(shlex.quote(c) for c in command)
    print(f"\n$ {shown}", flush=True)
    start = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    output = _clean(done.stdout + done.stderr)
    print(output, flush=True)
    transcript += [f"```bash\n{shown}\n```", f"```text\n{output}\n```"]
    if done.returncode != 0:
        print(f"worked_example: the step above exited with status {done.returncode}")
        raise SystemExit(done.returncode)
    print(f"({time.monotonic() - start:.1f} s)", flush=True)
    return output


def _clean(text: str) -> str:
    """The output without progress bars and library warnings' source lines."""
    keep = []
    for line in text.splitlines():
        if "Downloading artifacts" in line or "it/s]" in line or line.startswith("  "):
            continue
        if "Warning:" in line or "INFO mlflow" in line:
            continue
        keep.append(line.rstrip())
    return "\n".join(keep).strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1_000, help="simulated clients")
    parser.add_argument("--days", type=int, default=20, help="served days, from day 0")
    parser.add_argument("--epsilon", type=float, default=0.1, help="exploration epsilon")
    parser.add_argument(
        "--via", nargs="+", choices=VIAS, default=["runtime", "http"], help="serving paths"
    )
    parser.add_argument("--seed", type=int, default=0, help="the simulator's seed")
    parser.add_argument("--train-steps", type=int, default=50_000, help="linucb's client-days")
    parser.add_argument("--run-id", default=None, help="serve this train.py run (no training)")
    parser.add_argument("--out", default="outputs/worked_example", help="output folder")
    parser.add_argument("--quick", action="store_true", help="200 clients x 6 days, short training")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.days, args.train_steps = 200, 6, 20_000
    out = (ROOT / args.out).resolve() if not Path(args.out).is_absolute() else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = os.environ | {
        "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}",
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "PYTHONWARNINGS": "ignore",
    }
    py = sys.executable
    transcript = [
        f"# Worked example: {args.clients:,} clients x {args.days} days, epsilon {args.epsilon}",
        f"MLFLOW_TRACKING_URI={env['MLFLOW_TRACKING_URI']}",
    ]
    run_id = args.run_id
    if run_id is None:
        printed = run(
            [
                py,
                "train.py",
                "agent=linucb",
                f"trainer.total_timesteps={args.train_steps}",
                "trainer.progress=false",
                "eval.num_clients=200",
                "eval.num_seeds=1",
                "eval.horizon_days=20",
                "eval.n_boot=20",
            ],
            env,
            transcript,
        )
        found = re.search(r"MLflow run ([0-9a-f]{32})", printed)
        if found is None:
            raise SystemExit("worked_example: train.py printed no MLflow run id")
        run_id = found.group(1)
    export = out / "export"
    run(
        [py, "export.py", f"run_id={run_id}", f"out={export}", "register=false"],
        env,
        transcript,
    )
    for via in args.via:
        folder = out / via
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        run(
            [
                py,
                "-m",
                "loop.served",
                f"--export-dir={export}",
                f"--via={via}",
                f"--clients={args.clients}",
                f"--days={args.days}",
                f"--seed={args.seed}",
                f"--epsilon={args.epsilon}",
                f"--decisions={folder / 'decisions'}",
                f"--events={folder / 'firm'}",
                f"--reviews={folder / 'reviews.parquet'}",
            ],
            env,
            transcript,
        )
        run(
            [
                py,
                "join.py",
                f"export={folder / 'firm'}",
                f"decisions={folder / 'decisions'}",
                f"reviews={folder / 'reviews.parquet'}",
                f"out={folder / 'joined.parquet'}",
                f"seed={args.seed}",
            ],
            env,
            transcript,
        )
        run(
            [
                py,
                "evaluate.py",
                "mode=estimate",
                f"estimate.data={folder / 'joined.parquet'}",
                f"policies=[segment_rules,run:{run_id}]",
                "estimate.mlflow=false",
                "reward@eval.reward=observable",
            ],
            env,
            transcript,
        )
    # the transcript, headed by this command and the commit, beside the run's own files
    written = write_results("worked_example", "\n\n".join(transcript), root=out)
    print(f"\nwrote {written}")


if __name__ == "__main__":
    freeze_long_lived()  # the collector's full passes would walk what torch and MLflow made
    main()
