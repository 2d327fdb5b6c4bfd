"""What every command (``train.py``, ``evaluate.py``, ``export.py``, ...) does as a process."""

from __future__ import annotations

import atexit
import gc


def freeze_long_lived() -> None:
    """Keep the garbage collector off the objects that live as long as the process: those alive
    now (the modules a command imported) and, at exit, everything still alive.

    Once torch, MLflow and Hydra are imported the collector's full passes walk millions of
    objects that will never be garbage: at exit alone that is about 1.3 s of every command on a
    2-core machine (``python -c "import export"`` exits in 5.1 s, 3.6 s with the freeze). Call it
    first thing in a command's ``__main__`` block: exit handlers registered later (MLflow ending
    its run, logging's flush, temporary directories' clean-up) still run before the last freeze,
    and every module is still torn down with its objects' finalizers; only reference cycles
    among frozen objects are left for the operating system to reclaim with the rest of the
    process."""
    gc.freeze()
    atexit.register(gc.freeze)
