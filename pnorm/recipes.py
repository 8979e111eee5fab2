"""How to optimise, and which quirks of the original code to keep: ``Recipe`` and ``Preset``.

One ``Recipe`` type describes every optimisation in the book (the owner's training, the
attacker's fine-tuning, passport forging and the ERB forgery), so a budget means the same
thing everywhere. A ``Preset`` names the original code's number-changing choices once:
``faithful`` keeps each of them, ``clean`` fixes each (book/method.md#method-quirks).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

__all__ = ["PRESETS", "Preset", "Recipe", "flat_fields", "get_preset", "make_optimizer"]


@dataclass(frozen=True)
class Recipe:
    """Epochs, batch size, optimiser and learning-rate schedule of one optimisation.

    ``milestones`` are fractions of ``epochs`` at which a step schedule multiplies the learning
    rate by ``lr_gamma`` (the defaults, 0.5 and 0.75, are the paper's 100 and 150 of 200
    epochs); ``lr_schedule="cosine"`` anneals it to 0 instead (torch's ``CosineAnnealingLR``).
    Defaults are the paper's image recipe: SGD 0.01, momentum 0.9, weight decay 5e-4, batch 64.
    """

    epochs: int = 200
    batch_size: int = 64
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9  # SGD only
    weight_decay: float = 5e-4
    lr_schedule: Literal["step", "cosine"] = "step"
    milestones: tuple[float, ...] = (0.5, 0.75)
    lr_gamma: float = 0.1
    augment: bool = True

    def __post_init__(self) -> None:
        choices = {"optimizer": ("sgd", "adam"), "lr_schedule": ("step", "cosine")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"Recipe.{name} must be one of {allowed}, "
                                 f"got {getattr(self, name)!r}")
        if self.epochs < 0:
            raise ValueError(f"Recipe.epochs must be >= 0, got {self.epochs}")
        if not self.batch_size > 0:
            raise ValueError(f"Recipe.batch_size must be positive, got {self.batch_size}")
        for name, strict in (("lr", True), ("lr_gamma", True), ("momentum", False),
                             ("weight_decay", False)):
            value = getattr(self, name)
            if not (math.isfinite(value) and (value > 0 if strict else value >= 0)):
                raise ValueError(f"Recipe.{name} must be a finite number "
                                 f"{'>' if strict else '>='} 0, got {value}")
        if any(not 0.0 < m < 1.0 for m in self.milestones):
            raise ValueError(f"Recipe.milestones are fractions of the epochs in (0, 1), got "
                             f"{self.milestones}; e.g. (0.5, 0.75) decays at half and three "
                             f"quarters of training")
        object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))

    @property
    def milestone_epochs(self) -> tuple[int, ...]:
        """The epochs (0-based) at which the step schedule decays the learning rate."""
        # Halves round up, and no decay happens before the first epoch has run.
        return tuple(max(1, math.floor(m * self.epochs + 0.5)) for m in self.milestones)

    def epoch_lrs(self) -> list[float]:
        """The learning rate of every epoch, in order (what the optimiser uses in that epoch)."""
        if self.lr_schedule == "step":
            return [self.lr * self.lr_gamma ** sum(e >= m for m in self.milestone_epochs)
                    for e in range(self.epochs)]
        # Cosine: replay torch's scheduler, so the values are exactly the ones it would set.
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, self.epochs))
        lrs = []
        for _ in range(self.epochs):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()  # no gradient: changes nothing, keeps the scheduler's order check quiet
            sched.step()
        return lrs


def flat_fields(config: Any) -> dict[str, Any]:
    """A config dataclass as one flat dict, its ``recipe`` fields merged in (for records)."""
    fields = asdict(config)
    return {**{k: v for k, v in fields.items() if k != "recipe"}, **fields.get("recipe", {})}


def make_optimizer(params: Iterable[torch.Tensor], recipe: Recipe) -> torch.optim.Optimizer:
    """SGD (with momentum) or Adam as ``recipe`` says: one builder for every optimisation."""
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                               weight_decay=recipe.weight_decay)
    return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


@dataclass(frozen=True)
class Preset:
    """One switch per choice of the original code that changes a number.

    ``faithful`` keeps every one of them, ``clean`` fixes every one; book/method.md#method-quirks
    lists what each does in the original.
    """

    name: str
    select: Literal["test", "val"]  # which split picks the kept epoch (the original: test)
    full_precision: bool  # train in float32 on CUDA too (the original has no autocast)
    reset_bn_stats: bool  # fine-tuning's clone starts with fresh BN statistics (lost by name)
    prune_target: Literal["protected", "public"]  # prune the owner's full model, or the release
    prune_all_parameters: bool  # every parameter is ranked (else conv and linear weights only)
    prune_exempt: tuple[str, ...]  # parameter-name substrings kept from pruning ("fc", "mlp")
    pointnet_quirks: bool  # 3-D: shared branch BN statistics and the regulariser's bracket bug


PRESETS: dict[str, Preset] = {
    "faithful": Preset(
        "faithful", select="test", full_precision=True, reset_bn_stats=True,
        prune_target="protected", prune_all_parameters=True, prune_exempt=("mlp", "fc"),
        pointnet_quirks=True),
    "clean": Preset(
        "clean", select="val", full_precision=False, reset_bn_stats=False,
        prune_target="public", prune_all_parameters=False, prune_exempt=(),
        pointnet_quirks=False),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` ("faithful" or "clean"), with a clear error otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {list(PRESETS)}")
    return PRESETS[name]
