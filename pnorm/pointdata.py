"""Point-cloud data: ModelNet40 (``modelnet40_normal_resampled``), synthetic solids, 3-D triggers.

Clouds are float32 tensors N×3×P (channels first, what PointNet's Conv1d layers take), centred
and scaled into the unit sphere; every random draw goes through a seeded ``torch.Generator``.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import DataNotFoundError, _derive_seed, _fetch, _one_thread
from .vault import atomic_torch_save

__all__ = [
    "MODELNET40_FOLDER",
    "MODELNET40_SHA256",
    "MODELNET40_URLS",
    "OBJECT_CLASSES",
    "SOLID_CLASSES",
    "PointData",
    "PointSplits",
    "augment_points",
    "download_modelnet40",
    "load_modelnet40",
    "normalize_clouds",
    "point_trigger_set",
    "synthetic_point_splits",
    "synthetic_points",
]

Sampling = Literal["first", "random"]
MODELNET40_FOLDER = "modelnet40_normal_resampled"
MODELNET40_URLS: tuple[str, ...] = (
    "https://shapenet.cs.stanford.edu/media/modelnet40_normal_resampled.zip",
)
"""Where ``modelnet40_normal_resampled.zip`` (≈1.6 GB) has been published, tried in order.

The Stanford address is the one the PointNet++ and PAN READMEs give; it has been unreliable
(certificate errors, outages). A manual copy is also published on Kaggle
(kaggle.com/datasets/chenxaoyu/modelnet-normal-resampled; needs a login): unzip it so that
``<root>/modelnet40_normal_resampled/modelnet40_shape_names.txt`` exists.
"""
MODELNET40_SHA256: str | None = None
"""SHA-256 of the zip. Not recorded: no verified copy was reachable when this was written.

``download_modelnet40`` refuses to extract an unverified archive; pass ``sha256=`` (the digest
of a copy you trust) or set this constant once a download has been checked.
"""
SOLID_CLASSES = ["sphere", "cube", "cylinder", "cone", "torus",
                 "pyramid", "capsule", "spring", "dumbbell", "octahedron"]
OBJECT_CLASSES = ["table", "chair", "lamp", "mushroom", "bottle",
                  "mug", "arrow", "tree", "snowman", "cross"]
# How hard the synthetic tasks are, in one place (read-only: edit here, so the source fingerprint
# of cached models sees it). Plain PointNet, width 0.25, 256 points, 5k clouds, 6 Adam epochs:
# ~72 % (solids) / ~76 % (objects) test accuracy, still rising.
POINTS_NUISANCE = MappingProxyType(dict(
    log_scale=0.3, occlude_p=0.3, occlude_frac=(0.1, 0.3), outliers=0.03, jitter=(0.005, 0.02)))
_CHUNK = 512  # clouds generated at a time (bounds memory; fixed, so results do not depend on it)
_CACHE_FORMAT, _CACHE_VERSION = "pnorm-modelnet40", 1


@dataclass(eq=False)
class PointData:
    """A labelled set of point clouds: float32 points N×3×P (xyz channels first), int64 labels.

    Channels-first is the layout PointNet's per-point Conv1d layers consume without a transpose.
    """

    points: torch.Tensor
    labels: torch.Tensor
    classes: list[str] = field(default_factory=list)
    name: str = ""

    def __post_init__(self) -> None:
        p = self.points
        if p.dtype != torch.float32 or p.dim() != 3 or p.shape[1] != 3:
            raise ValueError(f"{self.name}: points must be float32 N×3×P, "
                             f"got {p.dtype} {tuple(p.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != p.shape[:1]:
            raise ValueError(f"{self.name}: labels must be int64 of length {len(p)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def n_points(self) -> int:
        return int(self.points.shape[2])

    def subset(self, indices: torch.Tensor) -> PointData:
        """The clouds and labels at ``indices`` (an index tensor or a boolean mask)."""
        idx = torch.as_tensor(indices, device=self.labels.device)
        return PointData(self.points[idx], self.labels[idx], list(self.classes), self.name)


@dataclass(eq=False)
class PointSplits:
    """Train / validation / test clouds; ``source`` ("synthetic" or "real") says what ran."""

    train: PointData
    val: PointData
    test: PointData
    num_classes: int
    source: str

    # Clouds are normalised one by one (``normalize_clouds``), so there are no dataset constants;
    # these match ``ImageSplits`` so training and evaluation code can pass them along unchanged.
    mean = None
    std = None


# ------------------------------------------------------------------ normalisation, augmentation


def normalize_clouds(points: torch.Tensor) -> torch.Tensor:
    """Centre each cloud (…×3×P) on its centroid and scale it so the farthest point has norm 1.

    The usual ModelNet preprocessing (the original code's data source is not shipped, §6.1).
    """
    centred = points - points.mean(-1, keepdim=True)
    radius = centred.norm(dim=-2).amax(-1).clamp_min(1e-12)
    return centred / radius[..., None, None]


def augment_points(points: torch.Tensor, generator: torch.Generator,
                   max_dropout: float = 0.875, scale: tuple[float, float] = (0.8, 1.25),
                   shift: float = 0.1) -> torch.Tensor:
    """The original's training augmentation, batched (PAN_SPEC §6.1): point dropout, scale, shift.

    Per cloud a ratio ~U(0, max_dropout) of points is overwritten with the cloud's first point,
    then a scale ~U(scale) and a shift ~U(-shift, shift) per axis; no rotation, no jitter.
    """
    n, _, p = points.shape
    gdev = generator.device
    ratio = torch.rand(n, 1, generator=generator, device=gdev) * max_dropout
    drop = (torch.rand(n, p, generator=generator, device=gdev) <= ratio).to(points.device)
    s = scale[0] + (scale[1] - scale[0]) * torch.rand(n, 1, 1, generator=generator, device=gdev)
    t = shift * (2 * torch.rand(n, 3, 1, generator=generator, device=gdev) - 1)
    out = torch.where(drop[:, None, :], points[:, :, :1], points)
    return out * s.to(points.device) + t.to(points.device)


# ------------------------------------------------------------------ surface samplers
# Each returns m×p×3 points; parameters are m×1 tensors or floats, so they vary per cloud.


def _u(g: torch.Generator, lo: float, hi: float, *shape: int) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=g)


def _xyz(x, y, z) -> torch.Tensor:
    """Stack coordinates (floats or tensors that broadcast) into a trailing xyz dimension."""
    xyz = [torch.as_tensor(t, dtype=torch.float32) for t in (x, y, z)]
    return torch.stack(torch.broadcast_tensors(*xyz), -1)


def _col(x) -> torch.Tensor:
    """A per-cloud parameter (float or m×1) shaped to scale m×p×3 points."""
    t = torch.as_tensor(x, dtype=torch.float32)
    return t.unsqueeze(-1) if t.dim() else t


def _sphere(g, m, p, r=1.0, z0=0.0, hemi=0):
    v = torch.randn(m, p, 3, generator=g)
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    if hemi:  # keep the half with sign(z) == hemi
        v = torch.cat([v[..., :2], hemi * v[..., 2:].abs()], -1)
    return v * _col(r) + _xyz(0.0, 0.0, z0)


def _tube(g, m, p, r, z_lo, z_hi, r_top=None):
    """Side of a cylinder (or a cone frustum when ``r_top`` differs) along z, area-uniform."""
    r_top = r if r_top is None else r_top
    t, th = torch.rand(m, p, generator=g), _u(g, 0, 2 * math.pi, m, p)
    r, r_top = torch.as_tensor(r), torch.as_tensor(r_top)
    if torch.allclose(r + 0 * r_top, r_top + 0 * r):
        rad = r + 0 * t
    else:  # radius linear in height: invert the area CDF (∝ r² between the two radii)
        rad = torch.sqrt(r**2 + t * (r_top**2 - r**2))
        t = (rad - r) / (r_top - r)
    z = torch.as_tensor(z_lo) + t * (torch.as_tensor(z_hi) - torch.as_tensor(z_lo))
    return _xyz(rad * th.cos(), rad * th.sin(), z)


def _disc(g, m, p, r, z0):
    rad = torch.as_tensor(r) * torch.rand(m, p, generator=g).sqrt()
    th = _u(g, 0, 2 * math.pi, m, p)
    return _xyz(rad * th.cos(), rad * th.sin(), torch.as_tensor(z0) + 0 * rad)


def _box(g, m, p, hx, hy, hz, cx=0.0, cy=0.0, cz=0.0):
    """Surface of an axis-aligned box (half-sizes h, centre c), faces chosen by area."""
    half = _xyz(hx, hy, hz).expand(m, 1, 3)
    areas = torch.stack([half[..., 1] * half[..., 2], half[..., 0] * half[..., 2],
                         half[..., 0] * half[..., 1]], -1)
    cum = areas.cumsum(-1) / areas.sum(-1, keepdim=True)
    axis = (torch.rand(m, p, 1, generator=g) > cum[..., :2]).sum(-1, keepdim=True)
    pts = (2 * torch.rand(m, p, 3, generator=g) - 1) * half
    sign = torch.where(torch.rand(m, p, 1, generator=g) < 0.5, -1.0, 1.0)
    pts = torch.where(torch.arange(3) == axis, sign * half, pts)
    return pts + _xyz(cx, cy, cz)


def _torus(g, m, p, big, small, z0=0.0):
    th, ph = _u(g, 0, 2 * math.pi, m, p), _u(g, 0, 2 * math.pi, m, p)
    ring = torch.as_tensor(big) + torch.as_tensor(small) * ph.cos()
    return _xyz(ring * th.cos(), ring * th.sin(), torch.as_tensor(small) * ph.sin() + z0)


def _triangles(g, m, p, verts: torch.Tensor, faces: list[tuple[int, int, int]]):
    """Area-weighted samples on triangles (vertices m×V×3 or V×3)."""
    v = verts.expand(m, *verts.shape[-2:])
    a, b, c = (v[:, [f[i] for f in faces]] for i in range(3))  # m×F×3 each
    area = torch.linalg.cross(b - a, c - a).norm(dim=-1)
    pick = torch.multinomial(area, p, replacement=True, generator=g)[..., None].expand(m, p, 3)
    a, b, c = (t.gather(1, pick) for t in (a, b, c))
    s, t = torch.rand(m, p, 1, generator=g), torch.rand(m, p, 1, generator=g)
    flip = s + t > 1
    s, t = torch.where(flip, 1 - s, s), torch.where(flip, 1 - t, t)
    return a + s * (b - a) + t * (c - a)


def _mix(g, m: int, p: int, parts: list[tuple[torch.Tensor | float, torch.Tensor]]):
    """Per point, take one part's candidate point with probability ∝ the part's weight (area)."""
    w = torch.stack([torch.as_tensor(wt, dtype=torch.float32).reshape(-1).expand(m)
                     for wt, _ in parts], -1)
    pick = torch.multinomial(w, p, replacement=True, generator=g)  # m×p
    cand = torch.stack([pts for _, pts in parts], 2)  # m×p×K×3
    return cand.gather(2, pick[..., None, None].expand(m, p, 1, 3)).squeeze(2)


_PI = math.pi
_PYRAMID = ([(-1, -1, -0.6), (1, -1, -0.6), (1, 1, -0.6), (-1, 1, -0.6), (0, 0, 1)],
            [(0, 1, 2), (0, 2, 3), (0, 1, 4), (1, 2, 4), (2, 3, 4), (3, 0, 4)])
_OCTA = ([(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)],
         [(a, b, c) for a in (0, 1) for b in (2, 3) for c in (4, 5)])


def _solid(c: int, g: torch.Generator, m: int, p: int) -> torch.Tensor:
    """Surface samples of solid class ``c`` (SOLID_CLASSES) with random per-cloud proportions."""
    r1 = _u(g, 0.45, 0.8, m, 1)
    if c == 0:
        return _sphere(g, m, p)
    if c == 1:
        return _box(g, m, p, 1.0, _u(g, 0.85, 1.15, m, 1), _u(g, 0.85, 1.15, m, 1))
    if c == 2:
        return _mix(g, m, p, [(4 * _PI * r1, _tube(g, m, p, r1, -1, 1)),
                              (_PI * r1**2, _disc(g, m, p, r1, 1)),
                              (_PI * r1**2, _disc(g, m, p, r1, -1))])
    if c == 3:
        r = r1 + 0.2
        return _mix(g, m, p, [(_PI * r * torch.hypot(r, torch.tensor(2.0)),
                               _tube(g, m, p, r, -1, 1, 0 * r)),
                              (_PI * r**2, _disc(g, m, p, r, -1))])
    if c == 4:
        return _torus(g, m, p, 1.0, _u(g, 0.2, 0.4, m, 1))
    if c == 5:
        v, f = _PYRAMID
        return _triangles(g, m, p, torch.tensor(v, dtype=torch.float32), f)
    if c == 6:
        r, h = r1 * 0.7, _u(g, 0.5, 0.9, m, 1)
        return _mix(g, m, p, [(4 * _PI * r * h, _tube(g, m, p, r, -h, h)),
                              (2 * _PI * r**2, _sphere(g, m, p, r, h, 1)),
                              (2 * _PI * r**2, _sphere(g, m, p, r, -h, -1))])
    if c == 7:
        turns, tube = _u(g, 2.5, 4.0, m, 1), _u(g, 0.08, 0.14, m, 1)
        t = torch.rand(m, p, generator=g)
        ang = 2 * _PI * turns * t
        centre = _xyz(0.8 * ang.cos(), 0.8 * ang.sin(), 2 * t - 1)
        return centre + tube[..., None] * _sphere(g, m, p)
    if c == 8:
        rb, rs = _u(g, 0.35, 0.5, m, 1), _u(g, 0.08, 0.15, m, 1)
        return _mix(g, m, p, [(4 * _PI * rb**2, _sphere(g, m, p, rb, 1 - rb)),
                              (4 * _PI * rb**2, _sphere(g, m, p, rb, rb - 1)),
                              (4 * _PI * rs, _tube(g, m, p, rs, -1, 1))])
    v, f = _OCTA
    return _triangles(g, m, p, torch.tensor(v, dtype=torch.float32), f)


def _object(c: int, g: torch.Generator, m: int, p: int) -> torch.Tensor:
    """Surface samples of object class ``c`` (OBJECT_CLASSES), each a few parts."""
    leg = _u(g, 0.05, 0.1, m, 1)
    if c in (0, 1):  # table / chair: a plate on four legs (+ a back for the chair)
        top, lx = _u(g, 0.5, 0.8, m, 1), _u(g, 0.5, 0.8, m, 1)
        legs = [(8 * leg * (1 + top), _box(g, m, p, leg, leg, (1 + top) / 2, sx * (lx - leg),
                                     sy * (lx - leg), (top - 1) / 2))
                for sx in (-1, 1) for sy in (-1, 1)]
        parts = [(8 * lx * lx, _box(g, m, p, lx, lx, 0.06, 0, 0, top)), *legs]
        if c == 1:
            parts.append((4 * lx, _box(g, m, p, 0.06, lx, 0.5, -lx, 0, top + 0.5)))
        return _mix(g, m, p, parts)
    if c == 2:  # lamp: base disc, pole, open conical shade
        return _mix(g, m, p, [(1.0, _disc(g, m, p, 0.5, -1)), (0.8, _tube(g, m, p, 0.05, -1, 0.5)),
                              (2.0, _tube(g, m, p, _u(g, 0.5, 0.7, m, 1), 0.2, 1.0, 0.25))])
    if c == 3:  # mushroom: stem and a domed cap
        cap = _u(g, 0.8, 1.0, m, 1)
        return _mix(g, m, p, [(1.0, _tube(g, m, p, 0.25, -1, 0.1)),
                              (2 * _PI * cap**2, _sphere(g, m, p, cap, 0.1, 1)),
                              (_PI * cap**2, _disc(g, m, p, cap, 0.1))])
    if c == 4:  # bottle: body, shoulder, neck
        r = _u(g, 0.35, 0.5, m, 1)
        return _mix(g, m, p, [(4 * r, _tube(g, m, p, r, -1, 0.3)), (r, _disc(g, m, p, r, -1)),
                              (r, _tube(g, m, p, r, 0.3, 0.6, 0.12)),
                              (0.4, _tube(g, m, p, 0.12, 0.6, 1.0))])
    if c == 5:  # mug: open cylinder with a bottom and a handle
        r = _u(g, 0.5, 0.7, m, 1)
        handle = _torus(g, m, p, 0.35, 0.06)[..., [0, 2, 1]] + _xyz(r + 0.1, 0.0, 0.0)
        return _mix(g, m, p, [(8 * r, _tube(g, m, p, r, -0.7, 0.7)), (_PI * r**2,
                              _disc(g, m, p, r, -0.7)), (0.6, handle)])
    if c == 6:  # arrow: thin shaft and a cone head
        return _mix(g, m, p, [(1.0, _tube(g, m, p, leg, -1, 0.4)),
                              (1.0, _tube(g, m, p, 0.3, 0.4, 1.0, 0.0)),
                              (0.3, _disc(g, m, p, 0.3, 0.4))])
    if c == 7:  # tree: trunk and a conical crown
        crown = _u(g, 0.5, 0.8, m, 1)
        return _mix(g, m, p, [(0.6, _tube(g, m, p, 0.12, -1, -0.4)),
                              (_PI * crown * 1.5, _tube(g, m, p, crown, -0.4, 1.0, 0.0)),
                              (_PI * crown**2, _disc(g, m, p, crown, -0.4))])
    if c == 8:  # snowman: three stacked spheres
        return _mix(g, m, p, [(1.0, _sphere(g, m, p, 0.45, -0.55)),
                              (0.6, _sphere(g, m, p, 0.33, 0.2)),
                              (0.35, _sphere(g, m, p, 0.22, 0.75))])
    return _mix(g, m, p, [(1.0, _box(g, m, p, 1.0, leg, leg)), (1.0, _box(g, m, p, leg, 1.0, leg)),
                          (1.0, _box(g, m, p, leg, leg, 1.0))])  # cross: three orthogonal bars


def _random_rotations(g: torch.Generator, m: int) -> torch.Tensor:
    """m rotation matrices, uniform on SO(3) (from normalised random quaternions)."""
    q = torch.randn(m, 4, generator=g)
    w, x, y, z = (q / q.norm(dim=1, keepdim=True)).unbind(1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], 1).view(m, 3, 3)


def _pose_and_noise(g: torch.Generator, pts: torch.Tensor) -> torch.Tensor:
    """Anisotropic scale, random rotation, partial occlusion, outliers, jitter; then normalise.

    Occlusion removes the points beyond a random plane and refills them with copies of kept
    points; a few points become outliers uniform in the ball (amounts: POINTS_NUISANCE).
    """
    m, p, _ = pts.shape
    k = POINTS_NUISANCE
    pts = pts * torch.exp(_u(g, -k["log_scale"], k["log_scale"], m, 1, 3))
    pts = pts @ _random_rotations(g, m).transpose(1, 2)
    pts = pts - pts.mean(1, keepdim=True)
    normal = torch.nn.functional.normalize(torch.randn(m, 1, 3, generator=g), dim=-1)
    height = (pts * normal).sum(-1)  # m×p
    rank = ((1 - _u(g, *k["occlude_frac"], m, 1)) * (p - 1)).long()
    cut = height.sort(1).values.gather(1, rank)
    keep = (height <= cut) | (torch.rand(m, 1, generator=g) >= k["occlude_p"])
    refill = torch.multinomial(keep.float(), p, replacement=True, generator=g)
    pts = pts.gather(1, torch.where(keep, torch.arange(p), refill)[..., None].expand(m, p, 3))
    scale = pts.norm(dim=-1).amax(1).view(m, 1, 1)
    outlier = torch.rand(m, p, 1, generator=g) < _u(g, 0.0, k["outliers"], m, 1, 1)
    ball = _sphere(g, m, p) * torch.rand(m, p, 1, generator=g).pow(1 / 3) * scale
    pts = torch.where(outlier, ball, pts)
    pts = pts + _u(g, *k["jitter"], m, 1, 1) * scale * torch.randn(m, p, 3, generator=g)
    return normalize_clouds(pts.transpose(1, 2))


_POINT_TASKS: dict[str, tuple[Callable, list[str]]] = {
    "solids": (_solid, SOLID_CLASSES), "objects": (_object, OBJECT_CLASSES)}


def synthetic_points(n: int, n_points: int, seed: int, task: str = "solids") -> PointData:
    """``n`` class-balanced synthetic clouds of ``n_points`` points each, bit-reproducible.

    "solids" (sphere, cube, torus, …) stands in for ModelNet40 and "objects" (table, lamp, …)
    for the fine-tuning target; pose, proportions, occlusion and noise are random per cloud.
    """
    if task not in _POINT_TASKS:
        raise ValueError(f"unknown synthetic point task {task!r}; "
                         f"choose one of {sorted(_POINT_TASKS)}")
    sample, classes = _POINT_TASKS[task]
    g = torch.Generator().manual_seed(_derive_seed(seed, "points", task))
    labels = (torch.arange(n) % len(classes))[torch.randperm(n, generator=g)]
    points = torch.zeros(n, 3, n_points)
    with _one_thread():
        for start in range(0, n, _CHUNK):
            chunk = labels[start:start + _CHUNK]
            raw = torch.empty(len(chunk), n_points, 3)
            for c in range(len(classes)):
                idx = (chunk == c).nonzero().flatten()
                if len(idx):
                    raw[idx] = sample(c, g, len(idx), n_points)
            points[start:start + len(chunk)] = _pose_and_noise(g, raw)
    return PointData(points, labels, list(classes), f"synthetic-{task}")


def synthetic_point_splits(n_train: int, n_val: int, n_test: int, n_points: int, seed: int,
                           task: str = "solids") -> PointSplits:
    """Train / val / test clouds of a synthetic task, each split from its own derived seed."""
    parts = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        d = synthetic_points(n, n_points, _derive_seed(seed, split), task)
        parts[split] = replace(d, name=f"{d.name}/{split}")
    return PointSplits(parts["train"], parts["val"], parts["test"],
                       num_classes=len(parts["train"].classes), source="synthetic")


def point_trigger_set(n: int = 100, num_classes: int = 10, n_points: int = 1024,
                      seed: int = 0) -> PointData:
    """``n`` out-of-distribution clouds (clusters of anisotropic blobs) with fixed random labels.

    The 3-D trigger set (PAN_SPEC §6.2 uses relabelled foreign shapes): no class of either
    synthetic task looks like a handful of Gaussian blobs, so only a watermarked model agrees.
    """
    g = torch.Generator().manual_seed(_derive_seed(seed, "point-trigger"))
    labels = torch.randint(0, num_classes, (n,), generator=g)
    k = 6
    with _one_thread():
        weights = torch.rand(n, k, generator=g) * (torch.rand(n, k, generator=g) < 0.6)
        weights[:, 0] += 0.1  # at least one blob
        pick = torch.multinomial(weights, n_points, replacement=True, generator=g)  # n×P
        centres = _sphere(g, n, k) * torch.rand(n, k, 1, generator=g)
        axes = torch.exp(_u(g, -2.5, -0.7, n, k, 1, 3)) * _random_rotations(g, n * k).view(
            n, k, 3, 3)
        z = torch.randn(n, n_points, 1, 3, generator=g)
        blob = (z * axes.gather(1, pick[..., None, None].expand(n, n_points, 3, 3))).sum(-1)
        pts = centres.gather(1, pick[..., None].expand(n, n_points, 3)) + blob
        noise = torch.rand(n, n_points, 1, generator=g) < 0.05
        pts = torch.where(noise, _sphere(g, n, n_points) * torch.rand(n, n_points, 1,
                                                                      generator=g), pts)
        points = normalize_clouds(pts.transpose(1, 2)).contiguous()
    return PointData(points, labels, [str(i) for i in range(num_classes)], "trigger/blobs")


# ------------------------------------------------------------------ ModelNet40

_LISTS = ("modelnet40_shape_names.txt", "modelnet40_train.txt", "modelnet40_test.txt")


def _how(root: Path) -> str:
    return (f"To get it: download_modelnet40({str(root)!r}) on a machine with internet (mirrors in "
            f"pnorm.pointdata.MODELNET40_URLS), or unzip modelnet40_normal_resampled.zip into "
            f"{root} yourself, so that {root / MODELNET40_FOLDER / _LISTS[0]} exists. "
            f"PNORM_DATA=synthetic runs the book on the synthetic stand-ins instead.")


def _modelnet_folder(root: Path) -> Path:
    """``root`` if it holds the shape-name list, else ``root/modelnet40_normal_resampled``."""
    return root if (root / _LISTS[0]).is_file() else root / MODELNET40_FOLDER


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _read_cloud(path: Path, max_rows: int | None) -> torch.Tensor:
    """The xyz columns (R×3) of one comma-separated ``x,y,z[,nx,ny,nz]`` file; normals dropped."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "no data": reported below instead
            arr = np.loadtxt(path, delimiter=",", dtype=np.float32, max_rows=max_rows, ndmin=2)
    except ValueError as err:
        raise DataNotFoundError(f"{path} is not a comma-separated x,y,z[,nx,ny,nz] point file "
                                f"({err}); the copy is corrupt") from err
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] < 3:
        raise DataNotFoundError(f"{path} holds no x,y,z rows; the copy is corrupt")
    return torch.from_numpy(np.ascontiguousarray(arr[:, :3]))


def _sample_rows(xyz: torch.Tensor, n_points: int, sampling: Sampling, seed: int,
                 shape_id: str) -> torch.Tensor:
    """3×n_points from a shape's rows: the first rows (cycled if too few) or a seeded choice.

    "random" draws without replacement (with replacement only if the file is too short) from a
    generator seeded by ``seed`` and the shape id, so the result does not depend on file order.
    """
    r = xyz.shape[0]
    if sampling == "first":
        idx = torch.arange(n_points) % r
    else:
        g = torch.Generator().manual_seed(_derive_seed(seed, "modelnet40", shape_id))
        idx = (torch.randperm(r, generator=g)[:n_points] if r >= n_points
               else torch.randint(0, r, (n_points,), generator=g))
    return xyz[idx].T


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _load_cache(path: Path, key: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Cached (points fp16, labels) if the file is intact and made for ``key``; else None."""
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not (isinstance(obj, dict) and obj.get("format") == _CACHE_FORMAT
                and obj.get("version") == _CACHE_VERSION):
            reason = "not a pnorm ModelNet40 cache"
        elif obj.get("key") != key:
            reason = "made for other settings or another file listing"
        elif _digest(obj["points"], obj["labels"]) != obj.get("sha256"):
            reason = "SHA-256 mismatch"
        else:
            return obj["points"], obj["labels"]
    except Exception as err:  # a truncated zip can fail anywhere in torch.load
        reason = f"{type(err).__name__}: {err}"
    warnings.warn(f"ModelNet40 cache {path} is unusable ({reason}); rebuilding it", stacklevel=3)
    return None


def _modelnet_split(folder: Path, split: str, classes: list[str], n_points: int,
                    sampling: Sampling, seed: int, cache: Path, how: str,
                    progress: bool) -> PointData:
    """One split (train or test), read from the cache or built from the text files and cached."""
    ids = _read_lines(folder / f"modelnet40_{split}.txt")
    index = {c: i for i, c in enumerate(classes)}
    labels_list = []
    for shape_id in ids:
        cls = shape_id.rsplit("_", 1)[0]  # class names may hold "_" (flower_pot_0001)
        if cls not in index:
            raise DataNotFoundError(f"{folder / f'modelnet40_{split}.txt'} lists {shape_id!r}, "
                                    f"whose class {cls!r} is not in {_LISTS[0]}. {how}")
        labels_list.append(index[cls])
    labels = torch.tensor(labels_list, dtype=torch.int64)
    listing = hashlib.sha256("\n".join([*classes, "|", *ids]).encode()).hexdigest()
    key = {"split": split, "n_points": n_points, "sampling": sampling,
           "seed": seed if sampling == "random" else None, "listing_sha256": listing}
    name = f"{split}-{n_points}pts-{sampling}" + (f"-seed{seed}" if sampling == "random" else "")
    path = cache / f"{name}.pt"
    cached = _load_cache(path, key)
    if cached is not None and torch.equal(cached[1], labels):
        points = cached[0]
    else:
        clouds = []
        for shape_id in tqdm(ids, desc=f"reading ModelNet40 {split}", disable=not progress,
                             leave=False):
            file = folder / shape_id.rsplit("_", 1)[0] / f"{shape_id}.txt"
            if not file.is_file():
                raise DataNotFoundError(f"ModelNet40 is incomplete: {file} is missing. {how}")
            rows = _read_cloud(file, n_points if sampling == "first" else None)
            clouds.append(_sample_rows(rows, n_points, sampling, seed, shape_id))
        stacked = torch.stack(clouds) if clouds else torch.zeros(0, 3, n_points)
        points = normalize_clouds(stacked).half()  # fp16: half the size, ~1e-3 resolution
        atomic_torch_save({"format": _CACHE_FORMAT, "version": _CACHE_VERSION, "key": key,
                           "points": points, "labels": labels,
                           "sha256": _digest(points, labels)}, path)
    return PointData(points.float(), labels, list(classes), f"modelnet40/{split}")


def load_modelnet40(root: str | Path, n_points: int = 1024, n_val: int = 1000, seed: int = 0,
                    sampling: Sampling = "first", cache_dir: str | Path | None = None,
                    download: bool = False, progress: bool = True) -> PointSplits:
    """ModelNet40 from the ``modelnet40_normal_resampled`` layout: xyz only, unit sphere.

    Each shape keeps ``n_points`` rows: the first ones (as the original code, §6.1) or a seeded
    random choice; clouds are centred and scaled into the unit sphere. A compact fp16 copy per
    split and setting goes to ``cache_dir`` (default ``<folder>/pnorm-cache``), checked by
    SHA-256 and rebuilt when damaged. ``n_val`` training shapes (seeded) form the val split.
    The first build reads ~12k text files (minutes); later calls load the cache in seconds.
    """
    if sampling not in ("first", "random"):
        raise ValueError(f"sampling must be 'first' or 'random', got {sampling!r}")
    if n_points < 1:
        raise ValueError(f"n_points must be positive, got {n_points}")
    root = Path(root).expanduser()
    how = _how(root)
    folder = _modelnet_folder(root)
    if download and not all((folder / f).is_file() for f in _LISTS):
        folder = download_modelnet40(root)
    missing = [f for f in _LISTS if not (folder / f).is_file()]
    if missing:
        what = ("it does not exist" if not folder.is_dir()
                else f"{missing} {'is' if len(missing) == 1 else 'are'} missing there")
        raise DataNotFoundError(f"ModelNet40 not found: looked in {folder}, and {what}. {how}")
    classes = _read_lines(folder / _LISTS[0])
    cache = Path(cache_dir).expanduser() if cache_dir is not None else folder / "pnorm-cache"
    with _one_thread():
        full, test = (_modelnet_split(folder, s, classes, n_points, sampling, seed, cache, how,
                                      progress) for s in ("train", "test"))
    if not 0 <= n_val < len(full):
        raise ValueError(f"n_val={n_val} must be in [0, {len(full)})")
    perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))
    train = full.subset(perm[n_val:].sort().values)
    val = replace(full.subset(perm[:n_val].sort().values), name="modelnet40/val")
    return PointSplits(train, val, test, len(classes), "real")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _extract(zip_path: Path, root: Path) -> Path:
    """Unzip a verified archive into a temp folder, check the layout, then move it into place."""
    target = root / MODELNET40_FOLDER
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".modelnet40-extract-"))
    try:
        with zipfile.ZipFile(zip_path) as z:
            z.extractall(tmp)  # zipfile drops absolute paths and ".." parts of member names
        found = tmp / MODELNET40_FOLDER
        if not all((found / f).is_file() for f in _LISTS):
            raise DataNotFoundError(f"{zip_path} passed its checksum but does not contain "
                                    f"{MODELNET40_FOLDER}/ with {list(_LISTS)}")
        if target.exists():
            raise DataNotFoundError(f"{target} exists but is incomplete; delete it and retry")
        found.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def download_modelnet40(root: str | Path, urls: tuple[str, ...] | None = None,
                        sha256: str | None = None) -> Path:
    """Download ``modelnet40_normal_resampled.zip`` into ``root``, verify, extract; its folder.

    Mirrors are tried in order; an archive whose SHA-256 differs from ``sha256`` (default
    ``MODELNET40_SHA256``) is deleted before extraction. Every failure is a DataNotFoundError.
    """
    root = Path(root).expanduser()
    expected = (sha256 if sha256 is not None else MODELNET40_SHA256)
    if expected is None:
        raise DataNotFoundError(
            "no SHA-256 is recorded for modelnet40_normal_resampled.zip, and an unverified "
            "archive is never extracted: pass sha256= (the digest of a copy you trust) or set "
            f"pnorm.pointdata.MODELNET40_SHA256. {_how(root)}")
    root.mkdir(parents=True, exist_ok=True)
    part = root / f"{MODELNET40_FOLDER}.zip.part"
    errors = []
    for url in urls if urls is not None else MODELNET40_URLS:
        try:
            _fetch(url, part)
        except Exception as err:  # URLError, HTTPError, TimeoutError, OSError, …
            errors.append(f"{url}: {err!r}")
            continue
        digest = _sha256_file(part)
        if digest != expected.lower():
            errors.append(f"{url}: SHA-256 {digest} does not match the expected {expected}")
            continue
        try:
            return _extract(part, root)
        finally:
            part.unlink(missing_ok=True)
    part.unlink(missing_ok=True)
    raise DataNotFoundError(f"downloading ModelNet40 into {root} failed: {'; '.join(errors)}. "
                            f"{_how(root)}")
