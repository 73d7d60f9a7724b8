"""Train an smp segmentation model on a folder of images and masks.

Usage:
    python train.py                                          # bundled sample, Unet/resnet34
    python train.py --encoder resnet18 --patch-size 128 --epochs 20 --encoder-weights none
    python train.py --data-dir data/mine --search-files --val-split 0.2 --classes 3
    python train.py --load-model checkpoints/exp/checkpoint.pth.tar    # resume where it stopped
    torchrun --nproc_per_node=2 train.py --batch-size 8              # 8 images per process

Writes checkpoints/<name>/: best-checkpoint.pth.tar, checkpoint.pth.tar, results.csv, results.png,
val_predictions.png, test_results.json and the wandb run (online with credentials, else offline).
Exit codes: 0 done, 1 the run failed (diverged, a DataLoader worker killed), 2 bad input (a one-line
error naming the file or flag), 130 stopped by Ctrl-C or SIGTERM (resume with --load-model).
"""

import argparse
import contextlib
import itertools
import math
import signal
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import distributed
from dataset import class_pixel_counts, label_warnings, make_dataset, pair_masks, read_split_file, search_files
from models import (ARCHITECTURE_NAMES, RunFailure, UserError, build_model,
                    load_checkpoint, model_meta, save_checkpoint, unwrap)
from metrics import ConfusionStats, EarlyStopping
from run_config import RunConfig
from run_logging import NullLogger, RunLogger, metrics_json, prediction_grid, resolve_wandb_mode
from sampling import ResumableSampler, ShardSampler

REPO = Path(__file__).resolve().parent
MAX_BAD_STEPS = 20
CHECKPOINT_NAMES = {"last": "checkpoint.pth.tar", "best": "best-checkpoint.pth.tar"}


def resolve_precision(device, use_amp):
    """(autocast context factory, GradScaler): float16 + scaler on CUDA, bfloat16 on CPU, else plain fp32."""
    if use_amp and device.type == "cuda":
        return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda")
    if use_amp:
        return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), torch.amp.GradScaler(device.type, enabled=False)
    return contextlib.nullcontext, torch.amp.GradScaler(device.type, enabled=False)


def new_run_dir(root, name):
    """checkpoints/<name>, or <name>2, <name>3... if taken: a new run never overwrites an old one."""
    root.mkdir(parents=True, exist_ok=True)
    for index in range(1, 10000):
        candidate = root / (name if index == 1 else f"{name}{index}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise UserError(f"too many runs named {name} in {root}; choose another --name")


def check_batch_size(train_size, batch_size, world_size):
    if train_size < batch_size * world_size:
        raise UserError(f"--batch-size {batch_size} x {world_size} process(es) is larger than the training set "
                        f"({train_size} images) and incomplete batches are dropped; lower --batch-size or add images")


def ignore_sigint_in_worker(_):
    """Ctrl-C goes to the whole process group; the main process handles it, workers must not die of it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def write_rgb_image(path, image):
    """An RGB uint8 array to an image file; OSError when OpenCV could not write it (it only returns False)."""
    import cv2
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"OpenCV could not write {path}")


def preview_step(what, function, *args, **kwargs):
    """function(*args, **kwargs) for the validation preview, or None with a warning naming `what` when it
    fails: losing a preview image is not worth losing a run."""
    try:
        return function(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - any failure of the preview, whatever its kind
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = f"{type(error).__name__}: {lines[-1]}" if lines else type(error).__name__
        warnings.warn(f"validation preview: {what} failed ({reason}); training continues")
        return None


class UnetTraining:
    """Trains one smp model: data, optimizer, schedule, evaluation, early stopping and checkpoints.

    Built from explicit keyword arguments (see `main` for the mapping from the command line).
    """

    def __init__(self, model, train_set, val_set, test_set=None, *, run_dir, meta, epochs=100, lr=1e-3,
                 adam_eps=1e-8, weight_decay=1e-2, batch_size=8, workers=2, pin_memory=False, use_amp=False,
                 clip_grad=255.0, eval_step=None, patience=10, check_best_cooldown=0, ignore_index=None,
                 save_checkpoints=False, seed=0, device=torch.device("cpu"), process=distributed.Process(),
                 logger=None, config=None, data=None, sync_bn=False, freeze_bn=False, num_preview=4):
        self.meta, self.config, self.data = meta, dict(config or {}), data
        self.classes = meta["classes"]
        self.run_dir, self.process, self.device = Path(run_dir), process, device
        self.epochs, self.eval_step, self.clip_grad = epochs, eval_step, clip_grad
        self.check_best_cooldown, self.save_checkpoints = check_best_cooldown, save_checkpoints
        self.ignore_index, self.num_preview = ignore_index, num_preview
        self.logger = logger or NullLogger()
        self.train_set, self.val_set, self.test_set = train_set, val_set, test_set

        self.freeze_bn = freeze_bn
        if sync_bn and process.distributed:
            if device.type != "cuda":
                raise UserError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only); drop it on the CPU")
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(device)
        if process.distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)

        check_batch_size(len(train_set), batch_size, process.world_size)
        pin = pin_memory and device.type == "cuda"
        loader_options = dict(num_workers=workers, pin_memory=pin, persistent_workers=workers > 0,
                              worker_init_fn=ignore_sigint_in_worker if workers > 0 else None)
        self.train_sampler = ResumableSampler(train_set, True, seed, process, batch_size)
        self.train_loader = DataLoader(train_set, batch_size, sampler=self.train_sampler, drop_last=True,
                                       **loader_options)
        self.val_loader = self.eval_loader(val_set, batch_size, loader_options)
        self.test_loader = self.eval_loader(test_set, batch_size, dict(loader_options, persistent_workers=False))
        self.steps_per_epoch = len(self.train_loader)  # what each process really steps (drop_last)

        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, eps=adam_eps, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=lr,
                                                             total_steps=epochs * self.steps_per_epoch)
        self.use_amp = use_amp
        self.autocast, self.scaler = resolve_precision(device, use_amp)
        self.criterion = torch.nn.BCEWithLogitsLoss() if self.classes == 1 else \
            torch.nn.CrossEntropyLoss(ignore_index=-100 if ignore_index is None else ignore_index)
        self.early_stopping = EarlyStopping(patience)
        self.best_fitness = -math.inf
        self.epoch = self.step_in_epoch = self.global_step = self.evaluations = 0
        self.finished = False  # set when training ends for good (last epoch or early stop): never resumed then
        self.best_refused = {"cooldown": 0, "not finite": 0}  # evaluations that could not become the best
        self.bad_steps = 0
        self.stop_requested = False

    def eval_loader(self, dataset, batch_size, options):
        if dataset is None or len(dataset) == 0:
            return None
        return DataLoader(dataset, batch_size, sampler=ShardSampler(dataset, self.process), **options)

    # ------------------------------------------------------------ state

    def state(self):
        """Everything a resume needs, beside the weights and metadata."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step, "evaluations": self.evaluations, "best_fitness": self.best_fitness,
                "early_stopping": self.early_stopping.state_dict(), "wandb_id": self.logger.wandb_id,
                "epochs": self.epochs, "finished": self.finished, "world_size": self.process.world_size,
                "data": self.data}

    def load_state(self, checkpoint):
        """Continue exactly where `checkpoint` stopped: weights, optimizer, LR schedule, epoch, stopping."""
        unwrap(self.model).load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.epoch, self.step_in_epoch = checkpoint["epoch"], checkpoint["step_in_epoch"]
        self.global_step, self.best_fitness = checkpoint["global_step"], checkpoint["best_fitness"]
        self.evaluations = checkpoint["evaluations"]
        self.early_stopping.load_state_dict(checkpoint["early_stopping"])

    def save(self, kind):
        """Write checkpoint.pth.tar (kind 'last': what a resume continues) or best-checkpoint.pth.tar
        (kind 'best': weights to detect with or fine-tune from, never resumed)."""
        if self.process.is_main:
            save_checkpoint(self.run_dir / CHECKPOINT_NAMES[kind], self.model, self.meta, self.config, kind=kind,
                            **self.state())

    # ------------------------------------------------------------ loops

    def request_stop(self, signum, _frame):
        """SIGINT/SIGTERM: finish the current step, then save and leave (see `fit`)."""
        if self.stop_requested:  # a second Ctrl-C while saving is ignored: the save must complete
            return
        self.stop_requested = True
        if self.process.is_main:
            print(f"\n{signal.Signals(signum).name} received: finishing this step, then saving checkpoint.pth.tar",
                  file=sys.stderr, flush=True)

    def train_step(self, images, masks, stats):
        """One optimizer step; a non-finite loss or gradient skips the step (and counts it).

        Under float16 the gradient scaler skips exactly the steps whose unscaled gradient is not finite;
        those count too, but without a warning each: its first overflows, while it calibrates the scale,
        are normal."""
        images = images.to(self.device, non_blocking=True)
        masks = masks.to(self.device, non_blocking=True)
        buffers = [buffer.clone() for buffer in self.model.buffers()]  # BatchNorm statistics: a skipped step keeps them
        with self.autocast():
            logits = self.model(images)
            loss = self.criterion(logits.float(), masks)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        # one host-device sync for both checks (on CUDA each separate check would stall the queue)
        loss_finite, norm_finite = torch.isfinite(torch.stack([loss.detach().float(), norm.float()])).tolist()
        if loss_finite and norm_finite:
            self.scaler.step(self.optimizer)  # a disabled scaler just calls optimizer.step()
            self.bad_steps = 0
        self.scaler.update()  # a skipped step lowers the float16 scale; a no-op without a scaler
        if not (loss_finite and norm_finite):
            for buffer, saved in zip(self.model.buffers(), buffers):
                buffer.copy_(saved)
            self.bad_steps += 1
            if not self.scaler.is_enabled():
                warnings.warn(f"non-finite loss or gradient at step {self.global_step}: step skipped "
                              f"({self.bad_steps} in a row)")
            if self.bad_steps >= MAX_BAD_STEPS:
                raise RunFailure(f"{MAX_BAD_STEPS} non-finite steps in a row: training diverged; lower --lr or "
                                 f"check the data. best-checkpoint.pth.tar holds the last good model")
        self.scheduler.step()
        if loss_finite:
            stats.update(logits, masks, loss)
        return loss

    def set_train_mode(self):
        """model.train(), except BatchNorm layers under --freeze-bn, which keep their running statistics."""
        self.model.train()
        if self.freeze_bn:
            for module in self.model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def train_one_epoch(self):
        """Train to the end of the epoch; returns 'early-stop' when an evaluation says so, else None."""
        self.set_train_mode()
        self.train_sampler.set_epoch(self.epoch)
        self.train_sampler.skip = self.step_in_epoch
        stats = self.new_stats()
        bar = tqdm(self.train_loader, total=len(self.train_loader), initial=0, leave=True, dynamic_ncols=True,
                   desc=f"epoch {self.epoch + 1}/{self.epochs}", disable=not self.process.is_main)
        for images, masks in self.batches(bar, self.train_loader, "training"):
            loss = self.train_step(images, masks, stats)
            self.step_in_epoch += 1
            self.global_step += 1
            if self.global_step % 10 == 0 or self.step_in_epoch == self.steps_per_epoch:
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            if distributed.any_process(self.stop_requested, self.device):
                self.stop_requested = True
                return None
            if self.eval_step and self.global_step % self.eval_step == 0 and self.step_in_epoch < self.steps_per_epoch:
                if self.end_of_evaluation_period(stats):
                    return "early-stop"
                stats = self.new_stats()
                self.set_train_mode()
        bar.close()
        self.epoch += 1
        self.step_in_epoch = 0
        # every run ends with an evaluation, even when --eval-step is longer than the run
        if self.eval_step is None or self.global_step % self.eval_step == 0 or self.epoch == self.epochs:
            return "early-stop" if self.end_of_evaluation_period(stats) else None
        return None

    def batches(self, iterable, loader, split):
        """Iterate a DataLoader (or a progress bar over one); a failure while loading a batch becomes a
        one-line RunFailure naming the batch's files, so a crash hours in says what to fix."""
        iterator = None
        for number in itertools.count():
            try:
                if iterator is None:  # iter() starts or resumes the workers, and meets a dead one first
                    iterator = iter(iterable)
                batch = next(iterator)
            except StopIteration:
                return
            except Exception as error:  # noqa: BLE001 - raised by the dataset, in this process or a worker
                # a worker killed after the last batch fails the next() that would have ended the loop
                indices = dict(enumerate(loader.batch_sampler)).get(number, [])
                files = ", ".join(str(loader.dataset.pairs[index][0]) for index in indices)
                what = f"{split} batch {number + 1} (images {files})" if files else f"{split} data after batch {number}"
                fix = "fix or remove those files (a killed worker: lower --workers or --batch-size)" if files else \
                    "a killed worker? lower --workers or --batch-size"
                lines = [line for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
                raise RunFailure(f"loading {what} failed: {lines[-1].strip()}; {fix}; {self.resume_hint(split)}") \
                    from None
            yield batch

    def resume_hint(self, split="training"):
        """What is left after a failure: the checkpoint to resume from, or, in the test evaluation, the
        finished training."""
        if split == "test":
            return f"training had finished: {self.run_dir / 'best-checkpoint.pth.tar'}"
        checkpoint = self.run_dir / "checkpoint.pth.tar"
        if checkpoint.exists():
            return f"then resume with: {resume_command(checkpoint, self.process.world_size)}"
        return "no checkpoint was saved yet"

    @contextlib.contextmanager
    def worker_crash_as_error(self, split):
        """torch reports a worker killed mid-step (often for memory) from a SIGCHLD handler, so the
        RuntimeError can surface anywhere in the loop; turn it into the one-line RunFailure."""
        try:
            yield
        except RuntimeError as error:
            if not str(error).startswith("DataLoader worker"):
                raise
            raise RunFailure(f"{str(error).splitlines()[0].strip()} (killed for memory? lower --workers or "
                             f"--batch-size); {self.resume_hint(split)}") from None

    def new_stats(self):
        return ConfusionStats(self.classes, self.ignore_index, self.device)

    @torch.inference_mode()
    def evaluate(self, loader, prefix="val"):
        """Loss, Dice and IoU over a whole loader (all processes' shards summed).

        The unwrapped model, with rank 0's BatchNorm statistics: DistributedDataParallel's forward syncs
        buffers with every process, and a process whose shard is empty (a split smaller than the number of
        processes) would never join, leaving the others waiting forever."""
        model = unwrap(self.model)
        distributed.broadcast_buffers(model)
        stats = self.new_stats()
        for images, masks in self.batches(loader, loader, prefix):
            images, masks = images.to(self.device), masks.to(self.device)
            with self.autocast():
                logits = model(images)
            logits = logits.float()
            stats.update(logits, masks, self.criterion(logits, masks))
        return stats.compute(prefix, self.meta["class_names"] if self.classes > 1 else None)

    def end_of_evaluation_period(self, train_stats):
        """Evaluate, log, write checkpoints; return True when early stopping says stop."""
        self.model.eval()
        progress = self.epoch + self.step_in_epoch / self.steps_per_epoch  # epochs done, fractional with --eval-step
        metrics = {"epoch": round(progress, 3), "lr": self.scheduler.get_last_lr()[0]}
        metrics.update(train_stats.compute("train", self.meta["class_names"] if self.classes > 1 else None))
        metrics.update(self.evaluate(self.val_loader, "val"))
        fitness = metrics["val/dice"]
        finite = math.isfinite(metrics["val/loss"]) and math.isfinite(fitness)
        improved = fitness > self.best_fitness and finite and progress > self.check_best_cooldown
        self.best_refused["cooldown"] += progress <= self.check_best_cooldown
        self.best_refused["not finite"] += not finite
        self.evaluations += 1
        stop = self.early_stopping(self.evaluations, fitness)
        if improved:
            self.best_fitness = fitness
        metrics["best/val_dice"] = max(self.best_fitness, -1.0)
        if self.process.is_main:
            self.logger.log(metrics, step=self.global_step)
            self.log_predictions()
            tqdm.write(" ".join(f"{key}={value:.4f}" for key, value in metrics.items()
                                if key.startswith(("train/", "val/")) and "_" not in key.split("/")[1])
                       + (" (best)" if improved else ""))
        if improved:
            self.save("best")
        self.save("last") if self.save_checkpoints else None
        return distributed.broadcast_object(stop)

    def log_predictions(self):
        """Image | ground truth | prediction for the first validation images, to a PNG and wandb. A preview
        is not worth a run: a failure here is a warning naming what failed, and training goes on."""
        if min(self.num_preview, len(self.val_set)) == 0:
            return
        path = self.run_dir / "val_predictions.png"
        grid = preview_step(f"drawing the first {min(self.num_preview, len(self.val_set))} validation images",
                            self.prediction_grid)
        if grid is not None:
            preview_step(f"writing {path}", write_rgb_image, path, grid)
            preview_step("logging it to wandb", self.logger.log_image, "val/predictions", grid,
                         step=self.global_step, caption="image | ground truth | prediction")

    @torch.inference_mode()
    def prediction_grid(self):
        """The RGB preview grid: image | ground truth | prediction, one row per validation image."""
        count = min(self.num_preview, len(self.val_set))
        samples = [self.val_set.load_sample(i) for i in range(count)]
        images = torch.stack([s[0] for s in samples]).to(self.device)
        with self.autocast():
            logits = unwrap(self.model)(images).float()
        predictions = (logits[:, 0] > 0).long() if self.classes == 1 else logits.argmax(1)
        truth = [s[1].squeeze(0).long().numpy() for s in samples]
        truth = [np.where(t == self.ignore_index, 0, t) if self.ignore_index is not None else t for t in truth]
        mean = np.array(self.meta["mean"]).reshape(3, 1, 1)
        std = np.array(self.meta["std"]).reshape(3, 1, 1)
        shown = [np.clip((s[0].numpy() * std + mean) * 255, 0, 255).astype(np.uint8).transpose(1, 2, 0)
                 for s in samples]
        return prediction_grid(shown, truth, list(predictions.cpu().numpy()), self.classes)

    def fit(self):
        """Train to the end, early stop or a stop request; returns 'finished', 'early-stop' or 'interrupted'."""
        with self.stop_requests(), self.worker_crash_as_error("training"):
            outcome = "finished"
            while self.epoch < self.epochs:
                result = self.train_one_epoch()
                if self.stop_requested:
                    self.save("last")
                    return "interrupted"
                self.finished = result == "early-stop" or self.epoch >= self.epochs
                self.save("last")
                if result == "early-stop":
                    outcome = "early-stop"
                    if self.process.is_main:
                        print(f"early stopping: val Dice has not improved for {self.early_stopping.patience} "
                              f"evaluations (best {self.early_stopping.best_fitness:.4f} at evaluation "
                              f"{self.early_stopping.best_epoch})")
                    break
            return outcome

    @contextlib.contextmanager
    def stop_requests(self):
        """SIGINT and SIGTERM call `request_stop` while training; the previous handlers come back after."""
        handlers = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def test(self):
        """Evaluate the best checkpoint (or the last weights) on the test split; None when it is empty."""
        if self.test_loader is None:
            return None
        best = self.run_dir / "best-checkpoint.pth.tar"
        distributed.barrier()
        if best.exists():
            unwrap(self.model).load_state_dict(load_checkpoint(best)["model"])
        self.model.eval()
        with self.worker_crash_as_error("test"):
            metrics = self.evaluate(self.test_loader, "test")
        if self.process.is_main:
            (self.run_dir / "test_results.json").write_text(metrics_json(metrics))
            self.logger.summary(metrics)
            self.logger.log(metrics, step=self.global_step)
        return metrics

    def why_no_best(self):
        """Why no evaluation wrote best-checkpoint.pth.tar, for the run's last line."""
        if self.evaluations == 0:
            return "no evaluation ran"
        reasons = [f"{self.best_refused['cooldown']} were within --check-best-cooldown {self.check_best_cooldown} "
                   f"epochs" if self.best_refused["cooldown"] else "",
                   f"{self.best_refused['not finite']} had a non-finite validation loss or Dice (NaN Dice: the "
                   f"validation masks hold no foreground)" if self.best_refused["not finite"] else ""]
        return f"none of the {self.evaluations} evaluation(s) could count as the best (" + \
            "; ".join(reason for reason in reasons if reason) + ")"

    def summary(self):
        """The table printed at the start of a run."""
        parameters = sum(p.numel() for p in self.model.parameters())
        rows = [("model", f"{self.meta['architecture']} / {self.meta['encoder']} ({parameters / 1e6:.2f}M params)"),
                ("classes", f"{self.classes} ({', '.join(self.meta['class_names'])})"),
                ("data", f"train {len(self.train_set)}, val {len(self.val_set)}, "
                         f"test {len(self.test_set) if self.test_set else 'none'}, images at patch "
                         f"{self.meta['patch_size']}"),
                ("schedule", f"{self.epochs} epochs x {self.steps_per_epoch} steps, AdamW + OneCycleLR to "
                             f"{self.optimizer.defaults['lr']:g}, batch {self.train_loader.batch_size}"),
                ("runtime", f"{self.device}, {self.process.world_size} process(es), mixed precision "
                            f"{'on' if self.use_amp else 'off'}"),
                ("run folder", str(self.run_dir))]
        width = max(len(key) for key, _ in rows)
        return "\n".join(f"  {key:<{width}}  {value}" for key, value in rows)


# ---------------------------------------------------------------- command line


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the docstring's layout; show a default unless the help text already says it (or it is unset)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def parse_args(argv=None):
    """The command line as a namespace; `given` holds the names of the flags typed (a resume refuses those
    that would change the run)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    unset = object()
    probe = parser.parse_args(argv, namespace=argparse.Namespace(**{a.dest: unset for a in parser._actions}))
    args.given = {key for key, value in vars(probe).items() if value is not unset}
    return args


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    data = parser.add_argument_group("Data")
    data.add_argument("--data-dir", type=Path, default=None,
                      help="dataset root holding the image and mask folders (default: data/sample, the bundled sample)")
    data.add_argument("--img-dir", default="imgs", help="image folder name under --data-dir")
    data.add_argument("--mask-dir", default="masks", help="mask folder name under --data-dir (same file stems)")
    data.add_argument("--train-list", type=Path, default=None,
                      help="training split file (default: training_dataset.txt: the repository's for the bundled "
                           "sample, else the one inside --data-dir)")
    data.add_argument("--val-list", type=Path, default=None, help="validation split file (default: "
                      "validation_dataset.txt, found like --train-list's)")
    data.add_argument("--test-list", type=Path, default=None,
                      help="test split file (default: test_dataset.txt, found like --train-list's; without one "
                           "there is no test evaluation)")
    data.add_argument("--search-files", action="store_true",
                      help="ignore the split files: pair imgs/ and masks/ by stem and split them randomly")
    data.add_argument("--val-split", type=float, default=0.2, help="validation fraction with --search-files")
    data.add_argument("--test-split", type=float, default=0.0, help="test fraction with --search-files")
    data.add_argument("--patch-size", type=int, default=256,
                      help="square training size, a multiple of 32; images are letterboxed into it")
    data.add_argument("--classes", type=int, default=1,
                      help="1: binary masks (0/1 or 0/255); N>=2: masks hold class indices 0..N-1")
    data.add_argument("--ignore-index", type=int, default=None,
                      help="multi-class mask value left out of loss and metrics (e.g. 255)")
    model = parser.add_argument_group("Model")
    model.add_argument("--model", default="Unet", help=f"smp architecture: {', '.join(ARCHITECTURE_NAMES)}")
    model.add_argument("--encoder", default="resnet34", help="any smp encoder (resnet18, mobilenet_v2, tu-...)")
    model.add_argument("--encoder-weights", default="imagenet",
                       help="'imagenet' (downloaded; random init with a warning when offline), 'none', or a file")
    model.add_argument("--load-model", type=Path, default=None,
                       help="an unfinished run's checkpoint.pth.tar resumes it; a finished run's, a "
                            "best-checkpoint.pth.tar or plain weights start a new run from those weights")
    optim = parser.add_argument_group("Optimization")
    optim.add_argument("--epochs", type=int, default=50, help="passes over the training split")
    optim.add_argument("--batch-size", type=int, default=8, help="images per step per process (torchrun: per GPU)")
    optim.add_argument("--lr", type=float, default=1e-3, help="peak learning rate reached by OneCycleLR")
    optim.add_argument("--adam-eps", type=float, default=1e-8, help="AdamW epsilon")
    optim.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay")
    optim.add_argument("--clip-grad", type=float, default=255.0, help="gradient norm clipping threshold")
    optim.add_argument("--use-amp", action="store_true",
                       help="mixed precision: float16 + gradient scaler on CUDA, bfloat16 on CPU")
    optim.add_argument("--eval-step", type=int, default=None,
                       help="evaluate every N optimizer steps (default: once per epoch; the run's last step is "
                            "always evaluated)")
    optim.add_argument("--patience", type=int, default=10,
                       help="stop when val Dice has not improved for this many evaluations (0: never)")
    optim.add_argument("--check-best-cooldown", type=int, default=0,
                       help="evaluations within the first N epochs never write best-checkpoint.pth.tar")
    optim.add_argument("--seed", type=int, default=0, help="seed for weights, shuffling, splits and augmentation")
    optim.add_argument("--no-augment", action="store_true", help="train without augmentation")
    optim.add_argument("--freeze-bn", action="store_true",
                       help="keep BatchNorm layers in eval mode (running statistics), e.g. for tiny batches")
    runtime = parser.add_argument_group("Runtime")
    runtime.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1")
    runtime.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    runtime.add_argument("--pin-memory", action=argparse.BooleanOptionalAction, default=True,
                         help="pin host memory for faster CUDA copies (ignored on the CPU)")
    runtime.add_argument("--sync-bn", action="store_true", help="torchrun: convert BatchNorm to SyncBatchNorm")
    runtime.add_argument("--verbose", action="store_true", help="show full tracebacks for errors")
    logging = parser.add_argument_group("Logging")
    logging.add_argument("--name", default="exp", help="run name: checkpoints/<name> (a suffix is added if taken)")
    logging.add_argument("--save-checkpoints", action="store_true",
                         help="also write checkpoint.pth.tar after every evaluation (it is always written at "
                              "the end of every epoch)")
    logging.add_argument("--wandb-mode", default="auto", choices=("auto", "online", "offline", "disabled"),
                         help="auto: online with wandb credentials, otherwise offline (sync later with `wandb sync`)")
    logging.add_argument("--wandb-project", default="unet-segmentation", help="wandb project name")
    return parser


def load_splits(config):
    """(train, val, test) lists of (image, mask) pairs from the split files or --search-files."""
    if config.search_files:
        train, val, test = search_files(config.data_dir, config.img_dir, config.mask_dir, config.val_split,
                                        config.test_split, config.seed)
    else:
        mask_dir = Path(config.data_dir) / config.mask_dir
        train, val, test = (pair_masks(read_split_file(path, config.data_dir, config.img_dir), mask_dir)
                            if path else [] for path in (config.train_list, config.val_list, config.test_list))
    for name, pairs in (("training", train), ("validation", val)):
        if not pairs:
            raise UserError(f"the {name} split is empty; list images in it, or use --search-files with a "
                            f"larger split")
    return {"train": [list(map(str, pair)) for pair in train], "val": [list(map(str, pair)) for pair in val],
            "test": [list(map(str, pair)) for pair in test]}


# ---------------------------------------------------------------- how a run starts: new, resume, fine-tune


def start_mode(checkpoint, path):
    """'new' without a checkpoint; 'resume' for an unfinished run's last state; otherwise 'fine-tune': a
    finished run, a best checkpoint or plain weights start a new run, so no finished run is ever rewritten."""
    if checkpoint is None:
        return "new"
    if "optimizer" not in checkpoint:
        return "fine-tune"
    kind = checkpoint.get("kind") or ("best" if Path(path).name.startswith("best") else "last")
    finished = checkpoint.get("finished", checkpoint["epoch"] >= checkpoint["epochs"])
    return "resume" if kind == "last" and not finished else "fine-tune"


def fine_tune_reason(checkpoint, path):
    if "optimizer" not in checkpoint:
        return "weights only"
    if checkpoint.get("kind") == "best" or Path(path).name.startswith("best"):
        return f"a best checkpoint, epoch {checkpoint['epoch']} of {checkpoint['epochs']}"
    return f"a finished run, {checkpoint['epoch']} of {checkpoint['epochs']} epochs"


def resumed_config(config, given, checkpoint, process):
    """The configuration and data a resume continues with; refuses what would not continue the same run."""
    path = config.load_model
    config = config.resumed(stored_config(checkpoint), given, path)
    trained_by = checkpoint.get("world_size", 1)
    if trained_by != process.world_size:
        raise UserError(f"--load-model {path} was trained by {trained_by} process(es) and this run has "
                        f"{process.world_size}: its learning-rate schedule and epoch position count steps of "
                        f"{trained_by} process(es); resume it with {resume_command(path, trained_by)}, or "
                        f"fine-tune from its weights in a new run")
    data = checkpoint.get("data") or load_splits(config.with_data_defaults())  # older checkpoints: no file list
    gone = [image_or_mask for pairs in data.values() for pair in pairs for image_or_mask in pair
            if not Path(image_or_mask).is_file()]
    if gone:
        raise UserError(f"--load-model {path}: {len(gone)} of the files it was trained on are gone (first: "
                        f"{gone[0]}); put them back where they were to resume, or fine-tune from its weights "
                        f"in a new run")
    return config, data


def stored_config(checkpoint):
    """The RunConfig a checkpoint was trained with (older checkpoints call it 'args'), or None."""
    stored = checkpoint.get("config") or checkpoint.get("args")
    return RunConfig.from_dict(stored) if stored else None


def describe_data(config):
    if config.search_files:
        return f"{config.data_dir} (--search-files)"
    return f"{config.data_dir} ({Path(config.train_list).name}, {Path(config.val_list).name})"


def resume_command(checkpoint_path, world_size):
    launcher = "python train.py" if world_size == 1 else f"torchrun --nproc_per_node={world_size} train.py"
    return f"{launcher} --load-model {checkpoint_path}"


def run(args):
    """Set up, train, test. Returns the process exit code."""
    process, device = distributed.setup(args.device)
    config = RunConfig.from_namespace(args)
    given = getattr(args, "given", set(vars(args)))
    checkpoint = load_checkpoint(config.load_model, "--load-model") if config.load_model else None
    mode = start_mode(checkpoint, config.load_model)
    if mode == "resume":
        config, data = resumed_config(config, given, checkpoint, process)
    else:
        if mode == "fine-tune" and "meta" in checkpoint:
            config = config.fine_tuned(checkpoint["meta"], stored_config(checkpoint), given)
        config = config.with_data_defaults()
        data = load_splits(config)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    meta = model_meta(config.model, config.encoder, config.classes, config.patch_size)
    data_options = dict(patch_size=config.patch_size, classes=config.classes, ignore_index=config.ignore_index,
                        mean=meta["mean"], std=meta["std"], threads=max(2, config.workers))
    train_set = make_dataset(data["train"], augment=not config.no_augment, **data_options)
    val_set = make_dataset(data["val"], **data_options)
    test_set = make_dataset(data["test"], **data_options) if data["test"] else None
    check_batch_size(len(train_set), config.batch_size, process.world_size)
    if process.is_main:
        for split, dataset in (("training", train_set), ("validation", val_set)):
            for line in label_warnings(class_pixel_counts(dataset), config.classes, config.ignore_index,
                                       meta["class_names"], split=split):
                print(f"warning: {line}", file=sys.stderr, flush=True)

    weights = None if mode == "resume" or config.encoder_weights.lower() == "none" else config.encoder_weights
    model = build_model(config.model, config.encoder, config.classes, encoder_weights=weights)
    if mode == "fine-tune":
        loaded = load_finetune_weights(model, checkpoint["model"], config.load_model)
    if process.is_main:
        run_dir = Path(config.load_model).parent if mode == "resume" else new_run_dir(REPO / "checkpoints",
                                                                                        config.name)
    run_dir = Path(distributed.broadcast_object(str(run_dir) if process.is_main else None))
    logger = NullLogger()
    if process.is_main:
        logger = RunLogger(run_dir, config.to_dict(), config.wandb_mode, config.wandb_project, run_dir.name,
                           wandb_id=checkpoint.get("wandb_id") if mode == "resume" else None,
                           extra_columns=[f"{split}/{metric}_{name}" for split in ("train", "val")
                                          for metric in ("dice", "iou") for name in meta["class_names"]]
                           if config.classes > 1 else ())
    trainer = UnetTraining(
        model, train_set, val_set, test_set, run_dir=run_dir, meta=meta, epochs=config.epochs, lr=config.lr,
        adam_eps=config.adam_eps, weight_decay=config.weight_decay, batch_size=config.batch_size,
        workers=config.workers, pin_memory=config.pin_memory, use_amp=config.use_amp, clip_grad=config.clip_grad,
        eval_step=config.eval_step, patience=config.patience, check_best_cooldown=config.check_best_cooldown,
        ignore_index=config.ignore_index, save_checkpoints=config.save_checkpoints, seed=config.seed,
        device=device, process=process, logger=logger, config=config.to_dict(), data=data, sync_bn=config.sync_bn,
        freeze_bn=config.freeze_bn)
    if mode == "resume":
        trainer.load_state(checkpoint)
    if process.is_main:
        if mode == "fine-tune":
            print(f"fine-tuning from {config.load_model} ({fine_tune_reason(checkpoint, config.load_model)}): "
                  f"{loaded}; a new run on {describe_data(config)}, the checkpoint's own run is left as it is")
        print(("resuming " if mode == "resume" else "training ") + f"in {run_dir}\n{trainer.summary()}", flush=True)
        if not data["test"]:
            print("  (no test split: give --test-list, or --search-files --test-split, to evaluate the best "
                  "checkpoint on held-out images at the end)", flush=True)
    exit_code = 1  # what the wandb run records if an error escapes
    try:
        exit_code = finish(trainer, run_dir, process, test_set)
    finally:
        logger.finish(exit_code=exit_code)
    return exit_code


def finish(trainer, run_dir, process, test_set):
    """Train, then test the best weights; print what happened and which files hold the result."""
    outcome = trainer.fit()
    if outcome == "interrupted":
        if process.is_main:
            print(f"stopped at epoch {trainer.epoch + 1}, step {trainer.step_in_epoch}; resume with:\n"
                  f"  {resume_command(run_dir / 'checkpoint.pth.tar', process.world_size)}", file=sys.stderr)
        return 130
    best = run_dir / "best-checkpoint.pth.tar"
    try:
        metrics = trainer.test()
    except KeyboardInterrupt:  # training is complete and saved; only the test figures are lost
        print(f"test evaluation interrupted; training had finished: {best if best.exists() else run_dir}",
              file=sys.stderr)
        return 130
    if not process.is_main:
        return 0
    if metrics:
        weights = "best checkpoint" if best.exists() else "last weights: there is no best checkpoint"
        print(f"test: dice {metrics['test/dice']:.4f}  iou {metrics['test/iou']:.4f}  "
              f"loss {metrics['test/loss']:.4f} ({weights}, {len(test_set)} images)")
    if best.exists():
        print(f"best val Dice {trainer.best_fitness:.4f}; weights in {best}")
    else:
        print(f"no best checkpoint: {trainer.why_no_best()}; the last weights are in "
              f"{run_dir / 'checkpoint.pth.tar'}")
    return 0


def load_finetune_weights(model, state, path):
    """Start from another model's weights: tensors of matching name and shape are loaded, the rest reported."""
    own = model.state_dict()
    usable = {key: value for key, value in state.items() if key in own and own[key].shape == value.shape}
    if not usable:
        raise UserError(f"--load-model {path}: no tensor matches a {type(model).__name__} with this encoder; "
                        f"check --model and --encoder")
    model.load_state_dict(usable, strict=False)
    skipped = len(own) - len(usable)
    return f"{len(usable)} tensors loaded" + (f", {skipped} left at initialization (different shape or missing)"
                                              if skipped else "")


def main(args):
    try:
        args.wandb_mode = resolve_wandb_mode(args.wandb_mode)
        return run(args)
    except UserError as error:  # bad input exits 2; a RunFailure (diverged, worker killed) exits 1
        if args.verbose:
            raise
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    finally:
        distributed.teardown()


if __name__ == "__main__":
    sys.exit(main(parse_args()))
