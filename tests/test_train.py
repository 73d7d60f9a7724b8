"""train.py: schedule, early stopping, metrics, checkpoints, exact resume and an end-to-end CLI run."""

import csv
import json
import subprocess
import sys

import pytest
import torch

import train
from segtoolkit.models.checkpoints import load_checkpoint
from helpers.detect_runs import QUIET_ENV
from helpers.paths import REPO, RUNS
from segtoolkit.evaluation.metrics import ConfusionStats, EarlyStopping
from segtoolkit.models.factory import build_model, model_from_checkpoint, model_meta
from segtoolkit.outputs.files import make_run_dir
from helpers.training import make_trainer
from helpers.wandb_records import logged_keys


def test_onecycle_spans_exactly_epochs_times_steps(tiny_data, tmp_path):
    trainer = make_trainer(tiny_data, tmp_path, epochs=3)
    assert trainer.steps_per_epoch == 4  # 8 images, batch 2, drop_last
    assert trainer.scheduler.total_steps == 12
    used = []  # the LR each of the 12 optimizer steps runs with
    for _ in range(12):
        used.append(trainer.scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.scheduler.step()
    assert max(used) == pytest.approx(1e-3, rel=0.05)
    assert used[-1] < 1e-6 and used[-1] == min(used)  # the last step is the end of the cycle
    with pytest.raises(ValueError):  # a 13th step would run past the schedule
        trainer.scheduler.step()


def test_early_stopping_counts_evaluations_without_improvement():
    stopper = EarlyStopping(patience=3)
    assert [stopper(i, f) for i, f in enumerate([0.5, 0.6, 0.6, 0.59])] == [False] * 4
    assert stopper(4, 0.58) is True  # evaluations 2, 3, 4 did not beat 0.6 (an equal value is no improvement)
    assert (stopper.best_fitness, stopper.best_epoch) == (0.6, 1)
    restored = EarlyStopping()
    restored.load_state_dict(stopper.state_dict())
    assert restored.state_dict() == stopper.state_dict()
    assert EarlyStopping(patience=0)(100, 0.0) is False


def test_metrics_match_hand_computed_dice_and_iou():
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, :2, :2] = 1  # 4 foreground pixels
    target[1, 0, 0, :] = 1  # 4 foreground pixels
    logits = torch.full((2, 1, 4, 4), -5.0)
    logits[0, 0, :2, :3] = 5  # 4 tp, 2 fp
    logits[1, 0, 0, :2] = 5  # 2 tp, 2 fn
    stats = ConfusionStats(classes=1)
    stats.update(logits, target, torch.tensor(0.5))
    metrics = stats.compute("val")
    tp, fp, fn = 6, 2, 2
    assert metrics["val/dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert metrics["val/iou"] == pytest.approx(tp / (tp + fp + fn))
    assert metrics["val/loss"] == pytest.approx(0.5)

    labels = torch.tensor([[[0, 1], [2, 2]]])
    predicted = torch.tensor([[[0, 1], [1, 2]]])
    logits3 = torch.nn.functional.one_hot(predicted, 3).permute(0, 3, 1, 2).float()
    stats3 = ConfusionStats(classes=3)
    stats3.update(logits3, labels, torch.tensor(1.0))
    multi = stats3.compute("val", ["bg", "a", "b"])
    assert multi["val/dice_bg"] == pytest.approx(1.0)
    assert multi["val/dice_a"] == pytest.approx(2 / 3)  # tp 1, fp 1, fn 0
    assert multi["val/iou_b"] == pytest.approx(1 / 2)  # tp 1, fp 0, fn 1
    assert multi["val/dice"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    ignored = ConfusionStats(classes=3, ignore_index=255)
    ignored.update(logits3, torch.tensor([[[0, 1], [255, 2]]]), torch.tensor(1.0))  # the miss is ignored
    assert ignored.compute("val", ["bg", "a", "b"])["val/dice_a"] == pytest.approx(1.0)


def test_checkpoint_round_trip_rebuilds_the_model_from_the_file_alone(tiny_data, tmp_path):
    trainer = make_trainer(tiny_data, tmp_path, epochs=1)
    trainer.train_one_epoch()
    trainer.save("last")
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pth.tar")
    assert checkpoint["meta"] == model_meta("Unet", "resnet18", 1, 64)
    assert {"optimizer", "scheduler", "scaler", "epoch", "best_fitness", "early_stopping"} <= set(checkpoint)
    model = model_from_checkpoint(checkpoint).eval()
    trainer.model.eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(model(images), trainer.model(images))
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_continues_epoch_schedule_and_weights_exactly(tiny_data, tmp_path):
    straight = make_trainer(tiny_data, tmp_path / "a", epochs=3)
    (tmp_path / "a").mkdir()
    straight.fit()

    (tmp_path / "b").mkdir()
    first = make_trainer(tiny_data, tmp_path / "b", epochs=3)
    first.train_one_epoch()
    first.save("last")
    lr_at_stop = first.scheduler.get_last_lr()[0]

    second = make_trainer(tiny_data, tmp_path / "b", epochs=3)
    second.load_state(load_checkpoint(tmp_path / "b" / "checkpoint.pth.tar"))
    assert (second.epoch, second.global_step) == (1, 4)
    assert second.scheduler.get_last_lr()[0] == pytest.approx(lr_at_stop)
    second.fit()
    assert second.epoch == 3 and second.scheduler.last_epoch == 12
    for (name, a), b in zip(straight.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_resume_mid_epoch_skips_the_batches_already_done(tiny_data, tmp_path):
    trainer = make_trainer(tiny_data, tmp_path, epochs=2)
    trainer.train_sampler.set_epoch(0)
    full = list(trainer.train_sampler)
    trainer.train_sampler.skip = 3
    assert list(trainer.train_sampler) == full[6:] and len(trainer.train_sampler) == 2


def test_new_run_never_overwrites_an_existing_folder(tmp_path):
    first = make_run_dir(tmp_path / "exp")
    second = make_run_dir(tmp_path / "exp")
    assert (first.name, second.name) == ("exp", "exp2")


def test_pin_memory_is_a_real_on_off_flag():
    assert train.parse_args(["--no-pin-memory"]).pin_memory is False
    assert train.parse_args(["--pin-memory"]).pin_memory is True


@pytest.mark.slow
def test_cli_end_to_end_writes_checkpoints_results_and_wandb(tiny_data, run_name):
    command = [sys.executable, str(REPO / "train.py"), "--data-dir", str(tiny_data),
               "--train-list", str(tiny_data / "train.txt"), "--val-list", str(tiny_data / "val.txt"),
               "--test-list", str(tiny_data / "test.txt"), "--encoder", "resnet18", "--encoder-weights", "none",
               "--patch-size", "64", "--epochs", "2", "--batch-size", "4", "--workers", "1",
               "--wandb-mode", "offline", "--name", run_name, "--project", str(RUNS)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=QUIET_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = RUNS / run_name
    assert "test: dice" in result.stdout
    for name in ("best-checkpoint.pth.tar", "checkpoint.pth.tar", "results.csv", "results.png",
                 "val_predictions.png", "test_results.json"):
        assert (run_dir / name).is_file(), name
    with open(run_dir / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:8] == ["epoch", "lr", "train/loss", "train/dice", "train/iou", "val/loss", "val/dice",
                                 "val/iou"]
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert all(0 <= float(row["val/dice"]) <= 1 for row in rows)
    checkpoint = load_checkpoint(run_dir / "checkpoint.pth.tar")
    assert checkpoint["epoch"] == 2 and checkpoint["config"]["patch_size"] == 64
    assert checkpoint["meta"]["encoder"] == "resnet18" and checkpoint["meta"]["patch_size"] == 64
    history, config, summary = logged_keys(run_dir)
    assert {"epoch", "lr", "train/loss", "train/dice", "train/iou", "val/loss", "val/dice", "val/iou",
            "val/predictions/path", "test/dice", "test/iou"} <= history
    assert {"lr", "encoder", "patch_size", "epochs"} <= config
    assert {"test/dice", "test/iou"} <= summary
    assert set(json.loads((run_dir / "test_results.json").read_text())) >= {"test/dice", "test/iou"}

    # a finished run given to --load-model is not resumed (that would rewrite it): it fine-tunes in a new run
    finetuned = subprocess.run(command[:2] + ["--load-model", str(run_dir / "checkpoint.pth.tar"), "--epochs", "1",
                                              "--workers", "0", "--wandb-mode", "disabled", "--name", run_name,
                                              "--project", str(RUNS)],
                               capture_output=True, text=True, timeout=300, cwd=REPO, env=QUIET_ENV)
    assert finetuned.returncode == 0, finetuned.stderr[-3000:]
    assert "fine-tuning from" in finetuned.stdout and f"training in {run_dir}2" in finetuned.stdout
    assert load_checkpoint(run_dir / "checkpoint.pth.tar")["epoch"] == 2


def test_best_checkpoint_waits_for_check_best_cooldown(tiny_data, tmp_path):
    trainer = make_trainer(tiny_data, tmp_path, epochs=2, check_best_cooldown=2)
    assert trainer.config.check_best_cooldown == 2
    trainer.fit()
    assert (tmp_path / "checkpoint.pth.tar").is_file()
    assert not (tmp_path / "best-checkpoint.pth.tar").exists()
    eager = make_trainer(tiny_data, tmp_path / "eager", epochs=1)
    (tmp_path / "eager").mkdir()
    eager.fit()
    assert (tmp_path / "eager" / "best-checkpoint.pth.tar").is_file()


def test_encoder_weights_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    source = build_model("Unet", "resnet18", 1)
    torch.save(source.encoder.state_dict(), tmp_path / "encoder.pth")
    torch.manual_seed(2)
    model = build_model("Unet", "resnet18", 1, encoder_weights=str(tmp_path / "encoder.pth"))
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value), key


def test_unreachable_imagenet_weights_warn_once_and_train_on(tmp_path):
    code = ("import warnings; from segtoolkit.models import factory; warnings.simplefilter('always');\n"
            "m = factory.build_model('Unet', 'resnet18', 1, encoder_weights='imagenet');\n"
            "print('built', type(m).__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                            env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "built Unet" in result.stdout
    assert result.stderr.count("could not download imagenet weights for encoder resnet18") == 1
    assert "--encoder-weights none" in result.stderr


def test_cli_multiclass_eval_step_and_no_test_split(tmp_path, run_name):
    from make_sample_data import write_dataset
    write_dataset(tmp_path, 10, seed=2, classes=3)
    command = [sys.executable, str(REPO / "train.py"), "--data-dir", str(tmp_path), "--search-files",
               "--val-split", "0.2", "--classes", "3", "--encoder", "mobilenet_v2", "--encoder-weights", "none",
               "--patch-size", "64", "--epochs", "2", "--batch-size", "2", "--eval-step", "2", "--workers", "0",
               "--wandb-mode", "disabled", "--name", run_name, "--project", str(RUNS)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=QUIET_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = RUNS / run_name
    with open(run_dir / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4  # 8 images / batch 2 = 4 steps per epoch, evaluated every 2 steps
    assert [row["epoch"] for row in rows] == ["0.5", "1", "1.5", "2"]
    assert {"val/dice_class_0", "val/dice_class_1", "val/dice_class_2", "val/iou_class_2"} <= set(rows[0])
    assert not (run_dir / "test_results.json").exists() and "test: dice" not in result.stdout
    assert load_checkpoint(run_dir / "best-checkpoint.pth.tar")["meta"]["classes"] == 3
