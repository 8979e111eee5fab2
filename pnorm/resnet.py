"""ResNet-18 for 32×32 inputs built from a per-layer passport map.

See book/method.md#method-architectures.

Two variants from one builder: ``faithful`` keeps the original code's ReLU at the end of every
unit, so the block's second conv and its projection shortcut are activated *before* the residual
add; ``standard`` is the textbook block (no activation before the add, one ReLU after it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .branches import Pair, apply_unit, batch_halves, pair_map, run_both
from .layers import Branch, NormKind
from .units import Scheme, branch_for, init_weights, make_unit, resolve_units

Variant = Literal["faithful", "standard"]

__all__ = [
    "RESNET18_LAYER4",
    "RESNET18_LAYERS",
    "BasicBlock",
    "ResNet18CIFAR",
    "resnet18_layer_names",
]

_STAGE_WIDTHS = (64, 128, 256, 512)
_STAGE_STRIDES = (1, 2, 2, 2)
_BLOCKS_PER_STAGE = 2


def resnet18_layer_names() -> tuple[str, ...]:
    """Every conv unit of ResNet-18-CIFAR in forward order: the names a passport map may use."""
    names = ["stem"]
    for s in range(1, len(_STAGE_WIDTHS) + 1):
        for b in range(_BLOCKS_PER_STAGE):
            names += [f"layer{s}.{b}.conv1", f"layer{s}.{b}.conv2"]
            if s > 1 and b == 0:
                names.append(f"layer{s}.{b}.shortcut")
    return tuple(names)


RESNET18_LAYERS = resnet18_layer_names()  # 20 units, all passport layers in PAN's default map
# The original's `_ori` map: only the five units of the last stage carry passports.
RESNET18_LAYER4 = tuple(n for n in RESNET18_LAYERS if n.startswith("layer4."))


def _unit(
    name: str,
    c_in: int,
    c_out: int,
    kernel: int,
    stride: int,
    size: int,
    chosen: set[str],
    norm: NormKind,
    mlp: bool,
    shared: bool,
    activation: bool,
    after_passport: bool,
) -> nn.Module:
    """One conv unit: a passport layer if ``name`` is in the map, else a plain conv-BN(-ReLU)
    (with a private branch-1 BN when it is ``after_passport``, see ``make_unit``)."""
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
    return make_unit(conv, (1, c_in, size, size), name in chosen, norm, mlp, shared, activation,
                     after_passport)


class BasicBlock(nn.Module):
    """Two 3×3 conv units plus an identity or 1×1 projection shortcut, then a ReLU.

    ``faithful``: ``relu(relu(conv2) + relu(shortcut))`` as the original; ``standard``:
    ``relu(conv2 + shortcut)``. Units are created by the ResNet so names match the passport map.
    """

    def __init__(self, conv1: nn.Module, conv2: nn.Module, shortcut: nn.Module | None):
        super().__init__()
        self.conv1 = conv1
        self.conv2 = conv2
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor, branch: Branch = 0) -> torch.Tensor:
        out = self.conv2(self.conv1(x, branch), branch)
        skip = x if self.shortcut is None else self.shortcut(x, branch)
        return F.relu(out + skip)

    def forward_shared(self, x: torch.Tensor) -> Pair:
        """Both branches for an input they share (``pnorm.branches``)."""
        out = apply_unit(self.conv2, self.conv1.forward_shared(x))
        skip = (x, x) if self.shortcut is None else self.shortcut.forward_shared(x)
        return pair_map(lambda o, s: F.relu(o + s), out, skip)


class ResNet18CIFAR(nn.Module):
    """CIFAR ResNet-18 (3×3 stem, no max-pool, 4 stages of 2 blocks, global average pool).

    ``variant`` picks the faithful or standard residual block; ``scheme`` and
    ``passport_layers`` (names from ``RESNET18_LAYERS``, default all 20) pick the units'
    kind; ``width`` scales every channel count (CPU profiles and tests).
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: float = 1.0,
        scheme: Scheme = "pan",
        passport_layers: Iterable[str] | None = None,
        norm: NormKind | None = None,
        image_size: int = 32,
        variant: Variant = "faithful",
        seed: int = 0,
    ):
        super().__init__()
        if variant not in ("faithful", "standard"):
            raise ValueError(f"variant must be 'faithful' or 'standard', got {variant!r}")
        if image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8, got {image_size}")
        default_norm, mlp, shared, chosen = resolve_units(
            "ResNet18CIFAR", RESNET18_LAYERS, scheme, passport_layers, num_classes, width)
        norm = norm or default_norm
        self.config: dict[str, Any] = {
            "arch": "resnet18",
            "num_classes": num_classes,
            "width": width,
            "scheme": scheme,
            "passport_layers": [n for n in RESNET18_LAYERS if n in chosen],
            "norm": norm,
            "image_size": image_size,
            "variant": variant,
        }
        pre_add_act = variant == "faithful"  # the original's trailing ReLU on conv2/shortcut
        unit_kw = {"chosen": chosen, "norm": norm, "mlp": mlp, "shared": shared}
        widths = [max(1, round(c * width)) for c in _STAGE_WIDTHS]
        self.stem = _unit("stem", 3, widths[0], 3, 1, image_size, activation=True,
                          after_passport=False, **unit_kw)
        upstream = "stem" in chosen  # is a passport layer upstream of the next block?
        c_in, size = widths[0], image_size
        for s, (c_out, stride) in enumerate(zip(widths, _STAGE_STRIDES, strict=True), 1):
            blocks = []
            for b in range(_BLOCKS_PER_STAGE):
                st = stride if b == 0 else 1
                prefix = f"layer{s}.{b}"
                conv1 = _unit(f"{prefix}.conv1", c_in, c_out, 3, st, size,
                              activation=True, after_passport=upstream, **unit_kw)
                shortcut = None
                if st != 1 or c_in != c_out:
                    shortcut = _unit(f"{prefix}.shortcut", c_in, c_out, 1, st, size,
                                     activation=pre_add_act, after_passport=upstream, **unit_kw)
                size //= st
                conv2 = _unit(f"{prefix}.conv2", c_out, c_out, 3, 1, size, activation=pre_add_act,
                              after_passport=upstream or f"{prefix}.conv1" in chosen, **unit_kw)
                blocks.append(BasicBlock(conv1, conv2, shortcut))
                upstream = upstream or any(n.startswith(f"{prefix}.") for n in chosen)
                c_in = c_out
            setattr(self, f"layer{s}", nn.ModuleList(blocks))  # blocks "0", "1"
        self.classifier = nn.Linear(widths[-1], num_classes)
        init_weights(self, torch.Generator().manual_seed(seed))

    def forward(self, x: torch.Tensor, branch: Branch = 0):
        branch = branch_for(self, branch)
        stages = [self.stem, *self.layer1, *self.layer2, *self.layer3, *self.layer4]
        if branch == "both":
            pair = run_both(stages, x, batch=batch_halves(self, x))
            return pair_map(lambda h: self.classifier(h.mean((2, 3))), pair)
        for stage in stages:
            x = stage(x, branch)
        return self.classifier(x.mean((2, 3)))
