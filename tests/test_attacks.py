"""Removal attacks: pruning bookkeeping and direction, fine-tuning that leaves the vault alone."""

import pytest
import torch
from conftest import learnable_splits
from torch import nn

from pnorm.alexnet import AlexNetCIFAR
from pnorm.attacks import fine_tune, finetune_config, prune_model, pruning_sweep
from pnorm.fileio import state_sha256
from pnorm.layers import ConvNormAct
from pnorm.models import export_public
from pnorm.passport import key_model
from pnorm.recipes import Recipe
from pnorm.units import passport_layers
from pnorm.verify import evaluate, signature_detection


def _keyed() -> AlexNetCIFAR:
    model = AlexNetCIFAR(width=0.125, scheme="pan", passport_layers=["conv3", "conv4", "conv5"])
    key_model(model, torch.Generator().manual_seed(1))
    return model.eval()


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


# ----------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("preset", ["clean", "faithful"])
def test_pruning_at_zero_changes_nothing(preset):
    model = _keyed()
    target = export_public(model) if preset == "clean" else model
    pruned, info = prune_model(target, 0.0, preset)
    assert pruned is not target
    assert state_sha256(pruned) == state_sha256(target)
    assert info["pruned_fraction"] == 0.0


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.55, 0.9, 1.0])
def test_clean_pruning_zeroes_exactly_the_ratio_of_conv_and_linear_weights(ratio):
    public = export_public(_keyed())
    pruned, info = prune_model(public, ratio, "clean")
    weights = _weights(pruned)
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert info["prunable"] == total
    assert zeros == round(ratio * total)  # torch's L1Unstructured rounds the amount
    assert info["pruned_fraction"] == pytest.approx(ratio, abs=1 / total)
    # Normalisation layers are exempt by type, and nothing is left reparametrised.
    for (name, m), (_, m0) in zip(pruned.named_modules(), public.named_modules(), strict=True):
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, m0.weight) and torch.equal(m.bias, m0.bias), name
        assert not hasattr(m, "weight_orig") and not m._forward_pre_hooks, name
    # The input model is untouched.
    assert all((w != 0).all() for w in _weights(public))


def test_faithful_pruning_ranks_the_mlps_but_restores_them():
    model = _keyed()
    pruned, info = prune_model(model, 0.6, "faithful")
    layers0, layers1 = passport_layers(model), passport_layers(pruned)
    for name in layers0:
        for p0, p1 in zip(layers0[name].mlp.parameters(), layers1[name].mlp.parameters(),
                          strict=True):
            assert torch.equal(p0, p1)  # exempt by name ("mlp"/"fc"), as the original
        assert (layers1[name].gamma0 == 0).any() or (layers1[name].conv.weight == 0).any()
    n_mlp = sum(p.numel() for lay in layers0.values() for p in lay.mlp.parameters())
    zeroed = info["pruned_fraction"] * info["prunable"]
    assert info["ranked"] == info["prunable"] + n_mlp
    # r·N entries were ranked lowest; the MLP ones among them were restored.
    assert round(0.6 * info["ranked"]) - n_mlp <= zeroed <= round(0.6 * info["ranked"])


def test_pruning_rejects_bad_arguments():
    public = export_public(_keyed())
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\]"):
        prune_model(public, 1.5)
    with pytest.raises(ValueError, match="unknown preset"):
        prune_model(public, 0.5, "aggressive")


def test_pruning_sweep_starts_at_the_owners_numbers_and_ends_at_chance(trained_pan):
    model, vault, splits = trained_pan["model"], trained_pan["vault"], trained_pan["splits"]
    public = export_public(model)
    records = pruning_sweep(model, public, vault, splits.test, splits.mean, splits.std,
                            ratios=[0.0, 0.5, 1.0], progress=False)
    assert [r["ratio"] for r in records] == [0.0, 0.5, 1.0]
    first, last = records[0], records[-1]
    acc0, acc1 = evaluate(model, splits.test, splits.mean, splits.std, "both")
    assert first["acc0"] == pytest.approx(acc0) and first["acc1"] == pytest.approx(acc1)
    assert first["detection"] == signature_detection(model)["pooled"]
    assert first["trigger_acc0"] > 0.3  # the watermark was learned (chance 0.1)
    # Everything zeroed: no signature (sign(0) matches no ±1 bit), chance-level accuracy.
    assert last["pruned_fraction"] == 1.0 and last["detection"] == 0.0
    assert last["acc0"] <= 0.2 and last["acc1"] <= 0.2
    assert set(first) >= {"acc0", "acc1", "trigger_acc0", "trigger_acc1", "detection",
                          "log10_p", "pruned_fraction"}


# ----------------------------------------------------------------------------- fine-tuning


@pytest.mark.parametrize("preset", ["clean", "faithful"])
def test_fine_tuning_changes_public_weights_but_not_the_vault(trained_pan, preset):
    model, vault = trained_pan["model"], trained_pan["vault"]
    public = export_public(model)
    new_task = learnable_splits(n_train=256, n_val=64, n_test=128, seed=7, num_classes=5)
    before_public, before_vault = state_sha256(public), vault.signature.clone()
    before_layers = {n: {k: v.clone() for k, v in e["tensors"].items()}
                     for n, e in vault.layers.items()}
    config = finetune_config(preset, recipe=Recipe(epochs=2, lr=0.01, batch_size=32,
                                                   milestones=()))
    attacked, records = fine_tune(public, vault, new_task, config, progress=False)

    assert state_sha256(public) == before_public  # the input is not modified
    assert torch.equal(vault.signature, before_vault)
    for name, tensors in before_layers.items():
        for k, v in tensors.items():
            assert torch.equal(vault.layers[name]["tensors"][k], v), (name, k)
    assert attacked.classifier.out_features == 5
    changed = [not torch.equal(a.conv.weight, b.conv.weight)
               for a, b in zip(_units(attacked), _units(public), strict=True)]
    assert all(changed)
    assert [r["epoch"] for r in records] == [0, 1, 2]
    # Epoch 0 is the released model: the owner's full signature is there.
    assert records[0]["detection"] == pytest.approx(signature_detection(model)["pooled"])
    assert records[-1]["new_task_acc"] > 0.4  # learned the new 5-class task (chance 0.2)
    assert all(0.0 <= r["trigger_acc"] <= 1.0 for r in records)
    assert records[0]["weight_change"] == 0.0 < records[1]["weight_change"]


def _units(model: nn.Module) -> list[ConvNormAct]:
    return [m for m in model.modules() if isinstance(m, ConvNormAct)]


def test_faithful_fine_tuning_starts_without_the_passport_layers_bn_statistics(trained_pan):
    public = export_public(trained_pan["model"])
    vault = trained_pan["vault"]
    new_task = learnable_splits(n_train=64, n_val=32, n_test=32, seed=3, num_classes=5)
    seen = {}

    def spy(preset):
        config = finetune_config(preset, recipe=Recipe(epochs=0, lr=0.001))
        attacked, _ = fine_tune(public, vault, new_task, config, progress=False)
        seen[preset] = attacked

    spy("faithful")
    spy("clean")
    for name in vault.layers:
        faithful = seen["faithful"].get_submodule(name).norm
        assert torch.equal(faithful.running_mean, torch.zeros_like(faithful.running_mean))
        clean = seen["clean"].get_submodule(name).norm
        assert torch.equal(clean.running_mean, public.get_submodule(name).norm.running_mean)
