"""The data set registry: each entry holds its facts and its behaviour (how to build a split, how to
check its files), registered next to the code that reads it (``digits.py``, ``images.py``,
``events.py``) with :func:`register_dataset`.

Input kinds, the one vocabulary for models and data alike (:data:`INPUT_KINDS`, defined in
:mod:`snn_stp.model_registry`, which sits below both):

* ``static``: one tensor per sample (digits ``[64]``, images ``[C, H, W]``), fed to a spiking model
  directly at every time step;
* ``events``: frames ``[T, ...]`` per sample (``[T, P, H, W]``, SHD ``[T, 700]``).

The batch layout that follows from the kind is in :mod:`snn_stp.data.loaders`. The shape of one
sample per time step, which a model must accept, is :meth:`DatasetSpec.sample_shape`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import torch

from ..model_registry import INPUT_KINDS
from .frames import FrameSpec

#: The environment variable naming the default data root.
DATA_ROOT_VARIABLE = "SNN_STP_DATA"


def default_root() -> Path:
    """Where data sets are looked for (and digits_dvs is generated) when no root is given:
    ``$SNN_STP_DATA``, else ``./datasets`` under the working directory."""
    return Path(os.environ.get(DATA_ROOT_VARIABLE) or "datasets").expanduser()


@dataclass(frozen=True)
class DataRequest:
    """What a builder gets: the split under ``root``, and for event data the frame options and the
    frame cache folder (None: no cache)."""

    root: Path
    split: str
    augment: bool = True
    download: bool = False
    frames: FrameSpec | None = None
    cache_root: Path | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """A registered data set.

    Attributes:
        name: registry name.
        input_kind: ``static`` or ``events`` (see the module docstring).
        num_classes: label count; labels are ``0 .. num_classes - 1``.
        shape: one sample per time step, without time and batch: ``(64,)`` for the digits,
            ``(3, 32, 32)`` for CIFAR, ``(P, H, W)`` event frames, ``(700,)`` for SHD's channels.
        description: one line for ``snn-stp list``.
        train_size: training samples of the full data set (dry runs report steps per epoch).
        build: ``build(request) -> Dataset`` of ``(input, label)`` samples.
        check_present: ``check_present(root, split)``: a :class:`DatasetNotFoundError` naming every
            missing file (looks, reads nothing).
        bundled: shipped with snn_stp (or generated from what is), nothing to obtain.
        note: what ``snn-stp list`` adds after the shape (``pixels in 0..1``).
    """

    name: str
    input_kind: str
    num_classes: int
    shape: tuple[int, ...]
    description: str
    train_size: int
    build: Callable[[DataRequest], torch.utils.data.Dataset]
    check_present: Callable[[Path, str], None]
    bundled: bool = False
    note: str = ""

    @property
    def kind(self) -> str:
        """Alias of :attr:`input_kind`."""
        return self.input_kind

    @property
    def sample(self) -> str:
        """One input as ``snn-stp list`` shows it: ``[3, 32, 32]``, ``[T, 2, 34, 34]`` for event
        frames (T of them), then the note."""
        dims = ", ".join(map(str, self.shape))
        text = f"[T, {dims}]" if self.input_kind == "events" else f"[{dims}]"
        return f"{text} {self.note}" if self.note else text

    def sample_shape(self, downsample: float | None = None) -> tuple[int, ...]:
        """One sample per time step, without time and batch (:attr:`shape`); ``downsample``: the
        event frames' spatial factor (``FrameSpec.downsample``), which scales H and W as the
        frames are made (``FrameSpec.sensor_after``)."""
        if downsample is None:
            return self.shape
        if self.input_kind != "events" or len(self.shape) != 3:
            raise ValueError(f"downsample scales H and W of event frames [P, H, W]; {self.name} samples are "
                             f"{self.input_kind} {self.shape}")
        p, h, w = self.shape
        w, h, p = FrameSpec(1, downsample=downsample).sensor_after((w, h, p))
        return p, h, w


#: Every registered data set, in catalog order: bundled first, then static, then event data
#: (registration order within each group).
DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(name: str, input_kind: str, num_classes: int, shape: tuple[int, ...], description: str,
                     train_size: int, check_present: Callable[[Path, str], None], bundled: bool = False,
                     note: str = "") -> Callable:
    """Decorator registering ``build(request)`` as the builder of data set ``name``, whose samples
    have ``shape`` per time step (see :class:`DatasetSpec`)."""
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {', '.join(INPUT_KINDS)}, got {input_kind!r}")
    if not (isinstance(shape, tuple) and shape and all(isinstance(d, int) and d > 0 for d in shape)):
        raise TypeError(f"data set {name!r}: shape must be a tuple of positive sizes (one sample per time step, "
                        f"e.g. (3, 32, 32)), got {shape!r}")

    def add(build: Callable[[DataRequest], torch.utils.data.Dataset]):
        if name in DATASETS:
            raise ValueError(f"data set {name!r} is already registered")
        spec = DatasetSpec(name, input_kind, num_classes, shape, description, train_size, build, check_present,
                           bundled, note)
        ordered = sorted([*DATASETS.values(), spec], key=lambda s: (not s.bundled, s.input_kind != "static"))
        DATASETS.clear()
        DATASETS.update((s.name, s) for s in ordered)
        return build
    return add


#: Frame options of event data sets, as :func:`build_dataset` takes them (the fields of FrameSpec).
FRAME_OPTIONS = tuple(f.name for f in fields(FrameSpec))


def dataset_spec(name: str) -> DatasetSpec:
    """The registry entry ``name``; an unknown one lists the valid ones."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid: {', '.join(DATASETS)}")
    return DATASETS[name]


def build_dataset(name: str, split: str = "train", root: str | Path | None = None, *, cache: bool = True,
                  download: bool = False, augment: bool = True, **frame_options) -> torch.utils.data.Dataset:
    """A split of a registered data set.

    Args:
        name: a registry name (see ``DATASETS``).
        split: ``train`` or ``test``.
        root: folder holding the data set (default :func:`default_root`).
        cache: event frames are cached under ``root/frame_cache/`` in a folder named after every
            frame parameter.
        download: let torchvision/Tonic download a missing data set (never by default).
        augment: training augmentation of static images (crop, flip).
        **frame_options: for event data sets, the fields of :class:`FrameSpec` (``time_steps`` is
            required); an error for static data.
    """
    spec = dataset_spec(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    unknown = sorted(set(frame_options) - set(FRAME_OPTIONS))
    if unknown:
        raise TypeError(f"build_dataset got unknown option(s) {unknown}; frame options: {', '.join(FRAME_OPTIONS)}")
    given = sorted(k for k, v in frame_options.items() if v is not None)
    root = Path(root) if root is not None else default_root()
    frames = None
    if spec.input_kind == "static":
        if given:
            raise ValueError(f"{given} are frame options of event data sets; {name} holds static inputs")
    else:
        if frame_options.get("time_steps") is None:
            raise ValueError(f"{name} is an event data set: pass time_steps (frames per sample, >= 1)")
        frames = FrameSpec(**{k: v for k, v in frame_options.items() if v is not None})
    return spec.build(DataRequest(root, split, augment, download, frames, root / "frame_cache" if cache else None))


def check_present(name: str, split: str, root: str | Path | None = None) -> None:
    """Raise :class:`DatasetNotFoundError` naming what is missing if ``split`` of ``name`` is not under
    ``root``; only looks for the files (a dry run's check), reads nothing."""
    dataset_spec(name).check_present(Path(root) if root is not None else default_root(), split)
