"""Image data: CIFAR-10/100, the Adi et al. trigger set, and synthetic stand-ins for both.

Images are held as uint8 tensors (N×3×32×32) so augmentation and normalisation run batched on any
device; every random draw goes through a `torch.Generator` built from an explicit seed.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # the original code's CIFAR-10 constants,
CIFAR_STD = (0.2023, 0.1994, 0.2010)  # which it also uses for CIFAR-100
SHAPE_CLASSES = ["disc", "ring", "square", "frame", "triangle",
                 "plus", "bars", "two discs", "crescent", "star"]
TEXTURE_CLASSES = ["coarse checks", "fine checks", "horizontal stripes", "vertical stripes",
                   "diagonal stripes", "polka dots", "concentric rings", "waves", "blotches",
                   "grid"]
ADI_URL = "https://github.com/adiyoss/WatermarkNN (folder data/trigger_set)"
ADI_RAW_URL = "https://raw.githubusercontent.com/adiyoss/WatermarkNN/master/data/trigger_set"
ADI_SIZE = 100  # images (pics/1.jpg … pics/100.jpg), labels 0-9 (PAN_SPEC §3.2)
_S = 32  # image side
_CHUNK = 1024  # images rendered at a time (bounds memory; fixed, so results do not depend on it)
# How hard the synthetic tasks are, in one place (read-only: edit here, so the source fingerprint
# of cached models sees it). Natural nuisances only, no label noise; set so that a small CNN
# learns each task in a few epochs without reaching 100 % (8 epochs on 5k images: ~75-85 %).
SHAPES_NUISANCE = MappingProxyType(dict(
    size=(7.0, 12.0), tilt=0.4, contrast=0.5, bg_field=0.1, bg_grain=0.03, lines_under=1,
    lines_over=0, dots=1, occlude=0.1, noise=0.03))
TEXTURES_NUISANCE = MappingProxyType(dict(
    min_sharpness=1.5, contrast=0.7, lighting=0.1, lines=1, dots=1, occlude=0.15, noise=0.06))


class DataNotFoundError(FileNotFoundError):
    """A dataset is missing or corrupt on disk; the message names the folder and how to get it.

    Raised instead of ever falling back silently to synthetic data.
    """


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
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"{self.name}: images must be uint8 N×C×H×W, "
                             f"got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"{self.name}: labels must be int64 of length {len(self.images)}")

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


def _crop_flip(images: torch.Tensor, offsets_y: torch.Tensor, offsets_x: torch.Tensor,
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
    return _crop_flip(images, oy, ox, flips, padding)


# ------------------------------------------------------------------ drawing helpers


def _derive_seed(seed: int, *parts: str) -> int:
    """A stable 63-bit seed from `seed` and labels (Python's `hash` is salted per process)."""
    digest = hashlib.blake2b(f"{seed}/{'/'.join(parts)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Render on one intra-op thread, then restore the previous thread count.

    Rendering is many small memory-bound ops: on a busy 2-core machine, two threads made 8,000
    shapes take 18 s instead of 1.2 s on one (results are bit-identical either way).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _u(g: torch.Generator, lo: float, hi: float, *shape: int) -> torch.Tensor:
    """Uniform draws in [lo, hi)."""
    return lo + (hi - lo) * torch.rand(*shape, generator=g)


_Y, _X = torch.meshgrid(torch.arange(_S) + 0.5, torch.arange(_S) + 0.5, indexing="ij")


def _smooth_field(g: torch.Generator, m: int, res: int, ch: int = 3) -> torch.Tensor:
    """A smooth random field (m×ch×32×32, roughly unit scale): res×res noise upsampled."""
    low = torch.randn(m, ch, res, res, generator=g)
    return F.interpolate(low, size=(_S, _S), mode="bicubic", align_corners=False)


def _paint(img: torch.Tensor, alpha: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Blend `colour` (m×3) onto `img` (m×3×H×W) with per-pixel opacity `alpha` (m×H×W)."""
    return torch.lerp(img, colour.view(-1, 3, 1, 1), alpha.unsqueeze(1))


def _contrasting(g: torch.Generator, base: torch.Tensor, min_dist: float) -> torch.Tensor:
    """Random colours (m×3), inverted where they lie closer than `min_dist` to `base`."""
    col = torch.rand(base.shape, generator=g)
    return torch.where((col - base).norm(dim=1, keepdim=True) < min_dist, 1 - col, col)


def _at(t: torch.Tensor) -> torch.Tensor:
    """Reshape a per-image vector to m×1×1 so it broadcasts over pixels."""
    return t.view(-1, 1, 1)


def _clutter(g: torch.Generator, img: torch.Tensor, lines: int, dots: int) -> torch.Tensor:
    """Draw up to `lines` thin segments and `dots` small dots of random colour (each p=0.5)."""
    m = img.shape[0]
    for k in range(lines + dots):
        a, d = _u(g, 0, _S, m, 2), _u(g, -_S, _S, m, 2) * (k < lines)  # a dot: zero-length line
        ax, ay, dx, dy = _at(a[:, 0]), _at(a[:, 1]), _at(d[:, 0]), _at(d[:, 1])
        t = (((_X - ax) * dx + (_Y - ay) * dy) / (dx**2 + dy**2 + 1e-6)).clamp(0, 1)
        dist = torch.hypot(_X - ax - t * dx, _Y - ay - t * dy)
        radius = _u(g, 0.8, 1.2, m, 1, 1) if k < lines else _u(g, 1.3, 2.1, m, 1, 1)
        alpha = (radius - dist).clamp(0, 1) * (torch.rand(m, 1, 1, generator=g) < 0.5)
        img = _paint(img, alpha, torch.rand(m, 3, generator=g))
    return img


def _occlude_and_finish(g: torch.Generator, img: torch.Tensor, p_occ: float,
                        max_noise: float) -> torch.Tensor:
    """Occlude with a random rectangle (probability p_occ), add pixel noise, quantise to uint8."""
    m = img.shape[0]
    hw, c = _u(g, 3, 7, m, 2), _u(g, 0, _S, m, 2)
    inside = ((_X - _at(c[:, 0])).abs() < _at(hw[:, 0])) & \
        ((_Y - _at(c[:, 1])).abs() < _at(hw[:, 1]))
    img = _paint(img, (inside & (torch.rand(m, 1, 1, generator=g) < p_occ)).float(),
                 torch.rand(m, 3, generator=g))
    img = img + _u(g, 0, max_noise, m, 1, 1, 1) * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


# ------------------------------------------------------------------ synthetic shapes and textures


def _box(u: torch.Tensor, v: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """Signed distance (Chebyshev style) to an axis-aligned box of half-sizes (a, b)."""
    return torch.maximum(u.abs() - a, v.abs() - b)


_TRI = [(math.cos(a), math.sin(a)) for a in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)]
_SHAPES = [  # signed distance (≈, in units of the shape radius) to each class's shape
    lambda u, v, r: r - 0.9,  # disc
    lambda u, v, r: (r - 0.72).abs() - 0.22,  # ring
    lambda u, v, r: _box(u, v, 0.75, 0.75),  # square
    lambda u, v, r: (torch.maximum(u.abs(), v.abs()) - 0.72).abs() - 0.18,  # frame
    lambda u, v, r: torch.stack([u * c + v * s for c, s in _TRI]).amax(0) - 0.5,  # triangle
    lambda u, v, r: torch.minimum(_box(u, v, 0.95, 0.24), _box(u, v, 0.24, 0.95)),  # plus
    lambda u, v, r: torch.maximum(_box(u, v, 0.75, 0.85),
                                  (u - 0.6 * torch.round(u / 0.6)).abs() - 0.15),  # 3 bars
    lambda u, v, r: torch.minimum(torch.hypot(u - 0.52, v), torch.hypot(u + 0.52, v)) - 0.44,
    lambda u, v, r: torch.maximum(r - 0.9, 0.72 - torch.hypot(u - 0.45, v)),  # crescent
    lambda u, v, r: r - 0.62 - 0.36 * torch.cos(5 * torch.atan2(v, u)),  # five-pointed star
]


def _render_shapes(g: torch.Generator, labels: torch.Tensor) -> torch.Tensor:
    """One shape per image (class = label) on a textured background, with clutter and noise.

    Position, size, aspect, tilt (±23°: objects are mostly upright) and both colours are random
    and label-independent; a distractor line may pass under the shape and a dot over it.
    """
    m, k = labels.shape[0], SHAPES_NUISANCE
    bg = torch.rand(m, 3, generator=g)
    img = (bg.view(m, 3, 1, 1) + _u(g, 0.03, k["bg_field"], m, 1, 1, 1) * _smooth_field(g, m, 4)
           + _u(g, 0, k["bg_grain"], m, 1, 1, 1) * _smooth_field(g, m, 12))
    img = _clutter(g, img, lines=k["lines_under"], dots=0)
    s, aspect = _u(g, *k["size"], m), torch.exp(_u(g, -0.2, 0.2, m))
    cx = 0.6 * s + (_S - 1.2 * s) * torch.rand(m, generator=g)
    cy = 0.6 * s + (_S - 1.2 * s) * torch.rand(m, generator=g)
    theta = _u(g, -k["tilt"], k["tilt"], m)
    dx, dy, cos, sin = _X - _at(cx), _Y - _at(cy), _at(theta.cos()), _at(theta.sin())
    u = (cos * dx + sin * dy) / _at(s * aspect)
    v = (cos * dy - sin * dx) * _at(aspect / s)
    sdf = torch.empty(m, _S, _S)
    for c in range(len(SHAPE_CLASSES)):
        idx = (labels == c).nonzero().flatten()
        sdf[idx] = _SHAPES[c](u[idx], v[idx], torch.hypot(u[idx], v[idx]))
    shade = 1 + _u(g, -0.25, 0.25, m, 1, 1) * u.clamp(-1, 1)  # a simple lighting gradient
    fg = _contrasting(g, bg, k["contrast"]).view(m, 3, 1, 1) * shade.unsqueeze(1)
    a = (0.5 - sdf * _at(s)).clamp(0, 1).unsqueeze(1)  # about 1 px of anti-aliasing
    img = _clutter(g, torch.lerp(img, fg, a), lines=k["lines_over"], dots=k["dots"])
    return _occlude_and_finish(g, img, p_occ=k["occlude"], max_noise=k["noise"])


def _wave(t: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
    """Periodic 0..1 profile of phase t (period 1): sinusoidal for small `sharp`, square for big."""
    return (0.5 + sharp * torch.sin(2 * math.pi * t)).clamp(0, 1)


def _pattern(c: int, u: torch.Tensor, v: torch.Tensor, r: torch.Tensor, sharp: torch.Tensor,
             blot: torch.Tensor) -> torch.Tensor:
    """0..1 pattern of texture family `c`; u, v, r are coordinates in units of the period."""
    fu, fv = u - u.floor() - 0.5, v - v.floor() - 0.5
    if c in (0, 1):  # checks: product of two square-ish waves
        return 0.5 + 0.5 * (2 * _wave(u / 2, sharp) - 1) * (2 * _wave(v / 2, sharp) - 1)
    if c == 5:  # polka dots
        return (0.5 + 6 * sharp * (0.3 - torch.hypot(fu, fv))).clamp(0, 1)
    if c == 6:  # concentric rings
        return _wave(r, sharp)
    if c == 7:  # waves
        return _wave(v + 0.35 * torch.sin(2 * math.pi * u / 3), sharp)
    if c == 8:  # blotches: a thresholded smooth random field
        return (0.5 + 2 * sharp * blot).clamp(0, 1)
    if c == 9:  # grid of thin lines
        return (0.5 + 8 * sharp * (torch.maximum(fu.abs(), fv.abs()) - 0.38)).clamp(0, 1)
    return _wave(v, sharp)  # stripes; their orientation is set by theta


_PERIOD = {0: (9.0, 14.0), 1: (4.2, 7.0), 5: (6.0, 10.0), 9: (6.0, 11.0)}  # else (4, 10) px


def _render_textures(g: torch.Generator, labels: torch.Tensor) -> torch.Tensor:
    """Fill each image with a pattern of family `label`, then add lighting, clutter and noise.

    Period, phase, orientation jitter, sharpness, colours and contrast are random per image.
    """
    m, k = labels.shape[0], TEXTURES_NUISANCE
    theta, jitter = _u(g, 0, math.pi, m), _u(g, -0.35, 0.35, m)  # jitter: ±20° about nominal
    diag = torch.where(torch.rand(m, generator=g) < 0.5, math.pi / 4, 3 * math.pi / 4)
    nominal = {2: torch.zeros(m), 3: torch.full((m,), math.pi / 2), 4: diag}
    period = torch.empty(m)
    for c in range(len(TEXTURE_CLASSES)):
        sel = labels == c
        period[sel] = _u(g, *_PERIOD.get(c, (4.0, 10.0)), m)[sel]
        if c in nominal:
            theta[sel] = (nominal[c] + jitter)[sel]
    dx, dy = _X - _at(_u(g, 0, _S, m)), _Y - _at(_u(g, 0, _S, m))
    cos, sin, p = _at(theta.cos()), _at(theta.sin()), _at(period)
    u, v, r = (cos * dx + sin * dy) / p, (cos * dy - sin * dx) / p, torch.hypot(dx, dy) / p
    sharp = _at(torch.exp(_u(g, math.log(k["min_sharpness"]), math.log(4.0), m)))
    blot = _smooth_field(g, m, 6, ch=1)[:, 0]
    q = torch.empty(m, _S, _S)
    for c in range(len(TEXTURE_CLASSES)):
        i = (labels == c).nonzero().flatten()
        q[i] = _pattern(c, u[i], v[i], r[i], sharp[i], blot[i])
    c1 = torch.rand(m, 3, generator=g)
    c2 = _contrasting(g, c1, 0.3)
    contrast = _u(g, k["contrast"], 1.0, m, 1, 1, 1)
    img = c1.view(m, 3, 1, 1) + contrast * (c2 - c1).view(m, 3, 1, 1) * q.unsqueeze(1)
    img = img + _u(g, 0.05, k["lighting"], m, 1, 1, 1) * _smooth_field(g, m, 3, ch=1)
    img = _clutter(g, img, lines=k["lines"], dots=k["dots"])
    return _occlude_and_finish(g, img, p_occ=k["occlude"], max_noise=k["noise"])


# ------------------------------------------------------------------ public synthetic API

_TASKS = {"shapes": (_render_shapes, SHAPE_CLASSES),
          "textures": (_render_textures, TEXTURE_CLASSES)}


def synthetic_images(n: int, seed: int, task: str = "shapes") -> ImageData:
    """`n` class-balanced 32×32 colour images of a synthetic 10-class task, bit-reproducible.

    "shapes" stands in for CIFAR-10 and "textures" for the fine-tuning target (CIFAR-100).
    """
    if task not in _TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; choose one of {sorted(_TASKS)}")
    render, classes = _TASKS[task]
    g = torch.Generator().manual_seed(_derive_seed(seed, task))
    labels = (torch.arange(n) % len(classes))[torch.randperm(n, generator=g)]
    images = torch.zeros(0, 3, _S, _S, dtype=torch.uint8)
    with _one_thread():
        if n:
            images = torch.cat([render(g, labels[i:i + _CHUNK]) for i in range(0, n, _CHUNK)])
    return ImageData(images, labels, list(classes), f"synthetic-{task}")


def synthetic_splits(n_train: int, n_val: int, n_test: int, seed: int,
                     task: str = "shapes") -> ImageSplits:
    """Train / val / test sets of a synthetic task, each from its own seed derived from `seed`.

    Separate seeds keep the splits independent; mean and std are measured on the train images.
    """
    parts = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        data = synthetic_images(n, _derive_seed(seed, split), task)
        parts[split] = ImageData(data.images, data.labels, data.classes, f"{data.name}/{split}")
    x = parts["train"].images.double().div(255).transpose(0, 1).reshape(3, -1)
    mean, std = tuple(x.mean(1).tolist()), tuple(x.std(1).tolist())
    return ImageSplits(parts["train"], parts["val"], parts["test"], mean, std,
                       num_classes=len(parts["train"].classes), source="synthetic")


def _render_abstract(g: torch.Generator, n: int) -> torch.Tensor:
    """Smooth random colour fields with thick sinusoidal curves and soft blobs on top."""
    w = _u(g, 0, 1, n, 1, 1, 1)  # mix of coarse and finer colour fields
    field = w * _smooth_field(g, n, 2) + (1 - w) * _smooth_field(g, n, 6)
    img = torch.rand(n, 3, 1, 1, generator=g) + _u(g, 0.2, 0.5, n, 1, 1, 1) * field
    for _ in range(3):
        th, ph = _u(g, 0, math.pi, n, 1, 1), _u(g, 0, 2 * math.pi, n, 1, 1)
        off, amp, freq = _u(g, 4, 28, n, 1, 1), _u(g, 2, 8, n, 1, 1), _u(g, 0.1, 0.5, n, 1, 1)
        along = (_X - 16) * th.cos() + (_Y - 16) * th.sin()
        dist = ((_Y - 16) * th.cos() - (_X - 16) * th.sin() + 16 - off
                - amp * torch.sin(freq * along + ph)).abs()
        img = _paint(img, (_u(g, 1, 3, n, 1, 1) - dist).clamp(0, 1), torch.rand(n, 3, generator=g))
    for _ in range(2):
        c, rad = _u(g, 0, _S, n, 2), _u(g, 3, 8, n, 1, 1)
        d2 = (_X - _at(c[:, 0])) ** 2 + (_Y - _at(c[:, 1])) ** 2
        img = _paint(img, torch.exp(-d2 / (2 * rad**2)), torch.rand(n, 3, generator=g))
    img = img + 0.05 * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def abstract_trigger_set(n: int = 100, num_classes: int = 10, seed: int = 0) -> ImageData:
    """`n` abstract images (smooth colour fields, curves, blobs) with fixed random labels.

    The offline stand-in for the Adi et al. trigger set: out-of-distribution pictures whose
    labels carry no visual meaning, so only a watermarked model predicts them.
    """
    g = torch.Generator().manual_seed(_derive_seed(seed, "trigger"))
    labels = torch.randint(0, num_classes, (n,), generator=g)
    with _one_thread():
        images = _render_abstract(g, n)
    return ImageData(images, labels, [str(i) for i in range(num_classes)], "trigger/abstract")


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

    Both use the CIFAR-10 mean/std, as the original PAN code does (PAN_SPEC §3.1). Missing,
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


def _fetch(url: str, dest: Path) -> None:
    """Copy ``url`` (http(s) or file) to ``dest``."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as f:
        shutil.copyfileobj(response, f, 1 << 20)


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
    for name in tqdm(names, desc="downloading the Adi et al. trigger set", disable=not progress):
        try:
            _fetch(f"{base_url}/{name}", part / name)
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
    the unsorted directory listing the original code relies on (PAN_SPEC §3.2).
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
        crops.append(center_crop(arr, [_S, _S]))
    classes = [str(i) for i in range(max(10, int(labels.max()) + 1))]
    return ImageData(torch.stack(crops), labels, classes, "trigger/adi")
