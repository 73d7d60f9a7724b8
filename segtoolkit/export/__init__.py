"""Export, layer 7: `onnx` (ONNX and OpenVINO files with their checks) and `int8` (quantization)."""
