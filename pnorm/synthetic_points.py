"""Synthetic stand-ins for the point-cloud sets: parametric solids, objects and 3-D triggers.

"solids" (sphere, cube, torus, …) stands in for ModelNet40 and "objects" (table, lamp, …) for
the fine-tuning target; pose, proportions, occlusion and noise are random per cloud, and every
draw comes from a generator seeded by ``derive_seed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from types import MappingProxyType

import torch

from .points import PointData, PointSplits, normalize_clouds
from .rng import derive_seed, one_thread
from .rng import uniform as _u

__all__ = [
    "OBJECT_CLASSES",
    "POINTS_NUISANCE",
    "SOLID_CLASSES",
    "point_trigger_set",
    "synthetic_point_splits",
    "synthetic_points",
]

_CHUNK = 512  # clouds generated at a time (bounds memory; fixed, so results do not depend on it)
SOLID_CLASSES = ["sphere", "cube", "cylinder", "cone", "torus",
                 "pyramid", "capsule", "spring", "dumbbell", "octahedron"]
OBJECT_CLASSES = ["table", "chair", "lamp", "mushroom", "bottle",
                  "mug", "arrow", "tree", "snowman", "cross"]
# How hard the synthetic tasks are, in one place (read-only: edit here, so the source fingerprint
# of cached models sees it). Plain PointNet, width 0.25, 256 points, 5k clouds, 6 Adam epochs:
# ~72 % (solids) / ~76 % (objects) test accuracy, still rising.
POINTS_NUISANCE = MappingProxyType(dict(
    log_scale=0.3, occlude_p=0.3, occlude_frac=(0.1, 0.3), outliers=0.03, jitter=(0.005, 0.02)))


# ------------------------------------------------------------------ surface samplers
# Each returns m×p×3 points; parameters are m×1 tensors or floats, so they vary per cloud.


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
    g = torch.Generator().manual_seed(derive_seed(seed, "points", task))
    labels = (torch.arange(n) % len(classes))[torch.randperm(n, generator=g)]
    points = torch.zeros(n, 3, n_points)
    with one_thread():
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
        d = synthetic_points(n, n_points, derive_seed(seed, split), task)
        parts[split] = replace(d, name=f"{d.name}/{split}")
    return PointSplits(parts["train"], parts["val"], parts["test"],
                       num_classes=len(parts["train"].classes), source="synthetic")


def point_trigger_set(n: int = 100, num_classes: int = 10, n_points: int = 1024,
                      seed: int = 0) -> PointData:
    """``n`` out-of-distribution clouds (clusters of anisotropic blobs) with fixed random labels.

    The 3-D trigger set (the original relabels foreign shapes, book/method.md#method-point-clouds):
    no class of either
    synthetic task looks like a handful of Gaussian blobs, so only a watermarked model agrees.
    """
    g = torch.Generator().manual_seed(derive_seed(seed, "point-trigger"))
    labels = torch.randint(0, num_classes, (n,), generator=g)
    k = 6
    with one_thread():
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


