"""The training loop: one run from a :class:`Config` into a run directory.

The files it writes, and what each guarantees, are listed in :mod:`snn_stp.rundir` (plots and
reports read them, never live objects); docs/reliability.md says how each guarantee is tested.
Write order at the end of an epoch: the metrics record, then ``best.pt`` (if the epoch is the
best so far), then ``last.pt``. A kill between any two leaves files that a resume reconciles:
records after ``last.pt``'s step are dropped, and ``best.pt`` is never older than the best
accuracy that ``last.pt`` or ``metrics.jsonl`` claim.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from .. import pruning, rundir
from ..data import SeededSamples, dataset_spec, make_loader, validation_count
from ..errors import TrainingDiverged, TrainingInterrupted
from . import checkpoint as ckpt
from . import distributed, evaluation
from .builders import (make_dataset, make_loss, make_lr_scheduler, make_model, make_optimizer,
                       make_splits, make_threshold_scheduler, run_epochs)
from .config import Config, save_config
from .restore import restore_checkpoint
from .rewinding import rewind, rewind_point

METRIC_KEYS = ("epoch", "step", "lr", "threshold", "final_threshold", "l1_coefficient", "train_loss", "train_acc", "val_loss",
               "val_acc", "test_loss", "test_acc", "test_top5", "weight_sparsity", "pruned_layer_sparsity",
               "all_weight_sparsity", "layer_sparsity", "pruned", "regrown", "epoch_seconds", "best_eligible")


def sparsity_figures(report: pruning.SparsityReport) -> dict:
    """The sparsity figures, named for what they count; ``weight_sparsity`` is the pruned-layer
    figure under its former name (runs written before read the same); ``channel_sparsity`` the
    fraction of the pruned layers' output channels that are entirely zero."""
    return {"weight_sparsity": report.global_sparsity, "pruned_layer_sparsity": report.global_sparsity,
            "all_weight_sparsity": report.all_weight_sparsity, "channel_sparsity": report.channel_sparsity}


#: Steps between reads of the training loss on the host when training on a GPU: each read waits
#: for the device to finish, so the loss sum, the correct count and the non-finite count stay on
#: the device in between (on the CPU a read costs nothing and happens every step). A read also
#: happens on every step that a checkpoint, the end of an epoch or max_steps follows, and on the
#: step after a checkpoint (its loss vouches for that checkpoint).
HOST_READ_STEPS = 20

#: The signals that stop training at the next step boundary with a checkpoint: Ctrl-C, SIGTERM (a
#: kill, a cancelled or preempted cluster job) and SIGUSR2, which Slurm sends ahead of a job's time
#: limit when asked (``sbatch --signal``; the Slurm launcher asks) and whose default action would
#: end the process without one.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR2") if hasattr(signal, name))


class _IndexSampler(torch.utils.data.Sampler):
    """Yields a list of indices (one epoch's order, minus the batches already done); the list is
    replaced each epoch, so one DataLoader (and its persistent workers) serves the whole run."""

    def __init__(self, indices: list[int]):
        self.indices = indices

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class Trainer:
    """Builds everything a run needs from ``config`` and trains it (:meth:`fit`).

    Args:
        config: the run's configuration.
        run_dir: where files go (only rank 0 writes).
        state: a checkpoint (``checkpoint.load``) to continue from exactly where it stopped;
            see :func:`snn_stp.train.resume.load_resume_state`, which checks it against config.yaml.
        quiet: no progress bars, one line per epoch.
        dry_run: build model, optimizer and schedulers (data sizes from the registry) and stop.
        overwrite: a new run may replace the run already in ``run_dir`` (otherwise that is an error,
            raised before anything is built and without touching the old run).
    """

    def __init__(self, config: Config, run_dir: str | Path, state: dict | None = None, quiet: bool = False,
                 dry_run: bool = False, log=print, overwrite: bool = False):
        self.config, self.run_dir, self.quiet, self.log = config, Path(run_dir), quiet, log
        self.resuming, self.overwrite = state is not None, overwrite
        self.ctx = distributed.setup(config.train.device)
        if self.ctx.is_main and not dry_run and state is None:
            rundir.prepare_new(self.run_dir, overwrite)  # before the (slow) model and data
        t, d = config.train, config.data
        _seed_everything(t.seed)
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = self.ctx.device
        self.amp = bool(t.amp and self.device.type == "cuda")
        spec = dataset_spec(d.name)
        self.model = make_model(config, spec.num_classes, self.device, load_initial_weights=state is None)
        self.spiking = bool(getattr(self.model, "spiking", False))
        if dry_run:
            train_size = spec.train_size - validation_count(spec.train_size, d.validation_fraction)
            self.train_set = self.val_set = self.test_set = None
        else:
            # One read of the training split serves both of its parts (train and validation).
            self.train_set, self.val_set, self.test_set = make_splits(config, self.model)
            train_size = len(self.train_set)
        shard = math.ceil(train_size / self.ctx.world_size)
        self.steps_per_epoch = math.ceil(shard / d.batch_size)
        self.optimizer = make_optimizer(config, self.model)
        self.lr_scheduler = make_lr_scheduler(config, self.optimizer, self.steps_per_epoch)
        self.thresholds = make_threshold_scheduler(config, self.model, self.optimizer, self.lr_scheduler,
                                                   self.steps_per_epoch)
        # The run's epochs: train.epochs, or more for a method that trains in rounds (IMP), whose rounds
        # rewind to the state kept in rewind_state (taken at the start of its rewind epoch).
        self.epochs = run_epochs(config)
        self.rewind_state = None
        self.loss_fn = make_loss(config)
        # pruning.penalty energy: the layers whose thresholds are weighted by what each weight costs.
        self.weighted = [layer for layer in pruning.pruned_layers(self.model, pruning.SoftThreshold)
                         if layer.parametrization.weighted]
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.network = self.model
        if self.ctx.enabled:
            self.network = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        # Model selection on the validation split only: best.pt is the epoch with the best val_acc among
        # the epochs at the sparsity the run is for (see _best_window).
        self.best_acc, self.best_epoch, self.test_acc_at_best, self.best_sparsity = rundir.NO_BEST_ACCURACY, None, None, None
        self.initial_loss = None  # the loss of the run's first step: the scale of "normal"
        self.partial = self._fresh_partial()
        if state is not None:
            self._restore(state)
        self.writer = None
        self._stop_requested = self._stop_agreed = False
        self._stop_signal = signal.SIGINT  # the first stop signal that arrived
        self._unverified = False  # last.pt awaits the loss of the next step on its weights
        self._read_next = False  # every rank reads the loss of the step after a checkpoint
        self._last_loss, self._read_step = math.nan, self.global_step
        self._read_every = HOST_READ_STEPS if self.device.type == "cuda" else 1
        # Device-side sums since the last host read: loss x samples, correct, non-finite losses.
        self._totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        self._loaders: dict[str, tuple[torch.utils.data.DataLoader, _IndexSampler]] = {}

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / rundir.CHECKPOINTS

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to the end (or ``train.max_steps``); returns the summary.

        Ctrl-C (SIGINT), SIGTERM or SIGUSR2 (what Slurm sends ahead of a time limit, see
        :data:`STOP_SIGNALS`) stop training at the next step boundary with a checkpoint
        (:class:`TrainingInterrupted`); a second one stops at once, keeping the last checkpoint.
        """
        # One writer per run: a library caller gets the lock here; under snn-stp the command holds it already.
        with rundir.writer_lock(self.run_dir) if self.ctx.is_main else contextlib.nullcontext():
            return self._fit()

    def _fit(self) -> dict:
        c = self.config
        finished = self.epoch >= self.epochs or bool(c.train.max_steps and self.global_step >= c.train.max_steps)
        if self.resuming and finished:
            summary = rundir.read_summary(self.run_dir) if self.ctx.is_main else {}
            if summary.get("global_step") == self.global_step:
                # Nothing to train; rewriting the summary could only lose what it says (a metrics line
                # torn since would give it another epoch's accuracy).
                if self.ctx.is_main and not self.quiet:
                    self.log(f"{self.run_dir} had finished (epoch {self.epoch} of {self.epochs}, step "
                             f"{self.global_step}): nothing to resume; its files are left as they are")
                return summary
        if self.ctx.is_main:
            self._open_run_directory()
        started = time.time()
        stopped_early = False
        handlers = self._catch_stop_signals()
        try:
            while self.epoch < self.epochs:
                if c.train.max_steps and self.global_step >= c.train.max_steps or not self._train_epoch():
                    stopped_early = True
                    break
                record = self._end_epoch()
                if self.ctx.is_main and not self.quiet:
                    self.log(_epoch_line(record))
                if self._stop_agreed and self.epoch < self.epochs:
                    self._interrupted()
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            if self.writer is not None:
                self.writer.close()
        summary = self._summary(time.time() - started, stopped_early)
        if self.ctx.is_main:
            rundir.write_summary(self.run_dir, summary)
        return summary

    def _open_run_directory(self) -> None:
        """Rank 0, before the first step: a new run starts from a clean folder (the old run removed
        only with ``overwrite``); a resumed one drops what the checkpoint had not reached."""
        if self.overwrite and not self.resuming:
            rundir.clear(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        rundir.remove_litter(self.run_dir)
        if self.resuming:
            rundir.truncate_metrics(self.run_dir, self.global_step)
            last, good = self.checkpoints / rundir.LAST, self.checkpoints / rundir.LAST_GOOD
            self._unverified = not (good.exists() and os.path.samefile(last, good))
        else:
            # The state at step 0 comes first: a way back even if the first steps diverge, and a
            # kill from here on leaves a run that `snn-stp resume` continues.
            self._save_checkpoint(best=False)
        save_config(self.config, self.run_dir / rundir.CONFIG)
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(self.run_dir / rundir.TENSORBOARD), purge_step=self.epoch + 1)

    def _loader(self, split: str, batch_size: int, indices: list[int], workers: int) -> torch.utils.data.DataLoader:
        """One DataLoader per use for the whole run (workers persist across epochs); each call
        only sets the indices it yields. Training samples are read through :class:`SeededSamples`
        keyed by epoch, so a sample's augmentation does not depend on workers or on a resume."""
        if split not in self._loaders:
            c = self.config
            dataset = {"train": SeededSamples(self.train_set, c.train.seed) if self.train_set is not None else None,
                       "validation": self.val_set, "test": self.test_set}[split]
            sampler = _IndexSampler([])
            loader = make_loader(dataset, c.data.name, batch_size, self.spiking, num_workers=workers, sampler=sampler,
                                 pin_memory=self.device.type == "cuda", persistent_workers=workers > 0)
            self._loaders[split] = (loader, sampler)
        loader, sampler = self._loaders[split]
        sampler.indices = indices
        return loader

    def _train_epoch(self) -> bool:
        """Train the rest of the current epoch; False if ``max_steps`` stopped it."""
        c, p = self.config, self.partial
        if self.thresholds.rewinds and self.step_in_epoch == 0:
            self._begin_round()
        sampler = DistributedSampler(self.train_set, num_replicas=self.ctx.world_size, rank=self.ctx.rank,
                                     shuffle=True, seed=c.train.seed, drop_last=False)
        sampler.set_epoch(self.epoch)
        offset = self.epoch * len(self.train_set)
        order = [offset + i for i in list(iter(sampler))[self.step_in_epoch * c.data.batch_size:]]
        loader = self._loader("train", c.data.batch_size, order, c.data.workers)
        self.network.train()
        progress = self._progress(loader, f"epoch {self.epoch + 1}/{self.epochs}")
        tick = time.perf_counter()
        every = c.train.checkpoint_every_steps
        for inputs, labels in progress:
            inputs, labels = inputs.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            if self.weighted and self.step_in_epoch == 0:
                self._measure_costs(inputs)
            with torch.autocast(self.device.type, enabled=self.amp):
                output = self.network(inputs)
                loss = self.loss_fn(output.float(), labels)
            n = len(labels)
            step = self.global_step + 1
            last_of_epoch = self.step_in_epoch + 1 >= self.steps_per_epoch
            read = (self._read_next or step % self._read_every == 0 or last_of_epoch
                    or bool(every and step % every == 0) or bool(c.train.max_steps and step >= c.train.max_steps))
            stop = self._stop_agreed = self._account(loss.detach(), output.detach(), labels, read)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if c.optim.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), c.optim.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if c.schedule.interval == "step":
                self.lr_scheduler.step()
            self.thresholds.step()
            p["seen"] += n
            self.global_step += 1
            self.step_in_epoch += 1
            now = time.perf_counter()
            p["seconds"] += now - tick
            tick = now
            if read and hasattr(progress, "set_postfix"):
                progress.set_postfix(loss=f"{self._last_loss:.3f}", acc=f"{p['correct'] / max(p['seen'], 1):.3f}",
                                     d=f"{self.thresholds.threshold:.4g}")
            mid_epoch = self.step_in_epoch < self.steps_per_epoch
            if stop and mid_epoch:
                self._save_checkpoint(best=False)
                self._interrupted()
            if every and self.global_step % every == 0 and mid_epoch:
                self._save_checkpoint(best=False)
            if c.train.max_steps and self.global_step >= c.train.max_steps:
                break
        finished = self.step_in_epoch >= self.steps_per_epoch
        if not finished:
            self._save_checkpoint(best=False)  # stopped by max_steps: resumable from here
        return finished

    def _end_epoch(self) -> dict:
        c, p = self.config, self.partial
        if c.schedule.interval == "epoch":
            self.lr_scheduler.step()
        loss_sum, correct, seen = distributed.all_sum([p["loss_sum"], p["correct"], p["seen"]], self.ctx)
        self._recalibrate_batchnorm()
        val = self.evaluate("validation") if self.val_set is not None else {"loss": None, "acc": None}
        test = self.evaluate()
        report = pruning.weight_sparsity(self.model)
        change = pruning.support_change(p["support"], pruning.support(self.model))
        record = {"epoch": self.epoch + 1, "step": self.global_step, "lr": float(self.optimizer.param_groups[0]["lr"]),
                  "threshold": self.thresholds.threshold, "final_threshold": self._final_threshold(),
                  "l1_coefficient": self.thresholds.mean_l1_coefficient(reset=True), "train_loss": loss_sum / seen, "train_acc": correct / seen, "val_loss": val["loss"],
                  "val_acc": val["acc"], "test_loss": test["loss"],
                  "test_acc": test["acc"], "test_top5": test["top5"], **sparsity_figures(report),
                  "layer_sparsity": report.layers, "pruned": change.pruned, "regrown": change.regrown,
                  "epoch_seconds": p["seconds"]}
        if self.thresholds.rewinds:
            record["round"] = self.thresholds.round
        record["best_eligible"] = self._best_window()[1](record)
        record.update(self.analyze())
        self.epoch += 1
        self.step_in_epoch = 0
        self.partial = self._fresh_partial()
        improved = rundir.improves_best(record, self.best_acc)  # the rule analysis reads best.pt back with
        if improved:
            self.best_acc, self.best_epoch = record["val_acc"], record["epoch"]
            self.test_acc_at_best, self.best_sparsity = record["test_acc"], record["pruned_layer_sparsity"]
        if self.ctx.is_main:
            rundir.append_metrics(self.run_dir, record)
            for key in METRIC_KEYS[2:]:
                if key not in ("layer_sparsity", "best_eligible") and record[key] is not None:  # no L1 under Adam
                    self.writer.add_scalar(key, record[key], record["epoch"])
            for key, value in {**record.get("ops", {}), "mean_firing_rate": record.get("mean_firing_rate")}.items():
                if isinstance(value, float):
                    self.writer.add_scalar(f"analysis/{key}", value, record["epoch"])
            self.writer.flush()
        self._save_checkpoint(best=improved)
        return record

    @torch.no_grad()
    def evaluate(self, split: str = "test") -> dict:
        """Loss, top-1 and top-5 accuracy over every sample of the ``test`` (or ``validation``) split
        once (sharded over ranks)."""
        c = self.config
        dataset = self.test_set if split == "test" else self.val_set
        indices = list(range(self.ctx.rank, len(dataset), self.ctx.world_size))
        loader = self._loader(split, c.data.eval_batch_size or c.data.batch_size, indices, c.data.workers)
        return evaluation.measure(self.network, loader, self.loss_fn, self.device, self.amp, self.ctx,
                                  show_progress=not self.quiet and self.ctx.is_main)

    def analyze(self) -> dict:
        """Spike statistics (spiking models) and operation counts on the first
        ``train.analysis_samples`` test samples (rank 0 only; it writes the metrics)."""
        if not self.ctx.is_main:
            return {}
        return evaluation.analyze(self.model, self.test_set, self.config, self.device)

    def _fresh_partial(self) -> dict:
        return {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0, "support": pruning.support(self.model)}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(), "threshold_scheduler": self.thresholds.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": ckpt.rng_state(), "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch, "global_step": self.global_step, "best_acc": self.best_acc,
                "best_epoch": self.best_epoch, "test_acc_at_best": self.test_acc_at_best,
                "best_sparsity": self.best_sparsity,
                "initial_loss": self.initial_loss, "partial": self.partial, "config": self.config.to_dict(),
                "rewind": self.rewind_state}

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.thresholds.load_state_dict(state["threshold_scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step, self.best_acc, self.partial = state["global_step"], state["best_acc"], state["partial"]
        self.best_epoch, self.initial_loss = state.get("best_epoch"), state.get("initial_loss")
        self.test_acc_at_best, self.best_sparsity = state.get("test_acc_at_best"), state.get("best_sparsity")
        self.rewind_state = state.get("rewind")
        ckpt.set_rng_state(state["rng"])

    def _save_checkpoint(self, best: bool) -> None:
        """Write the state as ``last.pt`` (and first as ``best.pt`` when ``best``: a kill between
        the two leaves ``best.pt`` newer than ``last.pt``, never older than what anything claims)."""
        self._read_next = True
        if not self.ctx.is_main:
            return
        last = self.checkpoints / rundir.LAST
        if best:
            ckpt.save_atomic(self.state_dict(), self.checkpoints / rundir.BEST)
            ckpt.link(self.checkpoints / rundir.BEST, last)
        else:
            ckpt.save_atomic(self.state_dict(), last)
        self._unverified = True

    # -- divergence and interruption -------------------------------------------------------------
    def _normal_loss(self, value: float) -> bool:
        factor = self.config.train.divergence_factor
        if not math.isfinite(value):
            return False
        return factor is None or self.initial_loss is None or value <= factor * max(self.initial_loss, 1e-12)

    def _account(self, loss: torch.Tensor, output: torch.Tensor, labels: torch.Tensor, read: bool) -> bool:
        """Add this step's loss and correct count to the device-side sums; on a ``read`` step (the
        same steps on every rank), bring them to the host before the backward pass: stop on a
        NaN/inf loss on any rank since the last read, vouch for the newest checkpoint if this
        loss (measured on its weights) is normal. Returns whether a stop signal arrived on any rank."""
        n = len(labels)
        self._totals += torch.stack([loss.double() * n, (output.argmax(1) == labels).sum().double(),
                                     (~torch.isfinite(loss)).double()])
        if not read:
            return False
        p = self.partial
        loss_sum, correct, nonfinite = self._totals.tolist()
        self._totals.zero_()
        value = float(loss)
        since, self._last_loss, self._read_step, self._read_next = self._read_step, value, self.global_step + 1, False
        p["loss_sum"] += loss_sum
        p["correct"] += int(correct)
        bad = float(nonfinite > 0 or not math.isfinite(value))
        # Which stop signal arrived where: every rank stops on the same step, and for the same reason
        # (a rank may hear of the stop from another before its own signal arrives).
        signals = [float(self._stop_requested and self._stop_signal == s) for s in STOP_SIGNALS]
        if self.ctx.enabled:
            bad, *signals = distributed.all_sum([bad, *signals], self.ctx)
        heard = [s for s, count in zip(STOP_SIGNALS, signals) if count]
        stop = bool(heard)
        if heard:
            self._stop_signal = heard[-1]  # SIGUSR2 (requeue me) over SIGTERM over Ctrl-C
        if self.initial_loss is None and not bad:
            self.initial_loss = value
        if self.ctx.is_main and self._unverified:
            if self._normal_loss(value):
                ckpt.link(self.checkpoints / rundir.LAST, self.checkpoints / rundir.LAST_GOOD)
                self._unverified = False
        if bad:
            self._diverged(value, since)
        return stop

    def _diverged(self, value: float, since: int) -> None:
        """Keep a checkpoint whose weights gave a normal loss as ``last.pt`` and say so (``since``:
        the step of the previous read; a NaN/inf came after it)."""
        step = self.global_step + 1
        what = f"loss is {value}" if not math.isfinite(value) or since + 1 >= step else \
            f"loss was NaN/inf at a step in {since + 1}..{step} (now {value})"
        where = (f"{what} at epoch {self.epoch + 1}, step {step} (lr "
                 f"{self.optimizer.param_groups[0]['lr']:.4g}, threshold {self.thresholds.threshold:.4g}); stopped")
        if not self.ctx.is_main:
            raise TrainingDiverged(f"{where} (rank {self.ctx.rank}; rank 0 reports the checkpoints)")
        last, good = self.checkpoints / rundir.LAST, self.checkpoints / rundir.LAST_GOOD
        if self._unverified and last.exists():
            os.replace(last, self.checkpoints / rundir.DIVERGED)
            if good.exists():
                ckpt.link(good, last)
        if not good.exists():
            raise TrainingDiverged(f"{where}; no checkpoint had a normal loss (the newest is kept as "
                                   f"{self.checkpoints / rundir.DIVERGED}). Lower optim.lr or set optim.grad_clip and "
                                   "train again")
        kept = ckpt.load(good)
        raise TrainingDiverged(
            f"{where}. The last good checkpoint is {last} (step {kept['global_step']}, whose weights gave a normal "
            f"loss; any newer one is kept as {rundir.DIVERGED}). Lower optim.lr or set optim.grad_clip and start from "
            f"it: snn-stp train --init-from {last} --set optim.lr=... --out NEW_RUN_DIR")

    def _begin_round(self) -> None:
        """At an epoch start of a method that trains in rounds: keep the state to rewind to (at the
        start of its rewind epoch in round 0), and when the scheduler starts a new round (it has set
        the round's masks), rewind to it. Both depend only on the run's state, so a resume from the
        epoch's start repeats them exactly."""
        if self.rewind_state is None and self.global_step == self.thresholds.rewind_step:
            self.rewind_state = rewind_point(self.model, self.optimizer, self.lr_scheduler)
        if self.thresholds.begin_round():
            if self.rewind_state is None:
                raise RuntimeError(f"round {self.thresholds.round} starts at step {self.global_step} but no state to "
                                   f"rewind to was kept (it is taken at step {self.thresholds.rewind_step})")
            rewind(self.rewind_state, self.model, self.optimizer, self.lr_scheduler)

    def _recalibrate_batchnorm(self) -> None:
        """Replace BatchNorm's running statistics by those of the current weights on the first
        ``train.batchnorm_recalibration`` training batches (this epoch's augmentations, the same
        samples on every rank, dropout off). A channel under the group threshold shrinks by
        ``1 - d sqrt(|g|) / ||theta_g||``, fast near the boundary, and the running variance (a
        momentum average) lagged the batch variance 20x on the digits SNN: in evaluation mode its
        neurons stayed silent while training went on."""
        c = self.config
        batches = c.train.batchnorm_recalibration
        if batches is None:
            batches = 20 if c.pruning.granularity == "channel" else 0
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not batches or not norms or self.train_set is None:
            return
        count = min(len(self.train_set), batches * c.data.batch_size)
        loader = self._loader("train", c.data.batch_size, [self.epoch * len(self.train_set) + i for i in range(count)],
                              c.data.workers)
        momenta = [m.momentum for m in norms]
        training = self.model.training
        self.model.eval()
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over the batches
            norm.train()
        try:
            with torch.no_grad(), torch.autocast(self.device.type, enabled=self.amp):
                for inputs, _ in loader:
                    self.model(inputs.to(self.device, non_blocking=True))
        finally:
            for norm, momentum in zip(norms, momenta):
                norm.momentum = momentum
            self.model.train(training)

    def _measure_costs(self, inputs: torch.Tensor) -> None:
        """The energy penalty's costs: what each weighted weight costs per sample on this batch (the
        first of each epoch; the operations it takes part in times their energy,
        ``measure.weight_operation_costs``), added to the layers' running means. Under DDP each rank
        measures its own batch and the ranks take the mean of their measurements, so their
        thresholds stay identical."""
        from ..measure.operations import weight_operation_costs

        # In evaluation mode: dropout's training-time scaling would make spikes look real-valued (MACs).
        training = self.model.training
        self.model.eval()
        kinds: dict[str, str] = {}
        try:
            costs = weight_operation_costs(self.model, inputs, {layer.name: layer.module for layer in self.weighted},
                                           spiking=self.spiking, energy_table=self.config.train.energy_table, kinds=kinds)
        finally:
            self.model.train(training)
        if self.spiking:
            # A spiking network's synaptic operations: the layer that reads the real-valued input (MACs,
            # once per frame at every position) keeps the plain L1 term (factor 1). Weighted by its MACs
            # it cost hundreds of times the mean and lost every weight, and the network with it.
            costs = {name: cost for name, cost in costs.items() if kinds[name] == "sop"}
        if self.ctx.enabled:
            for name in costs:
                torch.distributed.all_reduce(costs[name])
                costs[name] /= self.ctx.world_size
        pruning.update_costs({layer.name: layer.parametrization for layer in self.weighted if layer.name in costs}, costs,
                             scope=self.config.pruning.energy_scope, mix=self.config.pruning.energy_mix)

    def _catch_stop_signals(self) -> dict:
        """A :data:`STOP_SIGNALS` signal sets a flag (the loop saves and stops at the next step); a
        second one raises KeyboardInterrupt at once. Only in the main thread (signal's rule)."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def request_stop(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested, self._stop_signal = True, signum
            if self.ctx.is_main and sys.stderr.isatty():  # a person at a terminal: say it was heard
                print(f"\nsnn-stp: {signal.Signals(signum).name}: stopping after this step with a checkpoint "
                      "(again to stop at once)", file=sys.stderr, flush=True)
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, request_stop)
        return previous

    def _interrupted(self) -> None:
        raise TrainingInterrupted(
            f"interrupted at epoch {self.epoch + 1}, step {self.global_step}; checkpoint saved as "
            f"{self.checkpoints / rundir.LAST}. Continue exactly with: snn-stp resume {self.run_dir}",
            self._stop_signal)

    def _progress(self, iterable, description: str):
        return evaluation.with_progress(iterable, description, not self.quiet and self.ctx.is_main)

    def _best_window(self) -> tuple[str, Callable[[dict], bool]]:
        """Which epochs may become best.pt, in words (the summary and the final line say it) and as
        a test of an epoch record: those at the sparsity the run is for (within
        ``pruning.target_tolerance`` of the target; without a target, once the pruning schedule has
        ended), so best.pt never pairs the best accuracy with a sparsity the run did not aim at."""
        p = self.config.pruning
        if not self.thresholds.prunes:
            return "every epoch (dense)", lambda record: True
        if p.target_sparsity is not None and self.thresholds.reaches_target_sparsity:
            return (f"the epochs within {100 * p.target_tolerance:.3g} point(s) of the target sparsity "
                    f"{p.target_sparsity:.2%} (pruned layers)",
                    lambda record: abs(record["pruned_layer_sparsity"] - p.target_sparsity) <= p.target_tolerance + 1e-12)
        end = self.thresholds.pruning_end_step
        end = self.epochs * self.steps_per_epoch if end is None else end
        return f"the epochs from step {end} on, where the pruning schedule has ended", lambda record: record["step"] >= end

    def _final_threshold(self) -> float | None:
        """D, where d is scheduled toward one: the configured D, or the one calibrated so far for
        ``pruning.target_sparsity``; None for the methods without one (gmp, gradr, str, lats given l1)."""
        value = getattr(self.thresholds, "final_threshold", None)
        return None if value is None else float(value)

    def _summary(self, seconds: float, stopped_early: bool) -> dict:
        report = pruning.weight_sparsity(self.model)
        # Every rank's view, to show that they agree (same global step, threshold, sparsity).
        mine = {"rank": self.ctx.rank, "global_step": self.global_step, "threshold": self.thresholds.threshold,
                "weight_sparsity": report.global_sparsity}
        ranks = distributed.all_gather(mine, self.ctx)
        records = rundir.read_metrics(self.run_dir) if self.ctx.is_main and (self.run_dir / rundir.METRICS).exists() \
            else []
        # The final accuracy is the record of the epoch last.pt ends (never an earlier one's). Lost
        # (its line damaged after it was written): measured again on the very same weights.
        last = next((r for r in reversed(records) if r.get("epoch") == self.epoch), None) if self.epoch else None
        # Rank 0 reads the records; every rank takes part in an evaluation.
        reevaluated = distributed.all_gather(self.ctx.is_main and last is None and self.epoch > 0, self.ctx)[0]
        if reevaluated:
            last = {"epoch": self.epoch, "test_acc": self.evaluate()["acc"]}
        return {"run_dir": str(self.run_dir), "model": self.config.model.name, "spiking": self.spiking,
                "data": self.config.data.name, "scheduler": self.config.pruning.scheduler,
                "epochs": self.epochs, "epochs_done": self.epoch, "global_step": self.global_step,
                "stopped_early": stopped_early,
                "final_test_acc": last["test_acc"] if last else None,
                "best_val_acc": self.best_acc if self.best_epoch is not None else None, "best_epoch": self.best_epoch,
                "test_acc_at_best_val": self.test_acc_at_best, "best_weight_sparsity": self.best_sparsity,
                "best_rule": self._best_window()[0], "final_epoch": last["epoch"] if last else None,
                **sparsity_figures(report), "parameter_counts": report.counts(), "threshold": self.thresholds.threshold,
                "final_threshold": self._final_threshold(), "target_sparsity": self.config.pruning.target_sparsity,
                "granularity": self.config.pruning.granularity, "penalty": self.config.pruning.penalty,
                "objective": pruning_objective(self.config.pruning, pruning.scheduler_class(
                    self.config.pruning.scheduler).reports_l1),
                "l1_coefficient": self.thresholds.run_l1_coefficient, "l1_coefficient_constant": self.thresholds.l1_is_constant,
                "l1_coefficient_last_step": self.thresholds.l1_coefficient, "seconds": seconds, "threads": torch.get_num_threads(),
                "world_size": self.ctx.world_size, "placement": distributed.placement(self.ctx),
                "ranks": ranks, "final_test_acc_reevaluated": reevaluated}


def pruning_objective(p, reports_l1: bool = True) -> str:
    """The penalty the implied coefficient lambda belongs to, in words (summary.json's ``objective``);
    a scheduler that implies no L1 coefficient (STR, Grad R, GMP, dense) minimizes the loss alone."""
    if not reports_l1:
        return f"the loss alone ({p.scheduler} implies no penalty coefficient)"
    if p.penalty == "energy":
        factor = "(c_i / mean c)" if p.energy_mix == 1 else f"({1 - p.energy_mix:.4g} + {p.energy_mix:.4g} c_i / mean c)"
        return (f"loss + lambda sum_i {factor} |w_i|, c_i the energy (pJ per sample) of the synaptic operations weight "
                f"i takes part in (an ANN: its MACs), a running mean over the epochs' first batches, mean c over "
                f"{'its layer' if p.energy_scope == 'layer' else 'every weighted layer'}; a spiking network's layer "
                "reading real-valued input keeps factor 1")
    if p.granularity == "channel":
        return "loss + lambda sum_g sqrt(|g|) ||w_g||_2 over output channels g (group lasso)"
    if p.granularity == "nm":
        return f"loss + lambda ||w||_1 with w {p.nm}-sparse along the input dimension (a non-convex constraint)"
    return "loss + lambda ||w||_1"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _epoch_line(r: dict) -> str:
    round_ = f"  round {r['round']}" if "round" in r else ""
    return (f"epoch {r['epoch']:3d}{round_}  loss {r['train_loss']:.3f}  train {r['train_acc']:.2%}  test {r['test_acc']:.2%}"
            f"  sparsity {r['pruned_layer_sparsity']:.2%} pruned layers, {r['all_weight_sparsity']:.2%} all weights"
            f"  d {r['threshold']:.4g}  lambda {_number(r['l1_coefficient'])}"
            f"  pruned {r['pruned']} regrown {r['regrown']}  {r['epoch_seconds']:.1f}s")



def evaluate_checkpoint(path: str | Path, quiet: bool = True) -> dict:
    """Accuracy and sparsity of a checkpoint (or a run directory's ``checkpoints/last.pt``).

    The model is rebuilt from the checkpoint's own configuration and evaluated with the
    threshold saved in it (a buffer of the model), on the test split, with the code the training
    loop measures with; nothing is trained and nothing is written.
    """
    restored = restore_checkpoint(path)
    config, state, model = restored.config, restored.state, restored.model
    test, analysis = evaluate_on_test_split(model, config, quiet)
    report = pruning.weight_sparsity(model)
    thresholds = {layer.name: float(layer.parametrization.threshold)
                  for layer in pruning.pruned_layers(model, pruning.SoftThreshold)}
    return {"checkpoint": str(restored.path), "epoch": state["epoch"], "global_step": state["global_step"],
            "test_loss": test["loss"], "test_acc": test["acc"], "test_top5": test["top5"],
            **sparsity_figures(report), "parameter_counts": report.counts(), "layer_sparsity": report.layers,
            "threshold": restored.threshold_state["threshold"], "layer_thresholds": thresholds, **analysis}


def evaluate_on_test_split(model: nn.Module, config: Config, quiet: bool = True) -> tuple[dict, dict]:
    """``model`` (moved to ``train.device``) on the test split of ``config``, measured with the
    training loop's own code: the loss and accuracies, and the analysis (operation counts, spike
    statistics) of :func:`evaluation.analyze`."""
    device = distributed.resolve_device(config.train.device)
    model = model.to(device)
    test_set = make_dataset(config, "test", model)
    loader = make_loader(test_set, config.data.name, config.data.eval_batch_size or config.data.batch_size,
                         bool(getattr(model, "spiking", False)), num_workers=config.data.workers)
    test = evaluation.measure(model, loader, make_loss(config), device, bool(config.train.amp and device.type == "cuda"),
                              distributed.DistContext(device=device), show_progress=not quiet)
    return test, evaluation.analyze(model, test_set, config, device)


def _number(value) -> str:
    """An implied L1 coefficient in 4 significant digits: "n/a" for None (no L1 coefficient under
    Adam), and a negative one said to be no penalty."""
    return "n/a" if value is None else format_l1(value)


def format_l1(value: float) -> str:
    """An implied L1 coefficient as printed: a negative one (d fell) is not a penalty on |w| but a
    reward for it, and is printed so."""
    return f"{value:.4g}" if value >= 0 else f"{value:.4g} (negative: d fell, which rewards |w| instead of " \
                                              "penalizing it)"
