"""The passport-aware normalization layer (PAN) and its plain, deployable counterpart.

A PAN layer is ``conv -> norm -> affine -> activation`` with two branches that share the
convolution: branch 0 (public) uses learned ``gamma0, beta0``; branch 1 (private) derives its
affine from the owner's passports through a small per-layer MLP (book/method.md#method-layer). The
same class,
with ``mlp=False, shared_stats=True``, is the DeepIPR-style baseline layer
(book/method.md#method-deepipr).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Branch = int | Literal["both"]
NormKind = Literal["bn", "gn", "none"]
WeightLayer = nn.Conv2d | nn.Conv1d | nn.Linear

__all__ = [
    "Branch",
    "BranchNormUnit",
    "ConvNormAct",
    "PassportAwareNorm",
    "check_branch",
    "mean_response",
    "sign_loss",
]


def check_branch(branch: Branch) -> Branch:
    """Validate a branch selector: 0 (public), 1 (passport) or "both" (batched halves)."""
    if branch in (0, 1, "both"):
        return branch
    raise ValueError(f"branch must be 0 (public), 1 (passport) or 'both', got {branch!r}")


def sign_loss(
    scale: torch.Tensor, signature: torch.Tensor, alpha: float = 0.1, margin: float = 0.1
) -> torch.Tensor:
    """Hinge loss that pushes sign(scale) towards the signature bits
    (book/method.md#method-sign-loss).

    alpha * sum(max(0, margin - b*s)) plus a tiny 1e-5 * sum(s^2) term, as in the original.
    """
    hinge = F.relu(margin - signature * scale).sum()
    return alpha * hinge + 1e-5 * scale.pow(2).sum()


def channel_view(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a per-channel vector so it broadcasts over an N×C×... activation."""
    return v.view(1, -1, *([1] * (ndim - 2)))


def _weight_out_features(weight_layer: WeightLayer) -> int:
    if isinstance(weight_layer, nn.Linear):
        return weight_layer.out_features
    return weight_layer.out_channels


def mean_response(layer: WeightLayer, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` averaged over its output positions (N × C_out), as one matrix product.

    A convolution is linear, so its mean response is its weight applied to the mean receptive
    field (``F.unfold``): the passports need no full convolution. Other convs fall back to one.
    """
    if isinstance(layer, nn.Linear):
        return layer(x)
    if (layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str)
            or x.dim() not in (3, 4)):
        return layer(x).flatten(2).mean(2)
    kw = {k: tuple(getattr(layer, k)) for k in ("kernel_size", "dilation", "padding", "stride")}
    if x.dim() == 3:  # Conv1d: a 1-pixel-high image
        x, kw = x.unsqueeze(2), {k: (1 if k != "padding" else 0, *v) for k, v in kw.items()}
    cols = F.unfold(x, **kw).mean(2)  # N × (C_in · kernel), ordered as weight.flatten(1)
    out = cols @ layer.weight.flatten(1).T
    return out if layer.bias is None else out + layer.bias


def _norm_num_groups(channels: int) -> int:
    """GroupNorm groups as in the original: C/16 groups, at least one."""
    return max(1, channels // 16)


def make_norm(kind: NormKind, channels: int, ndim: int, affine: bool) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels, affine=affine) if ndim == 4 else nn.BatchNorm1d(
            channels, affine=affine
        )
    if kind == "gn":
        return nn.GroupNorm(_norm_num_groups(channels), channels, affine=affine)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'bn', 'gn' or 'none', got {kind!r}")


def _affine_batch_norm(norm: nn.modules.batchnorm._BatchNorm, z: torch.Tensor,
                       weight: torch.Tensor | None, bias: torch.Tensor | None,
                       updates: int = 1) -> torch.Tensor:
    """``norm`` (its statistics, running averages, counter) with the affine ``weight, bias``.

    One kernel instead of BatchNorm + a separate affine. ``updates=2`` leaves the running
    statistics as two calls on the same batch would: two momentum-``m`` updates with one batch
    mean equal one with ``1 - (1 - m)^2`` (cumulative averaging: ``2 / t``), counter +2.
    """
    if norm.training and norm.track_running_stats:
        norm.num_batches_tracked.add_(updates)
        if norm.momentum is None:
            momentum = updates / float(norm.num_batches_tracked)
        else:  # (1 - (1 - m)^1 is not m in floating point, so one update keeps m itself)
            momentum = (norm.momentum if updates == 1
                        else 1.0 - (1.0 - norm.momentum) ** updates)
    else:
        momentum = 0.0
    use_batch = norm.training or norm.running_mean is None
    return F.batch_norm(z, norm.running_mean, norm.running_var, weight, bias, use_batch,
                        momentum, norm.eps)


def _batch_norm_twice(norm: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """``norm(z)`` for two branches that share ``z``: BatchNorm statistics updated twice."""
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        return _affine_batch_norm(norm, z, norm.weight, norm.bias, updates=2)
    return norm(z)


def _batch_norm_halves(x: torch.Tensor, norms: tuple[nn.Module, nn.Module]) -> torch.Tensor:
    """Normalise the two halves of a batched two-branch input with their own BN modules.

    Running with the halves separately (not one 2N batch) keeps batch statistics and running
    statistics exactly as two separate passes would leave them.
    """
    x0, x1 = x.chunk(2)
    return torch.cat([norms[0](x0), norms[1](x1)])


class ConvNormAct(nn.Sequential):
    """A plain ``conv -> norm(affine) -> ReLU`` unit: the deployable form of a PAN layer.

    ``forward(x, branch)`` accepts a branch only so that protected models can mix plain and
    passport layers; with BN it normalises the halves of a ``"both"`` batch separately.
    """

    def __init__(self, weight_layer: WeightLayer, norm: NormKind = "bn", activation: bool = True):
        channels = _weight_out_features(weight_layer)
        ndim = 2 if isinstance(weight_layer, nn.Linear) else weight_layer.weight.dim()
        super().__init__(
            OrderedDict(
                conv=weight_layer,
                norm=make_norm(norm, channels, ndim, affine=True),
                act=nn.ReLU() if activation else nn.Identity(),
            )
        )
        self.norm_kind = norm

    def forward(self, x: torch.Tensor, branch: Branch = 0) -> torch.Tensor:  # type: ignore[override]
        z = self.conv(x)
        if check_branch(branch) == "both" and self.norm_kind == "bn":
            z = _batch_norm_halves(z, (self.norm, self.norm))
        else:
            z = self.norm(z)
        return self.act(z)

    def forward_shared(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both branches for an input they share: computed once, so the pair is one tensor."""
        y = self.act(_batch_norm_twice(self.norm, self.conv(x)))
        return y, y


class BranchNormUnit(nn.Module):
    """A ``conv -> norm -> act`` unit without passports but with a private branch-1 normaliser.

    A plain unit that follows a passport layer sees different activations in the two branches;
    one shared BatchNorm would average their running statistics and break branch 1 in eval
    mode. So branch 1 gets its own affine BatchNorm (the original PointNet's per-branch BN in
    the T-Nets, book/method.md#method-point-clouds). The release keeps ``norm``; the vault keeps
    ``norm1``.
    """

    def __init__(self, weight_layer: WeightLayer, activation: bool = True):
        super().__init__()
        channels = _weight_out_features(weight_layer)
        ndim = 2 if isinstance(weight_layer, nn.Linear) else weight_layer.weight.dim()
        self.conv = weight_layer
        self.norm = make_norm("bn", channels, ndim, affine=True)
        self.norm1 = make_norm("bn", channels, ndim, affine=True)
        self.act = nn.ReLU() if activation else nn.Identity()
        self.norm_kind: NormKind = "bn"

    def forward(self, x: torch.Tensor, branch: Branch = 0) -> torch.Tensor:
        z = self.conv(x)
        branch = check_branch(branch)
        if branch == "both":
            z = _batch_norm_halves(z, (self.norm, self.norm1))
        else:
            z = (self.norm1 if branch == 1 else self.norm)(z)
        return self.act(z)

    def forward_shared(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both branches for an input they share: one convolution, each branch's normaliser."""
        z = self.conv(x)
        return self.act(self.norm(z)), self.act(self.norm1(z))

    def to_public(self) -> ConvNormAct:
        """The deployable unit: the conv, branch 0's normaliser and the activation (copies)."""
        unit = ConvNormAct(clone_weight_layer(self.conv, with_bias=False), "bn",
                           activation=isinstance(self.act, nn.ReLU))
        unit.norm.load_state_dict(self.norm.state_dict())
        return unit.to(self.conv.weight.device)

    @classmethod
    def from_public(cls, unit: ConvNormAct, norm1_state: dict[str, torch.Tensor]
                    ) -> BranchNormUnit:
        """Re-attach a private branch-1 normaliser to a released ``unit`` (copies)."""
        new = cls(clone_weight_layer(unit.conv, with_bias=False),
                  activation=isinstance(unit.act, nn.ReLU))
        new.norm.load_state_dict(unit.norm.state_dict())
        new.norm1.load_state_dict(norm1_state)
        return new.to(unit.conv.weight.device)


class PassportAwareNorm(nn.Module):
    """``conv -> norm -> (gamma, beta) -> act`` with a public and a passport-aware branch.

    Branch 0 uses ``gamma0, beta0`` and ``norm0``; branch 1 uses ``norm1`` (or ``norm0`` when
    ``shared_stats``) and ``gamma1 = M(s_gamma)``, ``beta1 = M(s_beta)`` where ``s`` is the mean
    of the layer's own convolution applied to the passport. ``mlp=False`` gives DeepIPR's
    ``gamma1 = s_gamma``. The signature is read from ``s_gamma`` (pre-MLP),
    book/method.md#method-layer.
    """

    def __init__(
        self,
        weight_layer: WeightLayer,
        passport_shape: tuple[int, ...],
        norm: NormKind = "bn",
        mlp: bool = True,
        shared_stats: bool = False,
        activation: bool = True,
        sign_alpha: float = 0.1,
    ):
        super().__init__()
        channels = _weight_out_features(weight_layer)
        ndim = len(passport_shape)
        self.conv = weight_layer
        self.norm_kind: NormKind = norm
        self.shared_stats = bool(shared_stats)
        self.activation = bool(activation)
        self.sign_alpha = float(sign_alpha)
        self.norm0 = make_norm(norm, channels, ndim, affine=False)
        # With shared statistics (or stateless GN/none) there is no second normaliser.
        self.norm1 = (
            make_norm(norm, channels, ndim, affine=False)
            if norm == "bn" and not shared_stats
            else None
        )
        self.gamma0 = nn.Parameter(torch.ones(channels))
        self.beta0 = nn.Parameter(torch.zeros(channels))
        hidden = max(1, channels // 4)
        self.mlp = (
            nn.Sequential(
                nn.Linear(channels, hidden, bias=False),
                nn.LeakyReLU(0.01),
                nn.Linear(hidden, channels, bias=False),
            )
            if mlp
            else None
        )
        self.register_buffer("passport_gamma", torch.zeros(passport_shape))
        self.register_buffer("passport_beta", torch.zeros(passport_shape))
        self.register_buffer("signature", torch.ones(channels))
        # While set (models.recording_scales), branch 1 leaves its s_gamma here for the sign loss.
        self.scale_record: dict[nn.Module, torch.Tensor] | None = None

    @property
    def channels(self) -> int:
        return self.gamma0.numel()

    @property
    def passport_shape(self) -> tuple[int, ...]:
        return tuple(self.passport_gamma.shape)

    def _norm_for(self, branch: int) -> nn.Module:
        return self.norm1 if branch == 1 and self.norm1 is not None else self.norm0

    def passport_scales(
        self, passport_gamma: torch.Tensor | None = None, passport_beta: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(s_gamma, s_beta)``: the layer's convolution of each passport, averaged.

        Both passports go through one call of the layer's own conv (no bias for convs; a
        Linear layer keeps its bias, as in the original 1-D code).
        """
        pg = self.passport_gamma if passport_gamma is None else passport_gamma
        pb = self.passport_beta if passport_beta is None else passport_beta
        z = mean_response(self.conv, torch.cat([pg, pb]))
        n = pg.shape[0]
        return z[:n].mean(0), z[n:].mean(0)

    def passport_affine(
        self, passport_gamma: torch.Tensor | None = None, passport_beta: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the branch-1 affine ``(gamma1, beta1)`` derived from the passports."""
        s_gamma, s_beta = self.passport_scales(passport_gamma, passport_beta)
        if passport_gamma is None and passport_beta is None and self.scale_record is not None:
            self.scale_record[self] = s_gamma
        if self.mlp is None:
            return s_gamma, s_beta
        return self.mlp(s_gamma), self.mlp(s_beta)

    def sign_loss(self, s_gamma: torch.Tensor | None = None) -> torch.Tensor:
        """This layer's sign loss against its stored signature (pre-MLP scale).

        ``s_gamma``: the scale a forward pass already computed from the stored passports.
        """
        if s_gamma is None:
            s_gamma, _ = self.passport_scales()
        return sign_loss(s_gamma, self.signature, alpha=self.sign_alpha)

    def forward(self, x: torch.Tensor, branch: Branch = 0) -> torch.Tensor:
        z = self.conv(x)
        branch = check_branch(branch)
        if branch == "both":
            z0, z1 = z.chunk(2)
            y = torch.cat([self._branch_affine(z0, 0), self._branch_affine(z1, 1)])
        else:
            y = self._branch_affine(z, branch)
        return F.relu(y) if self.activation else y

    def forward_shared(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both branches for an input they share: one convolution, each branch's affine."""
        z = self.conv(x)
        y0, y1 = self._branch_affine(z, 0), self._branch_affine(z, 1)
        return (F.relu(y0), F.relu(y1)) if self.activation else (y0, y1)

    def _branch_affine(self, z: torch.Tensor, branch: int) -> torch.Tensor:
        if branch == 0:
            gamma, beta = self.gamma0, self.beta0
        else:
            gamma, beta = self.passport_affine()
        norm = self._norm_for(branch)
        if not torch.is_autocast_enabled(z.device.type):  # fused normalisation + affine
            if isinstance(norm, nn.modules.batchnorm._BatchNorm):
                return _affine_batch_norm(norm, z, gamma, beta)
            if isinstance(norm, nn.GroupNorm):
                return F.group_norm(z, norm.num_groups, gamma, beta, norm.eps)
        z = norm(z)
        return z * channel_view(gamma, z.dim()) + channel_view(beta, z.dim())

    def to_public(self) -> ConvNormAct:
        """Fold branch 0 into an ordinary ``conv -> norm(affine) -> act`` unit (no secrets).

        BN: norm0's running statistics + gamma0/beta0 become an affine BatchNorm. GN: an affine
        GroupNorm. No norm: gamma0/beta0 are folded into the conv weight and bias.
        """
        conv = clone_weight_layer(self.conv, with_bias=self.norm_kind == "none")
        unit = ConvNormAct(conv, norm=self.norm_kind, activation=self.activation)
        with torch.no_grad():
            if self.norm_kind == "none":
                g = self.gamma0.detach()
                conv.weight.mul_(g.view(-1, *([1] * (conv.weight.dim() - 1))))
                old_bias = self.conv.bias if self.conv.bias is not None else 0.0
                conv.bias.copy_(g * old_bias + self.beta0.detach())
                return unit
            unit.norm.weight.copy_(self.gamma0)
            unit.norm.bias.copy_(self.beta0)
            if self.norm_kind == "bn":
                for name in ("running_mean", "running_var", "num_batches_tracked"):
                    getattr(unit.norm, name).copy_(getattr(self.norm0, name))
        return unit

    def extra_repr(self) -> str:
        return (
            f"norm={self.norm_kind}, mlp={self.mlp is not None}, "
            f"shared_stats={self.shared_stats}, passport_shape={self.passport_shape}"
        )


def clone_weight_layer(layer: WeightLayer, with_bias: bool) -> WeightLayer:
    """A fresh copy of a conv/linear layer's weights, optionally adding a bias parameter."""
    bias = with_bias or layer.bias is not None
    if isinstance(layer, nn.Linear):
        new = nn.Linear(layer.in_features, layer.out_features, bias=bias)
    else:
        new = type(layer)(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=bias,
        )
    new = new.to(device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(layer.weight)
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    return new
