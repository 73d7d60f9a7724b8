"""ONNX files from train.py checkpoints: the export itself, checked against PyTorch.

The ONNX file carries the checkpoint's self-description (architecture, encoder, classes, normalization,
patch size, class names) in its metadata, so detect.py needs no other flag. The batch dimension is always
dynamic; height and width are dynamic too, except for architectures whose pooling or position embeddings
fix the input size (see STATIC_SIZE_ARCHITECTURES).

Usage:
    meta = export_onnx(model, checkpoint["meta"], "model.onnx")
    largest = max_difference(model, load_onnx("model.onnx")[1], meta, meta["patch_size"])
"""

import importlib.util
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from segtoolkit.models.checkpoints import MODEL_META_KEYS, OPTIONAL_META_KEYS
from segtoolkit.errors import UserError
from segtoolkit.data.imaging import check_patch_size
from segtoolkit.inference.onnx_runtime import INPUT_NAME, META_KEY, OUTPUT_NAME
from segtoolkit.outputs.files import check_save_dir

DEFAULT_OPSET = 17

STATIC_SIZE_ARCHITECTURES = ("PSPNet", "UPerNet", "DPT")


SIZE_MULTIPLE = {"PSPNet": 96, "UPerNet": 192}


CHECKPOINT_SUFFIXES = (".pth.tar", ".pth", ".pt", ".tar")


def default_output(checkpoint_path, tag="", suffix=".onnx"):
    """checkpoints/exp/best-checkpoint.pth.tar -> checkpoints/exp/best-checkpoint{tag}{suffix}"""
    path = Path(checkpoint_path)
    name = path.name
    for checkpoint_suffix in CHECKPOINT_SUFFIXES:
        if name.endswith(checkpoint_suffix):
            name = name[:-len(checkpoint_suffix)]
            break
    return path.with_name(f"{name}{tag}{suffix}")


def export_onnx(model, meta, output, patch_size=None, opset=DEFAULT_OPSET):
    """Write `model` to `output` as ONNX with `meta` in its metadata; returns the meta stored.

    `patch_size` (default: the checkpoint's) is the size traced and, for a static-size architecture,
    the only size the file accepts; it becomes the stored patch size, the one detect.py uses.
    """
    import onnx  # only exporting needs it: detect.py reads ONNX files with onnxruntime (inference.onnx_runtime)

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
    entry.key, entry.value = META_KEY, json.dumps({key: meta.get(key, default) for key, default in
                                             {**dict.fromkeys(MODEL_META_KEYS), **OPTIONAL_META_KEYS}.items()})
    proto.doc_string = f"{meta['architecture']}/{meta['encoder']} exported by export.py"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(output))
    return meta


def resize_by_scales(proto, patch_size, in_channels):
    """Give Resize nodes that always scale by the same whole factor that factor instead of a computed size.

    smp decoders upsample to the size of the next skip feature, which the exporter computes at run time
    (Shape, Slice, Concat). onnxruntime then runs those Resize and Concat nodes, and the Shape nodes that
    read the feature maps, in plain NCHW, converting to and from its faster blocked layout around each one.
    With constant scales the whole decoder stays in the blocked layout (faster, identical logits;
    docs/performance.md). A Resize is changed only when its output is the same whole multiple of its
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


def check_output(output, suffix=".onnx"):
    """--output must name a file ending in `suffix` (.onnx, or .xml for OpenVINO): detect.py tells the runtime
    by the suffix, and a folder (or a path ending in a separator, which Path() would silently drop) is not a
    file name."""
    text = str(output)
    kind = "an OpenVINO" if suffix == ".xml" else "an ONNX"
    if text.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep)) or Path(text).is_dir():
        raise UserError(f"--output {text} is a folder; give a file name ending in {suffix} (for example "
                        f"{Path(text) / ('model' + suffix)})")
    if Path(text).suffix.lower() != suffix:
        raise UserError(f"--output {text}: give a file name ending in {suffix} (detect.py tells {kind} model by "
                        f"that suffix)")
    check_save_dir(Path(text).parent, "--output", text)


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
