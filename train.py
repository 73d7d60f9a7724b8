"""Train an smp segmentation model on a folder of images and masks.

Usage:
    python train.py                                          # bundled sample, Unet/resnet34
    python train.py --encoder resnet18 --patch-size 128 --epochs 20 --encoder-weights none
    python train.py --data-dir data/mine --search-files --val-split 0.2 --classes 3
    python train.py --data-dir data/mine --search-files --mask-colors colours.csv   # RGB masks: name,R,G,B
    python train.py --coco export/annotations.json --val-split 0.2          # a labelling tool's COCO export
    python train.py --load-model checkpoints/exp/checkpoint.pth.tar    # resume where it stopped
    python train.py --load-model checkpoints/exp/best-checkpoint.pth.tar --epochs 5   # fine-tune, new run
    torchrun --nproc_per_node=2 train.py --batch-size 8              # 8 images per process

Writes checkpoints/<name>/ (--project for another folder): best-checkpoint.pth.tar, checkpoint.pth.tar,
results.csv, results.png, val_predictions.png, test_results.json and the wandb run (online with
credentials, else offline).
Exit codes: 0 done, 1 the run failed (diverged, a DataLoader worker killed), 2 bad input (a one-line
error naming the file or flag), 130 stopped by Ctrl-C or SIGTERM (resume with --load-model).
"""

import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dataset import make_dataset
from segtoolkit import distributed
from segtoolkit.models.checkpoints import CHECKPOINT_NAMES, load_checkpoint, save_checkpoint
from segtoolkit.cli import ArgumentParser, StopRequest, add_settings, parse_with_given, run_command
from segtoolkit.training.config import (RunConfig, describe_data, fine_tune_reason, plan_run, resolve_bit_depth,
                                        resume_command)
from segtoolkit.errors import EXIT_OK, EXIT_STOPPED, RunFailure, UserError
from segtoolkit.data.augment import (augmentation_dict, augmentation_from_dict, load_augmentation,
                                save_augmentation)
from segtoolkit.data.classes import MaskColors, load_mask_colors, run_class_names
from segtoolkit.evaluation.scoring import evaluate, run_batch
from segtoolkit.inference.full_size import FullSizePredictor
from segtoolkit.training.losses import default_loss, make_loss, median_frequency_weights, parse_class_weights
from segtoolkit.data.loaders import guarded_batches, make_loaders, worker_crash_as_error
from segtoolkit.data.imaging import NORMALIZATIONS
from segtoolkit.data.masks import IGNORE, class_pixel_counts, label_warnings
from segtoolkit.evaluation.metrics import ConfusionStats, EarlyStopping
from segtoolkit.models.factory import build_model, load_matching_weights, model_meta
from segtoolkit.outputs.files import make_run_dir, metrics_json
from segtoolkit.training.run_log import NullLogger, RunLogger, log_preview, preview_grid, resolve_wandb_mode
from segtoolkit.training.precision import check_batch_size, resolve_precision, set_train_mode

MAX_BAD_STEPS = 20


class UnetTraining:
    """Trains one smp model as its RunConfig says: AdamW, OneCycleLR, evaluation, early stopping, checkpoints.

    fit() -> train_one_epoch() -> train_step(); end_of_evaluation_period() validates, logs and saves.
    """

    def __init__(self, model, train_set, val_set, test_set=None, *, config, run_dir, meta, data=None,
                 class_weights=None, device=torch.device("cpu"), process=distributed.Process(), logger=None,
                 num_preview=4):
        self.config, self.meta, self.data, self.class_weights = config, meta, data, class_weights
        self.run_dir, self.device, self.process = Path(run_dir), device, process
        self.logger = logger or NullLogger()
        self.train_set, self.val_set, self.test_set, self.num_preview = train_set, val_set, test_set, num_preview
        for split, dataset in (("val", val_set), ("test", test_set)):
            if dataset is not None and not getattr(dataset, "evaluation", False):  # a programming error
                raise ValueError(f"the {split} set must be an evaluation dataset (make_dataset(..., evaluation=True)):"
                                 f" its images are scored at their own size")
        self.model = distributed.wrap(model.to(device), device, config.sync_bn)
        check_batch_size(len(train_set), config.batch_size, process.world_size)
        self.train_loader, self.val_loader, self.test_loader = make_loaders(  # --crop: whole images, one at a time
            train_set, val_set, test_set, batch_size=config.batch_size, workers=config.workers, seed=config.seed,
            process=process, pin_memory=config.pin_memory and device.type == "cuda",
            repeats=config.crops_per_image or 1, eval_batch_size=1 if config.crop else None)
        self.train_sampler = self.train_loader.sampler
        self.steps_per_epoch = len(self.train_loader)  # what each process really steps (drop_last)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, eps=config.adam_eps,
                                           weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=config.lr,
                                                             total_steps=config.epochs * self.steps_per_epoch)
        self.autocast, self.scaler, self.precision = resolve_precision(device, config.use_amp)
        self.criterion = make_loss(config.loss or default_loss(config.classes), config.classes,
                                   class_weights).to(device)
        self.early_stopping = EarlyStopping(config.patience)
        self.stop = StopRequest("finishing this step, then saving checkpoint.pth.tar")
        self.best_fitness = -math.inf
        self.last_fitness = math.nan  # the val Dice of the last evaluation (--select last: the run's result)
        self.epoch = self.step_in_epoch = self.global_step = self.evaluations = self.bad_steps = 0
        self.unlabelled_said = False  # the warning about batches without a labelled pixel was given
        # the training metrics of the steps since the last evaluation: stored in checkpoint.pth.tar, so the
        # results.csv row of an epoch interrupted and resumed counts its steps before the resume too
        self.train_stats = self.new_stats()
        self.finished = False  # training ended for good (last epoch or early stop): never resumed then
        # evaluations that could not become the best, by reason (why_no_best says which)
        self.best_refused = {"cooldown": 0, "loss not finite": 0, "no foreground": 0}

    # ------------------------------------------------------------ the loop

    def fit(self):
        """Train to the end, early stop or a stop request; returns 'finished', 'early-stop' or 'interrupted'."""
        with self.stop, worker_crash_as_error(lambda: self.resume_hint("training")):
            while self.epoch < self.config.epochs:
                early_stop = self.train_one_epoch()
                if self.stop.is_set():
                    self.save("last")
                    return "interrupted"
                self.finished = early_stop or self.epoch >= self.config.epochs
                self.save("last")
                if early_stop:
                    if self.process.is_main:
                        print(f"early stopping: val Dice has not improved for {self.early_stopping.patience} "
                              f"evaluations (best {self.early_stopping.best_fitness:.4f} at evaluation "
                              f"{self.early_stopping.best_epoch})")
                    return "early-stop"
            return "finished"

    def train_one_epoch(self):
        """Train to the end of the epoch (or a stop request); True when an evaluation says stop early."""
        set_train_mode(self.model, self.config.freeze_bn)
        self.train_sampler.set_epoch(self.epoch)
        self.train_sampler.skip = self.step_in_epoch
        bar = tqdm(total=len(self.train_loader), leave=True, dynamic_ncols=True,
                   desc=f"epoch {self.epoch + 1}/{self.config.epochs}", disable=not self.process.is_main)
        for images, masks in guarded_batches(self.train_loader, "training", self.resume_hint, bar):
            loss = self.train_step(images, masks, self.train_stats)
            self.step_in_epoch += 1
            self.global_step += 1
            if loss is not None and (self.global_step % 10 == 0 or self.step_in_epoch == self.steps_per_epoch):
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            if distributed.any_process(self.stop.is_set(), self.device):
                self.stop.event.set()
                return False
            if self.step_in_epoch < self.steps_per_epoch and self.evaluation_due(end_of_epoch=False):
                if self.end_of_evaluation_period():
                    return True
                set_train_mode(self.model, self.config.freeze_bn)
        bar.close()
        self.epoch += 1
        self.step_in_epoch = 0
        # every run ends with an evaluation, even when --eval-step is longer than the run
        if self.evaluation_due(end_of_epoch=True) or self.epoch == self.config.epochs:
            return self.end_of_evaluation_period()
        return False

    def train_step(self, images, masks, stats):
        """One optimizer step; a non-finite loss or gradient skips the step (and counts it). Returns the loss,
        or None for a batch without a labelled pixel, which is skipped and not counted (see below).

        Under float16 the gradient scaler skips exactly the steps whose unscaled gradient is not finite;
        those count too, but without a warning each: its first overflows, while it calibrates the scale,
        are normal."""
        # A batch whose targets are all IGNORE (padding, transform fill, --ignore-index) has nothing to learn
        # from: cross-entropy averages over zero pixels (NaN), and counting that toward MAX_BAD_STEPS ended
        # runs with "training diverged; lower --lr", which blamed the wrong thing. The test is on the
        # loader's CPU tensor (no device sync); under torchrun one all-reduce makes every process agree
        # whether to step, as their weights must stay the same.
        labelled = bool((masks != IGNORE).any())
        if not distributed.any_process(labelled, self.device):
            self.unlabelled_batch()
            self.scheduler.step()  # the schedule counts steps as global_step does
            return None
        images = images.to(self.device, non_blocking=True)
        masks = masks.to(self.device, non_blocking=True)
        buffers = [buffer.clone() for buffer in self.model.buffers()]  # BatchNorm statistics: a skipped step keeps them
        with self.autocast():
            logits = self.model(images)
            # a process whose own batch is unlabelled while others' are not still joins the gradient
            # all-reduce, adding a zero gradient instead of a NaN one
            loss = self.criterion(logits.float(), masks) if labelled else logits.float().sum() * 0
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        # --clip-grad 0: the norm still checks the gradient is finite; scaling by min(1, inf / norm) changes nothing
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad or math.inf)
        # one host-device sync for both checks (on CUDA each separate check would stall the queue)
        loss_finite, norm_finite = torch.isfinite(torch.stack([loss.detach().float(), norm.float()])).tolist()
        if loss_finite and norm_finite:
            self.scaler.step(self.optimizer)  # a disabled scaler just calls optimizer.step()
            self.bad_steps = 0
        self.scaler.update()  # a skipped step lowers the float16 scale; a no-op without a scaler
        if not (loss_finite and norm_finite):
            for buffer, saved in zip(self.model.buffers(), buffers):
                buffer.copy_(saved)
            self.skipped_step()
        self.scheduler.step()
        if loss_finite and labelled:
            stats.update(logits, masks, loss)
        return loss

    def unlabelled_batch(self):
        """Say once per run that batches without a labelled pixel are skipped: the run goes on."""
        if not self.unlabelled_said:
            self.unlabelled_said = True
            warnings.warn(f"training batch at step {self.global_step} has no labelled pixel (all padding, "
                          f"transform fill or --ignore-index): skipped, not counted as a non-finite step; said once",
                          stacklevel=2)

    def skipped_step(self):
        self.bad_steps += 1
        if not self.scaler.is_enabled():
            warnings.warn(f"non-finite loss or gradient at step {self.global_step}: step skipped "
                          f"({self.bad_steps} in a row)", stacklevel=2)
        if self.bad_steps >= MAX_BAD_STEPS:
            raise RunFailure(f"{MAX_BAD_STEPS} non-finite steps in a row: training diverged; lower --lr or "
                             f"check the data. best-checkpoint.pth.tar holds the last good model")

    # ------------------------------------------------------------ evaluation and checkpoints

    def evaluation_due(self, end_of_epoch):
        """Once per epoch by default; every --eval-step optimizer steps when given."""
        if self.config.eval_step is None:
            return end_of_epoch
        return self.global_step % self.config.eval_step == 0

    def end_of_evaluation_period(self):
        """Evaluate, log, write checkpoints; return True when early stopping says stop."""
        progress = self.epoch + self.step_in_epoch / self.steps_per_epoch  # epochs done, fractional with --eval-step
        metrics = {"epoch": round(progress, 3), "lr": self.scheduler.get_last_lr()[0],
                   **self.train_stats.compute("train", self.class_names), **self.evaluate("val")}
        self.train_stats = self.new_stats()  # before any save: a resume must not count these steps again
        fitness = metrics["val/dice"]
        finite = math.isfinite(metrics["val/loss"]) and math.isfinite(fitness)
        improved = fitness > self.best_fitness and finite and progress > self.config.check_best_cooldown
        self.best_refused["cooldown"] += progress <= self.config.check_best_cooldown
        self.best_refused["loss not finite"] += not math.isfinite(metrics["val/loss"])
        self.best_refused["no foreground"] += math.isfinite(metrics["val/loss"]) and not math.isfinite(fitness)
        self.evaluations += 1
        stop = self.early_stopping(self.evaluations, fitness)
        self.best_fitness = fitness if improved else self.best_fitness
        self.last_fitness = fitness
        metrics["best/val_dice"] = max(self.best_fitness, -1.0)
        if self.process.is_main:
            self.logger.log(metrics, step=self.global_step)
            self.log_predictions()
            tqdm.write(" ".join(f"{key}={value:.4f}" for key, value in metrics.items()
                                if key.startswith(("train/", "val/")) and "_" not in key.split("/")[1])
                       + (" (best)" if improved else ""))
        if improved or self.config.select == "last":  # --select last: every evaluation, so the last one's stays
            self.save("best")
        if self.config.save_checkpoints:
            self.save("last")
        return distributed.broadcast_object(stop)

    def evaluate(self, prefix="val"):
        """Metrics over the whole 'val' or 'test' split with the unwrapped model and rank 0's BatchNorm
        statistics: DistributedDataParallel's forward syncs buffers with every process, and a process whose
        shard is empty (a split smaller than the number of processes) would never join, leaving the others
        waiting. Dice and IoU count each image at its own size, as detect.py's masks (segtoolkit.evaluation.scoring);
        crop-trained models see whole images at full resolution, by sliding window."""
        model = distributed.unwrap(self.model).eval()
        distributed.broadcast_buffers(model)
        loader = self.val_loader if prefix == "val" else self.test_loader
        batches = guarded_batches(loader, prefix, lambda: self.resume_hint(prefix))
        return evaluate(self.full_size(model), batches, classes=self.config.classes, criterion=self.criterion,
                        device=self.device, ignore_index=self.config.ignore_index, class_names=self.class_names,
                        prefix=prefix)

    def full_size(self, model):
        """The model seeing images as detect.py will, from the run's meta: fitted into the patch, or by sliding
        window with the run's --tile-overlap, --tile-weighting and --tile-batch. In float32 under --use-amp too,
        as val.py and detect.py run: the run's Dice and IoU are then the figures val.py gives for its checkpoint."""
        return FullSizePredictor.from_meta(lambda batch: run_batch(model, batch, self.device),
                                           self.meta, overlap=self.config.tile_overlap,
                                           tile_batch=self.config.tile_batch, weighting=self.config.tile_weighting)

    def test(self):
        """Evaluate the best checkpoint (or the last weights) on the test split; None when it is empty."""
        if not self.test_set:
            return None
        best = self.run_dir / CHECKPOINT_NAMES["best"]
        distributed.barrier()
        if best.exists():
            distributed.unwrap(self.model).load_state_dict(load_checkpoint(best)["model"])
        with worker_crash_as_error(lambda: self.resume_hint("test")):
            metrics = self.evaluate("test")
        if self.process.is_main:
            (self.run_dir / "test_results.json").write_text(metrics_json(metrics))
            self.logger.summary(metrics)
            self.logger.log(metrics, step=self.global_step)
        return metrics

    def log_predictions(self):
        """Image | ground truth | prediction for the first validation images, to a PNG and wandb."""
        count = min(self.num_preview, len(self.val_set))
        if count:
            full_size = self.full_size(distributed.unwrap(self.model))
            log_preview(self.run_dir / "val_predictions.png", self.logger,
                        lambda: preview_grid(full_size, self.val_set, count=count, meta=self.meta),
                        self.global_step, count)

    def save(self, kind):
        """Write checkpoint.pth.tar (kind 'last': what a resume continues) or best-checkpoint.pth.tar
        (kind 'best': weights to detect with or fine-tune from, never resumed, so without the optimizer
        state, which is twice the weights: as YOLO strips its best.pt)."""
        # the period's training counts summed over the processes: a collective, so before the rank-0 check
        period = self.train_stats.reduced() if kind == "last" else None
        if self.process.is_main:
            state = {**self.state(), "train_stats": dict(zip(("matrix", "loss"), period))} if kind == "last" \
                else self.description()
            save_checkpoint(self.run_dir / CHECKPOINT_NAMES[kind], self.model, self.meta, self.config.to_dict(),
                            kind=kind, **state)

    def description(self):
        """What a best checkpoint holds beside the weights, the model's description and the configuration:
        where in the run it was written, and what val.py reads (the run's files and class weights)."""
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "best_fitness": self.best_fitness, "epochs": self.config.epochs, "world_size": self.process.world_size,
                "data": self.data, "augmentation": augmentation_dict(self.train_set.transform),
                "class_weights": self.class_weights}

    def state(self):
        """Everything a resume needs, beside the weights, the model's description and the configuration."""
        return {**self.description(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "evaluations": self.evaluations, "early_stopping": self.early_stopping.state_dict(),
                "wandb_id": self.logger.wandb_id, "finished": self.finished}

    def load_state(self, checkpoint, path=CHECKPOINT_NAMES["best"]):
        """Continue exactly where `checkpoint` stopped: weights, optimizer, LR schedule, epoch, stopping."""
        if "optimizer" not in checkpoint:
            raise UserError(f"{path} holds weights and their description only (a best checkpoint, or plain "
                            f"weights), not the optimizer state a resume continues; resume from the run's "
                            f"{CHECKPOINT_NAMES['last']}, or fine-tune from these weights in a new run")
        distributed.unwrap(self.model).load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.epoch, self.step_in_epoch = checkpoint["epoch"], checkpoint["step_in_epoch"]
        self.global_step, self.best_fitness = checkpoint["global_step"], checkpoint["best_fitness"]
        self.evaluations = checkpoint["evaluations"]
        self.early_stopping.load_state_dict(checkpoint["early_stopping"])
        if "train_stats" in checkpoint and self.process.is_main:  # one process holds them: the sum stays right
            self.train_stats.matrix += checkpoint["train_stats"]["matrix"].to(self.train_stats.matrix)
            self.train_stats.loss += checkpoint["train_stats"]["loss"].to(self.train_stats.loss)

    # ------------------------------------------------------------ small helpers

    @property
    def class_names(self):
        return self.meta["class_names"] if self.config.classes > 1 else None

    def new_stats(self):
        return ConfusionStats(self.config.classes, self.config.ignore_index, self.device)

    def resume_hint(self, split="training"):
        """What is left after a failure: the checkpoint to resume from, or, in the test evaluation, the
        finished training."""
        if split == "test":
            return f"training had finished: {self.run_dir / CHECKPOINT_NAMES['best']}"
        checkpoint = self.run_dir / CHECKPOINT_NAMES["last"]
        if checkpoint.exists():
            return f"then resume with: {resume_command(checkpoint, self.process.world_size)}"
        return "no checkpoint was saved yet"


def why_no_best(trainer):
    """Why no evaluation wrote best-checkpoint.pth.tar, for the run's last line."""
    if trainer.evaluations == 0:
        return "no evaluation ran"
    refused = trainer.best_refused
    reasons = [f"{refused['cooldown']} were within --check-best-cooldown {trainer.config.check_best_cooldown} "
               f"epochs" if refused["cooldown"] else "",
               f"{refused['loss not finite']} had a non-finite validation loss (the weights diverged: lower --lr)"
               if refused["loss not finite"] else "",
               # with a finite loss, Dice is NaN only when no class it averages is in the masks
               f"{refused['no foreground']} had a NaN validation Dice (the validation masks hold no foreground "
               f"and none was predicted)"
               if refused["no foreground"] else ""]
    return (f"none of the {trainer.evaluations} evaluation(s) could count as the best ("
            + "; ".join(reason for reason in reasons if reason) + ")")


# ---------------------------------------------------------------- a run: set up, train, test


def run(args):
    """Set up from the command line, train, test. Returns the process exit code."""
    try:
        return train_and_test(args)
    finally:
        distributed.teardown()


def train_and_test(args):
    process, device = distributed.setup(args.device)
    args.wandb_mode = resolve_wandb_mode(args.wandb_mode)
    config = RunConfig.from_namespace(args)
    checkpoint = load_checkpoint(config.load_model, "--load-model") if config.load_model else None
    config, mode, data = plan_run(config, getattr(args, "given", set(vars(args))), checkpoint, process.world_size)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    # a resume reads the masks with the colours it was trained with, whatever the file holds now
    colours = MaskColors.from_meta(checkpoint["meta"].get("mask_colors")) if mode == "resume" else \
        load_mask_colors(config.mask_colors)
    mean, std = NORMALIZATIONS[config.normalize]
    meta = model_meta(config.model, config.encoder, config.classes, config.patch_size, mean=mean, std=std,
                      class_names=run_class_names(config.classes, config.class_names, colours),
                      input_mode=config.input_mode, scale=config.scale,
                      mask_colors=colours.to_meta() if colours else None,
                      bit_depth=resolve_bit_depth(config, mode, checkpoint, data))
    transform = augmentation_from_dict(checkpoint["augmentation"]) if mode == "resume" and \
        "augmentation" in checkpoint else load_augmentation(config.augment)
    train_set, val_set, test_set = load_datasets(config, meta, data, transform, process)
    if config.crops_per_image is None:  # not given (a resume has its own): as many as cover an average image
        config = config.replace(crops_per_image=covering_crops(train_set, config.patch_size) if config.crop else 1)
    class_weights = checkpoint.get("class_weights") if mode == "resume" else resolve_class_weights(
        config, train_set, meta, process)
    # a resume or fine-tune loads its weights over the encoder's: downloading ImageNet's first would be wasted
    weights = None if mode != "new" or config.encoder_weights.lower() == "none" else config.encoder_weights
    # the initial weights are the first draws after torch.manual_seed(seed), whatever reading the data drew
    # before: the plain loop `torch.manual_seed(seed); model = smp.Unet(...)` starts from the same weights
    # (bench.quality's reference, tests/test_parity.py); the batch order is the sampler's (ResumableSampler)
    torch.manual_seed(config.seed)
    model = build_model(config.model, config.encoder, config.classes, encoder_weights=weights)
    loaded = load_matching_weights(model, checkpoint["model"], config.load_model) if mode == "fine-tune" else ""
    if process.is_main:
        run_dir = Path(config.load_model).parent if mode == "resume" else \
            make_run_dir(Path(config.project) / config.name)
    run_dir = Path(distributed.broadcast_object(str(run_dir) if process.is_main else None))
    logger = make_logger(config, meta, run_dir, checkpoint.get("wandb_id") if mode == "resume" else None, process)
    trainer = UnetTraining(model, train_set, val_set, test_set, config=config, run_dir=run_dir, meta=meta,
                           data=data, class_weights=class_weights, device=device, process=process, logger=logger)
    if process.is_main and transform is not None and not (run_dir / "augmentation.yaml").exists():
        save_augmentation(transform, run_dir / "augmentation.yaml")  # what --augment reads back
    if mode == "resume":
        trainer.load_state(checkpoint, config.load_model)
    if process.is_main:
        if mode == "fine-tune":
            print(f"fine-tuning from {config.load_model} ({fine_tune_reason(checkpoint, config.load_model)}): "
                  f"{loaded}; a new run on {describe_data(config)}, the checkpoint's own run is left as it is")
        print(("resuming " if mode == "resume" else "training ") + f"in {run_dir}\n{summary(trainer)}", flush=True)
    exit_code = 1  # what the wandb run records if an error escapes
    try:
        exit_code = finish(trainer, run_dir, process)
    finally:
        logger.finish(exit_code=exit_code)
    return exit_code


def load_datasets(config, meta, data, transform, process):
    """(train, val, test) datasets, every file read and checked; warnings about their labels printed."""
    options = dict(patch_size=config.patch_size, classes=config.classes, ignore_index=config.ignore_index,
                   mean=meta["mean"], std=meta["std"], threads=max(2, config.workers), scale=config.scale,
                   cache=config.cache, cache_dir=config.cache_dir or Path(config.data_dir) / ".segtoolkit-cache",
                   mask_colors=MaskColors.from_meta(meta["mask_colors"]), bit_depth=meta["bit_depth"])
    evaluated = FullSizePredictor.from_meta(None, meta).dataset_mode  # crop-trained: whole images, by tiles
    train_set = make_dataset(data["train"], augment=transform, mode="crop" if config.crop else config.resize,
                             **options)
    val_set = make_dataset(data["val"], mode=evaluated, evaluation=True, **options)
    test_set = make_dataset(data["test"], mode=evaluated, evaluation=True, **options) if data["test"] else None
    check_batch_size(len(train_set), config.batch_size, process.world_size)
    if process.is_main:
        for split, dataset in (("training", train_set), ("validation", val_set)):
            for line in label_warnings(class_pixel_counts(dataset), config.classes, config.ignore_index,
                                       meta["class_names"], split=split):
                print(f"warning: {line}", file=sys.stderr, flush=True)
    return train_set, val_set, test_set


def covering_crops(train_set, patch_size):
    """--crop's default crops per image an epoch: as many patches as an average training image's area (after
    --scale) holds, at least one. An epoch then sees about as many pixels as the data has, as a letterboxed
    epoch sees every image once; with one crop, a 512x512 image trained at patch 256 showed a quarter of
    itself per epoch, and the membrane benchmark scored below letterboxing at equal epochs (README)."""
    pixels = sum(train_set.label_counts.values())  # every stored mask pixel, at the stored scale
    return max(1, round(pixels / len(train_set) / patch_size ** 2))


def resolve_class_weights(config, train_set, meta, process):
    """--class-weights as a list (auto: median-frequency balancing over the training masks), said once."""
    weights = parse_class_weights(config.class_weights, config.classes)
    if weights == "auto":
        weights = median_frequency_weights(class_pixel_counts(train_set), config.classes)
    if weights is not None and process.is_main:
        names = meta["class_names"]
        how = "median frequency over the training masks" if config.class_weights == "auto" else "--class-weights"
        # one format for every weight (:g wrote the median class's 1.0 as a bare 1 beside 0.0078)
        print(f"class weights ({how}): " + ", ".join(f"{name} {weight:.4f}" for name, weight in zip(names, weights)),
              flush=True)
    return weights


def make_logger(config, meta, run_dir, wandb_id, process):
    """results.csv, results.png and the wandb run, written by rank 0 only."""
    if not process.is_main:
        return NullLogger()
    per_class = [f"{split}/{metric}_{name}" for split in ("train", "val") for metric in ("dice", "iou")
                 for name in meta["class_names"]] if config.classes > 1 else ()
    return RunLogger(run_dir, config.to_dict(), config.wandb_mode, config.wandb_project, run_dir.name,
                     wandb_id=wandb_id, extra_columns=per_class)


def summary(trainer):
    """The table printed at the start of a run."""
    config, meta = trainer.config, trainer.meta
    parameters = sum(p.numel() for p in trainer.model.parameters())
    test = f"{len(trainer.test_set)}" if trainer.test_set else "none (give --test-list, or --search-files " \
                                                               "--test-split, to test the best checkpoint)"
    rows = [("model", f"{meta['architecture']} / {meta['encoder']} ({parameters / 1e6:.2f}M params)"),
            ("classes", f"{config.classes} ({', '.join(meta['class_names'])})"
                        + (f", colour masks read by {config.mask_colors}" if meta["mask_colors"] else "")),
            ("data", f"{describe_data(config)}: train {len(trainer.train_set)}, val {len(trainer.val_set)}, "
                     f"test {test}" + (f"; 16-bit images read as {meta['bit_depth']}-bit data" if meta["bit_depth"]
                                       else "")),
            ("schedule", f"{plural(config.epochs, 'epoch')} x {plural(trainer.steps_per_epoch, 'step')} at patch "
                         f"{config.patch_size} "
                         f"({f'{config.crops_per_image} crops per image' if config.crop else config.resize}), "
                         f"AdamW + OneCycleLR to {config.lr:g}, batch {config.batch_size}"),
            ("training", f"loss {config.loss or default_loss(config.classes)}"
                         f"{' with class weights' if trainer.class_weights else ''}, augmentation "
                         f"{config.augment if trainer.train_set.transform is not None else 'none'}, inputs "
                         f"normalized {config.normalize}, result: the {config.select} evaluation's weights"),
            ("runtime", f"{trainer.device}, {trainer.process.world_size} process(es), mixed precision "
                        f"{trainer.precision}"),
            ("run folder", str(trainer.run_dir))]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"  {key:<{width}}  {value}" for key, value in rows)


def plural(count, noun):
    return f"{count} {noun}{'' if count == 1 else 's'}"


def finish(trainer, run_dir, process):
    """Train, then test the best weights; print what happened and which files hold the result."""
    if trainer.fit() == "interrupted":
        if process.is_main:
            print(f"stopped at epoch {trainer.epoch + 1}, step {trainer.step_in_epoch}; resume with:\n"
                  f"  {resume_command(run_dir / CHECKPOINT_NAMES['last'], process.world_size)}", file=sys.stderr)
        return EXIT_STOPPED
    best = run_dir / CHECKPOINT_NAMES["best"]
    try:
        metrics = trainer.test()
    except KeyboardInterrupt:  # training is complete and saved; only the test figures are lost
        print(f"test evaluation interrupted; training had finished: {best if best.exists() else run_dir}",
              file=sys.stderr)
        return EXIT_STOPPED
    if not process.is_main:
        return EXIT_OK
    if metrics:
        weights = "last weights, --select last" if trainer.config.select == "last" else "best checkpoint" \
            if best.exists() else "last weights: there is no best checkpoint"
        print(f"test: dice {metrics['test/dice']:.4f}  iou {metrics['test/iou']:.4f}  "
              f"loss {metrics['test/loss']:.4f} ({weights}, {len(trainer.test_set)} images)")
    if best.exists() and trainer.config.select == "last":
        best_seen = f"; the best was {trainer.best_fitness:.4f}" if math.isfinite(trainer.best_fitness) else ""
        print(f"last val Dice {trainer.last_fitness:.4f} (--select last{best_seen}); weights in {best}")
    elif best.exists():
        print(f"best val Dice {trainer.best_fitness:.4f}; weights in {best}")
    else:
        print(f"no best checkpoint: {why_no_best(trainer)}; the last weights are in "
              f"{run_dir / CHECKPOINT_NAMES['last']}")
    return EXIT_OK


# ---------------------------------------------------------------- command line


def parse_args(argv=None):
    """The command line as a namespace; `given` holds the flags typed (a resume refuses those that would
    change the run)."""
    return parse_with_given(build_parser(), argv)


def build_parser():
    """train.py's flags: RunConfig's fields (their defaults and help are there), and --no-augment."""
    parser = ArgumentParser(description=__doc__)
    groups = add_settings(parser, RunConfig)
    groups["Optimization"].add_argument("--no-augment", action="store_true", help="the same as --augment none")
    return parser


def main(args):
    """train.py with parsed arguments; returns the exit code (an error is one line: segtoolkit.cli)."""
    return run_command(run, args)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
