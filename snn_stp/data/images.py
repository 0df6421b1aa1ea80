"""Static image data sets through torchvision: CIFAR-10/100 and ImageNet (ImageFolder)."""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import torch

from ..errors import DataError, DatasetNotFoundError
from .registry import DataRequest, register_dataset

#: Per-channel mean and std of the CIFAR training images (the normalization of the STDS recipe).
CIFAR_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def cifar_transform(name: str, train: bool, augment: bool = True):
    """Random crop 32 (padding 4) + horizontal flip for training, then the CIFAR normalization."""
    from torchvision import transforms as T

    steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train and augment else []
    return T.Compose(steps + [T.ToTensor(), T.Normalize(CIFAR_MEAN[name], CIFAR_STD[name])])


def imagenet_transform(train: bool, augment: bool = True):
    """RandomResizedCrop 224 + flip for training; resize 256 + center crop 224 for evaluation."""
    from torchvision import transforms as T

    steps = ([T.RandomResizedCrop(224), T.RandomHorizontalFlip()] if train and augment
             else [T.Resize(256), T.CenterCrop(224)])
    return T.Compose(steps + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class ForbiddenPickle(pickle.UnpicklingError):
    """A pickle that names a callable a CIFAR batch never holds (a hostile or foreign file)."""


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles what CIFAR's python batches hold (dicts, lists, strings, numbers and NumPy arrays)
    and nothing else: any other global, such as ``os.system`` in a crafted file, is refused before
    it is called. The batches were pickled by Python 2 (NumPy 1 names); a file rewritten by Python 3
    uses ``_codecs.encode`` for bytes, and protocol 5 NumPy's ``_frombuffer``."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise ForbiddenPickle(f"{module}.{name}")
        return super().find_class(module, name)


def read_cifar_pickle(path: str | Path):
    """One CIFAR python batch (or meta) file, unpickled with :class:`_CifarUnpickler`."""
    with open(path, "rb") as f:
        return _CifarUnpickler(f, encoding="latin1").load()


class _PresenceCheckedCIFAR:
    """torchvision's CIFAR readers, checking that the files exist instead of hashing them, and
    unpickling them without running code.

    torchvision compares every batch file with a fixed md5 on each construction and reports any
    problem as "Dataset not found or corrupted". Here a missing file is named with where to get
    it, and a damaged one fails when unpickled, naming the file. ``verify_md5=True`` restores
    torchvision's checksum test. torchvision reads the batches with ``pickle.load``, which runs
    whatever a crafted file names; here they go through :func:`read_cifar_pickle` (the same
    arrays, in torchvision's ``data``/``targets`` layout).
    """

    def __init__(self, root: str, train: bool = True, transform=None, download: bool = False,
                 verify_md5: bool = False):
        import numpy as np
        from torchvision.datasets import VisionDataset

        self.verify_md5 = verify_md5
        if not download:
            self._raise_if_missing(Path(root))
        VisionDataset.__init__(self, root, transform=transform)
        self.train = train
        if download:
            self.download()
        if not self._check_integrity():
            raise DataError(f"{type(self).__name__} files under {root} do not match their published md5 sums; "
                            "download them again")
        data, self.targets = [], []
        for name, _ in self.train_list if train else self.test_list:
            entry = self._read(Path(root) / self.base_folder / name)
            if not isinstance(entry, dict) or "data" not in entry or not ("labels" in entry or "fine_labels" in entry):
                raise DataError(f"could not read {Path(root) / self.base_folder / name} ({type(self).__name__}): it "
                                "holds no 'data' and 'labels' (not a CIFAR python batch; download it again)")
            data.append(entry["data"])
            self.targets.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
        try:
            self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # HWC, as torchvision
        except ValueError as error:
            raise DataError(f"the {type(self).__name__} batches under {root} do not hold 32x32 RGB images ({error}); "
                            "download them again") from None
        self._load_meta()

    def _read(self, path: Path):
        try:
            return read_cifar_pickle(path)
        except ForbiddenPickle as error:
            raise DataError(f"{path} was refused: unpickling it would call {error}, which a CIFAR batch never "
                            "holds (a crafted or foreign file); download the data set again") from None
        except (EOFError, OSError, ValueError, KeyError, IndexError, pickle.UnpicklingError) as error:
            raise DataError(f"could not read {path} ({type(self).__name__}): {type(error).__name__}: {error} (the "
                            "file is truncated or not a CIFAR python pickle; download it again)") from None

    @classmethod
    def _raise_if_missing(cls, root: Path) -> None:
        base = root / cls.base_folder
        names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        missing = [str(base / name) for name in names if not (base / name).is_file()]
        if missing:
            raise DatasetNotFoundError(
                f"{cls.__name__} not found under {root}: missing {', '.join(missing)}. Download the python "
                f"version ({cls.filename}) from https://www.cs.toronto.edu/~kriz/cifar.html and extract it there "
                f"(it creates {cls.base_folder}/), or pass download=True")

    def _check_integrity(self) -> bool:
        if self.verify_md5:
            from torchvision.datasets.utils import check_integrity
            meta = Path(self.root) / self.base_folder / self.meta["filename"]
            return super()._check_integrity() and check_integrity(str(meta), self.meta["md5"])
        base = Path(self.root) / self.base_folder
        return all((base / name).is_file() for name, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        # torchvision's reading of the class names (its md5 test is in _check_integrity with verify_md5).
        path = Path(self.root) / self.base_folder / self.meta["filename"]
        meta = self._read(path)
        if not isinstance(meta, dict) or self.meta["key"] not in meta:
            raise DataError(f"{path} holds no {self.meta['key']!r} (not CIFAR's meta file; download it again)")
        self.classes = meta[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


@functools.cache
def cifar_reader(name: str) -> type:
    """``CIFAR10`` or ``CIFAR100``: torchvision's reader with the presence check. Made on first use:
    importing torchvision costs about a second, which every run of another data set would pay."""
    import torchvision

    base = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    return type(base.__name__, (_PresenceCheckedCIFAR, base), {"__module__": __name__})


def cifar(name: str, root: str | Path, split: str, augment: bool = True, download: bool = False,
          verify_md5: bool = False) -> torch.utils.data.Dataset:
    """CIFAR-10 or CIFAR-100 from ``root/cifar-10-batches-py`` (``cifar-100-python``): ``[3, 32, 32]``."""
    if name not in CIFAR_MEAN:
        raise ValueError(f"unknown CIFAR set {name!r}; valid: {', '.join(CIFAR_MEAN)}")
    cls = cifar_reader(name)
    train = split == "train"
    return cls(str(root), train=train, transform=cifar_transform(name, train, augment), download=download,
               verify_md5=verify_md5)


def check_imagenet_present(root: str | Path, split: str) -> Path:
    """The ImageFolder of ``split``, or :class:`DatasetNotFoundError` saying what is expected."""
    folder = Path(root) / ("train" if split == "train" else "val")
    if not folder.is_dir() or not any(p.is_dir() for p in folder.iterdir()):
        raise DatasetNotFoundError(
            f"imagenet ({split}) not found: expected {folder}/<class>/<image>.JPEG (one folder per class; the "
            "validation images sorted into class folders too). ImageNet is obtained from https://image-net.org "
            "(ILSVRC 2012) after registration; it is never downloaded")
    return folder


def imagenet(root: str | Path, split: str, augment: bool = True) -> torch.utils.data.Dataset:
    """ImageNet as ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG`` (torchvision ImageFolder)."""
    import torchvision

    folder = check_imagenet_present(root, split)
    return torchvision.datasets.ImageFolder(str(folder), transform=imagenet_transform(split == "train", augment))


@register_dataset("cifar10", "static", 10, (3, 32, 32), "CIFAR-10 (torchvision), crop+flip, normalized", 50000,
                  check_present=lambda root, split: cifar_reader("cifar10")._raise_if_missing(Path(root)))
def build_cifar10(request: DataRequest) -> torch.utils.data.Dataset:
    return cifar("cifar10", request.root, request.split, request.augment, request.download)


@register_dataset("cifar100", "static", 100, (3, 32, 32), "CIFAR-100 (torchvision), crop+flip, normalized", 50000,
                  check_present=lambda root, split: cifar_reader("cifar100")._raise_if_missing(Path(root)))
def build_cifar100(request: DataRequest) -> torch.utils.data.Dataset:
    return cifar("cifar100", request.root, request.split, request.augment, request.download)


@register_dataset("imagenet", "static", 1000, (3, 224, 224), "ImageNet ILSVRC 2012 as ImageFolder train/ and val/",
                  1281167, check_present=check_imagenet_present)
def build_imagenet(request: DataRequest) -> torch.utils.data.Dataset:
    return imagenet(request.root, request.split, request.augment)
