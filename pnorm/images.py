"""Image data: the labelled-tensor containers, normalisation and augmentation, and the real sets.

Images are held as uint8 tensors (N×3×32×32) so augmentation and normalisation run batched on any
device. The real sets are CIFAR-10/100 (through torchvision) and the Adi et al. trigger set;
``synthetic_images`` generates the offline stand-ins.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .fileio import DataNotFoundError, fetch
from .profiles import show_progress

__all__ = [
    "ADI_RAW_URL",
    "ADI_SIZE",
    "ADI_URL",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DataNotFoundError",
    "ImageData",
    "ImageSplits",
    "augment_crop_flip",
    "crop_flip",
    "download_adi_trigger_set",
    "image_data",
    "load_adi_trigger_set",
    "load_cifar",
    "normalize",
]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # the original code's CIFAR-10 constants,
CIFAR_STD = (0.2023, 0.1994, 0.2010)  # which it also uses for CIFAR-100
ADI_URL = "https://github.com/adiyoss/WatermarkNN (folder data/trigger_set)"
ADI_RAW_URL = "https://raw.githubusercontent.com/adiyoss/WatermarkNN/master/data/trigger_set"
ADI_SIZE = 100  # images (pics/1.jpg … pics/100.jpg), labels 0-9 (book/method.md#method-data)


@dataclass(eq=False)
class ImageData:
    """A labelled image set held as tensors (uint8 N×3×32×32 images, int64 labels).

    Raw uint8 pixels let augmentation pad with true zeros before normalisation, as torchvision does.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str] = field(default_factory=list)
    name: str = ""

    def __post_init__(self) -> None:
        what = f"ImageData {self.name!r}" if self.name else "ImageData"
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"{what}: images must be uint8 N×C×H×W, got {self.images.dtype} "
                             f"{tuple(self.images.shape)}; pnorm.image_data() converts float "
                             f"images in [0, 1] (or normalised ones, given their mean and std)")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"{what}: labels must be int64 of length {len(self.images)}, got "
                             f"{self.labels.dtype} {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor) -> ImageData:
        """The images and labels at `indices` (an index tensor or a boolean mask).

        Used to carve validation splits and class subsets while keeping classes and name.
        """
        idx = torch.as_tensor(indices, device=self.labels.device)
        return ImageData(self.images[idx], self.labels[idx], list(self.classes), self.name)


@dataclass(eq=False)
class ImageSplits:
    """Train / validation / test sets plus the normalisation constants that go with them.

    `source` ("synthetic" or "real") is printed by the chapters so a reader knows what ran.
    """

    train: ImageData
    val: ImageData
    test: ImageData
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int
    source: str


def image_data(images: torch.Tensor, labels: torch.Tensor | Sequence[int],
               classes: Sequence[str] | None = None, name: str = "",
               mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None) -> ImageData:
    """``ImageData`` from ordinary tensors: uint8 images, or float images in [0, 1].

    Float images that were already normalised are mapped back with their ``mean`` and ``std``
    (``x * std + mean``) before quantising to uint8, the form training and augmentation expect.
    ``classes`` defaults to "0", "1", … up to the largest label.
    """
    labels = torch.as_tensor(labels).long().reshape(-1)
    if images.dim() != 4:
        raise ValueError(f"images must be N×C×H×W, got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        if not images.is_floating_point():
            raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
        x = images.detach().float()
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std (normalised images) or neither ([0, 1])")
        if mean is not None:
            shape = (1, -1, 1, 1)
            x = x * torch.tensor(std).view(shape).to(x) + torch.tensor(mean).view(shape).to(x)
        if not torch.isfinite(x).all():
            raise ValueError("images hold NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < -0.01 or hi > 1.01:
            raise ValueError(f"float images must lie in [0, 1] (found {lo:.3g} to {hi:.3g}); "
                             "pass mean= and std= if they are normalised")
        images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    if classes is None:
        classes = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
    return ImageData(images.contiguous(), labels, list(classes), name)


# ------------------------------------------------------------------ normalisation, augmentation


def normalize(images_uint8: torch.Tensor, mean: Sequence[float],
              std: Sequence[float]) -> torch.Tensor:
    """Map uint8 images (…×3×H×W) to float32 `(x/255 - mean) / std` on the images' device.

    Only uint8 is accepted, so already-scaled floats are never divided by 255 a second time.
    """
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images, got {images_uint8.dtype}")
    m = torch.tensor(mean, dtype=torch.float32, device=images_uint8.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=images_uint8.device).view(-1, 1, 1)
    return (images_uint8.float() / 255.0 - m) / s


def crop_flip(images: torch.Tensor, offsets_y: torch.Tensor, offsets_x: torch.Tensor,
               flips: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Crop each zero-padded image at (offsets_y, offsets_x), then mirror where `flips` is true.

    The deterministic core of `augment_crop_flip`, separate so tests can check its semantics.
    """
    n, c, h, w = images.shape
    dev = images.device
    padded = images.new_zeros(n, c, h + 2 * padding, w + 2 * padding)
    padded[:, :, padding:padding + h, padding:padding + w] = images
    rows = offsets_y.to(dev).long()[:, None] + torch.arange(h, device=dev)
    col = torch.arange(w, device=dev)
    col = torch.where(flips.to(dev).bool()[:, None], w - 1 - col, col)
    cols = offsets_x.to(dev).long()[:, None] + col
    batch = torch.arange(n, device=dev)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # N×H×W×C: advanced dims first
    return out.permute(0, 3, 1, 2).contiguous()


def augment_crop_flip(images: torch.Tensor, generator: torch.Generator,
                      padding: int = 4) -> torch.Tensor:
    """Random crop with zero padding, then random horizontal flip (p=0.5); batched, any dtype.

    Matches torchvision RandomCrop(H, padding) + RandomHorizontalFlip on the unnormalised image;
    the draws happen on the generator's device and then move to the images' device.
    """
    n, gdev = images.shape[0], generator.device
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=gdev)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=gdev)
    flips = torch.rand(n, generator=generator, device=gdev) < 0.5
    return crop_flip(images, oy, ox, flips, padding)


# ------------------------------------------------------------------ real data


def _cifar_files(cls: type, folder: Path, how: str) -> None:
    """Raise DataNotFoundError if a CIFAR file in `folder` is missing or fails its md5 check.

    The md5 sums are the ones stored on the torchvision class: exactly what torchvision compares.
    """
    from torchvision.datasets.utils import check_integrity

    files = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    missing = [f for f, _ in files if not (folder / f).is_file()]
    if missing:
        what = "it does not exist" if not folder.is_dir() else f"{missing} are missing there"
        raise DataNotFoundError(f"{cls.__name__} not found: looked in {folder}, and {what}. {how}")
    bad = [f for f, md5 in files if not check_integrity(str(folder / f), md5)]
    if bad:
        raise DataNotFoundError(f"the files {bad} in {folder} failed torchvision's checksum (md5) "
                                f"check: they are corrupt or partial. Delete {folder} and "
                                f"download again. {how}")


def load_cifar(root: str | Path, name: str = "cifar10", download: bool = False,
               n_val: int = 5000, seed: int = 0) -> ImageSplits:
    """CIFAR-10/100 via torchvision as uint8 tensors, with a seeded held-out val split of `n_val`.

    Both use the CIFAR-10 mean/std, as the original PAN code does (book/method.md#method-data).
    Missing,
    undownloadable or corrupt files raise DataNotFoundError; there is no silent fallback.
    """
    from torchvision import datasets
    from torchvision.datasets import utils as tv_utils

    classes = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}
    if name not in classes:
        raise ValueError(f"unknown dataset {name!r}; choose 'cifar10' or 'cifar100'")
    cls, root = classes[name], Path(root).expanduser()
    folder = root / cls.base_folder
    how = (f"To get it: load_cifar({str(root)!r}, {name!r}, download=True) on a machine with "
           f"internet, or download {cls.url} and extract it into {root}. In the book, "
           f"PNORM_DATA=real asks for real data and PNORM_DATA=synthetic for the stand-ins.")
    if download:
        try:
            _cifar_files(cls, folder, how)
        except DataNotFoundError:
            try:
                tv_utils.download_and_extract_archive(cls.url, str(root), filename=cls.filename,
                                                      md5=cls.tgz_md5)
            except Exception as err:  # network failures come as URLError, OSError, RuntimeError…
                raise DataNotFoundError(f"downloading {name} into {root} failed: {err!r}. "
                                        f"{how}") from err
    _cifar_files(cls, folder, how)
    parts = []
    for split, ds in (("train", cls(str(root), train=True)), ("test", cls(str(root), train=False))):
        images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        labels = torch.as_tensor(ds.targets, dtype=torch.int64)
        parts.append(ImageData(images, labels, list(ds.classes), f"{name}/{split}"))
    full, test = parts
    if not 0 <= n_val < len(full):
        raise ValueError(f"n_val={n_val} must be in [0, {len(full)})")
    perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))
    train = full.subset(perm[n_val:].sort().values)
    val = replace(full.subset(perm[:n_val].sort().values), name=f"{name}/val")
    return ImageSplits(train, val, test, CIFAR_MEAN, CIFAR_STD, len(full.classes), "real")



def download_adi_trigger_set(folder: str | Path, base_url: str = ADI_RAW_URL,
                             n_images: int = ADI_SIZE, progress: bool = True) -> Path:
    """Fetch the Adi et al. trigger set into ``folder`` (``pics/1.jpg …``, ``labels-cifar.txt``).

    No checksum of these files is published, so they are checked instead: ``n_images``
    numbered images that decode, one label in 0-9 per image. Files land in a sibling
    ``.partial`` folder that is renamed into place only after the check (nothing half-written).
    """
    from tqdm.auto import tqdm

    folder = Path(folder).expanduser()
    if folder.exists():
        raise FileExistsError(f"{folder} exists: load it with load_adi_trigger_set, or delete it "
                              f"to download again")
    part = folder.with_name(folder.name + ".partial")
    shutil.rmtree(part, ignore_errors=True)
    (part / "pics").mkdir(parents=True)
    names = ["labels-cifar.txt"] + [f"pics/{i}.jpg" for i in range(1, n_images + 1)]
    for name in tqdm(names, desc="downloading the Adi et al. trigger set",
                     disable=not show_progress(progress)):
        try:
            fetch(f"{base_url}/{name}", part / name)
        except Exception as err:  # URLError, HTTPError, TimeoutError, OSError, …
            raise DataNotFoundError(
                f"downloading {base_url}/{name} failed: {err!r}. Get the folder "
                f"data/trigger_set of {ADI_URL} by hand and put its pics/ and labels-cifar.txt "
                f"into {folder}") from err
    data = load_adi_trigger_set(part)
    if len(data) != n_images or int(data.labels.max()) > 9:
        raise DataNotFoundError(f"the downloaded trigger set in {part} has {len(data)} images "
                                f"and labels up to {int(data.labels.max())}; expected "
                                f"{n_images} images with labels 0-9. Nothing was moved to {folder}")
    part.rename(folder)
    return folder


def load_adi_trigger_set(folder: str | Path, labels_file: str | Path | None = None) -> ImageData:
    """The Adi et al. trigger set (`pics/1.jpg …` + `labels-cifar.txt`), center-cropped to 32×32.

    Images pair with label lines in the numeric order of their names (1, 2, …, 10, …), not in
    the unsorted directory listing the original code relies on (book/method.md#method-data).
    """
    from PIL import Image
    from torchvision.transforms.functional import center_crop

    folder = Path(folder).expanduser()
    pics = folder / "pics" if (folder / "pics").is_dir() else folder
    labels_path = Path(labels_file) if labels_file is not None else folder / "labels-cifar.txt"
    how = f"Get it from {ADI_URL}: put pics/ and labels-cifar.txt into {folder}."
    if not folder.is_dir():
        raise DataNotFoundError(f"trigger set not found: {folder} does not exist. {how}")
    if not labels_path.is_file():
        raise DataNotFoundError(f"trigger-set labels not found: no file {labels_path}. {how}")
    files = [p for p in pics.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    if not files:
        raise DataNotFoundError(f"no .jpg/.png images in {pics}. {how}")
    bad = sorted(p.name for p in files if not p.stem.isdigit())
    if bad:
        raise ValueError(f"trigger images must be named by number (1.jpg, 2.jpg, …): {pics} "
                         f"holds {bad}")
    files.sort(key=lambda p: int(p.stem))
    if len({int(p.stem) for p in files}) != len(files):
        raise ValueError(f"two trigger images in {pics} share a number")
    try:
        labels = torch.tensor([int(t) for t in labels_path.read_text().split()], dtype=torch.int64)
    except ValueError as err:
        raise ValueError(f"{labels_path} must hold one integer label per line") from err
    if len(labels) != len(files) or (labels < 0).any():
        raise ValueError(f"{len(files)} images in {pics} but {len(labels)} labels in "
                         f"{labels_path} (labels must be ≥ 0 and match the images one to one)")
    crops = []
    for p in files:
        with Image.open(p) as im:
            arr = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
        crops.append(center_crop(arr, [32, 32]))
    classes = [str(i) for i in range(max(10, int(labels.max()) + 1))]
    return ImageData(torch.stack(crops), labels, classes, "trigger/adi")
