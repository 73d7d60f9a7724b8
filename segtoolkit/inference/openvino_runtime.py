"""Running OpenVINO models written by export.py --format openvino: the compiled model, tuned for one frame at
a time, and the checkpoint description stored in the model's rt_info (under onnx_runtime.META_KEY, the key
the ONNX file uses).

Usage:
    meta, predict = load_openvino("best-checkpoint.xml")                    # float32 inference
    meta, predict = load_openvino("best-checkpoint.xml", precision="bf16")  # --half on a bfloat16 CPU
    logits = predict(batch)                         # float32 NCHW in, float32 logits NCHW out
"""

import json
from pathlib import Path

import numpy as np

from segtoolkit.errors import UserError
from segtoolkit.inference.onnx_runtime import META_KEY, check_input_size, check_meta

EXPORT_HINT = "export one with: python export.py --model CHECKPOINT --format openvino"


def convert_onnx(onnx_path, output, meta):
    """Write the OpenVINO model (output: .xml, with its .bin beside it) converted by OpenVINO's own converter
    from the ONNX file `onnx_path`, with `meta` (the checkpoint description) in its rt_info."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    model.set_rt_info(json.dumps(meta), META_KEY)
    # float32 weights as exported: save_model's default FP16 compression would move the logits away from
    # PyTorch's, and --half chooses the inference precision at load time instead
    ov.save_model(model, str(output), compress_to_fp16=False)


def read_model(path):
    """The ov.Model of an .xml file; a missing .bin or a file OpenVINO cannot parse is a UserError naming it."""
    import openvino as ov

    path = Path(path)
    if not path.is_file():
        raise UserError(f"OpenVINO model {path}: no such file")
    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise UserError(f"OpenVINO model {path}: its weights {weights.name} are not beside it; an OpenVINO model "
                        f"is the .xml and the .bin export.py wrote, keep (or copy) them together")
    try:
        return ov.Core().read_model(str(path), str(weights))
    except Exception as error:  # noqa: BLE001 - OpenVINO raises a plain RuntimeError with a multi-line report
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise UserError(f"{path} is not an OpenVINO model OpenVINO can load ({reason[:160]}); {EXPORT_HINT}") from None


def read_meta(model, path):
    """The checkpoint meta stored by convert_onnx, checked to hold every key detect.py reads."""
    if not model.has_rt_info(META_KEY):
        raise UserError(f"{path} is an OpenVINO model but was not written by export.py (no '{META_KEY}' "
                        f"rt_info: architecture, normalization, patch size); {EXPORT_HINT}")
    return check_meta(model.get_rt_info(META_KEY).astype(str), path)


def compile_options(precision):
    """OpenVINO CPU settings for detect.py: one frame at a time (latency), and the inference precision set
    explicitly: on CPUs with AVX-512 BF16 or AMX the CPU plugin would otherwise run bfloat16 unasked, and
    float32 must mean float32 (the masks export.py checked)."""
    return {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}


def load_openvino(path, precision="f32", device="CPU"):
    """(meta, predict) for an OpenVINO model written by export.py.

    precision is OpenVINO's inference precision hint: "f32", "bf16" (CPUs with native bfloat16) or "f16"
    (GPU plugins). predict takes a float32 NCHW array and returns float32 logits NCHW, whatever the precision
    inside. A static-size model refuses other sizes with a UserError that says what to do.
    """
    import openvino as ov

    model = read_model(path)
    meta = read_meta(model, path)
    fixed_size = tuple(dim.get_length() for dim in model.input(0).get_partial_shape()[2:] if dim.is_static)
    compiled = ov.Core().compile_model(model, device, compile_options(precision))
    request = compiled.create_infer_request()

    def predict(batch):
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        check_input_size(batch, fixed_size, path, meta)
        request.infer({0: batch})
        # the request overwrites its output buffer on the next call: hand out a copy, as onnxruntime does
        return np.array(request.get_output_tensor(0).data, dtype=np.float32)

    return meta, predict
