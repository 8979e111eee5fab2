"""Building blocks every architecture shares: scheme resolution, unit factory, weight init,
the sign-loss total and module lookups.

A *unit* is a conv/linear layer with its normalisation and activation: plain (``ConvNormAct``),
plain with a private branch-1 norm (``BranchNormUnit``) or passport-aware (``PassportAwareNorm``).
Architectures (``alexnet``, ``resnet``, ``pointnet``) build themselves from these helpers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Literal

import torch
from torch import nn

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
    "SCHEMES",
    "Scheme",
    "branch_for",
    "init_weights",
    "make_unit",
    "passport_layers",
    "recording_scales",
    "replace_module",
    "resolve_units",
    "total_sign_loss",
    "unit_layers",
]

# scheme -> (norm of every unit, MLP in passport layers, shared statistics between branches)
SCHEMES: dict[str, tuple[NormKind, bool, bool | None]] = {
    "plain": ("bn", False, False),
    "pan": ("bn", True, False),
    "deepipr": ("gn", False, True),
}


def passport_layers(model: nn.Module) -> dict[str, PassportAwareNorm]:
    """The model's passport layers by module name, in forward (registration) order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, PassportAwareNorm)}


def total_sign_loss(model: nn.Module,
                    scales: dict[nn.Module, torch.Tensor] | None = None) -> torch.Tensor:
    """Total sign loss: the plain sum over all passport layers (book/method.md#method-sign-loss).

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
    schemes: dict[str, tuple[NormKind, bool, bool | None]] = SCHEMES,
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
