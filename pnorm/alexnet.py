"""The 5-conv AlexNet for 32×32 inputs used by PAN and DeepIPR, from a per-layer passport map.

See book/method.md#method-architectures.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .branches import Pair, batch_halves, pair_map, run_both
from .layers import Branch, NormKind
from .units import Scheme, branch_for, init_weights, make_unit, resolve_units

__all__ = ["ALEXNET_LAYERS", "AlexNetCIFAR"]

# Widths of the five conv units of the CIFAR AlexNet (book/method.md#method-architectures).
_ALEXNET_WIDTHS = (64, 192, 384, 256, 256)
_ALEXNET_KERNELS = (5, 5, 3, 3, 3)
ALEXNET_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")

class AlexNetCIFAR(nn.Module):
    """The 5-conv AlexNet for 32×32 inputs used by PAN and DeepIPR
    (book/method.md#method-architectures).

    ``scheme`` picks plain / PAN / DeepIPR-style units; ``passport_layers`` names which of
    ``conv1..conv5`` carry passports; ``width`` scales every channel count (CPU profiles).
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: float = 1.0,
        scheme: Scheme = "pan",
        passport_layers: Iterable[str] | None = None,
        norm: NormKind | None = None,
        image_size: int = 32,
        seed: int = 0,
    ):
        super().__init__()
        default_norm, mlp, shared, chosen = resolve_units(
            "AlexNetCIFAR", ALEXNET_LAYERS, scheme, passport_layers, num_classes, width)
        norm = norm or default_norm
        self.config: dict[str, Any] = {
            "arch": "alexnet",
            "num_classes": num_classes,
            "width": width,
            "scheme": scheme,
            "passport_layers": sorted(chosen),
            "norm": norm,
            "image_size": image_size,
        }
        channels = [max(1, round(c * width)) for c in _ALEXNET_WIDTHS]
        sizes = [image_size, image_size // 2] + [image_size // 4] * 3
        c_in = 3
        specs = zip(ALEXNET_LAYERS, channels, _ALEXNET_KERNELS, sizes, strict=True)
        for i, (name, c_out, k, size) in enumerate(specs):
            conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False)
            after = any(n in chosen for n in ALEXNET_LAYERS[:i])
            setattr(self, name, make_unit(conv, (1, c_in, size, size), name in chosen, norm,
                                          mlp, shared, after_passport=after))
            c_in = c_out
        self.classifier = nn.Linear(channels[-1] * (image_size // 8) ** 2, num_classes)
        init_weights(self, torch.Generator().manual_seed(seed))

    def forward(self, x: torch.Tensor, branch: Branch = 0):
        branch = branch_for(self, branch)
        stages = [_Pooled(self.conv1), _Pooled(self.conv2), self.conv3, self.conv4,
                  _Pooled(self.conv5)]
        if branch == "both":
            pair = run_both(stages, x, batch=batch_halves(self, x))
            return pair_map(lambda h: self.classifier(h.flatten(1)), pair)
        for stage in stages:
            x = stage(x, branch)
        return self.classifier(x.flatten(1))


class _Pooled:
    """A unit followed by 2×2 max-pooling: one stage of AlexNet for ``run_both``."""

    def __init__(self, unit: nn.Module):
        self.unit = unit

    def __call__(self, x: torch.Tensor, branch: Branch = 0) -> torch.Tensor:
        return F.max_pool2d(self.unit(x, branch), 2)

    def forward_shared(self, x: torch.Tensor) -> Pair:
        return pair_map(lambda h: F.max_pool2d(h, 2), self.unit.forward_shared(x))
