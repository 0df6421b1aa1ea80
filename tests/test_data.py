"""Every data set through its real class, from tiny files written in the real on-disk format."""

import os
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from snn_stp.data import DATASETS, DataError, DatasetNotFoundError, build_dataset, make_loader
from snn_stp.data import digits_dvs
from snn_stp.data.digits import load_digits_arrays
from snn_stp.data.frames import FrameSpec

from conftest import write_cifar


# -- writers of the real formats ----------------------------------------------------------------

def write_dvs_gesture(root, split="train", users=10, labels=11, events=50, seed=0):
    """Tonic's DVSGesture layout: <split folder>/userNN_<lighting>/<label>.npy, int64 (N, 4) x, y, p, t[ms]."""
    rng = np.random.default_rng(seed)
    folder = {"train": "ibmGestureTrain", "test": "ibmGestureTest"}[split]
    base = root / "DVSGesture"
    counts = {}
    for user in range(1, users + 1):
        for label in range(labels):
            path = base / folder / f"user{user:02d}_fluorescent" / f"{label}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            n = events + label
            arr = np.stack([rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n),
                            np.sort(rng.integers(0, 1000, n))], axis=1).astype(np.int64)
            np.save(path, arr)
            counts[str(path)] = n
    (base / f"{folder}.tar.gz").write_bytes(b"")
    return counts


def nmnist_bytes(x, y, p, t):
    raw = np.zeros((len(x), 5), dtype=np.uint8)
    raw[:, 0], raw[:, 1] = x, y
    raw[:, 2] = (np.asarray(p) << 7) | ((np.asarray(t) >> 16) & 0x7F)
    raw[:, 3], raw[:, 4] = (np.asarray(t) >> 8) & 0xFF, np.asarray(t) & 0xFF
    return raw.tobytes()


def write_bin_tree(base, folders, total, events=3, size=34):
    """``total`` N-MNIST-format .bin files spread over ``folders``; returns {path: n_events}.

    File ``i`` holds ``events + i % 3`` events placed by ``i % size``: the files with the same two
    residues are byte for byte the same, so each is a hard link to the first one written (creating
    10,000 inodes, not reading them, is what took seconds, and far longer on a disk that is still
    discarding the blocks of the previous session's trees). Replace a file (unlink it) to change
    it: writing into one changes its twins."""
    counts, first = {}, {}
    for folder in folders:
        (base / folder).mkdir(parents=True, exist_ok=True)
    for i in range(total):
        path = base / folders[i % len(folders)] / f"{i:05d}.bin"
        n = events + i % 3
        key = (i % 3, i % size)
        if key in first:
            try:
                os.link(first[key], path)
            except OSError:  # a file system without hard links
                path.write_bytes(first[key].read_bytes())
        else:
            x = (np.arange(n) * 7 + i) % size
            y = (np.arange(n) * 5 + i) % size
            path.write_bytes(nmnist_bytes(x, y, np.arange(n) % 2, np.arange(n) * 1000))
            first[key] = path
        counts[str(path)] = n
    return counts


def write_aedat4(path, t, x, y, p, width=128, height=128):
    """An uncompressed AEDAT 4 file with one event stream, as iniVation DV writes it: the magic line,
    a size-prefixed IOHeader flatbuffer ("IOHE") whose XML description declares stream 0 as
    events (EVTS) of the sensor size, then one packet: stream id, size, and a size-prefixed
    EventPacket flatbuffer ("EVTS") holding Event structs {t: int64, x: int16, y: int16, on: bool}."""
    import flatbuffers

    def finished(build, identifier):
        builder = flatbuffers.Builder(1024)
        builder.FinishSizePrefixed(build(builder), identifier)
        return bytes(builder.Output())

    description = ('<dv version="2.0"><node name="outInfo"><node name="0">'
                   '<attr key="typeIdentifier" type="string">EVTS</attr><node name="info">'
                   f'<attr key="sizeX" type="int">{width}</attr><attr key="sizeY" type="int">{height}</attr>'
                   '</node></node></node></dv>')

    def io_header(builder):
        text = builder.CreateString(description)
        builder.StartObject(3)  # compression (0: none), dataTablePosition, infoNode
        builder.PrependUOffsetTRelativeSlot(2, text, 0)
        return builder.EndObject()

    def event_packet(builder):
        builder.StartVector(16, len(t), 8)
        for i in reversed(range(len(t))):  # flatbuffers build back to front
            builder.Prep(8, 16)
            builder.Pad(3)
            builder.PrependBool(bool(p[i]))
            builder.PrependInt16(int(y[i]))
            builder.PrependInt16(int(x[i]))
            builder.PrependInt64(int(t[i]))
        elements = builder.EndVector()
        builder.StartObject(1)
        builder.PrependUOffsetTRelativeSlot(0, elements, 0)
        return builder.EndObject()

    payload = finished(event_packet, b"EVTS")
    path.write_bytes(b"#!AER-DAT4.0\r\n" + finished(io_header, b"IOHE") + (0).to_bytes(4, "little")
                     + len(payload).to_bytes(4, "little") + payload)


def write_shd(root, split="train", samples=6, seed=0):
    rng = np.random.default_rng(seed)
    base = root / "SHD"
    base.mkdir(parents=True, exist_ok=True)
    (base / f"shd_{split}.h5.zip").write_bytes(b"")
    counts = []
    with h5py.File(base / f"shd_{split}.h5", "w") as f:
        times = f.create_dataset("spikes/times", (samples,), dtype=h5py.vlen_dtype(np.float32))
        units = f.create_dataset("spikes/units", (samples,), dtype=h5py.vlen_dtype(np.uint16))
        for i in range(samples):
            n = 20 + i
            times[i] = np.sort(rng.uniform(0, 1.0, n)).astype(np.float32)
            units[i] = rng.integers(0, 700, n).astype(np.uint16)
            counts.append(n)
        f["labels"] = np.arange(samples, dtype=np.uint16) % 20
        f["extra/keys"] = np.array([f"word{i}".encode() for i in range(20)])
        f["extra/speaker"] = np.arange(samples, dtype=np.uint16)
    return counts


# -- bundled data ----------------------------------------------------------------------------------

def test_digits_through_the_registry():
    train, test = build_dataset("digits", "train"), build_dataset("digits", "test")
    assert (len(train), len(test)) == (1438, 359)
    x, y = train[0]
    assert x.shape == (64,) and x.dtype == torch.float32 and isinstance(y, int)
    inputs, labels = next(iter(make_loader(test, "digits", 32, over_time=True)))
    assert inputs.shape == (32, 64) and labels.dtype == torch.int64  # static: [B, ...] for SNN and ANN


def test_digits_dvs_converter_is_deterministic_and_real():
    images, _ = load_digits_arrays()
    first, second = digits_dvs.convert(images[:20]), digits_dvs.convert(images[:20])
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    counts = [len(e) for e in first]
    assert 1500 < np.mean(counts) < 6000
    events = first[0]
    assert events["x"].max() < 34 and events["y"].max() < 34 and events["t"].max() == 300_000
    assert set(np.unique(events["p"])) == {0, 1}
    # A blank image produces no event: events come from moving contrast only.
    assert len(digits_dvs.convert(np.zeros((1, 8, 8)))[0]) == 0


@pytest.fixture(scope="module")
def digits_dvs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits_dvs")
    digits_dvs.ensure_digits_dvs(root)
    return root


@pytest.mark.slow  # generates the whole digits_dvs set (about 15 s)
def test_digits_dvs_generation_frames_and_regeneration(digits_dvs_root, tmp_path):
    manifest = (digits_dvs_root / "DigitsDVS" / "manifest.json").read_text()
    ds = build_dataset("digits_dvs", "test", root=digits_dvs_root, time_steps=6, cache=False)
    assert len(ds) == 359
    frames, label = ds[0]
    assert frames.shape == (6, 2, 34, 34) and frames.dtype == torch.float32
    raw = ds.dataset._read(ds.files[ds.indices[0]], dtype=digits_dvs.DTYPE)
    assert float(frames.sum()) == len(raw)  # every event lands in exactly one frame
    path = ds.files[ds.indices[0]]
    index = int(path.rsplit("/", 1)[1][:-4])  # files are named by the digit's index
    images, labels = load_digits_arrays()
    assert index % 5 == 4 and label == int(labels[index])  # a test sample of the fixed split
    # Regenerating the sample gives the same bytes.
    assert digits_dvs.encode_nmnist(digits_dvs.convert(images[[index]])[0]) == open(path, "rb").read()
    assert '"samples": 1797' in manifest


@pytest.mark.slow  # generates the whole digits_dvs set (about 15 s)
def test_digits_dvs_denoise_and_downsample(digits_dvs_root):
    plain = build_dataset("digits_dvs", "test", root=digits_dvs_root, time_steps=4, cache=False)[1][0]
    denoised = build_dataset("digits_dvs", "test", root=digits_dvs_root, time_steps=4, denoise_us=500,
                             cache=False)[1][0]
    small = build_dataset("digits_dvs", "test", root=digits_dvs_root, time_steps=4, downsample=0.5, cache=False)[1][0]
    assert denoised.sum() <= plain.sum()
    assert small.shape == (4, 2, 17, 17) and small.sum() == plain.sum()


@pytest.mark.slow  # generates the whole digits_dvs set (about 15 s)
def test_event_batches_are_time_major_for_snns_and_summed_for_anns(digits_dvs_root):
    ds = build_dataset("digits_dvs", "train", root=digits_dvs_root, time_steps=5, cache=False)
    snn_x, snn_y = next(iter(make_loader(ds, "digits_dvs", 8, over_time=True)))
    ann_x, ann_y = next(iter(make_loader(ds, "digits_dvs", 8, over_time=False)))
    assert snn_x.shape == (5, 8, 2, 34, 34) and ann_x.shape == (8, 2, 34, 34)
    assert torch.equal(snn_x.sum(0), ann_x) and torch.equal(snn_y, ann_y)
    assert torch.equal(snn_x[:, 3], ds[3][0])


@pytest.mark.slow  # generates the whole digits_dvs set (about 15 s)
def test_frame_cache_repeats_and_is_keyed_by_every_parameter(digits_dvs_root, tmp_path):
    first = build_dataset("digits_dvs", "test", root=digits_dvs_root, time_steps=4)
    a = [first[i][0] for i in range(3)]
    again = build_dataset("digits_dvs", "test", root=digits_dvs_root, time_steps=4)
    assert all(torch.equal(x, again[i][0]) for i, x in enumerate(a))
    changed = build_dataset("digits_dvs", "test", root=digits_dvs_root, time_steps=4, denoise_us=300)
    changed[0]
    folders = sorted(p.name for p in (digits_dvs_root / "frame_cache" / "digits_dvs" / "test").iterdir())
    assert len(folders) == 2 and folders[0].startswith("T4-") and folders[1].startswith("T4_dn300-")
    assert len(list((digits_dvs_root / "frame_cache" / "digits_dvs" / "test" / folders[0]).iterdir())) == 3


# -- event data sets through Tonic --------------------------------------------------------------

def test_a_damaged_cache_file_is_written_again_whole(tmp_path):
    write_dvs_gesture(tmp_path)
    expected = build_dataset("dvs_gesture", "train", root=tmp_path, time_steps=4, cache=False)[3][0]
    ds = build_dataset("dvs_gesture", "train", root=tmp_path, time_steps=4)
    ds[3]
    folder = Path(ds.cache.cache_path)
    (cached,) = [p for p in folder.iterdir() if p.name == f"{ds.indices[3]}_0.hdf5"]
    cached.write_bytes(cached.read_bytes()[:100])  # a half-written file, as a killed writer leaves
    again = build_dataset("dvs_gesture", "train", root=tmp_path, time_steps=4)
    assert torch.equal(again[3][0], expected)
    assert sorted(p.name for p in folder.iterdir()) == [cached.name]  # replaced whole; no temporary left


@pytest.mark.slow  # two processes generate digits_dvs (about 15 s)
def test_processes_that_start_at_once_share_one_digits_dvs_generation(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from snn_stp.data.digits_dvs import ensure_digits_dvs, DigitsDVS; "
            "root = sys.argv[1]; ensure_digits_dvs(root); ds = DigitsDVS(root, train=True); "
            "print(sum(len(ds[i][0]) for i in range(len(ds))))")
    processes = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err for _, err in results]
    assert results[0][0] == results[1][0] and int(results[0][0]) > 0  # both read every event of the same files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".DigitsDVS-")]  # no staging folder left


def test_cached_frames_stay_in_memory_within_a_budget(tmp_path, monkeypatch):
    from snn_stp.data import events

    write_dvs_gesture(tmp_path)
    ds = build_dataset("dvs_gesture", "train", root=tmp_path, time_steps=4)  # cached on disk, then in memory
    frames = ds[5][0]
    assert set(ds.memory) == {5}
    frames.zero_()  # the caller's copy: the kept frames are not touched
    assert torch.equal(ds[5][0], ds._read(5)) and ds[5][0].sum() > 0
    monkeypatch.setattr(events, "MEMORY_CACHE_BYTES", 2 * frames.nbytes)
    ds = build_dataset("dvs_gesture", "train", root=tmp_path, time_steps=4)
    read = [ds[i][0] for i in range(4)]
    assert sorted(ds.memory) == [0, 1] and ds.memory_bytes == 2 * frames.nbytes
    assert all(torch.equal(x, ds[i][0]) for i, x in enumerate(read))
    plain = build_dataset("dvs_gesture", "train", root=tmp_path, time_steps=4, cache=False)
    plain[0]
    assert plain.memory == {}  # data.cache false: every read from the files



def test_dvs_gesture(tmp_path):
    counts = write_dvs_gesture(tmp_path)
    ds = build_dataset("dvs_gesture", "train", root=tmp_path, time_steps=4, cache=False)
    assert len(ds) == 110
    # Deterministic order: sorted paths, whatever order the file system lists them in.
    assert [ds.files[i] for i in ds.indices] == sorted(ds.files)
    frames, label = ds[5]
    assert frames.shape == (4, 2, 128, 128) and frames.dtype == torch.float32
    assert float(frames.sum()) == counts[ds.files[ds.indices[5]]]
    assert label == int(ds.files[ds.indices[5]].rsplit("/", 1)[1][:-4])
    assert sorted(set(ds.labels)) == list(range(11))


@pytest.fixture(scope="module")
def nmnist_root(tmp_path_factory):
    """N-MNIST's training split as extracted (NMNIST/Train/<digit>/<n>.bin, the 10,000 files its
    check asks for), written once for the tests that read it; returns the root and each file's
    event count. A test that damages a file puts it back."""
    root = tmp_path_factory.mktemp("nmnist")
    counts = write_bin_tree(root / "NMNIST" / "Train", [str(d) for d in range(10)], 10000)
    (root / "NMNIST" / "train.zip").write_bytes(b"")
    return root, counts


def test_nmnist(nmnist_root):
    root, counts = nmnist_root
    ds = build_dataset("nmnist", "train", root=root, time_steps=3, cache=False)
    assert len(ds) == 10000
    for i in (0, 1234, 9999):
        frames, label = ds[i]
        path = ds.files[ds.indices[i]]
        assert frames.shape == (3, 2, 34, 34) and float(frames.sum()) == counts[path]
        assert label == int(path.split("/")[-2])


def test_ncaltech101_split_and_labels(tmp_path):
    base = tmp_path / "NCALTECH101"
    classes = ["airplanes", "butterfly", "chair"]
    counts = write_bin_tree(base / "Caltech101", classes, 8709, size=200)
    (base / "N-Caltech101-archive.zip").write_bytes(b"")
    train = build_dataset("ncaltech101", "train", root=tmp_path, time_steps=2, cache=False)
    test = build_dataset("ncaltech101", "test", root=tmp_path, time_steps=2, cache=False)
    assert len(train) + len(test) == 8709
    assert len(test) == sum(round(n / 10) for n in (2903, 2903, 2903))
    assert not set(train.indices) & set(test.indices)
    assert sorted(set(train.labels)) == [0, 1, 2]  # sorted class folder names
    frames, label = train[0]
    assert frames.shape == (2, 2, 180, 240)
    assert float(frames.sum()) == counts[train.files[train.indices[0]]]
    assert classes[label] == train.files[train.indices[0]].split("/")[-2]


def test_shd(tmp_path):
    counts = write_shd(tmp_path, "test")
    ds = build_dataset("shd", "test", root=tmp_path, time_steps=5, cache=False)
    assert len(ds) == 6
    frames, label = ds[2]
    assert frames.shape == (5, 700) and float(frames.sum()) == counts[2] and label == 2
    x, _ = next(iter(make_loader(ds, "shd", 3, over_time=True)))
    assert x.shape == (5, 3, 700)


def test_cifar10_dvs_from_aedat4_files(tmp_path):
    """Tonic's CIFAR10DVS reads AEDAT 4 with the 'aedat' decoder; the files are written here in
    that format (see write_aedat4). The split is the first 90 % (900 of 1,000) of each class."""
    base = tmp_path / "CIFAR10DVS"
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    counts = {}
    for c in classes:
        for i in range(100):
            path = base / c / f"cifar10_{c}_{i}.aedat4"
            path.parent.mkdir(parents=True, exist_ok=True)
            n = 5 + i % 4
            write_aedat4(path, np.arange(n) * 1000 + i, (np.arange(n) * 13 + i) % 128, (np.arange(n) * 7) % 128,
                         np.arange(n) % 2)
            counts[str(path)] = n
    (base / "CIFAR10DVS.zip").write_bytes(b"")
    train = build_dataset("cifar10_dvs", "train", root=tmp_path, time_steps=4, cache=False)
    test = build_dataset("cifar10_dvs", "test", root=tmp_path, time_steps=4, cache=False)
    assert (len(train), len(test)) == (900, 100)
    assert [train.labels.count(k) for k in range(10)] == [90] * 10
    first_test = test.files[test.indices[0]]
    assert first_test.endswith("airplane/cifar10_airplane_90.aedat4")  # the last 10% of each class (sorted)
    for dataset, index in ((train, 0), (train, 455), (test, 99)):
        frames, label = dataset[index]
        path = dataset.files[dataset.indices[index]]
        assert frames.shape == (4, 2, 128, 128) and frames.dtype == torch.float32
        assert float(frames.sum()) == counts[path]
        assert classes[label] == path.split("/")[-2]
    broken = train.files[train.indices[1]]
    with open(broken, "r+b") as f:
        f.truncate(40)
    with pytest.raises(DataError, match=f"could not read {broken}"):
        train[1]


# -- static images ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_from_python_pickles(tmp_path, name):
    write_cifar(tmp_path, name)
    train = build_dataset(name, "train", root=tmp_path)
    test = build_dataset(name, "test", root=tmp_path, augment=False)
    assert len(train) == (20 if name == "cifar10" else 4) and len(test) == 4
    x, y = test[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < DATASETS[name].num_classes
    raw = test.data[0].astype(np.float32) / 255  # HWC
    from snn_stp.data.images import CIFAR_MEAN, CIFAR_STD
    expected = (torch.from_numpy(raw).permute(2, 0, 1) - torch.tensor(CIFAR_MEAN[name])[:, None, None]) / \
        torch.tensor(CIFAR_STD[name])[:, None, None]
    assert torch.allclose(x, expected, atol=1e-6)


@pytest.mark.parametrize("protocol", [2, 5])  # 2: as the published batches (Python 2), 5: NumPy's out-of-band form
def test_cifar_batches_are_unpickled_without_running_code(tmp_path, protocol):
    import os

    base = write_cifar(tmp_path, protocol=protocol)
    assert len(build_dataset("cifar10", "test", root=tmp_path, augment=False)) == 4

    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    with open(base / "test_batch", "wb") as fh:
        pickle.dump({"data": Payload(), "labels": [0]}, fh, protocol=protocol)
    with pytest.raises(DataError) as caught:
        build_dataset("cifar10", "test", root=tmp_path)
    assert str(caught.value) == (f"{base / 'test_batch'} was refused: unpickling it would call posix.system, which a "
                                 "CIFAR batch never holds (a crafted or foreign file); download the data set again")
    assert not marker.exists()


def test_cifar_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="missing .*data_batch_1.*cs.toronto.edu"):
        build_dataset("cifar10", "train", root=tmp_path)
    base = write_cifar(tmp_path)
    (base / "data_batch_3").write_bytes((base / "data_batch_3").read_bytes()[:100])
    with pytest.raises(DataError, match=r"could not read .*/data_batch_3 \(CIFAR10\).*truncated"):
        build_dataset("cifar10", "train", root=tmp_path)


def test_imagenet_image_folder(tmp_path):
    for split in ("train", "val"):
        for wnid in ("n01440764", "n01443537"):
            folder = tmp_path / split / wnid
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((300, 260, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.JPEG")
    train = build_dataset("imagenet", "train", root=tmp_path)
    val = build_dataset("imagenet", "test", root=tmp_path)
    assert len(train) == len(val) == 4
    assert train[0][0].shape == val[3][0].shape == (3, 224, 224)
    assert [y for _, y in val] == [0, 0, 1, 1]


# -- errors ---------------------------------------------------------------------------------------

def test_missing_event_data_set_lists_files_and_source_without_network(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        build_dataset("dvs_gesture", "train", root=tmp_path, time_steps=4)
    message = str(error.value)
    assert f"{tmp_path}/DVSGesture/ibmGestureTrain.tar.gz" in message
    assert "ibmGestureTrain/ with at least 100 files" in message
    assert "research.ibm.com" in message and "download=True" in message
    with pytest.raises(DatasetNotFoundError, match="zenkelab.org"):
        build_dataset("shd", "train", root=tmp_path, time_steps=4)


def test_truncated_event_file_names_the_file(tmp_path):
    write_dvs_gesture(tmp_path)
    ds = build_dataset("dvs_gesture", "train", root=tmp_path, time_steps=4, cache=False)
    victim = ds.files[ds.indices[7]]
    with open(victim, "r+b") as f:
        f.truncate(100)
    with pytest.raises(DataError, match=f"could not read {victim}"):
        ds[7]


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown data set 'mnist'; valid: digits, digits_dvs, cifar10"):
        build_dataset("mnist")
    with pytest.raises(ValueError, match="time_steps .frames per sample. must be an integer >= 1, got 0"):
        build_dataset("digits_dvs", time_steps=0)
    with pytest.raises(ValueError, match="pass time_steps"):
        build_dataset("digits_dvs")
    with pytest.raises(ValueError, match="at most one of time_window .* and event_count"):
        FrameSpec(4, time_window=1000, event_count=100)
    with pytest.raises(ValueError, match=r"\['time_steps'\] are frame options of event data sets"):
        build_dataset("digits", time_steps=4)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        build_dataset("digits", "val")


@pytest.mark.slow  # generates the whole digits_dvs set (about 15 s)
def test_time_window_frames_are_cropped_or_padded_to_T(digits_dvs_root):
    ds = build_dataset("digits_dvs", "test", root=digits_dvs_root, time_steps=4, time_window=50_000, cache=False)
    frames, _ = ds[0]
    assert frames.shape == (4, 2, 34, 34)  # 300 ms / 50 ms = 6 windows, cropped to 4
    long = build_dataset("digits_dvs", "test", root=digits_dvs_root, time_steps=10, time_window=50_000, cache=False)
    padded, _ = long[0]
    assert padded.shape[0] == 10 and padded[7:].sum() == 0
    assert torch.equal(padded[:4], frames)


def test_empty_recordings_name_the_file(tmp_path, nmnist_root):
    write_dvs_gesture(tmp_path)
    ds = build_dataset("dvs_gesture", "train", root=tmp_path, time_steps=4, cache=False)
    victim = ds.files[ds.indices[7]]
    np.save(victim, np.zeros((0, 4), dtype=np.int64))
    with pytest.raises(DataError, match=f"{victim} holds no events \\(dvs_gesture, train\\)"):
        ds[7]
    root, _ = nmnist_root
    base = root / "NMNIST"
    ds = build_dataset("nmnist", "train", root=root, time_steps=3, cache=False)
    victim = Path(ds.files[ds.indices[3]])
    original = victim.read_bytes()
    try:
        victim.unlink()  # a hard link to its twins (see write_bin_tree): replaced, not written into
        victim.touch()
        with pytest.raises(DataError, match=f"{victim} holds no events \\(nmnist, train\\)"):
            ds[3]
        # A stray folder would crash Tonic's reader (label = last character of the folder name) or be
        # read as a digit: refused, named.
        (base / "Train" / "extra").mkdir()
        (base / "Train" / "extra" / "copy.bin").write_bytes(b"")
        with pytest.raises(DataError, match=f"{base}/Train/extra holds .bin files but is not a digit folder"):
            build_dataset("nmnist", "train", root=root, time_steps=3, cache=False)
    finally:  # the shared tree as it was, for the other tests
        victim.unlink(missing_ok=True)
        victim.write_bytes(original)
        shutil.rmtree(base / "Train" / "extra", ignore_errors=True)


def test_labels_out_of_range_name_the_file(tmp_path):
    write_dvs_gesture(tmp_path)
    stray = tmp_path / "DVSGesture" / "ibmGestureTrain" / "user01_fluorescent" / "11.npy"
    np.save(stray, np.ones((5, 4), dtype=np.int64))
    with pytest.raises(DataError, match=f"{stray} has label 11, outside 0..10 of dvs_gesture \\(1 such sample"):
        build_dataset("dvs_gesture", "train", root=tmp_path, time_steps=4, cache=False)


@pytest.mark.slow  # generates the whole digits_dvs set (about 15 s)
def test_digits_dvs_regenerates_missing_or_damaged_files(digits_dvs_root):
    folder = digits_dvs_root / "DigitsDVS"
    deleted = sorted(folder.glob("train/*/*.bin"))[5]
    damaged = sorted(folder.glob("test/*/*.bin"))[3]
    original = damaged.read_bytes()
    deleted.unlink()
    damaged.write_bytes(original[:-5])
    with pytest.warns(UserWarning, match="2 generated file\\(s\\) missing or damaged .*generating the data set again"):
        train = build_dataset("digits_dvs", "train", root=digits_dvs_root, time_steps=4, cache=False)
    assert len(train) == 1438 and deleted.exists() and damaged.read_bytes() == original



# -- one read of the training split for both of its parts (train and validation) --------------------

def record_builds(monkeypatch, cls, split_of) -> list[str]:
    """The splits that data set class ``cls`` is constructed for from now on, one entry per build
    (``split_of(args, kwargs)``: the split its constructor was given)."""
    builds = []
    construct = cls.__init__

    def recorded(self, *args, **kwargs):
        builds.append(split_of(args, kwargs))
        construct(self, *args, **kwargs)
    monkeypatch.setattr(cls, "__init__", recorded)
    return builds


def test_one_cifar_build_serves_train_and_validation_with_the_same_samples(tmp_path, monkeypatch):
    """The training batches are unpickled once for both parts of the split; the samples are those
    make_dataset gives per split (the same holdout indices; validation with the evaluation
    transforms, training with its augmentation)."""
    from snn_stp.data import holdout
    from snn_stp.data.images import _PresenceCheckedCIFAR
    from snn_stp.train import load_config
    from snn_stp.train.builders import make_dataset, make_splits

    write_cifar(tmp_path, per_batch=8)  # 40 training images
    config = load_config(overrides=[f"data.root={tmp_path}", "data.name=cifar10", "data.validation_fraction=0.25",
                                    "data.validation_seed=3"])
    builds = record_builds(monkeypatch, _PresenceCheckedCIFAR, lambda args, kwargs: kwargs["train"])
    train, validation, test = make_splits(config, None)
    assert builds == [True, False]  # the train split once, the test split once
    assert validation.dataset.data is train.dataset.data  # one object's images, shared
    before = {split: make_dataset(config, split, None) for split in ("train", "validation", "test")}
    assert builds == [True, False, True, True, False]  # make_dataset per split reads the train split twice
    assert (train.indices, validation.indices) == (before["train"].indices, before["validation"].indices) == \
        holdout(40, 0.25, seed=3)
    for index in range(len(validation)):
        torch.manual_seed(index)  # whatever the random state: no augmentation
        assert torch.equal(validation[index][0], before["validation"][index][0])
        assert validation[index][1] == before["validation"][index][1]
    for index in range(len(train)):  # the same augmentation from the same random state
        torch.manual_seed(index)
        augmented = train[index]
        torch.manual_seed(index)
        expected = before["train"][index]
        assert torch.equal(augmented[0], expected[0]) and augmented[1] == expected[1]
    assert not all(torch.equal(train[0][0], train[0][0]) for _ in range(8))  # train is augmented
    assert all(torch.equal(test[i][0], before["test"][i][0]) for i in range(len(test)))


def test_one_event_build_serves_train_and_validation(tmp_path, monkeypatch):
    """Event data: the training files are listed, checked and cached once; the validation part
    reads the same object's frames, the samples make_dataset gives."""
    from snn_stp.data import events, holdout
    from snn_stp.train import load_config
    from snn_stp.train.builders import make_dataset, make_splits

    write_dvs_gesture(tmp_path)  # 110 recordings per split
    write_dvs_gesture(tmp_path, "test")
    config = load_config(overrides=[f"data.root={tmp_path}", "data.name=dvs_gesture", "data.frames=2",
                                    "model.name=dvsgesture_net"])
    builds = record_builds(monkeypatch, events.EventFrames, lambda args, kwargs: args[2])
    train, validation, test = make_splits(config, None)
    assert builds == ["train", "test"] and validation.dataset is train.dataset
    before = make_dataset(config, "validation", None)
    assert (train.indices, validation.indices) == (make_dataset(config, "train", None).indices, before.indices) == \
        holdout(110, 0.1, seed=0)
    for index in range(len(validation)):
        assert torch.equal(validation[index][0], before[index][0]) and validation[index][1] == before[index][1]
    assert len(test) == 110


def test_imagenet_validation_part_keeps_the_evaluation_transforms(tmp_path):
    """ImageNet's evaluation transforms (resize 256, center crop 224) differ from its training ones
    (random resized crop) in kind, not only by the random steps: the validation part of the one
    training build reads exactly what make_dataset's validation split reads."""
    from snn_stp.train import load_config
    from snn_stp.train.builders import make_dataset, make_splits

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for wnid in ("n01440764", "n01443537"):
            folder = tmp_path / split / wnid
            folder.mkdir(parents=True)
            for i in range(4):  # noise: any other crop or scale reads other values
                Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")
    config = load_config(overrides=[f"data.root={tmp_path}", "data.name=imagenet", "data.validation_fraction=0.25"])
    _, validation, _ = make_splits(config, None)
    before = make_dataset(config, "validation", None)
    assert validation.indices == before.indices and len(validation) == 2
    assert all(torch.equal(validation[i][0], before[i][0]) for i in range(len(validation)))
