"""The export as an MLflow pyfunc model: ``predict`` takes a DataFrame with one column per
feature name (integer, float32 or float64 columns) and returns one row per client: slot, tone,
channel, content, probability, reasons, needs_review. The model's code travels with it
(``code_paths``), and it loads only the ONNX file and manifest (no pickle of the policy).

Params: ``explain``: true or false; left out, reasons are written for requests of up to
:data:`serve.runtime.EXPLAIN_UP_TO` rows and skipped for larger batches (they cost one extra network pass per
feature group); ``explain: true`` for more than :data:`serve.runtime.EXPLAIN_AT_MOST` rows is
refused. The model has no input schema on purpose: MLflow would drop
unknown columns and refuse float64 before the runtime could name them; the runtime checks
every column itself. A refused request is an MLflow ``INVALID_PARAMETER_VALUE`` error (HTTP
400) whose message names the feature and row.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ParamSchema, ParamSpec

from serve.runtime import EXPLAIN_AT_MOST, PolicyRuntime, RequestError, wants_reasons


class CadencePolicyModel(mlflow.pyfunc.PythonModel):
    """Wraps :class:`serve.runtime.PolicyRuntime` loaded from the ``export`` artifact."""

    def load_context(self, context: Any) -> None:
        self.runtime = PolicyRuntime.load(context.artifacts["export"])

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
            return self._predict_frame(self.runtime, model_input, explain)
        except RequestError as error:
            raise MlflowException(str(error), error_code=INVALID_PARAMETER_VALUE) from error

    @staticmethod
    def _predict_frame(
        runtime: PolicyRuntime, model_input: pd.DataFrame, explain: bool = False
    ) -> pd.DataFrame:
        decisions = runtime.decide(model_input, explain=explain)
        return pd.DataFrame(
            {
                "slot": decisions.slot,
                "tone": decisions.tone,
                "channel": decisions.channel,
                "content": decisions.content,
                "probability": decisions.probability.astype(float),
                "reasons": ["; ".join(r) for r in decisions.reasons],
                "needs_review": decisions.needs_review.astype(bool),
            }
        )


def signature(runtime: PolicyRuntime, example: pd.DataFrame) -> ModelSignature:
    """The model's signature: the output columns and the ``explain`` param, no input schema
    (the runtime checks every column itself; see the module notes)."""
    outputs = infer_signature(
        example, CadencePolicyModel._predict_frame(runtime, example, explain=True)
    ).outputs
    return ModelSignature(
        inputs=None, outputs=outputs, params=ParamSchema([ParamSpec("explain", "boolean", None)])
    )
