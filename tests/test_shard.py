"""detect.py and val.py under torchrun (real processes, gloo on the CPU), and detect.py --resume-run."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import detect
from helpers.detect_runs import QUIET_ENV, cli
from helpers.paths import REPO
from helpers.servers import wait_until
from segtoolkit.outputs.shards import Finished, merge_parts, part_name, share, source_order

# torchrun jobs: each process imports torch (20-40 s on a shared CPU) before it segments anything
slow = pytest.mark.slow

TIMING = {"inference_ms"}  # the columns that differ between any two runs


def torchrun_command(*arguments):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            *map(str, arguments)]


def run(command, timeout=900):
    return subprocess.run(command, cwd=REPO, env=QUIET_ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """20 images: the even ones small, the odd ones (the second process's share) large, so its frames take long
    enough to kill it between two of them."""
    folder = tmp_path_factory.mktemp("shard") / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        size = (96, 128) if i % 2 == 0 else (1200, 1600)
        cv2.imwrite(str(folder / f"img_{i:02d}.png"), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    return folder


def detect_arguments(model, images, save_dir, *extra):
    return ["detect.py", "--model", model, "--source", images, "--save-json", "--save-probs", *extra] + \
        (["--save-dir", save_dir] if save_dir else [])


@pytest.fixture(scope="module")
def one_process(untrained_checkpoint, images, tmp_path_factory):
    """The run folder of one process over the images."""
    save_dir = tmp_path_factory.mktemp("one") / "run"
    result = run([sys.executable, *detect_arguments(untrained_checkpoint, images, save_dir)])
    assert result.returncode == 0, result.stderr[-3000:]
    return save_dir


def rows_of(save_dir, name="results.csv"):
    with open(Path(save_dir) / name, newline="", encoding="utf-8") as handle:
        return [{key: value for key, value in row.items() if key not in TIMING} for row in csv.DictReader(handle)]


def outputs_of(save_dir):
    """{relative path: bytes} of every file a run wrote but results.csv and the annotated images (whose overlay
    prints the inference time)."""
    save_dir = Path(save_dir)
    return {str(path.relative_to(save_dir)): path.read_bytes() for path in sorted(save_dir.rglob("*"))
            if path.is_file() and path.parent != save_dir or path.name == "polygons.jsonl"}


def assert_same_run(save_dir, reference):
    assert rows_of(save_dir) == rows_of(reference)
    assert sorted(path.name for path in Path(save_dir).iterdir()) == \
        sorted(path.name for path in Path(reference).iterdir())  # the parts are gone; every image is there
    assert outputs_of(save_dir) == outputs_of(reference)


@slow
def test_two_processes_write_what_one_writes(untrained_checkpoint, images, one_process, tmp_path):
    result = run(torchrun_command(*detect_arguments(untrained_checkpoint, images, tmp_path / "two")))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "20 row(s) merged in source order" in result.stdout
    assert len(rows_of(one_process)) == 20
    assert_same_run(tmp_path / "two", one_process)


def descendant_with_rank(parent, rank):
    """The pid of the process below `parent` (torchrun) whose environment says RANK=rank, or None."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(next(line for line in (entry / "status").read_text().splitlines()
                                if line.startswith("PPid:")).split()[1])
            except (OSError, StopIteration):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    todo = list(children.get(parent, []))
    while todo:
        pid = todo.pop()
        try:
            if f"RANK={rank}".encode() in (Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")):
                return pid
        except OSError:
            continue
        todo += children.get(pid, [])
    return None


def complete_rows(path):
    """The rows of a part, asserting each is whole (every column) and names files that exist."""
    with open(path, newline="", encoding="utf-8") as handle:
        table = list(csv.reader(handle))
    header, rows = table[0], table[1:]
    assert all(len(row) == len(header) for row in rows), rows
    for row in rows:
        for column in ("image_file", "mask_file", "probs_file"):
            assert (path.parent / row[header.index(column)]).is_file(), row
    return rows


@slow
def test_a_process_killed_mid_run_loses_only_its_frames_and_a_resume_finishes_the_run(
        untrained_checkpoint, images, one_process, tmp_path):
    save_dir = tmp_path / "killed"
    log = tmp_path / "log"
    with open(log, "w") as output:
        job = subprocess.Popen(torchrun_command(*detect_arguments(untrained_checkpoint, images, save_dir)), cwd=REPO,
                               env=QUIET_ENV, stdout=output, stderr=subprocess.STDOUT)
    try:
        part = save_dir / part_name("results.csv", 1)

        def started():
            assert job.poll() is None, log.read_text()[-3000:]
            return part.is_file() and len(part.read_text().splitlines()) >= 3  # the header and 2 rows
        wait_until(started, 600, interval=0.02, what=lambda: f"2 rows in {part}: {log.read_text()[-3000:]}")
        pid = descendant_with_rank(job.pid, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert job.wait(300) != 0  # torchrun reports the lost process, and stops the other
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    killed = complete_rows(part)
    assert 2 <= len(killed) < 10, "the process finished its 10 images before the kill: the test lost its race"
    assert len(complete_rows(save_dir / part_name("results.csv", 0))) <= 10
    assert not (save_dir / "results.csv").exists()  # nothing merged: the run did not finish
    resumed = run(torchrun_command(*detect_arguments(untrained_checkpoint, images, None, "--resume-run", save_dir)))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "frame(s) done already" in resumed.stdout
    assert_same_run(save_dir, one_process)  # every frame once, in source order, each file as one process's


def test_one_process_resumes_a_run_cut_short(untrained_checkpoint, images, one_process, tmp_path):
    save_dir = tmp_path / "cut"
    arguments = detect_arguments(untrained_checkpoint, images, None)[1:]
    assert detect.main(detect.parse_args(list(map(str, [*arguments, "--save-dir", save_dir, "--max-frames", 7])))) == 0
    # the 8th frame cut short by a kill: its mask and polygons written, its row cut off
    cut = str(images / "img_07.png")
    (save_dir / "masks" / "img_07.png").write_bytes(b"half a file")
    with open(save_dir / "polygons.jsonl", "a") as handle:
        handle.write(json.dumps({"source": cut, "frame": 0, "polygons": []}) + "\n")
    with open(save_dir / "results.csv", "a") as handle:
        handle.write(f"{cut},0,12.")
    assert detect.main(detect.parse_args(list(map(str, [*arguments, "--resume-run", save_dir])))) == 0
    assert_same_run(save_dir, one_process)  # the cut frame done again under its own name, not img_07_2


def test_whole_run_outputs_are_refused_under_torchrun(untrained_checkpoint, images, capsys, monkeypatch):
    """Under torchrun with 2 processes (WORLD_SIZE 2) a whole-run output is a one-line error before any set-up."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = cli(capsys, "--model", untrained_checkpoint, "--source", images, "--rank-uncertain", 3)
    assert code == 2 and "error: --rank-uncertain covers a whole run in one process" in err


def test_resume_run_mistakes_are_one_line_errors(untrained_checkpoint, images, tmp_path, capsys):
    given = ["--model", untrained_checkpoint, "--source", images]
    code, _, err = cli(capsys, *given, "--resume-run", tmp_path / "none")
    assert code == 2 and f"error: --resume-run {tmp_path / 'none'} is not a detect.py run folder" in err
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.csv").write_text("source,frame\r\n")
    code, _, err = cli(capsys, *given, "--resume-run", run_dir, "--save-dir", tmp_path / "other")
    assert code == 2 and err.strip().endswith("is the folder written to; drop --save-dir")
    code, _, err = cli(capsys, *given, "--resume-run", run_dir, "--save-coco")
    assert code == 2 and "error: --save-coco covers a whole run in one process" in err
    code, _, err = cli(capsys, *given, "--resume-run", run_dir)  # another model's, or an earlier detect.py's
    assert code == 2 and "holds a results.csv with other columns" in err  # checked before any process writes
    assert sorted(path.name for path in run_dir.iterdir()) == ["results.csv"]


def test_merge_keeps_complete_rows_and_a_resume_sorts_and_drops_cut_frames(tmp_path):
    header = "source,frame,inference_ms,image_file\r\n"
    (tmp_path / "results.csv").write_text(header + "b.png,0,1.0,b.png\r\n")  # the first run's
    (tmp_path / part_name("results.csv", 1)).write_text(header + "c.png,0,1.0,c.png\r\nd.png,0,1.")  # d: cut off
    (tmp_path / part_name("results.csv", 0)).write_text(header + "a.png,0,1.0,a.png\r\n")
    line = {"source": "a.png", "frame": 0, "polygons": []}
    (tmp_path / part_name("polygons.jsonl", 0)).write_text(json.dumps(line) + "\n")
    cut = {"source": "d.png", "frame": 0, "polygons": []}  # its row never came: the frame is done again
    (tmp_path / part_name("polygons.jsonl", 1)).write_text(json.dumps(cut) + "\n")
    order = source_order([Path("a.png"), Path("b.png"), Path("c.png"), Path("d.png")], [])
    assert merge_parts(tmp_path, order, resumed=True) == 2
    assert [row["source"] for row in rows_of(tmp_path)] == ["a.png", "b.png", "c.png"]
    assert [json.loads(text)["source"] for text in (tmp_path / "polygons.jsonl").read_text().splitlines()] == ["a.png"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["polygons.jsonl", "results.csv"]
    finished = Finished.read(tmp_path)
    assert finished.frames == {("a.png", 0), ("b.png", 0), ("c.png", 0)}
    assert finished.left([Path("a.png"), Path("d.png"), Path("e.mp4")]) == [Path("d.png"), Path("e.mp4")]


def test_sources_are_dealt_in_turn_and_same_named_ones_stay_together():
    sources = ["x/a.png", "b.png", "c.png", "y/a.png", "d.mp4", "rtsp://cam/live"]
    assert share(sources, 0, 2) == ["x/a.png", "c.png", "y/a.png", "rtsp://cam/live"]
    assert share(sources, 1, 2) == ["b.png", "d.mp4"]
    assert share(sources, 0, 1) == sources


def close_to(a, b, tolerance=1e-9):
    """JSON values equal, numbers within `tolerance` (NaN equal to NaN)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close_to(a[key], b[key], tolerance) for key in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(close_to(x, y, tolerance) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return (a != a and b != b) or abs(a - b) <= tolerance
    return a == b


@slow
def test_val_in_two_processes_scores_what_one_scores(untrained_checkpoint, tiny_data, tmp_path):
    common = ["val.py", "--model", untrained_checkpoint, "--data", tiny_data, "--batch-size", "5", "--workers", "0",
              "--save-masks"]  # 12 images: batches of 5, 5 and 2, the first and last in the first process
    one = run([sys.executable, *map(str, common), "--save-dir", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run(torchrun_command(*common, "--save-dir", tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("evaluating ") == 1  # rank 0 speaks
    single, sharded = (json.loads((tmp_path / name / "val_results.json").read_text()) for name in ("one", "two"))
    assert single["images"] == 12 and single["val/loss"] > 0
    assert close_to(sharded, single)
    assert (tmp_path / "two" / "per_image.csv").read_text() == (tmp_path / "one" / "per_image.csv").read_text()
    masks = sorted(path.name for path in (tmp_path / "one" / "masks").iterdir())
    assert len(masks) == 12 and masks == sorted(path.name for path in (tmp_path / "two" / "masks").iterdir())
    assert all((tmp_path / "one" / "masks" / name).read_bytes() == (tmp_path / "two" / "masks" / name).read_bytes()
               for name in masks)
