"""Event loader throughput: first epoch (read + frame + write cache) vs cached epochs.

For ``digits_dvs`` (generated from the bundled digits) and a DVSGesture-format folder written
here with realistic sizes (Tonic's .npy layout, ``--events`` events per recording), reads every
sample of one split through the registry's loader: once with an empty cache, then with a new
data set object over the filled disk cache (Tonic's ``DiskCachedDataset``: one HDF5 file per
sample), then a second epoch of that object (frames kept in memory, up to
``events.MEMORY_CACHE_BYTES``). Prints samples per second and the speed-up over the first epoch.

    python experiments/bench_event_loader.py [--time-steps 16] [--events 200000] [--workers 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from snn_stp.data import build_dataset, make_loader
from snn_stp.data.digits_dvs import ensure_digits_dvs


def write_gesture_folder(root: Path, users: int, events: int, seed: int = 0) -> None:
    """11 gestures x ``users`` recordings of ``events`` events (x, y, p, t[ms]) in Tonic's layout."""
    rng = np.random.default_rng(seed)
    base = root / "DVSGesture"
    for user in range(1, users + 1):
        for label in range(11):
            path = base / "ibmGestureTrain" / f"user{user:02d}_fluorescent" / f"{label}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            t = np.sort(rng.integers(0, 6000, events))  # a 6 s recording
            arr = np.stack([rng.integers(0, 128, events), rng.integers(0, 128, events), rng.integers(0, 2, events), t], 1)
            np.save(path, arr.astype(np.int64))
    (base / "ibmGestureTrain.tar.gz").write_bytes(b"")


def epoch(loader) -> tuple[float, int]:
    start, samples = time.perf_counter(), 0
    for inputs, labels in loader:
        samples += len(labels)
    return time.perf_counter() - start, samples


def measure(name: str, root: Path, split: str, args) -> None:
    def loader():
        dataset = build_dataset(name, split, root=root, time_steps=args.time_steps, cache=True)
        return make_loader(dataset, name, batch_size=16, over_time=True, num_workers=args.workers,
                           persistent_workers=args.workers > 0)

    first, n = epoch(loader())
    again = loader()
    disk, _ = epoch(again)
    memory, _ = epoch(again)
    print(f"{name:<12} {n:5d} samples   first epoch {n / first:8.1f} samples/s   disk-cached {n / disk:8.1f} samples/s "
          f"({first / disk:5.2f}x)   in memory {n / memory:8.1f} samples/s ({first / memory:6.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-steps", type=int, default=16)
    parser.add_argument("--events", type=int, default=200_000, help="events per DVSGesture-format recording")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    print(f"T={args.time_steps}, batch 16, {args.workers} loader workers; frames cached with Tonic's DiskCachedDataset")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ensure_digits_dvs(root)
        measure("digits_dvs", root, "train", args)
        write_gesture_folder(root, args.users, args.events)
        measure("dvs_gesture", root, "train", args)


if __name__ == "__main__":
    main()
