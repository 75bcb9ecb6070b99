"""Making engines: prepare an ONNX export, check it for float16, calibrate and build a TensorRT engine."""
