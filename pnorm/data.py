"""Image data for the book: real CIFAR-10/100 and the Adi et al. trigger set, plus synthetic stand-ins.

Everything is held as uint8 tensors (N×3×32×32) so that augmentation and normalisation run batched
on any device; every random draw goes through a `torch.Generator` seeded explicitly.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
SHAPE_CLASSES = ["disc", "ring", "square", "frame", "triangle",
                 "plus", "bars", "two discs", "crescent", "star"]
TEXTURE_CLASSES = ["coarse checks", "fine checks", "horizontal stripes", "vertical stripes",
                   "diagonal stripes", "polka dots", "concentric rings", "waves", "blotches", "grid"]
ADI_URL = "https://github.com/adiyoss/WatermarkNN (folder data/trigger_set)"
_SIZE = 32
K = dict(s_bg=0.2, s_tex=0.12, s_lu=3, s_lo=4.5, s_hi=11.0, s_con=0.35, s_lo2=1, s_dots=2, s_occ=0.25, s_noise=0.12, t_con=0.35, t_light=0.3, t_lines=2, t_dots=2, t_occ=0.3, t_noise=0.15, t_sharp=0.6)
_CHUNK = 1024


class DataNotFoundError(FileNotFoundError):
    """A dataset is missing or corrupt on disk; the message names the folder and how to get it.

    Raised instead of ever falling back silently to synthetic data.
    """


@dataclass(eq=False)
class ImageData:
    """A labelled image set held as tensors (uint8 N×3×32×32 images, int64 labels).

    Keeping raw uint8 pixels lets augmentation pad with true zeros before normalisation.
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
        """Return the images and labels at `indices` (an index tensor or a boolean mask).

        Used to carve validation splits and class subsets without copying the metadata by hand.
        """
        indices = torch.as_tensor(indices, device=self.labels.device)
        return ImageData(self.images[indices], self.labels[indices], list(self.classes), self.name)


@dataclass(eq=False)
class ImageSplits:
    """Train / validation / test sets with the normalisation constants that go with them.

    `source` ("synthetic" or "real") is printed by the chapters so a reader knows what ran.
    """

    train: ImageData
    val: ImageData
    test: ImageData
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int
    source: str


# ----------------------------------------------------------------------------- tensor helpers


def normalize(images_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Map uint8 images (…×3×H×W) to float32 `(x/255 - mean) / std`, on the images' device.

    Only uint8 is accepted so that already-scaled floats are never divided by 255 twice.
    """
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images, got {images_uint8.dtype}")
    m = torch.tensor(mean, dtype=torch.float32, device=images_uint8.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=images_uint8.device).view(-1, 1, 1)
    return (images_uint8.float() / 255.0 - m) / s


def _crop_flip(images: torch.Tensor, offsets_y: torch.Tensor, offsets_x: torch.Tensor,
               flips: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Crop each zero-padded image at (offsets_y, offsets_x), then mirror those with `flips`.

    The deterministic core of `augment_crop_flip`, split out so tests can check its semantics.
    """
    n, c, h, w = images.shape
    padded = images.new_zeros(n, c, h + 2 * padding, w + 2 * padding)
    padded[:, :, padding:padding + h, padding:padding + w] = images
    dev = images.device
    rows = offsets_y.to(dev).long()[:, None] + torch.arange(h, device=dev)
    col = torch.arange(w, device=dev)
    col = torch.where(flips.to(dev).bool()[:, None], w - 1 - col, col)
    cols = offsets_x.to(dev).long()[:, None] + col
    batch = torch.arange(n, device=dev)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # N×H×W×C (advanced dims first)
    return out.permute(0, 3, 1, 2).contiguous()


def augment_crop_flip(images: torch.Tensor, generator: torch.Generator,
                      padding: int = 4) -> torch.Tensor:
    """Random crop with zero padding plus random horizontal flip (p=0.5), batched, any dtype.

    Same semantics as torchvision RandomCrop(H, padding) + RandomHorizontalFlip applied to the
    unnormalised image; draws happen on the generator's device, then move to the images.
    """
    n = images.shape[0]
    gdev = generator.device
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=gdev)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=gdev)
    flips = torch.rand(n, generator=generator, device=gdev) < 0.5
    return _crop_flip(images, oy, ox, flips, padding)


def _derive_seed(seed: int, *parts: str) -> int:
    """A stable 63-bit seed from `seed` and labels such as the split name.

    Python's `hash` is salted per process, so a cryptographic digest keeps runs reproducible.
    """
    digest = hashlib.blake2b(f"{seed}/{'/'.join(parts)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _u(g: torch.Generator, lo: float, hi: float, *shape: int) -> torch.Tensor:
    """Uniform draws in [lo, hi) of the given shape (float32, CPU)."""
    return lo + (hi - lo) * torch.rand(*shape, generator=g)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Clamp a float image in [0, 1] and quantise it to uint8."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _coords(m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates (y, x), each 1×32×32, broadcastable over m images."""
    r = torch.arange(_SIZE, dtype=torch.float32) + 0.5
    return r.view(1, -1, 1).expand(1, _SIZE, _SIZE), r.view(1, 1, -1).expand(1, _SIZE, _SIZE)


def _smooth_field(g: torch.Tensor | torch.Generator, m: int, res: int, ch: int = 3) -> torch.Tensor:
    """A smooth random field (m×ch×32×32, zero mean, unit scale) by upsampling res×res noise."""
    low = torch.randn(m, ch, res, res, generator=g)
    return F.interpolate(low, size=(_SIZE, _SIZE), mode="bicubic", align_corners=False)


def _paint(img: torch.Tensor, mask: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Alpha-blend `colour` (m×3) onto `img` (m×3×H×W) where `mask` (m×H×W) is 1."""
    a = mask.unsqueeze(1)
    return img * (1 - a) + colour.view(-1, 3, 1, 1) * a


def _contrasting(g: torch.Generator, base: torch.Tensor, min_dist: float) -> torch.Tensor:
    """Random colours (m×3), inverted where they sit closer than `min_dist` to `base`."""
    col = torch.rand(base.shape, generator=g)
    close = (col - base).norm(dim=1, keepdim=True) < min_dist
    return torch.where(close, 1 - col, col)


def _clutter(g: torch.Generator, img: torch.Tensor, n_lines: int, n_dots: int) -> torch.Tensor:
    """Draw up to `n_lines` thin segments and `n_dots` small dots (each present with p=0.5)."""
    m = img.shape[0]
    y, x = _coords(m)
    for _ in range(n_lines):
        a, b = _u(g, 0, _SIZE, m, 2), _u(g, 0, _SIZE, m, 2)
        d = b - a
        t = (((x - a[:, 0, None, None]) * d[:, 0, None, None]
              + (y - a[:, 1, None, None]) * d[:, 1, None, None])
             / (d.pow(2).sum(1).view(-1, 1, 1) + 1e-6)).clamp(0, 1)
        dist = torch.hypot(x - a[:, 0, None, None] - t * d[:, 0, None, None],
                           y - a[:, 1, None, None] - t * d[:, 1, None, None])
        width = _u(g, 0.4, 0.9, m, 1, 1)
        on = (torch.rand(m, 1, 1, generator=g) < 0.5).float()
        img = _paint(img, (width + 0.5 - dist).clamp(0, 1) * on, torch.rand(m, 3, generator=g))
    for _ in range(n_dots):
        c = _u(g, 0, _SIZE, m, 2)
        dist = torch.hypot(x - c[:, 0, None, None], y - c[:, 1, None, None])
        rad = _u(g, 0.8, 1.6, m, 1, 1)
        on = (torch.rand(m, 1, 1, generator=g) < 0.5).float()
        img = _paint(img, (rad + 0.5 - dist).clamp(0, 1) * on, torch.rand(m, 3, generator=g))
    return img


def _occlude(g: torch.Generator, img: torch.Tensor, p: float) -> torch.Tensor:
    """With probability p per image, paint an axis-aligned rectangle of random colour on top."""
    m = img.shape[0]
    y, x = _coords(m)
    hw = _u(g, 3, 7, m, 2)
    c = _u(g, 0, _SIZE, m, 2)
    inside = ((x - c[:, 0, None, None]).abs() < hw[:, 0, None, None]) & \
             ((y - c[:, 1, None, None]).abs() < hw[:, 1, None, None])
    on = torch.rand(m, 1, 1, generator=g) < p
    return _paint(img, (inside & on).float(), torch.rand(m, 3, generator=g))


def _finish(g: torch.Generator, img: torch.Tensor, max_noise: float) -> torch.Tensor:
    """Add gaussian pixel noise with a per-image sigma in [0, max_noise] and quantise."""
    m = img.shape[0]
    sigma = _u(g, 0, max_noise, m, 1, 1, 1)
    return _to_uint8(img + sigma * torch.randn(img.shape, generator=g))


# ----------------------------------------------------------------------------- synthetic shapes


def _box(u: torch.Tensor, v: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """Chebyshev-style signed distance to an axis-aligned box of half-sizes (a, b)."""
    return torch.maximum(u.abs() - a, v.abs() - b)


def _triangle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed distance (up to scale) to an equilateral triangle of circumradius 1."""
    angles = (math.pi / 2, math.pi * 7 / 6, math.pi * 11 / 6)
    return torch.stack([u * math.cos(a) + v * math.sin(a) for a in angles]).amax(0) - 0.5


_SHAPE_SDF: list[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = [
    lambda u, v: torch.hypot(u, v) - 0.9,                                   # disc
    lambda u, v: (torch.hypot(u, v) - 0.72).abs() - 0.22,                   # ring
    lambda u, v: _box(u, v, 0.75, 0.75),                                    # square
    lambda u, v: (torch.maximum(u.abs(), v.abs()) - 0.72).abs() - 0.18,     # frame
    _triangle,                                                              # triangle
    lambda u, v: torch.minimum(_box(u, v, 0.95, 0.24), _box(u, v, 0.24, 0.95)),  # plus
    lambda u, v: torch.maximum(_box(u, v, 0.75, 0.85),
                               (u - 0.6 * torch.round(u / 0.6)).abs() - 0.15),   # bars
    lambda u, v: torch.minimum(torch.hypot(u - 0.52, v),
                               torch.hypot(u + 0.52, v)) - 0.44,            # two discs
    lambda u, v: torch.maximum(torch.hypot(u, v) - 0.9,
                               0.72 - torch.hypot(u - 0.45, v)),            # crescent
    lambda u, v: torch.hypot(u, v) - 0.62 - 0.36 * torch.cos(5 * torch.atan2(v, u)),  # star
]


def _render_shapes(g: torch.Generator, labels: torch.Tensor) -> torch.Tensor:
    """Draw one shape per image (class = `labels`) on a cluttered, noisy, textured background.

    Position, size, aspect, rotation and both colours are random and label-independent.
    """
    m = labels.shape[0]
    y, x = _coords(m)
    bg = torch.rand(m, 3, generator=g)
    img = bg.view(m, 3, 1, 1) + _u(g, 0.03, K['s_bg'], m, 1, 1, 1) * _smooth_field(g, m, 4)
    img = img + _u(g, 0, K['s_tex'], m, 1, 1, 1) * _smooth_field(g, m, 12)   # finer background texture
    img = _clutter(g, img, n_lines=K['s_lu'], n_dots=0)                         # clutter under the shape
    s = _u(g, K['s_lo'], K['s_hi'], m)
    aspect = torch.exp(_u(g, -0.2, 0.2, m))
    margin = 0.6 * s
    cx = margin + (_SIZE - 2 * margin) * torch.rand(m, generator=g)
    cy = margin + (_SIZE - 2 * margin) * torch.rand(m, generator=g)
    theta = _u(g, 0, 2 * math.pi, m)
    dx, dy = x - cx.view(-1, 1, 1), y - cy.view(-1, 1, 1)
    cos, sin = theta.cos().view(-1, 1, 1), theta.sin().view(-1, 1, 1)
    sv, av = s.view(-1, 1, 1), aspect.view(-1, 1, 1)
    u = (cos * dx + sin * dy) / (sv * av)
    v = (-sin * dx + cos * dy) * av / sv
    sdf = torch.empty(m, _SIZE, _SIZE)
    for c, fn in enumerate(_SHAPE_SDF):
        idx = (labels == c).nonzero().flatten()
        if idx.numel():
            sdf[idx] = fn(u[idx], v[idx])
    mask = (0.5 - sdf * sv).clamp(0, 1)                                 # ~1 px anti-aliased edge
    fg = _contrasting(g, bg, K['s_con'])
    shade = 1 + _u(g, -0.25, 0.25, m, 1, 1) * u.clamp(-1, 1)            # simple lighting gradient
    a = mask.unsqueeze(1)
    img = img * (1 - a) + (fg.view(m, 3, 1, 1) * shade.unsqueeze(1)) * a
    img = _clutter(g, img, n_lines=K['s_lo2'], n_dots=K['s_dots'])                         # clutter over the shape
    img = _occlude(g, img, p=K['s_occ'])
    return _finish(g, img, max_noise=K['s_noise'])


# ----------------------------------------------------------------------------- synthetic textures


def _wave(t: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
    """A periodic 0..1 profile of phase t (period 1): sinusoidal for small `sharp`, square for big."""
    return (0.5 + sharp * torch.sin(2 * math.pi * t)).clamp(0, 1)


def _render_textures(g: torch.Generator, labels: torch.Tensor) -> torch.Tensor:
    """Fill each image with a pattern of family `labels`, then add the shared nuisances.

    Period, phase, orientation jitter, sharpness, colours and coverage are random per image.
    """
    m = labels.shape[0]
    y, x = _coords(m)
    col = lambda t: t.view(-1, 1, 1)  # noqa: E731
    period = torch.empty(m)
    theta = _u(g, 0, math.pi, m)                           # default: any orientation
    jitter = _u(g, -0.35, 0.35, m)                         # ±20° around the nominal orientation
    nominal = {2: 0.0, 3: math.pi / 2}
    for c in range(10):
        sel = labels == c
        lo, hi = {0: (9.0, 14.0), 1: (4.2, 7.0), 5: (6.0, 10.0), 9: (6.0, 11.0)}.get(c, (4.0, 10.0))
        period[sel] = _u(g, lo, hi, m)[sel]
        if c in nominal:
            theta[sel] = nominal[c] + jitter[sel]
    diag = torch.where(torch.rand(m, generator=g) < 0.5, math.pi / 4, 3 * math.pi / 4)
    theta = torch.where(labels == 4, diag + 0.75 * jitter, theta)
    ox, oy = _u(g, 0, _SIZE, m), _u(g, 0, _SIZE, m)
    dx, dy = x - col(ox), y - col(oy)
    u = (col(theta.cos()) * dx + col(theta.sin()) * dy) / col(period)
    v = (-col(theta.sin()) * dx + col(theta.cos()) * dy) / col(period)
    sharp = col(torch.exp(_u(g, math.log(K['t_sharp']), math.log(4.0), m)))
    frac = lambda t: t - torch.floor(t)  # noqa: E731
    q = torch.empty(m, _SIZE, _SIZE)
    blot = _smooth_field(g, m, 6, ch=1)[:, 0]
    pats = {
        2: lambda i: _wave(v[i], sharp[i]),
        5: lambda i: (sharp[i] * (0.3 - torch.hypot(frac(u[i]) - 0.5, frac(v[i]) - 0.5)) * 6
                      + 0.5).clamp(0, 1),
        6: lambda i: _wave(torch.hypot(dx[i], dy[i]) / col(period[i]), sharp[i]),
        7: lambda i: _wave(v[i] + 0.35 * torch.sin(2 * math.pi * u[i] / 3), sharp[i]),
        8: lambda i: (0.5 + sharp[i] * 2 * blot[i]).clamp(0, 1),
        9: lambda i: (sharp[i] * (torch.maximum((frac(u[i]) - 0.5).abs(), (frac(v[i]) - 0.5).abs())
                                  - 0.38) * 8 + 0.5).clamp(0, 1),
    }
    for c in range(10):
        idx = (labels == c).nonzero().flatten()
        if not idx.numel():
            continue
        if c in (0, 1):
            a = _wave(u[idx] / 2, sharp[idx]) * 2 - 1
            b = _wave(v[idx] / 2, sharp[idx]) * 2 - 1
            q[idx] = 0.5 + 0.5 * (a * b)
        else:
            q[idx] = pats.get(c, pats[2])(idx)
    c1 = torch.rand(m, 3, generator=g)
    c2 = _contrasting(g, c1, 0.3)
    contrast = _u(g, K['t_con'], 1.0, m, 1, 1, 1)
    img = c1.view(m, 3, 1, 1) + contrast * (c2 - c1).view(m, 3, 1, 1) * q.unsqueeze(1)
    light = _u(g, 0.05, K['t_light'], m, 1, 1, 1) * _smooth_field(g, m, 3, ch=1)
    img = img + light
    img = _clutter(g, img, n_lines=K['t_lines'], n_dots=K['t_dots'])
    img = _occlude(g, img, p=K['t_occ'])
    return _finish(g, img, max_noise=K['t_noise'])


# ----------------------------------------------------------------------------- public synthetic API

_RENDER = {"shapes": (_render_shapes, SHAPE_CLASSES), "textures": (_render_textures, TEXTURE_CLASSES)}


def synthetic_images(n: int, seed: int, task: str = "shapes") -> ImageData:
    """Generate `n` class-balanced 32×32 colour images of a synthetic 10-class task.

    "shapes" stands in for CIFAR-10 and "textures" for the fine-tuning target; the same
    (n, seed, task) always gives bit-identical tensors.
    """
    if task not in _RENDER:
        raise ValueError(f"unknown synthetic task {task!r}; choose one of {sorted(_RENDER)}")
    render, classes = _RENDER[task]
    g = torch.Generator().manual_seed(_derive_seed(seed, task))
    labels = (torch.arange(n) % len(classes))[torch.randperm(n, generator=g)]
    chunks = [render(g, labels[i:i + _CHUNK]) for i in range(0, n, _CHUNK)]
    images = torch.cat(chunks) if chunks else torch.zeros(0, 3, _SIZE, _SIZE, dtype=torch.uint8)
    return ImageData(images, labels, list(classes), f"synthetic-{task}")


def _mean_std(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1] scale (float64 accumulation)."""
    x = images.double().div(255).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1).tolist())


def synthetic_splits(n_train: int, n_val: int, n_test: int, seed: int,
                     task: str = "shapes") -> ImageSplits:
    """Train / val / test sets of a synthetic task, each drawn from its own derived seed.

    Disjoint seeds keep the splits independent; mean/std are measured on the train images.
    """
    parts = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        data = synthetic_images(n, _derive_seed(seed, split), task)
        data.name = f"synthetic-{task}/{split}"
        parts[split] = data
    mean, std = _mean_std(parts["train"].images)
    return ImageSplits(parts["train"], parts["val"], parts["test"], mean, std,  # type: ignore[arg-type]
                       num_classes=len(parts["train"].classes), source="synthetic")


def abstract_trigger_set(n: int = 100, num_classes: int = 10, seed: int = 0) -> ImageData:
    """`n` abstract images (smooth colour fields, curves, blobs) with fixed random labels.

    The offline stand-in for the Adi et al. trigger set: out-of-distribution pictures whose
    labels carry no visual meaning, so only a watermarked model predicts them.
    """
    g = torch.Generator().manual_seed(_derive_seed(seed, "trigger"))
    labels = torch.randint(0, num_classes, (n,), generator=g)
    res = int(torch.randint(2, 7, (1,), generator=g))
    img = torch.rand(n, 3, 1, 1, generator=g) + _u(g, 0.2, 0.5, n, 1, 1, 1) * _smooth_field(g, n, res)
    y, x = _coords(n)
    for _ in range(3):                                   # thick random sinusoidal curves
        th, ph = _u(g, 0, math.pi, n, 1, 1), _u(g, 0, 2 * math.pi, n, 1, 1)
        off, amp, freq = _u(g, 4, 28, n, 1, 1), _u(g, 2, 8, n, 1, 1), _u(g, 0.1, 0.5, n, 1, 1)
        along = (x - 16) * th.cos() + (y - 16) * th.sin()
        across = -(x - 16) * th.sin() + (y - 16) * th.cos() + 16
        dist = (across - off - amp * torch.sin(freq * along + ph)).abs()
        img = _paint(img, (_u(g, 1, 3, n, 1, 1) - dist).clamp(0, 1), torch.rand(n, 3, generator=g))
    for _ in range(2):                                   # soft gaussian blobs
        c, r = _u(g, 0, _SIZE, n, 2), _u(g, 3, 8, n, 1, 1)
        d2 = (x - c[:, 0, None, None]) ** 2 + (y - c[:, 1, None, None]) ** 2
        img = _paint(img, torch.exp(-d2 / (2 * r**2)), torch.rand(n, 3, generator=g))
    img = img + 0.05 * torch.randn(img.shape, generator=g)
    return ImageData(_to_uint8(img), labels, [str(i) for i in range(num_classes)], "trigger/abstract")


# ----------------------------------------------------------------------------- real data


def _cifar_class(name: str):  # noqa: ANN202 - returns a torchvision dataset class
    """The torchvision dataset class for "cifar10" or "cifar100"."""
    from torchvision import datasets

    classes = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}
    if name not in classes:
        raise ValueError(f"unknown dataset {name!r}; choose 'cifar10' or 'cifar100'")
    return classes[name]


def _check_cifar_files(cls, folder: Path, how: str) -> None:  # noqa: ANN001
    """Raise DataNotFoundError if files are missing, or fail torchvision's md5 check.

    Uses the md5 sums stored on the torchvision class, i.e. exactly what torchvision compares.
    """
    from torchvision.datasets.utils import check_integrity

    files = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    missing = [f for f, _ in files if not (folder / f).is_file()]
    if missing:
        raise DataNotFoundError(f"{cls.__name__} not found: looked in {folder} and "
                                f"{'it does not exist' if not folder.is_dir() else f'{missing} are missing'}. {how}")
    bad = [f for f, md5 in files if not check_integrity(str(folder / f), md5)]
    if bad:
        raise DataNotFoundError(f"the files {bad} in {folder} failed torchvision's checksum (md5) "
                                f"check: they are corrupt or partial. Delete {folder} and download "
                                f"again. {how}")


def load_cifar(root: str | Path, name: str = "cifar10", download: bool = False,
               n_val: int = 5000, seed: int = 0) -> ImageSplits:
    """Load CIFAR-10/100 via torchvision as uint8 tensors, with a seeded held-out val split.

    Both datasets use the CIFAR-10 mean/std, as the original PAN code does (PAN_SPEC §3.1).
    Missing, undownloadable or corrupt files raise DataNotFoundError - never a silent fallback.
    """
    cls = _cifar_class(name)
    root = Path(root).expanduser()
    folder = root / cls.base_folder
    how = (f"Get it with load_cifar({str(root)!r}, {name!r}, download=True) on a machine with "
           f"internet (PNORM_DATA=real selects real data in the book), or fetch {cls.url} and "
           f"extract it into {root}; PNORM_DATA=synthetic runs the book on synthetic stand-ins.")
    if download:
        try:
            cls(str(root), train=True, download=True)
        except Exception as err:  # network errors come in many types (URLError, OSError, ...)
            raise DataNotFoundError(f"downloading {name} into {root} failed ({err!r}). {how}") from err
    _check_cifar_files(cls, folder, how)
    train_set, test_set = cls(str(root), train=True), cls(str(root), train=False)

    def as_data(ds, split: str) -> ImageData:  # noqa: ANN001
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return ImageData(images, torch.as_tensor(ds.targets, dtype=torch.int64),
                         list(ds.classes), f"{name}/{split}")

    full, test = as_data(train_set, "train"), as_data(test_set, "test")
    if not 0 <= n_val < len(full):
        raise ValueError(f"n_val={n_val} must be in [0, {len(full)})")
    perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))
    train, val = full.subset(perm[n_val:].sort().values), full.subset(perm[:n_val].sort().values)
    val.name = f"{name}/val"
    return ImageSplits(train, val, test, CIFAR_MEAN, CIFAR_STD, len(full.classes), "real")


def load_adi_trigger_set(folder: str | Path, labels_file: str | Path | None = None) -> ImageData:
    """Load the Adi et al. trigger set (`pics/1.jpg …` + `labels-cifar.txt`), center-cropped to 32.

    Files are paired with label lines by the numeric order of their names (1, 2, …, 10), not
    by the unsorted directory listing the original code relies on (PAN_SPEC §3.2).
    """
    from PIL import Image
    from torchvision.transforms.functional import center_crop

    folder = Path(folder).expanduser()
    pics = folder / "pics" if (folder / "pics").is_dir() else folder
    labels_path = Path(labels_file) if labels_file is not None else folder / "labels-cifar.txt"
    how = f"Get it from {ADI_URL}: copy pics/ and labels-cifar.txt into {folder}."
    if not folder.is_dir():
        raise DataNotFoundError(f"trigger set not found: {folder} does not exist. {how}")
    if not labels_path.is_file():
        raise DataNotFoundError(f"trigger-set labels not found: {labels_path} is missing. {how}")
    files = [p for p in pics.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    if not files:
        raise DataNotFoundError(f"no .jpg/.png images in {pics}. {how}")
    bad = sorted(p.name for p in files if not p.stem.isdigit())
    if bad:
        raise ValueError(f"trigger images must be named by number (1.jpg, 2.jpg, …); in {pics}: {bad}")
    files.sort(key=lambda p: int(p.stem))
    lines = [ln.strip() for ln in labels_path.read_text().splitlines() if ln.strip()]
    try:
        labels = torch.tensor([int(ln) for ln in lines], dtype=torch.int64)
    except ValueError as err:
        raise ValueError(f"{labels_path} must hold one integer label per line") from err
    if len(labels) != len(files):
        raise ValueError(f"{len(files)} images in {pics} but {len(labels)} labels in {labels_path}")
    if (labels < 0).any():
        raise ValueError(f"negative label in {labels_path}")
    crops = []
    for p in files:
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGB"))
        crops.append(center_crop(torch.from_numpy(arr.copy()).permute(2, 0, 1), [_SIZE, _SIZE]))
    classes = [str(i) for i in range(max(10, int(labels.max()) + 1))]
    return ImageData(torch.stack(crops), labels, classes, "trigger/adi")
