"""Invariant neuron transforms (KDD 2023 attack, book/method.md#method-later-attacks): they
preserve the released model's function, break PAN's signature read-out, and the owner's
re-alignment restores it."""

import itertools

import pytest
import torch

from pnorm.alexnet import AlexNetCIFAR
from pnorm.fileio import state_sha256
from pnorm.images import normalize
from pnorm.models import export_public
from pnorm.neuron_transforms import linear_sum_assignment, obfuscate, realign
from pnorm.units import passport_layers
from pnorm.verify import signature_detection

UNITS = ["conv1", "conv2", "conv3", "conv4", "conv5"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def public(trained_pan):
    return export_public(trained_pan["model"]).eval()


@pytest.fixture(scope="module")
def batch(trained_pan):
    splits = trained_pan["splits"]
    return normalize(splits.test.images[:64], splits.mean, splits.std)


def _detection(vault, public_model) -> dict:
    return signature_detection(vault.attach(public_model))


@torch.no_grad()
def _assert_same_function(a, b, x) -> None:
    ya, yb = a.eval()(x), b.eval()(x)
    assert torch.allclose(ya, yb, rtol=0, atol=1e-4 * ya.abs().max().item())


@pytest.mark.parametrize(
    "permute, rescale, flip",
    [(True, False, False), (False, True, False), (False, False, True), (True, True, True)],
)
def test_obfuscation_preserves_function_and_changes_weights(public, batch, permute, rescale,
                                                            flip):
    before = state_sha256(public)
    model, record = obfuscate(public, _gen(3), permute=permute, rescale=rescale,
                              flip_signs=flip)
    assert state_sha256(public) == before  # the input is untouched
    assert state_sha256(model) != before
    assert list(record) == UNITS
    _assert_same_function(public, model, batch)


def test_permutation_breaks_detection_and_realign_restores_it(trained_pan, public, batch):
    vault = trained_pan["vault"]
    original = _detection(vault, public)
    assert original["pooled"] > 0.9  # the fixture's signature is (almost) fully embedded
    moved, applied = obfuscate(public, _gen(5), rescale=False, flip_signs=False)
    assert _detection(vault, moved)["pooled"] < 0.7
    before = state_sha256(moved)
    aligned, found = realign(moved, public)
    assert state_sha256(moved) == before
    for name in UNITS:
        assert torch.equal(found[name]["perm"], applied[name]["perm"])
        assert torch.equal(found[name]["signs"], torch.ones_like(found[name]["signs"]))
        assert int(found[name]["low"]) == 0
    assert _detection(vault, aligned) == original  # same bits, layer by layer
    _assert_same_function(public, aligned, batch)


def test_realign_undoes_all_three_transforms(trained_pan, public, batch):
    vault = trained_pan["vault"]
    moved, applied = obfuscate(public, _gen(7))
    assert _detection(vault, moved)["pooled"] < 0.7
    aligned, found = realign(moved, public)
    for name in UNITS:
        assert torch.equal(found[name]["perm"], applied[name]["perm"])
        assert torch.equal(found[name]["signs"], applied[name]["signs"])
        assert torch.allclose(found[name]["scales"], applied[name]["scales"], rtol=1e-4)
        assert found[name]["similarity"].min() > 0.999
    ref = public.state_dict()
    for key, value in aligned.state_dict().items():
        assert torch.allclose(value.float(), ref[key].float(), rtol=1e-4, atol=1e-6), key
    assert _detection(vault, aligned)["pooled"] == _detection(vault, public)["pooled"]
    _assert_same_function(public, aligned, batch)


def _s_gamma(vault, public_model) -> dict[str, torch.Tensor]:
    layers = passport_layers(vault.attach(public_model))
    return {name: layer.passport_scales()[0].detach() for name, layer in layers.items()}


def test_flips_and_rescales_act_on_s_gamma_as_documented(trained_pan, public):
    vault = trained_pan["vault"]
    before = _s_gamma(vault, public)
    # a BN rescale leaves its own unit's conv alone, but reweights the next conv's inputs
    scaled, _ = obfuscate(public, _gen(1), permute=False, flip_signs=False, layers=["conv2"])
    after = _s_gamma(vault, scaled)
    assert all(torch.equal(after[n], before[n]) for n in UNITS if n != "conv3")
    assert not torch.allclose(after["conv3"], before["conv3"])
    # a flip negates s_gamma of exactly the flipped channels, nothing downstream
    flipped, record = obfuscate(public, _gen(2), permute=False, rescale=False, layers=["conv3"])
    assert list(record) == ["conv3"]
    after = _s_gamma(vault, flipped)
    assert torch.equal(after["conv3"], before["conv3"] * record["conv3"]["signs"])
    assert all(torch.equal(after[n], before[n]) for n in UNITS if n != "conv3")


def test_realign_against_itself_is_the_identity(public):
    aligned, found = realign(public, public)
    assert all(torch.equal(found[n]["perm"], torch.arange(len(found[n]["perm"]))) for n in UNITS)
    assert state_sha256(aligned) == state_sha256(public)


def test_clear_errors(trained_pan, public):
    wider = export_public(AlexNetCIFAR(width=0.25, scheme="pan", seed=0))
    with pytest.raises(ValueError, match="same architecture"):
        realign(wider, public)
    with pytest.raises(ValueError, match="export_public"):
        obfuscate(trained_pan["model"], _gen(0))
    with pytest.raises(ValueError, match="unknown unit"):
        obfuscate(public, _gen(0), layers=["conv9"])
    with pytest.raises(ValueError, match="plain chains"):
        from pnorm.resnet import ResNet18CIFAR

        obfuscate(ResNet18CIFAR(width=0.125, scheme="plain"), _gen(0))


def test_linear_sum_assignment_is_optimal_on_small_matrices():
    g = _gen(0)
    for n in (1, 2, 4, 5):
        for _ in range(10):
            cost = torch.randint(-3, 4, (n, n), generator=g).double()
            col = linear_sum_assignment(cost)
            assert sorted(col.tolist()) == list(range(n))
            best = min(sum(cost[i, p[i]] for i in range(n))
                       for p in itertools.permutations(range(n)))
            assert cost[torch.arange(n), col].sum() == best
