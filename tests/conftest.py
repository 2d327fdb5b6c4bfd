import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")
# one BLAS thread per test process: the estimators' many small solves ran 100-500x slower with
# BLAS threads competing for two cores (set before numpy is first imported)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
