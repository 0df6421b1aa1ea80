"""``digits_dvs``: the bundled 8x8 digits as event streams, from a simulated event camera.

The converter is deterministic (no random numbers) and documented here so the data can be
regenerated bit for bit:

1. Each 8x8 digit (0..16) is scaled to 0..1 and upsampled bilinearly to 24x24.
2. It moves over a 34x34 sensor (the N-MNIST sensor size) along N-MNIST's three saccades: a
   triangle (0, 0) -> (3.5, 7) -> (7, 0) -> (0, 0) pixels, 100 ms per leg, starting at offset
   (1, 1); the image is rendered every millisecond with bilinear sub-pixel shifts (300 frames).
3. Each pixel keeps a reference log intensity ``log(I + 0.25)``, set by the first frame. When the
   current log intensity differs from it by ``k`` whole contrast steps (``C = 0.4``), the pixel
   emits ``k`` events at that millisecond, ON (polarity 1) for brighter and OFF (0) for darker,
   and its reference moves by ``k C``: the idealized DVS pixel. About 3,000 events per digit
   (N-MNIST has about 4,000).

Events are written in the N-MNIST binary format (5 bytes per event: x, y, polarity bit and a
23-bit microsecond timestamp), one file per sample under ``root/DigitsDVS/{train,test}/<label>/``,
with the digits' fixed train/test split, and read back by Tonic's own ``read_mnist_file``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import SnnStpWarning
from ..files import exclusive_lock
from .digits import NUM_SAMPLES, load_digits_arrays

CONVERTER_VERSION = 1
SENSOR_SIZE = (34, 34, 2)
IMAGE_SIZE = 24
START = (1.0, 1.0)
SACCADE = [(0.0, 0.0), (3.5, 7.0), (7.0, 0.0), (0.0, 0.0)]
LEG_MS = 100
CONTRAST = 0.4
LOG_EPS = 0.25
DTYPE = np.dtype([("x", int), ("y", int), ("t", int), ("p", int)])  # Tonic's N-MNIST dtype


def sensor_path(step_ms: int) -> tuple[float, float]:
    """Sensor offset (dx, dy) in pixels at millisecond ``step_ms`` (0 .. 3 * LEG_MS)."""
    leg, within = divmod(step_ms, LEG_MS)
    if leg >= len(SACCADE) - 1:
        return SACCADE[-1]
    (x0, y0), (x1, y1) = SACCADE[leg], SACCADE[leg + 1]
    f = within / LEG_MS
    return x0 + (x1 - x0) * f, y0 + (y1 - y0) * f


def upsample(images: np.ndarray) -> np.ndarray:
    """``[N, 8, 8]`` in 0..16 -> ``[N, 24, 24]`` in 0..1 (bilinear, align_corners=False)."""
    x = torch.from_numpy(images.astype(np.float32) / 16.0)[:, None]
    return torch.nn.functional.interpolate(x, size=IMAGE_SIZE, mode="bilinear", align_corners=False)[:, 0].numpy()


def render(images: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``[N, 24, 24]`` images placed at ``START + (dx, dy)`` on a 34x34 black sensor, bilinearly."""
    n = images.shape[0]
    width, height = SENSOR_SIZE[:2]
    canvas = np.zeros((n, height + 1, width + 1), dtype=np.float64)
    x, y = START[0] + dx, START[1] + dy
    ix, iy = int(np.floor(x)), int(np.floor(y))
    fx, fy = x - ix, y - iy
    for oy, wy in ((0, 1 - fy), (1, fy)):
        for ox, wx in ((0, 1 - fx), (1, fx)):
            if wx * wy:
                canvas[:, iy + oy:iy + oy + IMAGE_SIZE, ix + ox:ix + ox + IMAGE_SIZE] += wx * wy * images
    return canvas[:, :height, :width]


def convert(images: np.ndarray) -> list[np.ndarray]:
    """Event streams (structured arrays x, y, t [us], p) for ``[N, 8, 8]`` digit images."""
    frames = upsample(images).astype(np.float64)
    reference = np.log(render(frames, 0.0, 0.0) + LOG_EPS)
    per_sample: list[list[np.ndarray]] = [[] for _ in range(len(images))]
    for step in range(1, len(SACCADE[1:]) * LEG_MS + 1):
        level = np.log(render(frames, *sensor_path(step)) + LOG_EPS)
        steps = np.trunc((level - reference) / CONTRAST)
        reference += steps * CONTRAST
        sample, y, x = np.nonzero(steps)
        if not len(sample):
            continue
        counts = np.abs(steps[sample, y, x]).astype(np.int64)
        polarity = (steps[sample, y, x] > 0).astype(np.int64)
        rows = np.repeat(np.stack([sample, x, y, polarity], axis=1), counts, axis=0)
        bounds = np.searchsorted(rows[:, 0], np.arange(len(images) + 1))
        for s in np.unique(rows[:, 0]):
            chunk = rows[bounds[s]:bounds[s + 1]]
            events = np.zeros(len(chunk), dtype=DTYPE)
            events["x"], events["y"], events["p"] = chunk[:, 1], chunk[:, 2], chunk[:, 3]
            events["t"] = step * 1000
            per_sample[s].append(events)
    return [np.concatenate(chunks) if chunks else np.zeros(0, dtype=DTYPE) for chunks in per_sample]


def encode_nmnist(events: np.ndarray) -> bytes:
    """Events in the N-MNIST ``.bin`` format (``t`` < 2^23 us, ``y`` != 240)."""
    t = events["t"].astype(np.int64)
    if len(t) and (t.max() >= 2 ** 23 or events["y"].max() >= 240 or events["x"].max() > 255):
        raise ValueError("events do not fit the N-MNIST format (t < 2^23 us, x < 256, y < 240)")
    raw = np.empty((len(events), 5), dtype=np.uint8)
    raw[:, 0] = events["x"]
    raw[:, 1] = events["y"]
    raw[:, 2] = (events["p"].astype(np.int64) << 7) | ((t >> 16) & 0x7F)
    raw[:, 3] = (t >> 8) & 0xFF
    raw[:, 4] = t & 0xFF
    return raw.tobytes()


def digits_dvs_folder(root: str | Path) -> Path:
    return Path(root) / "DigitsDVS"


def ensure_digits_dvs(root: str | Path) -> Path:
    """Generate ``root/DigitsDVS`` once (atomically); return it.

    The manifest lists every file with its size and sha256. A folder whose files no longer match
    it (a file deleted, truncated or edited) is generated again, with a warning naming the files;
    the generation is deterministic, so the data are the same bytes as before. Processes that
    start at once (a parallel sweep) take turns: the first generates, the others find it done.
    """
    folder = digits_dvs_folder(root)
    with exclusive_lock(folder.parent / ".DigitsDVS.lock"):
        return _check_or_generate(folder)


def _check_or_generate(folder: Path) -> Path:
    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            recorded = json.loads(manifest.read_text())
        except ValueError:
            recorded = {}
        if recorded.get("version") == CONVERTER_VERSION and "files" in recorded:
            damaged = [name for name, (size, digest) in recorded["files"].items()
                       if not _file_matches(folder / name, size, digest)]
            if not damaged:
                return folder
            warnings.warn(f"{folder}: {len(damaged)} generated file(s) missing or damaged ({', '.join(damaged[:3])}"
                          f"{', ...' if len(damaged) > 3 else ''}); generating the data set again", SnnStpWarning, stacklevel=3)
    images, labels = load_digits_arrays()
    streams = convert(images)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".DigitsDVS-", dir=folder.parent))
    digest = hashlib.sha256()
    files = {}
    for index, (events, label) in enumerate(zip(streams, labels)):
        split = "test" if index % 5 == 4 else "train"
        name = f"{split}/{int(label)}/{index:04d}.bin"
        path = staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = encode_nmnist(events)
        path.write_bytes(data)
        digest.update(data)
        files[name] = [len(data), hashlib.sha256(data).hexdigest()]
    (staging / "manifest.json").write_text(json.dumps(
        {"version": CONVERTER_VERSION, "samples": NUM_SAMPLES, "events": int(sum(len(e) for e in streams)),
         "sha256": digest.hexdigest(), "files": files}, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)
    return folder


def _file_matches(path: Path, size: int, digest: str) -> bool:
    try:
        return path.stat().st_size == size and hashlib.sha256(path.read_bytes()).hexdigest() == digest
    except OSError:
        return False


class DigitsDVS:
    """Tonic-style data set over the generated files: ``(transform(events), label)``.

    Same interface as ``tonic.datasets`` classes (``data``, ``targets``, ``sensor_size``,
    ``dtype``), so the event pipeline (frames, cache, ordering) treats it like them.
    """

    sensor_size = SENSOR_SIZE
    dtype = DTYPE
    ordering = DTYPE.names

    def __init__(self, save_to: str, train: bool = True, transform=None):
        import tonic.io

        self._read = tonic.io.read_mnist_file
        folder = ensure_digits_dvs(save_to) / ("train" if train else "test")
        self.data = sorted(str(p) for p in folder.glob("*/*.bin"))
        self.targets = [int(Path(p).parent.name) for p in self.data]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        events = self._read(self.data[index], dtype=self.dtype)
        if self.transform is not None:
            events = self.transform(events)
        return events, self.targets[index]
