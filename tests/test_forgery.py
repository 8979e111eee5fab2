"""Ambiguity attacks: threat-model switches, signature flipping, and the direction of results."""

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from pnorm.alexnet import AlexNetCIFAR
from pnorm.forgery import (
    FORGE_RECIPE,
    THREAT_MODELS,
    ThreatModel,
    flip_signature,
    forge_passports,
    threat_model,
)
from pnorm.images import ImageData
from pnorm.models import export_public
from pnorm.passport import key_model
from pnorm.recipes import Recipe
from pnorm.units import passport_layers
from pnorm.vault import Vault
from pnorm.verify import evaluate


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _budget(name: str, **fields) -> Recipe:
    """The named threat model's recipe with some fields replaced (e.g. ``epochs=0``)."""
    return replace(THREAT_MODELS[name].recipe, **fields)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_flip_signature_negates_exactly_floor_fraction_bits(fraction):
    sig = torch.where(torch.rand(48, generator=_gen(0)) > 0.5, 1.0, -1.0)
    before = sig.clone()
    out = flip_signature(sig, fraction, _gen(1))
    assert int((out != sig).sum()) == math.floor(fraction * 48)
    assert torch.equal(sig, before)  # the owner's bits are never written in place
    assert set(out.unique().tolist()) <= {-1.0, 1.0}


def test_threat_models_are_explicit_and_validated():
    assert set(THREAT_MODELS) >= {"release-holder", "original-attack-1", "original-attack-2"}
    a1, a2 = THREAT_MODELS["original-attack-1"], THREAT_MODELS["original-attack-2"]
    assert (a1.init, a1.know_mlp, a1.train_mlp, a1.sign_weight, a1.flip) == (
        "random", True, False, 0.0, 0.0)
    assert (a2.init, a2.know_mlp, a2.train_mlp, a2.distance_weight, a2.flip) == (
        "true", False, False, 1.0, 0.1)
    assert a1.shared_passports and not a2.shared_passports  # the original's Attack I storage
    assert a1.recipe.optimizer == a2.recipe.optimizer == "sgd"
    three = threat_model("original-attack-2", recipe=_budget("original-attack-2", epochs=3))
    assert three.recipe.epochs == 3 and three.recipe.optimizer == "sgd"
    assert THREAT_MODELS["release-holder"].recipe == FORGE_RECIPE
    with pytest.raises(ValueError, match="unknown threat model"):
        threat_model("fake3s")
    with pytest.raises(ValueError, match="must know them"):
        ThreatModel(init="random", distance_weight=1.0)
    with pytest.raises(ValueError, match="flip"):
        ThreatModel(flip=1.5)
    with pytest.raises(ValueError, match="data_fraction"):
        ThreatModel(data_fraction=0.0)


def _matched():
    """A keyed, untrained model whose signature is sign(s_gamma): the true passport reads 100 %."""
    model = AlexNetCIFAR(width=0.125, scheme="pan", passport_layers=["conv3", "conv4", "conv5"])
    key_model(model, _gen(1))
    with torch.no_grad():
        for layer in passport_layers(model).values():
            layer.signature.copy_(torch.sign(layer.passport_scales()[0]))
    model.eval()
    return model, Vault.from_model(model), export_public(model)


@pytest.mark.parametrize("flip", [0.0, 0.2, 0.5, 1.0])
def test_before_training_the_claimed_signature_mismatch_is_the_flip_fraction(flip, trained_pan):
    model, vault, public = _matched()
    splits = trained_pan["splits"]
    threat = threat_model("original-attack-2", flip=flip,
                          recipe=_budget("original-attack-2", epochs=0))
    _, records = forge_passports(public, vault, splits.train, splits.test, splits.mean,
                                 splits.std, threat, progress=False)
    (r,) = records
    flipped = sum(math.floor(flip * lay.channels) for lay in passport_layers(model).values())
    assert r["claimed_differs"] == pytest.approx(flipped / r["bits"])
    # Forgeries start at the true passport + 0.001 noise, which can only flip the few
    # near-zero channels of an untrained model.
    assert r["owner_detection"] > 0.95
    slack = 1 - r["owner_detection"]
    assert abs(r["claimed_detection"] - (1 - flipped / r["bits"])) <= slack + 1e-9
    assert r["cosine_to_true"] > 0.999


def test_attacker_model_hides_what_the_threat_model_does_not_grant(trained_pan):
    model, vault, splits = trained_pan["model"], trained_pan["vault"], trained_pan["splits"]
    public = export_public(model)
    # The release holder: no MLP, no BN1, random passports.
    threat = ThreatModel(recipe=replace(FORGE_RECIPE, epochs=0))
    forged, records = forge_passports(public, vault, splits.train, splits.test, splits.mean,
                                      splits.std, threat, progress=False)
    for name, layer in passport_layers(forged).items():
        own = passport_layers(model)[name]
        assert not torch.equal(layer.mlp[0].weight, own.mlp[0].weight)
        assert torch.equal(layer.norm1.running_mean, own.norm0.running_mean)  # public stats
        assert not torch.allclose(layer.passport_gamma, own.passport_gamma)
        # two separate forged passports (the release holder does not share their storage)
        assert not torch.equal(layer.passport_gamma, layer.passport_beta)
    assert abs(records[0]["cosine_to_true"]) < 0.3
    # The owner's vault is not changed by the attack.
    assert torch.equal(Vault.from_model(model).signature, vault.signature)


def test_forged_passports_at_initialisation_score_clearly_below_the_true_passport(trained_pan):
    model, vault, splits = trained_pan["model"], trained_pan["vault"], trained_pan["splits"]
    true_acc = evaluate(model, splits.test, splits.mean, splits.std, 1)
    for name in ("original-attack-1", "release-holder"):
        threat = threat_model(name, recipe=_budget(name, epochs=0))
        _, records = forge_passports(export_public(model), vault, splits.train, splits.test,
                                     splits.mean, splits.std, threat, seed=3, progress=False)
        assert records[0]["accuracy"] < true_acc - 0.3, name
        assert records[0]["owner_detection"] < 0.8, name


@pytest.mark.parametrize("name", sorted(THREAT_MODELS))
def test_forged_passports_share_one_storage_only_where_the_threat_model_says(name, trained_pan):
    model, vault, splits = trained_pan["model"], trained_pan["vault"], trained_pan["splits"]
    threat = threat_model(name, recipe=_budget(name, epochs=0))
    forged, _ = forge_passports(export_public(model), vault, splits.train, splits.test,
                                splits.mean, splits.std, threat, progress=False)
    for layer_name, layer in passport_layers(forged).items():
        gamma, beta = layer.passport_gamma, layer.passport_beta
        if threat.shared_passports:  # the original's Attack I: P_gamma and P_beta one tensor
            assert beta is gamma and beta.data_ptr() == gamma.data_ptr(), layer_name
        else:  # two separate passports, neither aliased nor equal
            assert beta.data_ptr() != gamma.data_ptr(), layer_name
            assert not torch.equal(gamma, beta), layer_name


def test_training_forged_passports_pursues_the_claimed_signature_with_frozen_weights(
    trained_pan,
):
    model, vault, splits = trained_pan["model"], trained_pan["vault"], trained_pan["splits"]
    acc0 = evaluate(model, splits.test, splits.mean, splits.std, 0)
    threat = ThreatModel(recipe=replace(FORGE_RECIPE, epochs=3, lr=0.05, batch_size=32),
                         flip=0.5, data_fraction=0.5)
    forged, records = forge_passports(export_public(model), vault, splits.train, splits.test,
                                      splits.mean, splits.std, threat, seed=0,
                                      reference_accuracy=acc0, progress=False)
    first, last = records[0], records[-1]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert first["claimed_detection"] < 0.6 < 0.7 < last["claimed_detection"]
    assert {"signature_ok", "accuracy_ok", "forgery_passes"} <= set(last)
    assert last["flip"] == 0.5 and last["data_fraction"] == 0.5  # flags travel with records
    assert last["lr"] == 0.05 and last["optimizer"] == "adam"  # so do the recipe's fields
    # Frozen weights: only passports (and the attacker's MLP) moved.
    for (n, p), (_, p0) in zip(forged.named_parameters(), model.named_parameters(), strict=True):
        if ".mlp." not in n:
            assert torch.equal(p, p0), n
    assert all(not t.requires_grad for t in forged.buffers())
    assert isinstance(forged.classifier, nn.Linear)


@pytest.mark.parametrize("flip", [0.0, 0.5, 1.0])
def test_data_free_construction_forges_a_working_pan_branch_for_any_signature(trained_pan, flip):
    model, vault, splits = trained_pan["model"], trained_pan["vault"], trained_pan["splits"]
    acc0 = evaluate(model, splits.test, splits.mean, splits.std, 0)
    threat = threat_model("release-holder-construct", flip=flip, reestimate_bn=False)
    forged, records = forge_passports(export_public(model), vault, splits.train, splits.test,
                                      splits.mean, splits.std, threat, reference_accuracy=acc0,
                                      progress=False)
    (r,) = records
    # The attacker's branch 1 reproduces the deployed branch exactly, with its own signature.
    assert r["accuracy"] == pytest.approx(acc0)
    assert r["claimed_detection"] == 1.0
    assert r["forgery_passes"] is True
    x = torch.randn(8, 3, 32, 32, generator=_gen(0))
    torch.testing.assert_close(forged(x, 1), forged(x, 0), rtol=1e-4, atol=1e-4)


def test_data_free_construction_without_an_mlp_must_keep_the_released_signs():
    model = AlexNetCIFAR(width=0.125, scheme="deepipr", passport_layers=["conv4", "conv5"])
    key_model(model, _gen(1))
    model.eval()
    vault, public = Vault.from_model(model), export_public(model)
    data = ImageData(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(4).long())
    threat = ThreatModel(construct=True, recipe=replace(FORGE_RECIPE, epochs=0), flip=0.5)
    forged, records = forge_passports(public, vault, data, data, (0.5,) * 3, (0.25,) * 3,
                                      threat, progress=False)
    assert records[0]["claimed_detection"] == 1.0
    for layer in passport_layers(forged).values():
        s_gamma, s_beta = layer.passport_scales()
        claimed = layer.signature
        # gamma1 = s_gamma has the claimed signs and the released magnitudes; beta1 = beta0.
        torch.testing.assert_close(s_gamma, claimed * layer.gamma0.abs().clamp_min(0.1),
                                   rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(s_beta, layer.beta0, rtol=1e-3, atol=1e-4)
        assert (torch.sign(s_gamma) != torch.sign(layer.gamma0)).float().mean() > 0.3
