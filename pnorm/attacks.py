"""Removal attacks on a released model: fine-tuning to a new task and magnitude pruning.

Each attack starts from what the attacker holds, the public export, and the owner measures the
result by re-attaching the vault. Results are tidy records (lists of dicts) that chapters turn
into tables and plots. Forgery (ambiguity) attacks live in ``forgery.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune
from tqdm.auto import tqdm

from .batches import Data, trigger_data
from .images import ImageSplits
from .layers import ConvNormAct, PassportAwareNorm
from .points import PointSplits
from .profiles import Profile, show_progress
from .recipes import Preset, Recipe, get_preset
from .training import TrainConfig, train
from .vault import Vault
from .verify import binomial_tail, evaluate, signature_detection

__all__ = [
    "FineTuneConfig",
    "fine_tune",
    "finetune_config",
    "prune_model",
    "pruning_sweep",
]

_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)


# ------------------------------------------------------------------ fine-tuning
# (book/method.md#method-fine-tuning)


@dataclass(frozen=True)
class FineTuneConfig:
    """The attacker's transfer-learning run (book/method.md#method-fine-tuning): new head, all
    layers trained with cross-entropy, no triggers.

    The default recipe is the original's image recipe (SGD lr 1e-3, batch 64, 200 epochs with
    the default step schedule); its 3-D recipe is Adam 1e-3, weight decay 1e-4, ×0.7 every 20
    epochs, batch 16. Chapters scale the recipe to their profile and say so.
    """

    recipe: Recipe = Recipe(lr=0.001)
    # The original's clone never received the passport layers' BN running statistics (they
    # were saved as ``bn0.*`` and loaded non-strictly as ``bn.*``): see the presets.
    reset_bn_stats: bool = False
    seed: int = 0
    eval_batch_size: int = 500
    channels_last: bool | None = None  # as TrainConfig.channels_last (a speed knob)


def finetune_config(preset: str, profile: Profile | None = None,
                    **overrides: Any) -> FineTuneConfig:
    """A ``FineTuneConfig`` for a named preset (``faithful`` or ``clean``) with overrides.

    With a ``profile``, its fine-tuning budget, evaluation batch and memory layout come first.
    """
    base = FineTuneConfig(reset_bn_stats=get_preset(preset).reset_bn_stats)
    if profile is not None:
        base = replace(base, recipe=profile.finetune, eval_batch_size=profile.eval_batch_size,
                       channels_last=profile.channels_last)
    return replace(base, **overrides)


def _head_name(model: nn.Module) -> str:
    """The classifier's attribute name: ``model.head_name`` (PointNet: "p3"), else "classifier"."""
    return getattr(model, "head_name", "classifier")


def _head_linear(head: nn.Module) -> nn.Linear:
    linear = head.conv if isinstance(head, ConvNormAct) else head
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"the head must be an nn.Linear (or a unit around one), got {head}")
    return linear


def _fresh_head(old: nn.Module, num_classes: int, g: torch.Generator) -> nn.Module:
    """A newly initialised head of the old head's form (PyTorch's default Linear init)."""
    in_features = _head_linear(old).in_features
    linear = nn.Linear(in_features, num_classes)
    nn.init.kaiming_uniform_(linear.weight, a=5**0.5, generator=g)
    bound = 1 / in_features**0.5
    nn.init.uniform_(linear.bias, -bound, bound, generator=g)
    return ConvNormAct(linear, "none", activation=False) if isinstance(old, ConvNormAct) \
        else linear


def _set_head(model: nn.Module, head: nn.Module) -> nn.Module:
    """Give ``model`` (in place) a copy of ``head`` as its classifier; returns ``model``."""
    name = _head_name(model)
    device = _head_linear(model.get_submodule(name)).weight.device
    setattr(model, name, copy.deepcopy(head).to(device))
    if hasattr(model, "config"):
        model.config = {**model.config, "num_classes": _head_linear(head).out_features}
    return model


def _owner_view(suspect: nn.Module, release: nn.Module, old_head: nn.Module,
                vault: Vault) -> nn.Module:
    """The owner's protected model around a suspect's weights, as the original measures it.

    The suspect's weights are copied back into the owner's model: the passport layers keep the
    release's normalisation (gamma0, beta0 and BatchNorm statistics) and the owner's secrets,
    and the classifier is the owner's old head (book/method.md#method-fine-tuning).
    """
    view = copy.deepcopy(suspect).cpu()
    head = _head_name(view)
    for name in vault.layers:
        if name != head:
            view.get_submodule(name).norm = copy.deepcopy(release.get_submodule(name).norm).cpu()
    setattr(view, head, copy.deepcopy(old_head))
    return vault.attach(view)


def _owner_measures(
    features: nn.Module, release: nn.Module, old_head: nn.Module, vault: Vault,
    trigger: Data | None, mean, std, device, batch_size: int,
) -> dict:
    """Detection, and trigger accuracy of the owner's view, on a suspect's features.

    A passport layer that is the replaced head (PointNet's p3) is left out of the detection:
    the attacker's new head has nothing of the old one in it.
    """
    name = _head_name(features)
    protected = _owner_view(features, release, old_head, vault).to(device)
    kept = [n for n in vault.layers if n != name]
    det = signature_detection(protected, layers=kept)
    out = {"detection": det["pooled"], "matches": det["matches"], "bits": det["bits"],
           "log10_p": binomial_tail(det["matches"], det["bits"])}
    if trigger is not None:
        out["trigger_acc"] = evaluate(protected, trigger, mean, std, 0, batch_size, device)
    return out


def fine_tune(
    public: nn.Module,
    vault: Vault,
    new_task: ImageSplits | PointSplits,
    config: FineTuneConfig,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "fine-tuning",
) -> tuple[nn.Module, list[dict]]:
    """Fine-tune the released model on ``new_task`` (RTAL) and measure ownership every epoch.

    The attacker re-initialises the head for ``new_task`` and trains every layer with
    cross-entropy. After each epoch (and before the first) the owner attaches the vault to the
    attacker's features and reads the signature; the trigger set is scored as the original code
    does, with the attacker's weights copied back into the owner's model (the release's
    normalisation, the old head). Record 0 is the release itself, measured before the
    ``faithful`` preset resets any statistics. Returns the attacked model and the records.
    """
    head_name = _head_name(public)
    old_head = copy.deepcopy(public.get_submodule(head_name)).cpu()
    release = copy.deepcopy(public).cpu().eval()
    attacker = copy.deepcopy(public).cpu()
    g = torch.Generator().manual_seed(config.seed)
    attacker = _set_head(attacker, _fresh_head(old_head, new_task.num_classes, g))
    trigger = trigger_data(vault)
    stats = vault.data_stats or {}
    mean, std = stats.get("mean", new_task.mean), stats.get("std", new_task.std)
    batch = config.eval_batch_size
    released = {n: public.get_submodule(n).conv.weight.detach().cpu().clone()
                for n in vault.layers if n != head_name}
    scale = sum(w.pow(2).sum() for w in released.values()).sqrt()

    def measure(model: nn.Module, record: dict | None) -> dict:
        out = _owner_measures(model, release, old_head, vault, trigger, mean, std, device, batch)
        moved = sum((model.get_submodule(n).conv.weight.detach().cpu() - w).pow(2).sum()
                    for n, w in released.items())
        out["weight_change"] = (moved.sqrt() / scale).item()  # relative, passport layers
        out["new_task_acc"] = evaluate(model, new_task.test, new_task.mean, new_task.std, 0,
                                       batch, device)
        return out

    first = {"epoch": -1, **measure(attacker.to(device), None)}  # the release, new head
    if config.reset_bn_stats:  # the original's clone loses these statistics (see the presets)
        for name in vault.layers:
            norm = getattr(attacker.get_submodule(name), "norm", None)
            if isinstance(norm, nn.modules.batchnorm._BatchNorm):
                norm.reset_running_stats()
    run = TrainConfig(recipe=config.recipe, triggers_per_batch=0, select="last",
                      seed=config.seed, eval_batch_size=batch, channels_last=config.channels_last)
    result = train(attacker, new_task, run, None, device, progress=progress, desc=desc,
                   on_epoch=measure)
    keys = ("epoch", "new_task_acc", "detection", "matches", "bits", "log10_p", "trigger_acc",
            "weight_change")
    records = [first] + [{k: r[k] for k in keys if k in r} for r in result.history]
    for r in records:
        r["epoch"] += 1  # epoch 0 = the released model, before any fine-tuning
    return result.model, records


# ------------------------------------------------------------------ pruning
# (book/method.md#method-pruning)

def _prunable(model: nn.Module, preset: Preset) -> list[tuple[nn.Module, str]]:
    """(module, parameter name) pairs that enter the global magnitude ranking."""
    pairs = []
    for module in model.modules():
        for pname, _ in module.named_parameters(recurse=False):
            if not preset.prune_all_parameters and (isinstance(module, _NORM_TYPES)
                                                    or pname != "weight"):
                continue  # conv and linear weights only
            pairs.append((module, pname))
    return pairs


@torch.no_grad()
def prune_model(model: nn.Module, ratio: float, preset: str = "clean") -> tuple[nn.Module, dict]:
    """One-shot global unstructured L1 pruning of a copy of ``model`` (no retraining).

    Uses ``torch.nn.utils.prune.global_unstructured``; ``preset`` picks which parameters count
    and which are exempt (``pnorm.recipes.PRESETS``). Returns the pruned copy and what was
    zeroed.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"pruning ratio must be in [0, 1], got {ratio}")
    rules = get_preset(preset)
    pruned = copy.deepcopy(model)
    names = {id(m): n for n, m in pruned.named_modules()}
    pairs = _prunable(pruned, rules)
    exempt = [(m, p) for m, p in pairs
              if any(s in f"{names[id(m)]}.{p}" for s in rules.prune_exempt)]
    kept = [pair for pair in pairs if pair not in exempt]
    saved = [getattr(m, p).detach().clone() for m, p in exempt]
    zeroed = 0
    if ratio > 0:
        prune.global_unstructured(pairs, pruning_method=prune.L1Unstructured, amount=ratio)
        zeroed = sum(int((getattr(m, f"{p}_mask") == 0).sum()) for m, p in kept)
        for m, p in pairs:
            prune.remove(m, p)  # make the zeros permanent: a plain model again
        for (m, p), value in zip(exempt, saved, strict=True):
            getattr(m, p).copy_(value)
    total = sum(getattr(m, p).numel() for m, p in kept)
    return pruned, {"ratio": ratio, "pruned_fraction": zeroed / max(1, total),
                    "prunable": total, "ranked": sum(getattr(m, p).numel() for m, p in pairs)}


def pruning_sweep(
    protected: nn.Module,
    public: nn.Module,
    vault: Vault,
    test: Data,
    mean,
    std,
    ratios: Sequence[float] = tuple(i / 10 for i in range(11)),
    preset: str = "clean",
    device: str | torch.device = "cpu",
    batch_size: int = 500,
    progress: bool = True,
) -> list[dict]:
    """Prune at each ratio and measure both branches, the trigger set and the signature.

    ``clean`` prunes the public model and re-attaches the vault; ``faithful`` prunes the
    owner's protected model in place of it (book/method.md#method-pruning). One record per ratio.
    """
    if not any(isinstance(m, PassportAwareNorm) for m in protected.modules()):
        raise ValueError("`protected` must be the owner's model with its passport layers")
    target = protected if get_preset(preset).prune_target == "protected" else public
    trigger = trigger_data(vault)
    records = []
    for ratio in tqdm(ratios, desc=f"pruning ({preset})", disable=not show_progress(progress)):
        pruned, info = prune_model(target, ratio, preset)
        model = (pruned if target is protected else vault.attach(pruned)).to(device)
        acc0, acc1 = evaluate(model, test, mean, std, "both", batch_size, device)
        det = signature_detection(model)
        record = {**info, "acc0": acc0, "acc1": acc1, "detection": det["pooled"],
                  "matches": det["matches"], "bits": det["bits"],
                  "log10_p": binomial_tail(det["matches"], det["bits"]),
                  "per_layer": det["per_layer"]}
        if trigger is not None:
            record["trigger_acc0"], record["trigger_acc1"] = evaluate(
                model, trigger, mean, std, "both", batch_size, device)
        records.append(record)
    return records
