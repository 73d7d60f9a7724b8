"""Export a train.py checkpoint to ONNX, and run ONNX files with onnxruntime.

The ONNX file carries the checkpoint's self-description (architecture, encoder, classes, normalization,
patch size, class names) in its metadata, so `detect.py --model model.onnx` needs no other flag.
The batch dimension is always dynamic; height and width are dynamic too, except for architectures whose
pooling or position embeddings fix the input size (see STATIC_SIZE_ARCHITECTURES).

Usage:
    python export.py --model checkpoints/exp/best-checkpoint.pth.tar     # -> checkpoints/exp/best-checkpoint.onnx
    python export.py --model best.pth.tar --output unet.onnx --patch-size 512
    python export.py --model best.pth.tar --int8 --calibration data/sample/imgs   # -> best-int8.onnx, CPU
    python detect.py --model checkpoints/exp/best-checkpoint.onnx --source data/sample/imgs

    from export import load_onnx
    meta, predict = load_onnx("unet.onnx")          # meta: like a checkpoint's
    logits = predict(batch)                         # float32 NCHW in, float32 logits NCHW out
"""

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from segtoolkit.imaging import check_patch_size
from detect_outputs import one_line_warnings
from segtoolkit.checkpoints import CHECKPOINT_FORMAT, load_checkpoint, MODEL_META_KEYS
from segtoolkit.errors import UserError
from segtoolkit.models import model_from_checkpoint

DEFAULT_OPSET = 17
META_KEY = CHECKPOINT_FORMAT  # metadata_props key holding the checkpoint meta as JSON
INPUT_NAME, OUTPUT_NAME = "images", "logits"
# Exported with a fixed height and width (batch stays dynamic): PSPNet and UPerNet pool to fixed grids
# (adaptive_avg_pool2d needs a known input size in ONNX); DPT's ViT encoder has one position embedding
# per patch of the training size. Every other smp architecture was checked to run at other sizes.
STATIC_SIZE_ARCHITECTURES = ("PSPNet", "UPerNet", "DPT")
# ONNX has adaptive pooling only when the grid divides the feature map: PSPNet pools its stride-8 features
# and UPerNet its stride-32 features to 1, 2, 3 and 6 cells, so the size must be a multiple of 8*6 or 32*6
# (and of 32).
SIZE_MULTIPLE = {"PSPNet": 96, "UPerNet": 192}
CHECKPOINT_SUFFIXES = (".pth.tar", ".pth", ".pt", ".tar")


# ---------------------------------------------------------------- export


def default_output(checkpoint_path, tag=""):
    """checkpoints/exp/best-checkpoint.pth.tar -> checkpoints/exp/best-checkpoint{tag}.onnx"""
    path = Path(checkpoint_path)
    name = path.name
    for suffix in CHECKPOINT_SUFFIXES:
        if name.endswith(suffix):
            name = name[:-len(suffix)]
            break
    return path.with_name(f"{name}{tag}.onnx")


def export_onnx(model, meta, output, patch_size=None, opset=DEFAULT_OPSET):
    """Write `model` to `output` as ONNX with `meta` in its metadata; returns the meta stored.

    `patch_size` (default: the checkpoint's) is the size traced and, for a static-size architecture,
    the only size the file accepts; it becomes the stored patch size, the one detect.py uses.
    """
    import onnx  # export-only dependency; detect.py imports this module for load_onnx

    check_opset(opset)
    patch_size = meta["patch_size"] if patch_size is None else patch_size
    check_patch_size(patch_size)
    multiple = SIZE_MULTIPLE.get(meta["architecture"], 32)
    if patch_size % multiple:
        raise UserError(f"{meta['architecture']} exports to ONNX only at sizes that are a multiple of {multiple} "
                        f"(its pyramid pooling must divide the feature map evenly); give --patch-size "
                        f"{max(multiple, multiple * round(patch_size / multiple))}")
    meta = dict(meta, patch_size=patch_size)
    dynamic = meta["architecture"] not in STATIC_SIZE_ARCHITECTURES
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    example = torch.zeros(1, meta["in_channels"], patch_size, patch_size)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().float()
    with warnings.catch_warnings(), torch.inference_mode():
        # The TorchScript exporter: the torch.export one needs the onnxscript package, and tracing drops
        # smp's Python-side input-size checks that torch.export would turn into shape guards.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            torch.onnx.export(model, (example,), str(output), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes}, do_constant_folding=True)
        except torch.onnx.errors.OnnxExporterError as error:
            raise UserError(f"{meta['architecture']}/{meta['encoder']} cannot be exported to ONNX opset {opset}: "
                            f"{str(error).splitlines()[0][:200]}; try another --opset or --patch-size") from None
    proto = onnx.load(str(output))
    if dynamic:
        proto = resize_by_scales(proto, patch_size, meta["in_channels"])
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps({key: meta[key] for key in MODEL_META_KEYS})
    proto.doc_string = f"{meta['architecture']}/{meta['encoder']} exported by export.py"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(output))
    return meta


def resize_by_scales(proto, patch_size, in_channels):
    """Give Resize nodes that always scale by the same whole factor that factor instead of a computed size.

    smp decoders upsample to the size of the next skip feature, which the exporter computes at run time
    (Shape, Slice, Concat). onnxruntime then runs those Resize and Concat nodes, and the Shape nodes that
    read the feature maps, in plain NCHW, converting to and from its faster blocked layout around each one.
    With constant scales the whole decoder stays in the blocked layout (Unet/resnet34 at 512: about 8%
    faster, identical logits). A Resize is changed only when its output is the same whole multiple of its
    input at two different input sizes, which the graph is probed with; the rest is left as exported.
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    resizes = [node for node in proto.graph.node
               if node.op_type == "Resize" and len(node.input) == 4 and node.input[3]]
    if not resizes:
        return proto
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    watched = sorted({name for node in resizes for name in (node.input[0], node.output[0])})
    probe.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in watched)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    factors = {}
    for height, width in ((patch_size, patch_size), (patch_size + 32, patch_size + 64)):
        image = np.zeros((1, in_channels, height, width), np.float32)
        shapes = dict(zip(watched, (value.shape for value in session.run(watched, {INPUT_NAME: image}))))
        for node in resizes:
            before, after = shapes[node.input[0]], shapes[node.output[0]]
            exact = all(b > 0 and a % b == 0 for a, b in zip(after, before))
            factor = tuple(a // b for a, b in zip(after, before)) if exact else None
            factors.setdefault(node.name, factor)
            if factors[node.name] != factor:
                factors[node.name] = None
    for node in resizes:
        if factors[node.name] is None:
            continue
        name = "resize_scales_" + "x".join(map(str, factors[node.name]))
        if name not in {tensor.name for tensor in proto.graph.initializer}:
            proto.graph.initializer.append(numpy_helper.from_array(np.array(factors[node.name], np.float32), name))
        node.input[:] = [node.input[0], node.input[1], name]
    remove_unused(proto.graph)
    return proto


def remove_unused(graph):
    """Drop the nodes and initializers nothing reads any more (the size computations replaced above)."""
    while True:
        read = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
        unused = [node for node in graph.node if not any(name in read for name in node.output)]
        if not unused:
            break
        for node in unused:
            graph.node.remove(node)
    read = {name for node in graph.node for name in node.input}
    for tensor in [tensor for tensor in graph.initializer if tensor.name not in read]:
        graph.initializer.remove(tensor)


def check_output(output):
    """--output must name an .onnx file: detect.py tells an ONNX model by its suffix, and a folder (or a path
    ending in a separator, which Path() would silently drop) is not a file name."""
    text = str(output)
    if text.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep)) or Path(text).is_dir():
        raise UserError(f"--output {text} is a folder; give a file name ending in .onnx (for example "
                        f"{Path(text) / 'model.onnx'})")
    if Path(text).suffix.lower() != ".onnx":
        raise UserError(f"--output {text}: give a file name ending in .onnx (detect.py tells an ONNX model by "
                        f"that suffix)")


def check_opset(opset):
    if opset < 17:
        raise UserError(f"--opset {opset}: use 17 or higher (LayerNorm and the resize modes need it)")


def check_simplifier():
    if importlib.util.find_spec("onnxsim") is None:
        raise UserError("--simplify needs onnx-simplifier (pip install onnxsim); it is optional: onnxruntime "
                        "applies the same constant folding and fusions when it loads the file")


def simplify(path):
    """Rewrite the file with onnx-simplifier, when it is installed (it is not a requirement)."""
    check_simplifier()
    import onnx
    import onnxsim

    simplified, ok = onnxsim.simplify(onnx.load(str(path)))
    if not ok:
        raise UserError(f"onnxsim could not validate the simplified {path}; export without --simplify")
    onnx.save(simplified, str(path))


def max_difference(model, predict, meta, size, batch=1, seed=0):
    """Largest |PyTorch - ONNX| logit on one random batch at `size`: a check that the export is faithful."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, meta["in_channels"], size, size, generator=generator)
    with torch.inference_mode():
        expected = model.eval()(images).float().numpy()
    return float(np.abs(predict(images.numpy()) - expected).max())


# ---------------------------------------------------------------- inference with onnxruntime


def providers():
    """CUDA when this onnxruntime build has it, then the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [name for name in ("CUDAExecutionProvider", "CPUExecutionProvider") if name in available]


def session_options(threads=None):
    """CPU-tuned options: every graph optimization, intra-op threads (default: onnxruntime's, one per
    physical core) and no spin-waiting, which on a shared or small CPU burns the cores that decoding,
    drawing and writing need (measured faster on 2 cores, see README: Performance)."""
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
    try:
        meta = json.loads(stored)
    except json.JSONDecodeError:
        meta = None
    missing = [key for key in MODEL_META_KEYS if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise UserError(f"{path}: its '{META_KEY}' metadata is damaged (missing {', '.join(missing)}); "
                        f"export it again with export.py")
    return meta


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
        if len(fixed_size) == 2 and tuple(batch.shape[2:]) != fixed_size:
            raise UserError(f"{path} accepts only {fixed_size[1]}x{fixed_size[0]} inputs ({meta['architecture']} "
                            f"is exported at a fixed size), got {batch.shape[3]}x{batch.shape[2]}; drop "
                            f"--patch-size or export again with export.py --patch-size {batch.shape[2]}")
        return session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]

    return meta, predict


# ---------------------------------------------------------------- command line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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

    import quantize  # int8 only: onnxruntime's quantization tools
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


def main(args):
    with contextlib.nullcontext() if args.verbose else one_line_warnings():
        return run_command(args)


def run_command(args):
    """run() with the command line's arguments and its summary; a UserError is its one line and exit code."""
    try:
        path, meta, check = run(model=args.model, output=args.output, patch_size=args.patch_size, opset=args.opset,
                                simplify_graph=args.simplify, int8=args.int8, calibration=args.calibration,
                                calibration_count=args.calibration_count)
    except UserError as error:
        if args.verbose:
            raise
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    size = "any size (multiple of 32)" if meta["architecture"] not in STATIC_SIZE_ARCHITECTURES else \
        f"{meta['patch_size']}x{meta['patch_size']} only"
    if args.int8:
        import quantize
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


if __name__ == "__main__":
    sys.exit(main(parse_args()))
