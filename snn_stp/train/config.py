"""Typed run configuration: dataclasses loaded from YAML, with dotted ``--set`` overrides.

Unknown keys, wrong types and impossible combinations are errors that list what is valid. The
resolved configuration is saved in the run directory as ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..files import parse_value, read_yaml, write_text_atomic


@dataclass
class ModelConfig:
    name: str = "spiking_mlp"
    spiking: bool = True
    num_classes: int | None = None  # default: the data set's
    in_channels: int | None = None  # default: the model's (for spiking_mlp: the input length)
    time_steps: int | None = None  # default: the model's; spiking only
    neuron: dict = field(default_factory=dict)  # NeuronConfig fields; spiking only
    backend: str = "auto"
    options: dict = field(default_factory=dict)  # the model's own keyword arguments
    init_from: str | None = None  # start from these weights (a checkpoint or a state_dict file)


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None
    batch_size: int = 64
    eval_batch_size: int | None = None
    workers: int = 0
    frames: int | None = None  # frames per event sample; default: model time steps
    time_window: float | None = None
    event_count: int | None = None
    denoise_us: float | None = None
    downsample: float | None = None
    cache: bool = True
    download: bool = False
    augment: bool = True
    # Part of the training split held out for model selection (best.pt), drawn with validation_seed
    # (the same split for every run of a data set); 0: no validation split and no best.pt.
    validation_fraction: float = 0.1
    validation_seed: int = 0


@dataclass
class PruningConfig:
    """How the model is pruned. Besides these keys, the section takes the chosen scheduler's own
    arguments (``beta`` for pgh, ``l1`` for lats, ...): each scheduler class declares them (see
    ``ThresholdScheduler.user_arguments``), and they are checked against it."""

    scheduler: str = "lats"  # a registered scheduler name ("dense": the unpruned baseline)
    rule: str | None = None  # default: the scheduler's first rule (ste; exact for str; gradr; magnitude for gmp)
    final_threshold: float | None = 0.2
    # The final fraction of zero weights in the pruned layers, in place of final_threshold: the schedulers
    # with a final threshold calibrate D to it during training; gmp prunes to it; gradr's prior aims at it.
    target_sparsity: float | None = None
    # best.pt is chosen among the epochs whose pruned-layer sparsity is within this much (a fraction:
    # 0.01 = 1 point) of target_sparsity; without a target, among the epochs after the pruning ended.
    target_tolerance: float = 0.01
    start_epoch: int = 0
    init: str = "keep"  # "inverse" for a scheduler whose threshold starts at D (fixed)
    # What one threshold zeroes together: each weight, whole output channels (group lasso), or all but
    # N of every M weights along the input (pruning.nm, e.g. "2:4"); see docs/pruning.md.
    granularity: str = "weight"
    nm: str | None = None
    # l1, or energy: each weight's L1 term weighted by the energy of the operations it causes (c_i, a
    # running mean measured on a training batch each epoch; see energy_scope and energy_mix).
    penalty: str = "l1"
    # With penalty energy: what a weight's cost is compared with (layer: the weights of its own layer;
    # global: every weighted weight, the plain d * c_i / mean(c), which killed a conv SNN's expensive
    # layer) and the weighted share of the penalty, (1 - mix) |w_i| + mix (c_i / mean c) |w_i|.
    energy_scope: str = "layer"
    energy_mix: float = 0.1
    include: list | None = None
    exclude: list | None = None
    threshold_multipliers: dict = field(default_factory=dict)
    scheduler_arguments: dict = field(default_factory=dict)  # written inline in the section, not as a key

    #: The field that collects the keys a section does not declare (checked in :func:`validate`).
    EXTRA_KEYS = "scheduler_arguments"


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    decay_norm: bool = False  # weight decay on BatchNorm parameters
    decay_threshold: bool = True  # weight decay on STR threshold logits (STR needs it)
    threshold_weight_decay: float | None = None  # STR logits' own decay (the reference's st_decay); null: weight_decay
    grad_clip: float | None = None


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | step | multistep | constant
    warmup_epochs: int = 0
    # linear: lr/(w+1) rising to lr (torch's LinearLR); reference: lr (e+1)/w in warm-up epoch e (the STR/LATS code)
    warmup: str = "linear"
    interval: str = "step"  # step the LR per optimizer step or per epoch
    min_lr: float = 0.0
    step_size: int = 30  # step (epochs)
    milestones: list = field(default_factory=list)  # multistep (epochs)
    gamma: float = 0.1


@dataclass
class TrainConfig:
    epochs: int = 20
    seed: int = 0
    loss: str = "cross_entropy"  # cross_entropy | mse (STDS: MSE of the output to one-hot)
    label_smoothing: float = 0.0
    amp: bool = True  # on CUDA only; off on the CPU automatically
    deterministic: bool = True
    # CPU threads of torch (null: torch's default, one per core). Results depend on it bit for bit, and
    # so does speed: for small models on a busy machine 1 thread can be several times faster.
    threads: int | None = None
    device: str = "auto"
    checkpoint_every_steps: int | None = None
    max_steps: int | None = None  # stop early (smoke tests); the schedules keep the full length
    analysis_samples: int = 256  # test samples for per-epoch spike statistics and operation counts (0: off)
    # Training batches whose statistics replace BatchNorm's running ones before each epoch's evaluation
    # (0: off; null: 20 with pruning.granularity channel, whose shrinking channels the running statistics
    # lag behind, else off).
    batchnorm_recalibration: int | None = None
    energy_table: str = "45nm_fp32"  # per-operation energies for the estimate (see snn_stp.analysis)
    steady_allocator: bool = True  # snn-stp keeps freed memory in the process (glibc; see train/allocator.py)
    # A checkpoint counts as good (checkpoints/last_good.pt) when the loss measured on its weights is
    # finite and at most this many times the run's first loss; null: finite is enough.
    divergence_factor: float | None = 10.0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    description: str = ""

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        pruning = data["pruning"]
        data["pruning"] = _inline(pruning, PruningConfig.EXTRA_KEYS, after="final_threshold")
        return data


def _inline(section: dict, extra: str, after: str) -> dict:
    """``section`` with the mapping under ``extra`` written as its own keys, placed after ``after``."""
    inlined = {}
    for key, value in section.items():
        if key != extra:
            inlined[key] = value
        if key == after:
            inlined.update(section[extra])
    return inlined


#: ``schedule.warmup`` shapes (see :func:`snn_stp.train.builders.make_lr_scheduler`).
WARMUPS = ("linear", "reference")

SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def from_dict(data: dict[str, Any]) -> Config:
    """Build a :class:`Config` from nested dicts, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"a configuration is a mapping of sections, got {type(data).__name__}")
    return _build(Config, data, "")


def _build(cls, data: dict, prefix: str):
    extra = getattr(cls, "EXTRA_KEYS", None)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != extra}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if extra:  # kept as given; validate() checks them against what they belong to
        built = cls(**{extra: {k: data[k] for k in unknown}}, **_build_values(hints, data, set(unknown), prefix))
    else:
        if unknown:
            where = f"section '{prefix[:-1]}'" if prefix else "the top level"
            raise ConfigError(f"unknown key(s) {[prefix + k for k in unknown]} in {where}; valid: {', '.join(fields)}")
        built = cls(**_build_values(hints, data, set(), prefix))
    # Which keys were written (in a file or --set) rather than defaulted: validate() refuses some
    # pairs only when both were asked for (not a field: to_dict and comparisons ignore it).
    built.given_keys = frozenset(data)
    return built


def _build_values(hints, data: dict, skip: set, prefix: str) -> dict:
    values = {}
    for name, value in data.items():
        if name in skip:
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"'{prefix}{name}' is a section (a mapping), got {value!r}")
            values[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            values[name] = _check_type(value, hint, prefix + name)
    return values


def _check_type(value, hint, key: str):
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    for kind in allowed:
        if kind is type(None) and value is None:
            return None
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is float and isinstance(value, str):
            # PyYAML (YAML 1.1) reads 1e-4 without a dot as a string.
            try:
                return float(value)
            except ValueError:
                pass
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind in (str, bool, list, dict) and isinstance(value, kind):
            return value
    names = " or ".join("null" if k is type(None) else k.__name__ for k in allowed)
    raise ConfigError(f"'{key}' must be {names}, got {value!r} ({type(value).__name__})")


#: The recipes shipped with the package (paper reproductions and CPU demos).
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def recipe_files() -> list[Path]:
    """Every shipped recipe, sorted by name."""
    return sorted(RECIPES.glob("*.yaml"))


def find_config(path: str | Path) -> Path:
    """``path`` if it is a file, else the shipped recipe of that name (``digits_snn_lats`` or
    ``digits_snn_lats.yaml``); otherwise a :class:`ConfigError` listing the recipes."""
    path = Path(path)
    if path.is_file():
        return path
    recipe = RECIPES / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if path.parent == Path(".") and recipe.is_file():
        return recipe
    raise ConfigError(f"config file {path} does not exist; give a YAML file or a shipped recipe: "
                      f"{', '.join(p.stem for p in recipe_files())}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                settings: list[tuple[str, Any, str]] | None = None) -> Config:
    """The default config, or ``path`` (a YAML file or a shipped recipe's name), with ``key.sub=value``
    overrides (values in YAML syntax), then ``settings``: ``(key, value, source)`` with typed values
    (a sweep's points), each applied by :func:`apply_setting`."""
    data: dict = {}
    if path is not None:
        path = find_config(path)
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of sections ({', '.join(SECTIONS)})")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. optim.lr=0.05")
        key, raw = item.split("=", 1)
        source = f"override {item!r}"
        apply_setting(data, key, parse_value(raw, source), source)
    for key, value, source in settings or []:
        apply_setting(data, key, value, source)
    config = from_dict(data)
    validate(config)
    return config


def apply_setting(data: dict, key: str, value: Any, source: str) -> None:
    """Set the dotted ``key`` (``section.key``, or deeper into a mapping) of the config mapping
    ``data`` to ``value``, a typed value (a copy of it: a later setting may change keys inside it),
    creating the sections on the way. ``source`` names where the setting came from in the error
    raised when a part of the key is not a section. The values are checked when the mapping
    becomes a :class:`Config` (:func:`from_dict`)."""
    import copy

    parts = key.strip().split(".")
    target = data
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{source}: '{part}' is not a section")
    target[parts[-1]] = copy.deepcopy(value)


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    write_text_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


#: Keys that ``snn-stp resume`` takes from an edited config.yaml: they change where data is read
#: from, how fast it is loaded, how often checkpoints are written and what is measured beside
#: training, never the numbers the run computes. Any other difference from the checkpoint's
#: config is refused.
RESUME_MUTABLE_KEYS = ("description", "data.root", "data.workers", "data.cache", "train.checkpoint_every_steps",
                       "train.analysis_samples", "train.steady_allocator", "train.divergence_factor")


def flatten(config: Config | dict) -> dict[str, Any]:
    """``{"section.key": value}`` of a config (a section's dict-valued keys stay whole)."""
    data = config.to_dict() if isinstance(config, Config) else config
    flat = {}
    for section, values in data.items():
        if isinstance(values, dict) and section in SECTIONS and section != "description":
            flat.update({f"{section}.{key}": value for key, value in values.items()})
        else:
            flat[section] = values
    return flat


def differences(saved: Config, edited: Config) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, edited value)}`` for every key where the two configs differ."""
    a, b = flatten(saved), flatten(edited)
    return {key: (a.get(key), b.get(key)) for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)}


def validate(config: Config) -> None:
    """Cross-field checks that the types alone cannot express."""
    from ..data import DATASETS
    from ..models import MODELS

    m, d, p, o, s, t = config.model, config.data, config.pruning, config.optim, config.schedule, config.train
    if m.name not in MODELS:
        raise ConfigError(f"model.name {m.name!r} is not a model; valid: {', '.join(sorted(MODELS))}")
    if d.name not in DATASETS:
        raise ConfigError(f"data.name {d.name!r} is not a data set; valid: {', '.join(DATASETS)}")
    _check_pruning(p)
    if not m.spiking:
        set_spiking = [k for k, v in (("model.time_steps", m.time_steps), ("model.neuron", m.neuron)) if v]
        if set_spiking:
            raise ConfigError(f"{set_spiking} only apply to spiking models; model.spiking is false")
    if MODELS[m.name].has_spiking is False and m.spiking:
        raise ConfigError(f"model {m.name} is an ANN baseline: set model.spiking: false")
    if o.name not in ("sgd", "adam"):
        raise ConfigError(f"optim.name {o.name!r} is unknown; valid: sgd, adam")
    if s.name not in ("cosine", "step", "multistep", "constant"):
        raise ConfigError(f"schedule.name {s.name!r} is unknown; valid: cosine, step, multistep, constant")
    if s.warmup not in WARMUPS:
        raise ConfigError(f"schedule.warmup {s.warmup!r} is unknown; valid: {', '.join(WARMUPS)}")
    if s.interval not in ("step", "epoch"):
        raise ConfigError(f"schedule.interval must be step or epoch, got {s.interval!r}")
    if t.loss not in ("cross_entropy", "mse"):
        raise ConfigError(f"train.loss {t.loss!r} is unknown; valid: cross_entropy, mse")
    from ..measure import ENERGY_TABLES
    if t.energy_table not in ENERGY_TABLES:
        raise ConfigError(f"train.energy_table {t.energy_table!r} is unknown; valid: {', '.join(ENERGY_TABLES)}")
    if t.loss == "mse" and t.label_smoothing:
        raise ConfigError("train.label_smoothing applies to cross_entropy, not mse")
    for key, value, low in (("train.epochs", t.epochs, 1), ("data.batch_size", d.batch_size, 1),
                            ("schedule.warmup_epochs", s.warmup_epochs, 0), ("pruning.start_epoch", p.start_epoch, 0)):
        if value < low:
            raise ConfigError(f"{key} must be >= {low}, got {value}")
    if s.warmup_epochs >= t.epochs:
        raise ConfigError(f"schedule.warmup_epochs ({s.warmup_epochs}) must be below train.epochs ({t.epochs})")
    if p.start_epoch >= t.epochs:
        raise ConfigError(f"pruning.start_epoch ({p.start_epoch}) must be below train.epochs ({t.epochs})")
    _check_ranges(config)
    frame_keys = data_frame_keys()
    if DATASETS[d.name].input_kind == "static" and any(getattr(d, key) is not None for key in frame_keys):
        raise ConfigError(f"data.{'/'.join(frame_keys)} apply to event data; {d.name} is static")


def data_frame_keys() -> list[str]:
    """The keys of the data section that are frame options (``data.frames`` is FrameSpec's
    ``time_steps``; the others keep FrameSpec's names)."""
    from ..data import FRAME_OPTIONS

    return ["frames"] + [name for name in FRAME_OPTIONS if name != "time_steps"]


def _check_pruning(p: PruningConfig) -> None:
    """The scheduler exists, and the section's extra keys are its arguments, of their types (all
    read from the scheduler's class)."""
    from ..pruning import THRESHOLD_SCHEDULERS

    cls = scheduler_class(p.scheduler)
    own = cls.user_arguments()
    takes_target = own.pop("target_sparsity", None) is not None
    own.pop("final_threshold", None)  # keys of the section itself
    given = p.scheduler_arguments
    unknown = sorted(set(given) - set(own))
    if unknown:
        keys = [f.name for f in dataclasses.fields(PruningConfig) if f.name != PruningConfig.EXTRA_KEYS]
        renamed = " (pruning.final_sparsity is now pruning.target_sparsity)" if "final_sparsity" in unknown else ""
        raise ConfigError(f"unknown key(s) {['pruning.' + k for k in unknown]} in section 'pruning' for scheduler "
                          f"{p.scheduler}{renamed}; valid: {', '.join(keys + list(own))}")
    if not (isinstance(p.target_tolerance, (int, float)) and 0 < p.target_tolerance < 1):
        raise ConfigError(f"pruning.target_tolerance must be in (0, 1) (a fraction: 0.01 is one point of sparsity), "
                          f"got {p.target_tolerance!r}")
    if p.target_sparsity is not None:
        _check_target_sparsity(p, cls, takes_target)
    for name, value in given.items():
        given[name] = _check_type(value, own[name][0], f"pruning.{name}")
    missing = [name for name, (_, required) in own.items() if required and given.get(name) is None]
    if takes_target and p.target_sparsity is None and "target_sparsity" not in cls.replaces_final_threshold:
        missing.append("target_sparsity")
    if missing:
        raise ConfigError(f"pruning.scheduler {p.scheduler} needs {' and '.join('pruning.' + n for n in missing)}")
    if cls.uses_final_threshold({**given, "target_sparsity": p.target_sparsity}) and p.final_threshold is None:
        raise ConfigError(f"pruning.scheduler {p.scheduler} needs pruning.final_threshold"
                          + "".join(f" or pruning.{n}" for n in cls.replaces_final_threshold))
    if p.target_sparsity is not None and "target_sparsity" in cls.replaces_final_threshold:
        _refuse_scale_with_target(p, cls)
        p.final_threshold = None  # D is calibrated: the default final_threshold (0.2) is not used
    _check_granularity(p, cls)
    if p.init == "inverse" and not cls.starts_at_final_threshold:
        starting = [n for n, c in sorted(THRESHOLD_SCHEDULERS.items()) if c.starts_at_final_threshold]
        raise ConfigError(f"pruning.init inverse is for the {', '.join(starting)} scheduler (pruning at initialization)")


#: ``pruning.penalty``: the plain L1 norm, or the L1 norm weighted by each weight's energy.
PENALTIES = ("l1", "energy")


def _check_granularity(p: PruningConfig, cls) -> None:
    """``pruning.granularity`` (and ``pruning.nm``) is one the scheduler's parametrization and rule
    can threshold."""
    from ..pruning import THRESHOLD_SCHEDULERS, SoftThreshold
    from ..pruning.functional import GRANULARITIES, parse_nm

    if p.granularity not in GRANULARITIES:
        raise ConfigError(f"pruning.granularity {p.granularity!r} is unknown; valid: {', '.join(GRANULARITIES)}")
    if p.granularity == "nm" and p.nm is None:
        raise ConfigError("pruning.granularity nm needs the pattern pruning.nm, e.g. --set pruning.nm=2:4")
    if p.nm is not None and p.granularity != "nm":
        raise ConfigError(f"pruning.nm applies to pruning.granularity nm (it is {p.granularity}); set both, e.g. "
                          "--set pruning.granularity=nm --set pruning.nm=2:4")
    if p.nm is not None:
        try:
            parse_nm(p.nm)
        except ValueError as error:
            raise ConfigError(f"pruning.nm: {error}") from None
    rule = p.rule or cls.rules[0]
    if p.penalty not in PENALTIES:
        raise ConfigError(f"pruning.penalty {p.penalty!r} is unknown; valid: {', '.join(PENALTIES)}")
    if p.penalty != "energy":
        # A saved config.yaml writes every key: only a value other than the default was asked for.
        defaults = PruningConfig()
        written = [k for k in ("energy_scope", "energy_mix") if k in getattr(p, "given_keys", frozenset())
                   and getattr(p, k) != getattr(defaults, k)]
        if written:
            many = len(written) > 1
            raise ConfigError(f"{' and '.join('pruning.' + k for k in written)} appl{'y' if many else 'ies'} to "
                              f"pruning.penalty energy (it is {p.penalty}); set --set pruning.penalty=energy, or remove "
                              f"{'them' if many else 'it'}")
    else:
        from ..pruning.parametrizations import check_cost_weighting
        try:
            check_cost_weighting(p.energy_scope, p.energy_mix)
        except ValueError as error:
            raise ConfigError(f"pruning.energy_scope / energy_mix: {error}") from None
    if p.penalty == "energy" and p.granularity != "weight":
        raise ConfigError(f"pruning.penalty energy weights each weight's own threshold: it needs pruning.granularity "
                          f"weight, not {p.granularity}")
    if p.penalty == "energy" and not (cls.prunes and rule in ("ste", "exact")
                                      and issubclass(cls.parametrization_type, SoftThreshold)):
        raise ConfigError(f"pruning.penalty energy needs a soft-threshold scheduler with rule ste or exact; "
                          f"{p.scheduler} has rule {rule}")
    if p.granularity != "weight" and (p.granularity not in cls.parametrization_type.granularities
                                      or rule not in ("ste", "exact")):
        able = sorted(n for n, c in THRESHOLD_SCHEDULERS.items()
                      if p.granularity in c.parametrization_type.granularities and set(c.rules) & {"ste", "exact"})
        raise ConfigError(f"pruning.granularity {p.granularity}: {p.scheduler} (rule {rule}) prunes weight by weight; "
                          f"a structured granularity needs a soft-threshold scheduler ({', '.join(able)}) with rule "
                          "ste or exact")


def scheduler_class(name: str):
    """The registered scheduler class ``pruning.scheduler`` names; an unknown name is a
    :class:`ConfigError` listing the registered ones and how a scheduler of one's own joins them."""
    from ..plugins import PLUGINS_VARIABLE
    from ..pruning import THRESHOLD_SCHEDULERS

    if name not in THRESHOLD_SCHEDULERS:
        raise ConfigError(f"pruning.scheduler {name!r} is unknown; valid: {', '.join(sorted(THRESHOLD_SCHEDULERS))} "
                          f"(a scheduler of your own registers when its module is imported: name the module in "
                          f"{PLUGINS_VARIABLE}, see docs/contributing.md)")
    return THRESHOLD_SCHEDULERS[name]


def _refuse_scale_with_target(p: PruningConfig, cls) -> None:
    """A target sparsity calibrates the schedule's scale (D, or LATS' lambda), so a final_threshold
    or l1 that was written too would be silently dropped: refused, naming both keys."""
    written = getattr(p, "given_keys", frozenset())
    clashing = ["final_threshold"] if "final_threshold" in written and p.final_threshold is not None else []
    clashing += [name for name in cls.replaces_final_threshold
                 if name != "target_sparsity" and p.scheduler_arguments.get(name) is not None]
    if clashing:
        keys = " and ".join(f"pruning.{name}" for name in clashing)
        raise ConfigError(
            f"pruning.target_sparsity and {keys} are both set: with a target sparsity {p.scheduler} calibrates its "
            f"scale during training, so {keys} would be ignored; remove one (on the command line: "
            f"{' '.join(f'--set pruning.{name}=null' for name in clashing)})")


def _check_target_sparsity(p: PruningConfig, cls, takes_target: bool) -> None:
    """``pruning.target_sparsity`` is a fraction, for a scheduler that can aim at it."""
    if not (math.isfinite(p.target_sparsity) and 0 < p.target_sparsity < 1):
        raise ConfigError(f"pruning.target_sparsity must be in (0, 1) (the final fraction of zero weights in the "
                          f"pruned layers), got {p.target_sparsity!r}")
    if not takes_target:
        raise ConfigError(f"pruning.target_sparsity: {cls.target_refusal or f'{p.scheduler} does not take a target sparsity'}")
    if p.init == "inverse":
        raise ConfigError("pruning.target_sparsity with pruning.init inverse: the inverse initialization needs D "
                          "before training (it keeps every weight at step 0); give pruning.final_threshold, or use "
                          "init keep with the target (d then starts at the D that prunes it)")


def _check_ranges(config: Config) -> None:
    """Numbers that would fail (or silently do nothing) only once training runs."""
    m, d, o, s, t = config.model, config.data, config.optim, config.schedule, config.train

    def require(key: str, value, ok: bool, valid: str) -> None:
        if value is not None and not ok:
            raise ConfigError(f"{key} must be {valid}, got {value!r}")

    def finite(value) -> bool:
        return value is not None and math.isfinite(value)

    require("optim.lr", o.lr, finite(o.lr) and o.lr > 0, "a finite number > 0")
    require("optim.momentum", o.momentum, finite(o.momentum) and 0 <= o.momentum < 1, "in [0, 1)")
    require("optim.weight_decay", o.weight_decay, finite(o.weight_decay) and o.weight_decay >= 0, "a finite number >= 0")
    require("optim.threshold_weight_decay", o.threshold_weight_decay,
            finite(o.threshold_weight_decay) and o.threshold_weight_decay >= 0, "a finite number >= 0 (or null)")
    require("optim.grad_clip", o.grad_clip, finite(o.grad_clip) and o.grad_clip > 0, "a finite number > 0 (or null: off)")
    require("optim.betas", o.betas, len(o.betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in o.betas),
            "two numbers in [0, 1)")
    require("schedule.min_lr", s.min_lr, finite(s.min_lr) and 0 <= s.min_lr <= o.lr,
            f"in [0, optim.lr = {o.lr}] (the LR the schedule anneals to)")
    require("schedule.gamma", s.gamma, finite(s.gamma) and s.gamma > 0, "a finite number > 0")
    require("model.time_steps", m.time_steps, m.time_steps is not None and m.time_steps >= 1, "an integer >= 1")
    require("data.validation_fraction", d.validation_fraction,
            finite(d.validation_fraction) and 0 <= d.validation_fraction < 1, "in [0, 1) (0: no validation split)")
    require("data.workers", d.workers, d.workers >= 0, "an integer >= 0 (0: load in the main process)")
    require("data.eval_batch_size", d.eval_batch_size, d.eval_batch_size is not None and d.eval_batch_size >= 1,
            "an integer >= 1 (or null: data.batch_size)")
    require("train.threads", t.threads, t.threads is not None and t.threads >= 1,
            "an integer >= 1 (or null: torch's default, one per core)")
    require("train.analysis_samples", t.analysis_samples, t.analysis_samples >= 0, "an integer >= 0 (0: no analysis)")
    require("train.batchnorm_recalibration", t.batchnorm_recalibration,
            t.batchnorm_recalibration is None or t.batchnorm_recalibration >= 0,
            "an integer >= 0 (0: off; null: 20 batches with pruning.granularity channel, else off)")
    require("train.label_smoothing", t.label_smoothing, finite(t.label_smoothing) and 0 <= t.label_smoothing < 1,
            "in [0, 1)")
    require("train.checkpoint_every_steps", t.checkpoint_every_steps,
            t.checkpoint_every_steps is not None and t.checkpoint_every_steps >= 0,
            "an integer >= 0 (0 or null: at the end of each epoch only)")
    require("train.max_steps", t.max_steps, t.max_steps is not None and t.max_steps >= 1,
            "an integer >= 1 (or null: train every epoch)")
    require("train.divergence_factor", t.divergence_factor, finite(t.divergence_factor) and t.divergence_factor > 1,
            "a number > 1 (or null: any finite loss is normal)")
    device = _check_device(t.device)
    if m.spiking and m.backend != "auto":
        from ..snn.backends import BackendUnavailableError, resolve_backend
        try:
            resolve_backend(m.backend, device)
        except (ValueError, BackendUnavailableError) as error:
            raise ConfigError(f"model.backend: {error}") from None


def _check_device(request: str):
    """The device ``train.device`` names, if this machine has it."""
    import torch

    valid = "auto, cpu, cuda or cuda:N"
    try:
        device = torch.device("cuda" if request == "auto" and torch.cuda.is_available() else
                              "cpu" if request == "auto" else request)
    except RuntimeError:
        raise ConfigError(f"train.device {request!r} is not a device; valid: {valid}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"train.device {request!r} is not supported; valid: {valid}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device {request!r} asks for CUDA, but torch sees no CUDA device here "
                              f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); use train.device=cpu "
                              "or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device {request!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
