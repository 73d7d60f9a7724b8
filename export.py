"""Export a train.py checkpoint to ONNX (float32, or int8 calibrated on your images) for detect.py and
onnxruntime.

The file carries the checkpoint's self-description in its metadata, so `detect.py --model model.onnx`
needs no other flag; export.py checks it against PyTorch before it finishes.

Usage:
    python export.py --model checkpoints/exp/best-checkpoint.pth.tar     # -> checkpoints/exp/best-checkpoint.onnx
    python export.py --model best.pth.tar --output unet.onnx --patch-size 512
    python export.py --model best.pth.tar --int8 --calibration data/sample/imgs   # -> best-int8.onnx, CPU
    python detect.py --model checkpoints/exp/best-checkpoint.onnx --source data/sample/imgs

Exit codes: 0 done, 2 bad input (a one-line error naming the file or flag).
"""

import argparse
import sys
import tempfile
from pathlib import Path

from segtoolkit import quantize
from segtoolkit.checkpoints import load_checkpoint
from segtoolkit.cli import HelpFormatter, run_command
from segtoolkit.errors import UserError
from segtoolkit.imaging import check_patch_size
from segtoolkit.models import model_from_checkpoint
from segtoolkit.onnx_export import (DEFAULT_OPSET, STATIC_SIZE_ARCHITECTURES, check_opset, check_output,
                                    check_simplifier, default_output, export_onnx, max_difference, simplify)
from segtoolkit.onnx_runtime import INPUT_NAME, load_onnx


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    model = parser.add_argument_group("Model")
    model.add_argument("--model", type=Path, required=True, help="checkpoint written by train.py (.pth.tar)")
    model.add_argument("--patch-size", type=int, default=None,
                       help="traced input size and the size stored for detect.py (default: the checkpoint's)")
    output = parser.add_argument_group("Output")
    output.add_argument("--output", default=None,
                        help="ONNX file to write, ending in .onnx (default: next to the checkpoint, same stem)")
    output.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version, 17 or higher")
    output.add_argument("--simplify", action="store_true", help="run onnx-simplifier on the file (if installed)")
    quantization = parser.add_argument_group("int8 (CPU)")
    quantization.add_argument("--int8", action="store_true",
                              help="write an int8 model calibrated on --calibration (default file: STEM-int8.onnx)")
    quantization.add_argument("--calibration", default=None,
                              help="images for the int8 ranges: a folder, glob or .txt list (the training images)")
    quantization.add_argument("--calibration-count", type=int, default=None,
                              help="use at most this many of them, spread evenly (default: 32)")
    runtime = parser.add_argument_group("Runtime")
    runtime.add_argument("--verbose", action="store_true",
                         help="full tracebacks for errors, and Python warnings with their source line")
    return parser.parse_args(argv)


def run(*, model, output=None, patch_size=None, opset=DEFAULT_OPSET, simplify_graph=False, int8=False,
        calibration=None, calibration_count=None):
    """Export the checkpoint `model` and check the file against PyTorch.

    Returns (path, meta, check): check is the largest logit difference for a float32 file, and the
    (smallest, mean) mask IoU on the calibration images for an int8 one.
    """
    check_opset(opset)
    if output is not None:
        check_output(output)
    if patch_size is not None:  # 0 too: it must not fall back to the checkpoint's size unnoticed
        check_patch_size(patch_size)
    if simplify_graph:
        check_simplifier()
    if int8 != (calibration is not None):
        raise UserError("--int8 needs --calibration IMAGES (a folder, glob or .txt list of training images, "
                        "for example data/sample/imgs)" if int8 else "--calibration is only used with --int8")
    checkpoint = load_checkpoint(model)
    torch_model = model_from_checkpoint(checkpoint, model)
    output = Path(output) if output else default_output(model, "-int8" if int8 else "")
    if not int8:
        meta = export_onnx(torch_model, checkpoint["meta"], output, patch_size, opset)
        if simplify_graph:
            simplify(output)
        _, predict = load_onnx(output)
        return output, meta, max_difference(torch_model, predict, meta, meta["patch_size"])

    count = quantize.DEFAULT_COUNT if calibration_count is None else calibration_count
    images = quantize.calibration_images(calibration, count)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".export-") as work:
        float_path = Path(work) / "float32.onnx"
        meta = export_onnx(torch_model, checkpoint["meta"], float_path, patch_size, opset)
        if simplify_graph:
            simplify(float_path)
        batches = quantize.preprocessed(images, meta)
        quantize.quantize_int8(float_path, output, batches, INPUT_NAME)
    _, predict = load_onnx(output)
    return output, meta, quantize.mask_agreement(torch_model, predict, batches)


def export_from_args(args):
    """run() with the command line's arguments, then its one-paragraph summary; returns the exit code."""
    path, meta, check = run(model=args.model, output=args.output, patch_size=args.patch_size, opset=args.opset,
                            simplify_graph=args.simplify, int8=args.int8, calibration=args.calibration,
                            calibration_count=args.calibration_count)
    size = "any size (multiple of 32)" if meta["architecture"] not in STATIC_SIZE_ARCHITECTURES else \
        f"{meta['patch_size']}x{meta['patch_size']} only"
    if args.int8:
        lowest, mean = check
        agreement = f"masks against PyTorch's on the calibration images: IoU {mean:.4f} mean, {lowest:.4f} lowest"
        if lowest < quantize.MIN_AGREEMENT:
            print(f"warning: int8 changes the masks more than expected ({agreement}); use the float32 export "
                  f"(without --int8) or calibrate on more images", file=sys.stderr)
    else:
        agreement = f"largest logit difference from PyTorch {check:.2e}"
    print(f"exported {meta['architecture']}/{meta['encoder']} to {path} ({path.stat().st_size / 1e6:.1f} MB, "
          f"opset {args.opset}, {'int8, ' if args.int8 else ''}dynamic batch, {size}); {agreement}\n"
          f"run it with: python detect.py --model {path} --source IMAGE_OR_VIDEO")
    return 0


def main(args):
    """export.py with parsed arguments; returns the exit code (an error is one line: segtoolkit.cli)."""
    return run_command(export_from_args, args)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
