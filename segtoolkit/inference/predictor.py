"""A trained model behind one call, whatever its file: a train.py checkpoint (PyTorch), an export.py ONNX file
(onnxruntime) or an export.py OpenVINO model (.xml), in float32 or, with --half, the half precision the
hardware runs natively. detect.py and val.py use it the same way.

Usage:
    meta, predictor = load_predictor("checkpoints/exp/best-checkpoint.pth.tar", torch.device("cpu"))
    meta, predictor = load_predictor("checkpoints/exp/best-checkpoint.xml", torch.device("cpu"), half=True)
    logits = predictor(batch)                       # float32 NCHW in, float32 logits NCHW out, on the CPU
    mask = FullSizePredictor.from_meta(predictor, meta).mask(rgb)   # inference.full_size: at the image's size

--half: float16 on CUDA; bfloat16 on a CPU with native bfloat16 (AVX-512 BF16 or AMX); on any other CPU one
warning line and float32, because bfloat16 emulated there is slower than float32 (docs/performance.md, per CPU).
"""

import platform
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from segtoolkit.models.checkpoints import load_checkpoint
from segtoolkit.errors import UserError, file_problem
from segtoolkit.models.factory import model_from_checkpoint

BFLOAT16_FLAGS = {"avx512_bf16": "AVX-512 BF16", "amx_bf16": "AMX"}  # /proc/cpuinfo flag -> name


class TorchPredictor:
    """Checkpoint from train.py: float32 NCHW batch in, float32 logits NCHW out (on the CPU). With dtype
    bfloat16 or float16 the weights are cast once and each batch on the way in, rather than autocast, which
    casts every layer's weights again each frame (docs/performance.md)."""

    def __init__(self, model, device, dtype=torch.float32):
        self.model, self.device, self.dtype = model.to(device=device, dtype=dtype).eval(), device, dtype

    def __call__(self, batch):
        with torch.inference_mode():
            return self.model(batch.to(self.device, self.dtype)).float().cpu()


class ArrayPredictor:
    """ONNX or OpenVINO model from export.py: the same call as TorchPredictor, run by a runtime's NumPy predict
    function (onnx_runtime.load_onnx, openvino_runtime.load_openvino)."""

    def __init__(self, predict):
        self.predict = predict

    def __call__(self, batch):
        return torch.from_numpy(np.asarray(self.predict(batch.numpy().astype(np.float32)), dtype=np.float32))


def load_predictor(model_path, device, half=False, cpu_bfloat16=None):
    """(meta, predictor) for a .pth.tar checkpoint, an .onnx file or an OpenVINO .xml, chosen by the suffix.

    half: run in the hardware's native half precision (see the module docstring); cpu_bfloat16 overrides
    whether this CPU counts as having native bfloat16 (None: read it from the CPU; tests force the bfloat16
    path with True on CPUs without it).
    """
    path = Path(model_path)
    suffix = path.suffix.lower()
    if suffix in (".onnx", ".xml") and not path.is_file():
        raise UserError(f"--model {path}: {file_problem(path)}")
    if suffix == ".onnx":
        from segtoolkit.inference.onnx_runtime import load_onnx  # only ONNX runs need onnxruntime
        if half:
            warnings.warn(f"--half: onnxruntime runs {path.name} in float32 (it has no half precision for a float32 "
                          f"file); for half precision give the .pth.tar checkpoint or an OpenVINO export (.xml)",
                          stacklevel=2)
        meta, predict = load_onnx(path)
        return dict(meta), ArrayPredictor(predict)
    if suffix == ".xml":
        from segtoolkit.inference.openvino_runtime import load_openvino  # only OpenVINO runs need openvino
        precision = {torch.bfloat16: "bf16", torch.float32: "f32"}[half_dtype(torch.device("cpu"), half, cpu_bfloat16)]
        meta, predict = load_openvino(path, precision)
        return dict(meta), ArrayPredictor(predict)
    if suffix == ".bin" and path.with_suffix(".xml").is_file():
        raise UserError(f"--model {path} is the weights of an OpenVINO model; give {path.with_suffix('.xml')}")
    checkpoint = load_checkpoint(path)
    model = model_from_checkpoint(checkpoint, path)
    return dict(checkpoint["meta"]), TorchPredictor(model, device, half_dtype(device, half, cpu_bfloat16))


def half_dtype(device, half, cpu_bfloat16=None):
    """The dtype a model runs in on `device`: float32 without --half; with it float16 on CUDA, bfloat16 on a
    CPU with native bfloat16 (cpu_bfloat16: None to read it from the CPU), else float32 and one warning."""
    if not half:
        return torch.float32
    if device.type == "cuda":
        return torch.float16
    if cpu_bfloat16 is None:
        cpu_bfloat16 = bool(native_bfloat16())
    if cpu_bfloat16:
        return torch.bfloat16
    warnings.warn(f"--half: this CPU has no native bfloat16 ({cpu_summary()}); running float32", stacklevel=2)
    return torch.float32


def cpu_flags(cpuinfo=Path("/proc/cpuinfo")):
    """(model name, set of feature flags) of this CPU, from Linux's /proc/cpuinfo; elsewhere the platform's
    processor name and no flags (native_bfloat16 then asks torch)."""
    text = cpuinfo.read_text() if cpuinfo.is_file() else ""
    name = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    return (name.group(1).strip() if name else platform.processor() or platform.machine(),
            set(flags.group(1).split()) if flags else set())


def native_bfloat16(cpuinfo=Path("/proc/cpuinfo")):
    """Names of this CPU's native bfloat16 extensions (AVX-512 BF16, AMX); empty when it has none."""
    _, flags = cpu_flags(cpuinfo)
    if not flags:  # no /proc/cpuinfo: torch's own CPU checks (private, so looked up with a default)
        flags = {flag for flag, check in (("avx512_bf16", "_is_avx512_bf16_supported"),
                                          ("amx_bf16", "_is_amx_tile_supported"))
                 if getattr(torch.cpu, check, lambda: False)()}
    return [label for flag, label in BFLOAT16_FLAGS.items() if flag in flags]


def cpu_summary(cpuinfo=Path("/proc/cpuinfo")):
    """'AMD EPYC: AVX2, no AVX-512 BF16 or AMX': a CPU without native bfloat16 and the widest vector extension
    it has, for the --half warning."""
    name, flags = cpu_flags(cpuinfo)
    widest = next((label for flag, label in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"))
                   if flag in flags), "no AVX")
    return f"{name}: {widest}, no AVX-512 BF16 or AMX"


def check_model_flags(meta, classes, encoder, model_path):
    """--classes and --encoder come from the checkpoint; given in conflict with it, they are an error."""
    if classes is not None and classes != meta["classes"]:
        raise UserError(f"--classes {classes} conflicts with {model_path}, which was trained with "
                        f"{meta['classes']} class(es); drop --classes (it is read from the checkpoint)")
    if encoder is not None and encoder != meta["encoder"]:
        raise UserError(f"--encoder {encoder} conflicts with {model_path}, which uses encoder "
                        f"{meta['encoder']}; drop --encoder (it is read from the checkpoint)")
