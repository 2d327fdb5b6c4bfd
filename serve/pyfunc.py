"""The export as an MLflow pyfunc model: ``predict`` takes a DataFrame with one column per
feature name (integer, float32 or float64 columns; optionally ``client_id`` and ``day``, and in
shadow mode the firm's action ``firm_slot``, ``firm_tone``, ``firm_channel``, ``firm_content``)
and returns one row per client: decision_id, slot, tone, channel, content, probability (the
policy's, of its own choice), propensity (exact probability of the returned action, exploration
applied), reasons, needs_review, the policy's own choice (policy_slot ... policy_content,
policy_probability), agree, policy_version, exploration and mode. The model's code travels with
it (``code_paths``), and it loads only the ONNX file and manifest (no pickle of the policy).

Model config (``mlflow.pyfunc.load_model(uri, model_config={...})``; MLflow takes only the keys
the model was logged with, so log it with ``model_config=MODEL_CONFIG``), every key optional: ``exploration_epsilon`` (0..1),
``exploration_temperature`` (a softmax temperature), ``exploration_seed``; ``shadow`` (true:
requests carry the firm's action), ``not_allowed`` (``fallback`` or ``refuse``: a firm's action
the guards refuse); ``policy_version`` (e.g. ``models:/cadence-policy/3``; default the export's
digest); ``decision_log_dir`` (append every decision to a decision log there, ``serve/decisions.py``;
the requests must then carry ``client_id`` and ``day``), ``decision_log_rows`` and
``decision_log_seconds`` (its rotation). The log's buffer is written when full or old, and when
the process exits normally.

Params: ``explain``: true or false; left out, reasons are written for requests of up to
:data:`serve.runtime.EXPLAIN_UP_TO` rows and skipped for larger batches (they cost one extra network pass per
feature group); ``explain: true`` for more than :data:`serve.runtime.EXPLAIN_AT_MOST` rows is
refused. The model has no input schema on purpose: MLflow would drop
unknown columns and refuse float64 before the runtime could name them; the runtime checks
every column itself. A refused request is an MLflow ``INVALID_PARAMETER_VALUE`` error (HTTP
400) whose message names the feature and row.
"""

from __future__ import annotations

import atexit
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ParamSchema, ParamSpec

from serve.runtime import (
    EXPLAIN_AT_MOST,
    Decisions,
    Exploration,
    PolicyRuntime,
    RequestError,
    wants_reasons,
)

CONFIG_KEYS = (
    "exploration_epsilon",
    "exploration_temperature",
    "exploration_seed",
    "shadow",
    "not_allowed",
    "policy_version",
    "decision_log_dir",
    "decision_log_rows",
    "decision_log_seconds",
)
"""the model config keys :meth:`CadencePolicyModel.load_context` reads (see the module notes)"""
MODEL_CONFIG: dict[str, Any] = {
    "exploration_epsilon": 0.0,
    "exploration_temperature": None,
    "exploration_seed": None,
    "shadow": False,
    "not_allowed": "fallback",
    "policy_version": None,
    "decision_log_dir": None,
    "decision_log_rows": 100_000,
    "decision_log_seconds": 60.0,
}
"""every key at its default: log the model with ``model_config=MODEL_CONFIG`` so that a loader
may set any of them (MLflow ignores, with a warning, keys the logged model did not have)"""
PIP_REQUIREMENTS = ["numpy", "pandas", "polars", "onnxruntime", "numba", "mlflow"]
"""what the served model needs: log or save it with ``pip_requirements=PIP_REQUIREMENTS`` (else
MLflow infers them by loading the model in a Python process of its own, ~2 s)"""


class CadencePolicyModel(mlflow.pyfunc.PythonModel):
    """Wraps :class:`serve.runtime.PolicyRuntime` loaded from the ``export`` artifact."""

    log: Any = None
    """the decision log (:class:`serve.decisions.DecisionLog`), where the model config names one"""

    def load_context(self, context: Any) -> None:
        given = dict(getattr(context, "model_config", None) or {})
        config = {k: v for k, v in given.items() if v is not None}
        unknown = sorted(set(given) - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; known: {list(CONFIG_KEYS)}")
        temperature = config.get("exploration_temperature")
        exploration = Exploration(
            epsilon=float(config.get("exploration_epsilon", 0.0)),
            temperature=None if temperature is None else float(temperature),
            seed=config.get("exploration_seed"),
        )
        self.runtime = PolicyRuntime.load(
            context.artifacts["export"],
            exploration=exploration,
            shadow=bool(config.get("shadow", False)),
            not_allowed=str(config.get("not_allowed", "fallback")),
            policy_version=config.get("policy_version"),
        )
        if config.get("decision_log_dir"):
            from serve.decisions import ROWS_PER_FILE, SECONDS_PER_FILE, DecisionLog

            self.log = DecisionLog(
                config["decision_log_dir"],
                rows_per_file=int(config.get("decision_log_rows", ROWS_PER_FILE)),
                seconds_per_file=float(config.get("decision_log_seconds", SECONDS_PER_FILE)),
            )
            atexit.register(self.log.close)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        explain = wants_reasons((params or {}).get("explain"), len(model_input))
        try:
            if explain and len(model_input) > EXPLAIN_AT_MOST:
                raise RequestError(
                    f"explain is served for at most {EXPLAIN_AT_MOST:,} rows, got "
                    f"{len(model_input):,}: split the request or leave explain out"
                )
            decisions = self.runtime.decide(model_input, explain=explain)
            if self.log is not None:
                from serve.decisions import DecisionLogError, frame_of

                try:
                    self.log.append(frame_of(decisions))
                except DecisionLogError as error:
                    raise RequestError(str(error)) from error
            return output_frame(decisions)
        except RequestError as error:
            raise MlflowException(str(error), error_code=INVALID_PARAMETER_VALUE) from error

    @staticmethod
    def _predict_frame(
        runtime: PolicyRuntime, model_input: pd.DataFrame, explain: bool = False
    ) -> pd.DataFrame:
        return output_frame(runtime.decide(model_input, explain=explain))


def output_frame(decisions: Decisions) -> pd.DataFrame:
    """The model's answer: one row per decision (see the module notes)."""
    records = pd.DataFrame(decisions.records())
    records["reasons"] = ["; ".join(r) for r in decisions.reasons]
    return records


def signature(runtime: PolicyRuntime, example: pd.DataFrame) -> ModelSignature:
    """The model's signature: the output columns and the ``explain`` param, no input schema
    (the runtime checks every column itself; see the module notes)."""
    outputs = infer_signature(
        example, CadencePolicyModel._predict_frame(runtime, example, explain=True)
    ).outputs
    return ModelSignature(
        inputs=None, outputs=outputs, params=ParamSchema([ParamSpec("explain", "boolean", None)])
    )
