"""Train-or-load: the models the chapters share, cached on disk by configuration and source.

A cache entry's key covers the model, the recipe, the seeds, the data's bytes and a fingerprint
of the ``pnorm`` source, so a code change never serves a stale model. Writes are atomic; an
unreadable entry is rebuilt (resuming from its last epoch checkpoint when that is sound).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .batches import Data, raw_inputs
from .data import (
    ImageData,
    ImageSplits,
    abstract_trigger_set,
    download_adi_trigger_set,
    load_adi_trigger_set,
    load_cifar,
    synthetic_splits,
)
from .models import build_model, export_public
from .passport import key_model
from .pointdata import (
    PointData,
    PointSplits,
    load_modelnet40,
    point_trigger_set,
    synthetic_point_splits,
)
from .profiles import Profile, cache_dir
from .train import TrainConfig, config_for, train
from .vault import Vault, atomic_torch_save

__all__ = [
    "Trained",
    "image_splits",
    "point_splits",
    "point_trigger",
    "source_fingerprint",
    "train_or_load",
    "trigger_set",
]

_PKG_DIR = Path(__file__).resolve().parent
ADI_FOLDER = "adi-trigger-set"  # under <PNORM_CACHE>/data


# Modules that cannot change a trained model (attacks and figures run after training; a
# profile's training knobs enter the key as values). Every other module is fingerprinted.
_NOT_TRAINING = frozenset({"attacks.py", "erb.py", "forgery.py", "plots.py", "profiles.py",
                           "results.py", "transforms.py", "widgets.py"})


def source_fingerprint() -> str:
    """SHA-256 of the ``pnorm/*.py`` files that training depends on: part of each cache key."""
    h = hashlib.sha256()
    for path in sorted(p for p in _PKG_DIR.glob("*.py") if p.name not in _NOT_TRAINING):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _tensor_digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


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
    (``seed``). Real data: the Adi et al. set the original uses (PAN_SPEC §3.2), read from
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


def _model_config(arch: str, scheme: str, profile: Profile, num_classes: int,
                  preset: str) -> dict[str, Any]:
    if arch == "alexnet":
        layers = profile.passport_layers
        return {"arch": "alexnet", "num_classes": num_classes, "width": profile.width,
                "scheme": scheme, "norm": None, "image_size": 32,
                "passport_layers": None if layers is None else list(layers)}
    if arch == "pointnet":
        ps = profile.points
        layers = ps.passport_layers
        return {"arch": "pointnet", "num_classes": num_classes, "width": ps.width,
                "scheme": scheme, "norm": None, "num_points": ps.n_points,
                "faithful": preset == "faithful", "dropout": 0.4,
                "passport_layers": None if layers is None else list(layers)}
    raise ValueError(f"train_or_load builds 'alexnet' or 'pointnet', got arch={arch!r}")


def _recipe(arch: str, profile: Profile, preset: str, seed: int, **overrides: Any) -> TrainConfig:
    if arch == "pointnet":
        ps = profile.points
        return config_for(
            preset, epochs=ps.epochs, batch_size=ps.batch_size, lr=ps.lr, optimizer="adam",
            weight_decay=ps.weight_decay, milestones=tuple(ps.milestones), lr_gamma=ps.lr_gamma,
            triggers_per_batch=ps.triggers_per_batch, seed=seed,
            eval_batch_size=profile.eval_batch_size, **overrides)
    return config_for(
        preset, epochs=profile.epochs, batch_size=profile.batch_size, lr=profile.lr,
        momentum=profile.momentum, weight_decay=profile.weight_decay,
        milestones=tuple(profile.milestones), triggers_per_batch=profile.triggers_per_batch,
        seed=seed, eval_batch_size=profile.eval_batch_size, **overrides,
    )


@dataclass
class Trained:
    """A trained model with everything the chapters need about it."""

    model: nn.Module  # as trained: protected (both branches) or plain
    public: nn.Module  # what the owner releases
    vault: Vault | None  # the owner's secrets (None for a plain model)
    history: list[dict]
    selected_epoch: int
    key: str
    record: dict[str, Any]


def train_or_load(
    scheme: str,
    profile: Profile,
    splits: ImageSplits | PointSplits,
    trigger: Data | None = None,
    preset: str = "faithful",
    seed: int = 0,
    message: str | None = None,
    progress: bool = True,
    arch: str = "alexnet",
    **overrides: Any,
) -> Trained:
    """Return the ``arch`` model of ``scheme`` trained on ``splits`` with the profile's recipe.

    ``arch`` is "alexnet" (images, the profile's main recipe) or "pointnet" (point clouds,
    ``profile.points``). Trained once, then loaded from ``<PNORM_CACHE>/models``.
    ``overrides`` go to the ``TrainConfig`` (e.g. ``schedule="alternating"``) and are part of
    the key.
    """
    model_config = _model_config(arch, scheme, profile, splits.num_classes, preset)
    train_config = _recipe(arch, profile, preset, seed, **overrides)
    data_parts = [raw_inputs(splits.train), splits.train.labels, raw_inputs(splits.val),
                  raw_inputs(splits.test)]
    if trigger is not None:
        data_parts += [raw_inputs(trigger), trigger.labels]
    record = {
        "model": model_config, "train": asdict(train_config), "preset": preset, "seed": seed,
        "message": message, "data": splits.source, "data_digest": _tensor_digest(*data_parts),
        "mean": _listed(splits.mean), "std": _listed(splits.std), "source": source_fingerprint(),
    }
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_dir() / "models" / f"{arch}-{scheme}-{key}"
    loaded = _load(folder, key, record)
    if loaded is not None:
        return loaded

    model = build_model(model_config, seed=seed)
    if scheme != "plain":
        key_model(model, torch.Generator().manual_seed(seed + 1), message)
    result = train(model, splits, train_config, trigger, profile.device,
                   checkpoint=folder / "checkpoint.pt", progress=progress,
                   desc=f"{arch} {scheme} ({profile.name})")
    model = result.model.cpu().eval()
    public = export_public(model)
    vault = None
    if scheme != "plain":
        vault = Vault.from_model(
            model, None if trigger is None else raw_inputs(trigger),
            None if trigger is None else trigger.labels,
            seeds={"model": seed, "passports": seed + 1}, message=message, public_model=public,
            data_stats={} if splits.mean is None
            else {"mean": list(splits.mean), "std": list(splits.std)},
        )
        vault.save(folder / "vault.pt")
    atomic_torch_save(
        {"model_state": model.state_dict(), "history": result.history,
         "selected_epoch": result.selected_epoch, "key": key},
        folder / "final.pt",
    )
    return Trained(model, public, vault, result.history, result.selected_epoch, key, record)


def _listed(values) -> list[float] | None:
    return None if values is None else list(values)


def _load(folder: Path, key: str, record: dict) -> Trained | None:
    final = folder / "final.pt"
    if not final.exists():
        return None
    try:
        saved = torch.load(final, map_location="cpu", weights_only=True)
        if saved.get("key") != key:
            raise ValueError("key mismatch")
        model = build_model(record["model"], seed=record["seed"])
        model.load_state_dict(saved["model_state"])  # passports and signature included
        vault = None if record["model"]["scheme"] == "plain" else Vault.load(folder / "vault.pt")
    except Exception as e:  # corrupt or partial entry: rebuild it, never trust it
        warnings.warn(f"cache entry {folder} is unreadable ({e}); rebuilding it from its "
                      "epoch checkpoint", stacklevel=3)
        for name in ("final.pt", "vault.pt"):
            (folder / name).unlink(missing_ok=True)
        return None
    model.eval()
    return Trained(model, export_public(model), vault, saved["history"],
                   saved["selected_epoch"], key, record)
