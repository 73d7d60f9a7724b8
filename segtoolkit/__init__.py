"""segtoolkit: the library behind the commands at the repository's root (train.py, detect.py, val.py, export.py,
with dataset.py's BinaryDataset and Dataset and dataloaders.py's LoadImages and LoadStreams).

Layers, each importing only the ones before it (tests/test_packaging.py holds it):
    0  errors (UserError, RunFailure, exit codes), cli (error handler, Ctrl-C, flags from settings dataclasses),
       distributed (torchrun)
    1  data        images, masks, classes, splits, sources, COCO, the cache, augmentation, loaders
    2  models      the smp factory, checkpoints
    3  inference   predictor, full_size (the one image-to-model fit), tiling, pipeline, runtimes
    4  evaluation  metrics, scoring
    5  outputs     run folders and files, overlay, detect.py's and val.py's outputs
    6  training    RunConfig, losses, precision, the run log
    7  export      ONNX, OpenVINO, int8
"""
