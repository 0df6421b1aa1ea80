"""Turn a :class:`Config` into the objects of a run: model, optimizer, LR and threshold schedulers, loss."""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager

import torch
from torch import nn

from .. import pruning
from ..data import build_dataset, check_present, dataset_spec
from ..data.splits import holdout_parts
from ..errors import CheckpointError, ConfigError, SnnStpError
from ..models import build_model
from ..pruning.parametrizations import SoftThreshold, parametrization_for_rule
from ..pruning.schedulers import SchedulerWarning
from . import checkpoint as ckpt
from .config import Config, data_frame_keys, scheduler_class


@contextmanager
def settings(keys: str):
    """Turn the built-in ValueError/TypeError of a library call made with the values of ``keys``
    (a value the user chose) into a :class:`ConfigError` naming them."""
    try:
        yield
    except SnnStpError:
        raise
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{keys}: {error}") from None


def make_model(config: Config, num_classes: int, device: torch.device, load_initial_weights: bool = True) -> nn.Module:
    """The model of ``config.model``, sparsified as ``config.pruning`` says, on ``device``; with
    ``model.init_from`` (and ``load_initial_weights``), starting from those weights."""
    with settings("model"):
        model = _build_sparsified(config, num_classes, device)
    if config.model.init_from and load_initial_weights:
        load_weights(model, config.model.init_from)
    return model


def model_arguments(config: Config, num_classes: int | None = None) -> dict:
    """What ``build_model`` needs to rebuild ``config``'s model (name, classes, channels, spiking and
    its options), without device or backend: the architecture alone. ``num_classes`` defaults to
    the data set's."""
    m = config.model
    num_classes = num_classes or dataset_spec(config.data.name).num_classes
    options = dict(m.options)
    if m.spiking:
        if m.time_steps is not None:
            options["time_steps"] = m.time_steps
        if m.neuron:
            options["neuron"] = dict(m.neuron)
    return {"name": m.name, "num_classes": m.num_classes or num_classes, "in_channels": m.in_channels,
            "spiking": m.spiking, **options}


def _build_sparsified(config: Config, num_classes: int, device: torch.device) -> nn.Module:
    p = config.pruning
    model = build_model(**model_arguments(config, num_classes), backend=config.model.backend, device=device)
    cls = threshold_scheduler_class(config)
    rule = p.rule or cls.rules[0]
    if rule not in cls.rules:
        raise ConfigError(f"pruning.scheduler {p.scheduler} needs pruning.rule {' or '.join(cls.rules)}, got {rule}")
    # d starts at D where the method prunes from step 0 (and the rule has a threshold to set).
    starts_at_d = (p.init == "inverse" or cls.starts_at_final_threshold) and \
        rule in parametrization_for_rule(rule).threshold_rules
    method = {name: p.scheduler_arguments[name] for name in cls.parametrization_arguments}
    # Channel granularity: the last pruned layer's output channels are the classes; it is pruned weight by weight.
    classifier = [pruning.select_modules(model, p.include, p.exclude)[-1][0]] if p.granularity == "channel" else []
    with settings("pruning"):
        pruning.sparsify(model, rule=rule, include=p.include, exclude=p.exclude, init=p.init,
                         initial_threshold=p.final_threshold if starts_at_d else None,
                         threshold_multipliers=p.threshold_multipliers or None, granularity=p.granularity,
                         nm=p.nm, weighted=p.penalty == "energy", unstructured=classifier, **method)
    return model.to(device)


#: State-dict keys of a pruning parametrization's own state (threshold, multiplier, STR logit,
#: Grad R signs, GMP mask): a new run's threshold scheduler sets them, they are never loaded.
_PRUNING_STATE = re.compile(r"(^|\.)parametrizations\.weight\.\d+\.")


def _plain_key(key: str) -> str:
    """``conv.parametrizations.weight.original`` -> ``conv.weight`` (the name in a dense state_dict)."""
    return key.replace("parametrizations.weight.original", "weight")


def load_weights(model: nn.Module, path: str) -> None:
    """Start ``model`` from the weights in ``path``: an snn-stp checkpoint (the latent weights theta,
    BatchNorm statistics, learned neuron parameters; not the pruning state) or a dense state_dict
    such as torchvision's (each ``weight`` goes into theta). Every model tensor must be found with
    the same shape; extra or missing names are an error that lists them."""
    source = {_plain_key(k): v for k, v in ckpt.model_weights(path).items() if not _PRUNING_STATE.search(k)}
    current = model.state_dict()
    target = {_plain_key(k): k for k in current if not _PRUNING_STATE.search(k)}
    missing = sorted(set(target) - set(source) - {k for k in target if k.endswith("num_batches_tracked")})
    unexpected = sorted(set(source) - set(target))
    if missing or unexpected:
        raise CheckpointError(
            f"model.init_from {path}: the weights do not fit model {type(model).__name__}"
            + (f"; missing {_listing(missing)}" if missing else "") + (f"; unexpected {_listing(unexpected)}" if unexpected
                                                                       else "")
            + "; check model.name, model.spiking and model.options against the run that saved them")
    for plain, key in target.items():
        if plain in source and source[plain].shape != current[key].shape:
            raise CheckpointError(f"model.init_from {path}: {plain} has shape {tuple(source[plain].shape)}, the model "
                                  f"needs {tuple(current[key].shape)}; check model.num_classes and model.options")
    model.load_state_dict({key: source[plain] for plain, key in target.items() if plain in source}, strict=False)


def _listing(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def make_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """SGD or Adam; weight decay optionally off for normalization parameters and STR logits, or the
    logits' own (``optim.threshold_weight_decay``).

    Every pruned latent weight ends up in the first param group (the threshold is global).
    """
    o = config.optim
    no_decay_ids, logit_ids = set(), set()
    for module in model.modules():
        if isinstance(module, pruning.NORMALIZATION_TYPES) and not o.decay_norm:
            no_decay_ids.update(id(q) for q in module.parameters(recurse=False))
        if isinstance(module, SoftThreshold) and module.trainable:
            if o.threshold_weight_decay is not None:
                logit_ids.add(id(module.threshold_logit))
            elif not o.decay_threshold:
                no_decay_ids.add(id(module.threshold_logit))
    trainable = [q for q in model.parameters() if q.requires_grad]
    apart = no_decay_ids | logit_ids
    decay = [q for q in trainable if id(q) not in apart]
    rest = [q for q in trainable if id(q) in no_decay_ids]
    groups = [{"params": decay, "weight_decay": o.weight_decay}]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    if logit_ids:  # STR's thresholds with their own decay (st_decay), which sets how fast they rise
        groups.append({"params": [q for q in trainable if id(q) in logit_ids], "weight_decay": o.threshold_weight_decay})
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0)
    return torch.optim.Adam(groups, lr=o.lr, betas=tuple(o.betas))


def make_lr_scheduler(config: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """The LR schedule, in units of optimizer steps or epochs (``schedule.interval``)."""
    s, epochs = config.schedule, config.train.epochs
    unit = steps_per_epoch if s.interval == "step" else 1
    total, warmup = epochs * unit, s.warmup_epochs * unit
    sched = torch.optim.lr_scheduler
    if s.name == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=total - warmup, eta_min=s.min_lr)
    elif s.name == "step":
        main = sched.StepLR(optimizer, step_size=s.step_size * unit, gamma=s.gamma)
    elif s.name == "multistep":
        main = sched.MultiStepLR(optimizer, milestones=[m * unit - warmup for m in s.milestones], gamma=s.gamma)
    else:
        main = sched.LambdaLR(optimizer, lambda _: 1.0)
    if not warmup:
        return main
    if s.warmup == "reference":  # lr (e + 1) / w in warm-up unit e, as the reference code
        ramp = sched.LambdaLR(optimizer, lambda unit: (unit + 1) / warmup)
    else:
        ramp = sched.LinearLR(optimizer, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    return sched.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def threshold_scheduler_class(config: Config) -> type[pruning.ThresholdScheduler]:
    """The registered class of ``pruning.scheduler``."""
    return scheduler_class(config.pruning.scheduler)


def run_epochs(config: Config) -> int:
    """The epochs the run of ``config`` takes: ``train.epochs``, or more for a scheduler that trains
    in rounds (IMP: ``train.epochs + rounds x (train.epochs - rewind_epoch)``)."""
    return threshold_scheduler_class(config).run_epochs(config.train.epochs, config.pruning.scheduler_arguments)


def make_threshold_scheduler(config: Config, model: nn.Module, optimizer, lr_scheduler, steps_per_epoch: int):
    """The threshold scheduler of ``config.pruning``: the arguments the loop knows (its clock and LR
    schedule) where the class takes them, and the user's arguments from the pruning section."""
    p, epochs = config.pruning, config.train.epochs
    cls = threshold_scheduler_class(config)
    constant_lr = config.schedule.name == "constant" and not config.schedule.warmup_epochs
    context = {"start_step": p.start_epoch * steps_per_epoch, "total_steps": epochs * steps_per_epoch,
               "steps_per_epoch": steps_per_epoch, "lr_step_interval": config.schedule.interval,
               # A constant LR needs no simulation (millions of steps in the long recipes).
               "lr_scheduler": None if constant_lr else lr_scheduler}
    accepted = cls.arguments()
    # Every argument the scheduler contract says the loop supplies (a KeyError here: a new
    # CONTEXT_ARGUMENTS entry this loop does not know yet).
    kwargs = {name: context[name] for name in pruning.CONTEXT_ARGUMENTS if name in accepted}
    kwargs.update({name: value for name, value in p.scheduler_arguments.items()
                   if name not in cls.parametrization_arguments and value is not None})
    if p.target_sparsity is not None and "target_sparsity" in accepted:
        kwargs["target_sparsity"] = p.target_sparsity
        if p.granularity == "channel" and issubclass(cls, pruning.ScheduledThreshold):
            warnings.warn(f"pruning.target_sparsity at granularity channel with {p.scheduler}: its calibration steers "
                          "from the sparsity measured early in the run, which at channel granularity misses the target "
                          "(digits SNN asked 90%: 74-77%; digits_dvs: every channel of a layer zeroed; "
                          "docs/pruning.md). pruning.scheduler gst makes the sparsity follow a ramp to the target and "
                          "holds it", SchedulerWarning, stacklevel=2)
    if cls.uses_final_threshold(kwargs):
        kwargs["final_threshold"] = p.final_threshold
    with settings("pruning"):
        return cls(model, optimizer, **kwargs)


class OneHotMSE(nn.Module):
    """The STDS loss: mean squared error between the (time-averaged) output and the one-hot label."""

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(output, nn.functional.one_hot(target, output.shape[-1]).to(output.dtype))


def make_loss(config: Config) -> nn.Module:
    t = config.train
    if t.loss == "mse":
        return OneHotMSE()
    return nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)


def make_dataset(config: Config, split: str, model: nn.Module) -> torch.utils.data.Dataset:
    """The ``split`` of ``config.data`` for ``model``: ``train`` is the data set's training split
    minus the validation part (``data.validation_fraction``, drawn with ``data.validation_seed``),
    ``validation`` that part (read with the evaluation transforms), ``test`` the test split. Event
    data sets get the frame options, with as many frames as the spiking model's time steps unless
    ``data.frames`` says otherwise (16 for ANNs, which sum them). A run needs all three: see
    :func:`make_splits`, which reads the training split once for both of its parts."""
    d = config.data
    if split not in ("train", "validation", "test"):
        raise ValueError(f"split must be train, validation or test, got {split!r}")
    dataset = _read_split(config, "test" if split == "test" else "train", model, augment=d.augment and split == "train")
    if split == "test" or (split == "train" and not d.validation_fraction):
        return dataset
    if not d.validation_fraction:
        raise ConfigError("data.validation_fraction is 0: there is no validation split")
    train, validation = holdout_parts(dataset, d.validation_fraction, d.validation_seed)
    return train if split == "train" else validation


def make_splits(config: Config, model: nn.Module) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset | None,
                                                           torch.utils.data.Dataset]:
    """``(train, validation, test)`` of ``config.data`` for ``model``, the samples :func:`make_dataset`
    gives for each split, with the training split read once: train and validation are two parts of
    one data set object (a second build would read and scan its files, and fill the frame cache,
    again), the validation part reading its samples with the test split's transforms (no
    augmentation). ``validation`` is None when ``data.validation_fraction`` is 0."""
    d = config.data
    dataset = _read_split(config, "train", model, augment=d.augment)
    test = make_dataset(config, "test", model)
    if not d.validation_fraction:
        return dataset, None, test
    # The test split's transforms are the evaluation ones: a training split built without augmentation
    # reads its images with the same steps (tests/test_data.py compares the samples).
    train, validation = holdout_parts(dataset, d.validation_fraction, d.validation_seed, evaluation=test)
    return train, validation, test


def _read_split(config: Config, split: str, model: nn.Module, augment: bool) -> torch.utils.data.Dataset:
    """The whole ``split`` (``train`` or ``test``) of ``config.data`` as its registry entry builds it,
    with ``augment`` and, for event data, the frame options (see :func:`make_dataset`)."""
    d = config.data
    options = {}
    if dataset_spec(d.name).input_kind == "events":
        options = {name: getattr(d, name) for name in data_frame_keys() if name != "frames"}
        options["time_steps"] = d.frames or (model.time_steps if getattr(model, "spiking", False) else 16)
    with settings("data"):
        return build_dataset(d.name, split, d.root, cache=d.cache, download=d.download, augment=augment, **options)


def check_data_present(config: Config) -> None:
    """Both splits of ``config.data`` are where the config says (files only; nothing is read)."""
    for split in ("train", "test"):
        check_present(config.data.name, split, config.data.root)
