"""Evaluation: metrics, the eval report, engine-vs-ONNX validation and the report's plots."""
