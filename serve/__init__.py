"""Serving: export to ONNX + manifest (``serve.onnx_export``), the guarded runtime (``serve.runtime``,
numpy, onnxruntime and numba only) and the MLflow pyfunc wrapper (``serve.pyfunc``)."""
