"""Tests of pnorm.images: containers, augmentation, and the real loaders on tiny files.

The real loaders are exercised on files written in the exact on-disk formats (CIFAR pickles,
Adi et al. PNG folder), since these machines cannot download the datasets.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from ondisk import cifar_md5_attributes, write_adi, write_cifar10, write_cifar100
from PIL import Image
from torchvision import datasets
from torchvision.datasets import utils as tv_utils

from pnorm import images
from pnorm.images import (
    CIFAR_MEAN,
    CIFAR_STD,
    DataNotFoundError,
    ImageData,
    augment_crop_flip,
    crop_flip,
    load_adi_trigger_set,
    load_cifar,
    normalize,
)
from pnorm.synthetic_images import synthetic_images

# ------------------------------------------------------------------ containers


def test_image_data_subset_and_validation() -> None:
    d = synthetic_images(20, seed=0)
    s = d.subset(torch.tensor([3, 1]))
    assert torch.equal(s.images[0], d.images[3]) and s.labels[1] == d.labels[1]
    assert s.classes == d.classes and s.name == d.name
    assert len(d.subset(d.labels == 0)) == 2
    with pytest.raises(ValueError):
        ImageData(d.images.float(), d.labels, d.classes, "bad")
    with pytest.raises(ValueError):
        ImageData(d.images, d.labels[:-1], d.classes, "bad")


# ------------------------------------------------------------------ normalisation and augmentation


def test_normalize() -> None:
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(2, 3, 1, 2)
    y = normalize(x, CIFAR_MEAN, CIFAR_STD)
    assert y.dtype == torch.float32 and y.shape == x.shape
    for c in range(3):
        assert torch.allclose(y[:, c, 0, 0], torch.tensor(-CIFAR_MEAN[c] / CIFAR_STD[c]))
        assert torch.allclose(y[:, c, 0, 1], torch.tensor((1 - CIFAR_MEAN[c]) / CIFAR_STD[c]))
    assert normalize(x[0], CIFAR_MEAN, CIFAR_STD).shape == (3, 1, 2)  # a single image works
    with pytest.raises(TypeError):
        normalize(x.float(), CIFAR_MEAN, CIFAR_STD)


def _numbered(n: int) -> torch.Tensor:
    """Images whose every pixel value is distinct and non-zero (so zero padding is visible)."""
    return torch.arange(1, n * 3 * 32 * 32 + 1, dtype=torch.float32).view(n, 3, 32, 32)


def test_crop_flip_semantics() -> None:
    x = _numbered(4)
    four, zero = torch.full((4,), 4), torch.zeros(4, dtype=torch.long)
    no, yes = torch.zeros(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool)
    assert torch.equal(crop_flip(x, four, four, no), x)  # centre offset: identity
    assert torch.equal(crop_flip(x, four, four, yes), x.flip(-1))  # flip all: mirror
    top_left = crop_flip(x, zero, zero, no)  # extreme offset: 4 rows/cols of zero padding
    assert (top_left[:, :, :4, :] == 0).all() and (top_left[:, :, :, :4] == 0).all()
    assert torch.equal(top_left[:, :, 4:, 4:], x[:, :, :28, :28])
    bottom_right = crop_flip(x, 2 * four, 2 * four, no)
    assert (bottom_right[:, :, 28:, :] == 0).all() and (bottom_right[:, :, :, 28:] == 0).all()
    assert torch.equal(bottom_right[:, :, :28, :28], x[:, :, 4:, 4:])


def test_crop_flip_matches_torchvision() -> None:
    # torchvision RandomCrop(32, padding=4) pads with 0, crops at (top, left); then hflip.
    x = synthetic_images(6, seed=5).images
    oy, ox = torch.tensor([0, 8, 3, 5, 1, 7]), torch.tensor([8, 0, 6, 2, 4, 1])
    flips = torch.tensor([True, False, True, False, True, False])
    out = crop_flip(x, oy, ox, flips)
    for i in range(6):
        ref = TF.crop(TF.pad(x[i], [4]), int(oy[i]), int(ox[i]), 32, 32)
        ref = TF.hflip(ref) if flips[i] else ref
        assert torch.equal(out[i], ref)


def test_augment_crop_flip_reproducible_and_distributed() -> None:
    x = synthetic_images(16, seed=2).images
    a = augment_crop_flip(x, torch.Generator().manual_seed(0))
    b = augment_crop_flip(x, torch.Generator().manual_seed(0))
    assert a.dtype == torch.uint8 and a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, augment_crop_flip(x, torch.Generator().manual_seed(1)))
    assert augment_crop_flip(x.float(), torch.Generator()).dtype == torch.float32
    # offsets: read them back from the zero rows of an all-ones batch; all 9 values occur
    ones = torch.ones(1800, 1, 32, 32)
    out = augment_crop_flip(ones, torch.Generator().manual_seed(3))
    rows = out[:, 0, :, 16] == 0
    top = rows[:, :4].sum(1)
    oy = 4 - top + rows[:, 28:].sum(1)
    counts = torch.bincount(oy, minlength=9)
    assert len(counts) == 9 and counts.min() > 120  # ~200 each
    # flips: with no padding the output is the image or its mirror, about half each
    y = _numbered(2000)[:, :1]
    out = augment_crop_flip(y, torch.Generator().manual_seed(4), padding=0)
    flipped = (out == y.flip(-1)).flatten(1).all(1)
    assert ((out == y).flatten(1).all(1) ^ flipped).all()
    assert 0.45 < flipped.float().mean().item() < 0.55


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augment_generator_on_cpu_images_on_cuda() -> None:
    x = synthetic_images(8, seed=0).images
    out = augment_crop_flip(x.cuda(), torch.Generator().manual_seed(0))
    assert out.is_cuda
    assert torch.equal(out.cpu(), augment_crop_flip(x, torch.Generator().manual_seed(0)))


# ------------------------------------------------------------------ CIFAR on tiny files

_RNG = np.random.default_rng(0)


def _tiny_cifar10(root: Path) -> tuple[dict[str, str], np.ndarray, np.ndarray]:
    """Write `cifar-10-batches-py` with 5 train batches of 2 images and a test batch of 3."""
    pixels = _RNG.integers(0, 256, (13, 3072), dtype=np.uint8)
    pixels[0, 1 * 1024 + 2 * 32 + 3] = 200  # image 0, channel G, row 2, column 3
    labels = _RNG.integers(0, 10, 13)
    return write_cifar10(root, pixels, labels, n_test=3), pixels, labels


def _patch_md5(monkeypatch: pytest.MonkeyPatch, cls: type, md5: dict[str, str]) -> None:
    # torchvision compares each file's md5 with the sums hard-coded on the class (train_list,
    # test_list, meta["md5"]): point them at our tiny files, which is exactly what it checks.
    for name, value in cifar_md5_attributes(cls, md5).items():
        monkeypatch.setattr(cls, name, value)


def test_load_cifar10_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    md5, pixels, labels = _tiny_cifar10(tmp_path)
    _patch_md5(monkeypatch, datasets.CIFAR10, md5)
    sp = load_cifar(tmp_path, "cifar10", n_val=3, seed=0)
    assert sp.source == "real" and sp.num_classes == 10
    assert sp.mean == CIFAR_MEAN and sp.std == CIFAR_STD
    assert (len(sp.train), len(sp.val), len(sp.test)) == (7, 3, 3)
    assert sp.test.images.dtype == torch.uint8 and sp.test.images.shape == (3, 3, 32, 32)
    assert sp.train.classes[0] == "airplane" and sp.test.name == "cifar10/test"
    assert sp.val.name == "cifar10/val" and sp.train.name == "cifar10/train"
    # pixel order: CIFAR rows are channel-major (R, G, B planes), each plane row-major
    expected = torch.from_numpy(pixels[10:].reshape(3, 3, 32, 32))
    assert torch.equal(sp.test.images, expected)
    assert torch.equal(sp.test.labels, torch.from_numpy(labels[10:]).long())
    # train + val partition the 10 training images, in file order, pixels intact
    both = torch.cat([sp.train.images, sp.val.images]).flatten(1)
    assert sorted(bytes(r.numpy()) for r in both) == sorted(bytes(r) for r in pixels[:10])
    whole = load_cifar(tmp_path, "cifar10", n_val=0)
    assert whole.train.images[0, 1, 2, 3] == 200 and len(whole.val) == 0
    assert torch.equal(load_cifar(tmp_path, n_val=3, seed=0).val.images, sp.val.images)
    with pytest.raises(ValueError):
        load_cifar(tmp_path, n_val=10)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_cifar(tmp_path, "cifar1000")


def test_load_cifar100_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pixels = _RNG.integers(0, 256, (6, 3072), dtype=np.uint8)
    fine = [5, 99, 0, 42, 7, 63]
    md5 = write_cifar100(tmp_path, pixels, fine, n_test=2)
    _patch_md5(monkeypatch, datasets.CIFAR100, md5)
    sp = load_cifar(tmp_path, "cifar100", n_val=1)
    assert sp.num_classes == 100 and sp.train.classes[99] == "class99"
    assert sp.mean == CIFAR_MEAN and sp.std == CIFAR_STD  # faithful: CIFAR-10 constants
    assert torch.equal(sp.test.labels, torch.tensor([7, 63]))
    assert torch.equal(sp.test.images, torch.from_numpy(pixels[4:].reshape(2, 3, 32, 32)))


def test_load_cifar_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as err:
        load_cifar(tmp_path / "nowhere")
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg
    assert "download=True" in msg and "cifar-10-python.tar.gz" in msg


def test_load_cifar_wrong_checksum(tmp_path: Path) -> None:
    _tiny_cifar10(tmp_path)  # md5 sums unpatched: the tiny files are not the real ones
    with pytest.raises(DataNotFoundError, match="checksum") as err:
        load_cifar(tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value)


def test_load_cifar_download_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(DataNotFoundError, match="downloading cifar10") as err:
        load_cifar(tmp_path, download=True)
    assert isinstance(err.value.__cause__, urllib.error.URLError)


def test_load_cifar_download_skipped_when_present(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    md5, _, _ = _tiny_cifar10(tmp_path)
    _patch_md5(monkeypatch, datasets.CIFAR10, md5)
    monkeypatch.setattr(tv_utils, "download_and_extract_archive",
                        lambda *a, **k: pytest.fail("downloaded although the files are fine"))
    assert len(load_cifar(tmp_path, download=True, n_val=2).train) == 8


# ------------------------------------------------------------------ Adi et al. trigger set


def _tiny_adi(root: Path, n: int = 12) -> list[int]:
    """Write pics/1.png … n.png (40 wide, 36 high; R encodes the number) + labels-cifar.txt."""
    rows, cols = np.meshgrid(np.arange(36), np.arange(40), indexing="ij")
    pics = [np.stack([np.full((36, 40), 10 * k), rows, cols], -1).astype(np.uint8)
            for k in range(1, n + 1)]
    labels = [(7 * k) % 10 for k in range(1, n + 1)]
    write_adi(root, pics, labels, suffix=".png")
    return labels


def test_load_adi_numeric_order_and_center_crop(tmp_path: Path) -> None:
    labels = _tiny_adi(tmp_path)
    d = load_adi_trigger_set(tmp_path)
    assert d.images.shape == (12, 3, 32, 32) and d.images.dtype == torch.uint8
    numbers = (d.images[:, 0, 0, 0].long() // 10).tolist()
    assert numbers == list(range(1, 13))  # a lexicographic sort would give 1, 10, 11, 12, 2, …
    assert d.labels.tolist() == labels
    # torchvision CenterCrop(32) of a 36×40 image starts at row 2, column 4
    assert torch.equal(d.images[0, 1, :, 0], torch.arange(2, 34, dtype=torch.uint8))
    assert torch.equal(d.images[0, 2, 0, :], torch.arange(4, 36, dtype=torch.uint8))
    assert d.name == "trigger/adi" and len(d.classes) == 10


def test_load_adi_errors(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="nowhere"):
        load_adi_trigger_set(tmp_path / "nowhere")
    _tiny_adi(tmp_path)
    (tmp_path / "labels-cifar.txt").write_text("1\n2\n3\n")
    with pytest.raises(ValueError, match="12 images"):
        load_adi_trigger_set(tmp_path)
    other = tmp_path / "labels-other.txt"
    other.write_text("\n".join(["0"] * 12))
    assert load_adi_trigger_set(tmp_path, labels_file=other).labels.sum() == 0
    Image.new("RGB", (32, 32)).save(tmp_path / "pics" / "cover.jpg")
    with pytest.raises(ValueError, match="cover.jpg"):
        load_adi_trigger_set(tmp_path, labels_file=other)


def test_load_adi_accepts_jpg(tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    for k in (1, 2):
        Image.new("RGB", (64, 48), (50 * k, 0, 0)).save(tmp_path / "pics" / f"{k}.jpg")
    (tmp_path / "labels-cifar.txt").write_text("3\n4\n")
    d = load_adi_trigger_set(tmp_path)
    assert d.images.shape == (2, 3, 32, 32) and d.labels.tolist() == [3, 4]
    assert abs(int(d.images[1, 0, 16, 16]) - 100) < 8  # jpeg is lossy
    assert images.ADI_URL.startswith("https://github.com/adiyoss/WatermarkNN")


def test_download_adi_checks_then_moves_into_place(tmp_path: Path) -> None:
    """The downloader fetches labels + numbered jpgs (here from a file:// mirror), checks them,
    and only then renames the folder; a broken mirror leaves no folder behind."""
    source = tmp_path / "mirror"
    (source / "pics").mkdir(parents=True)
    for k in (1, 2, 3):
        Image.new("RGB", (40, 40), (60 * k, 0, 0)).save(source / "pics" / f"{k}.jpg")
    (source / "labels-cifar.txt").write_text("9\n0\n4\n")
    target = tmp_path / "cache" / "adi"
    got = images.download_adi_trigger_set(target, source.as_uri(), n_images=3, progress=False)
    assert got == target and not target.with_name("adi.partial").exists()
    assert images.load_adi_trigger_set(target).labels.tolist() == [9, 0, 4]
    with pytest.raises(FileExistsError, match="delete it"):
        images.download_adi_trigger_set(target, source.as_uri(), n_images=3, progress=False)
    other = tmp_path / "cache" / "adi2"
    with pytest.raises(DataNotFoundError, match=r"pics/4\.jpg failed.*by hand"):
        images.download_adi_trigger_set(other, source.as_uri(), n_images=4, progress=False)
    assert not other.exists()
    (source / "labels-cifar.txt").write_text("12\n0\n4\n")
    with pytest.raises(DataNotFoundError, match="labels up to 12"):
        images.download_adi_trigger_set(other, source.as_uri(), n_images=3, progress=False)
    assert not other.exists()
