"""Dress rehearsal: every chapter on real-data code paths, with tiny sets in the real layouts.

These machines cannot download CIFAR-10/100, the Adi et al. trigger set or ModelNet40, and no
chapter had ever run with ``PNORM_DATA=real``. This test writes small, learnable-ish stand-ins
in the *exact* on-disk layouts of the real sets into a fresh ``<PNORM_CACHE>/data`` (writers in
``ondisk.py``) and executes every chapter with nbclient under ``PNORM_PROFILE=smoke``,
``PNORM_DATA=real``: a cell error, or a chapter without a figure, fails it. Every chapter draws
at least one (the summary, 09, and the landing page, index, once the others have recorded
results: they run last, and are skipped when the others did not run in the same session).

torchvision's checksum check stays on: before a chapter's first cell, the test's client runs one
extra cell (never saved) that points the md5 sums torchvision compares with (class attributes of
``CIFAR10``/``CIFAR100``) at the files written here, and turns every download into an error.
Select with ``-k rehearsal`` (or ``-m rehearsal``); about 2-4 minutes on 2 cores.
"""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbrun import execute_or_fail
from ondisk import (
    cifar_md5_attributes,
    write_adi,
    write_cifar10,
    write_cifar100,
    write_modelnet,
)
from torchvision import datasets

from pnorm.images import DataNotFoundError, load_cifar
from pnorm.profile_data import ADI_FOLDER

pytestmark = pytest.mark.rehearsal

REPO_ROOT = Path(__file__).resolve().parent.parent
NB_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300

# Sizes for the smoke profile (n_val 256 images / 128 clouds, batches of 64 / 32, 64 points).
CIFAR10_TRAIN, CIFAR10_TEST = 640, 320  # 5 batches of 128; 384 train + 256 val after the split
CIFAR100_TRAIN, CIFAR100_TEST = 800, 200
ADI_IMAGES = 100  # as the real set: pics/1.jpg … 100.jpg
MODELNET_TRAIN, MODELNET_TEST, MODELNET_ROWS = 8, 3, 96  # clouds per class, rows per file

# The 40 classes of modelnet40_shape_names.txt, in its order.
MODELNET40_CLASSES = (
    "airplane bathtub bed bench bookshelf bottle bowl car chair cone cup curtain desk door "
    "dresser flower_pot glass_box guitar keyboard lamp laptop mantel monitor night_stand person "
    "piano plant radio range_hood sink sofa stairs stool table tent toilet tv_stand vase "
    "wardrobe xbox").split()


def _colour_images(n: int, num_classes: int, rng: np.random.Generator) -> tuple[np.ndarray,
                                                                                  np.ndarray]:
    """N×3072 uint8 rows (CIFAR's channel-major layout): a class colour, a class-sized bright
    square and noise; labels balanced and shuffled."""
    palette = rng.random((num_classes, 3))
    labels = rng.permutation(np.arange(n) % num_classes)
    img = 0.55 * palette[labels][:, :, None, None] + 0.35 * rng.random((n, 3, 32, 32))
    side = 6 + (labels * 17) % 20  # a square whose size depends on the class
    yy, xx = np.mgrid[:32, :32]
    inside = (np.abs(yy - 16)[None] < side[:, None, None] / 2) & (
        np.abs(xx - 16)[None] < side[:, None, None] / 2)
    img = img + 0.1 * inside[:, None]
    pixels = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    return pixels.reshape(n, 3072), labels


def _adi_images(rng: np.random.Generator) -> tuple[list[np.ndarray], list[int]]:
    """Out-of-distribution stripe patterns, larger than 32×32 (the loader centre-crops them)."""
    yy, xx = np.mgrid[:40, :48]
    pics = []
    for _ in range(ADI_IMAGES):
        period, angle = rng.integers(3, 12), rng.random() * np.pi
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        colour = rng.random(3)
        pics.append((255 * (0.5 + 0.5 * wave[..., None] * colour)).astype(np.uint8))
    return pics, rng.integers(0, 10, ADI_IMAGES).tolist()


def _cloud_maker(seed: int):
    """Rows x,y,z,nx,ny,nz of an ellipsoid whose axes depend on the class, plus noise."""
    axes = {c: 0.3 + np.random.default_rng([seed, i]).random(3)
            for i, c in enumerate(MODELNET40_CLASSES)}

    def cloud(shape_id: str) -> np.ndarray:
        cls, number = shape_id.rsplit("_", 1)
        rng = np.random.default_rng([seed, MODELNET40_CLASSES.index(cls), int(number)])
        u = rng.normal(size=(MODELNET_ROWS, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        xyz = u * axes[cls] + 0.02 * rng.normal(size=u.shape) + rng.normal(size=3)
        normals = u / axes[cls]
        return np.concatenate([xyz, normals / np.linalg.norm(normals, axis=1, keepdims=True)], 1)

    return cloud


def write_real_layouts(data: Path, seed: int = 0) -> dict[str, dict[str, object]]:
    """Every real data set a chapter reads, tiny, under ``data`` (``<PNORM_CACHE>/data``).

    Returns the torchvision class attributes that make its md5 check accept these files.
    """
    rng = np.random.default_rng(seed)
    pixels, labels = _colour_images(CIFAR10_TRAIN + CIFAR10_TEST, 10, rng)
    md5_10 = write_cifar10(data, pixels, labels, n_test=CIFAR10_TEST)
    pixels, labels = _colour_images(CIFAR100_TRAIN + CIFAR100_TEST, 100, rng)
    md5_100 = write_cifar100(data, pixels, labels, n_test=CIFAR100_TEST)
    write_adi(data / ADI_FOLDER, *_adi_images(rng))
    ids = {"train": [], "test": []}
    for cls in MODELNET40_CLASSES:  # per-class numbering, train first, as in the real lists
        for k in range(1, MODELNET_TRAIN + MODELNET_TEST + 1):
            ids["train" if k <= MODELNET_TRAIN else "test"].append(f"{cls}_{k:04d}")
    write_modelnet(data, MODELNET40_CLASSES, ids, _cloud_maker(seed))
    return {"CIFAR10": cifar_md5_attributes(datasets.CIFAR10, md5_10),
            "CIFAR100": cifar_md5_attributes(datasets.CIFAR100, md5_100)}


def _setup_cell(attributes: dict[str, dict[str, object]]) -> str:
    """Source of the cell run before a chapter: the md5 sums of this test's files on the
    torchvision classes (the check itself stays on), and no downloads at all."""
    lines = ["import torchvision.datasets as _tvd, torchvision.datasets.utils as _tvu",
             "import pnorm.fileio as _pf, pnorm.images as _pi, pnorm.points as _pp", "",
             "def _no_download(*args, **kwargs):",
             "    raise RuntimeError(f'rehearsal: a download was attempted: {args!r}')", ""]
    for cls, attrs in attributes.items():
        for name, value in attrs.items():
            lines.append(f"_tvd.{cls}.{name} = {value!r}")
    lines += ["_tvu.download_and_extract_archive = _tvu.download_url = _no_download",
              "_pf.fetch = _pi.fetch = _pp.fetch = _no_download",
              "del _tvd, _tvu, _pf, _pi, _pp, _no_download"]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def rehearsal_env(tmp_path_factory: pytest.TempPathFactory):
    """A fresh PNORM_CACHE holding the tiny real layouts; smoke profile, real data."""
    cache = tmp_path_factory.mktemp("rehearsal-cache")
    start = time.perf_counter()
    attributes = write_real_layouts(cache / "data")
    print(f"\n[rehearsal] wrote the data sets in {time.perf_counter() - start:.1f} s")
    for name in ("cifar10", "cifar100"):  # the check is on: only the kernels' patch admits them
        with pytest.raises(DataNotFoundError, match="checksum"):
            load_cifar(cache / "data", name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PNORM_CACHE", str(cache))
        mp.setenv("PNORM_PROFILE", "smoke")
        mp.setenv("PNORM_DATA", "real")
        mp.delenv("PNORM_DEVICE", raising=False)
        yield {"cache": cache, "setup": _setup_cell(attributes), "ran": set()}


def _has_image(nb: nbformat.NotebookNode) -> bool:
    return any("image/png" in out.get("data", {})
               for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_rehearsal_chapter_runs_on_real_layouts(path: Path, rehearsal_env: dict) -> None:
    nb = nbformat.read(path, as_version=4)
    readers = {"09-summary", "index"}  # pages that read the other chapters' records
    chapters = {p.stem for p in NOTEBOOKS} - readers
    if path.stem in readers and not chapters <= rehearsal_env["ran"]:
        pytest.skip(f"{path.stem} needs the other chapters' records from this rehearsal")
    nb.cells.insert(0, nbformat.v4.new_code_cell(rehearsal_env["setup"]))
    start = time.perf_counter()
    execute_or_fail(nb, f"{path.name} (smoke profile, real data)", CELL_TIMEOUT_S)
    assert _has_image(nb), f"{path.name} produced no figure (no image/png output) on real data"
    first = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    setup = "".join(o.get("text", "") for o in first.outputs)  # the chapter's setup line
    assert "data=real" in setup, f"{path.name}: the setup cell did not report real data: {setup}"
    rehearsal_env["ran"].add(path.stem)
    print(f"\n[rehearsal] {path.name} ran in {time.perf_counter() - start:.1f} s")
