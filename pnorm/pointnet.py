"""PointNet classifier with passport-aware normalization (book/method.md#method-point-clouds).

Input and feature T-Nets, then six units that may carry passports: three per-point Conv1d
units and three Linear units. ``forward(x, branch)`` follows the contract of ``pnorm.models``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .branches import Pair, apply_unit, pair_map
from .layers import Branch, NormKind, WeightLayer
from .units import Scheme, branch_for, init_weights, make_unit, resolve_units

__all__ = [
    "FEATURE_TRANSFORM_WEIGHT",
    "POINTNET_LAYERS",
    "PointNetCls",
    "TNet",
    "feature_transform_regularizer",
    "pointnet_loss",
]

POINTNET_LAYERS = ("convp1", "convp2", "convp3", "p1", "p2", "p3")
# Weight of the T64 regulariser in the loss (book/method.md#method-point-clouds).
FEATURE_TRANSFORM_WEIGHT = 0.001
_TNET_WIDTHS = (64, 128, 1024, 512, 256)  # conv, conv, conv, fc, fc
_MAIN_WIDTHS = (64, 128, 1024, 512, 256)  # convp1, convp2, convp3, p1, p2

# scheme -> (norm of every unit, MLP in passport layers, shared statistics or None = `faithful`)
_SCHEMES: dict[str, tuple[NormKind, bool, bool | None]] = {
    "plain": ("bn", False, False),
    "pan": ("bn", True, None),
    "deepipr": ("gn", False, True),
}


def feature_transform_regularizer(trans: torch.Tensor, faithful: bool) -> torch.Tensor:
    """Orthogonality penalty on B×k×k transforms: mean over the batch of a Frobenius norm.

    Clean: ‖T·Tᵀ − I‖_F. Faithful: ‖T·(Tᵀ − I)‖_F, the misplaced bracket of the original
    3-D code (book/method.md#method-quirks), which equals ‖T·Tᵀ − T‖_F and is 0 only for T = I.
    """
    eye = torch.eye(trans.shape[-1], device=trans.device, dtype=trans.dtype)
    tt = trans.transpose(1, 2)
    diff = trans @ (tt - eye) if faithful else trans @ tt - eye
    return torch.linalg.matrix_norm(diff).mean()


def pointnet_loss(logits: torch.Tensor, labels: torch.Tensor, trans: torch.Tensor,
                  faithful: bool, weight: float = FEATURE_TRANSFORM_WEIGHT) -> torch.Tensor:
    """Cross-entropy plus ``weight`` times the feature-transform regulariser of one branch."""
    return F.cross_entropy(logits, labels) + weight * feature_transform_regularizer(trans, faithful)


def _scaled(c: int, width: float) -> int:
    return max(1, round(c * width))


def _apply_transform(x: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
    """Transform every point of B×k×P by B×k×k: row vector · T, as PointNet does."""
    return torch.bmm(trans.transpose(1, 2), x)


class TNet(nn.Module):
    """Predicts a k×k transform from a B×k×P cloud: shared per-point MLP, max-pool, FC layers.

    Its units carry no passports. ``branched`` (a T-Net after a passport layer, with BN) gives
    each unit a private branch-1 BatchNorm, as the original's per-branch BN
    (book/method.md#method-point-clouds).
    The last layer starts at zero, so the transform starts at I.
    """

    def __init__(self, k: int, width: float = 1.0, norm: NormKind = "bn",
                 branched: bool = False):
        super().__init__()
        c = [_scaled(w, width) for w in _TNET_WIDTHS]
        self.k = k

        def unit(layer: WeightLayer) -> nn.Module:
            return make_unit(layer, (), False, norm, False, False, after_passport=branched)

        self.conv1 = unit(nn.Conv1d(k, c[0], 1, bias=False))
        self.conv2 = unit(nn.Conv1d(c[0], c[1], 1, bias=False))
        self.conv3 = unit(nn.Conv1d(c[1], c[2], 1, bias=False))
        self.fc1 = unit(nn.Linear(c[2], c[3], bias=False))
        self.fc2 = unit(nn.Linear(c[3], c[4], bias=False))
        self.fc3 = nn.Linear(c[4], k * k)

    def reset_output(self) -> None:
        """Zero the last layer so the predicted transform is the identity."""
        nn.init.zeros_(self.fc3.weight)
        nn.init.zeros_(self.fc3.bias)

    def forward(self, x: torch.Tensor, branch: Branch = 0) -> torch.Tensor:
        x = self.conv3(self.conv2(self.conv1(x, branch), branch), branch).amax(2)
        return self._matrix(self.fc2(self.fc1(x, branch), branch))

    def forward_shared(self, x: torch.Tensor) -> Pair:
        """Both branches' transforms for a cloud they share (``pnorm.branches``)."""
        h = apply_unit(self.conv3, apply_unit(self.conv2, self.conv1.forward_shared(x)))
        h = apply_unit(self.fc2, apply_unit(self.fc1, pair_map(lambda t: t.amax(2), h)))
        return pair_map(self._matrix, h)

    def _matrix(self, h: torch.Tensor) -> torch.Tensor:
        x = self.fc3(h)
        eye = torch.eye(self.k, device=x.device, dtype=x.dtype)
        return x.view(-1, self.k, self.k) + eye


class PointNetCls(nn.Module):
    """PointNet for B×3×P clouds, with plain / PAN / DeepIPR-style units
    (book/method.md#method-point-clouds).

    ``faithful`` makes PAN passport layers share BN statistics between branches, as the
    original 3-D code; otherwise each branch keeps its own (as the image PAN layer).
    """

    head_name = "p3"  # the classifier unit a transfer-learning attacker replaces

    def __init__(
        self,
        num_classes: int = 40,
        width: float = 1.0,
        scheme: Scheme = "pan",
        passport_layers: Iterable[str] | None = None,
        norm: NormKind | None = None,
        num_points: int = 1024,
        faithful: bool = False,
        dropout: float = 0.4,
        seed: int = 0,
    ):
        super().__init__()
        default_norm, mlp, shared, chosen = resolve_units(
            "PointNetCls", POINTNET_LAYERS, scheme, passport_layers, num_classes, width, _SCHEMES)
        if num_points < 1:
            raise ValueError(f"num_points must be positive, got {num_points}")
        norm = norm or default_norm
        shared = bool(faithful) if shared is None else shared
        self.config: dict[str, Any] = {
            "arch": "pointnet", "num_classes": num_classes, "width": width, "scheme": scheme,
            "passport_layers": sorted(chosen), "norm": norm, "num_points": num_points,
            "faithful": bool(faithful), "dropout": dropout,
        }
        c = [_scaled(w, width) for w in _MAIN_WIDTHS]
        # The input T-Net sees the same cloud in both branches; the feature T-Net follows convp1.
        self.input_tnet = TNet(3, width, norm)
        self.feature_tnet = TNet(c[0], width, norm, branched="convp1" in chosen)
        # name, weight layer, passport shape, norm, activation
        specs: list[tuple[str, WeightLayer, tuple[int, ...], NormKind, bool]] = [
            ("convp1", nn.Conv1d(3, c[0], 1, bias=False), (1, 3, num_points), norm, True),
            ("convp2", nn.Conv1d(c[0], c[1], 1, bias=False), (1, c[0], num_points), norm, True),
            ("convp3", nn.Conv1d(c[1], c[2], 1, bias=False), (1, c[1], num_points), norm, False),
            ("p1", nn.Linear(c[2], c[3]), (1, c[2]), norm, True),
            ("p2", nn.Linear(c[3], c[4]), (1, c[3]), norm, True),
            ("p3", nn.Linear(c[4], num_classes), (1, c[4]), "none", False),
        ]
        for i, (name, layer, shape, unit_norm, act) in enumerate(specs):
            after = any(n in chosen for n, *_ in specs[:i])
            setattr(self, name, make_unit(layer, shape, name in chosen, unit_norm, mlp, shared,
                                          act, after_passport=after))
        self.dropout = nn.Dropout(dropout)
        init_weights(self, torch.Generator().manual_seed(seed))
        self.input_tnet.reset_output()
        self.feature_tnet.reset_output()

    def transform_penalty(self, trans: torch.Tensor) -> torch.Tensor:
        """The weighted feature-transform regulariser that training adds to each branch's loss.

        Faithful models keep the original's bracket bug (``feature_transform_regularizer``).
        """
        return FEATURE_TRANSFORM_WEIGHT * feature_transform_regularizer(
            trans, self.config["faithful"])

    def forward(self, x: torch.Tensor, branch: Branch = 0, return_transform: bool = False):
        """Logits (a pair for ``branch="both"``); with ``return_transform`` also the B×64×64
        feature transform(s) that ``feature_transform_regularizer`` penalises.

        Dropout (before ``p3``) draws from the global torch RNG: seed it (or use
        ``torch.random.fork_rng``) around training steps for reproducible runs.
        """
        branch = branch_for(self, branch)
        if x.dim() != 3 or x.shape[1] != 3:
            raise ValueError(f"points must be B×3×P (xyz channels first), got {tuple(x.shape)}")
        if branch == "both":
            return self._forward_both(x, return_transform)
        x = _apply_transform(x, self.input_tnet(x, branch))
        x = self.convp1(x, branch)
        trans = self.feature_tnet(x, branch)
        x = _apply_transform(x, trans)
        x = self.convp3(self.convp2(x, branch), branch).amax(2)
        x = self.dropout(self.p2(self.p1(x, branch), branch))
        logits = self.p3(x, branch)
        return (logits, trans) if return_transform else logits

    def _forward_both(self, x: torch.Tensor, return_transform: bool):
        """Both branches as a pair of tensors: what they share (the input T-Net; every unit
        before the first passport layer) runs once (``pnorm.branches``)."""
        h = pair_map(_apply_transform, (x, x), self.input_tnet.forward_shared(x))
        h = apply_unit(self.convp1, h)
        trans = apply_unit(self.feature_tnet, h)
        h = pair_map(_apply_transform, h, trans)
        h = pair_map(lambda t: t.amax(2), apply_unit(self.convp3, apply_unit(self.convp2, h)))
        h = apply_unit(self.p2, apply_unit(self.p1, h))
        h = self.dropout(h[0]), self.dropout(h[1])  # two masks, drawn as two passes draw them
        logits = apply_unit(self.p3, h)
        return (logits, trans) if return_transform else logits
