"""Point-cloud data: the labelled-cloud containers, augmentation, and the real ModelNet40 set.

Clouds are float32 tensors N×3×P (channels first, what PointNet's Conv1d layers take), centred
and scaled into the unit sphere. ModelNet40 is read from its ``modelnet40_normal_resampled``
layout; ``synthetic_points`` generates the offline stand-ins.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from .fileio import DataNotFoundError, atomic_torch_save, fetch, sha256_file, tensor_digest
from .profiles import show_progress
from .rng import derive_seed, one_thread

__all__ = [
    "MODELNET40_FOLDER",
    "MODELNET40_SHA256",
    "MODELNET40_URLS",
    "PointData",
    "PointSplits",
    "augment_points",
    "download_modelnet40",
    "load_modelnet40",
    "normalize_clouds",
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
        p, what = self.points, f"PointData {self.name!r}" if self.name else "PointData"
        if p.dtype != torch.float32 or p.dim() != 3 or p.shape[1] != 3:
            raise ValueError(f"{what}: points must be float32 N×3×P, "
                             f"got {p.dtype} {tuple(p.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != p.shape[:1]:
            raise ValueError(f"{what}: labels must be int64 of length {len(p)}")
        if not torch.isfinite(p).all():
            bad = (~torch.isfinite(p)).flatten(1).any(1).nonzero().flatten().tolist()
            raise ValueError(f"{what}: points hold NaN or infinite values (clouds {bad[:5]}"
                             f"{' …' if len(bad) > 5 else ''}); drop or repair those clouds")

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

    The usual ModelNet preprocessing (the original code's data source is not shipped,
    book/method.md#method-point-clouds).
    """
    centred = points - points.mean(-1, keepdim=True)
    radius = centred.norm(dim=-2).amax(-1).clamp_min(1e-12)
    return centred / radius[..., None, None]


def augment_points(points: torch.Tensor, generator: torch.Generator,
                   max_dropout: float = 0.875, scale: tuple[float, float] = (0.8, 1.25),
                   shift: float = 0.1) -> torch.Tensor:
    """The original's training augmentation, batched (book/method.md#method-point-clouds): point
    dropout, scale, shift.

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


# ------------------------------------------------------------------ ModelNet40

_MAX_COORD = 1e6  # a larger coordinate in a ModelNet40 file is corruption, not a shape
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
    bad = ~np.isfinite(arr).all(1) | (np.abs(arr[:, :3]) > _MAX_COORD).any(1)
    if bad.any():
        row = int(bad.argmax())
        raise DataNotFoundError(f"{path} is corrupt: row {row + 1} reads {arr[row].tolist()} (NaN, "
                                f"infinite or beyond ±{_MAX_COORD:g}); replace the file from a "
                                f"good copy of ModelNet40")
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
        g = torch.Generator().manual_seed(derive_seed(seed, "modelnet40", shape_id))
        idx = (torch.randperm(r, generator=g)[:n_points] if r >= n_points
               else torch.randint(0, r, (n_points,), generator=g))
    return xyz[idx].T


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
        elif tensor_digest(obj["points"], obj["labels"]) != obj.get("sha256"):
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
        for shape_id in tqdm(ids, desc=f"reading ModelNet40 {split}",
                             disable=not show_progress(progress), leave=False):
            file = folder / shape_id.rsplit("_", 1)[0] / f"{shape_id}.txt"
            if not file.is_file():
                raise DataNotFoundError(f"ModelNet40 is incomplete: {file} is missing. {how}")
            rows = _read_cloud(file, n_points if sampling == "first" else None)
            clouds.append(_sample_rows(rows, n_points, sampling, seed, shape_id))
        stacked = torch.stack(clouds) if clouds else torch.zeros(0, 3, n_points)
        points = normalize_clouds(stacked).half()  # fp16: half the size, ~1e-3 resolution
        atomic_torch_save({"format": _CACHE_FORMAT, "version": _CACHE_VERSION, "key": key,
                           "points": points, "labels": labels,
                           "sha256": tensor_digest(points, labels)}, path)
    return PointData(points.float(), labels, list(classes), f"modelnet40/{split}")


def load_modelnet40(root: str | Path, n_points: int = 1024, n_val: int = 1000, seed: int = 0,
                    sampling: Sampling = "first", cache_dir: str | Path | None = None,
                    download: bool = False, progress: bool = True) -> PointSplits:
    """ModelNet40 from the ``modelnet40_normal_resampled`` layout: xyz only, unit sphere.

    Each shape keeps ``n_points`` rows: the first ones (as the original code,
    book/method.md#method-point-clouds) or a seeded
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
    with one_thread():
        full, test = (_modelnet_split(folder, s, classes, n_points, sampling, seed, cache, how,
                                      progress) for s in ("train", "test"))
    if not 0 <= n_val < len(full):
        raise ValueError(f"n_val={n_val} must be in [0, {len(full)})")
    perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))
    train = full.subset(perm[n_val:].sort().values)
    val = replace(full.subset(perm[:n_val].sort().values), name="modelnet40/val")
    return PointSplits(train, val, test, len(classes), "real")


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
            fetch(url, part)
        except Exception as err:  # URLError, HTTPError, TimeoutError, OSError, …
            errors.append(f"{url}: {err!r}")
            continue
        digest = sha256_file(part)
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
