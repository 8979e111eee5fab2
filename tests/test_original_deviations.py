"""Where our surroundings of the PAN layer must match the original code's protocol.

(a) fine-tuning's epoch-0 record describes the release, even when the ``faithful`` preset resets
the attacker's BatchNorm statistics; (b) the ``faithful`` preset trains in float32 everywhere;
(c) the trigger set is scored with the owner's normalisation around the attacker's weights;
(d) the original's Attack I keeps its two forged passports in one storage.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from conftest import learnable_splits

from pnorm.attacks import fine_tune, finetune_config
from pnorm.forgery import THREAT_MODELS, forge_passports, threat_model
from pnorm.models import export_public
from pnorm.recipes import PRESETS, Recipe
from pnorm.training import amp_dtype, config_for
from pnorm.units import passport_layers
from pnorm.verify import evaluate


def _release_trigger_accuracy(public, vault, trigger, stats) -> float:
    return evaluate(vault.attach(public), trigger, stats["mean"], stats["std"], 0)


@pytest.mark.parametrize("preset", ["faithful", "clean"])
def test_epoch_zero_record_is_the_release(trained_pan, preset):
    model, vault, trigger = trained_pan["model"], trained_pan["vault"], trained_pan["trigger"]
    public = export_public(model)
    new_task = learnable_splits(n_train=64, n_val=32, n_test=64, seed=3, num_classes=5)
    config = finetune_config(preset, recipe=Recipe(epochs=0, lr=0.01, milestones=()))
    _, records = fine_tune(public, vault, new_task, config, progress=False)
    expected = _release_trigger_accuracy(public, vault, trigger, vault.data_stats)
    assert records[0]["epoch"] == 0
    assert records[0]["trigger_acc"] == pytest.approx(expected)
    assert expected > 0.5  # the release recalls its triggers, so a reset would show


def test_trigger_scored_with_the_owners_normalisation(trained_pan):
    """After fine-tuning, the score equals the original's copy-back of the conv weights."""
    model, vault, trigger = trained_pan["model"], trained_pan["vault"], trained_pan["trigger"]
    public = export_public(model)
    new_task = learnable_splits(n_train=128, n_val=32, n_test=64, seed=4, num_classes=5)
    config = finetune_config("faithful", recipe=Recipe(epochs=1, lr=0.05, batch_size=32,
                                                       milestones=()))
    attacked, records = fine_tune(public, vault, new_task, config, progress=False)
    # The original's procedure, written out: the owner's protected model with the suspect's
    # conv weights of the passport layers and every other layer of the suspect copied in.
    owner = copy.deepcopy(model)
    suspect = dict(attacked.named_modules())
    for name, module in owner.named_children():
        if name == "classifier":
            continue
        if name in vault.layers:
            module.conv.weight.data.copy_(suspect[name].conv.weight.data)
        else:
            module.load_state_dict(suspect[name].state_dict())
    stats = vault.data_stats
    expected = evaluate(owner, trigger, stats["mean"], stats["std"], 0)
    assert records[-1]["trigger_acc"] == pytest.approx(expected)
    # and the attacker's own normalisation would score differently (the test can fail)
    theirs = copy.deepcopy(attacked)
    theirs.classifier = copy.deepcopy(public.classifier)
    assert evaluate(vault.attach(theirs), trigger, stats["mean"], stats["std"], 0) != expected


def test_faithful_trains_in_float32_on_every_device():
    assert PRESETS["faithful"].full_precision and not PRESETS["clean"].full_precision
    faithful, clean = config_for("faithful"), config_for("clean")
    assert faithful.amp == "off" and amp_dtype(faithful, "cuda") is None  # no GPU needed
    assert clean.amp is None  # automatic: autocast on CUDA
    assert amp_dtype(replace(clean, amp="bf16"), "cuda") == torch.bfloat16


def test_attack_one_keeps_one_passport_storage(trained_pan):
    model, vault, splits = trained_pan["model"], trained_pan["vault"], trained_pan["splits"]
    public = export_public(model)
    assert THREAT_MODELS["original-attack-1"].shared_passports
    assert not THREAT_MODELS["original-attack-2"].shared_passports
    for shared in (True, False):
        threat = threat_model("original-attack-1", shared_passports=shared,
                              recipe=Recipe(epochs=1, batch_size=32, optimizer="sgd", lr=0.01,
                                            milestones=()), data_fraction=0.25)
        forged, _ = forge_passports(public, vault, splits.train, splits.test, splits.mean,
                                    splits.std, threat, progress=False)
        for layer in passport_layers(forged).values():
            same = layer.passport_beta is layer.passport_gamma
            assert same == shared
            assert torch.equal(layer.passport_gamma, layer.passport_beta) == shared
