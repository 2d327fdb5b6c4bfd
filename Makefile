# Two entry commands (README.md): `make train` and `make test`. Each creates .venv at the
# project root when missing and installs the project into it first. `make demo` is the
# one-minute smoke run; `make docs` builds the documentation site (docs/, mkdocs.yml).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: train test test-fast lint bench demo docs install clean mlflow-server mlflow-ui

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build; a bare `torch` would pull a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/python train.py $(ARGS)

# Tests run in one worker process per core (pytest-xdist). worksteal hands each worker a
# contiguous half of the tests (so a module's fixtures are mostly built once) and lets an idle
# worker take the tail of the other's queue, so one long test does not leave a core idle.
# One BLAS/OpenMP thread per worker: the workers already fill the cores. Bytecode is written
# even where the environment says not to (PYTHONDONTWRITEBYTECODE): both workers and the
# processes the tests start would otherwise each compile the project again. The tests start the
# project's commands (train.py, evaluate.py, ...; about 70 in all) from a server in each worker
# that has imported their libraries once (tests/preloaded.py), not from a fresh interpreter.
# `make test` lists its 15 slowest tests at the end.
PYTEST := PYTHONDONTWRITEBYTECODE= OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n auto --dist worksteal

test: $(STAMP)
	$(PYTEST) --durations=15 $(ARGS)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow" $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/sim_throughput.py

# A smoke run (under a minute, nothing to train): the four heuristics beside never sending, the
# deployable ceiling and the oracle, on the same 1,000 fresh clients x 60 days x 2 seeds; the
# comparison table is printed at the end. Its MLflow runs go to a store of their own under
# outputs/ (git-ignored), not the project's mlflow.db.
DEMO_STORE := $(CURDIR)/outputs/demo
demo: $(STAMP)
	mkdir -p $(DEMO_STORE)
	$(BIN)/python evaluate.py policies='[random,batch_and_blast,fixed_weekly,segment_rules]' \
		eval.num_clients=1000 eval.horizon_days=60 eval.num_seeds=2 \
		tracking.uri=sqlite:///$(DEMO_STORE)/mlflow.db hydra.run.dir=$(DEMO_STORE)/hydra $(ARGS)

# The documentation site, built strictly (a broken link or a page missing from the nav fails).
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir $(CURDIR)/site

# A tracking server for parallel sweeps (launcher=joblib / launcher=ray): SQLite store at the
# project root, artifacts served from ./mlartifacts, on loopback port 5000.
mlflow-server: $(STAMP)
	$(BIN)/mlflow server --backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
		--artifacts-destination $(CURDIR)/mlartifacts --host 127.0.0.1 --port 5000

mlflow-ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis site
