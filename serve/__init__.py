"""Serving: export to ONNX + manifest (``serve.onnx_export``), the guarded runtime (``serve.runtime``,
numpy + onnxruntime only) and the MLflow pyfunc wrapper (``serve.pyfunc``)."""
