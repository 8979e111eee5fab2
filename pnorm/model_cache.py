"""Train-or-load: the models the chapters share, cached on disk by configuration and source.

A cache entry's key covers the model, the recipe, the seeds, the data's bytes and a fingerprint
of the ``pnorm`` source, so a code change never serves a stale model. Writes are atomic; an
unreadable entry is rebuilt (resuming from its last epoch checkpoint when that is sound).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .attacks import FineTuneConfig, fine_tune
from .batches import Data, raw_inputs
from .fileio import atomic_torch_save, atomic_write, source_fingerprint, state_sha256, tensor_digest
from .images import ImageSplits
from .models import build_model, export_public
from .passport import key_model, secret_generator
from .points import PointSplits
from .profiles import Profile, cache_dir
from .recipes import get_preset
from .training import TrainConfig, config_for, train
from .vault import Vault

__all__ = ["Trained", "fine_tune_or_load", "seed_runs", "train_or_load"]


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
                "faithful": get_preset(preset).pointnet_quirks, "dropout": 0.4,
                "passport_layers": None if layers is None else list(layers)}
    raise ValueError(f"train_or_load builds 'alexnet' or 'pointnet', got arch={arch!r}")


def _train_config(arch: str, profile: Profile, preset: str, seed: int,
                  **overrides: Any) -> TrainConfig:
    scale = profile.points if arch == "pointnet" else profile
    if arch == "alexnet":
        overrides = {"channels_last": profile.channels_last, **overrides}
    return config_for(preset, recipe=scale.train, triggers_per_batch=scale.triggers_per_batch,
                      seed=seed, eval_batch_size=profile.eval_batch_size, **overrides)


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
    key_seed: int | None = None,
    **overrides: Any,
) -> Trained:
    """Return the ``arch`` model of ``scheme`` trained on ``splits`` with the profile's recipe.

    ``arch`` is "alexnet" (images, the profile's main recipe) or "pointnet" (point clouds,
    ``profile.points``). Trained once, then loaded from ``<PNORM_CACHE>/models``.
    ``overrides`` go to the ``TrainConfig`` (e.g. ``schedule="alternating"``) and are part of
    the key. The passports come from ``key_seed`` when given (a public teaching seed, so
    anyone can regenerate them) and otherwise from the OS's cryptographic randomness; either
    way the cache entry keeps them, so they are secrets (book/reproduce.md lists the files).
    """
    if message is not None and not isinstance(message, str):
        raise TypeError(f"a signature message must be a str, got {type(message).__name__}")
    model_config = _model_config(arch, scheme, profile, splits.num_classes, preset)
    train_config = _train_config(arch, profile, preset, seed, **overrides)
    data_parts = [raw_inputs(splits.train), splits.train.labels, raw_inputs(splits.val),
                  raw_inputs(splits.test)]
    if trigger is not None:
        data_parts += [raw_inputs(trigger), trigger.labels]
    record = {
        "model": model_config, "train": asdict(train_config), "preset": preset, "seed": seed,
        "message": message, "key_seed": None if scheme == "plain" else key_seed,
        "data": splits.source,
        "data_digest": tensor_digest(*data_parts)[:16], "mean": _listed(splits.mean),
        "std": _listed(splits.std), "source": source_fingerprint(),
    }
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_dir() / "models" / f"{arch}-{scheme}-{key}"
    loaded = _load(folder, key, record)
    if loaded is not None:
        return loaded

    model = build_model(model_config, seed=seed)
    seeds = {"model": seed}
    if scheme != "plain":
        seeds["passports"] = _key_seed(folder, key_seed)
        key_model(model, torch.Generator().manual_seed(seeds["passports"]), message)
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
            seeds=seeds, message=message, public_model=public,
            data_stats={} if splits.mean is None
            else {"mean": list(splits.mean), "std": list(splits.std)},
        )
        vault.save(folder / "vault.pt")
    state = model.state_dict()
    atomic_torch_save(
        {"model_state": state, "sha256": state_sha256(state), "history": result.history,
         "selected_epoch": result.selected_epoch, "key": key},
        folder / "final.pt",
    )
    return Trained(model, public, vault, result.history, result.selected_epoch, key, record)


def seed_runs(schemes: Sequence[str], seeds: Sequence[int], profile: Profile,
              splits: ImageSplits, trigger: Data | None, preset: str, message: str,
              key_seed: int) -> dict[tuple[str, int], Trained]:
    """Every scheme trained at every seed (``train_or_load``), keyed by (scheme, seed).

    Plain networks see no triggers and carry no message; a protected network of seed ``s`` is
    keyed with ``key_seed + s``, so each seed has its own passports and signature.
    """
    return {
        (scheme, seed): train_or_load(
            scheme, profile, splits, None if scheme == "plain" else trigger, preset=preset,
            seed=seed, message=None if scheme == "plain" else message, key_seed=key_seed + seed)
        for seed in seeds for scheme in schemes
    }


def _listed(values) -> list[float] | None:
    return None if values is None else list(values)


def _key_seed(folder: Path, key_seed: int | None) -> int:
    """The passports' seed: the teaching seed, or a secret one drawn once per cache entry.

    A secret seed is written to ``key-seed.json`` before training starts, so a resumed run
    re-keys the model with the same passports as its checkpoint.
    """
    if key_seed is not None:
        return int(key_seed)
    path = folder / "key-seed.json"
    if path.is_file():
        return int(json.loads(path.read_text())["key_seed"])
    _, seed = secret_generator()
    atomic_write(path, lambda f: f.write(json.dumps({"key_seed": seed}).encode()))
    return seed


def _load(folder: Path, key: str, record: dict) -> Trained | None:
    """The cached entry in ``folder`` if it is intact and made for ``key``; else None.

    Every file is checked before use (the model's SHA-256, the release against the vault's
    record of it); a damaged entry is moved aside, never deleted, and rebuilt.
    """
    final = folder / "final.pt"
    if not final.exists():
        return None
    try:
        saved = torch.load(final, map_location="cpu", weights_only=True)
        if saved.get("key") != key:
            raise ValueError("made for another configuration (key mismatch)")
        if state_sha256(saved["model_state"]) != saved.get("sha256"):
            raise ValueError("final.pt failed its SHA-256 corruption check")
        model = build_model(record["model"], seed=record["seed"])
        model.load_state_dict(saved["model_state"])  # passports and signature included
        public = export_public(model.eval())
        vault = None
        if record["model"]["scheme"] != "plain":
            vault = Vault.load(folder / "vault.pt")
            if vault.public_sha256 != state_sha256(public):
                raise ValueError("the vault records another release than final.pt gives")
    except Exception as e:  # corrupt or partial entry: rebuild it, never trust it
        moved = [_move_aside(folder / name) for name in ("final.pt", "vault.pt")]
        warnings.warn(f"cache entry {folder} is unusable ({e}); moved "
                      f"{[str(m) for m in moved if m]} aside and rebuilding it from its epoch "
                      "checkpoint", stacklevel=3)
        return None
    return Trained(model, public, vault, saved["history"], saved["selected_epoch"], key, record)


def _move_aside(path: Path) -> Path | None:
    """Rename ``path`` to ``<name>.unusable-<n>`` (the first free n); None if it is missing."""
    if not path.exists():
        return None
    n = 0
    while (aside := path.with_name(f"{path.name}.unusable-{n}")).exists():
        n += 1
    path.rename(aside)
    return aside


def fine_tune_or_load(
    trained: Trained,
    new_task: ImageSplits | PointSplits,
    config: FineTuneConfig,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "fine-tuning",
) -> tuple[nn.Module, list[dict]]:
    """``attacks.fine_tune`` of a cached model's release, itself cached under ``<cache>/attacks``.

    Chapters 3 and 4 judge the same fine-tuned release, so it is computed once. The key covers
    the trained model's key, the new task's bytes, the configuration and the source.
    """
    record = {"trained": trained.key, "task": new_task.source,
              "task_digest": tensor_digest(raw_inputs(new_task.train), new_task.train.labels,
                                           raw_inputs(new_task.test))[:16],
              "config": asdict(config), "source": source_fingerprint()}
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "attacks" / f"finetune-{key}.pt"
    if path.exists():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if state_sha256(saved["state"]) != saved.get("sha256"):
                raise ValueError("failed its SHA-256 corruption check")
            model = build_model(json.loads(saved["config"]))
            model.load_state_dict(saved["state"])
            return model.eval(), saved["records"]
        except Exception as e:  # corrupt or partial: recompute, keep the file for inspection
            aside = _move_aside(path)
            warnings.warn(f"cached fine-tuning {path} is unusable ({e}); moved to {aside} and "
                          "fine-tuning again", stacklevel=2)
    model, records = fine_tune(trained.public, trained.vault, new_task, config, device,
                               progress=progress, desc=desc)
    model = model.cpu().eval()
    state = model.state_dict()
    atomic_torch_save({"config": json.dumps(model.config), "state": state,
                       "sha256": state_sha256(state), "records": records, "key": key}, path)
    return model, records
