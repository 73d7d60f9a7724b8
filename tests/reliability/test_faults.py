"""Issue 4, training side: faults (SIGKILL, SIGINT/SIGTERM, non-finite steps, dead workers, a failing
validation preview, steps the gradient scaler skips); a run that fails exits 1. tests/README.md has the
table of every case and what the user sees; test_bad_input.py here has the bad input.
"""

import copy
import math
import os
import random
import re
import shutil
import signal
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import train
from dataset import SegmentationDataset, make_dataset
from segtoolkit.training import run_log as run_logging
from segtoolkit.models.checkpoints import load_checkpoint
from helpers.paths import RUNS
from helpers.training import TINY
from segtoolkit.training.config import RunConfig
from segtoolkit.errors import RunFailure
from segtoolkit.data.loaders import guarded_batches
from segtoolkit.data.masks import IGNORE
from segtoolkit.models.factory import build_model, model_meta
from segtoolkit.training.run_log import NullLogger
from segtoolkit.data.splits import pair_masks, read_split_file
from helpers.train_runs import (FAST, assert_complete_checkpoints, assert_results_csv_intact,
                                 data_flags, logs, start_cli, train_in_process, wait_until)


# ---------------------------------------------------------------- faults: SIGKILL, SIGINT, SIGTERM


def temp_files(run_dir):
    return list(run_dir.glob(".*.tmp"))


@pytest.mark.slow
def test_sigkill_at_any_moment_leaves_complete_checkpoints_and_resumes(data, run_name, tmp_path):
    """Kill -9 repeatedly, mostly while a checkpoint is being written (--eval-step 1 --save-checkpoints
    write one after every step): each file is always the previous or the new complete one."""
    run_dir = RUNS / run_name
    flags = [*TINY, *data_flags(data), "--name", run_name, "--epochs", "3", "--eval-step", "1",
             "--save-checkpoints", "--patience", "0"]
    resume = ["--load-model", run_dir / "checkpoint.pth.tar", "--wandb-mode", "disabled", "--workers", "0"]
    rounds = ["write", "random", "write"]
    kills_mid_write, last_step, rng = 0, -1, random.Random(0)
    for number, moment in enumerate(rounds):
        left_by_earlier_kills = set(temp_files(run_dir)) if run_dir.exists() else set()
        proc = start_cli(flags if number == 0 else resume, tmp_path, f"round{number}")
        if number == 0:  # the first kill only once there is something to resume from
            wait_until(lambda: (run_dir / "checkpoint.pth.tar").exists(), proc)
        if moment == "write":
            wait_until(lambda seen=left_by_earlier_kills: set(temp_files(run_dir)) - seen, proc, interval=0.002)
        else:
            wait_until(lambda running=proc: "epoch" in logs(running)[1], proc)
            time.sleep(rng.uniform(0, 1.5))
        if proc.poll() is not None:  # finished before this kill: nothing left to interrupt
            assert proc.returncode == 0, logs(proc)[1][-2000:]
            break
        proc.kill()
        proc.wait(timeout=60)
        kills_mid_write += bool(set(temp_files(run_dir)) - left_by_earlier_kills)
        steps = assert_complete_checkpoints(run_dir)
        assert steps["checkpoint.pth.tar"] >= last_step  # progress already saved is never lost
        last_step = steps["checkpoint.pth.tar"]
        assert_results_csv_intact(run_dir)
    else:
        proc = start_cli(resume, tmp_path, "final")
        assert proc.wait(timeout=600) == 0, logs(proc)[1][-3000:]
    assert kills_mid_write >= 2
    steps = assert_complete_checkpoints(run_dir)
    assert steps["checkpoint.pth.tar"] == 3 * 2  # 3 epochs x 2 steps, all done despite the kills
    assert not list(run_dir.glob(".checkpoint.pth.tar.*.tmp"))  # the next save removed the killed writes' leftovers
    assert_results_csv_intact(run_dir)


def exit_codes_in_wandb(run_dir):
    from helpers.wandb_records import read_records
    return [record.exit.exit_code for path in run_dir.glob("wandb/offline-run-*/run-*.wandb")
            for record in read_records(path) if record.WhichOneof("record_type") == "exit"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_sigterm_finish_the_step_save_and_resume(signum, data, run_name, tmp_path):
    """Ctrl-C reaches the whole process group (workers included); SIGTERM only the trainer."""
    run_dir = RUNS / run_name
    wandb_mode = "offline" if signum == signal.SIGTERM else "disabled"
    workers = "1" if signum == signal.SIGINT else "0"
    flags = [*TINY, *data_flags(data), "--name", run_name, "--epochs", "3", "--workers", workers,
             "--wandb-mode", wandb_mode]
    proc = start_cli(flags, tmp_path, "first", start_new_session=True)
    assert wait_until(lambda: "epoch 2/3" in logs(proc)[1], proc, interval=0.01), logs(proc)[1][-2000:]
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    assert proc.wait(timeout=300) == 130  # the step in flight, then a checkpoint and wandb's close: slow when busy
    out, err = logs(proc)
    name = signal.Signals(signum).name
    assert f"{name} received: finishing this step, then saving checkpoint.pth.tar" in err
    assert f"resume with:\n  python train.py --load-model {run_dir / 'checkpoint.pth.tar'}\n" in err
    assert "Traceback" not in err
    checkpoint = load_checkpoint(run_dir / "checkpoint.pth.tar")
    # the step in flight ended: normally epoch 2 step 1; a signal that lands during an evaluation stops after it
    assert (checkpoint["epoch"], checkpoint["step_in_epoch"]) in {(1, 1), (1, 2), (2, 0), (2, 1)}
    assert len(assert_results_csv_intact(run_dir)) == checkpoint["epoch"]  # one complete row per finished epoch
    if signum == signal.SIGTERM:
        assert exit_codes_in_wandb(run_dir) == [130]  # the wandb run was closed, marked as interrupted
    resumed = start_cli(["--load-model", run_dir / "checkpoint.pth.tar", "--wandb-mode", "disabled",
                         "--workers", "0"], tmp_path, "resumed")
    assert resumed.wait(timeout=600) == 0, logs(resumed)[1][-3000:]
    assert load_checkpoint(run_dir / "checkpoint.pth.tar")["global_step"] == 3 * 2
    assert len(assert_results_csv_intact(run_dir)) == 3


def test_killed_dataloader_worker_is_a_one_line_error(data, run_name, tmp_path):
    run_dir = RUNS / run_name
    flags = [*TINY, *FAST, *data_flags(data), "--name", run_name, "--epochs", "20", "--workers", "1"]
    proc = start_cli(flags, tmp_path, "worker")
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    assert wait_until(lambda: (run_dir / "checkpoint.pth.tar").exists() and children.read_text().split(), proc)
    os.kill(int(children.read_text().split()[0]), signal.SIGKILL)
    assert proc.wait(timeout=300) == 1  # a fault, not the user's input
    err = logs(proc)[1]
    last = err.strip().splitlines()[-1]
    # torch reports the dead worker either itself or as a broken pipe while a batch is received
    assert last.startswith("error: ") and ("DataLoader worker" in last or "killed worker" in last), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert f"resume with: python train.py --load-model {run_dir / 'checkpoint.pth.tar'}" in last
    assert_complete_checkpoints(run_dir)


# ---------------------------------------------------------------- faults in-process: bad samples, non-finite steps


def small_trainer(d, run_dir, test_split=None, **options):
    def pairs(split):
        return pair_masks(read_split_file(d / split, d), d / "masks")
    torch.manual_seed(0)
    architecture, encoder, classes = FAST[1], FAST[3], options.get("classes", 1)  # the data stays binary
    config = RunConfig(**{**dict(model=architecture, encoder=encoder, patch_size=64, epochs=2, batch_size=2,
                                 workers=0), **options})
    test_set = make_dataset(pairs(test_split), 64, 1, evaluation=True) if test_split else None
    return train.UnetTraining(build_model(architecture, encoder, classes), make_dataset(pairs("train.txt"), 64, 1),
                              make_dataset(pairs("val.txt"), 64, 1, evaluation=True), test_set, config=config,
                              run_dir=run_dir, meta=model_meta(architecture, encoder, classes, 64))


def test_worker_death_seen_after_the_last_batch_is_a_one_line_error(data, tmp_path):
    """A worker killed late fails the next() that would have ended the epoch: there is no batch to name."""
    trainer = small_trainer(data, tmp_path)

    class DiesAtTheEnd(DataLoader):
        def __iter__(self):
            yield from super().__iter__()
            raise RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly")
    loader = copy.copy(trainer.train_loader)
    loader.__class__ = DiesAtTheEnd
    with pytest.raises(RunFailure) as error:
        list(guarded_batches(loader, "training", trainer.resume_hint))
    assert str(error.value) == ("loading training data after batch 2 failed: DataLoader worker (pid(s) 4242) exited "
                                "unexpectedly; a killed worker? lower --workers or --batch-size; no checkpoint was "
                                "saved yet")


class WorkerIterator:
    """Stands for torch's multi-process DataLoader iterator: batches, then a failure; its shutdown meets the
    dead worker's SIGCHLD check, as torch's does."""

    def __init__(self, batches, failure, worker_alive):
        self.batches, self.failure, self.shut_down = list(batches), failure, False
        self._workers = [type("Worker", (), {"is_alive": lambda _: worker_alive})()]

    def __next__(self):
        if self.batches:
            return self.batches.pop(0)
        raise self.failure

    def _shutdown_workers(self):
        self.shut_down = True
        raise RuntimeError("DataLoader worker (pid 7433) is killed by signal: Killed.")


def loader_with(trainer, iterator):
    class Loader(DataLoader):
        def __iter__(self):
            return iterator
    loader = copy.copy(trainer.train_loader)
    loader.__class__ = Loader
    return loader


def test_a_batch_failing_shuts_the_workers_down_before_the_one_line_error(data, tmp_path):
    """Left to torch, the iterator is shut down when collected, often at exit, where its check of the dead worker
    raises in __del__ and prints "Exception ignored" and a traceback after train.py's one-line error."""
    trainer = small_trainer(data, tmp_path)
    iterator = WorkerIterator(["batch 1"], ConnectionResetError(104, "Connection reset by peer"), worker_alive=False)
    with pytest.raises(RunFailure) as error:
        list(guarded_batches(loader_with(trainer, iterator), "training", trainer.resume_hint))
    assert iterator.shut_down
    assert str(error.value).startswith("loading training batch 2 (images ") and "Connection reset by peer" in \
        str(error.value)


@pytest.mark.parametrize("worker_alive", [False, True])
def test_a_loop_left_after_a_worker_died_shuts_the_workers_down(data, tmp_path, worker_alive):
    """worker_crash_as_error's case: the dead worker is reported in the loop's body and the loop is left; the
    workers are shut down then, but only when one is dead (persistent workers serve the next epoch)."""
    trainer = small_trainer(data, tmp_path)
    iterator = WorkerIterator(["batch 1", "batch 2"], StopIteration(), worker_alive=worker_alive)
    batches = guarded_batches(loader_with(trainer, iterator), "training", trainer.resume_hint)
    assert next(batches) == "batch 1"
    batches.close()
    assert iterator.shut_down is not worker_alive


def test_files_deleted_mid_run_do_not_matter_samples_are_in_memory(data):
    pairs = pair_masks(read_split_file(data / "train.txt", data), data / "masks")
    dataset = make_dataset(pairs, 64, 1, augment=True)
    shutil.rmtree(data / "imgs")
    shutil.rmtree(data / "masks")
    for index in range(len(dataset)):
        image, mask = dataset[index]
        assert image.shape == (3, 64, 64) and mask.shape == (1, 64, 64)


@pytest.mark.parametrize("workers", [0, 1])
def test_sample_failing_mid_run_names_its_files(data, tmp_path, workers):
    trainer = small_trainer(data, tmp_path, workers=workers)
    load_sample = trainer.train_set.load_sample

    def broken(index, seed=None):
        if index == 3:
            raise OSError("Input/output error")
        return load_sample(index, seed)
    trainer.train_set.load_sample = broken
    with pytest.raises(RunFailure) as error:
        trainer.fit()
    assert error.value.exit_code == 1
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("loading training batch ") and "sample_003.png" in message, message
    assert "Input/output error; fix or remove those files" in message


def test_non_finite_step_is_skipped_with_a_warning_and_leaves_the_model_untouched(data, tmp_path):
    trainer = small_trainer(data, tmp_path)
    images, masks = next(iter(trainer.train_loader))
    before = {key: value.clone() for key, value in trainer.model.state_dict().items()}
    with pytest.warns(UserWarning, match=r"non-finite loss or gradient at step 0: step skipped \(1 in a row\)"):
        trainer.train_step(torch.full_like(images, math.nan), masks, trainer.new_stats())
    after = trainer.model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)  # weights and BatchNorm statistics
    assert trainer.optimizer.state == {} and trainer.bad_steps == 1
    trainer.train_step(images, masks, trainer.new_stats())
    assert trainer.bad_steps == 0  # a good step resets the count
    assert any(not torch.equal(before[key], value) for key, value in trainer.model.state_dict().items())


def test_a_batch_without_labelled_pixels_is_skipped_and_is_not_a_divergence(data, tmp_path):
    """Issue 22: with several classes an all-IGNORE batch (a crop of padding or --ignore-index) gave a NaN
    cross-entropy, counted as a non-finite step; 20 in a row ended the run with "training diverged"."""
    trainer = small_trainer(data, tmp_path, classes=3, epochs=12)  # 24 steps: the schedule outlasts the loop
    images, _ = next(iter(trainer.train_loader))
    unlabelled = torch.full((len(images), 64, 64), IGNORE, dtype=torch.long)
    before = {key: value.clone() for key, value in trainer.model.state_dict().items()}
    stats = trainer.new_stats()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(train.MAX_BAD_STEPS + 1):  # more than the divergence limit: never raises
            assert trainer.train_step(images, unlabelled, stats) is None
    assert trainer.bad_steps == 0 and trainer.optimizer.state == {}
    assert all(torch.equal(before[key], value) for key, value in trainer.model.state_dict().items())
    assert stats.loss[1] == 0 and stats.matrix.sum() == 0  # nothing counted in the training metrics
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "non-finite loss or gradient" in m]
    assert sum("has no labelled pixel" in m for m in messages) == 1  # said once per run
    labels = torch.randint(0, 3, (len(images), 64, 64))
    labels[0] = IGNORE  # one unlabelled image among labelled ones is an ordinary step
    assert math.isfinite(trainer.train_step(images, labels, stats).item()) and trainer.optimizer.state != {}


def poison_after(trainer, good_samples):
    """Training samples load as usual for the first `good_samples` loads, then every image is all inf."""
    load_sample, calls = trainer.train_set.load_sample, [0]

    def poisoned(index, seed=None):
        calls[0] += 1
        image, mask = load_sample(index, seed)
        return (image if calls[0] <= good_samples else torch.full_like(image, math.inf)), mask
    trainer.train_set.load_sample = poisoned


def test_twenty_non_finite_steps_stop_the_run_and_best_checkpoint_stays_good(data, tmp_path):
    trainer = small_trainer(data, tmp_path, epochs=12)  # 2 good steps, then every step non-finite
    poison_after(trainer, good_samples=4)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(RunFailure) as error:
        warnings.simplefilter("always")
        trainer.fit()
    assert str(error.value) == ("20 non-finite steps in a row: training diverged; lower --lr or check the data. "
                                "best-checkpoint.pth.tar holds the last good model")
    assert sum("step skipped" in str(w.message) for w in caught) == 20
    best = load_checkpoint(tmp_path / "best-checkpoint.pth.tar")
    assert best["global_step"] == 2  # written after the good steps, never after a skipped one
    assert all(torch.isfinite(value).all() for value in best["model"].values() if value.is_floating_point())
    assert trainer.global_step == 2 + 19  # the 20th bad step raised before being counted


def test_non_finite_validation_loss_never_becomes_the_best_checkpoint(data, tmp_path):
    trainer = small_trainer(data, tmp_path)
    torch.nn.init.constant_(trainer.model.segmentation_head[0].weight, math.nan)
    trainer.end_of_evaluation_period()
    assert trainer.best_fitness == -math.inf
    assert not (tmp_path / "best-checkpoint.pth.tar").exists()


def test_divergence_on_the_command_line_is_one_line(data, run_name, capsys):
    code, _, err = train_in_process(capsys, *TINY, *FAST, *data_flags(data), "--name", run_name, "--lr", "1e30",
                                    "--batch-size", "1", "--epochs", "7")
    assert code == 1  # the input was valid; the run failed
    assert err.strip().splitlines()[-1].startswith("error: 20 non-finite steps in a row: training diverged; lower --lr")
    assert "Traceback" not in err
    assert_complete_checkpoints(RUNS / run_name)


def test_sample_failing_mid_run_on_the_command_line_exits_1(data, run_name, capsys, monkeypatch):
    load_sample, calls = SegmentationDataset.load_sample, [0]

    def failing_after_the_first_batch(self, index, seed=None):
        calls[0] += 1
        if calls[0] > 2:
            raise OSError("Input/output error")
        return load_sample(self, index, seed)
    monkeypatch.setattr(SegmentationDataset, "load_sample", failing_after_the_first_batch)
    code, _, err = train_in_process(capsys, *TINY, *FAST, *data_flags(data), "--name", run_name)
    last = err.strip().splitlines()[-1]
    assert code == 1, err[-2000:]
    assert re.fullmatch(r"error: loading training batch 2 \(images .*\) failed: Input/output error; fix or remove "
                        r"those files \(a killed worker: lower --workers or --batch-size\); no checkpoint was "
                        r"saved yet", last), last
    assert "Traceback" not in err


# ---------------------------------------------------------------- the final test evaluation


def test_worker_killed_during_the_test_evaluation_is_a_one_line_error(data, run_name, capsys, monkeypatch):
    """The worker loading the test split dies (SIGKILL, as the OOM killer does); training is complete."""
    (data / "test.txt").write_text((data / "val.txt").read_text())
    test_images = {Path(line).name for line in (data / "test.txt").read_text().split()}
    load_sample = SegmentationDataset.load_sample
    testing = [False]

    def killed_in_the_test_worker(self, index, seed=None):
        if testing[0] and torch.utils.data.get_worker_info() is not None and self.pairs[index][0].name in test_images:
            os.kill(os.getpid(), signal.SIGKILL)
        return load_sample(self, index, seed)
    test = train.UnetTraining.test

    def test_marked(self):
        testing[0] = True
        return test(self)
    monkeypatch.setattr(SegmentationDataset, "load_sample", killed_in_the_test_worker)
    monkeypatch.setattr(train.UnetTraining, "test", test_marked)
    code, out, err = train_in_process(capsys, *TINY, *FAST, *data_flags(data), "--name", run_name, "--workers", "1")
    run_dir = RUNS / run_name
    last = err.strip().splitlines()[-1]
    assert code == 1, err[-2000:]
    assert last.startswith("error: ") and "DataLoader worker" in last, last
    assert last.endswith(f"training had finished: {run_dir / 'best-checkpoint.pth.tar'}"), last
    assert "Traceback" not in err
    assert not (run_dir / "test_results.json").exists()
    assert_complete_checkpoints(run_dir)


def test_worker_death_reported_during_the_test_forward_pass_is_a_one_line_error(data, tmp_path):
    """torch raises a dead worker from its SIGCHLD handler, wherever the main process is: here inside the
    model's forward pass, outside the loader's own try (this used to end the run with a traceback)."""
    trainer = small_trainer(data, tmp_path, test_split="val.txt")

    def dies(_images):
        raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. ")
    trainer.model.forward = dies
    with pytest.raises(RunFailure) as error:
        trainer.test()
    assert str(error.value) == ("DataLoader worker (pid 4242) is killed by signal: Killed. (killed for memory? lower "
                                "--workers or --batch-size); training had finished: "
                                f"{tmp_path}/best-checkpoint.pth.tar")
    assert not (tmp_path / "test_results.json").exists()


# ---------------------------------------------------------------- the validation preview


class FailingWandb(NullLogger):
    def log_image(self, key, image, step=None, caption=None):
        raise ConnectionError("wandb: network is unreachable")


def png_is_a_folder(trainer, monkeypatch):
    (trainer.run_dir / "val_predictions.png").mkdir()


def wandb_fails(trainer, monkeypatch):
    trainer.logger = FailingWandb()


def sample_fails_in_the_main_process(trainer, monkeypatch):
    """The evaluation loads in a worker and passes; the preview loads in the main process and fails."""
    load_sample = trainer.val_set.load_sample

    def failing(index, seed=None):
        if torch.utils.data.get_worker_info() is None:
            raise OSError("Input/output error")
        return load_sample(index, seed)
    monkeypatch.setattr(trainer.val_set, "load_sample", failing)


def out_of_memory(*_):
    raise MemoryError()


def grid_fails(trainer, monkeypatch):
    monkeypatch.setattr(run_logging, "prediction_grid", out_of_memory)


PREVIEW_FAULTS = [
    ("PNG cannot be written", png_is_a_folder,
     r"validation preview: writing .*val_predictions\.png failed \(OSError: OpenCV could not write "
     r".*val_predictions\.png\); training continues"),
    ("wandb fails", wandb_fails,
     r"validation preview: logging it to wandb failed \(ConnectionError: wandb: network is unreachable\); "
     r"training continues"),
    ("a sample fails", sample_fails_in_the_main_process,
     r"validation preview: drawing the first 2 validation images failed \(OSError: Input/output error\); "
     r"training continues"),
    ("drawing the grid fails", grid_fails,
     r"validation preview: drawing the first 2 validation images failed \(MemoryError\); training continues"),
]


@pytest.mark.parametrize("case, inject, message", PREVIEW_FAULTS, ids=[case[0] for case in PREVIEW_FAULTS])
def test_failing_validation_preview_is_a_warning_and_training_goes_on(case, inject, message, data, tmp_path,
                                                                      monkeypatch):
    trainer = small_trainer(data, tmp_path, epochs=2, workers=1 if case == "a sample fails" else 0)
    inject(trainer, monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert trainer.fit() == "finished"
    previews = [str(w.message) for w in caught if "validation preview" in str(w.message)]
    assert len(previews) == 2 and all(re.fullmatch(message, text) for text in previews), previews  # once per epoch
    assert trainer.global_step == 2 * 2 and trainer.evaluations == 2
    assert assert_complete_checkpoints(tmp_path)["checkpoint.pth.tar"] == 4
    assert (tmp_path / "val_predictions.png").is_file() == (case == "wandb fails")


# ---------------------------------------------------------------- float16: steps the gradient scaler skips


def cpu_grad_scaler(trainer):
    """What resolve_precision gives on CUDA under --use-amp, on the CPU: the same skip-and-rescale logic."""
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    assert trainer.scaler.is_enabled()


def test_steps_the_gradient_scaler_skips_are_counted_silently_and_keep_batchnorm(data, tmp_path):
    trainer = small_trainer(data, tmp_path)
    cpu_grad_scaler(trainer)
    images, masks = next(iter(trainer.train_loader))
    before = {key: value.clone() for key, value in trainer.model.state_dict().items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train_step(torch.full_like(images, math.nan), masks, trainer.new_stats())
    assert not [w for w in caught if "step skipped" in str(w.message)]  # the scaler's overflows are normal
    assert trainer.bad_steps == 1
    assert trainer.scaler.get_scale() == 2.0 ** 15  # the scaler saw the overflow and lowered its scale
    after = trainer.model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)  # weights and BatchNorm statistics
    assert trainer.optimizer.state == {}
    trainer.train_step(images, masks, trainer.new_stats())
    assert trainer.bad_steps == 0 and trainer.optimizer.state != {}  # a good step is taken and resets the count


def test_twenty_steps_the_gradient_scaler_skips_stop_the_run(data, tmp_path):
    trainer = small_trainer(data, tmp_path, epochs=12)  # 2 good steps, then every step non-finite
    cpu_grad_scaler(trainer)
    poison_after(trainer, good_samples=4)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(RunFailure) as error:
        warnings.simplefilter("always")
        trainer.fit()
    assert str(error.value).startswith("20 non-finite steps in a row: training diverged; lower --lr")
    assert not [w for w in caught if "step skipped" in str(w.message)]
    assert trainer.global_step == 2 + 19
    best = load_checkpoint(tmp_path / "best-checkpoint.pth.tar")
    assert best["global_step"] == 2
    assert all(torch.isfinite(value).all() for value in best["model"].values() if value.is_floating_point())
