"""The bundled digits and the command line."""

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from snn_stp import cli
from snn_stp.data import DataError, digits_split, load_digits_arrays

from conftest import snn_stp


def test_digits_contents_and_split():
    images, labels = load_digits_arrays()
    assert images.shape == (1797, 8, 8) and images.dtype == np.float32
    assert images.min() == 0 and images.max() == 16
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert int(images.sum()) == 561718
    assert hashlib.sha256(images.astype(np.uint8).tobytes()).hexdigest() == (
        "8f26b2bd9d135c256808f68f14fdabddde6d9c7f869ae419704b051f0f14b3b3")
    x_train, y_train = digits_split(train=True)
    x_test, y_test = digits_split(train=False)
    assert x_train.shape == (1438, 64) and x_test.shape == (359, 64)
    assert float(x_train.max()) == 1.0
    assert torch.equal(x_test[0], torch.from_numpy(images[4].reshape(64) / 16))
    assert int(y_test[0]) == int(labels[4])


def test_missing_or_corrupt_digits_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected .*digits.csv.gz"):
        load_digits_arrays(tmp_path / "digits.csv.gz")
    bad = tmp_path / "digits.csv.gz"
    bad.write_bytes(b"not the data")
    with pytest.raises(DataError, match="corrupt or modified"):
        load_digits_arrays(bad)


def test_cli_rejects_unknown_commands_and_bad_settings():
    proc = snn_stp("fly")
    assert proc.returncode == 2 and "invalid choice: 'fly'" in proc.stderr
    proc = snn_stp("train", "--set", "pruning.scheduler=foo")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("snn-stp train: pruning.scheduler 'foo' is unknown; valid:")
    assert "Traceback" not in proc.stderr


def test_cli_list_shows_models_and_schedulers(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "stds_cifarnet    SNN + ANN twin" in out and "resnet50         ANN" in out
    assert "digits_dvs       events  [T, 2, 34, 34]" in out and "cifar10          static" in out
    for name in ("lats", "slats", "pgh", "gmp", "str", "gradr"):
        assert f"\n  {name:<16} " in out
    assert "imagenet_resnet50_slats.yaml" in out and "ANN ResNet-50 on ImageNet pruned with S-LATS" in out


HEAVY = ("torch", "tonic", "matplotlib", "spikingjelly", "torchvision")


def _modules_loaded_by(*argv: str) -> set[str]:
    """The heavy top-level packages a fresh interpreter has imported after ``snn-stp ARGV``."""
    code = ("import sys, contextlib, io\nfrom snn_stp import cli\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    try:\n        cli.main({list(argv)!r})\n    except SystemExit:\n        pass\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(eval(proc.stdout.strip().splitlines()[-1]))


def test_help_imports_no_heavy_package():
    assert _modules_loaded_by("--help") == set()
    assert _modules_loaded_by("train", "--help") == set()


@pytest.mark.slow  # a child interpreter that imports torch and the registries
def test_list_imports_no_plotting_or_event_reader():
    loaded = _modules_loaded_by("list")
    assert "torch" in loaded and not loaded & {"tonic", "matplotlib"}
