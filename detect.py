"""Segment images, videos, folders, network streams and webcams with a model trained by train.py.

Usage:
    python detect.py --model checkpoints/exp/best-checkpoint.pth.tar --source data/sample/imgs
    python detect.py --model best.pth.tar --source "data/**/*.png" --conf-thres 0.6
    python detect.py --model best.pth.tar --source clip.mp4 --save-video --max-frames 100
    python detect.py --model best.pth.tar --source rtsp://user:pass@192.168.1.20:554/stream --view-img
    python detect.py --model best.pth.tar --source http://camera.local/video.mjpg --save-video
    python detect.py --model best.pth.tar --source rtmp://media.local/live/cam1 --max-frames 500
    python detect.py --model best.pth.tar --source 0 --view-img              # first webcam
    python detect.py --model best.pth.tar --source sources.txt               # one source per line
    python detect.py --model model.onnx --source data/sample/imgs            # ONNX model from export.py
    python detect.py --model best-checkpoint.xml --source clip.mp4           # OpenVINO model from export.py
    python detect.py --model best.pth.tar --source clip.mp4 --half           # bfloat16 CPUs, float16 GPUs
    python detect.py --model best.pth.tar --source data/sample/imgs --save-json --save-probs  # polygons, probs
    python detect.py --model best.pth.tar --source new_imgs --save-coco --rank-uncertain 20  # pre-labels, to label

Writes to runs/detect/exp (exp2, exp3... never overwriting; --save-dir DIR is used as is, and a second
run into it appends to its results.csv): for each image the annotated image and masks/<name>.png (0/255
for one class; for several a palette PNG, its pixels the class indices and its colours the classes'), with
--save-video an annotated MP4 per video or stream (MJPEG .avi for an odd frame size, which MP4 cannot keep
here), and always results.csv with one row per frame naming the files written for it. --save-json adds
polygons.jsonl (every polygon of every class, per frame), --save-probs probs/<name>.npz or .png (the
class probabilities at the original size), --save-coco predictions.coco.json (segtoolkit.data.coco),
--rank-uncertain K to_label/ and to_label.csv (segtoolkit.outputs.uncertainty): see segtoolkit.outputs.frame_exports.
Files are named after their source (odd.avi.mp4 and odd.mp4.mp4 when stems collide; _2, _3... rather
than overwriting any file). The folder is created with the first frame: a stream that cannot be opened
within --stream-timeout is an error (exit code 2) and leaves nothing behind; a stream that drops for longer ends the run
normally (exit code 0) with every output complete. A write that fails (full disk) stops the run with
exit code 1; everything written before it is complete and listed in results.csv.
--view-img shows the overlay live (q or Esc quits; an image stays until a key is pressed). Ctrl-C (or
SIGTERM) finishes the current frame, closes every output (videos stay playable) and exits with code 130;
a frame segmented by tiles is abandoned at its next batch of tiles instead, and shows a progress bar when
its tiles take longer than 2 s.
"""

import os
import sys
import time
from pathlib import Path

import cv2

from dataloaders import RTSP_TRANSPORTS, iterate_frames
from segtoolkit.cli import ArgumentParser, StopRequest, Stopped, run_command
from segtoolkit.training.config import check_run_name
from segtoolkit.data.classes import output_colours
from segtoolkit.data.coco import CocoWriter, check_coco_output
from segtoolkit.outputs.detections import ResultWriter, Viewer, check_display
from segtoolkit.outputs.files import check_output_folder
from segtoolkit.distributed import resolve_device
from segtoolkit.errors import EXIT_OK, EXIT_STOPPED, UserError
from segtoolkit.inference.full_size import CONF_THRES_HELP, FullSizePredictor, check_conf_thres, collect
from segtoolkit.data.imaging import check_patch_size
from segtoolkit.outputs.frame_exports import FrameExports
from segtoolkit.outputs.overlay import draw_overlay
from segtoolkit.data.polygons import find_regions, largest_area
from segtoolkit.inference.pipeline import Finisher
from segtoolkit.inference.predictor import check_model_flags, load_predictor
from segtoolkit.inference.probabilities import Prediction
from segtoolkit.inference.tiling import MAX_OVERLAP, MAX_TILES_PER_PIXEL, PROGRESS_DELAY, WEIGHTINGS, check_tile_overlap
from segtoolkit.outputs.uncertainty import UncertainFrames, check_ranking
from segtoolkit.data.sources import resolve_sources

REPO = Path(__file__).resolve().parent
DEFAULT_PROJECT = REPO / "runs" / "detect"


class Segmenter:
    """One frame's Prediction at the frame's own size, by a FullSizePredictor (segtoolkit.inference.full_size): its mask
    of class indices and, with `probabilities` (--save-probs), the class probabilities, both from the logits
    upsampled to the frame (the mask is decided after upsampling, as val.py and train.py count it). Models
    fitted into the patch see frame.image, which the loader letterboxed or stretched; crop-trained models (or
    --tile) see the whole frame (times the model's --scale) by sliding window."""

    def __init__(self, full_size, probabilities=False):
        self.full_size, self.probabilities = full_size, probabilities

    def __call__(self, frame):
        blocks = self.full_size.blocks(frame.original, (frame.image, frame.letterbox))
        return Prediction(*collect(blocks, frame.original.shape[:2], self.full_size.conf_thres, self.probabilities))


def infer(segmenter, frame):
    """(Prediction, inference milliseconds) for one Frame: see Segmenter for its size."""
    began = time.perf_counter()
    prediction = segmenter(frame)
    return prediction, (time.perf_counter() - began) * 1000


# ---------------------------------------------------------------- the run


class RunningMean:
    """Mean of the largest polygon area over the frames so far, one mean per video or stream."""

    def __init__(self):
        self.totals = {}

    def add(self, key, value):
        total, count = self.totals.get(key, (0.0, 0))
        self.totals[key] = (total + value, count + 1)
        return (total + value) / (count + 1)


class FrameOutputs:
    """Everything after the forward pass for one frame: the mask at the frame's size, polygons, overlay,
    the saved files and the console line. Called in frame order (from the finisher thread when there is
    no window), so the running means and the file numbering stay as the frames came."""

    def __init__(self, writer, colours, class_names, file_total):
        self.writer, self.colours, self.class_names, self.file_total = writer, colours, class_names, file_total
        self.means, self.file_number = RunningMean(), 0

    def __call__(self, frame, prediction, inference_ms):
        """Write and print one frame (a Prediction); returns the annotated RGB image."""
        mask = prediction.mask
        regions = find_regions(mask)
        largest = largest_area(regions)  # holes subtracted, as polygons.jsonl's areas
        mean = self.means.add("images" if frame.is_image else frame.path, largest)
        lines = [f"{inference_ms:.1f} ms ({1000 / max(inference_ms, 1e-6):.1f} FPS)",
                 f"largest polygon {largest:.0f} px", f"mean {mean:.0f} px"]
        annotated = draw_overlay(frame.original, mask, regions, self.colours, lines, self.class_names)
        self.writer.add(frame, mask, annotated, inference_ms, largest, prediction.probabilities)
        self.file_number += frame.index == 0 and not frame.is_stream
        print(f"{describe(frame, self.file_number, self.file_total)}: {inference_ms:.1f} ms, "
              f"largest polygon {largest:.0f} px", flush=True)
        return annotated


def describe(frame, file_number, file_total):
    """The source part of the console line: kind, position and size."""
    height, width = frame.original.shape[:2]
    if frame.is_image:
        where = f"image {file_number}/{file_total} {frame.path}"
    elif frame.is_stream:
        where = f"stream {frame.path} frame {frame.index}"
    else:
        where = f"video {file_number}/{file_total} ({frame.index + 1}/{frame.count}) {frame.path}"
    return f"{where} {width}x{height}"




def check_flags(conf_thres, max_frames, patch_size, name, tile_overlap=0.25):
    """The flags, checked before anything is read or loaded."""
    check_run_name(name)
    check_tile_overlap(tile_overlap)
    check_conf_thres(conf_thres)
    if max_frames is not None and max_frames < 1:
        raise UserError(f"--max-frames {max_frames} must be at least 1")
    if patch_size is not None:  # 0 too: it must not fall back to the checkpoint's size unnoticed
        check_patch_size(patch_size)


def run(*, model, source, patch_size=None, classes=None, encoder=None, conf_thres=None, max_frames=None,
        view_img=False, save_video=False, device="auto", half=False, save_dir=None, project=DEFAULT_PROJECT,
        name="exp", nosave=False, stream_timeout=30.0, rtsp_transport="auto", tile=False, tile_overlap=0.25,
        tile_batch=4, tile_weighting="gaussian", save_json=False, save_probs=False, save_coco=False, coco_rle=False,
        rank_uncertain=None, rank_gap=30):
    """Segment every frame of `source`; returns a summary dict (frames, save_dir, interrupted, quit).

    Results go to save_dir as is, or to the first free one of project/name, name2, name3...; save_dir is
    None in the summary when no frame was segmented (nothing was written then).
    """
    check_flags(conf_thres, max_frames, patch_size, name, tile_overlap)
    device = resolve_device(device)
    files, streams = resolve_sources(source)  # missing paths fail here, before the model loads
    save_dir = Path(save_dir) if save_dir else None
    check_output_folder(save_dir, project)
    check_ranking(rank_uncertain, rank_gap, save_dir)
    check_coco_output(save_coco, coco_rle, save_dir)
    if view_img:
        check_display()
    meta, predictor = load_predictor(model, device, half)
    check_model_flags(meta, classes, encoder, model)
    tiled = tile or meta.get("input_mode") == "tile"  # crop-trained models see whole frames by sliding window
    stop = StopRequest("stopping this frame at its next batch of tiles, then closing outputs" if tiled else
                       "finishing this frame, then closing outputs")
    # stop: Ctrl-C or SIGTERM abandons a tiled frame between two batches of tiles (cli.Stopped)
    full_size = FullSizePredictor.from_meta(predictor, meta, tile=tile, patch_size=patch_size, overlap=tile_overlap,
                                            tile_batch=tile_batch, weighting=tile_weighting, conf_thres=conf_thres,
                                            stop=stop.event, progress=True)
    segmenter = Segmenter(full_size, probabilities=save_probs or save_coco or rank_uncertain is not None)  # scores
    exports = FrameExports(meta["class_names"], meta["classes"], save_json, save_probs,
                           coco=CocoWriter(meta["class_names"], coco_rle) if save_coco else None,
                           ranking=UncertainFrames(rank_uncertain, rank_gap, output_colours(meta) if meta["classes"] > 1
                                                   else None) if rank_uncertain is not None else None)
    writer, outputs = make_outputs(meta, save_dir or Path(project) / name, not save_dir, save_video and not nosave,
                                   not nosave, files, exports)
    with stop:
        frames = iterate_frames(files, streams, None if full_size.tiled else full_size.patch_size, meta["mean"],
                                meta["std"], stream_timeout, rtsp_transport, stop.event, prefetch=0 if view_img else 2,
                                stretch=full_size.resize == "stretch", bit_depth=meta.get("bit_depth"))
        started = time.perf_counter()
        count, total_ms, user_quit = segment_frames(frames, segmenter, max_frames, outputs, writer,
                                                    Viewer() if view_img else None, stop)
    why = " (interrupted)" if stop.is_set() and not user_quit else " (quit)" if user_quit else ""
    save_dir = writer.save_dir if writer.opened else None
    print_summary(count, total_ms, time.perf_counter() - started, why, save_dir)
    return {"frames": count, "save_dir": save_dir, "interrupted": stop.is_set() and not user_quit,
            "quit": user_quit}


def segment_frames(frames, segmenter, max_frames, outputs, writer, viewer, stop):
    """The loop: (frames segmented, total inference ms, whether the user quit the window). Without a window,
    everything after the forward pass runs in a finisher thread beside the model (decoding is read ahead
    by `frames`); a window must be drawn from this thread, so then they run in turn. Every output is
    closed, and every frame inferred written, whatever ends the loop."""
    finisher = None if viewer else Finisher(outputs, depth=2)
    count, total_ms, user_quit = 0, 0.0, False
    try:
        for frame in frames:
            try:
                prediction, inference_ms = infer(segmenter, frame)
            except Stopped:  # a tiled frame cut short by Ctrl-C or SIGTERM: nothing of it is written
                break
            count, total_ms = count + 1, total_ms + inference_ms
            if finisher is not None:
                finisher.submit(frame, prediction, inference_ms)
            elif not viewer.show(frame, outputs(frame, prediction, inference_ms), stop.event):
                user_quit = True
                break
            if (max_frames and count >= max_frames) or stop.is_set():
                break
    finally:
        try:
            frames.close()
            if finisher is not None:
                finisher.close()  # every frame inferred is written before the files are closed
        finally:
            writer.close()
            if viewer is not None:
                viewer.close()
    return count, total_ms, user_quit


def make_outputs(meta, save_dir, increment, save_video, save_images, files, exports=None):
    """(ResultWriter, FrameOutputs) for the run. The folder is created with the first frame, so a stream that
    never delivers one leaves nothing behind; a results.csv there that cannot be appended to fails now.
    Masks, overlay and legend share the classes' colours: the training ones of --mask-colors, if given."""
    names = meta.get("class_names") or [f"class_{i}" for i in range(max(2, meta["classes"]))]
    class_names = names if meta["classes"] > 1 else None
    colours = output_colours(meta)
    writer = ResultWriter(save_dir, class_names, save_images=save_images, save_video=save_video, increment=increment,
                          sources=files, colours=colours, exports=exports)
    writer.check_existing()
    return writer, FrameOutputs(writer, colours, class_names, len(files))


def print_summary(count, total_ms, elapsed, why, save_dir):
    if count:
        print(f"{count} frame(s) in {elapsed:.1f} s{why}: mean inference {total_ms / count:.1f} ms, "
              f"{count / elapsed if elapsed > 0 else 0:.1f} FPS overall; results in {save_dir}", flush=True)
    else:
        told = "nothing written" if why else "nothing to segment, nothing written"  # why: stopped mid-frame
        print(f"0 frames in {elapsed:.1f} s{why}: {told}", flush=True)


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__)
    data = parser.add_argument_group("Data")
    data.add_argument("--source", required=True,
                      help="image, video, folder, glob, .txt list, rtsp://, rtmp://, http(s):// or webcam index "
                           "(a path that exists is never a glob, even with [ ] * ? in its name)")
    data.add_argument("--max-frames", type=int, default=None, help="stop after this many frames in total")
    data.add_argument("--stream-timeout", type=float, default=30.0,
                      help="seconds to keep reconnecting a dropped stream before ending it (default: 30)")
    data.add_argument("--rtsp-transport", default="auto", choices=RTSP_TRANSPORTS,
                      help="RTSP over tcp, udp, or auto (TCP, then UDP)")
    model = parser.add_argument_group("Model")
    model.add_argument("--model", required=True,
                       help="checkpoint from train.py (.pth.tar), or from export.py an .onnx file (onnxruntime) or "
                            "an .xml with its .bin (OpenVINO)")
    model.add_argument("--patch-size", type=int, default=None,
                       help="inference size, a positive multiple of 32 (default: the checkpoint's)")
    model.add_argument("--classes", type=int, default=None, help="only checked against the checkpoint")
    model.add_argument("--encoder", default=None, help="only checked against the checkpoint")
    model.add_argument("--tile", action="store_true",
                       help="segment whole frames at full resolution by sliding window (tile = the patch size); "
                            "automatic for models trained with --crop")
    model.add_argument("--tile-overlap", type=float, default=0.25,
                       help=f"overlap of the tiles, a fraction of a tile, at most {MAX_OVERLAP} (each pixel inside "
                            f"{MAX_TILES_PER_PIXEL} tiles; a frame whose tiles take over {PROGRESS_DELAY:g} s shows a "
                            f"progress bar, and Ctrl-C stops it between two batches of tiles)")
    model.add_argument("--tile-weighting", default="gaussian", choices=WEIGHTINGS,
                       help="how overlapping tiles' logits are blended: gaussian (the middle of a tile counts most) "
                            "or linear")
    model.add_argument("--tile-batch", type=int, default=4,
                       help="tiles per forward pass: memory is bounded by it, not by the frame")
    model.add_argument("--conf-thres", type=float, default=None, help=CONF_THRES_HELP)
    runtime = parser.add_argument_group("Runtime")
    runtime.add_argument("--device", default="auto",
                         help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 (.onnx: onnxruntime decides; "
                              ".xml: OpenVINO on the CPU)")
    runtime.add_argument("--half", action="store_true",
                         help="half precision: float16 on CUDA, bfloat16 on CPUs with AVX-512 BF16 or AMX (.pth.tar "
                              "and .xml); on other CPUs, and for .onnx, a warning and float32")
    runtime.add_argument("--view-img", action="store_true", help="show the overlay in a window (q or Esc quits)")
    runtime.add_argument("--verbose", action="store_true",
                         help="full tracebacks, FFmpeg/OpenCV warnings, and Python warnings with their source line")
    output = parser.add_argument_group("Output")
    output.add_argument("--project", type=Path, default=DEFAULT_PROJECT,
                        help="folder of the run folders (default: runs/detect/ in the repository)")
    output.add_argument("--name", default="exp", help="run folder name: <project>/<name>, then name2, name3...")
    output.add_argument("--save-dir", type=Path, default=None,
                        help="output folder, used as is instead of --project/--name: a second run adds its rows "
                             "to its results.csv and never overwrites a file")
    output.add_argument("--save-video", action="store_true",
                        help="write an annotated MP4 per video or stream (.avi, MJPEG, for an odd frame size)")
    output.add_argument("--nosave", action="store_true",
                        help="write no images, masks or videos (results.csv, and what --save-json and --save-probs "
                             "ask for, are still written)")
    output.add_argument("--save-json", action="store_true",
                        help="write polygons.jsonl beside results.csv: per image or frame, every polygon of every "
                             "class (class id and name, area in pixels, points and holes in image coordinates)")
    output.add_argument("--save-coco", action="store_true",
                        help="write predictions.coco.json: one image per image or frame, one annotation per region "
                             "(polygon along the pixel edges, holes kept; area, bbox, score = the mean probability "
                             "of its class over it), to import into CVAT or Label Studio as pre-annotations")
    output.add_argument("--coco-rle", action="store_true", help="with --save-coco, compressed RLE instead of polygons")
    output.add_argument("--rank-uncertain", type=int, default=None, metavar="K",
                        help="copy the K images or frames the model is least sure of (mean of 1 - the margin between "
                             "the two likeliest classes' probabilities) with their predicted masks to to_label/, "
                             "listed most uncertain first in to_label.csv")
    output.add_argument("--rank-gap", type=int, default=30, metavar="N",
                        help="with --rank-uncertain, of a video's frames closer than N frames only the most "
                             "uncertain is taken (near duplicates; default 30)")
    output.add_argument("--save-probs", action="store_true",
                        help="write the class probabilities at the original size to probs/: .npz (float16 HxWxC) "
                             "for several classes, a 16-bit PNG (probability x 65535) for one")
    return parser.parse_args(argv)


def detect_from_args(args):
    """run() with the command line's arguments; returns the exit code."""
    if not args.verbose:  # FFmpeg and OpenCV print a warning per failed RTSP transport or reconnect attempt
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    summary = run(model=args.model, source=args.source, patch_size=args.patch_size, classes=args.classes,
                  encoder=args.encoder, conf_thres=args.conf_thres, max_frames=args.max_frames,
                  view_img=args.view_img, save_video=args.save_video, device=args.device, half=args.half,
                  save_dir=args.save_dir, project=args.project, name=args.name, nosave=args.nosave,
                  stream_timeout=args.stream_timeout, rtsp_transport=args.rtsp_transport, tile=args.tile,
                  tile_overlap=args.tile_overlap, tile_batch=args.tile_batch, tile_weighting=args.tile_weighting,
                  save_json=args.save_json, save_probs=args.save_probs, save_coco=args.save_coco,
                  coco_rle=args.coco_rle, rank_uncertain=args.rank_uncertain, rank_gap=args.rank_gap)
    return EXIT_STOPPED if summary["interrupted"] else EXIT_OK


def main(args):
    """detect.py with parsed arguments; returns the exit code (an error is one line: segtoolkit.cli)."""
    return run_command(detect_from_args, args)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
