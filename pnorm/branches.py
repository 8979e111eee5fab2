"""Running both branches of a protected network in one call, computing once what they share.

Until the first unit whose branches differ (a passport layer, or a plain unit with a private
branch-1 normaliser), both branches see the same activations. ``run_both`` computes that prefix
once (``forward_shared``) and then runs the rest either as one batch of both halves (CUDA, for
half the kernel launches) or one branch after the other (CPU, where batching gains nothing and
costs a concatenation per layer). ``benchmarks/train_speed.py`` times the mode not chosen
(``other_mode_over_batched``), so either choice can be checked on any device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

Pair = tuple[torch.Tensor, torch.Tensor]

__all__ = ["Pair", "Stage", "apply_unit", "batch_halves", "pair_map", "run_both"]


class Stage(Protocol):
    """A network piece that runs one branch (``0``, ``1``, ``"both"``) or a shared input."""

    def __call__(self, x: torch.Tensor, branch: int | str = 0) -> torch.Tensor: ...

    def forward_shared(self, x: torch.Tensor) -> Pair: ...


def pair_map(fn: Callable[..., torch.Tensor], *pairs: Pair) -> Pair:
    """Apply ``fn`` to each branch; once when every argument is shared (the same tensor twice)."""
    if all(a is b for a, b in pairs):
        y = fn(*(a for a, _ in pairs))
        return y, y
    return fn(*(a for a, _ in pairs)), fn(*(b for _, b in pairs))


def apply_unit(unit: Stage, pair: Pair) -> Pair:
    """Both branches of ``unit``: one shared call while the inputs are one tensor, else two."""
    x0, x1 = pair
    if x0 is x1:
        return unit.forward_shared(x0)
    return unit(x0, 0), unit(x1, 1)


def batch_halves(model: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether ``run_both`` batches the diverged halves: ``model.batch_branches`` if set, else
    on CUDA only."""
    choice = getattr(model, "batch_branches", None)
    return x.is_cuda if choice is None else bool(choice)


def run_both(stages: Sequence[Stage], x: torch.Tensor, batch: bool) -> Pair:
    """Both branches' outputs of ``stages`` applied in order to the input ``x``.

    The shared prefix runs once. After it, ``batch`` concatenates the halves and runs every
    remaining stage with ``branch="both"``; otherwise each branch runs its remaining stages.
    """
    pair: Pair = (x, x)
    for i, stage in enumerate(stages):
        if pair[0] is pair[1]:
            pair = stage.forward_shared(pair[0])
        elif batch:
            y = torch.cat(pair)
            for rest in stages[i:]:
                y = rest(y, "both")
            y0, y1 = y.chunk(2)
            return y0, y1
        else:
            pair = stage(pair[0], 0), stage(pair[1], 1)
    return pair
