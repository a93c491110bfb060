"""The ``cifar10_resnet20`` task on a tiny CIFAR-10 written in the real format: the python
version's ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``, ``batches.meta``),
pickled the way the real files were, by Python 2 (protocol 2, ``str`` keys, numpy arrays whose
bytes are Python 2 strings), so the loader meets what a user's download holds. The images carry
a learnable pattern (each class its own colour), so ResNet-20's loss falls within a few steps.
Nothing is downloaded; torchvision is not used.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

TRAIN, TEST = 256, 64  # images: 5 train batches of 51 or 52, one test batch
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck")  # fmt: skip


# ------------------------------------------------------------------------------ the data set
class Py2Pickle:
    """Protocol-2 pickles as Python 2's cPickle wrote CIFAR-10: ``str`` is a Python 2 byte
    string (``SHORT_BINSTRING``/``BINSTRING``), numpy arrays reduce to
    ``numpy.core.multiarray._reconstruct`` with their bytes as such a string."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")

    def dump(self, obj: Any) -> bytes:
        self.put(obj)
        self.out += b"."
        return bytes(self.out)

    def string(self, raw: bytes) -> None:
        if len(raw) < 256:
            self.out += b"U" + bytes([len(raw)]) + raw
        else:
            self.out += b"T" + struct.pack("<I", len(raw)) + raw

    def glob(self, module: str, name: str) -> None:
        self.out += b"c" + f"{module}\n{name}\n".encode()

    def scalar(self, obj: Any) -> bool:
        if obj is None:
            self.out += b"N"
        elif isinstance(obj, bool):
            self.out += b"\x88" if obj else b"\x89"
        elif isinstance(obj, int):
            self.out += b"J" + struct.pack("<i", obj)
        elif isinstance(obj, str | bytes):
            self.string(obj.encode("latin1") if isinstance(obj, str) else obj)
        else:
            return False
        return True

    def put(self, obj: Any) -> None:
        if self.scalar(obj):
            pass
        elif isinstance(obj, tuple):
            self.out += b"("
            for item in obj:
                self.put(item)
            self.out += b"t"
        elif isinstance(obj, list):
            self.out += b"]("
            for item in obj:
                self.put(item)
            self.out += b"e"
        elif isinstance(obj, dict):
            self.out += b"}("
            for key, value in obj.items():
                self.put(key)
                self.put(value)
            self.out += b"u"
        elif isinstance(obj, np.ndarray):
            assert obj.dtype == np.uint8 and obj.flags.c_contiguous
            self.glob("numpy.core.multiarray", "_reconstruct")
            self.put((_Global("numpy", "ndarray"), (0,), "b"))
            self.out += b"R"
            self.put((1, tuple(obj.shape), _UINT8, False, obj.tobytes()))  # the state
            self.out += b"b"  # BUILD
        elif obj is _UINT8:
            self.glob("numpy", "dtype")
            self.put(("u1", 0, 1))
            self.out += b"R"
            self.put((3, "|", None, None, None, -1, -1, 0))
            self.out += b"b"
        elif isinstance(obj, _Global):
            self.glob(obj.module, obj.name)
        else:
            raise TypeError(type(obj))


class _Global:
    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


_UINT8 = object()  # numpy's uint8 dtype, as Python 2 pickled it


def py2_pickle(obj: Any) -> bytes:
    return Py2Pickle().dump(obj)


def _images(labels: Any, rng: Any) -> Any:
    """32×32 RGB images: each class its own colour, with noise (learnable, not trivial)."""
    colours = np.random.default_rng(1234).integers(30, 226, size=(10, 3))
    x = colours[labels][:, :, None, None] + rng.normal(0, 30, size=(len(labels), 3, 32, 32))
    return np.clip(x, 0, 255).astype(np.uint8).reshape(len(labels), 3072)


def write_cifar(root: Path, *, py2: bool = True) -> Path:
    """A tiny CIFAR-10 in ``root/cifar-10-batches-py``; returns that folder."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    dump = py2_pickle if py2 else lambda obj: pickle.dumps(_bytes_keys(obj), protocol=2)
    labels = rng.integers(0, 10, size=TRAIN + TEST)
    data = _images(labels, rng)
    bounds = np.linspace(0, TRAIN, 6).astype(int)
    for i in range(5):
        lo, hi = bounds[i], bounds[i + 1]
        (folder / f"data_batch_{i + 1}").write_bytes(dump({
            "batch_label": f"training batch {i + 1} of 5", "labels": labels[lo:hi].tolist(),
            "data": data[lo:hi], "filenames": [f"img_{j}.png" for j in range(lo, hi)]}))  # fmt: skip
    (folder / "test_batch").write_bytes(dump({
        "batch_label": "testing batch 1 of 1", "labels": labels[TRAIN:].tolist(),
        "data": data[TRAIN:], "filenames": [f"img_{j}.png" for j in range(TRAIN, TRAIN + TEST)]}))  # fmt: skip
    (folder / "batches.meta").write_bytes(dump({
        "num_cases_per_batch": 52, "label_names": list(LABEL_NAMES), "num_vis": 3072}))  # fmt: skip
    return folder


def _bytes_keys(obj: Any) -> Any:
    """What the CIFAR-10 page's Python 3 reader sees (``encoding="bytes"``): bytes keys."""
    if isinstance(obj, dict):
        return {k.encode(): _bytes_keys(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [v.encode() if isinstance(v, str) else v for v in obj]
    return obj.encode() if isinstance(obj, str) else obj


# ------------------------------------------------------------------------------ the loader
def test_the_loader_reads_python2_and_python3_pickles_alike(tmp_path: Path) -> None:
    from hotcb.bench.tasks import load_cifar10

    py2 = load_cifar10(os.fspath(write_cifar(tmp_path / "a")))  # the folder itself
    write_cifar(tmp_path / "b", py2=False)
    py3 = load_cifar10(os.fspath(tmp_path / "b"))  # the folder that holds it
    for d in (py2, py3):
        assert d.x_train.shape == (TRAIN, 3, 32, 32) and d.x_train.dtype == torch.uint8
        assert d.x_test.shape == (TEST, 3, 32, 32)
        assert d.y_train.dtype == torch.int64 and len(d.y_train) == TRAIN
        assert d.label_names == LABEL_NAMES
    assert torch.equal(py2.x_train, py3.x_train) and torch.equal(py2.y_test, py3.y_test)
    # channel-major, as CIFAR-10 stores it: the first 1024 bytes of a row are the red plane
    raw = pickle.loads((tmp_path / "a/cifar-10-batches-py/data_batch_1").read_bytes(),
                       encoding="latin1")["data"]  # fmt: skip
    assert torch.equal(py2.x_train[0, 0].flatten(), torch.from_numpy(raw[0, :1024].copy()))
    assert py2.info()["train_images"] == TRAIN and len(py2.sha256) == 64
    assert not py2.official and len(py2.differs) == 6  # not the published files


def test_the_published_md5s_mark_a_copy_official(tmp_path: Path, monkeypatch: Any) -> None:
    from hotcb.bench import tasks

    folder = write_cifar(tmp_path)
    md5s = {n: hashlib.md5((folder / n).read_bytes()).hexdigest() for n in tasks.CIFAR_MD5}
    monkeypatch.setattr(tasks, "CIFAR_MD5", md5s)
    assert tasks.load_cifar10(os.fspath(tmp_path)).official
    (folder / "test_batch").write_bytes(py2_pickle({"data": np.zeros((1, 3072), np.uint8),
                                                     "labels": [3]}))  # fmt: skip
    data = tasks.load_cifar10(os.fspath(tmp_path))
    assert data.differs == ("test_batch",) and len(data.y_test) == 1
    about = tasks.cifar10_resnet20(os.fspath(tmp_path)).about
    assert "NOT the published files: test_batch differs" in about


def _raw(tmp_path: Path, name: str, content: bytes) -> str:
    """A tiny CIFAR-10 with ``name`` replaced by ``content``; returns the --data folder."""
    (write_cifar(tmp_path) / name).write_bytes(content)
    return os.fspath(tmp_path)


def _with(tmp_path: Path, name: str) -> str:
    """A folder holding only ``name`` (a file)."""
    (tmp_path / name).touch()
    return os.fspath(tmp_path)


def _without(tmp_path: Path, name: str) -> str:
    """A tiny CIFAR-10 without its file ``name``."""
    (write_cifar(tmp_path) / name).unlink()
    return os.fspath(tmp_path)


def _broken(tmp_path: Path, name: str, obj: Any) -> str:
    return _raw(tmp_path, name, py2_pickle(obj))


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: None, r"needs --data DIR \(it is never downloaded\).*cifar-10-python\.tar\.gz"),
        (lambda p: os.fspath(p / "nowhere"), r"--data .*nowhere is not a folder"),
        (lambda p: os.fspath(p), r"no CIFAR-10 under .*: expected .*cifar-10-batches-py/"),
        (lambda p: _with(p, "cifar-10-python.tar.gz"),
         r"the tarball is there but not unpacked"),
        (lambda p: _without(p, "data_batch_3"),
         r"cifar-10-batches-py lacks data_batch_3 \(CIFAR-10's python version has"),
        (lambda p: _broken(p, "test_batch", {"data": np.zeros((4, 1024), np.uint8),
                                             "labels": [0] * 4}),
         r"test_batch: data is uint8 of shape \(4, 1024\), expected uint8 N × 3072"),
        (lambda p: _broken(p, "data_batch_2", {"data": np.zeros((4, 3072), np.uint8),
                                               "labels": [0] * 3}),
         r"data_batch_2: 3 labels for 4 images"),
        (lambda p: _broken(p, "data_batch_2", {"data": np.zeros((2, 3072), np.uint8),
                                               "labels": [0, 10]}),
         r"data_batch_2: labels from 0 to 10, expected 0\.\.9"),
        (lambda p: _broken(p, "data_batch_1", {"images": 1}),
         r"data_batch_1 has keys \['images'\], expected b'data' and b'labels'"),
        (lambda p: _raw(p, "data_batch_5", b"<html>404</html>"),
         r"data_batch_5 is not a CIFAR-10 batch \(a pickled dict\)"),
        (lambda p: _raw(p, "data_batch_4", pickle.dumps(os.system, protocol=2)),
         r"data_batch_4 is not a CIFAR-10 batch .*refers to (posix|nt)\.system"),
    ],
    ids=["no-data", "not-a-folder", "empty-folder", "tarball-only", "missing-batch",
         "wrong-shape", "label-count", "label-range", "wrong-keys", "not-a-pickle",
         "foreign-class"],
)  # fmt: skip
def test_a_missing_or_broken_cifar_says_what_and_where(
    tmp_path: Path, make: Any, expected: str
) -> None:
    from hotcb.bench.tasks import TaskUnavailable, load_task

    with pytest.raises(TaskUnavailable, match=r"^cifar10_resnet20: .*" + expected):
        load_task("cifar10_resnet20", data_dir=make(tmp_path))


def test_a_run_is_the_same_for_a_seed(tmp_path: Path) -> None:
    """Epoch order, crops and flips come from the run's seed: two runs of one seed give the
    same losses bit for bit, another seed others."""
    from hotcb.bench.tasks import CifarRun, _sgd, load_cifar10

    d = load_cifar10(os.fspath(write_cifar(tmp_path)))
    data = (d.x_train[:40], d.y_train[:40], d.x_test, d.y_test)

    def losses(seed: int) -> list[float]:
        run = CifarRun(seed, data)
        run.batch_size = 16  # 40 images: the third step crosses into a new epoch
        opt = _sgd(run.model.parameters(), 0.1)
        return [run.train_step(opt) for _ in range(3)]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the bench runs (--threads 1); small batches, busy cores
    try:
        first, again, other = losses(0), losses(0), losses(1)
    finally:
        torch.set_num_threads(threads)
    assert first == again and first != other
    assert all(math.isfinite(v) for v in first)


# ------------------------------------------------------------------------------ the CLI
def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_cifar_trains_through_the_cli_and_replays_bit_for_bit(cli: Any, tmp_path: Path) -> None:
    write_cifar(tmp_path / "data")
    out = tmp_path / "out"
    steps = 16
    done = cli(None, "bench", "run", "--task", "cifar10_resnet20", "--conditions",
               "autopilot,replay", "--seeds", "1", "--steps", str(steps),
               "--data", os.fspath(tmp_path / "data"), "--out", os.fspath(out),
               "--no-progress", timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skipped" not in done.stderr
    meta = json.loads((out / "bench.json").read_text())
    task = meta["tasks"]["cifar10_resnet20"]
    assert task["data"]["train_images"] == TRAIN and task["data"]["test_images"] == TEST
    assert task["data"]["folder"] == os.fspath(tmp_path / "data/cifar-10-batches-py")
    assert "256 train images" in task["about"] and not task["data"]["official"]
    assert "NOT the published files: all six differ" in task["about"]
    rows = {r["condition"]: r for r in _rows(out / "summary.csv")}
    assert set(rows) == {"autopilot", "replay"}  # fixed trains the same way: its run is spared
    for cond in ("autopilot", "replay"):
        curve = json.loads((out / f"runs/cifar10_resnet20/{cond}/s0/curve.json").read_text())
        train = curve["curve"]["train_loss"]
        assert len(train) == steps and all(math.isfinite(v) for v in train)
        assert sum(train[-5:]) / 5 < sum(train[:5]) / 5 * 0.8, train  # it learns
        assert math.isfinite(float(rows[cond]["final_val_loss"]))
        assert 0 <= float(rows[cond]["final_val_acc"]) <= 1
    assert rows["replay"]["replay_matched"] == "True"
    assert "replay matched bit for bit" in done.stderr
    ap = json.loads((out / "runs/cifar10_resnet20/autopilot/s0/curve.json").read_text())
    rp = json.loads((out / "runs/cifar10_resnet20/replay/s0/curve.json").read_text())
    assert rp["curve"] == ap["curve"]
    assert (out / "img/bench_cifar10_resnet20.png").stat().st_size > 0
    assert "ResNet-20 on CIFAR-10" in (out / "report.md").read_text()
