"""Running ONNX files written by export.py with onnxruntime: the session, tuned for the CPU, and the
checkpoint description stored in the file.

Usage:
    meta, predict = load_onnx("unet.onnx")          # meta: like a checkpoint's
    logits = predict(batch)                         # float32 NCHW in, float32 logits NCHW out
"""

import json
from pathlib import Path

import numpy as np

from segtoolkit.models.checkpoints import CHECKPOINT_FORMAT, MODEL_META_KEYS, with_meta_defaults
from segtoolkit.errors import UserError

META_KEY = CHECKPOINT_FORMAT  # metadata_props key holding the checkpoint meta as JSON
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def providers():
    """CUDA when this onnxruntime build has it, then the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [name for name in ("CUDAExecutionProvider", "CPUExecutionProvider") if name in available]


def session_options(threads=None):
    """CPU-tuned options: every graph optimization, intra-op threads (default: onnxruntime's, one per
    physical core) and no spin-waiting, which on a shared or small CPU burns the cores that decoding,
    drawing and writing need (measured faster on 2 cores, see docs/performance.md)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: not the warnings about unused initializers
    return options


def open_session(path, threads=None):
    """An onnxruntime InferenceSession; a file onnxruntime cannot parse is a UserError naming it."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX model {path}: no such file")
    try:
        return ort.InferenceSession(str(path), session_options(threads), providers=providers())
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own pybind classes for a bad file
        reason = (str(error).splitlines() or [type(error).__name__])[0][:160]
        raise UserError(f"{path} is not an ONNX model onnxruntime can load ({reason}); "
                        f"export one with: python export.py --model CHECKPOINT") from None


def read_meta(session, path):
    """The checkpoint meta stored by export_onnx, checked to hold every key detect.py reads."""
    stored = session.get_modelmeta().custom_metadata_map.get(META_KEY)
    if stored is None:
        raise UserError(f"{path} is an ONNX model but was not written by export.py (no '{META_KEY}' "
                        f"metadata: architecture, normalization, patch size); export it with: "
                        f"python export.py --model CHECKPOINT")
    return check_meta(stored, path)


def check_meta(stored, path):
    """The checkpoint meta from its stored JSON text (ONNX metadata or OpenVINO rt_info), checked to hold every
    key detect.py reads."""
    try:
        meta = json.loads(stored)
    except json.JSONDecodeError:
        meta = None
    missing = [key for key in MODEL_META_KEYS if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise UserError(f"{path}: its '{META_KEY}' metadata is damaged (missing {', '.join(missing)}); "
                        f"export it again with export.py")
    return with_meta_defaults(meta)


def check_input_size(batch, fixed_size, path, meta):
    """A model exported at a fixed size takes only that size: a UserError that says what to do otherwise."""
    if len(fixed_size) == 2 and tuple(batch.shape[2:]) != fixed_size:
        raise UserError(f"{path} accepts only {fixed_size[1]}x{fixed_size[0]} inputs ({meta['architecture']} "
                        f"is exported at a fixed size), got {batch.shape[3]}x{batch.shape[2]}; drop "
                        f"--patch-size or export again with export.py --patch-size {batch.shape[2]}")


def load_onnx(path, threads=None):
    """(meta, predict) for an ONNX file written by export.py.

    meta has the keys of a checkpoint's meta; predict takes a float32 NCHW array and returns float32
    logits NCHW. A static-size model refuses other sizes with a UserError that says what to do.
    """
    session = open_session(path, threads)
    meta = read_meta(session, path)
    input_shape = session.get_inputs()[0].shape  # ints for fixed dimensions, names for dynamic ones
    fixed_size = tuple(dim for dim in input_shape[2:] if isinstance(dim, int))

    def predict(batch):
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        check_input_size(batch, fixed_size, path, meta)
        return session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]

    return meta, predict
