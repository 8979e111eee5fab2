"""Writers of tiny data sets in the real sets' exact on-disk layouts.

Shared by the loader tests (``test_images.py``, ``test_points.py``) and the dress rehearsal
(``test_rehearsal.py``), since these machines cannot download CIFAR, the Adi et al. trigger set
or ModelNet40:

* ``cifar-10-batches-py`` / ``cifar-100-python``: Python-2 pickles as torchvision reads them;
* the Adi et al. folder: ``pics/1.jpg …`` and ``labels-cifar.txt``;
* ``modelnet40_normal_resampled``: one folder per class of comma-separated
  ``x,y,z,nx,ny,nz`` files plus the shape-name and split lists.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"]


class Py2Pickler(pickle._Pickler):
    """Pickles `bytes` as Python 2 `str`, as in the real CIFAR files (written by Python 2).

    Such strings load as b"data" with encoding="bytes" and as "data" with encoding="latin1",
    which is what torchvision uses; a plain Python 3 pickle of b"data" would not.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else (
            pickle.BINSTRING + struct.pack("<i", n))
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_pickle(path: Path, obj: dict) -> str:
    """Write ``obj`` as a Python-2 pickle (protocol 2); its md5, as torchvision checks it."""
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())
    assert pickle.loads(buf.getvalue(), encoding="bytes").keys() == obj.keys()
    return hashlib.md5(buf.getvalue()).hexdigest()


def write_cifar10(root: Path, pixels: np.ndarray, labels: Sequence[int],
                  n_test: int) -> dict[str, str]:
    """``root/cifar-10-batches-py``: the first rows of ``pixels`` (N×3072 uint8, channel-major)
    split evenly over ``data_batch_1..5``, the last ``n_test`` rows in ``test_batch``; md5 by file.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = [int(v) for v in labels]
    n_train = len(pixels) - n_test
    assert n_train % 5 == 0, "the training images are split evenly over five batches"
    per = n_train // 5
    md5 = {}
    for k in range(5):
        rows = slice(per * k, per * (k + 1))
        md5[f"data_batch_{k + 1}"] = write_pickle(folder / f"data_batch_{k + 1}", {
            b"batch_label": f"training batch {k + 1} of 5".encode(), b"data": pixels[rows],
            b"labels": labels[rows], b"filenames": [f"{i}.png".encode() for i in range(per)]})
    md5["test_batch"] = write_pickle(folder / "test_batch", {
        b"batch_label": b"testing batch 1 of 1", b"data": pixels[n_train:],
        b"labels": labels[n_train:], b"filenames": [f"{i}.png".encode() for i in range(n_test)]})
    md5["batches.meta"] = write_pickle(folder / "batches.meta", {
        b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_cases_per_batch": per,
        b"num_vis": 3072})
    return md5


def write_cifar100(root: Path, pixels: np.ndarray, fine: Sequence[int],
                   n_test: int) -> dict[str, str]:
    """``root/cifar-100-python`` (``train``, ``test``, ``meta``); the last ``n_test`` rows test."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    fine = [int(v) for v in fine]
    n_train = len(pixels) - n_test

    def part(rows: slice, name: bytes) -> dict:
        return {b"filenames": [b"x.png"] * len(fine[rows]), b"batch_label": name,
                b"fine_labels": fine[rows], b"coarse_labels": [v // 5 for v in fine[rows]],
                b"data": pixels[rows]}

    return {"train": write_pickle(folder / "train", part(slice(0, n_train), b"training batch")),
            "test": write_pickle(folder / "test", part(slice(n_train, None), b"testing batch")),
            "meta": write_pickle(folder / "meta", {
                b"fine_label_names": [f"class{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"super{i}".encode() for i in range(20)]})}


def cifar_md5_attributes(cls: type, md5: dict[str, str]) -> dict[str, object]:
    """The class attributes torchvision compares files with (``train_list``, ``test_list``,
    ``meta``), pointed at the files whose sums are in ``md5``; set them to check tiny files."""
    return {"train_list": [[f, md5[f]] for f, _ in cls.train_list],
            "test_list": [[f, md5[f]] for f, _ in cls.test_list],
            "meta": {**cls.meta, "md5": md5[cls.meta["filename"]]}}


def write_adi(root: Path, images: Sequence[np.ndarray], labels: Sequence[int],
              suffix: str = ".jpg") -> None:
    """The Adi et al. layout: ``root/pics/1<suffix> …`` (H×W×3 uint8 arrays) and
    ``root/labels-cifar.txt`` with one label per line."""
    from PIL import Image

    (root / "pics").mkdir(parents=True)
    for k, arr in enumerate(images, start=1):
        Image.fromarray(arr).save(root / "pics" / f"{k}{suffix}")
    (root / "labels-cifar.txt").write_text("\n".join(map(str, labels)) + "\n")


def write_modelnet(root: Path, classes: Sequence[str], ids: dict[str, Sequence[str]],
                   cloud: Callable[[str], object]) -> Path:
    """``root/modelnet40_normal_resampled`` with ``classes`` (in that order) and the shape ids of
    each split (``{"train": [...], "test": [...]}``); ``cloud(shape_id)`` gives its rows (R×6:
    x,y,z,nx,ny,nz), written comma-separated with six decimals. Returns the folder."""
    folder = root / "modelnet40_normal_resampled"
    folder.mkdir(parents=True)
    (folder / "modelnet40_shape_names.txt").write_text("\n".join(classes) + "\n")
    for split, shape_ids in ids.items():
        for shape_id in shape_ids:
            cls = shape_id.rsplit("_", 1)[0]
            (folder / cls).mkdir(exist_ok=True)
            lines = [",".join(f"{v:.6f}" for v in r) for r in np.asarray(cloud(shape_id)).tolist()]
            (folder / cls / f"{shape_id}.txt").write_text("\n".join(lines) + "\n")
        (folder / f"modelnet40_{split}.txt").write_text("\n".join(shape_ids) + "\n")
    return folder
