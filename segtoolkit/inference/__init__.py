"""Inference, layer 3: `predictor` (a checkpoint, ONNX or OpenVINO file behind one call, and --half),
`full_size` (how a model sees an image, and its logits and mask back at the image's size: the one rule from
logits to a mask), `tiling` (sliding window), `probabilities`, `pipeline` (prefetch and finisher threads),
`onnx_runtime`, `openvino_runtime`."""
