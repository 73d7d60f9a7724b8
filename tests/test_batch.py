"""detect.py and val.py --batch-size N: the frames of files N per forward pass, the outputs those of --batch-size 1.

What may differ: results.csv's inference_ms (the batch's time per frame) and batch_size; the annotated images and
videos, which print that time. Under 256 px PyTorch convolves a single image's small inputs with its own kernel and
a batch's with oneDNN (--save-probs one float16 step apart there); from 256 px both take oneDNN, byte for byte.
"""

import json
import threading

import numpy as np
import pytest
import torch

import detect
from dataloaders import Frame, iterate_batches
from helpers.detect_runs import cli, read_rows
from segtoolkit.cli import StopRequest, Stopped
from segtoolkit.data.masks import read_mask
from segtoolkit.inference.full_size import FullSizePredictor
from segtoolkit.models.checkpoints import save_checkpoint
from segtoolkit.models.factory import build_model, model_meta
from test_val import results, run_val

TIMING = ("inference_ms", "batch_size")
FLOAT16_STEP = 32  # one float16 step below 1, in --save-probs' 16-bit PNG (probability x 65535)
MODELS = {"letterbox": [], "stretch": [], "tiled": ["--tile", "--tile-batch", "3"]}


@pytest.fixture(scope="module")
def stretch_checkpoint(tmp_path_factory):
    """An untrained binary Unet/resnet18 trained (as its meta says) on stretched images, patch 64."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("stretch") / "stretch.pth.tar"
    save_checkpoint(path, build_model("Unet", "resnet18", 1), model_meta("Unet", "resnet18", 1, 64,
                                                                         input_mode="stretch"))
    return path


@pytest.fixture(scope="module")
def sources(easy_held_out, clip, tmp_path_factory):
    """A source list: 8 images of several sizes (72-210 px, wide and tall), then a 20-frame 176x96 video."""
    listed = tmp_path_factory.mktemp("batch-sources") / "sources.txt"
    images = sorted((easy_held_out / "imgs").glob("*.png"))
    listed.write_text("".join(f"{path}\n" for path in [*images, clip]))
    return listed


def detect_run(capsys, folder, model, source, batch_size, *flags):
    """detect.py in this process with --save-json --save-probs: (results.csv rows, console lines)."""
    code, out, err = cli(capsys, "--model", model, "--source", source, "--save-dir", folder, "--batch-size",
                         batch_size, "--save-json", "--save-probs", *flags)
    assert code == 0, err[-2000:]
    return read_rows(folder), out.splitlines()


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # torch's, on switching oneDNN
@pytest.mark.parametrize("kind", list(MODELS))
def test_batch_of_3_writes_what_batch_of_1_writes(kind, untrained_checkpoint, stretch_checkpoint, sources, tmp_path,
                                                  capsys):
    """Images of several sizes, then a video, cut by --max-frames mid-batch (26 = 8 x 3 + 2): the same rows in the
    same order (timing aside), masks and --save-probs byte for byte, polygons.jsonl line for line, the same files,
    for a letterbox model, a stretch model and --tile (3 tiles a pass, across frames). oneDNN is off here: its
    convolutions pick a kernel by batch shape, and another kernel's last bits would flip a pixel whose logit is that
    close to the boundary (the next test); PyTorch's own convolutions compute each image of a batch as alone."""
    model = stretch_checkpoint if kind == "stretch" else untrained_checkpoint
    flags = [*MODELS[kind], "--max-frames", "26", "--save-video"]
    with torch.backends.mkldnn.flags(enabled=False):
        one, one_lines = detect_run(capsys, tmp_path / "one", model, sources, 1, *flags)
        three, three_lines = detect_run(capsys, tmp_path / "three", model, sources, 3, *flags)
    assert len(one) == len(three) == 26  # exact, also mid-batch
    assert [row["batch_size"] for row in three] == ["3"] * 24 + ["2"] * 2
    assert {row["batch_size"] for row in one} == {"1"}
    assert [{k: v for k, v in row.items() if k not in TIMING} for row in one] == \
        [{k: v for k, v in row.items() if k not in TIMING} for row in three]
    assert sum(row["video_file"] != "" for row in three) == 18 and sum(row["mask_file"] != "" for row in three) == 8
    written = sorted(path.relative_to(tmp_path / "one") for path in (tmp_path / "one").rglob("*"))
    assert written == sorted(path.relative_to(tmp_path / "three") for path in (tmp_path / "three").rglob("*"))
    for name in written:
        if (name.parts[0] in ("masks", "probs") and len(name.parts) == 2) or name.name == "polygons.jsonl":
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "three" / name).read_bytes(), name
    assert len((tmp_path / "one" / "polygons.jsonl").read_text().splitlines()) == 26
    assert len(list((tmp_path / "one" / "probs").iterdir())) == 26 and (tmp_path / "one" / "clip.mp4").is_file()
    # the console still has a line per frame, in order; the batch says it is one
    per_frame = [line for line in three_lines if line.startswith(("image ", "video "))]
    assert len(per_frame) == 26 and all("ms (per frame of a batch of 3)" in line for line in per_frame[:24])
    assert [line.split(":")[0] for line in per_frame] == \
        [line.split(":")[0] for line in one_lines if line.startswith(("image ", "video "))]


@pytest.fixture(scope="module")
def checkpoints_256(tmp_path_factory):
    """Untrained binary Unet/resnet18 checkpoints at patch 256: letterbox and stretch."""
    folder = tmp_path_factory.mktemp("patch-256")
    for kind in ("letterbox", "stretch"):
        torch.manual_seed(2)
        save_checkpoint(folder / f"{kind}.pth.tar", build_model("Unet", "resnet18", 1),
                        model_meta("Unet", "resnet18", 1, 256, input_mode=kind))
    return folder


@pytest.mark.parametrize("kind", list(MODELS))
def test_at_patch_256_the_default_backend_writes_batch_1s_bytes(kind, checkpoints_256, easy_held_out, tmp_path,
                                                                capsys):
    """PyTorch's default backend (oneDNN on) at patch 256, where every convolution of a single image takes oneDNN
    as a batch's does: masks, --save-probs and polygons.jsonl byte for byte, the rows equal but for timing."""
    model = checkpoints_256 / f"{'stretch' if kind == 'stretch' else 'letterbox'}.pth.tar"
    assert torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    one, _ = detect_run(capsys, tmp_path / "one", model, easy_held_out / "imgs", 1, *MODELS[kind])
    three, _ = detect_run(capsys, tmp_path / "three", model, easy_held_out / "imgs", 3, *MODELS[kind])
    assert len(one) == len(three) == 8
    assert [{k: v for k, v in row.items() if k not in TIMING} for row in one] == \
        [{k: v for k, v in row.items() if k not in TIMING} for row in three]
    compared = 0
    for name in ("masks", "probs"):
        for path in sorted((tmp_path / "one" / name).glob("*.png")):
            assert path.read_bytes() == (tmp_path / "three" / name / path.name).read_bytes(), path
            compared += 1
    assert compared == 16
    assert (tmp_path / "one" / "polygons.jsonl").read_bytes() == (tmp_path / "three" / "polygons.jsonl").read_bytes()


@pytest.mark.parametrize("kind", list(MODELS))
def test_with_onednn_only_ties_to_the_last_bits_differ(kind, untrained_checkpoint, stretch_checkpoint, easy_held_out,
                                                       tmp_path, capsys):
    """The default backend at patch 64, where a single image's deep layers take PyTorch's own convolution and a
    batch's oneDNN: masks equal pixel for pixel but where the probability is within a float16 step of the boundary
    (0.5), and the probabilities within one float16 step."""
    model = stretch_checkpoint if kind == "stretch" else untrained_checkpoint
    detect_run(capsys, tmp_path / "one", model, easy_held_out / "imgs", 1, *MODELS[kind])
    detect_run(capsys, tmp_path / "three", model, easy_held_out / "imgs", 3, *MODELS[kind])
    ties = 0
    for path in sorted((tmp_path / "one" / "masks").glob("*.png")):
        first, second = (read_mask(folder / "masks" / path.name) for folder in (tmp_path / "one", tmp_path / "three"))
        probs = [read_mask(folder / "probs" / path.name).astype(int) for folder in (tmp_path / "one",
                                                                                    tmp_path / "three")]
        assert np.abs(probs[0] - probs[1]).max() <= FLOAT16_STEP, path.name
        differ = first != second
        assert (np.abs(probs[0][differ] - 65535 / 2) <= FLOAT16_STEP).all(), path.name
        ties += int(differ.sum())
    assert ties <= 8  # of 8 images' 130,000 pixels


def test_batch_size_0_is_a_one_line_error(untrained_checkpoint, sources, tmp_path, capsys):
    code, out, err = cli(capsys, "--model", untrained_checkpoint, "--source", sources, "--batch-size", "0",
                         "--save-dir", tmp_path / "out")
    assert code == 2 and err == "error: --batch-size 0 must be at least 1 (frames per forward pass)\n", err
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
@pytest.mark.parametrize("tile", [False, True])
def test_val_batch_of_4_scores_what_batch_of_1_scores(tile, untrained_checkpoint, easy_held_out, tmp_path, capsys):
    """val.py over 8 images of several sizes (oneDNN off, as above): val_results.json and per_image.csv of
    --batch-size 4 equal those of 1, the loss too when tiled (a mean over images); whole images' loss is train.py's
    batch mean over the batch's labelled pixels (the letterbox padding is not), so it depends on the batch."""
    scored = {}
    for batch in (1, 4):
        with torch.backends.mkldnn.flags(enabled=False):
            code, _, err, folder = run_val(capsys, tmp_path / f"b{batch}", "--model", untrained_checkpoint, "--data",
                                           easy_held_out, "--batch-size", batch, *(["--tile"] if tile else []))
        assert code == 0, err[-2000:]
        scored[batch] = results(folder), (folder / "per_image.csv").read_text()
    (one, one_images), (four, four_images) = scored[1], scored[4]
    assert four["settings"].pop("batch_size") == 4 and one["settings"].pop("batch_size") == 1
    if not tile:
        assert four.pop("val/loss") != one.pop("val/loss")
    assert one == four and one_images == four_images and sum(map(sum, one["confusion_matrix"])) > 0


# ---------------------------------------------------------------- the pieces


def fake_frame(name, stream=False, shape=(8, 8)):
    return Frame(name, None, np.zeros((*shape, 3), np.uint8), object() if stream else None, 0, None if stream else 1,
                 None)


def test_iterate_batches_groups_files_keeps_streams_alone_and_reads_nothing_past_the_limit():
    read = []

    def frames(names):
        for name in names:
            read.append(name)
            yield fake_frame(name, stream=name.startswith("s"))

    sizes = [[frame.path for frame in batch] for batch in iterate_batches(frames([f"f{i}" for i in range(10)]), 3, 7)]
    assert sizes == [["f0", "f1", "f2"], ["f3", "f4", "f5"], ["f6"]] and read == [f"f{i}" for i in range(7)]
    mixed = iterate_batches(frames(["f0", "f1", "s0", "s1", "f2"]), 3)
    assert [[frame.path for frame in batch] for batch in mixed] == [["f0", "f1"], ["s0"], ["s1"], ["f2"]]
    assert [len(batch) for batch in iterate_batches(frames([f"f{i}" for i in range(5)]), 8)] == [5]


def test_a_stop_between_tile_passes_keeps_the_frames_of_the_batch_finished_before_it():
    """Ctrl-C or SIGTERM mid-batch (tiled): the frames whose tiles were all done come back, the rest do not; a
    stop before any frame was done raises Stopped, as for one frame."""
    stop, passes = threading.Event(), []

    def predictor(batch):
        passes.append(len(batch))
        if len(passes) == 1:
            stop.set()  # as the signal handler would, during the first pass
        return torch.zeros(len(batch), 1, 64, 64)

    full_size = FullSizePredictor(predictor, 64, resize="tile", tile_batch=2, stop=stop)
    frames = [fake_frame(f"f{i}", shape=(40, 60)) for i in range(3)]  # one tile each: passes of frames 0-1, then 2
    segmenter = detect.Segmenter(full_size)
    predictions = segmenter.many(frames)
    assert len(predictions) == 2 and passes == [2]  # the second pass never ran
    assert all(prediction.mask.shape == (40, 60) for prediction in predictions)
    with pytest.raises(Stopped):
        segmenter.many(frames[2:])
    stop.clear()
    assert len(segmenter.many(frames)) == 3 and passes == [2, 2, 1]


def test_the_window_shows_every_frame_of_a_batch_in_order_and_quitting_stops_mid_batch():
    """--view-img with --batch-size 3: each frame is drawn and shown in turn; q on the 5th frame ends the run
    there, the 6th (inferred in the same batch) never shown."""
    shown, written = [], []

    class Viewer:
        def show(self, frame, annotated, event):
            shown.append(frame.path)
            return frame.path != "f4"

        def close(self):
            pass

    class Writer:
        def close(self):
            pass

    class Segmenter:
        def many(self, frames):
            return [frame.path for frame in frames]

    def outputs(frame, prediction, inference_ms, batch_size):
        written.append((frame.path, prediction, batch_size))

    groups = iterate_batches((fake_frame(f"f{i}") for i in range(9)), 3)
    count, _, quit_ = detect.segment_frames(groups, Segmenter(), None, outputs, Writer(), Viewer(),
                                            StopRequest("stopping"), batch_size=3)
    assert shown == ["f0", "f1", "f2", "f3", "f4"] and quit_ and count == 5
    assert written == [(f"f{i}", f"f{i}", 3) for i in range(5)]


def test_a_batch_larger_than_the_folder_is_one_pass_and_json_keeps_the_folder_order(untrained_checkpoint,
                                                                                   easy_held_out, tmp_path, capsys):
    """--batch-size 16 on 8 images: one batch of 8, one polygons.jsonl line per image in the rows' order."""
    rows, _ = detect_run(capsys, tmp_path / "out", untrained_checkpoint, easy_held_out / "imgs", 16)
    lines = [json.loads(line) for line in (tmp_path / "out" / "polygons.jsonl").read_text().splitlines()]
    assert [row["batch_size"] for row in rows] == ["8"] * 8
    assert [line["source"] for line in lines] == [row["source"] for row in rows] == \
        [str(path) for path in sorted((easy_held_out / "imgs").glob("*.png"))]
