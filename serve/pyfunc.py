"""The export as an MLflow pyfunc model: ``predict`` takes a DataFrame with one column per
feature name and returns one row per client: slot, tone, channel, content, probability,
reasons, needs_review. The model's code travels with it (``code_paths``), and it loads only
the ONNX file and manifest (no pickle of the policy)."""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd

from serve.runtime import PolicyRuntime


class CadencePolicyModel(mlflow.pyfunc.PythonModel):
    """Wraps :class:`serve.runtime.PolicyRuntime` loaded from the ``export`` artifact."""

    def load_context(self, context: Any) -> None:
        self.runtime = PolicyRuntime.load(context.artifacts["export"])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        return self._predict_frame(self.runtime, model_input)

    @staticmethod
    def _predict_frame(runtime: PolicyRuntime, model_input: pd.DataFrame) -> pd.DataFrame:
        decisions = runtime.decide(model_input)
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
