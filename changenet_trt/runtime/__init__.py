"""Runners: one small interface (activate / submit / fetch / deactivate) over ONNX Runtime and TensorRT."""
