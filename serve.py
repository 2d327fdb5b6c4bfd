"""Serve an export over HTTP: MLflow's scoring JSON on ``POST /invocations`` (``GET /ping``
answers once loaded), through the guarded runtime, with request limits.

    python serve.py export_dir=exports/<run_id>                         # loopback, port 5001
    python serve.py export_dir=exports/<run_id> port=0 workers=8 max_rows=10000 consent=refuse
    python serve.py export_dir=exports/<run_id> circuit=outputs/circuit.json
    python serve.py export_dir=exports/<run_id> require_signature=false   # an unsigned export
    python serve.py --help                                               # every key, its default

Every key is a field of :class:`serve.http.ServeConfig` (documented there, with the limits in
``serve/http.py``). An export, a circuit file or a setting it cannot use ends it before it
listens, with one line on stderr naming the problem and exit status 2.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from experiment.process import as_typed, freeze_long_lived
from serve.http import ServeConfig, serve

ConfigStore.instance().store(name="serve_schema", node=ServeConfig)


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    as_typed(cfg)  # key=1e05 is the text typed, not 100000.0
    if OmegaConf.is_missing(cfg, "export_dir"):
        _fail("export_dir is required: python serve.py export_dir=exports/<run id>")
    settings: ServeConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    try:
        serve(settings)
    except ValueError as exc:  # a setting, the export or the circuit file (ExportError...)
        _fail(f"cannot serve {settings.export_dir}: {exc}")


def _fail(message: str) -> None:
    """End with ``message`` as one line on stderr and exit status 2."""
    print(f"serve.py: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    freeze_long_lived()  # the collector's full passes would walk what torch and MLflow made
    main()
