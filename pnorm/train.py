"""Two-branch training (PAN_SPEC §3.2–§3.4) with per-epoch checkpoints and exact resume.

One step mixes trigger images into the clean batch and, for a protected model, adds the
branch-1 loss and the sign loss to the branch-0 loss. Both branches run in one batched pass by
default; ``batched=False`` is the original two-pass structure (same numbers, tested).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import ImageData, ImageSplits, augment_crop_flip, normalize
from .models import passport_layers, total_sign_loss
from .vault import atomic_torch_save
from .verify import evaluate, signature_detection

__all__ = ["PRESETS", "TrainConfig", "TrainResult", "train", "training_step"]

Schedule = Literal["summed", "alternating"]


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe. Defaults are the paper's (SGD 0.01, batch 64 + 2 triggers)."""

    epochs: int = 200
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = (100, 150)
    lr_gamma: float = 0.1
    triggers_per_batch: int = 2
    schedule: Schedule = "summed"  # "alternating": branch 1 only every `alternate_every` steps
    alternate_every: int = 2
    select: Literal["last", "val", "test"] = "last"  # which epoch's weights are kept
    batched: bool = True  # both branches in one pass (False: two passes, the original's way)
    augment: bool = True
    sign_weight: float = 1.0  # weight of the summed sign loss (1 in the original; 0 = ablation)
    seed: int = 0
    eval_batch_size: int = 500


# `faithful` keeps the original's choices that change numbers; `clean` fixes them (PAN_SPEC §8).
PRESETS: dict[str, dict] = {
    "faithful": {"schedule": "summed", "select": "test"},  # model selection on the test set
    "clean": {"schedule": "summed", "select": "val"},  # held-out split of the training set
}


def config_for(preset: str, **overrides) -> TrainConfig:
    """A ``TrainConfig`` for a named preset, with explicit overrides."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {list(PRESETS)}")
    return replace(TrainConfig(**PRESETS[preset]), **overrides)


@dataclass
class TrainResult:
    """The trained model (selected epoch loaded), its per-epoch history and the choice made."""

    model: nn.Module
    history: list[dict] = field(default_factory=list)
    selected_epoch: int = -1


def _lr_at(config: TrainConfig, epoch: int) -> float:
    return config.lr * config.lr_gamma ** sum(epoch >= m for m in config.milestones)


def _epoch_generator(config: TrainConfig, epoch: int, stream: int) -> torch.Generator:
    """Each epoch's shuffling/augmentation has its own seed, so a resume replays it exactly."""
    return torch.Generator().manual_seed(config.seed * 1_000_003 + epoch * 7 + stream)


def training_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    step: int = 0,
) -> dict[str, torch.Tensor]:
    """One optimiser step; returns detached losses (tensors: no host sync per step).

    Protected models: L = CE(branch 0) + CE(branch 1) + Σ sign losses (PAN_SPEC §3.3); with
    the alternating schedule the branch-1 terms are added every ``alternate_every`` steps.
    """
    optimizer.zero_grad(set_to_none=True)
    protected = bool(passport_layers(model))
    use_branch1 = protected and (
        config.schedule == "summed" or step % config.alternate_every == config.alternate_every - 1
    )
    zero = torch.zeros((), device=x.device)
    if not use_branch1:
        loss0 = F.cross_entropy(model(x), y)
        loss1 = sign = zero
    else:
        if config.batched:
            out0, out1 = model(x, "both")
        else:
            out0, out1 = model(x, 0), model(x, 1)
        loss0, loss1 = F.cross_entropy(out0, y), F.cross_entropy(out1, y)
        sign = config.sign_weight * total_sign_loss(model) if config.sign_weight else zero
    loss = loss0 + loss1 + sign
    loss.backward()
    optimizer.step()
    return {"loss0": loss0.detach(), "loss1": loss1.detach(), "sign": sign.detach()}


def _batches(n: int, batch_size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    for i in range(0, n - batch_size + 1, batch_size):  # drop_last, as the original
        yield order[i : i + batch_size]


def _load_checkpoint(path: Path, config: TrainConfig) -> dict | None:
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a partial/corrupt file must not be trusted
        bad = path.with_suffix(path.suffix + ".corrupt")
        path.replace(bad)
        warnings.warn(f"checkpoint {path} unreadable ({e}); moved to {bad}, starting afresh",
                      stacklevel=3)
        return None
    if ckpt.get("config") != _config_record(config):
        raise ValueError(
            f"checkpoint {path} was written for another training configuration; "
            "delete it or use another checkpoint path"
        )
    return ckpt


def _config_record(config: TrainConfig) -> dict:
    d = asdict(config)
    d["milestones"] = list(d["milestones"])
    return d


def train(
    model: nn.Module,
    splits: ImageSplits,
    config: TrainConfig,
    trigger: ImageData | None = None,
    device: str | torch.device = "cpu",
    checkpoint: str | Path | None = None,
    progress: bool = True,
    desc: str = "training",
    on_epoch: Callable[[nn.Module, dict], dict | None] | None = None,
) -> TrainResult:
    """Train ``model`` (plain or protected) and return it with its history.

    Data stays on ``device`` as uint8 tensors; augmentation runs there. After every epoch a
    checkpoint is written atomically; a rerun with the same ``checkpoint`` resumes from it
    and reproduces the uninterrupted run exactly on the CPU. ``on_epoch(model, record)`` may
    return extra fields for the epoch's history record (e.g. an owner's measurement).
    """
    model.to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    history: list[dict] = []
    best = {"score": -1.0, "epoch": -1, "state": None}
    start = 0
    ckpt_path = Path(checkpoint) if checkpoint else None
    if ckpt_path and (ckpt := _load_checkpoint(ckpt_path, config)):
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        history, best, start = ckpt["history"], ckpt["best"], ckpt["epoch"] + 1

    images = splits.train.images.to(device)
    labels = splits.train.labels.to(device)
    trig_x = trig_y = None
    if trigger is not None and config.triggers_per_batch > 0:
        trig_x = normalize(trigger.images.to(device), splits.mean, splits.std)
        trig_y = trigger.labels.to(device)
    protected = bool(passport_layers(model))
    bar = tqdm(range(start, config.epochs), desc=desc, disable=not progress,
               initial=start, total=config.epochs)
    for epoch in bar:
        lr = _lr_at(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        g_order, g_aug = _epoch_generator(config, epoch, 0), _epoch_generator(config, epoch, 1)
        trig_order = None if trig_x is None else torch.randperm(len(trig_x), generator=g_order)
        model.train()
        sums = {"loss0": 0.0, "loss1": 0.0, "sign": 0.0}
        totals, steps = None, 0
        t0 = time.perf_counter()
        for steps, idx in enumerate(_batches(len(images), config.batch_size, g_order), 1):
            idx = idx.to(device)
            x = images[idx]
            x = augment_crop_flip(x, g_aug) if config.augment else x
            x, y = normalize(x, splits.mean, splits.std), labels[idx]
            if trig_order is not None:
                k = config.triggers_per_batch  # cycle through this epoch's trigger order
                pos = ((steps - 1) * k + torch.arange(k)) % len(trig_order)
                t_idx = trig_order[pos].to(device)
                x, y = torch.cat([x, trig_x[t_idx]]), torch.cat([y, trig_y[t_idx]])
            losses = training_step(model, x, y, optimizer, config, step=steps - 1)
            totals = losses if totals is None else {k: totals[k] + v for k, v in losses.items()}
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        if totals is not None:
            sums = {k: v.item() / steps for k, v in totals.items()}
        record = {"epoch": epoch, "lr": lr, "train_seconds": seconds, **sums}
        branch = "both" if protected else 0
        val = evaluate(model, splits.val, splits.mean, splits.std, branch,
                       config.eval_batch_size, device)
        record["val_acc0"], record["val_acc1"] = val if protected else (val, None)
        if protected:
            record["detection"] = signature_detection(model)["pooled"]
        if config.select == "test":
            test = evaluate(model, splits.test, splits.mean, splits.std, branch,
                            config.eval_batch_size, device)
            record["test_acc0"], record["test_acc1"] = test if protected else (test, None)
        if on_epoch is not None:
            record.update(on_epoch(model, record) or {})
        history.append(record)
        score = _selection_score(record, config.select)
        if score >= best["score"]:
            best = {"score": score, "epoch": epoch,
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        bar.set_postfix(loss=f"{sums['loss0']:.3f}", val=f"{record['val_acc0']:.3f}")
        if ckpt_path:
            atomic_torch_save(
                {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "history": history, "best": best, "config": _config_record(config)},
                ckpt_path,
            )
    bar.close()
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    return TrainResult(model=model, history=history, selected_epoch=best["epoch"])


def _selection_score(record: dict, select: str) -> float:
    """Model selection: the last epoch, or the best mean accuracy of both branches."""
    if select == "last":
        return float(record["epoch"])
    prefix = "test" if select == "test" else "val"
    accs = [record[f"{prefix}_acc0"]]
    if record.get(f"{prefix}_acc1") is not None:
        accs.append(record[f"{prefix}_acc1"])
    return sum(accs) / len(accs)
