import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")
# one BLAS thread per test process: the estimators' many small solves ran 100-500x slower with
# BLAS threads competing for two cores (set before numpy is first imported)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402  (after the thread settings above)
from hypothesis import settings  # noqa: E402

# Property tests: no per-example deadline (two busy cores make timings meaningless); in CI the
# examples are derived from each test's name, so a run is repeatable and never a coin toss,
# while a local run draws new examples each time.
settings.register_profile("local", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "local")


@pytest.fixture(scope="session")
def bandit_export(tmp_path_factory) -> Path:
    """One export of a LinUCB with fixed random weights (``theta`` ~ N(0, 0.5), seed 0), made
    once per test process and shared by the modules that only read it (never write into it)."""
    import warnings

    import numpy as np

    from agents.bandits import LinUCB
    from serve.onnx_export import export_policy

    policy = LinUCB(seed=0)
    policy.theta = np.random.default_rng(0).normal(0, 0.5, policy.theta.shape)
    folder = tmp_path_factory.mktemp("export") / "bandit"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_policy(policy, folder)
    return folder


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables made and nothing in it (MLflow's own Default
    experiment only), made once per test process: MLflow migrates a new store's schema in the
    first process that opens it, ~1.3 s each time. Tests copy it (:func:`mlflow_store`);
    tests of a store that does not exist yet leave it out."""
    import mlflow

    folder = tmp_path_factory.mktemp("empty_store")
    here = os.getcwd()
    os.chdir(folder)  # the Default experiment's artifact folder (./mlruns) is made here
    try:
        mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    finally:
        os.chdir(here)
    return folder / "mlflow.db"


@pytest.fixture
def mlflow_store(tmp_path: Path, empty_store: Path) -> str:
    """The tracking URI of ``tmp_path / "mlflow.db"``, an empty store with its tables made (a
    copy of :func:`empty_store`)."""
    path = tmp_path / "mlflow.db"
    assert not path.exists(), path
    shutil.copyfile(empty_store, path)
    return f"sqlite:///{path}"


def pytest_collection_modifyitems(config, items):
    """Modules that hold slow tests run first, each module's tests still together and in order:
    the two workers (``-n auto --dist worksteal``) split the list in halves and the one that
    finishes first takes the tail of the other's queue, so long tests at the end of a queue
    would leave a core idle while they finish; short ones there even the load out."""
    heavy = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in heavy)


def pytest_collection_finish(session):
    """Freeze what collection made (every test module and the libraries they import: torch,
    MLflow, Hydra), so the garbage collections during the tests, and the last one at exit,
    skip those objects (see ``experiment.process.freeze_long_lived``)."""
    import gc

    gc.freeze()
