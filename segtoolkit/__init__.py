"""segtoolkit: the library behind train.py, detect.py, export.py and val.py (the commands at the repository's
root, with dataset.py's BinaryDataset and Dataset and dataloaders.py's LoadImages and LoadStreams). Reading data:
`imaging` (image files, upright and 8-bit, and the one preprocessing path: letterbox, normalize), `masks`
(what mask values mean), `splits` (split files, --search-files), `augment`. Training: `config` (RunConfig, one
run's settings, and the rules of resume and fine-tune), `models` (the smp factory), `checkpoints` (the
self-describing file format), `training` (precision, run folders), `loading` (DataLoaders and the
loader-failure wrapper), `evaluation` (a model over a split -> metrics dict, each image scored at its own
size), `metrics` (confusion counts, early stopping), `run_logging` (results.csv, plots, previews, wandb),
`distributed` (torchrun). Inference: `predict` (a checkpoint, ONNX or OpenVINO file behind one call, and
--half), `full_size` (how a model sees an image, and its logits and mask back at the image's size: the one
rule from logits to a mask), `tiling` (sliding window), `sources` (what a --source is),
`pipeline` (prefetch and finisher threads), `overlay` (polygons and drawing), `detect_outputs` (results.csv,
images, videos, the window), `onnx_export`, `onnx_runtime`, `openvino_runtime`, `quantize` (int8). Evaluation
without training: `val_outputs` (val.py's run folder, per-class and per-image scores, confusion matrix plot,
masks). Shared:
`errors` (UserError, RunFailure, exit codes) and `cli` (one error handler, one Ctrl-C/SIGTERM helper, help
formatting).
"""
