"""The training loop: one run from a :class:`Config` into a run directory.

Run directory contract (plots and reports read it, never live objects):

``config.yaml``            the resolved configuration
``metrics.jsonl``          one JSON object per epoch (see :data:`METRIC_KEYS`)
``tensorboard/``           the same scalars as TensorBoard events
``checkpoints/last.pt``    full state, written atomically every epoch (and every N steps)
``checkpoints/best.pt``    the checkpoint of the best test accuracy so far
``summary.json``           final numbers, written at the end
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from .. import pruning
from ..data import DATASETS, make_loader
from . import checkpoint as ckpt
from . import distributed
from .builders import (make_dataset, make_loss, make_lr_scheduler, make_model, make_optimizer,
                       make_threshold_scheduler)
from .config import Config, save_config

METRIC_KEYS = ("epoch", "step", "lr", "threshold", "l1_coefficient", "train_loss", "train_acc", "test_loss",
               "test_acc", "test_top5", "weight_sparsity", "layer_sparsity", "pruned", "regrown", "epoch_seconds")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class _IndexSampler(torch.utils.data.Sampler):
    """Yields a fixed list of indices (one epoch's order, minus the batches already done)."""

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
        resume: continue from ``run_dir/checkpoints/last.pt`` exactly where it stopped.
        quiet: no progress bars, one line per epoch.
        dry_run: build model, optimizer and schedulers (data sizes from the registry) and stop.
    """

    def __init__(self, config: Config, run_dir: str | Path, resume: bool = False, quiet: bool = False,
                 dry_run: bool = False, log=print):
        self.config, self.run_dir, self.quiet, self.log = config, Path(run_dir), quiet, log
        self.ctx = distributed.setup(config.train.device)
        t, d = config.train, config.data
        _seed_everything(t.seed)
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.device = self.ctx.device
        self.amp = bool(t.amp and self.device.type == "cuda")
        spec = DATASETS[d.name]
        self.model = make_model(config, spec.num_classes, self.device)
        self.spiking = bool(getattr(self.model, "spiking", False))
        if dry_run:
            train_size = spec.train_size
            self.train_set = self.test_set = None
        else:
            self.train_set = make_dataset(config, "train", self.model)
            self.test_set = make_dataset(config, "test", self.model)
            train_size = len(self.train_set)
        shard = math.ceil(train_size / self.ctx.world_size)
        self.steps_per_epoch = math.ceil(shard / d.batch_size)
        self.optimizer = make_optimizer(config, self.model)
        self.lr_scheduler = make_lr_scheduler(config, self.optimizer, self.steps_per_epoch)
        self.thresholds = make_threshold_scheduler(config, self.model, self.optimizer, self.lr_scheduler,
                                                   self.steps_per_epoch)
        self.loss_fn = make_loss(config)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.network = self.model
        if self.ctx.enabled:
            self.network = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.epoch, self.step_in_epoch, self.global_step, self.best_acc = 0, 0, 0, -1.0
        self.partial = self._fresh_partial()
        if resume:
            self._restore(ckpt.load(self.run_dir / "checkpoints" / "last.pt", map_location=self.device))
        self.writer = None

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to the end (or ``train.max_steps``); returns the summary."""
        c = self.config
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(c, self.run_dir / "config.yaml")
            self._truncate_metrics()
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.epoch + 1)
        started = time.time()
        stopped_early = False
        try:
            while self.epoch < c.train.epochs:
                if c.train.max_steps and self.global_step >= c.train.max_steps or not self._train_epoch():
                    stopped_early = True
                    break
                record = self._end_epoch()
                if self.ctx.is_main and not self.quiet:
                    self.log(_epoch_line(record))
        finally:
            if self.writer is not None:
                self.writer.close()
        summary = self._summary(time.time() - started, stopped_early)
        if self.ctx.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary

    def _train_epoch(self) -> bool:
        """Train the rest of the current epoch; False if ``max_steps`` stopped it."""
        c, p = self.config, self.partial
        sampler = DistributedSampler(self.train_set, num_replicas=self.ctx.world_size, rank=self.ctx.rank,
                                     shuffle=True, seed=c.train.seed, drop_last=False)
        sampler.set_epoch(self.epoch)
        order = list(iter(sampler))[self.step_in_epoch * c.data.batch_size:]
        loader = make_loader(self.train_set, c.data.name, c.data.batch_size, self.spiking,
                             num_workers=c.data.workers, sampler=_IndexSampler(order))
        self.network.train()
        progress = self._progress(loader, f"epoch {self.epoch + 1}/{c.train.epochs}")
        tick = time.perf_counter()
        for inputs, labels in progress:
            inputs, labels = inputs.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, enabled=self.amp):
                output = self.network(inputs)
                loss = self.loss_fn(output.float(), labels)
            self._check_finite(loss)
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
            n, loss_value = len(labels), float(loss.detach())
            p["loss_sum"] += loss_value * n
            p["correct"] += int((output.argmax(1) == labels).sum())
            p["seen"] += n
            self.global_step += 1
            self.step_in_epoch += 1
            now = time.perf_counter()
            p["seconds"] += now - tick
            tick = now
            if hasattr(progress, "set_postfix"):
                progress.set_postfix(loss=f"{loss_value:.3f}", acc=f"{p['correct'] / p['seen']:.3f}",
                                     d=f"{self.thresholds.threshold:.4g}")
            every = c.train.checkpoint_every_steps
            if every and self.global_step % every == 0 and self.step_in_epoch < self.steps_per_epoch:
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
        test = self.evaluate()
        report = pruning.weight_sparsity(self.model)
        change = pruning.support_change(p["support"], pruning.support(self.model))
        record = {"epoch": self.epoch + 1, "step": self.global_step, "lr": float(self.optimizer.param_groups[0]["lr"]),
                  "threshold": self.thresholds.threshold, "l1_coefficient": self.thresholds.l1_coefficient,
                  "train_loss": loss_sum / seen, "train_acc": correct / seen, "test_loss": test["loss"],
                  "test_acc": test["acc"], "test_top5": test["top5"], "weight_sparsity": report.global_sparsity,
                  "layer_sparsity": report.layers, "pruned": change.pruned, "regrown": change.regrown,
                  "epoch_seconds": p["seconds"]}
        record.update(self.analyze())
        self.epoch += 1
        self.step_in_epoch = 0
        self.partial = self._fresh_partial()
        improved = record["test_acc"] > self.best_acc
        self.best_acc = max(self.best_acc, record["test_acc"])
        if self.ctx.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            for key in METRIC_KEYS[2:]:
                if key != "layer_sparsity":
                    self.writer.add_scalar(key, record[key], record["epoch"])
            for key, value in {**record.get("ops", {}), "mean_firing_rate": record.get("mean_firing_rate")}.items():
                if isinstance(value, float):
                    self.writer.add_scalar(f"analysis/{key}", value, record["epoch"])
            self.writer.flush()
        self._save_checkpoint(best=improved)
        return record

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Test loss, top-1 and top-5 accuracy, over every test sample once (sharded over ranks)."""
        c = self.config
        indices = list(range(self.ctx.rank, len(self.test_set), self.ctx.world_size))
        loader = make_loader(self.test_set, c.data.name, c.data.eval_batch_size or c.data.batch_size, self.spiking,
                             num_workers=c.data.workers, sampler=_IndexSampler(indices))
        self.network.eval()
        totals = [0.0, 0.0, 0.0, 0.0]
        for inputs, labels in self._progress(loader, "evaluate"):
            inputs, labels = inputs.to(self.device), labels.to(self.device)
            with torch.autocast(self.device.type, enabled=self.amp):
                output = self.network(inputs).float()
            top = output.topk(min(5, output.shape[1]), dim=1).indices
            totals[0] += float(self.loss_fn(output, labels)) * len(labels)
            totals[1] += int((top[:, 0] == labels).sum())
            totals[2] += int((top == labels[:, None]).any(1).sum())
            totals[3] += len(labels)
        loss, top1, top5, n = distributed.all_sum(totals, self.ctx)
        return {"loss": loss / n, "acc": top1 / n, "top5": top5 / n}

    @torch.no_grad()
    def analyze(self) -> dict:
        """Spike statistics (spiking models) and operation counts on the first
        ``train.analysis_samples`` test samples (rank 0 only; it writes the metrics)."""
        c = self.config
        n = min(c.train.analysis_samples, len(self.test_set))
        if not n or not self.ctx.is_main:
            return {}
        from ..analysis import count_operations
        from ..snn.monitoring import spike_statistics

        loader = make_loader(self.test_set, c.data.name, n, self.spiking, sampler=_IndexSampler(list(range(n))))
        inputs, _ = next(iter(loader))
        inputs = inputs.to(self.device)
        self.model.eval()
        ops = count_operations(self.model, inputs, energy_table=c.train.energy_table).as_dict()
        result = {"ops": {k: v for k, v in ops.items() if k != "layers"}, "layer_ops": ops["layers"]}
        if self.spiking:
            stats = spike_statistics(self.model, inputs)
            result.update(firing_rate=stats.rates, silent_fraction=stats.silent, mean_firing_rate=stats.total_rate)
        return result

    # -- state ---------------------------------------------------------------------------------
    def _fresh_partial(self) -> dict:
        return {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0, "support": pruning.support(self.model)}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(), "threshold_scheduler": self.thresholds.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": ckpt.rng_state(), "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch, "global_step": self.global_step, "best_acc": self.best_acc,
                "partial": self.partial, "config": self.config.to_dict()}

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.thresholds.load_state_dict(state["threshold_scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step, self.best_acc, self.partial = state["global_step"], state["best_acc"], state["partial"]
        ckpt.set_rng_state(state["rng"])

    def _save_checkpoint(self, best: bool) -> None:
        if not self.ctx.is_main:
            return
        folder = self.run_dir / "checkpoints"
        ckpt.save_atomic(self.state_dict(), folder / "last.pt")
        if best:  # the same state: copy the file rather than serialize it again
            ckpt.copy_atomic(folder / "last.pt", folder / "best.pt")

    def _truncate_metrics(self) -> None:
        """On resume, drop records of epochs the checkpoint had not finished (they will be redone)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] <= self.epoch]
        path.write_text("".join(line + "\n" for line in kept))

    def _check_finite(self, loss: torch.Tensor) -> None:
        bad = float(not torch.isfinite(loss.detach()).all())
        if self.ctx.enabled:
            bad = distributed.all_sum([bad], self.ctx)[0]
        if bad:
            last = self.run_dir / "checkpoints" / "last.pt"
            kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
            raise TrainingDiverged(
                f"loss is {float(loss.detach())} at epoch {self.epoch + 1}, step {self.global_step + 1} (lr "
                f"{self.optimizer.param_groups[0]['lr']:.4g}, threshold {self.thresholds.threshold:.4g}); stopped, "
                f"{kept}. Lower optim.lr, set optim.grad_clip, or check the data")

    def _progress(self, iterable, description: str):
        if self.quiet or not self.ctx.is_main:
            return iterable
        from tqdm import tqdm
        return tqdm(iterable, desc=description, leave=False, dynamic_ncols=True, disable=None)  # off without a TTY

    def _summary(self, seconds: float, stopped_early: bool) -> dict:
        report = pruning.weight_sparsity(self.model)
        # Every rank's view, to show that they agree (same global step, threshold, sparsity).
        mine = {"rank": self.ctx.rank, "global_step": self.global_step, "threshold": self.thresholds.threshold,
                "weight_sparsity": report.global_sparsity}
        ranks = distributed.all_gather(mine, self.ctx)
        last = None
        path = self.run_dir / "metrics.jsonl"
        if self.ctx.is_main and path.exists():
            lines = path.read_text().splitlines()
            last = json.loads(lines[-1]) if lines else None
        return {"run_dir": str(self.run_dir), "model": self.config.model.name, "spiking": self.spiking,
                "data": self.config.data.name, "scheduler": self.config.pruning.scheduler,
                "epochs_done": self.epoch, "global_step": self.global_step, "stopped_early": stopped_early,
                "final_test_acc": last["test_acc"] if last else None, "best_test_acc": self.best_acc,
                "weight_sparsity": report.global_sparsity, "threshold": self.thresholds.threshold,
                "l1_coefficient": self.thresholds.l1_coefficient, "seconds": seconds, "world_size": self.ctx.world_size,
                "ranks": ranks}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _epoch_line(r: dict) -> str:
    return (f"epoch {r['epoch']:3d}  loss {r['train_loss']:.3f}  train {r['train_acc']:.2%}  test {r['test_acc']:.2%}"
            f"  sparsity {r['weight_sparsity']:.2%}  d {r['threshold']:.4g}  lambda {r['l1_coefficient']:.4g}"
            f"  pruned {r['pruned']} regrown {r['regrown']}  {r['epoch_seconds']:.1f}s")



def evaluate_checkpoint(path: str | Path, quiet: bool = True) -> dict:
    """Accuracy and sparsity of a checkpoint (or a run directory's ``checkpoints/last.pt``).

    The model is rebuilt from the checkpoint's own configuration and evaluated with the
    threshold saved in it (a buffer of the model), without any training step.
    """
    from .config import from_dict

    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    state = ckpt.load(path)
    config = from_dict(state["config"])
    trainer = Trainer(config, path.parent.parent, quiet=quiet)
    trainer.model.load_state_dict(state["model"])
    test = trainer.evaluate()
    analysis = trainer.analyze()
    report = pruning.weight_sparsity(trainer.model)
    thresholds = {layer.name: float(layer.parametrization.threshold)
                  for layer in pruning.pruned_layers(trainer.model, pruning.SoftThreshold)}
    return {"checkpoint": str(path), "epoch": state["epoch"], "global_step": state["global_step"],
            "test_loss": test["loss"], "test_acc": test["acc"], "test_top5": test["top5"],
            "weight_sparsity": report.global_sparsity, "layer_sparsity": report.layers,
            "threshold": state["threshold_scheduler"]["threshold"], "layer_thresholds": thresholds, **analysis}
