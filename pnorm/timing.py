"""Step-time ratios measured side by side: every model's training step timed in the same rounds.

Two trainings' wall clocks compare two moments of a machine, not two methods; interleaving the
models' steps round by round exposes them to the same load, so their ratio is what it costs.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn

from .recipes import make_optimizer
from .training import TrainConfig, training_step, uses_channels_last

__all__ = ["interleaved_step_times"]


def interleaved_step_times(models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor,
                           config: TrainConfig, rounds: int = 9,
                           warmup: int = 2) -> dict[str, float]:
    """Median seconds of one training step per model, the models' steps taken in turn.

    Each model trains a copy of itself on the batch ``(x, y)`` (the originals are untouched),
    in the memory layout ``train`` would use; the first ``warmup`` rounds are not timed.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    copies = {name: copy.deepcopy(m).train() for name, m in models.items()}
    if x.dim() == 4 and uses_channels_last(config, x.device):
        x = x.contiguous(memory_format=torch.channels_last)
        for model in copies.values():
            model.to(memory_format=torch.channels_last)
    optimizers = {name: make_optimizer(m.parameters(), config.recipe)
                  for name, m in copies.items()}
    times: dict[str, list[float]] = {name: [] for name in copies}
    for r in range(warmup + rounds):
        for name, model in copies.items():
            start = time.perf_counter()
            training_step(model, x, y, optimizers[name], config, step=r)
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
