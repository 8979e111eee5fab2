"""Safeguards of the training loop: inputs that cannot train, and runs that diverge.

Both stop training with an error that says what was wrong and what to do, before anything of
the bad run reaches a checkpoint or the model cache.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from itertools import chain

import torch
from torch import nn

from .batches import Data, raw_inputs
from .fileio import tensors_sha256
from .images import ImageSplits
from .points import PointSplits

__all__ = ["TrainingDivergedError", "check_finite", "check_training_inputs", "model_identity"]


class TrainingDivergedError(FloatingPointError):
    """A loss or weight became NaN or infinite; raised before that epoch is saved anywhere."""


def model_identity(model: nn.Module) -> str:
    """SHA-256 of the model's config and its secrets (passports, signature bits).

    A checkpoint resumes only into the model it was written for, even under the same config.
    """
    secrets = {name: b for name, b in model.named_buffers()
               if name.endswith(("passport_gamma", "passport_beta", "signature"))}
    config = json.dumps(getattr(model, "config", None), sort_keys=True, default=str)
    return tensors_sha256(config, secrets)


def _num_classes(model: nn.Module) -> int | None:
    """The model's class count: ``config["num_classes"]``, else its last Linear's outputs."""
    config = getattr(model, "config", None)
    if isinstance(config, dict) and "num_classes" in config:
        return int(config["num_classes"])
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def _first_nonfinite(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first float tensor holding NaN or ±inf, else None (one host sync)."""
    named = [(name, t.detach()) for name, t in named if t.is_floating_point()]
    if not named:
        return None
    finite = torch.stack([torch.isfinite(t).all() for _, t in named])
    return None if bool(finite.all()) else named[int((~finite).nonzero()[0])][0]


def check_training_inputs(model: nn.Module, splits: ImageSplits | PointSplits,
                          trigger: Data | None, batch: int, with_triggers: bool) -> None:
    """Refuse, before any step, what cannot train, with a ValueError that says what to do.

    That is a batch larger than the training set, labels beyond the model's classes, and NaN or
    infinite inputs or weights.
    """
    n = len(splits.train)
    if batch > n:
        raise ValueError(f"the batch size {batch} (recipe.batch_size) is larger than the training "
                         f"set ({n} samples), so no step could run; use a batch of at most {n}")
    sets = {"training": splits.train, "validation": splits.val, "test": splits.test}
    if trigger is not None and with_triggers:
        sets["trigger"] = trigger
    classes = _num_classes(model)
    for name, data in sets.items():
        raw = raw_inputs(data)
        if raw.is_floating_point() and not bool(torch.isfinite(raw).all()):
            raise ValueError(f"the {name} inputs hold NaN or infinite values; repair or drop "
                             f"those samples before training")
        if not len(data):
            continue
        low, high = int(data.labels.min()), int(data.labels.max())
        if low < 0:
            raise ValueError(f"the {name} labels include {low}; labels are class indices from 0")
        if classes is not None and high >= classes:
            raise ValueError(f"the largest {name} label is {high}, but the model has {classes} "
                             f"classes (labels 0 to {classes - 1}); build it with "
                             f"num_classes={high + 1} or more, or fix the labels")
    bad = _first_nonfinite(chain(model.named_parameters(), model.named_buffers()))
    if bad is not None:
        raise ValueError(f"the model's {bad} holds NaN or infinite values before training; "
                         f"rebuild the model (and key it again with key_model)")


def check_finite(model: nn.Module, steps: list[dict[str, torch.Tensor]], epoch: int,
                 epochs: int, lr: float) -> None:
    """Raise ``TrainingDivergedError`` if a step's loss or a weight is not finite.

    One host sync per epoch; the first bad step is looked up only once something is bad.
    """
    losses = torch.stack([torch.stack(list(d.values())) for d in steps]) if steps else None
    named = model.named_parameters(), model.named_buffers()
    bad = _first_nonfinite(chain([] if losses is None else [("loss", losses)], *named))
    if bad is None:
        return
    where = f"training diverged in epoch {epoch + 1} of {epochs}"
    if bad == "loss":
        step = int((~torch.isfinite(losses)).any(1).nonzero()[0]) + 1
        values = {k: float(v) for k, v in steps[step - 1].items()}
        what = f"step {step} of {len(steps)}: the losses are {values}"
    else:
        what = (f"after step {len(steps)} of {len(steps)}: {bad} holds NaN or infinite values "
                "(every loss was finite)")
    raise TrainingDivergedError(f"{where}, {what}. Nothing of this epoch was saved; lower the "
                                f"learning rate (recipe.lr={lr:g}) and train again")
