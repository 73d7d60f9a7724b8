"""int8 ONNX models for the CPU: static quantization calibrated on the user's own images.

export.py --int8 --calibration IMAGES calls this after the float32 export. Weights become int8 per
channel, activations uint8 with ranges measured on the calibration images (QDQ format), which
onnxruntime runs with integer kernels. The calibration and check inputs are what detect.py feeds the model,
by the same fit (FullSizePredictor.inputs): whole images fitted to the patch, or for a model trained with
--crop, full-resolution tiles of them.
Whether that is faster depends on the CPU's integer instructions
(docs/performance.md gives the figures per CPU). The masks move a little; export.py reports how much
against PyTorch's on the calibration images, and warns below MIN_AGREEMENT.

Usage:
    python export.py --model best.pth.tar --int8 --calibration data/sample/imgs   # -> best-int8.onnx
    from segtoolkit.export.int8 import calibration_images, quantize_int8, mask_agreement
"""

import tempfile
from pathlib import Path

import numpy as np
import torch

from segtoolkit.data.imaging import IMAGE_SUFFIXES, read_image
from segtoolkit.data.sources import resolve_sources
from segtoolkit.errors import UserError
from segtoolkit.inference.full_size import FullSizePredictor, to_labels

DEFAULT_COUNT = 32  # calibration images: ranges settle with a few dozen; more only makes export slower
MIN_AGREEMENT = 0.99  # smallest mask IoU against PyTorch below which export.py warns


def calibration_images(source, count=DEFAULT_COUNT, flag="--calibration"):
    """Up to `count` image paths from a folder, glob or .txt list, spread evenly over it (`flag`: the option
    that gave them, for the error messages: --calibration or --check-images)."""
    images_wanted = ("give images (a folder, glob or .txt list of the training images, for example "
                     "data/sample/imgs)")
    if not Path(source).exists() and not any(char in str(source) for char in "*?[") and "://" not in str(source):
        # resolve_sources' message would offer detect.py's other sources: a stream URL or a webcam
        raise UserError(f"{flag} {source}: no such file or folder; {images_wanted}")
    try:
        files, streams = resolve_sources(source)
    except UserError as error:  # the same checks as detect.py --source, named after this flag
        raise UserError(str(error).replace("--source", flag, 1)) from None
    images = [path for path in files if Path(path).suffix.lower() in IMAGE_SUFFIXES]
    if streams or not images:
        raise UserError(f"{flag} {source}: {images_wanted}, not videos or streams")
    if count < 1:
        raise UserError(f"--calibration-count {count} must be at least 1")
    step = len(images) / min(count, len(images))
    return [images[int(i * step)] for i in range(min(count, len(images)))]


def preprocessed(paths, meta, count=DEFAULT_COUNT):
    """The float32 1xCxPxP arrays detect.py would feed the model for these images, by the model's own fit
    (segtoolkit.inference.full_size.FullSizePredictor.inputs): each image fitted into the patch (letterboxed, or
    stretched for a stretch-trained model); for a model trained on crops (meta input_mode 'tile'), tiles of the
    patch size cut from the image at full resolution (times the model's scale), as detect.py's sliding window
    cuts them, without overlap, so no two share pixels. Tiles are spread evenly over each image,
    count // len(paths) of them (at least one): calibration keeps every input's activations until it ends, so
    the inputs stay as many as images would."""
    fit = FullSizePredictor.from_meta(None, meta, overlap=0)
    per_image = max(1, count // max(1, len(paths))) if fit.tiled else None
    return [tensor[None].numpy() for path in paths
            for tensor in fit.inputs(read_image(path, meta.get("bit_depth")), per_image)]


def quantize_int8(float_path, output, batches, input_name):
    """Write an int8 QDQ copy of the ONNX file `float_path` to `output`, calibrated on `batches`;
    the float file's metadata (the checkpoint's description) is carried over."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.remaining = iter(batches)

        def get_next(self):
            batch = next(self.remaining, None)
            return None if batch is None else {input_name: batch}

    with tempfile.TemporaryDirectory(dir=Path(output).parent, prefix=".quantize-") as work:
        prepared = Path(work) / "prepared.onnx"
        # the symbolic shape pass fails on dynamic height and width; the ONNX one is enough here
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared), load_external_data=False).graph
        outputs = {output.name for output in graph.output}
        # the layer that writes the logits stays float32: 8 bits over the logits' whole range would move
        # the threshold at 0 by up to half a step, and flip every pixel the model is unsure about
        head = [node.name for node in graph.node if set(node.output) & outputs]
        # uint8 activations with int8 weights: the integer kernels onnxruntime has for x86 (int8 x int8
        # ran no faster than float32 here). Weights use 7 bits (reduce_range): on x86 CPUs without VNNI the
        # u8 x s8 kernel adds products in pairs into int16, which saturates with full-range weights, and
        # the file may run on such a CPU whatever CPU exports it. On an AVX2 one (AMD EPYC, Zen 1),
        # docs/performance.md: command 1's model then agreed 0.9932 at worst on the 48 sample images not
        # calibrated on, instead of 0.9817 (mean 0.9972 instead of 0.9964).
        quantize_static(str(prepared), str(Path(work) / "int8.onnx"), Batches(), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=head)
        proto = onnx.load(str(Path(work) / "int8.onnx"))
        source = onnx.load(str(float_path), load_external_data=False)
        del proto.metadata_props[:]
        proto.metadata_props.extend(source.metadata_props)
        proto.doc_string = source.doc_string + ", int8 (calibrated QDQ)"
        onnx.save(proto, str(output))


def mask_agreement(model, predict, batches):
    """(smallest, mean) IoU of `predict`'s masks (an int8, float32 ONNX or OpenVINO file's) against PyTorch
    float32's over `batches`, both decided by the one rule (full_size.to_labels): one class, the foreground's
    IoU; several, the mean IoU over the classes present in either mask."""
    scores = []
    for batch in batches:
        with torch.inference_mode():
            logits = model.eval()(torch.from_numpy(batch)).float()
        expected = to_labels(logits)[0].numpy()
        got = to_labels(torch.from_numpy(np.asarray(predict(batch), np.float32)))[0].numpy()
        present = [1] if logits.shape[1] == 1 else np.union1d(np.unique(expected), np.unique(got))
        scores.append(float(np.mean([iou(expected == label, got == label) for label in present])))
    return float(min(scores)), float(np.mean(scores))


def iou(expected, got):
    """Intersection over union of two bool masks; 1.0 when both are empty."""
    union = np.logical_or(expected, got).sum()
    return 1.0 if union == 0 else float(np.logical_and(expected, got).sum() / union)
