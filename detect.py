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
    python detect.py --model best.pth.tar --source rtsp://cam1/live rtsp://cam2/live http://cam3/video.mjpg
    python detect.py --model model.onnx --source data/sample/imgs            # ONNX model from export.py
    python detect.py --model best-checkpoint.xml --source clip.mp4           # OpenVINO model from export.py
    python detect.py --model best.pth.tar --source clip.mp4 --half           # bfloat16 CPUs, float16 GPUs
    python detect.py --model best.pth.tar --source data/sample/imgs --save-json --save-probs  # polygons, probs
    python detect.py --model best.pth.tar --source new_imgs --save-coco --rank-uncertain 20  # pre-labels, to label
    python detect.py --model best.pth.tar --source data/sample/imgs --batch-size 8 --device cuda  # 8 per pass
    torchrun --nproc-per-node 4 detect.py --model best.pth.tar --source big_folder   # 4 processes (GPUs), one run
    python detect.py --model best.pth.tar --source big_folder --resume-run runs/detect/exp  # finish a cut-short run

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
within --stream-timeout is an error (exit code 2) and leaves nothing behind; a stream that drops for longer ends
(the run, when it was the last, normally: exit code 0, every output complete). Several streams (several --source
values, or a .txt list) are read side by side, each by its own reader keeping its newest frame; each forward pass
takes the newest unseen frame of every stream that has one, so a stream that drops or reconnects holds up no
other. Each stream has its own video, window and rows (results.csv's `source` column names it). A write that
fails (full disk) stops the run with exit code 1; everything written before it is complete and listed in
results.csv. --view-img shows the overlay live (q or Esc quits; an image stays until a key is pressed). Ctrl-C
(or SIGTERM) finishes the current forward pass (one frame; with --batch-size, a batch; with streams, one frame per
stream), closes every output (videos stay playable) and exits with code 130; a frame segmented by tiles is
abandoned at its next batch of tiles instead (the frames of its batch finished before it are written), and shows a
progress bar when its tiles take longer than 2 s. --batch-size N writes what 1 writes, but for results.csv's
inference_ms (the batch's time per frame) and batch_size (the frames in its forward passes: with streams, the
streams that had a new frame). On the CPU, PyTorch convolves a single small input (the deep layers of a model
under 256 px) with its own kernel and a batch with oneDNN's, whose last bits differ: there --save-probs may differ by
a float16 step and a pixel whose probability is that close to the boundary may flip. From patch 256 every layer takes
oneDNN either way (Unet/resnet18: 31 of 31 convolutions), and the outputs are byte for byte those of 1 (tested).
Under torchrun each process takes a share of the sources (segtoolkit.outputs.shards says which) on its own
device (cuda:LOCAL_RANK, or on the CPU cores // processes threads) and writes its part of results.csv and
polygons.jsonl into the run folder rank 0 made at the start; rank 0 merges the parts in source order at the
end. --resume-run DIR finishes a run that was cut short (by a kill, Ctrl-C or a failed process): the frames
its results.csv lists are skipped.
"""

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2

from dataloaders import RTSP_TRANSPORTS, iterate_groups
from segtoolkit.cli import (OneOrMore, StopRequest, Stopped, device_setting, half_setting, model_file_setting,
                            name_setting, project_setting, run_command, save_dir_setting, setting, settings_from,
                            settings_parser, verbose_setting)
from segtoolkit.training.config import check_run_name, open_model, run_config
from segtoolkit.data.classes import output_colours
from segtoolkit.data.coco import CocoWriter, check_coco_output
from segtoolkit.outputs.detections import ResultWriter, Viewer, check_display
from segtoolkit.outputs.files import check_output_folder, make_run_dir
from segtoolkit import distributed
from segtoolkit.outputs.shards import (POLYGONS_FILE, RESULTS_FILE, Finished, check_resume_run, merge_parts, part_name,
                                       share, source_order)
from segtoolkit.errors import EXIT_OK, EXIT_STOPPED, UserError
from segtoolkit.inference.full_size import CONF_THRES_HELP, FullSizePredictor, check_conf_thres, collect
from segtoolkit.data.imaging import check_patch_size
from segtoolkit.outputs.frame_exports import FrameExports
from segtoolkit.outputs.overlay import draw_overlay
from segtoolkit.data.polygons import find_regions, largest_area
from segtoolkit.inference.pipeline import Finisher
from segtoolkit.inference.predictor import check_model_flags
from segtoolkit.inference.probabilities import Prediction
from segtoolkit.inference.tiling import (check_tile_settings, tile_batch_setting, tile_overlap_setting, tile_setting,
                                        tile_weighting_setting)
from segtoolkit.outputs.uncertainty import UncertainFrames, check_ranking
from segtoolkit.data.sources import resolve_sources



@dataclass(frozen=True, kw_only=True)
class DetectSettings:
    """detect.py's flags: each field is the flag --field-name, its default and help written once, here."""
    source: str | tuple[str, ...] = setting(
        group="Data", action=OneOrMore, help="image, video, folder, glob, .txt list, rtsp://, rtmp://, http(s):// or "
        "webcam index (a path that exists is never a glob, even with [ ] * ? in its name); several values, or a "
        "list, for many: streams are then read side by side, each forward pass over the newest frame of each")
    max_frames: int | None = setting(None, group="Data", help="stop after this many frames in total (under torchrun: "
                                     "in each process)")
    batch_size: int = setting(1, group="Data", help="frames of files (images, videos) per forward pass: a model "
                              "fitting frames into its patch sees N of them at once, a tiled one (--tile) takes "
                              "--tile-batch tiles at a time across N frames; outputs as with 1, results.csv's "
                              "inference_ms is the batch's time per frame (live streams: each pass takes the "
                              "newest frame of every stream, whatever N)")
    stream_timeout: float = setting(30.0, group="Data", help="seconds to keep reconnecting a dropped stream before "
                                    "ending it (default: 30)")
    rtsp_transport: str = setting("auto", group="Data", choices=RTSP_TRANSPORTS,
                                  help="RTSP over tcp, udp, or auto (TCP, then UDP)")
    model: str = model_file_setting()
    patch_size: int | None = setting(None, group="Model", help="inference size, a positive multiple of 32 (default: "
                                     "the checkpoint's)")
    classes: int | None = setting(None, group="Model", help="only checked against the checkpoint")
    encoder: str | None = setting(None, group="Model", help="only checked against the checkpoint")
    tile: bool = tile_setting("Model")
    tile_overlap: float | None = tile_overlap_setting(None, "Model")
    tile_weighting: str | None = tile_weighting_setting(None, "Model")
    tile_batch: int | None = tile_batch_setting(None, "Model")
    conf_thres: float | None = setting(None, group="Model", help=CONF_THRES_HELP)
    device: str = device_setting()
    half: bool = half_setting()
    view_img: bool = setting(False, group="Runtime", help="show the overlay in a window (q or Esc quits)")
    verbose: bool = verbose_setting(also=", FFmpeg's and OpenCV's warnings")
    project: Path = project_setting(Path("runs") / "detect", "Output")
    name: str = name_setting("Output")
    save_dir: Path | None = save_dir_setting(": a second run adds its rows to its results.csv, never overwriting")
    resume_run: Path | None = setting(None, group="Output", metavar="DIR", help="finish a run that was cut short (a "
                                      "killed process, Ctrl-C): write into DIR, skipping the frames its results.csv "
                                      "lists (also under torchrun, with any number of processes)")
    save_video: bool = setting(False, group="Output", help="write an annotated MP4 per video or stream (.avi, MJPEG, "
                               "for an odd frame size)")
    nosave: bool = setting(False, group="Output", help="write no images, masks or videos (results.csv, and what "
                           "--save-json and --save-probs ask for, are still written)")
    save_json: bool = setting(False, group="Output", help="write polygons.jsonl beside results.csv: per image or "
                              "frame, every polygon of every class (class id and name, area in pixels, points and "
                              "holes in image coordinates)")
    save_coco: bool = setting(False, group="Output", help="write predictions.coco.json: one image per image or frame, "
                              "one annotation per region (polygon along the pixel edges, holes kept; area, bbox, "
                              "score = the mean probability of its class over it), to import into CVAT or Label "
                              "Studio as pre-annotations")
    coco_rle: bool = setting(False, group="Output", help="with --save-coco, compressed RLE instead of polygons")
    rank_uncertain: int | None = setting(
        None, group="Output", metavar="K", help="copy the K images or frames the model is least sure of (mean of 1 - "
        "the margin between the two likeliest classes' probabilities) with their predicted masks to to_label/, "
        "listed most uncertain first in to_label.csv")
    rank_gap: int = setting(30, group="Output", metavar="N", help="with --rank-uncertain, of a video's frames closer "
                            "than N frames only the most uncertain is taken (near duplicates; default 30)")
    save_probs: bool = setting(False, group="Output", help="write the class probabilities at the original size to "
                               "probs/: .npz (float16 HxWxC) for several classes, a 16-bit PNG (probability x 65535) "
                               "for one")


class Segmenter:
    """Each frame's Prediction at its own size, by a FullSizePredictor (segtoolkit.inference.full_size): its mask
    of class indices and, with `probabilities` (--save-probs), the class probabilities, both from the logits
    upsampled to the frame (the mask is decided after upsampling, as val.py and train.py count it). Models
    fitted into the patch see frame.image, which the loader letterboxed or stretched; crop-trained models (or
    --tile) see the whole frame (times the model's --scale) by sliding window. Several frames share their
    forward passes (FullSizePredictor.blocks_of_each, the path of one frame too)."""

    def __init__(self, full_size, probabilities=False):
        self.full_size, self.probabilities = full_size, probabilities

    def many(self, frames):
        """The Predictions of a list of Frames, in order. A tiled batch cut short by Ctrl-C or SIGTERM (between
        two passes of tiles) gives the frames finished before the cut; cli.Stopped when none was."""
        fitted = None if self.full_size.tiled else [(frame.image, frame.letterbox) for frame in frames]
        blocks = self.full_size.blocks_of_each([frame.original for frame in frames], fitted)
        predictions = []
        try:
            for frame, frame_blocks in zip(frames, blocks):
                predictions.append(Prediction(*collect(frame_blocks, frame.original.shape[:2],
                                                       self.full_size.conf_thres, self.probabilities)))
        except Stopped:
            if not predictions:
                raise
        return predictions


def infer(segmenter, frames):
    """(Predictions, inference milliseconds per frame: the batch's time over its frames) for a list of Frames;
    fewer Predictions than frames when Ctrl-C or SIGTERM cut a tiled batch short (Segmenter.many)."""
    began = time.perf_counter()
    predictions = segmenter.many(frames)
    return predictions, (time.perf_counter() - began) * 1000 / len(predictions)


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

    def __call__(self, frame, prediction, inference_ms, batch_size=1):
        """Write and print one frame (a Prediction; inference_ms: its batch's time per frame, of batch_size
        frames); returns the annotated RGB image."""
        mask = prediction.mask
        regions = find_regions(mask)
        largest = largest_area(regions)  # holes subtracted, as polygons.jsonl's areas
        mean = self.means.add("images" if frame.is_image else frame.path, largest)
        lines = [f"{inference_ms:.1f} ms ({1000 / max(inference_ms, 1e-6):.1f} FPS)",
                 f"largest polygon {largest:.0f} px", f"mean {mean:.0f} px"]
        annotated = draw_overlay(frame.original, mask, regions, self.colours, lines, self.class_names)
        self.writer.add(frame, mask, annotated, inference_ms, largest, prediction.probabilities, batch_size)
        self.file_number += frame.index == 0 and not frame.is_stream
        batch = f" (per frame of a batch of {batch_size})" if batch_size > 1 else ""
        print(f"{describe(frame, self.file_number, self.file_total)}: {inference_ms:.1f} ms{batch}, "
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




def check_flags(settings):
    """The flags, checked before anything is read or loaded."""
    check_run_name(settings.name)
    check_tile_settings(settings.tile_overlap, settings.tile_batch, settings.tile_weighting)
    check_conf_thres(settings.conf_thres)
    if settings.max_frames is not None and settings.max_frames < 1:
        raise UserError(f"--max-frames {settings.max_frames} must be at least 1")
    if settings.batch_size < 1:
        raise UserError(f"--batch-size {settings.batch_size} must be at least 1 (frames per forward pass)")
    if settings.patch_size is not None:  # 0 too: it must not fall back to the checkpoint's size unnoticed
        check_patch_size(settings.patch_size)
    if settings.resume_run is not None:
        if settings.save_dir is not None:
            raise UserError(f"--resume-run {settings.resume_run} is the folder written to; drop --save-dir")
        check_resume_run(settings.resume_run)
    sharded = distributed.launched_world_size() > 1
    for flag, given in (("--view-img", settings.view_img), ("--save-coco", settings.save_coco),
                        ("--rank-uncertain", settings.rank_uncertain is not None)):
        if given and (sharded or settings.resume_run is not None):
            raise UserError(f"{flag} covers a whole run in one process; run without torchrun and --resume-run, or "
                            f"drop {flag}")


WAIT_MINUTES = 7 * 24 * 60


def run(**flags):
    """detect.py as a function: `flags` are DetectSettings' fields (model and source required, the rest as the
    command line's defaults). Returns segment(DetectSettings(**flags))."""
    return segment(DetectSettings(**flags))


def segment(settings):
    """Segment every frame of settings.source; returns a summary dict (frames, save_dir, interrupted, quit).

    Results go to save_dir as is, or to the first free one of project/name, name2, name3...; save_dir is
    None in the summary when no frame was segmented (nothing was written then).
    """
    check_flags(settings)
    # a process waits at the end for the others, which may have hours of video left
    process, device = distributed.setup(settings.device, timeout_minutes=WAIT_MINUTES)
    distributed.share_cores(device)
    files, streams = resolve_sources(settings.source)  # missing paths fail here, before the model loads
    save_dir = Path(settings.save_dir or settings.resume_run) if settings.save_dir or settings.resume_run else None
    check_output_folder(save_dir, settings.project)
    check_ranking(settings.rank_uncertain, settings.rank_gap, save_dir)
    check_coco_output(settings.save_coco, settings.coco_rle, save_dir)
    if settings.view_img:
        check_display()
    meta, predictor, checkpoint = open_model(settings.model, device, settings.half)
    check_model_flags(meta, settings.classes, settings.encoder, settings.model)
    tiled = FullSizePredictor.sees_tiles(meta, settings.tile)  # before the predictor: the stop message says it
    stop = StopRequest("stopping this frame at its next batch of tiles, then closing outputs" if tiled else
                       "finishing this frame, then closing outputs" if settings.batch_size == 1 else
                       "finishing this batch of frames, then closing outputs")
    # stop: Ctrl-C or SIGTERM abandons a tiled frame between two batches of tiles (cli.Stopped)
    overlap, batch, weighting = run_config(checkpoint).tile_settings(settings.tile_overlap, settings.tile_batch,
                                                                     settings.tile_weighting)
    full_size = FullSizePredictor.from_meta(predictor, meta, tile=settings.tile, patch_size=settings.patch_size,
                                            overlap=overlap, tile_batch=batch, weighting=weighting,
                                            conf_thres=settings.conf_thres, stop=stop.event, progress=True)
    rank = settings.rank_uncertain
    scores = settings.save_probs or settings.save_coco or rank is not None
    segmenter = Segmenter(full_size, probabilities=scores)
    merges = process.distributed or settings.resume_run is not None  # rank 0 merges parts, or sorts the resumed
    part = (lambda name: part_name(name, process.rank)) if process.distributed else (lambda name: name)
    exports = FrameExports(meta["class_names"], meta["classes"], settings.save_json, settings.save_probs,
                           coco=CocoWriter(meta["class_names"], settings.coco_rle) if settings.save_coco else None,
                           ranking=UncertainFrames(rank, settings.rank_gap, output_colours(meta) if meta["classes"] > 1
                                                   else None) if rank is not None else None,
                           polygons_name=part(POLYGONS_FILE))
    if merges:  # one folder for every process: rank 0's
        save_dir = Path(distributed.broadcast_object(str(shared_run_dir(save_dir, settings)) if process.is_main
                                                     else None))
    writer, outputs = make_outputs(meta, save_dir or Path(settings.project) / settings.name, not save_dir,
                                   settings.save_video and not settings.nosave, not settings.nosave, files, exports,
                                   results_name=part(RESULTS_FILE))
    if merges:
        check_merged_columns(writer, process)
    order = source_order(files, streams)
    finished = resumed_frames(writer, order, process) if settings.resume_run is not None else Finished()
    files, streams = my_sources(finished.left(files), streams, process)
    outputs.file_total = len(files)
    with stop:
        groups = iterate_groups(files, streams, None if full_size.tiled else full_size.patch_size, meta["mean"],
                                meta["std"], settings.stream_timeout, settings.rtsp_transport, stop.event,
                                prefetch=0 if settings.view_img else max(2, settings.batch_size),
                                stretch=full_size.resize == "stretch", bit_depth=meta.get("bit_depth"),
                                batch_size=settings.batch_size, limit=settings.max_frames, skip=finished.skips)
        started = time.perf_counter()
        count, total_ms, user_quit = segment_frames(groups, segmenter, settings.max_frames, outputs, writer,
                                                    Viewer() if settings.view_img else None, stop, settings.batch_size)
    why = " (interrupted)" if stop.is_set() and not user_quit else " (quit)" if user_quit else ""
    save_dir = writer.save_dir if writer.opened or merges else None
    print_summary(count, total_ms, time.perf_counter() - started, why, save_dir)
    if merges:
        finish_parts(save_dir, order, process, stop.is_set(), settings.resume_run is not None)
    return {"frames": count, "save_dir": save_dir, "interrupted": stop.is_set() and not user_quit,
            "quit": user_quit}


def shared_run_dir(save_dir, settings):
    """Rank 0: the folder every process writes to, created now (--save-dir or --resume-run as is, else the
    first free one of project/name, name2...)."""
    if save_dir is None:
        return make_run_dir(Path(settings.project) / settings.name)
    save_dir.mkdir(parents=True, exist_ok=True)
    return save_dir


def check_merged_columns(writer, process):
    """The results.csv that rank 0 merges into must take the parts' columns: checked by rank 0 before any
    process writes, and refused by every one (segtoolkit.outputs.detections.ResultWriter.check_existing)."""
    problem = None
    if process.is_main:
        try:
            writer.check_existing(RESULTS_FILE)
        except UserError as error:  # raised below by every process, not only this one
            problem = str(error)
    problem = distributed.broadcast_object(problem)
    if problem:
        raise UserError(problem)


def resumed_frames(writer, order, process):
    """--resume-run: rank 0 merges what the run left (parts of processes that never merged, a row cut off)
    into results.csv, then every process reads the frames it lists (Finished); the files its rows name keep
    their names, a file no row names is a cut-short frame's and is written again."""
    if process.is_main:
        merge_parts(writer.save_dir, order, resumed=True)
    distributed.barrier()
    finished = Finished.read(writer.save_dir)
    writer.listed = finished.files
    if process.is_main:
        print(f"resuming {writer.save_dir}: {len(finished.frames)} frame(s) done already", flush=True)
    return finished


def my_sources(files, streams, process):
    """(files, streams) of this process (segtoolkit.outputs.shards.share): all of them alone."""
    mine = set(share(files + streams, process.rank, process.world_size))
    return [path for path in files if path in mine], [stream for stream in streams if stream in mine]


def finish_parts(save_dir, order, process, stopped, resumed):
    """Once every process is done, rank 0 merges the parts (and sorts a resumed run) into results.csv and
    polygons.jsonl; a stopped process leaves its part for --resume-run."""
    if stopped:
        print(f"the rows so far are in {save_dir}; finish the run with --resume-run {save_dir}", file=sys.stderr,
              flush=True)
        return
    distributed.barrier()
    if process.is_main:
        merged = merge_parts(save_dir, order, resumed)
        print(f"results.csv of {process.world_size} process(es): {merged} row(s) merged in source order, in "
              f"{save_dir}", flush=True)


def segment_frames(groups, segmenter, max_frames, outputs, writer, viewer, stop, batch_size=1):
    """The loop, one forward pass per group of frames (dataloaders.iterate_groups: up to `batch_size` file frames,
    never past max_frames, or the newest frame of each live stream): (frames segmented, total inference ms, whether
    the user quit the window). The frames are then written one by one. Without a window, everything after the
    forward pass runs in a finisher thread beside the model (decoding is read ahead by `groups`); a window must be
    drawn from this thread, so then they run in turn. Every output is closed, and every frame inferred written (but
    those of a group after the one the window was quit on), whatever ends the loop."""
    finisher = None if viewer else Finisher(outputs, depth=max(2, batch_size))
    count, total_ms, user_quit = 0, 0.0, False
    try:
        for group in groups:
            group = group[:max_frames - count] if max_frames else group  # live frames past the limit: not taken
            try:
                predictions, inference_ms = infer(segmenter, group)
            except Stopped:  # a tiled batch cut short by Ctrl-C or SIGTERM before a frame was done: none written
                break
            for frame, prediction in zip(group, predictions):
                count, total_ms = count + 1, total_ms + inference_ms
                if finisher is not None:
                    finisher.submit(frame, prediction, inference_ms, len(group))
                elif not viewer.show(frame, outputs(frame, prediction, inference_ms, len(group)), stop.event):
                    user_quit = True
                    break
            if user_quit or len(predictions) < len(group) or (max_frames and count >= max_frames) or stop.is_set():
                break
    finally:
        try:
            groups.close()
            if finisher is not None:
                finisher.close()  # every frame inferred is written before the files are closed
        finally:
            writer.close()
            if viewer is not None:
                viewer.close()
    return count, total_ms, user_quit


def make_outputs(meta, save_dir, increment, save_video, save_images, files, exports=None, results_name=RESULTS_FILE):
    """(ResultWriter, FrameOutputs) for the run. The folder is created with the first frame, so a stream that
    never delivers one leaves nothing behind; a results.csv there that cannot be appended to fails now.
    Masks, overlay and legend share the classes' colours: the training ones of --mask-colors, if given."""
    names = meta.get("class_names") or [f"class_{i}" for i in range(max(2, meta["classes"]))]
    class_names = names if meta["classes"] > 1 else None
    colours = output_colours(meta)
    writer = ResultWriter(save_dir, class_names, save_images=save_images, save_video=save_video, increment=increment,
                          sources=files, colours=colours, exports=exports, results_name=results_name)
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
    return build_parser().parse_args(argv)


def build_parser():
    return settings_parser(DetectSettings, __doc__)  # the flags are DetectSettings' fields


def detect_from_args(args):
    """segment() with the command line's settings; returns the exit code."""
    if not args.verbose:  # FFmpeg and OpenCV print a warning per failed RTSP transport or reconnect attempt
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        return EXIT_STOPPED if segment(settings_from(DetectSettings, args))["interrupted"] else EXIT_OK
    finally:
        distributed.teardown()


def main(args):
    """detect.py with parsed arguments; returns the exit code (an error is one line: segtoolkit.cli)."""
    return run_command(detect_from_args, args)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
