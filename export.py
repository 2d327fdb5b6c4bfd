"""Export a trained policy for serving and register it in MLflow.

    python export.py run_id=<mlflow run id>                 # writes exports/<run_id>/{policy.onnx,manifest.json}
    python export.py run_id=<id> out=/srv/policy promote=true

The export folder is 0755 with 0644 files (``serve/onnx_export.py``), readable by a server running
under another account; without $CADENCE_EXPORT_KEY it is unsigned, which loading it here warns
about (``serve.http`` refuses it unless told to allow unsigned exports).

The export is logged to the training run as a pyfunc model registered as ``cadence-policy``;
``promote=true`` points the alias ``champion`` at the new version, which
``mlflow models serve -m models:/cadence-policy@champion --env-manager local`` serves, with
``MLFLOW_TRACKING_URI`` set to the store's absolute URI (the command printed says it).
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import mlflow
import numpy as np
import pandas as pd
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from agents.registry import load_policy
from envs.config import GuardrailConfig
from envs.features import FEATURE_NAMES
from experiment.process import as_typed, freeze_long_lived
from experiment.registry import describe_version
from experiment.schema import TrackingConfig
from experiment.tracking import ROOT, download_policy, find_run, serve_command, setup_mlflow
from serve.onnx_export import NotExportable, export_policy
from serve.pyfunc import MODEL_CONFIG, PIP_REQUIREMENTS, CadencePolicyModel
from serve.pyfunc import signature as model_signature
from serve.runtime import PolicyRuntime
from simulate.config import ConfigError

REGISTERED_NAME = "cadence-policy"


@dataclass
class ExportConfig:
    """What export.py reads."""

    run_id: str = MISSING
    """MLflow run id of a train.py run (or a unique prefix of it, at least 6 hex digits)"""
    out: str | None = None
    """output folder (default: exports/<run_id> at the project root)"""
    promote: bool = False
    """set the registered model's alias ``champion`` to this version"""
    register: bool = True
    """log the pyfunc model and register it as cadence-policy"""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


ConfigStore.instance().store(name="export_schema", node=ExportConfig)


def example_input(runtime: PolicyRuntime, rows: int = 3) -> pd.DataFrame:
    """A valid request: fresh clients of the default population on a Monday."""
    x = np.zeros((rows, len(FEATURE_NAMES)), dtype=np.float64)
    names = list(FEATURE_NAMES)
    x[:, names.index("weekday_mon")] = 1
    x[:, names.index("consent_tier_3")] = 1
    x[:, names.index("days_since_last_send")] = 30
    x[:, names.index("goal_retirement")] = 1
    x[:, names.index("declared_risk")] = 0.4
    x[:, [i for i, n in enumerate(names) if n.startswith("ema_open")]] = 0.3
    x[:, [i for i, n in enumerate(names) if n.startswith("ema_click")]] = 0.05
    return pd.DataFrame(x, columns=names)


def run_export(cfg: ExportConfig) -> Path:
    setup_mlflow(cfg.tracking.uri, cfg.tracking.experiment)
    run = find_run(cfg.run_id, "run_id")
    cfg.run_id = run.info.run_id  # a unique prefix given names the full id from here on
    # the run's files are read into memory here; the scratch folder (private, 0700) then goes
    with tempfile.TemporaryDirectory(prefix="cadence-export-") as work:
        policy = load_policy(download_policy(cfg.run_id, "run_id", Path(work)))
        config_path = mlflow.artifacts.download_artifacts(
            run_id=cfg.run_id, artifact_path="config.yaml", dst_path=work
        )
        trained = OmegaConf.load(config_path)
    guardrails = GuardrailConfig()
    if "env" in trained and "guardrails" in trained.env:
        guardrails = OmegaConf.to_object(
            OmegaConf.merge(OmegaConf.structured(GuardrailConfig), trained.env.guardrails)
        )
    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith(("eval/", "fairness/"))}
    out = Path(cfg.out) if cfg.out else ROOT / "exports" / cfg.run_id
    try:
        export_policy(policy, out, guardrails, cfg.run_id, metrics)
    except NotExportable as exc:
        raise ConfigError(f"run {cfg.run_id} ({policy.name}) cannot be exported: {exc}") from exc
    runtime = PolicyRuntime.load(out)
    print(f"wrote {out / 'policy.onnx'} and {out / 'manifest.json'}")
    if cfg.register:
        example = example_input(runtime)
        signature = model_signature(runtime, example)
        with mlflow.start_run(run_id=cfg.run_id):
            info = mlflow.pyfunc.log_model(
                name="served_policy",
                python_model=CadencePolicyModel(),
                artifacts={"export": str(out)},
                code_paths=[str(ROOT / "serve")],  # the runtime and the decision log
                model_config=MODEL_CONFIG,  # every load-time setting a loader may give
                signature=signature,
                input_example=example,
                registered_model_name=REGISTERED_NAME,
                pip_requirements=PIP_REQUIREMENTS,
            )
        version = info.registered_model_version
        page = describe_version(REGISTERED_NAME, version, cfg.run_id, cfg.tracking.ui)
        print(f"registered {REGISTERED_NAME} version {version} (its evaluation figures): {page}")
        if cfg.promote:
            mlflow.MlflowClient().set_registered_model_alias(REGISTERED_NAME, "champion", version)
            serve = serve_command(f"models:/{REGISTERED_NAME}@champion", 5001)
            print(f"alias champion -> version {version}; serve it (from any directory) with:")
            print(f"  {serve}")
    return out


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    as_typed(cfg)  # key=1e05 is the text typed, not 100000.0
    if OmegaConf.is_missing(cfg, "run_id"):
        raise ConfigError(
            "run_id is required: python export.py run_id=<mlflow run id of a train.py run>"
        )
    run_export(OmegaConf.to_object(cfg))


if __name__ == "__main__":
    freeze_long_lived()  # the collector's full passes would walk what torch and MLflow made
    sys.exit(main())
