"""How a run starts from --load-model: resume (the data and settings it was trained with), fine-tune (a new
run), other numbers of processes, and the honest last line; plus train.py's flag checks."""

import ast
import csv
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from helpers.paths import REPO, RUNS
from helpers.training import TINY, train_in_one_thread
from make_sample_data import write_dataset
from segtoolkit.models.checkpoints import load_checkpoint, save_checkpoint
from segtoolkit.training import config
from segtoolkit.training.config import start_mode
from segtoolkit.models.factory import model_meta

ENV = dict(os.environ, WANDB_SILENT="true", OMP_NUM_THREADS="1", NO_ALBUMENTATIONS_UPDATE="1")
SAMPLE = REPO / "data" / "sample"


@pytest.fixture(scope="module")
def my_data_as_written(tmp_path_factory):
    """(folder, copy): a user's data folder whose file names are the bundled sample's (sample_000.png...): 6 train,
    3 val, with the split files inside it; and a copy of it as written."""
    root = tmp_path_factory.mktemp("user") / "my_data"
    paths = write_dataset(root, 9, seed=5)
    (root / "train.txt").write_text("".join(f"imgs/{path.name}\n" for path in paths[:6]))
    (root / "val.txt").write_text("".join(f"imgs/{path.name}\n" for path in paths[6:]))
    assert (SAMPLE / "imgs" / paths[0].name).exists()  # the names collide with the sample's
    return root, Path(shutil.copytree(root, tmp_path_factory.mktemp("as_written") / "my_data"))


def restore(folder, copy):
    """Put `folder` back as `copy` holds it, at the same path (so a checkpoint naming its files stays valid)."""
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(copy, folder)


@pytest.fixture
def my_data(my_data_as_written):
    """The user's data folder (my_data_as_written), as written: one path for the module, restored for each test."""
    restore(*my_data_as_written)
    return my_data_as_written[0]


def run_in_process(capsys, *flags):
    code = train.main(train.parse_args([str(flag) for flag in flags]))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def fingerprint(folder):
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(Path(folder).rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def interrupted_as_left(my_data_as_written, tmp_path_factory):
    """(run folder, copy): a 3-epoch run on my_data stopped (as by Ctrl-C) after its first epoch, trained once for
    the module; and a copy of the folder as the stop left it."""
    restore(*my_data_as_written)
    evaluate = train.UnetTraining.end_of_evaluation_period

    def stop_after_first(self):
        self.stop.event.set()
        return evaluate(self)

    name = f"pytest-resume-interrupted-{os.getpid()}"
    flags = [*TINY, "--data-dir", my_data_as_written[0], "--train-list", "train.txt", "--val-list", "val.txt",
             "--epochs", "3", "--name", name]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train.UnetTraining, "end_of_evaluation_period", stop_after_first)
        assert train_in_one_thread(flags) == 130
    run_dir = RUNS / name
    assert load_checkpoint(run_dir / "checkpoint.pth.tar")["epoch"] == 1
    yield run_dir, Path(shutil.copytree(run_dir, tmp_path_factory.mktemp("as_left") / name))
    shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def interrupted_run(interrupted_as_left, my_data):
    """The interrupted run's folder, as the stop left it, on my_data as written (restored for each test: the tests
    resume the run or take its files away)."""
    restore(*interrupted_as_left)
    return interrupted_as_left[0]


def record_datasets(monkeypatch):
    """The image files of every dataset train.py builds from now on."""
    used = []
    make_dataset = train.make_dataset

    def spy(pairs, *args, **kwargs):
        used.extend(Path(image) for image, _ in pairs)
        return make_dataset(pairs, *args, **kwargs)

    monkeypatch.setattr(train, "make_dataset", spy)
    return used


def test_resume_trains_on_its_own_data_when_names_collide_with_the_sample(interrupted_run, my_data, capsys,
                                                                          monkeypatch):
    used = record_datasets(monkeypatch)
    code, out, err = run_in_process(capsys, "--load-model", interrupted_run / "checkpoint.pth.tar",
                                    "--workers", "0", "--wandb-mode", "disabled")
    assert code == 0, err[-2000:]
    assert "resuming in" in out
    assert used and all(path.parent == my_data / "imgs" for path in used), used
    assert {path.name for path in used} == {f"sample_{i:03d}.png" for i in range(9)}
    checkpoint = load_checkpoint(interrupted_run / "checkpoint.pth.tar")
    assert checkpoint["epoch"] == 3 and checkpoint["finished"] is True
    assert len(checkpoint["data"]["train"]) == 6 and len(checkpoint["data"]["val"]) == 3


def test_resume_works_with_the_bundled_sample_moved_away(interrupted_run, my_data, capsys, tmp_path, monkeypatch):
    """The bundled sample is out of reach (train.py finds it only through config.SAMPLE_DIR; the real folder
    stays where it is, for the tests running beside this one)."""
    monkeypatch.setattr(config, "SAMPLE_DIR", tmp_path / "sample-moved-away")
    code, out, err = run_in_process(capsys, "--load-model", interrupted_run / "checkpoint.pth.tar",
                                    "--workers", "0", "--wandb-mode", "disabled")
    assert code == 0, err[-2000:]
    assert load_checkpoint(interrupted_run / "checkpoint.pth.tar")["epoch"] == 3


def test_resume_refuses_flags_that_would_change_the_run_and_touches_nothing(interrupted_run, my_data, capsys):
    before = fingerprint(interrupted_run)
    checkpoint = interrupted_run / "checkpoint.pth.tar"
    for flags, named in ((["--epochs", "5"], "--epochs 5 differs from the run being resumed (3)"),
                         (["--lr", "0.01"], "--lr 0.01 differs from the run being resumed (0.001)"),
                         (["--data-dir", SAMPLE], f"--data-dir {SAMPLE} differs from the run being resumed "
                                                  f"({my_data})"),
                         (["--name", "other"], "--name other differs"),
                         (["--resize", "letterbox"],
                          "--resize letterbox differs from the run being resumed (stretch)")):
        code, out, err = run_in_process(capsys, "--load-model", checkpoint, *flags)
        assert code == 2, err[-2000:]
        assert err.count("\n") == 1 and err.startswith(f"error: {named}"), err
        assert "start a new run (fine-tune from its weights with --load-model" in err
    assert fingerprint(interrupted_run) == before
    # runtime flags may differ, and data flags repeated with the stored value are fine
    code, _, err = run_in_process(capsys, "--load-model", checkpoint, "--workers", "1", "--device", "cpu",
                                  "--no-pin-memory", "--wandb-mode", "disabled", "--data-dir", my_data)
    assert code == 0, err[-2000:]


def test_resume_with_its_files_gone_names_them(interrupted_run, my_data, capsys):
    (my_data / "imgs" / "sample_007.png").unlink()
    code, _, err = run_in_process(capsys, "--load-model", interrupted_run / "checkpoint.pth.tar")
    assert code == 2
    assert re.fullmatch(r"error: --load-model .*checkpoint\.pth\.tar: 1 of the files it was trained on are gone "
                        r"\(first: .*my_data/imgs/sample_007\.png\); put them back where they were to resume, or "
                        r"fine-tune from its weights in a new run\n", err), err


def test_finished_run_given_to_load_model_fine_tunes_in_a_new_run(my_data, run_name, capsys):
    flags = [*TINY, "--data-dir", my_data, "--train-list", "train.txt", "--val-list", "val.txt", "--name", run_name]
    code, _, err = run_in_process(capsys, *flags, "--epochs", "2")
    assert code == 0, err[-2000:]
    finished = RUNS / run_name
    before = fingerprint(finished)
    for checkpoint, why in (("checkpoint.pth.tar", "a finished run, 2 of 2 epochs"),
                            ("best-checkpoint.pth.tar", "a best checkpoint, epoch")):
        code, out, err = run_in_process(capsys, "--load-model", finished / checkpoint, "--epochs", "1",
                                        "--batch-size", "2", "--workers", "0", "--wandb-mode", "disabled",
                                        "--name", run_name, "--project", RUNS)
        assert code == 0, err[-2000:]
        line = next(line for line in out.splitlines() if line.startswith("fine-tuning from"))
        assert f"({why}" in line and f"a new run on {my_data} (train.txt, val.txt)" in line, line
        new_dir = Path(re.search(r"training in (\S+)", out).group(1))
        assert new_dir != finished and new_dir.name.startswith(run_name)
        with open(new_dir / "results.csv") as handle:
            assert [row["epoch"] for row in csv.DictReader(handle)] == ["1"]  # --epochs 1 is honoured
        assert load_checkpoint(new_dir / "checkpoint.pth.tar")["meta"]["encoder"] == "resnet18"
    assert fingerprint(finished) == before  # nothing of the finished run was rewritten


def test_a_new_run_stretches_by_default_and_a_stored_run_without_resize_was_letterboxed():
    """train.py's default is --resize stretch (--crop: tiles); a configuration stored before --resize existed
    was letterboxed, and resumes so."""
    import train
    modes = {tuple(argv): config.RunConfig.from_namespace(train.parse_args(argv)).input_mode
             for argv in ([], ["--crop"], ["--resize", "letterbox"])}
    assert modes == {(): "stretch", ("--crop",): "tile", ("--resize", "letterbox"): "letterbox"}
    assert config.RunConfig.from_dict({"model": "Unet"}).input_mode == "letterbox"


def test_fine_tune_keeps_the_checkpoints_input_mode_unless_one_is_given():
    """The weights were trained on stretched (or cropped) images: a fine-tune sees them the same way, unless
    --resize or --crop is given, which then replaces the checkpoint's input mode whole."""
    stretched = model_meta("Unet", "resnet18", 1, 64, input_mode="stretch")
    tiled = model_meta("Unet", "resnet18", 1, 64, input_mode="tile")
    new = config.RunConfig(load_model="best-checkpoint.pth.tar")
    assert new.fine_tuned(stretched, None, set()).input_mode == "stretch"
    assert new.fine_tuned(tiled, None, set()).input_mode == "tile"
    assert new.replace(crop=True).fine_tuned(stretched, None, {"crop"}).input_mode == "tile"
    assert new.replace(resize="letterbox").fine_tuned(tiled, None, {"resize"}).input_mode == "letterbox"
    assert new.replace(resize="stretch").fine_tuned(tiled, None, {"resize"}).input_mode == "stretch"


def test_early_stopped_run_is_finished_and_fine_tunes(my_data, run_name, capsys):
    flags = [*TINY, "--data-dir", my_data, "--train-list", "train.txt", "--val-list", "val.txt", "--name", run_name,
             "--epochs", "4", "--patience", "1", "--lr", "1e-9"]
    code, out, err = run_in_process(capsys, *flags)
    assert code == 0, err[-2000:]
    checkpoint = load_checkpoint(RUNS / run_name / "checkpoint.pth.tar")
    if "early stopping" in out:  # lr 1e-9: val Dice hardly moves, so it stops after two evaluations
        assert checkpoint["epoch"] < 4
    assert checkpoint["finished"] is True
    assert start_mode(checkpoint, "checkpoint.pth.tar") == "fine-tune"


# ---------------------------------------------------------------- the README's commands on a user's data


def readme_train_commands():
    text = (REPO / "README.md").read_text()
    section = text.split("## Your own data", 1)[1].split("\n## ", 1)[0]
    return [line.split("#", 1)[0].strip() for line in section.splitlines() if line.startswith("python3 train.py")]


@pytest.mark.slow
def test_every_readme_train_command_runs_as_written_on_a_users_folder(my_data, tmp_path, run_name):
    """The README's own split example used to fail: the bundled sample's test_dataset.txt was applied to it."""
    commands = readme_train_commands()
    assert len(commands) >= 4
    multi = tmp_path / "multi" / "my_data"
    write_dataset(multi, 9, seed=6, classes=4)
    for number, command in enumerate(commands):
        folder = multi.parent if "--classes 4" in command else my_data.parent
        words = command.split()[2:]  # after `python3 train.py`
        # as written, then only what makes it tiny; later flags win in argparse
        tiny = ["--epochs", "1", "--encoder-weights", "none", "--patch-size", "64", "--batch-size", "2",
                "--workers", "0", "--wandb-mode", "disabled", "--name", f"{run_name}-{number}", "--project", RUNS]
        if "--encoder" not in words:
            tiny += ["--encoder", "resnet18"]
        result = subprocess.run([sys.executable, str(REPO / "train.py"), *words, *tiny], cwd=folder, env=ENV,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (command, result.stderr[-3000:])
        assert "training in" in result.stdout, command
    split_run = next(i for i, command in enumerate(commands) if "--train-list" in command)
    run_dir = RUNS / f"{run_name}-{split_run}"
    assert not (run_dir / "test_results.json").exists()  # another --data-dir and no --test-list: no test split


def test_another_data_dir_without_split_files_says_what_to_give(my_data, run_name, capsys):
    code, _, err = run_in_process(capsys, *TINY, "--data-dir", my_data, "--name", run_name)
    assert code == 2
    assert err == (f"error: --data-dir {my_data} has no training_dataset.txt; give --train-list (a file listing "
                   f"one image per line), or --search-files to split imgs/ and masks/ at random\n")
    (my_data / "training_dataset.txt").write_text((my_data / "train.txt").read_text())
    (my_data / "validation_dataset.txt").write_text((my_data / "val.txt").read_text())
    code, out, err = run_in_process(capsys, *TINY, "--data-dir", my_data, "--name", run_name, "--epochs", "1")
    assert code == 0, err[-2000:]
    assert "test none (give --test-list" in out


# ---------------------------------------------------------------- torchrun: other process counts, tiny splits


def torchrun(processes, arguments, timeout=600):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(REPO / "train.py"), *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=ENV)


def unfinished(path, world_size=None):
    """Mark a finished run's last checkpoint as stopped after its first epoch (what Ctrl-C would leave), by
    `world_size` processes if given."""
    checkpoint = load_checkpoint(path)
    state = {key: value for key, value in checkpoint.items() if key not in ("format", "version", "meta", "config",
                                                                             "model")}
    state.update(epoch=1, step_in_epoch=0, finished=False, **({"world_size": world_size} if world_size else {}))
    save_checkpoint(path, _Weights(checkpoint["model"]), checkpoint["meta"], checkpoint["config"], **state)


class _Weights(torch.nn.Module):
    def __init__(self, state):
        super().__init__()
        self.state = state

    def state_dict(self, *args, **kwargs):
        return self.state


@pytest.mark.parametrize("trained_by, resumed_by", [(2, 1), pytest.param(1, 2, marks=pytest.mark.slow)])
def test_resume_with_another_number_of_processes_is_refused(trained_by, resumed_by, two_epoch_run, tmp_path):
    """The refusal comes before any training, so the run resumed is one process's, marked as stopped by
    `trained_by` processes (test_distributed.py checks that a real 2-process job stores its 2)."""
    checkpoint = Path(shutil.copy(two_epoch_run / "checkpoint.pth.tar", tmp_path / "checkpoint.pth.tar"))
    unfinished(checkpoint, world_size=trained_by)
    before = checkpoint.read_bytes()
    resume = ["--load-model", checkpoint, "--workers", "0", "--wandb-mode", "disabled"]
    result = torchrun(2, resume) if resumed_by == 2 else subprocess.run(
        [sys.executable, str(REPO / "train.py"), *map(str, resume)], capture_output=True, text=True, timeout=600,
        cwd=REPO, env=ENV)
    assert result.returncode != 0
    assert f'{REPO / "train.py"}", line' not in result.stderr, result.stderr[-3000:]  # no traceback of ours
    expected = (f"error: --load-model {checkpoint} was trained by {trained_by} process(es) and this run has "
                f"{resumed_by}: its learning-rate schedule and epoch position count steps of {trained_by} "
                f"process(es); resume it with ")
    assert expected in result.stderr, result.stderr[-3000:]
    if resumed_by == 1:
        assert result.returncode == 2
    assert checkpoint.read_bytes() == before


@pytest.mark.slow
def test_evaluation_with_fewer_validation_images_than_processes_does_not_hang(tiny_data, run_name, tmp_path):
    """4 processes, 3 validation images: one process has no validation batch. Evaluating through the DDP
    wrapper made the others wait for it forever (its forward syncs buffers)."""
    val = tmp_path / "val3.txt"
    val.write_text("".join(f"imgs/sample_{i:03d}.png\n" for i in (8, 9, 10)))
    train_list = tmp_path / "train8.txt"
    train_list.write_text("".join(f"imgs/sample_{i:03d}.png\n" for i in range(8)))
    flags = [*TINY, "--batch-size", "1", "--data-dir", tiny_data, "--train-list", train_list, "--val-list", val,
             "--test-list", val, "--epochs", "1", "--name", run_name]
    result = torchrun(4, flags, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test: dice" in result.stdout
    run_dir = RUNS / run_name
    with open(run_dir / "results.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 1


# ---------------------------------------------------------------- the last line, flags, files


def test_last_line_says_why_there_is_no_best_checkpoint(tiny_data, run_name, capsys):
    flags = [*TINY, "--data-dir", tiny_data, "--train-list", tiny_data / "train.txt", "--val-list",
             tiny_data / "val.txt", "--test-list", tiny_data / "test.txt", "--epochs", "1", "--name", run_name]
    code, out, err = run_in_process(capsys, *flags, "--check-best-cooldown", "3")
    assert code == 0, err[-2000:]
    run_dir = RUNS / run_name
    assert not (run_dir / "best-checkpoint.pth.tar").exists() and (run_dir / "checkpoint.pth.tar").exists()
    assert out.splitlines()[-1] == (f"no best checkpoint: none of the 1 evaluation(s) could count as the best (1 "
                                    f"were within --check-best-cooldown 3 epochs); the last weights are in "
                                    f"{run_dir / 'checkpoint.pth.tar'}")
    assert "(last weights: there is no best checkpoint, 2 images)" in out
    # --eval-step longer than the run: the run's last step is still evaluated
    code, out, err = run_in_process(capsys, *flags, "--eval-step", "100")
    assert code == 0, err[-2000:]
    run_dir = Path(re.search(r"training in (\S+)", out).group(1))
    with open(run_dir / "results.csv") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1"]
    assert out.splitlines()[-1].startswith("best val Dice ")
    assert (run_dir / "best-checkpoint.pth.tar").exists()


BAD_FLAGS = [
    (["--name", "team/run1"], r"--name 'team/run1': a run name is one folder name \(no '/', '\\', '\.\.', or "
                              r"surrounding spaces\); give for example --name team-run1"),
    (["--name", "../x"], r"--name '\.\./x': a run name is one folder name"),
    (["--name", "/tmp/abs"], r"--name '/tmp/abs': a run name is one folder name"),
    (["--lr", "-0.01"], r"--lr -0\.01 must be a positive number$"),
    (["--lr", "0"], r"--lr 0 must be a positive number \(0 would train without changing any weight\)"),
    (["--weight-decay", "-1"], r"--weight-decay -1 must be 0 or more"),
    (["--search-files", "--val-split", "0"], r"--search-files --val-split 0 leaves no validation images, which "
                                             r"early stopping and the best checkpoint need; give --val-split 0\.1"),
    (["--crop", "--resize", "stretch"], r"--crop and --resize stretch contradict each other: .*; keep one$"),
]


@pytest.mark.parametrize("flags, message", BAD_FLAGS, ids=[" ".join(flags) for flags, _ in BAD_FLAGS])
def test_bad_flags_are_one_line_before_anything_is_created(flags, message, tiny_data, run_name, capsys):
    code, out, err = run_in_process(capsys, *TINY, "--data-dir", tiny_data, "--train-list", tiny_data / "train.txt",
                                    "--val-list", tiny_data / "val.txt", "--name", run_name, *flags)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert re.search(message, err.strip()), err
    assert "training in" not in out
    assert not list(RUNS.glob(f"{run_name}*")) and not (Path("/tmp/abs").exists())


def test_load_model_given_something_else_says_what_it_is(tiny_data, tmp_path, run_name, capsys):
    run_dir = tmp_path / "exp"
    run_dir.mkdir()
    (run_dir / "checkpoint.pth.tar").write_bytes(b"")
    onnx = tmp_path / "best.onnx"
    onnx.write_bytes(b"\x08\x07")
    text = tmp_path / "notes.pth"
    text.write_text("lr 0.001, 20 epochs\n")
    cases = [(run_dir, rf"--load-model {run_dir} is a folder; give a \.pth\.tar file written by train\.py "
                       rf"\(checkpoint\.pth\.tar or best-checkpoint\.pth\.tar\), for example {run_dir}/checkpoint"),
             (onnx, rf"--load-model {onnx} is an ONNX export, which cannot be trained or resumed; give the "
                    rf"\.pth\.tar checkpoint it was exported from"),
             (text, rf"--load-model {text} is a text file, not a PyTorch checkpoint; give a \.pth\.tar file")]
    for path, message in cases:
        code, _, err = run_in_process(capsys, *TINY, "--data-dir", tiny_data, "--train-list",
                                      tiny_data / "train.txt", "--val-list", tiny_data / "val.txt",
                                      "--name", run_name, "--load-model", path)
        assert code == 2 and err.count("\n") == 1, err
        assert re.match("error: " + message, err), err


def test_help_shows_each_default_once_and_repository_paths_relative():
    text = subprocess.run([sys.executable, str(REPO / "train.py"), "--help"], capture_output=True, text=True,
                          cwd=REPO).stdout
    options = " ".join(text.split("\nData:", 1)[1].split())
    data_dir = options.split("--data-dir DATA_DIR", 1)[1].split("--img-dir", 1)[0]
    assert data_dir.count("default") == 1 and "data/sample" in data_dir, data_dir
    assert str(REPO) not in text
    assert "(default: None)" not in text


def test_checkpoints_get_the_umask_mode_without_changing_the_umask(tmp_path):
    code = ("import os, torch; from segtoolkit.models import checkpoints; os.umask(0o027); "
            f"checkpoints.save_checkpoint('{tmp_path}/c.pth.tar', torch.nn.Linear(1, 1), {{}}); "
            f"print(oct(os.stat('{tmp_path}/c.pth.tar').st_mode & 0o777), oct(os.umask(0o022)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.stdout.split() == ["0o640", "0o27"], result.stderr[-2000:]
    calls = [(source.name, node.lineno) for source in sorted([*REPO.glob("*.py"), *REPO.glob("segtoolkit/**/*.py")])
             for node in ast.walk(ast.parse(source.read_text()))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "umask"]
    assert not calls  # setting the umask to read it changes it for every thread meanwhile


def test_start_of_run_warns_when_ignore_index_removes_all_foreground(my_data, run_name, capsys):
    """0/255 masks trained as --classes 2 --ignore-index 255 used to train on zero foreground without a word."""
    code, out, err = run_in_process(capsys, *TINY, "--data-dir", my_data, "--train-list", "train.txt",
                                    "--val-list", "val.txt", "--classes", "2", "--ignore-index", "255",
                                    "--epochs", "1", "--name", run_name)
    assert code == 0, err[-2000:]
    warnings = [line for line in err.splitlines() if line.startswith("warning: --ignore-index 255")]
    assert len(warnings) == 2 and "train them with --classes 1" in warnings[0], err[-2000:]
