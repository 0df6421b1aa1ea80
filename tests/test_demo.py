"""The bundled digits and the end-to-end demo (the README's main job until the engine exists)."""

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from snn_stp import cli
from snn_stp.data import digits_split, load_digits_arrays
from snn_stp.demo import run_demo


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
    with pytest.raises(ValueError, match="corrupt or modified"):
        load_digits_arrays(bad)


def test_demo_trains_and_prunes():
    logged = []
    result = run_demo(epochs=6, log=logged.append)
    assert result.test_accuracy > 0.9
    assert result.weight_sparsity > 0.5
    assert result.threshold == pytest.approx(0.2, rel=1e-9)
    lambdas = [r["l1_coefficient"] for r in result.history]
    assert max(lambdas) == pytest.approx(min(lambdas), rel=1e-9)  # LATS: one objective all along
    assert [r["epoch"] for r in result.history] == list(range(1, 7))
    assert logged[-4].startswith("final: test accuracy")


def test_dense_demo_has_no_zeros():
    result = run_demo(scheduler="dense", epochs=1, log=lambda m: None)
    assert result.weight_sparsity == 0.0 and result.threshold == 0.0


def test_cli_demo_prints_the_final_line(capsys):
    assert cli.main(["demo", "--epochs", "2", "--quiet", "--ann"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("final: test accuracy")


def test_cli_rejects_unknown_scheduler():
    proc = subprocess.run([sys.executable, "-m", "snn_stp", "demo", "--scheduler", "foo"], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert "invalid choice: 'foo'" in proc.stderr and "'lats'" in proc.stderr


def test_cli_list_shows_models_and_schedulers(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "stds_cifarnet    SNN + ANN twin" in out and "resnet50         ANN" in out
    assert "digits_dvs       events  [T, 2, 34, 34]" in out and "cifar10          static" in out
    for name in ("lats", "slats", "pgh", "gmp", "str", "gradr"):
        assert f"\n  {name:<16} " in out
