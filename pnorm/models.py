"""The model registry: build any architecture from its ``config``, and the public export.

Every model here takes ``forward(x, branch=0)``: ``model(x)`` is the deployed branch; ``branch=1``
runs the passport branch; ``branch="both"`` runs both in one call and returns a pair
(``pnorm.branches``: what the branches share is computed once).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .alexnet import AlexNetCIFAR
from .fileio import atomic_torch_save
from .layers import BranchNormUnit, PassportAwareNorm
from .pointnet import PointNetCls
from .resnet import ResNet18CIFAR
from .units import replace_module

__all__ = ["ARCHITECTURES", "build_model", "export_public", "load_release", "save_release"]

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "alexnet": AlexNetCIFAR, "resnet18": ResNet18CIFAR, "pointnet": PointNetCls}


def build_model(config: dict[str, Any], seed: int = 0) -> nn.Module:
    """Rebuild a model from the ``model.config`` dictionary every model here carries."""
    cfg = dict(config)
    arch = cfg.pop("arch", None)
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**cfg, seed=seed)


@torch.no_grad()
def export_public(model: nn.Module) -> nn.Module:
    """The deployable network: every passport layer folded to conv -> affine norm -> act.

    The result holds no passport, signature, MLP or branch-1 normaliser
    (book/method.md#method-vault); in eval mode its outputs equal branch 0 of ``model``. Its
    BatchNorm counters are zeroed: layers both branches share count two updates a step, which
    would show that PAN was used and where the passports start.
    """
    public = copy.deepcopy(model)
    private = [(n, m) for n, m in public.named_modules()
               if isinstance(m, (PassportAwareNorm, BranchNormUnit))]
    for name, layer in private:
        replace_module(public, name, layer.to_public())
    for module in public.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            module.num_batches_tracked.zero_()
    if hasattr(public, "config"):
        public.config = {**public.config, "scheme": "plain", "passport_layers": []}
    return public


_RELEASE_FORMAT = "pnorm-release/1"


def save_release(public: nn.Module, path: str | Path) -> Path:
    """Save a released (public) model with its ``config``, so ``load_release`` rebuilds it.

    Refuses a model that still has passport layers or private norms: only ``export_public``'s
    output is a release. Written atomically; loading runs no pickled code.
    """
    private = [n for n, m in public.named_modules()
               if isinstance(m, (PassportAwareNorm, BranchNormUnit))]
    if private:
        raise ValueError(f"this model still holds private layers {private[:3]}…: release "
                         "export_public(model), and keep the secrets in a Vault")
    if not hasattr(public, "config"):
        raise ValueError("save_release needs a pnorm model (it carries a `config` to rebuild it)")
    payload = {"format": _RELEASE_FORMAT, "config": json.dumps(public.config, sort_keys=True),
               "state": public.state_dict()}
    atomic_torch_save(payload, path)
    return Path(path)


def load_release(path: str | Path) -> nn.Module:
    """The released model saved by ``save_release``, rebuilt from its own config (eval mode)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, or a pickle with code in it
        raise ValueError(f"{path} is not a readable pnorm release ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != _RELEASE_FORMAT:
        raise ValueError(f"{path} is not a pnorm release (save one with save_release)")
    model = build_model(json.loads(payload["config"]))
    model.load_state_dict(payload["state"])
    return model.eval()
