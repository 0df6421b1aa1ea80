"""Event-camera (and spike-train) data sets through Tonic's own dataset classes.

Each sample becomes ``(frames float32 [T, P, H, W], label int)`` (SHD: ``[T, 700]``). Before a
Tonic class is constructed the expected files are checked, so a missing data set is a clear
error and never a download, unless ``download=True`` is passed.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import DataError, DatasetNotFoundError
from ..files import atomic_path
from .digits import check_digits_file
from .digits_dvs import CONVERTER_VERSION, SENSOR_SIZE, DigitsDVS
from .frames import FrameSpec, cache_directory, frames_to_tensor
from .registry import DataRequest, register_dataset


@dataclass(frozen=True)
class EventSource:
    """What one event data set needs, and how it differs from the common path.

    Attributes:
        name: registry name.
        tonic_class: attribute of ``tonic.datasets`` (also the folder under the data root).
        sensor_size: ``(W, H, P)`` frames are made for.
        num_classes: label count.
        layout: ``{split: [(relative path, what it is, minimum number of files or None)]}``
            under ``root/<tonic_class>/``; each entry is checked before construction.
        source: where the data set is officially obtained.
        description, train_size: for the registry (``snn-stp list``, dry runs).
        has_split: whether the reader takes ``train=``; otherwise the split is ours (TRAIN_FRACTION).
        reader: the dataset class, when it is not ``tonic.datasets.<tonic_class>``.
        before_read: ``before_read(root, split, download)``, run before the reader is built (a check
            of what the reader would misread, an optional import).
        clip_to_sensor: drop events outside ``sensor_size`` (recordings differ in size).
        read_labels: ``read_labels(reader) -> [label]`` when the reader has no ``targets``.
        flat_frames: frames ``[T, 1, N]`` become ``[T, N]`` (spike trains of N input channels).
        cache_key: extra entries of the frame cache's name (a converter version).
    """

    name: str
    tonic_class: str
    sensor_size: tuple[int, int, int]
    num_classes: int
    layout: dict[str, list[tuple[str, str, int | None]]]
    source: str
    description: str
    train_size: int
    has_split: bool = True
    reader: type | None = None
    before_read: Callable[[Path, str, bool], None] | None = None
    clip_to_sensor: bool = False
    read_labels: Callable[[Any], list[int]] | None = None
    flat_frames: bool = False
    cache_key: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        """One frame: ``(P, H, W)``, or ``(W * H * P,)`` input channels with ``flat_frames``."""
        w, h, p = self.sensor_size
        return (w * h * p,) if self.flat_frames else (p, h, w)

    def check_present(self, root: Path, split: str) -> None:
        """Raise :class:`DatasetNotFoundError` listing every missing file or folder of ``split``."""
        base = root / self.tonic_class
        missing = []
        for relative, what, minimum in self.layout[split]:
            path = base / relative
            if minimum is None:
                if not path.exists():
                    missing.append(f"{path} ({what})")
            else:
                found = sum(1 for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0
                if found < minimum:
                    missing.append(f"{path}/ with at least {minimum} files ({what}; found {found})")
        if missing:
            raise DatasetNotFoundError(
                f"{self.name} ({split}) not found under {root}. Expected:\n  " + "\n  ".join(missing)
                + f"\nObtain it from {self.source} and extract it there, or pass download=True to let Tonic "
                  "fetch it.")


def register_event_source(source: EventSource, check_present: Callable[[Path, str], None] | None = None,
                          bundled: bool = False) -> EventSource:
    """Register ``source`` as a data set of input kind ``events`` (read by :class:`EventFrames`)."""
    def build(request: DataRequest) -> EventFrames:
        return EventFrames(source, request.root, request.split, request.frames, cache_root=request.cache_root,
                           download=request.download)

    register_dataset(source.name, "events", source.num_classes, source.shape, source.description, source.train_size,
                     check_present=check_present or source.check_present, bundled=bundled)(build)
    return source


def _labels_from_hdf5(reader) -> list[int]:
    import h5py

    with h5py.File(Path(reader.location_on_system) / reader.data_filename, "r") as f:
        return [int(v) for v in f["labels"][()]]


def _check_nmnist(root: Path, split: str, download: bool) -> None:
    if not download:
        check_digit_folders(root / "NMNIST" / ("Train" if split == "train" else "Test"))


def _require_aedat(root: Path, split: str, download: bool) -> None:
    try:
        import aedat  # noqa: F401
    except ImportError as error:
        raise DataError(f"CIFAR10-DVS files are AEDAT4 and Tonic reads them with the 'aedat' package, which failed "
                        f"to import ({error}); pip install aedat (a declared dependency of snn-stp)") from error


def _archive(name: str) -> tuple[str, str, None]:
    return (name, "the archive (may be empty once extracted)", None)


DVS_GESTURE = register_event_source(EventSource(
    "dvs_gesture", "DVSGesture", (128, 128, 2), 11,
    {"train": [_archive("ibmGestureTrain.tar.gz"), ("ibmGestureTrain", "the extracted user*_*/<label>.npy files", 100)],
     "test": [_archive("ibmGestureTest.tar.gz"), ("ibmGestureTest", "the extracted user*_*/<label>.npy files", 100)]},
    "https://research.ibm.com/interactive/dvsgesture/ (Tonic's preprocessed .npy version: "
    "tonic.datasets.DVSGesture(..., download) )", "DVS128 Gesture (Tonic), 1,077 / 264", 1077))
CIFAR10_DVS = register_event_source(EventSource(
    "cifar10_dvs", "CIFAR10DVS", (128, 128, 2), 10,
    {split: [_archive("CIFAR10DVS.zip"), (".", "the extracted <class>/<n>.aedat4 files", 1000)]
     for split in ("train", "test")},
    "https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671 (needs the 'aedat' package to read)",
    "CIFAR10-DVS (Tonic), first 900 per class train", 9000, has_split=False, before_read=_require_aedat))
NMNIST = register_event_source(EventSource(
    "nmnist", "NMNIST", (34, 34, 2), 10,
    {"train": [_archive("train.zip"), ("Train", "the extracted <digit>/<n>.bin files", 10000)],
     "test": [_archive("test.zip"), ("Test", "the extracted <digit>/<n>.bin files", 10000)]},
    "https://www.garrickorchard.com/datasets/n-mnist", "N-MNIST (Tonic), 60,000 / 10,000", 60000,
    before_read=_check_nmnist))
NCALTECH101 = register_event_source(EventSource(
    "ncaltech101", "NCALTECH101", (240, 180, 2), 101,
    {split: [_archive("N-Caltech101-archive.zip"), ("Caltech101", "the extracted <class>/<image>.bin files", 8709)]
     for split in ("train", "test")},
    "https://www.garrickorchard.com/datasets/n-caltech101", "N-Caltech101 (Tonic), first 90% per class train", 7838,
    has_split=False, clip_to_sensor=True))
SHD = register_event_source(EventSource(
    "shd", "SHD", (700, 1, 1), 20,
    {"train": [_archive("shd_train.h5.zip"), ("shd_train.h5", "the extracted HDF5 file", None)],
     "test": [_archive("shd_test.h5.zip"), ("shd_test.h5", "the extracted HDF5 file", None)]},
    "https://zenkelab.org/resources/spiking-heidelberg-datasets-shd/",
    "Spiking Heidelberg Digits (Tonic), 8,156 / 2,264", 8156, read_labels=_labels_from_hdf5, flat_frames=True))
# Generated from the bundled digits on first use (see digits_dvs.py); nothing to obtain but that file.
DIGITS_DVS = register_event_source(EventSource(
    "digits_dvs", "DigitsDVS", SENSOR_SIZE, 10, {"train": [], "test": []},
    "generated by snn_stp from the bundled digits", "bundled digits through a simulated event camera", 1438,
    reader=DigitsDVS, cache_key={"converter": CONVERTER_VERSION}),
    check_present=lambda root, split: check_digits_file(), bundled=True)

#: Frames kept in memory per split and process, after the first read from the disk cache: opening
#: one HDF5 file per sample costs about 1 ms, most of an epoch of a small data set (digits_dvs).
#: Tonic's MemoryCachedDataset has no bound; large sets (CIFAR10-DVS: ~2 MB a sample) fill this
#: budget and read the rest from disk.
MEMORY_CACHE_BYTES = 256 * 2**20

#: Fraction of each class used for training where the data set has no official split
#: (CIFAR10-DVS: the common first 900 of 1000 per class; N-Caltech101 likewise).
TRAIN_FRACTION = 0.9


class EventFrames(torch.utils.data.Dataset):
    """A split of a Tonic event data set as ``(frames float32 [T, P, H, W], label int)``.

    Sample order is deterministic: files sorted by path (Tonic's order can depend on the file
    system). Frames are cached on disk (Tonic's ``DiskCachedDataset``) in a directory named after
    every frame parameter, unless ``cache_root`` is None, and then in memory up to
    :data:`MEMORY_CACHE_BYTES` per process.
    """

    def __init__(self, source: EventSource, root: str | Path, split: str, spec: FrameSpec,
                 cache_root: str | Path | None = None, download: bool = False):
        import tonic

        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        root = Path(root).expanduser()
        if not download:
            source.check_present(root, split)
        if source.before_read is not None:
            source.before_read(root, split, download)
        self.source, self.split, self.spec = source, split, spec
        self.sensor_size = spec.sensor_after(source.sensor_size)
        transform = spec.transform(source.sensor_size)
        if source.clip_to_sensor:
            transform = tonic.transforms.Compose([ClipToSensor(source.sensor_size), transform])
        transform = RequireEvents(transform)
        cls = source.reader or getattr(tonic.datasets, source.tonic_class)
        kwargs = {"train": split == "train"} if source.has_split else {}
        self.dataset = cls(str(root), transform=transform, **kwargs)
        self.files = list(getattr(self.dataset, "data", []))
        self.indices, self.labels = self._order_and_split()
        self._check_labels()
        self.cache = None
        self.memory: dict[int, torch.Tensor] = {}
        self.memory_bytes = 0
        if cache_root is not None:
            self.cache = _disk_cache_class()(self.dataset, cache_path=str(
                cache_directory(Path(cache_root), source.name, split, spec, source.cache_key)))

    def _order_and_split(self) -> tuple[list[int], list[int]]:
        dataset = self.dataset
        if self.source.read_labels is not None:
            labels = self.source.read_labels(dataset)
            return list(range(len(labels))), labels
        targets = list(dataset.targets)
        order = sorted(range(len(self.files)), key=lambda i: self.files[i])
        if isinstance(targets[0] if targets else 0, str):  # N-Caltech101 labels are folder names
            index = {name: i for i, name in enumerate(sorted(set(targets)))}
            targets = [index[t] for t in targets]
        if self.source.has_split:
            return order, [int(targets[i]) for i in order]
        by_class: dict[int, list[int]] = {}
        for i in order:
            by_class.setdefault(int(targets[i]), []).append(i)
        chosen = []
        for label in sorted(by_class):
            members = by_class[label]
            cut = int(round(len(members) * TRAIN_FRACTION))
            chosen += members[:cut] if self.split == "train" else members[cut:]
        return chosen, [int(targets[i]) for i in chosen]

    def _check_labels(self) -> None:
        """Labels come from folder and file names: a stray file or folder gives one out of range."""
        bad = [(i, label) for i, label in zip(self.indices, self.labels) if not 0 <= label < self.source.num_classes]
        if bad:
            index, label = bad[0]
            where = self.files[index] if self.files else f"sample {index}"
            raise DataError(f"{where} has label {label}, outside 0..{self.source.num_classes - 1} of "
                            f"{self.source.name} ({len(bad)} such sample(s)); remove the stray files or folders")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        kept = self.memory.get(index)
        if kept is not None:
            return kept.clone(), self.labels[index]  # a copy: the caller may change it in place
        frames = self._read(index)
        if self.cache is not None and self.memory_bytes + frames.nbytes <= MEMORY_CACHE_BYTES:
            self.memory[index] = frames.clone()
            self.memory_bytes += frames.nbytes
        return frames, self.labels[index]

    def _read(self, index: int) -> torch.Tensor:
        source_index = self.indices[index]
        where = self.files[source_index] if self.files else f"sample {source_index}"
        try:
            frames, _ = (self.cache or self.dataset)[source_index]
        except EmptyRecording:
            raise DataError(f"{where} holds no events ({self.source.name}, {self.split}): the recording is empty or "
                            "was cut off; restore the file or remove it") from None
        except Exception as error:
            raise DataError(f"could not read {where} ({self.source.name}, {self.split}): "
                            f"{type(error).__name__}: {error}; the file is damaged, restore it") from error
        frames = frames_to_tensor(frames)
        if self.source.flat_frames:
            frames = frames.reshape(frames.shape[0], -1)  # [T, 1, N] -> [T, N]
        return frames


@functools.cache
def _disk_cache_class() -> type:
    import tonic  # on use: `snn-stp list` imports this module without Tonic

    class AtomicDiskCache(tonic.DiskCachedDataset):
        """Tonic's disk cache, each sample's file written under a temporary name and renamed into
        place: a run that reads the file while another fills it (a parallel sweep) sees it whole
        or not at all (Tonic writes the file in place, and a reader of a half-written one fails)."""

        def __getitem__(self, item):
            from tonic.cached_dataset import load_from_disk_cache, save_to_disk_cache

            path = Path(self.cache_path) / f"{item}_0.hdf5"
            try:
                return load_from_disk_cache(path)
            except OSError:  # not cached yet (FileNotFoundError) or written by an older version
                data, targets = self.dataset[item]
                with atomic_path(path) as temporary:
                    save_to_disk_cache(data, targets, file_path=temporary, compress=self.compress)
                return load_from_disk_cache(path)

    return AtomicDiskCache


class EmptyRecording(ValueError):
    """An event file that holds no events (raised inside the transform, named by the reader)."""


class RequireEvents:
    """Runs ``transform`` on a non-empty event array; an empty one is an error (Tonic's Compose
    would pass it through untransformed, and it would fail later as a structured array)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, events: np.ndarray) -> np.ndarray:
        if len(events) == 0:
            raise EmptyRecording("no events")
        return self.transform(events)


def check_digit_folders(split_folder: Path) -> None:
    """Tonic's N-MNIST reads the label from the last character of each folder holding .bin files;
    a stray folder would crash it or, worse, be read as a digit. Only ``0``..``9`` may hold them."""
    digit_folders = {split_folder / str(d) for d in range(10)}
    for folder in [split_folder, *sorted(p for p in split_folder.rglob("*") if p.is_dir())]:
        if folder not in digit_folders and any(f.name.endswith("bin") for f in folder.iterdir() if f.is_file()):
            raise DataError(f"{folder} holds .bin files but is not a digit folder: an N-MNIST split folder holds the "
                            "folders 0 to 9 with the .bin files and nothing else; move the stray folder out")


class ClipToSensor:
    """Drop events outside ``sensor_size`` (N-Caltech101 recordings differ in size)."""

    def __init__(self, sensor_size: tuple[int, int, int]):
        self.width, self.height = sensor_size[:2]

    def __call__(self, events: np.ndarray) -> np.ndarray:
        return events[(events["x"] < self.width) & (events["y"] < self.height)]

