"""What a new user's files and flags broke (issue 23), each case with the test that keeps it fixed.

Flags as typed from other tools, paths with ~, folders where files belong, class names that collide with
results.csv columns, augmentation files with their own normalization, 16-bit masks, and a tiled frame that
could not be stopped. tests/README.md ("New users' files and flags") lists every case and its message.
"""

import json
import re
import signal
import sys
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2

import detect
import export
import train
import val
from segtoolkit.training.run_log import NullLogger
from segtoolkit.inference.tiling import Tiler
from helpers.servers import wait_until
from helpers.training import TINY, make_trainer, tiny_sets
from dataloaders import Frame
from helpers.detect_runs import detect_process, read_rows, wait_for_stderr
from make_sample_data import write_dataset
from segtoolkit.outputs.detections import ResultWriter
from segtoolkit.outputs.frame_exports import FrameExports
from segtoolkit.data.masks import binary_mask, read_mask
from segtoolkit.data.classes import class_colours
from segtoolkit.data.polygons import find_regions, largest_area, polygon_records
from segtoolkit.inference.probabilities import Prediction
from segtoolkit.data.augment import load_augmentation
from segtoolkit.models.checkpoints import load_checkpoint
from segtoolkit.training.config import RunConfig
from segtoolkit.errors import UserError
from segtoolkit.models.factory import build_model, model_from_checkpoint, model_meta
from segtoolkit.export.onnx import export_onnx

REPO = Path(__file__).resolve().parents[1]


def one_line_error(capsys, parse, argv):
    """(exit code, stderr) of a parser refusing argv; the message must be a single line."""
    with pytest.raises(SystemExit) as stopped:
        parse(argv)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return stopped.value.code, err.strip()


# ---------------------------------------------------------------- the command line (items 11, 12)


@pytest.mark.parametrize("script, argv, expected", [
    (train, ["--imgsz", "640"], "error: --imgsz is not an option of train.py; the input size is --patch-size"),
    (train, ["--img", "640"], "the input size is --patch-size"),  # argparse alone took it for --img-dir
    (train, ["--weights", "yolov8n.pt"], "the checkpoint to start from is --load-model FILE"),
    (train, ["--resume"], "a run resumes with --load-model checkpoints/<run>/checkpoint.pth.tar"),
    (train, ["--cfg", "unet.yaml"], "the architecture is --model (Unet, FPN...) and the encoder --encoder"),
    (detect, ["--weights", "best.pt", "--source", "x"], "error: --weights is not an option of detect.py; the model "
                                                         "file is --model FILE"),  # before '--model is required'
    (val, ["--cfg", "x.yaml"], "the model file is --model FILE"),
    (export, ["--modle", "x.pth.tar"], "error: --modle is not an option of export.py; did you mean --model?"),
    (train, ["--epochs", "1.5"], "error: --epochs 1.5 must be a whole number"),
    (detect, ["--model", "m", "--source", "s", "--conf-thres", "high"], "error: --conf-thres high must be a number"),
    (train, ["stray"], "error: unexpected argument 'stray': every option is --name VALUE"),
])
def test_unknown_foreign_and_malformed_flags_are_one_line_naming_ours(capsys, monkeypatch, script, argv, expected):
    monkeypatch.setattr(sys, "argv", [f"{script.__name__}.py"])
    code, err = one_line_error(capsys, script.parse_args, argv)
    assert code == 2 and expected in err and err.startswith("error: ")


def test_tilde_is_expanded_in_every_path_flag(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    args = train.parse_args(["--data-dir=~/data", "--mask-colors=~/colours.csv", "--project", "~/runs",
                             "--load-model=~/ckpt.pth.tar", "--augment=~/aug.yaml", "--encoder-weights=~/e.pth"])
    assert (args.data_dir, args.mask_colors, args.project, args.load_model) == tuple(map(str, (  # RunConfig's str
        tmp_path / "data", tmp_path / "colours.csv", tmp_path / "runs", tmp_path / "ckpt.pth.tar")))
    assert (args.augment, args.encoder_weights) == (str(tmp_path / "aug.yaml"), str(tmp_path / "e.pth"))
    assert {"data_dir", "mask_colors", "project", "load_model"} <= args.given
    args = val.parse_args(["--model=~/m.onnx", "--data=~/holdout", "--save-dir=~/out"])
    assert (args.model, args.data, args.save_dir) == (str(tmp_path / "m.onnx"), str(tmp_path / "holdout"),
                                                      tmp_path / "out")
    args = detect.parse_args(["--model=~/m.pth.tar", "--source=~/imgs/*.png", "--project=~/runs"])
    assert (args.model, args.source, args.project) == (str(tmp_path / "m.pth.tar"), str(tmp_path / "imgs/*.png"),
                                                       tmp_path / "runs")
    args = export.parse_args(["--model=~/m.pth.tar", "--output=~/m.onnx", "--check-images=~/imgs"])
    assert (args.model, args.output, args.check_images) == (tmp_path / "m.pth.tar", str(tmp_path / "m.onnx"),
                                                            str(tmp_path / "imgs"))
    assert train.parse_args(["--name", "exp~1"]).name == "exp~1"  # only a leading ~ is a home folder


# ---------------------------------------------------------------- files and folders (items 3, 10, 13)



def train_error(capsys, argv):
    """(exit code, stderr) of train.py in this process; an error must be one line."""
    code = train.main(train.parse_args(argv))
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return code, err.strip()


@pytest.mark.parametrize("flag, message", [
    ("--mask-colors", "error: --mask-colors {dir}: is a folder, not a file; give a CSV file"),
    ("--train-list", "error: split file {dir} is a folder, not a file; give the file (one image path per line)"),
    ("--augment", "error: --augment {dir}: is a folder, not a file; give a preset"),
    ("--encoder-weights", "error: --encoder-weights {dir}: is a folder, not a file; give 'imagenet', 'none'"),
])
def test_a_folder_given_for_a_file_is_called_a_folder(capsys, tiny_data, tmp_path, run_name, flag, message):
    folder = tmp_path / "given.yaml" if flag == "--augment" else tmp_path / "given.pth" \
        if flag == "--encoder-weights" else tmp_path / "given"
    folder.mkdir()
    flags = ["--data-dir", str(tiny_data), "--val-list", "val.txt", "--name", run_name, "--project", str(tmp_path)]
    flags += [] if flag == "--train-list" else ["--train-list", "train.txt"]
    code, err = train_error(capsys, [*TINY, *flags, flag, str(folder)])
    assert code == 2 and err.startswith(message.format(dir=folder)), err


def test_a_file_given_as_an_output_folder_is_one_line_naming_its_flag(capsys, tiny_data, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    for project in (taken, taken / "sub"):  # FileExistsError and NotADirectoryError tracebacks before
        code, err = train_error(capsys, [*TINY, "--data-dir", str(tiny_data), "--train-list", "train.txt",
                                         "--val-list", "val.txt", "--project", str(project)])
        assert code == 2 and err == f"error: --project {project}: {taken} is a file, not a folder; give another " \
                                    f"--project"
    code = export.main(export.parse_args(["--model", str(tmp_path / "m.pth.tar"), "--output",
                                          str(taken / "x.onnx")]))
    assert code == 2 and capsys.readouterr().err == f"error: --output {taken / 'x.onnx'}: {taken} is a file, not a " \
                                                    f"folder; give another --output\n"
    code = detect.main(detect.parse_args(["--model", str(tmp_path / "m.pth.tar"), "--source", str(tiny_data / "imgs"),
                                          "--project", str(taken)]))
    assert code == 2 and capsys.readouterr().err == f"error: --project {taken}: {taken} is a file, not a folder; " \
                                                    f"give another --project\n"  # it named --save-dir
    code = val.main(val.parse_args(["--model", str(tmp_path / "m.pth.tar"), "--project", str(taken / "sub")]))
    assert code == 2 and capsys.readouterr().err.startswith(f"error: --project {taken / 'sub'}: {taken} is a file")
    assert taken.read_text() == "a file"


# ---------------------------------------------------------------- what is printed (item 15)


def test_start_of_run_counts_in_words_and_prints_every_class_weight_alike(capsys, tmp_path):
    data = tmp_path / "data"
    write_dataset(data, 8, seed=2, classes=3)
    code = train.main(train.parse_args([*TINY, "--data-dir", str(data), "--search-files", "--val-split", "0.25",
                                        "--classes", "3", "--class-weights", "auto", "--batch-size", "3",
                                        "--project", str(tmp_path / "runs")]))
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    assert "1 epoch x 2 steps at patch 64" in out  # "1 epochs x 2 steps"
    line = next(line for line in out.splitlines() if line.startswith("class weights"))
    weights = line.split(": ", 1)[1].split(", ")
    assert len(weights) == 3 and all(re.fullmatch(r"class_\d \d+\.\d{4}", weight) for weight in weights), line
    assert " 1.0000" in line  # the median class: it was a bare "1" beside "0.0078"


def test_int8_summary_leaves_out_the_checkpoints_half_check(tmp_path, monkeypatch):
    """The PyTorch bfloat16 check says how detect.py --half on the checkpoint agrees with float32: nothing about
    the int8 file, and the --int8 summary reported it as if it were (on CPUs with native bfloat16)."""
    monkeypatch.setattr(export, "native_bfloat16", lambda: True)  # the check runs on any CPU, only slower
    model = build_model("Unet", "resnet18", 1).eval()
    meta = export_onnx(model, model_meta("Unet", "resnet18", 1, 64), tmp_path / "m.onnx")
    images = [str(path) for path in sorted((REPO / "data" / "sample" / "imgs").iterdir())[:2]]
    for int8 in (False, True):
        check = export.check_file(model, tmp_path / "m.onnx", meta, "onnx", int8, images, "2 images")
        summary, _ = export.describe_check(check, "onnx", int8)
        assert ("the checkpoint with --half (PyTorch bfloat16)" in summary) == (not int8), summary


def test_check_images_that_do_not_exist_ask_for_images(capsys, tmp_path):
    code = export.main(export.parse_args(["--model", str(tmp_path / "m.pth.tar"), "--check-images",
                                          str(tmp_path / "nope")]))
    err = capsys.readouterr().err
    assert code == 2 and err == (f"error: --check-images {tmp_path / 'nope'}: no such file or folder; give images (a "
                                 f"folder, glob or .txt list of the training images, for example data/sample/imgs)\n")


def test_val_help_names_every_model_format(capsys):
    with pytest.raises(SystemExit):
        val.parse_args(["--help"])
    model_help = " ".join(capsys.readouterr().out.split("  --model MODEL", 1)[1].split("--data")[0].split())
    assert ".pth.tar" in model_help and ".onnx" in model_help and ".xml" in model_help


# ---------------------------------------------------------------- training runs (items 5, 7, 8, 9)


def test_no_best_checkpoint_after_divergence_blames_the_loss_not_the_masks(capsys, tiny_data, tmp_path):
    code = train.main(train.parse_args([*TINY, "--data-dir", str(tiny_data), "--train-list", "train.txt",
                                        "--val-list", "val.txt", "--lr", "1e30", "--project", str(tmp_path)]))
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("no best checkpoint: none of the 1 evaluation(s) could count as the best (1 had a "
                           "non-finite validation loss (the weights diverged: lower --lr))"), last
    assert "no foreground" not in out  # the masks hold foreground: it used to blame them


def test_best_checkpoint_holds_weights_and_description_only_and_still_fine_tunes(capsys, tiny_data, tmp_path,
                                                                                  two_epoch_run):
    run_dir = two_epoch_run
    best, last = load_checkpoint(run_dir / "best-checkpoint.pth.tar"), load_checkpoint(run_dir / "checkpoint.pth.tar")
    assert not {"optimizer", "scheduler", "scaler", "early_stopping"} & best.keys()  # 172 MB for 14.3M parameters
    assert {"optimizer", "scheduler", "scaler", "early_stopping"} <= last.keys()
    assert best["kind"] == "best" and best["data"] == last["data"] and "class_weights" in best  # what val.py reads
    weights = sum(tensor.numel() * tensor.element_size() for tensor in best["model"].values())
    sizes = {name: (run_dir / name).stat().st_size for name in ("best-checkpoint.pth.tar", "checkpoint.pth.tar")}
    assert sizes["best-checkpoint.pth.tar"] < 1.5 * weights < sizes["checkpoint.pth.tar"]
    capsys.readouterr()
    code = train.main(train.parse_args([*TINY, "--load-model", str(run_dir / "best-checkpoint.pth.tar"),
                                        "--project", str(tmp_path)]))
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    assert (f"fine-tuning from {run_dir / 'best-checkpoint.pth.tar'} (a best checkpoint, epoch " in out
            and f"; its run resumes from {run_dir / 'checkpoint.pth.tar'}):" in out), out
    trainer = train.UnetTraining(model_from_checkpoint(best), *tiny_sets(tiny_data), config=RunConfig(
        **{**best["config"], "workers": 0}), run_dir=tmp_path, meta=best["meta"])
    with pytest.raises(UserError, match=r"best-checkpoint.pth.tar holds weights and their description only \(a best "
                                        r"checkpoint, or plain weights\), not the optimizer state a resume continues; "
                                        r"resume from the run's checkpoint.pth.tar"):
        trainer.load_state(best, run_dir / "best-checkpoint.pth.tar")


class RecordingLogger(NullLogger):
    def __init__(self):
        self.rows = []

    def log(self, metrics, step=None):
        self.rows.append(metrics)


def test_an_epoch_interrupted_and_resumed_reports_the_training_metrics_of_all_its_steps(tiny_data, tmp_path):
    """Stopped after 2 of its 4 steps and resumed, the epoch's row counts all 4 steps (the counts so far go into
    checkpoint.pth.tar), as the same epoch run straight through does; it used to count the 2 after the resume."""
    rows = {}
    for name in ("straight", "interrupted"):
        (tmp_path / name).mkdir()
        trainer = make_trainer(tiny_data, tmp_path / name, epochs=1)
        trainer.logger = RecordingLogger()
        if name == "interrupted":
            step = trainer.train_step

            def stop_after_two(*args, trainer=trainer, step=step):
                loss = step(*args)
                if trainer.step_in_epoch == 1:  # this is the second step: the loop counts it after the call
                    trainer.stop.event.set()
                return loss
            trainer.train_step = stop_after_two
            assert trainer.fit() == "interrupted" and not trainer.logger.rows
            trainer = make_trainer(tiny_data, tmp_path / name, epochs=1)
            trainer.logger = RecordingLogger()
            trainer.load_state(load_checkpoint(tmp_path / name / "checkpoint.pth.tar"))
            assert trainer.step_in_epoch == 2
        assert trainer.fit() == "finished"
        rows[name] = trainer.logger.rows
    assert len(rows["straight"]) == len(rows["interrupted"]) == 1
    for key in ("train/loss", "train/dice", "train/iou", "val/loss", "val/dice"):
        assert rows["interrupted"][0][key] == pytest.approx(rows["straight"][0][key], rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("names", [["background", "foreground", "largest_polygon"], ["background", "source", "px"]])
def test_class_columns_never_take_a_results_csv_columns_name(tmp_path, names):
    """Classes named foreground or largest_polygon made a second foreground_px or largest_polygon_px column, and
    csv.DictReader kept one of the two: the total was lost. Class columns are px_<name>, which no other is."""
    mask = np.zeros((20, 30), np.uint8)
    mask[2:8, 2:8], mask[10:19, 5:25] = 1, 2
    writer = ResultWriter(tmp_path, names, save_images=False)
    frame = Frame("a.png", torch.zeros(3, 32, 32), np.zeros((20, 30, 3), np.uint8), None, 0, 1, None, None)
    writer.add(frame, mask, np.zeros((20, 30, 3), np.uint8), 1.0, 171.0)
    writer.close()
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert len(header) == len(set(header))
    row = read_rows(tmp_path)[0]
    assert (row["foreground_px"], row["largest_polygon_px"]) == (str(6 * 6 + 9 * 20), "171.0")
    assert (row[f"px_{names[1]}"], row[f"px_{names[2]}"]) == ("36", "180")


# ---------------------------------------------------------------- detect.py's areas (item 6)


def test_largest_polygon_is_the_json_area_holes_subtracted_everywhere(tmp_path, capsys):
    """A ring: its outline encloses 4071 px but the region holds 3000; results.csv's largest_polygon_px (and the
    console and overlay, which print the same number) said the outline's area while polygons.jsonl subtracted the
    hole, and 6 of 14 images disagreed in one run. Now one function gives both."""
    mask = np.zeros((80, 100), np.uint8)
    mask[5:75, 5:65] = 1
    mask[20:60, 20:50] = 0  # the hole
    mask[10:20, 80:90] = 1  # a small square elsewhere
    regions = find_regions(mask)
    records = polygon_records(mask, ["background", "object"])
    assert largest_area(regions) == max(record["area"] for record in records) < np.count_nonzero(mask)
    assert largest_area(regions) < (70 - 1) * (60 - 1)  # the outer outline's area, which results.csv said
    frame = Frame("ring.png", torch.zeros(3, 32, 32), np.zeros((80, 100, 3), np.uint8), None, 0, 1, None, None)
    exports = FrameExports(["background", "object"], 1, save_json=True)
    writer = ResultWriter(tmp_path, None, save_images=False, exports=exports)
    detect.FrameOutputs(writer, class_colours(1), None, 1)(frame, Prediction(mask, None), 1.0)
    writer.close()
    line = capsys.readouterr().out.strip().splitlines()[-1]
    row = read_rows(tmp_path)[0]
    polygons = json.loads((tmp_path / "polygons.jsonl").read_text())["polygons"]
    assert float(row["largest_polygon_px"]) == max(polygon["area"] for polygon in polygons) == largest_area(regions)
    assert float(row["largest_polygon_px"]) <= int(row["foreground_px"])  # it was larger than all the foreground
    assert line.endswith(f"largest polygon {largest_area(regions):.0f} px")


# ---------------------------------------------------------------- masks (item 14)


def test_sixteen_bit_binary_masks_train(tmp_path, capsys):
    """0/65535 is how some labelling tools save a binary mask as a 16-bit PNG: it was refused with a hint to use
    --classes N, which does not help. It reads as 0/1, as 0/255 does."""
    data = tmp_path / "data"
    write_dataset(data, 6, seed=4)
    for mask_path in (data / "masks").iterdir():
        mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(mask)) == {0, 255}
        cv2.imwrite(str(mask_path), (mask > 0).astype(np.uint16) * 65535)
    stored = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    assert stored.dtype == np.uint16 and set(np.unique(stored)) == {0, 65535}
    assert np.array_equal(binary_mask(read_mask(mask_path), mask_path), (stored > 0).astype(np.uint8))
    code = train.main(train.parse_args([*TINY, "--data-dir", str(data), "--search-files", "--val-split", "0.34",
                                        "--project", str(tmp_path / "runs")]))
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    assert "warning" not in err  # no class left unseen: the foreground was read


# ---------------------------------------------------------------- augmentation files (item 2)


@pytest.mark.parametrize("pipeline, found", [
    (lambda: A.Compose([A.HorizontalFlip(p=0.5), A.Normalize()]), "Normalize"),
    (lambda: A.Compose([A.OneOf([A.Blur(), A.ToFloat()]), ToTensorV2()]), "ToFloat, ToTensorV2"),  # nested too
])
def test_an_augmentation_file_that_normalizes_is_refused(capsys, tiny_data, tmp_path, pipeline, found):
    """With A.Normalize in the file, training samples spanned -2.15 to -1.82 (std 0.13) against -2.12 to 0.77 with
    the preset, while validation images were normalized once: the model trained on near-constant inputs, exit 0."""
    path = tmp_path / "aug.yaml"
    A.save(pipeline(), str(path), data_format="yaml")
    code, err = train_error(capsys, [*TINY, "--data-dir", str(tiny_data), "--train-list", "train.txt", "--val-list",
                                     "val.txt", "--project", str(tmp_path / "runs"), "--augment", str(path)])
    assert code == 2 and err == (f"error: --augment {path} holds {found}: normalization is the checkpoint's job "
                                 f"(every image is normalized with the model's mean and std after augmentation, so "
                                 f"training images would be normalized twice); remove {found} from the pipeline")
    assert not (tmp_path / "runs").exists()
    A.save(A.Compose([A.HorizontalFlip(p=0.5), A.OneOf([A.Blur(), A.GaussNoise()])]), str(path), data_format="yaml")
    assert load_augmentation(str(path)) is not None  # augmentation alone is taken


# ---------------------------------------------------------------- val.py --mask-colors (item 1)

ROAD, SIDEWALK = (128, 64, 128), (244, 35, 232)


def test_val_mask_colors_are_matched_to_the_models_classes_by_name(tmp_path):
    """A model trained with background, road, sidewalk, validated with the same colours listed as background,
    sidewalk, road: road and sidewalk swapped their ground truth, exit 0, no warning."""
    meta = model_meta("Unet", "resnet18", 3, 64, class_names=["background", "road", "sidewalk"])
    swapped = tmp_path / "swapped.csv"
    swapped.write_text(f"name,r,g,b\nbackground,0,0,0\nsidewalk,{','.join(map(str, SIDEWALK))}\n"
                       f"road,{','.join(map(str, ROAD))}\n")
    colours = val.model_mask_colors(meta, swapped)
    assert colours.names == ("background", "road", "sidewalk") and colours.colors == ((0, 0, 0), ROAD, SIDEWALK)
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0], rgb[1, 1] = ROAD, SIDEWALK
    assert colours.labels(rgb, "mask.png").tolist() == [[1, 0], [0, 2]]  # road is class 1, as the model has it


@pytest.mark.parametrize("lines, problem", [
    ("background,0,0,0\nroad,128,64,128\n", "lacks sidewalk"),
    ("background,0,0,0\nroad,128,64,128\ncar,0,0,142\n", "lacks sidewalk and names car, which the model does not have"),
    ("background,0,0,0\nroad,128,64,128\nsidewalk,244,35,232\ncar,0,0,142\n", "names car, which the model does not "
                                                                             "have"),
])
def test_val_mask_colors_naming_other_classes_are_refused(tmp_path, lines, problem):
    meta = model_meta("Unet", "resnet18", 3, 64, class_names=["background", "road", "sidewalk"])
    path = tmp_path / "colours.csv"
    path.write_text(lines)
    with pytest.raises(UserError) as refused:
        val.model_mask_colors(meta, path)
    assert str(refused.value) == (f"--mask-colors {path} {problem}: its classes are matched to the model's by name, "
                                  f"and the model's are background, road, sidewalk; give a colour for each of them")


# ---------------------------------------------------------------- a frame by tiles (item 4)


def test_tile_overlap_above_the_bound_is_refused_before_the_model_loads(capsys, tmp_path):
    """0.99 on a 1000x750 image at tile 64 made a stride of 1 px, 643,000 tiles: 10+ minutes of full CPU, no output."""
    code = detect.main(detect.parse_args(["--model", str(tmp_path / "missing.pth.tar"), "--source",
                                          str(REPO / "data" / "sample" / "imgs"), "--tile", "--tile-overlap", "0.99"]))
    assert code == 2 and capsys.readouterr().err == (
        "error: --tile-overlap 0.99 puts each pixel inside about 10,000 tiles, each a forward pass; give at most 0.875 "
        "(64 tiles over each pixel), e.g. 0.5\n")
    with pytest.raises(UserError, match="give at most 0.875"):  # val.py and training build the same Tiler
        Tiler(lambda batch: batch, 64, overlap=0.9)
    Tiler(lambda batch: batch, 64, overlap=0.875)  # the bound itself is allowed


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_long_tiled_frame_shows_progress_and_stops_on_a_signal(untrained_checkpoint, tmp_path, signum):
    """A 3000x2000 frame in 32 px tiles at the largest overlap is 366,000 tiles, many minutes on one core. Its
    progress shows on stderr after 2 s, and Ctrl-C or SIGTERM ends the run between two batches of tiles, exit code
    130, with nothing of the frame written; both signals used to be ignored until the frame was done."""
    image = np.zeros((2000, 3000, 3), np.uint8)
    image[500:1500, 800:2200] = 200
    cv2.imwrite(str(tmp_path / "large.png"), image)
    with detect_process("--model", untrained_checkpoint, "--source", tmp_path / "large.png", "--tile",
                        "--patch-size", "32", "--tile-overlap", "0.875", "--tile-batch", "1", "--device", "cpu",
                        "--save-dir", tmp_path / "out") as process:
        wait_for_stderr(process, r"3000x2000 image: +\d+%.*\d+/366\d{3}", timeout=300)
        process.send_signal(signum)
        wait_until(lambda: process.poll() is not None, 120,
                   what=lambda: f"detect.py to end after {signum.name}; stderr: {process.output()[1][-2000:]}")
        out, err = process.output()
    assert process.returncode == 130, err[-2000:]
    assert f"{signum.name} received: stopping this frame at its next batch of tiles, then closing outputs" in err
    assert re.search(r"0 frames in [\d.]+ s \(interrupted\): nothing written", out), out
    assert not (tmp_path / "out").exists()  # the folder comes with the first frame written
