"""Networks built from a per-layer passport map, and the public export that strips all secrets.

Every model here takes ``forward(x, branch=0)``: ``model(x)`` is the deployed branch; ``branch=1``
runs the passport branch; ``branch="both"`` runs both in one call and returns a pair
(``pnorm.branches``: what the branches share is computed once).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .branches import Pair, batch_halves, pair_map, run_both
from .layers import (
    Branch,
    BranchNormUnit,
    ConvNormAct,
    NormKind,
    PassportAwareNorm,
    check_branch,
)

Scheme = Literal["plain", "pan", "deepipr"]

__all__ = [
    "ALEXNET_LAYERS",
    "AlexNetCIFAR",
    "branch_for",
    "build_model",
    "export_public",
    "init_weights",
    "make_unit",
    "passport_layers",
    "recording_scales",
    "replace_module",
    "resolve_units",
    "total_sign_loss",
    "unit_layers",
]

# Widths of the five conv units of the CIFAR AlexNet (PAN_SPEC §3.5).
_ALEXNET_WIDTHS = (64, 192, 384, 256, 256)
_ALEXNET_KERNELS = (5, 5, 3, 3, 3)
ALEXNET_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")

# scheme -> (norm of every unit, MLP in passport layers, shared statistics between branches)
_SCHEMES: dict[str, tuple[NormKind, bool, bool | None]] = {
    "plain": ("bn", False, False),
    "pan": ("bn", True, False),
    "deepipr": ("gn", False, True),
}


def passport_layers(model: nn.Module) -> dict[str, PassportAwareNorm]:
    """The model's passport layers by module name, in forward (registration) order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, PassportAwareNorm)}


def total_sign_loss(model: nn.Module,
                    scales: dict[nn.Module, torch.Tensor] | None = None) -> torch.Tensor:
    """Total sign loss: the plain sum over all passport layers (PAN_SPEC §2).

    ``scales`` (from ``recording_scales``) reuses the forward's scales, as the original does;
    layers missing from it, or whose scales autocast computed in lower precision, convolve
    their passports again.
    """
    scales = scales or {}
    losses = []
    for layer in passport_layers(model).values():
        s = scales.get(layer)
        full = s is not None and s.dtype == layer.gamma0.dtype
        losses.append(layer.sign_loss(s if full else None))
    if not losses:
        raise ValueError("the model has no passport layers, so it has no sign loss")
    return torch.stack(losses).sum()


@contextlib.contextmanager
def recording_scales(model: nn.Module) -> Iterator[dict[nn.Module, torch.Tensor]]:
    """Within the block, every passport layer's branch-1 forward records its ``s_gamma``.

    ``total_sign_loss(model, scales)`` then needs no second convolution of the passports.
    """
    record: dict[nn.Module, torch.Tensor] = {}
    layers = list(passport_layers(model).values())
    for layer in layers:
        layer.scale_record = record
    try:
        yield record
    finally:
        for layer in layers:
            layer.scale_record = None


def unit_layers(model: nn.Module) -> dict[str, nn.Module]:
    """All conv units (plain or passport-aware) by module name, in forward order."""
    kinds = (PassportAwareNorm, ConvNormAct)
    return {n: m for n, m in model.named_modules() if isinstance(m, kinds)}


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Swap the sub-module called ``name`` (dotted path) for ``new`` in place."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def resolve_units(
    arch: str,
    layer_names: Iterable[str],
    scheme: str,
    passport_layers: Iterable[str] | None,
    num_classes: int,
    width: float,
    schemes: dict[str, tuple[NormKind, bool, bool | None]] = _SCHEMES,
) -> tuple[NormKind, bool, bool | None, set[str]]:
    """Check the arguments every model shares and resolve its passport map.

    Returns the scheme's (default norm, MLP flag, shared statistics) and the set of units that
    carry passports (none for ``plain``); ``arch`` names the model in error messages.
    """
    if scheme not in schemes:
        raise ValueError(f"scheme must be one of {sorted(schemes)}, got {scheme!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    names = tuple(layer_names)
    chosen = set() if scheme == "plain" else set(
        names if passport_layers is None else passport_layers)
    unknown = chosen - set(names)
    if unknown:
        raise ValueError(
            f"unknown layer(s) {sorted(unknown)} in the passport map; {arch} has {list(names)}"
        )
    return (*schemes[scheme], chosen)


def make_unit(
    weight_layer: nn.Module,
    passport_shape: tuple[int, ...],
    passport: bool,
    norm: NormKind,
    mlp: bool,
    shared: bool,
    activation: bool = True,
    after_passport: bool = False,
) -> nn.Module:
    """A passport layer when ``passport`` is true, else a plain conv/linear-norm(-ReLU) unit.

    A plain BatchNorm unit ``after_passport`` (downstream of a passport layer) gets a private
    branch-1 normaliser, since its two branches see different activations (``BranchNormUnit``).
    """
    if passport:
        return PassportAwareNorm(weight_layer, passport_shape, norm=norm, mlp=mlp,
                                 shared_stats=shared, activation=activation)
    if after_passport and norm == "bn":
        return BranchNormUnit(weight_layer, activation=activation)
    return ConvNormAct(weight_layer, norm=norm, activation=activation)


def branch_for(model: nn.Module, branch: Branch) -> Branch:
    """Validate ``branch`` for ``model``: any passport branch needs passport layers."""
    branch = check_branch(branch)
    if branch != 0 and not passport_layers(model):
        raise ValueError(
            "this model has no passport layers (a public export?): attach the owner's "
            "vault with Vault.attach(model) before asking for branch 1"
        )
    return branch


@torch.no_grad()
def init_weights(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Initialise every conv/linear weight from ``generator`` (no global RNG).

    Convs: Kaiming normal, fan-out, ReLU gain (as the original). Linear layers: PyTorch's
    default rule (Kaiming uniform with a=sqrt(5), bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))).
    Passport MLPs are drawn last, so plain, DeepIPR-style and PAN models built with the same
    seed start from identical convolution and classifier weights.
    """
    modules = [(n, m) for n, m in model.named_modules() if ".mlp." not in f".{n}."]
    modules += [(n, m) for n, m in model.named_modules() if ".mlp." in f".{n}."]
    for _, m in modules:
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(
                m.weight, mode="fan_out", nonlinearity="relu", generator=generator
            )
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            if m.bias is not None:
                bound = 1 / math.sqrt(m.in_features)
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
    return model


class AlexNetCIFAR(nn.Module):
    """The 5-conv AlexNet for 32×32 inputs used by PAN and DeepIPR (PAN_SPEC §3.5).

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


def _resnet18(**kwargs: Any) -> nn.Module:
    """Build ResNet18CIFAR; imported on first use because ``pnorm.resnet`` imports this module."""
    from .resnet import ResNet18CIFAR

    return ResNet18CIFAR(**kwargs)


def _pointnet(**kwargs: Any) -> nn.Module:
    """Build PointNetCls; imported on first use because ``pnorm.pointnet`` imports this module."""
    from .pointnet import PointNetCls

    return PointNetCls(**kwargs)


_ARCHS = {"alexnet": AlexNetCIFAR, "resnet18": _resnet18, "pointnet": _pointnet}


def build_model(config: dict[str, Any], seed: int = 0) -> nn.Module:
    """Rebuild a model from the ``model.config`` dictionary every model here carries."""
    cfg = dict(config)
    arch = cfg.pop("arch", None)
    if arch not in _ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(_ARCHS)}")
    return _ARCHS[arch](**cfg, seed=seed)


@torch.no_grad()
def export_public(model: nn.Module) -> nn.Module:
    """The deployable network: every passport layer folded to conv -> affine norm -> act.

    The result holds no passport, signature, MLP or branch-1 normaliser (PAN_SPEC §1.5); in
    eval mode its outputs equal branch 0 of ``model``.
    """
    public = copy.deepcopy(model)
    private = [(n, m) for n, m in public.named_modules()
               if isinstance(m, (PassportAwareNorm, BranchNormUnit))]
    for name, layer in private:
        replace_module(public, name, layer.to_public())
    if hasattr(public, "config"):
        public.config = {**public.config, "scheme": "plain", "passport_layers": []}
    return public
