"""Side-by-side step times: every model timed in the same rounds, originals untouched."""

from __future__ import annotations

import pytest
import torch

from pnorm.alexnet import AlexNetCIFAR
from pnorm.passport import key_model
from pnorm.recipes import Recipe
from pnorm.timing import interleaved_step_times
from pnorm.training import TrainConfig


def test_interleaved_step_times_times_every_model_and_changes_none():
    plain = AlexNetCIFAR(width=0.125, scheme="plain", seed=0)
    pan = AlexNetCIFAR(width=0.125, scheme="pan", seed=0)
    key_model(pan, torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in pan.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    times = interleaved_step_times({"plain": plain, "pan": pan}, x, y,
                                   TrainConfig(recipe=Recipe(batch_size=16)), rounds=3,
                                   warmup=1)
    assert set(times) == {"plain", "pan"} and all(t > 0 for t in times.values())
    assert all(torch.equal(v, pan.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="rounds"):
        interleaved_step_times({"plain": plain}, x, y, TrainConfig(), rounds=0)
