"""The data a profile asks for: synthetic stand-ins or the real sets, and the owner's triggers.

Chapters call these instead of the loaders, so the profile (``PNORM_PROFILE``, ``PNORM_DATA``)
alone decides what runs; real data is never swapped for synthetic data silently.
"""

from __future__ import annotations

from .images import (
    ImageData,
    ImageSplits,
    download_adi_trigger_set,
    load_adi_trigger_set,
    load_cifar,
)
from .points import PointData, PointSplits, load_modelnet40
from .profiles import Profile, cache_dir
from .synthetic_images import abstract_trigger_set, synthetic_splits
from .synthetic_points import point_trigger_set, synthetic_point_splits

__all__ = ["ADI_FOLDER", "image_splits", "point_splits", "point_trigger", "trigger_set"]

ADI_FOLDER = "adi-trigger-set"  # under <PNORM_CACHE>/data


def image_splits(profile: Profile, task: str = "shapes", seed: int = 0) -> ImageSplits:
    """The profile's image data: synthetic stand-ins, or real CIFAR-10 (``shapes``) / CIFAR-100.

    Real data lives in ``<PNORM_CACHE>/data`` and is downloaded there if missing; offline that
    is a clear ``DataNotFoundError`` — never a silent switch to synthetic data.
    """
    if profile.data == "synthetic":
        return synthetic_splits(profile.n_train, profile.n_val, profile.n_test, seed, task)
    name = {"shapes": "cifar10", "textures": "cifar100"}.get(task, task)
    return load_cifar(cache_dir() / "data", name, download=True, n_val=profile.n_val, seed=seed)


def trigger_set(profile: Profile, num_classes: int = 10, seed: int = 1) -> ImageData:
    """The owner's trigger set, out-of-distribution images with fixed labels.

    Synthetic profiles: ``profile.n_triggers`` generated abstract images with random labels
    (``seed``). Real data: the Adi et al. set the original uses (book/method.md#method-data), read
    from
    ``<PNORM_CACHE>/data/adi-trigger-set`` and downloaded there when missing.
    """
    if profile.data == "synthetic":
        return abstract_trigger_set(profile.n_triggers, num_classes, seed)
    folder = cache_dir() / "data" / ADI_FOLDER
    if not folder.exists():
        download_adi_trigger_set(folder)
    data = load_adi_trigger_set(folder)
    if int(data.labels.max()) >= num_classes:
        raise ValueError(f"the trigger set in {folder} has labels up to {int(data.labels.max())}, "
                         f"too many for {num_classes} classes")
    return data


# Real-data profiles have no synthetic sizes (n_train = 0 means "the whole real set"); their
# synthetic fine-tuning target ("objects") gets this many training / test clouds.
_REAL_OBJECTS_SIZE = (4000, 2000)


def point_splits(profile: Profile, task: str = "solids", seed: int = 0) -> PointSplits:
    """The profile's point clouds: synthetic solids/objects, or real ModelNet40 (``solids``).

    Real data is read from ``<PNORM_CACHE>/data``; it is never downloaded implicitly (no
    verified checksum is recorded), and a missing copy is a ``DataNotFoundError`` saying how to
    get it. The fine-tuning target ``objects`` is always synthetic: no second real 3-D set ships.
    """
    ps = profile.points
    if profile.data == "synthetic" or task == "objects":
        n_train, n_test = ((ps.n_train, ps.n_test) if profile.data == "synthetic"
                           else _REAL_OBJECTS_SIZE)
        return synthetic_point_splits(n_train, ps.n_val, n_test, ps.n_points, seed, task)
    return load_modelnet40(cache_dir() / "data", ps.n_points, ps.n_val, seed)


def point_trigger(profile: Profile, num_classes: int = 10, seed: int = 1) -> PointData:
    """The owner's 3-D trigger set: out-of-distribution blob clouds with fixed random labels."""
    return point_trigger_set(profile.points.n_triggers, num_classes, profile.points.n_points, seed)
