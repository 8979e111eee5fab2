"""Two-branch training (book/method.md#method-training) with per-epoch checkpoints and exact resume.

One step mixes trigger samples into the clean batch and, for a protected model, adds the
branch-1 loss and the sign loss to the branch-0 loss. Both branches run in one batched pass by
default; ``batched=False`` is the original two-pass structure (same numbers, tested). Images
and point clouds share this loop; only the batch preparation differs.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .batches import Data, model_inputs, raw_inputs
from .fileio import atomic_torch_save
from .images import ImageSplits, crop_flip
from .points import PointSplits, augment_points
from .profiles import show_progress
from .recipes import Recipe, get_preset, make_optimizer
from .rng import derive_seed
from .safeguards import (
    TrainingDivergedError,
    check_finite,
    check_training_inputs,
    model_identity,
)
from .units import passport_layers, recording_scales, total_sign_loss
from .verify import evaluate, signature_detection

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "amp_dtype",
    "train",
    "training_step",
    "uses_channels_last",
]

Schedule = Literal["summed", "alternating"]
Amp = Literal["bf16", "fp16", "off"]


@dataclass(frozen=True)
class TrainConfig:
    """The owner's training run: a ``Recipe`` plus what is specific to protected training.

    The default recipe is the paper's image recipe (SGD 0.01, batch 64 + 2 triggers, 200
    epochs, ×0.1 at half and three quarters); the 3-D recipe is Adam 1e-3, weight decay 1e-4,
    ×0.7 every 20 epochs, batch 16 (book/method.md#method-point-clouds).
    """

    recipe: Recipe = Recipe()
    triggers_per_batch: int = 2
    schedule: Schedule = "summed"  # "alternating": branch 1 only every `alternate_every` steps
    alternate_every: int = 2
    select: Literal["last", "val", "test"] = "last"  # which epoch's weights are kept
    batched: bool = True  # both branches in one pass (False: two passes, the original's way)
    sign_weight: float = 1.0  # weight of the summed sign loss (1 in the original; 0 = ablation)
    seed: int = 0
    eval_batch_size: int = 500
    # Speed knobs that leave the method unchanged. None = automatic: on for CUDA, off elsewhere
    # (on a CPU, channels_last made AlexNet steps 1.1-1.2x faster but ResNet-18 backward passes
    # pathologically slow, so the CPU profiles turn it on for AlexNet only). amp=None picks
    # bf16 (Ampere+) or fp16 on CUDA; the `faithful` preset sets amp="off" (float32 as the
    # original).
    channels_last: bool | None = None
    amp: Amp | None = None
    compile: bool = False  # torch.compile the forward; the first steps pay the compile time

    def __post_init__(self) -> None:
        if not isinstance(self.recipe, Recipe):
            raise TypeError(f"TrainConfig.recipe must be a pnorm Recipe, got "
                            f"{type(self.recipe).__name__}; e.g. Recipe(epochs=10, lr=0.01)")
        choices = {"schedule": ("summed", "alternating"), "select": ("last", "val", "test"),
                   "amp": (None, "bf16", "fp16", "off")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name} must be one of {allowed}, "
                                 f"got {getattr(self, name)!r}")
        for name, allowed in (("batched", (True, False)), ("compile", (True, False)),
                              ("channels_last", (None, True, False))):
            if not any(getattr(self, name) is a for a in allowed):
                raise ValueError(f"TrainConfig.{name} must be one of {allowed}, "
                                 f"got {getattr(self, name)!r}")
        for name, low in (("alternate_every", 1), ("triggers_per_batch", 0),
                          ("eval_batch_size", 1), ("seed", None)):
            value = getattr(self, name)
            if type(value) is not int or (low is not None and value < low):
                bound = "" if low is None else f" >= {low}"
                raise ValueError(f"TrainConfig.{name} must be an int{bound}, got {value!r}")
        w = self.sign_weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise ValueError(f"TrainConfig.sign_weight must be a finite number >= 0, got {w!r}")


def config_for(preset: str, **overrides) -> TrainConfig:
    """A ``TrainConfig`` for a named preset (``faithful`` or ``clean``), with explicit overrides.

    The preset picks the model-selection split and, for ``faithful``, float32 on every device.
    """
    p = get_preset(preset)
    base = TrainConfig(select=p.select, amp="off" if p.full_precision else None)
    return replace(base, **overrides)


@dataclass
class TrainResult:
    """The trained model (selected epoch loaded), its per-epoch history and the choice made."""

    model: nn.Module
    history: list[dict] = field(default_factory=list)
    selected_epoch: int = -1


def _epoch_generator(config: TrainConfig, epoch: int, stream: int) -> torch.Generator:
    """Each epoch's shuffling/augmentation has its own seed, so a resume replays it exactly."""
    return torch.Generator().manual_seed(config.seed * 1_000_003 + epoch * 7 + stream)


def amp_dtype(config: TrainConfig, device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype a run uses on ``device`` (None: full float32).

    Automatic (``amp=None``): bfloat16 on CUDA cards of compute capability 8.0 and later,
    float16 (with loss scaling) on older ones such as the T4, off on every other device.
    """
    choice = config.amp
    device = torch.device(device)
    if choice is None:
        if device.type != "cuda":
            return None
        choice = "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
    if choice not in ("bf16", "fp16", "off"):
        raise ValueError(f"amp must be 'bf16', 'fp16', 'off' or None, got {choice!r}")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[choice]


def uses_channels_last(config: TrainConfig, device: str | torch.device) -> bool:
    """Whether an image run keeps activations in NHWC (``channels_last``).

    Automatic means CUDA only; ``train`` applies it to image inputs only."""
    if config.channels_last is None:
        return torch.device(device).type == "cuda"
    return bool(config.channels_last)


def training_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    step: int = 0,
    *,
    forward: Callable[..., object] | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, torch.Tensor]:
    """One optimiser step; returns detached losses (tensors: no host sync per step).

    Protected models: L = CE(branch 0) + CE(branch 1) + Σ sign losses
    (book/method.md#method-training); with
    the alternating schedule the branch-1 terms are added every ``alternate_every`` steps.
    ``forward`` (e.g. a compiled model) replaces ``model``'s call; ``scaler`` scales fp16 losses.
    """
    optimizer.zero_grad(set_to_none=True)
    run = model if forward is None else forward
    protected = bool(passport_layers(model))
    use_branch1 = protected and (
        config.schedule == "summed" or step % config.alternate_every == config.alternate_every - 1
    )
    zero = torch.zeros((), device=x.device)
    # An eager forward records the passport scales it computes, so the sign loss reuses them.
    record = recording_scales(model) if forward is None else contextlib.nullcontext({})
    with record as scales, _autocast(config, x.device):  # autocast: a no-op unless CUDA AMP
        if not use_branch1:
            (loss0,), loss1 = _branch_losses(model, run, x, y, 0), zero
        elif config.batched:
            loss0, loss1 = _branch_losses(model, run, x, y, "both")
        else:
            (loss0,), (loss1,) = (_branch_losses(model, run, x, y, b) for b in (0, 1))
    # The sign loss (float32, outside autocast) holds the signature in the sign of small scales.
    use_sign = use_branch1 and config.sign_weight
    sign = config.sign_weight * total_sign_loss(model, scales) if use_sign else zero
    loss = loss0 + loss1 + sign
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:  # fp16: scaled backward; the scaler's inf check costs one host sync per step
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return {"loss0": loss0.detach(), "loss1": loss1.detach(), "sign": sign.detach()}


def _branch_losses(model: nn.Module, run: Callable[..., object], x: torch.Tensor,
                   y: torch.Tensor, branch) -> list[torch.Tensor]:
    """Cross-entropy per branch, plus the model's ``transform_penalty`` where it has one.

    PointNet adds its feature-transform regulariser to each branch's loss
    (book/method.md#method-point-clouds).
    """
    penalty = getattr(model, "transform_penalty", None)
    if penalty is None:
        out = run(x, branch)
        return [F.cross_entropy(o, y) for o in (out if branch == "both" else (out,))]
    out, trans = run(x, branch, return_transform=True)
    pairs = zip(out, trans, strict=True) if branch == "both" else [(out, trans)]
    return [F.cross_entropy(o, y) + penalty(t) for o, t in pairs]


def _autocast(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    dtype = amp_dtype(config, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _epoch_plan(
    n: int,
    config: TrainConfig,
    augment: bool,
    n_triggers: int,
    g_order: torch.Generator,
    g_aug: torch.Generator,
    device: torch.device,
    padding: int = 4,
) -> dict[str, torch.Tensor]:
    """All of an epoch's random draws, made on the CPU and moved to ``device`` in one go.

    Row ``s`` holds step ``s``'s sample indices, crop offsets, flips and trigger indices. The
    draws come in the order the per-step loop used (so CPU runs stay bit-identical); moving
    them once per epoch removes every per-step host-to-device copy and its synchronisation.
    """
    bs = config.recipe.batch_size
    trig_order = torch.randperm(n_triggers, generator=g_order) if n_triggers else None
    steps = n // bs
    plan = {"idx": torch.randperm(n, generator=g_order)[: steps * bs].view(steps, bs)}
    if augment:
        draws = [
            (
                torch.randint(0, 2 * padding + 1, (bs,), generator=g_aug),
                torch.randint(0, 2 * padding + 1, (bs,), generator=g_aug),
                torch.rand(bs, generator=g_aug) < 0.5,
            )
            for _ in range(steps)
        ]
        for key, part in zip(("oy", "ox", "flip"), zip(*draws, strict=True), strict=True):
            plan[key] = torch.stack(part) if draws else torch.empty(0, bs)
    if trig_order is not None:
        k = config.triggers_per_batch  # cycle through this epoch's trigger order
        pos = (torch.arange(steps)[:, None] * k + torch.arange(k)) % n_triggers
        plan["trig"] = trig_order[pos]
    return {key: v.to(device) for key, v in plan.items()}


def _load_checkpoint(path: Path, config: TrainConfig, identity: str) -> dict | None:
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
    if ckpt.get("model_identity") != identity:
        raise ValueError(
            f"checkpoint {path} was written for another model (other architecture, passports "
            "or signature) and cannot resume this one; delete it or use another checkpoint path"
        )
    return ckpt


def _config_record(config: TrainConfig) -> dict:
    d = asdict(config)
    d["recipe"]["milestones"] = list(d["recipe"]["milestones"])
    return d


@dataclass
class _Feed:
    """The training set on the device: raw samples, labels, ready triggers, image constants."""

    samples: torch.Tensor  # uint8 images or float32 clouds
    labels: torch.Tensor
    trig_x: torch.Tensor | None  # model inputs (normalised), never augmented
    trig_y: torch.Tensor | None
    mean: torch.Tensor | None  # images only: normalize()'s constants, made once
    std: torch.Tensor | None


def _feed(splits: ImageSplits | PointSplits, trigger: Data | None, config: TrainConfig,
          device: torch.device) -> _Feed:
    samples = raw_inputs(splits.train).to(device)
    trig_x = trig_y = None
    if trigger is not None and config.triggers_per_batch > 0:
        trig_x = model_inputs(raw_inputs(trigger).to(device), splits.mean, splits.std)
        trig_y = trigger.labels.to(device)
    mean = std = None
    if samples.dtype == torch.uint8:  # no per-step host-to-device copy of the constants
        mean = torch.tensor(splits.mean, dtype=torch.float32, device=device).view(-1, 1, 1)
        std = torch.tensor(splits.std, dtype=torch.float32, device=device).view(-1, 1, 1)
    return _Feed(samples, splits.train.labels.to(device), trig_x, trig_y, mean, std)


def _epoch_batches(feed: _Feed, config: TrainConfig, epoch: int, device: torch.device,
                   channels_last: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch's (inputs, labels) batches, every random draw fixed by (seed, epoch).

    Images are cropped, flipped and normalised step by step on the device; clouds are
    augmented for the whole epoch in one call (book/method.md#method-point-clouds). Triggers are
    appended as is.
    """
    g_order, g_aug = _epoch_generator(config, epoch, 0), _epoch_generator(config, epoch, 1)
    images = feed.samples.dtype == torch.uint8
    n_trig = 0 if feed.trig_x is None else len(feed.trig_x)
    augment = config.recipe.augment
    plan = _epoch_plan(len(feed.samples), config, augment and images, n_trig, g_order, g_aug,
                       device)
    clouds = None
    if not images and augment:
        idx = plan["idx"]
        clouds = augment_points(feed.samples[idx.flatten()], g_aug).view(
            *idx.shape, *feed.samples.shape[1:])
    for s, idx in enumerate(plan["idx"]):  # everything below stays on the device
        if images:
            x = feed.samples[idx]
            if augment:
                x = crop_flip(x, plan["oy"][s], plan["ox"][s], plan["flip"][s])
            x = (x.float() / 255.0 - feed.mean) / feed.std
        else:
            x = feed.samples[idx] if clouds is None else clouds[s]
        y = feed.labels[idx]
        if "trig" in plan:
            t_idx = plan["trig"][s]
            x, y = torch.cat([x, feed.trig_x[t_idx]]), torch.cat([y, feed.trig_y[t_idx]])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, y


def train(
    model: nn.Module,
    splits: ImageSplits | PointSplits,
    config: TrainConfig,
    trigger: Data | None = None,
    device: str | torch.device = "cpu",
    checkpoint: str | Path | None = None,
    progress: bool = True,
    desc: str = "training",
    on_epoch: Callable[[nn.Module, dict], dict | None] | None = None,
) -> TrainResult:
    """Train ``model`` (plain or protected) on images or point clouds; return it with its history.

    Data stays on ``device`` (images as uint8); augmentation runs there, and each epoch's
    random draws reach the device in one copy, so no step waits for the host. On CUDA the
    model runs under autocast and image models in ``channels_last`` unless ``config`` says
    otherwise; the model is returned in the default layout. After
    every epoch a checkpoint is written atomically; a rerun with the same ``checkpoint``
    resumes from it and reproduces the uninterrupted run exactly on the CPU (dropout draws
    from a per-epoch seed). ``on_epoch(model, record)`` may return extra fields for the
    epoch's history record (e.g. an owner's measurement).
    """
    check_training_inputs(model, splits, trigger, config.recipe.batch_size,
                          config.triggers_per_batch > 0)
    identity = model_identity(model)
    device = torch.device(device)
    model.to(device)
    channels_last = uses_channels_last(config, device) and raw_inputs(splits.train).dim() == 4
    if channels_last:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if config.compile else None
    scaler = torch.amp.GradScaler(device.type) if amp_dtype(config, device) == torch.float16 \
        else None
    optimizer = make_optimizer(model.parameters(), config.recipe)
    history: list[dict] = []
    best = {"score": -1.0, "epoch": -1, "state": None}
    start = 0
    ckpt_path = Path(checkpoint) if checkpoint else None
    if ckpt_path and (ckpt := _load_checkpoint(ckpt_path, config, identity)):
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        history, best, start = ckpt["history"], ckpt["best"], ckpt["epoch"] + 1

    feed = _feed(splits, trigger, config, device)
    protected = bool(passport_layers(model))
    epochs = config.recipe.epochs
    lrs = config.recipe.epoch_lrs()
    bar = tqdm(range(start, epochs), desc=desc, disable=not show_progress(progress),
               initial=start, total=epochs)
    for epoch in bar:
        lr = lrs[epoch]
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        totals, steps, kept = None, 0, []
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(derive_seed(config.seed, "dropout", str(epoch)))
            for steps, (x, y) in enumerate(
                    _epoch_batches(feed, config, epoch, device, channels_last), 1):
                losses = training_step(model, x, y, optimizer, config, step=steps - 1,
                                       forward=forward, scaler=scaler)
                kept.append(losses)  # checked once, at the end of the epoch
                totals = losses if totals is None else {k: totals[k] + v
                                                        for k, v in losses.items()}
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        # before anything of the epoch is kept
        check_finite(model, kept, epoch, config.recipe.epochs, config.recipe.lr)
        sums = {"loss0": 0.0, "loss1": 0.0, "sign": 0.0}
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
                 "history": history, "best": best, "config": _config_record(config),
                 "model_identity": identity},
                ckpt_path,
            )
    bar.close()
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
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
