"""Export a train.py checkpoint for detect.py: to ONNX (float32, or int8 calibrated on your images) for
onnxruntime, or to OpenVINO (float32 weights; detect.py --half runs it in bfloat16 on CPUs that have it).

The file carries the checkpoint's self-description (ONNX metadata, OpenVINO rt_info), so `detect.py --model
FILE` needs no other flag; export.py checks it against PyTorch before it finishes: the largest logit
difference on a random input, and with --check-images (or --int8's --calibration images) the masks' IoU,
with a warning below 0.99. Calibration and check inputs are what detect.py feeds the model: each image fitted
to the patch, or for a model trained with --crop, full-resolution tiles of the patch size cut from it.

Usage:
    python export.py --model checkpoints/exp/best-checkpoint.pth.tar     # -> checkpoints/exp/best-checkpoint.onnx
    python export.py --model best.pth.tar --format openvino --check-images data/sample/imgs   # -> best.xml, .bin
    python export.py --model best.pth.tar --output unet.onnx --patch-size 512
    python export.py --model best.pth.tar --int8 --calibration data/sample/imgs   # -> best-int8.onnx, CPU
    python detect.py --model checkpoints/exp/best-checkpoint.onnx --source data/sample/imgs

Exit codes: 0 done, 2 bad input (a one-line error naming the file or flag).
"""

import copy
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from segtoolkit.export import int8 as quantize
from segtoolkit.models.checkpoints import load_checkpoint
from segtoolkit.cli import run_command, setting, settings_from, settings_parser, verbose_setting
from segtoolkit.errors import UserError
from segtoolkit.data.imaging import check_patch_size
from segtoolkit.models.factory import model_from_checkpoint
from segtoolkit.export.onnx import (DEFAULT_OPSET, STATIC_SIZE_ARCHITECTURES, check_opset, check_output,
                                    check_simplifier, default_output, export_onnx, max_difference, simplify)
from segtoolkit.inference.full_size import FullSizePredictor
from segtoolkit.inference.onnx_runtime import INPUT_NAME, load_onnx
from segtoolkit.inference.predictor import TorchPredictor, cpu_summary, native_bfloat16

SUFFIXES = {"onnx": ".onnx", "openvino": ".xml"}


@dataclass
class Check:
    """How the written file compares with PyTorch float32: the largest logit difference on a random input
    (float32 files), the (lowest, mean) mask IoU on `images` and, on a CPU with native bfloat16, the same for
    the file with --half (OpenVINO) and for the checkpoint itself with detect.py --half (PyTorch bfloat16)."""
    difference: float | None = None
    agreement: tuple | None = None
    half_agreement: tuple | None = None
    torch_half_agreement: tuple | None = None
    images: str = ""


@dataclass(frozen=True, kw_only=True)
class ExportSettings:
    """export.py's flags: each field is the flag --field-name, its default and help written once, here."""
    model: Path = setting(group="Model", help="checkpoint written by train.py (.pth.tar)")
    patch_size: int | None = setting(None, group="Model", help="traced input size and the size stored for detect.py "
                                     "(default: the checkpoint's)")
    format: str = setting("onnx", group="Output", choices=tuple(SUFFIXES), help="onnx (onnxruntime) or openvino (an "
                          ".xml and its .bin, converted from the ONNX export by OpenVINO)")
    output: str | None = setting(None, group="Output", help="file to write, ending in .onnx (.xml for openvino) "
                                 "(default: next to the checkpoint, same stem)")
    opset: int = setting(DEFAULT_OPSET, group="Output", help="ONNX opset version, 17 or higher")
    simplify: bool = setting(False, group="Output", help="run onnx-simplifier on the file (if installed)")
    check_images: str | None = setting(
        None, group="Check", help="images (a folder, glob or .txt list; at most 32, spread evenly) to compare the "
        "file's masks with PyTorch's on (default: --int8's calibration images, else none: the logit difference on a "
        "random input only)")
    int8: bool = setting(False, group="int8 (CPU)", help="write an int8 ONNX model calibrated on --calibration "
                         "(default file: STEM-int8.onnx)")
    calibration: str | None = setting(None, group="int8 (CPU)", help="images for the int8 ranges: a folder, glob or "
                                      ".txt list (the training images)")
    calibration_count: int | None = setting(
        None, group="int8 (CPU)", help="use at most this many of them, spread evenly (default: 32); for a model "
        "trained with --crop, as many full-resolution tiles, spread over them")
    verbose: bool = verbose_setting()


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def build_parser():
    return settings_parser(ExportSettings, __doc__)  # the flags are ExportSettings' fields


def check_flags(settings):
    """The flags, checked before the checkpoint is read."""
    check_opset(settings.opset)
    if settings.int8 and settings.format != "onnx":
        raise UserError("--int8 writes an int8 ONNX file; drop --format openvino (OpenVINO runs the float32 "
                        "export, with --half where the CPU has bfloat16)")
    if settings.output is not None:
        check_output(settings.output, SUFFIXES[settings.format])
    if settings.patch_size is not None:  # 0 too: it must not fall back to the checkpoint's size unnoticed
        check_patch_size(settings.patch_size)
    if settings.simplify:
        check_simplifier()
    if settings.int8 != (settings.calibration is not None):
        raise UserError("--int8 needs --calibration IMAGES (a folder, glob or .txt list of training images, "
                        "for example data/sample/imgs)" if settings.int8 else "--calibration is only used with --int8")


def run(**flags):
    """export.py as a function: `flags` are ExportSettings' fields (model required). Returns
    export(ExportSettings(**flags))."""
    return export(ExportSettings(**flags))


def export(settings):
    """Export the checkpoint settings.model as settings.format ("onnx" or "openvino") and check the file against
    PyTorch. Returns (path, meta, Check)."""
    check_flags(settings)
    model, file_format, int8, check_images = settings.model, settings.format, settings.int8, settings.check_images
    count = quantize.DEFAULT_COUNT if settings.calibration_count is None else settings.calibration_count
    calibration = quantize.calibration_images(settings.calibration, count) if int8 else None
    checked = quantize.calibration_images(check_images, flag="--check-images") if check_images else calibration
    checkpoint = load_checkpoint(model)
    torch_model = model_from_checkpoint(checkpoint, model)
    output = Path(settings.output) if settings.output else default_output(model, "-int8" if int8 else "",
                                                                          SUFFIXES[file_format])
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".export-") as work:
        onnx_path = output if file_format == "onnx" and not int8 else Path(work) / "float32.onnx"
        meta = export_onnx(torch_model, checkpoint["meta"], onnx_path, settings.patch_size, settings.opset)
        if settings.simplify:
            simplify(onnx_path)
        if int8:
            quantize.quantize_int8(onnx_path, output, quantize.preprocessed(calibration, meta, count), INPUT_NAME)
        elif file_format == "openvino":
            from segtoolkit.inference.openvino_runtime import convert_onnx  # only OpenVINO exports need openvino
            convert_onnx(onnx_path, output, meta)
    tiles = "tiles of " if FullSizePredictor.sees_tiles(meta) else ""  # what detect.py feeds a crop-trained model
    what = f"{tiles}{len(checked or [])} images ({'--check-images' if check_images else 'the calibration images'})"
    return output, meta, check_file(torch_model, output, meta, file_format, int8, checked, what)


def check_file(torch_model, path, meta, file_format, int8, images, what):
    """The file against PyTorch float32 (see Check)."""
    predict = load_file(path, file_format)
    check = Check(images=what)
    if not int8:
        check.difference = max_difference(torch_model, predict, meta, meta["patch_size"])
    if images:
        batches = quantize.preprocessed(images, meta)
        check.agreement = quantize.mask_agreement(torch_model, predict, batches)
        if file_format == "openvino" and native_bfloat16():  # what detect.py --half will run on this CPU
            check.half_agreement = quantize.mask_agreement(torch_model, load_file(path, file_format, "bf16"), batches)
        if native_bfloat16() and not int8:  # detect.py --half on the checkpoint itself (not what --int8 asks)
            check.torch_half_agreement = quantize.mask_agreement(torch_model, torch_half(torch_model), batches)
    return check


def torch_half(torch_model):
    """The predict function of detect.py --half on the checkpoint on a bfloat16 CPU, NumPy in and out (a copy
    of the model is cast: the float32 one stays the reference)."""
    half = TorchPredictor(copy.deepcopy(torch_model), torch.device("cpu"), torch.bfloat16)
    return lambda batch: half(torch.from_numpy(batch)).numpy()


def load_file(path, file_format, precision="f32"):
    """The predict function of a written file (precision: OpenVINO's inference precision hint)."""
    if file_format == "onnx":
        return load_onnx(path)[1]
    from segtoolkit.inference.openvino_runtime import load_openvino  # only OpenVINO exports need openvino

    return load_openvino(path, precision)[1]


def describe_check(check, file_format, int8):
    """(summary text, warnings) for the file's Check; a warning for each IoU below quantize.MIN_AGREEMENT."""
    parts, warnings = [], []
    if check.difference is not None:
        parts.append(f"largest logit difference from PyTorch {check.difference:.2e}")
    runtime = "OpenVINO" if file_format == "openvino" else "ONNX"
    runs = [("int8" if int8 else f"{runtime} float32", check.agreement),
            (f"{runtime} --half (bfloat16)", check.half_agreement),
            ("the checkpoint with --half (PyTorch bfloat16)", check.torch_half_agreement)]
    for name, agreement in runs:
        if agreement is None:
            continue
        lowest, mean = agreement
        text = f"{name} masks against PyTorch's on {check.images}: IoU {mean:.4f} mean, {lowest:.4f} lowest"
        parts.append(text)
        if lowest < quantize.MIN_AGREEMENT:
            fix = "use the float32 export (without --int8) or calibrate on more images" if name == "int8" else \
                "run detect.py on it without --half where masks must match float32's" if "checkpoint" in name else \
                "compare detect.py's masks from the checkpoint and from this file before relying on it"
            warnings.append(f"warning: {name} changes the masks more than expected ({text}); {fix}")
    if file_format == "openvino" and check.agreement is not None and check.half_agreement is None:
        parts.append(f"--half runs float32 on this CPU ({cpu_summary()})")
    return "; ".join(parts), warnings


def export_from_args(args):
    """export() with the command line's settings, then its one-paragraph summary; returns the exit code."""
    path, meta, check = export(settings_from(ExportSettings, args))
    size = "any size (multiple of 32)" if meta["architecture"] not in STATIC_SIZE_ARCHITECTURES else \
        f"{meta['patch_size']}x{meta['patch_size']} only"
    summary, warnings = describe_check(check, args.format, args.int8)
    for warning in warnings:
        print(warning, file=sys.stderr)
    written = [path, path.with_suffix(".bin")] if args.format == "openvino" else [path]
    files = " and ".join(str(file) if file == path else file.name for file in written)
    megabytes = sum(file.stat().st_size for file in written) / 1e6
    kind = "OpenVINO, float32 weights, " if args.format == "openvino" else "int8, " if args.int8 else ""
    print(f"exported {meta['architecture']}/{meta['encoder']} to {files} ({megabytes:.1f} MB, opset {args.opset}, "
          f"{kind}dynamic batch, {size}); {summary}\n"
          f"run it with: python detect.py --model {path} --source IMAGE_OR_VIDEO")
    return 0


def main(args):
    """export.py with parsed arguments; returns the exit code (an error is one line: segtoolkit.cli)."""
    return run_command(export_from_args, args)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
