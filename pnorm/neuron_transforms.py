"""Invariant neuron transforms of a released model, and the verifier's re-alignment.

Yan et al. (KDD 2023, book/method.md#method-later-attacks) remove white-box watermarks with
transforms that leave the
network's function unchanged. On a public ``conv -> BN -> ReLU (-> max-pool)`` chain, in eval
mode, three are exact (up to float rounding):

* **permutation** of a unit's output channels (conv rows, BN parameters and statistics) with
  the same permutation of the next layer's input channels;
* **positive rescaling** of channel k: BN's ``(gamma_k, beta_k)`` times ``c > 0`` and the next
  layer's input weights of channel k times ``1/c`` (ReLU and max-pool are positively
  homogeneous). Scaling the *conv filter* by ``c`` instead is absorbed by BN only up to eps,
  ``(c z - c mu) / sqrt(c^2 var + eps)``, so it is not exact and is not offered;
* **sign flip** of channel k: BN computes ``gamma (z - mu) / sigma + beta``; negating the
  filter, the running mean and gamma gives the same output (sigma, beta unchanged).

What they do to PAN: the passport branch reads ``s_gamma = mean(conv_W(P_gamma))`` from the
suspect's conv weights and the owner's fixed passport. A permutation permutes ``s_gamma``
against the fixed signature bits and scrambles the next layer's ``s_gamma`` (its input
columns no longer meet the passport channels they were trained with); a flip negates
``s_gamma_k``, i.e. flips bit k; a BN rescale leaves the unit's own conv (and bits) alone but
reweights the next layer's input columns, which can flip that layer's bits. Detection falls
towards 50 %. The owner, who keeps the released model, undoes it with :func:`realign`.

Only plain chains are supported (AlexNet). A ResNet's residual additions tie channels: every
unit writing to a stage's residual stream (conv2, shortcut, the previous block's output) must
share one permutation and one positive scale, flips are safe only where BN is followed by its
own consumer conv (a block's conv1), and realignment must match those units jointly.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from .layers import ConvNormAct
from .units import unit_layers

__all__ = ["linear_sum_assignment", "obfuscate", "realign"]

_CHAIN_ARCHS = ("alexnet",)  # architectures whose units form a plain conv chain
Link = tuple[str, ConvNormAct, nn.Module]  # (unit name, unit, layer that consumes its output)
Record = dict[str, dict[str, torch.Tensor]]


def _chain(model: nn.Module) -> list[Link]:
    """The model's units in forward order, each with the layer that reads its output."""
    arch = getattr(model, "config", {}).get("arch")
    if arch is not None and arch not in _CHAIN_ARCHS:
        raise ValueError(f"invariant transforms support plain chains {_CHAIN_ARCHS}, not {arch!r}")
    units = unit_layers(model)
    for name, unit in units.items():
        if not isinstance(unit, ConvNormAct) or unit.norm_kind != "bn":
            raise ValueError(f"unit {name!r} is not a conv-BN unit: transform export_public(model)")
    classifier = getattr(model, "classifier", None)
    if not units or not isinstance(classifier, nn.Linear):
        raise ValueError("need conv units followed by a Linear `classifier`")
    consumers = [u.conv for u in list(units.values())[1:]] + [classifier]
    for (name, unit), nxt in zip(units.items(), consumers, strict=True):
        c, c_in = unit.conv.out_channels, nxt.weight.shape[1]
        if c_in % c or (isinstance(nxt, nn.Conv2d) and c_in != c):
            raise ValueError(f"unit {name!r} ({c} channels) does not feed a {c_in}-input layer")
    return [(n, u, nxt) for (n, u), nxt in zip(units.items(), consumers, strict=True)]


def _in_view(consumer: nn.Module, channels: int) -> torch.Tensor:
    """The consumer's weight as ``out × channels × rest`` (a flatten before Linear is
    channel-major, so a channel owns a block of features)."""
    w = consumer.weight
    return w.view(w.shape[0], channels, -1)


@torch.no_grad()
def _permute(unit: ConvNormAct, consumer: nn.Module, perm: torch.Tensor) -> None:
    """New channel j is old channel ``perm[j]``, in the unit and the consumer's inputs."""
    conv, bn = unit.conv, unit.norm
    for t in (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var):
        if t is not None:
            t.copy_(t[perm.to(t.device)])
    view = _in_view(consumer, len(perm))
    view.copy_(view[:, perm.to(view.device)])


@torch.no_grad()
def _flip(unit: ConvNormAct, signs: torch.Tensor) -> None:
    """Negate filter, bias, running mean and gamma where ``signs`` is -1 (exact in eval)."""
    s = signs.to(unit.conv.weight)
    unit.conv.weight.mul_(s.view(-1, *[1] * (unit.conv.weight.dim() - 1)))
    for t in (unit.conv.bias, unit.norm.running_mean, unit.norm.weight):
        if t is not None:
            t.mul_(s)


@torch.no_grad()
def _rescale(unit: ConvNormAct, consumer: nn.Module, scales: torch.Tensor) -> None:
    """BN (gamma, beta) times ``scales``, consumer input weights divided by them."""
    c = scales.to(unit.norm.weight)
    unit.norm.weight.mul_(c)
    unit.norm.bias.mul_(c)
    _in_view(consumer, len(c)).div_(c.view(1, -1, 1))


def _pick(chain: list[Link], layers: Iterable[str] | None) -> list[Link]:
    names = [name for name, _, _ in chain]
    chosen = set(names if layers is None else layers)
    if chosen - set(names):
        raise ValueError(f"unknown unit(s) {sorted(chosen - set(names))}; the model has {names}")
    return [link for link in chain if link[0] in chosen]


def obfuscate(
    public: nn.Module,
    generator: torch.Generator,
    permute: bool = True,
    rescale: bool = True,
    flip_signs: bool = True,
    layers: Iterable[str] | None = None,
    scale_range: tuple[float, float] = (0.5, 2.0),
) -> tuple[nn.Module, Record]:
    """A function-preserving copy of a released model: random permutations, scales, flips.

    ``record[unit]`` holds ``perm, signs, scales``: new channel j = ``scales[j]`` × old channel
    ``perm[j]`` after the unit's ReLU (``signs`` cancel inside BN). The input is not modified.
    """
    lo, hi = scale_range
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
    model = copy.deepcopy(public)
    record: Record = {}
    for name, unit, consumer in _pick(_chain(model), layers):
        c = unit.conv.out_channels
        perm = torch.randperm(c, generator=generator) if permute else torch.arange(c)
        flips = torch.randint(0, 2, (c,), generator=generator) if flip_signs else torch.zeros(c)
        signs = 1.0 - 2.0 * flips.float()
        u = torch.rand(c, generator=generator) if rescale else torch.zeros(c)
        scales = lo * (hi / lo) ** u if rescale else torch.ones(c)
        _permute(unit, consumer, perm)
        _flip(unit, signs)
        _rescale(unit, consumer, scales)
        record[name] = {"perm": perm, "signs": signs, "scales": scales}
    return model, record


def linear_sum_assignment(cost: torch.Tensor) -> torch.Tensor:
    """Minimum-cost perfect matching of a square matrix: ``col[i]`` for each row i.

    The O(n^3) Hungarian method with potentials (shortest augmenting paths), inner loop in NumPy.
    """
    a = cost.detach().double().cpu().numpy()
    n = a.shape[0]
    if a.ndim != 2 or a.shape[1] != n:
        raise ValueError(f"need a square cost matrix, got shape {tuple(a.shape)}")
    u, v = np.zeros(n + 1), np.zeros(n + 1)
    row_of, way = np.zeros(n + 1, dtype=int), np.zeros(n + 1, dtype=int)  # 1-based, 0 = none
    for i in range(1, n + 1):
        row_of[0], j0 = i, 0
        minv, used = np.full(n + 1, np.inf), np.zeros(n + 1, dtype=bool)
        while row_of[j0]:
            used[j0] = True
            i0 = row_of[j0]
            reduced = a[i0 - 1] - u[i0] - v[1:]
            better = ~used[1:] & (reduced < minv[1:])
            minv[1:][better], way[1:][better] = reduced[better], j0
            masked = np.where(used[1:], np.inf, minv[1:])
            j1 = int(np.argmin(masked)) + 1
            delta = masked[j1 - 1]
            u[row_of[used]] += delta
            v[used] -= delta
            minv[~used] -= delta
            j0 = j1
        while j0:
            row_of[j0] = row_of[way[j0]]
            j0 = way[j0]
    col = np.empty(n, dtype=np.int64)
    col[row_of[1:] - 1] = np.arange(n)
    return torch.from_numpy(col)


def _check_same(chain: list[Link], ref_chain: list[Link]) -> None:
    shapes = [[(n, tuple(u.conv.weight.shape), tuple(c.weight.shape)) for n, u, c in ch]
              for ch in (chain, ref_chain)]
    if shapes[0] != shapes[1]:
        raise ValueError(f"realign needs the same architecture: suspect units {shapes[0]} vs "
                         f"reference units {shapes[1]}")


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every flattened filter of ``a`` with every one of ``b``."""
    a, b = (t.detach().flatten(1).double().cpu() for t in (a, b))
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return a @ (b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)).T


def _affine_norm(bn: nn.Module) -> torch.Tensor:
    return torch.stack([bn.weight, bn.bias]).detach().double().cpu().norm(dim=0)


@torch.no_grad()
def realign(
    suspect_public: nn.Module, reference_public: nn.Module, min_similarity: float = 0.99
) -> tuple[nn.Module, Record]:
    """Undo permutations, flips and BN rescales of a suspect, unit by unit, against the release.

    ``record[unit]``: the estimated ``perm, signs, scales`` (as in :func:`obfuscate`),
    ``similarity`` per suspect channel and ``low``, the channels matched below ``min_similarity``.
    """
    aligned = copy.deepcopy(suspect_public)
    chain, ref_chain = _chain(aligned), _chain(reference_public)
    _check_same(chain, ref_chain)
    record: Record = {}
    for (name, unit, consumer), (_, ref, _) in zip(chain, ref_chain, strict=True):
        # the consumer-side undo of the previous unit already aligned this conv's inputs
        sim = _cosine(unit.conv.weight, ref.conv.weight)
        perm = linear_sum_assignment(-sim.abs())
        matched = sim[torch.arange(len(perm)), perm]
        signs = torch.where(matched < 0, -1.0, 1.0)
        ref_norm = _affine_norm(ref.norm)[perm]
        scales = torch.where(ref_norm > 0, _affine_norm(unit.norm) / ref_norm.clamp_min(1e-30), 1.0)
        _rescale(unit, consumer, 1.0 / scales)
        _flip(unit, signs)
        _permute(unit, consumer, torch.argsort(perm))
        record[name] = {"perm": perm, "signs": signs, "scales": scales.float(),
                        "similarity": matched.abs().float(),
                        "low": torch.tensor(int((matched.abs() < min_similarity).sum()))}
    return aligned, record
