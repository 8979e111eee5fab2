"""Synthetic stand-ins for the image sets: two 10-class tasks and an abstract trigger set.

Procedurally drawn 32×32 colour images ("shapes" for CIFAR-10, "textures" for the fine-tuning
target), hard enough that a plain model does not reach 100 % and learnable in a few epochs;
every draw comes from a generator seeded by ``derive_seed``, so each set is bit-reproducible.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import torch
import torch.nn.functional as F

from .images import ImageData, ImageSplits
from .rng import derive_seed, one_thread
from .rng import uniform as _u

__all__ = [
    "SHAPES_NUISANCE",
    "SHAPE_CLASSES",
    "TEXTURES_NUISANCE",
    "TEXTURE_CLASSES",
    "abstract_trigger_set",
    "synthetic_images",
    "synthetic_splits",
]

_S = 32  # image side
SHAPE_CLASSES = ["disc", "ring", "square", "frame", "triangle",
                 "plus", "bars", "two discs", "crescent", "star"]
TEXTURE_CLASSES = ["coarse checks", "fine checks", "horizontal stripes", "vertical stripes",
                   "diagonal stripes", "polka dots", "concentric rings", "waves", "blotches",
                   "grid"]
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



# ------------------------------------------------------------------ drawing helpers


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
    g = torch.Generator().manual_seed(derive_seed(seed, task))
    labels = (torch.arange(n) % len(classes))[torch.randperm(n, generator=g)]
    images = torch.zeros(0, 3, _S, _S, dtype=torch.uint8)
    with one_thread():
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
        data = synthetic_images(n, derive_seed(seed, split), task)
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
    g = torch.Generator().manual_seed(derive_seed(seed, "trigger"))
    labels = torch.randint(0, num_classes, (n,), generator=g)
    with one_thread():
        images = _render_abstract(g, n)
    return ImageData(images, labels, [str(i) for i in range(num_classes)], "trigger/abstract")


