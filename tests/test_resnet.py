"""ResNet-18-CIFAR: passport map per layer, faithful vs standard blocks, export and vault."""

import copy

import pytest
import torch
from torch import nn

from pnorm.layers import ConvNormAct, PassportAwareNorm
from pnorm.models import build_model, export_public
from pnorm.passport import key_model
from pnorm.recipes import Recipe
from pnorm.resnet import RESNET18_LAYER4, RESNET18_LAYERS, ResNet18CIFAR
from pnorm.training import TrainConfig, training_step
from pnorm.units import passport_layers, unit_layers
from pnorm.vault import Vault


def _keyed(variant="faithful", scheme="pan", **kw) -> ResNet18CIFAR:
    model = ResNet18CIFAR(width=0.125, scheme=scheme, variant=variant, seed=3, **kw)
    if scheme != "plain":
        key_model(model, torch.Generator().manual_seed(4), message="owner")
    return model


def _warm(model: nn.Module, steps: int = 3) -> nn.Module:
    """Move BN running statistics away from their initial values (both branches)."""
    model.train()
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(8, 3, 32, 32, generator=g), "both")
    return model.eval()


def test_full_width_passport_map_matches_the_spec_table():
    model = ResNet18CIFAR(scheme="pan")
    layers = passport_layers(model)
    assert tuple(layers) == RESNET18_LAYERS and len(layers) == 20
    assert sum(lay.channels for lay in layers.values()) == 4800
    shapes = {n: lay.passport_shape for n, lay in layers.items()}
    assert shapes["stem"] == (1, 3, 32, 32)
    assert shapes["layer1.1.conv2"] == (1, 64, 32, 32)
    assert shapes["layer2.0.conv1"] == shapes["layer2.0.shortcut"] == (1, 64, 32, 32)
    assert shapes["layer2.0.conv2"] == (1, 128, 16, 16)
    assert shapes["layer3.0.shortcut"] == (1, 128, 16, 16)
    assert shapes["layer4.0.shortcut"] == (1, 256, 8, 8)
    assert shapes["layer4.1.conv2"] == (1, 512, 4, 4)
    mlp_params = sum(p.numel() for n, p in model.named_parameters() if ".mlp." in n)
    assert mlp_params == sum(c * c // 2 for c in (64, 128, 256, 512) for _ in range(5))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_passport_map_and_variants_choose_the_units():
    sub = ResNet18CIFAR(width=0.125, passport_layers=RESNET18_LAYER4)
    assert tuple(passport_layers(sub)) == RESNET18_LAYER4
    assert isinstance(sub.stem, ConvNormAct) and isinstance(sub.layer4[0].shortcut,
                                                             PassportAwareNorm)
    assert len(unit_layers(sub)) == 20 and sub.layer1[0].shortcut is None
    faithful, standard = _keyed("faithful"), _keyed("standard")
    for model, pre_add in ((faithful, True), (standard, False)):
        for name, unit in unit_layers(model).items():
            expected = pre_add if name.endswith(("conv2", "shortcut")) else True
            assert unit.activation == expected, name
    # Same seed, same weights; the ReLU before the add makes a different function.
    assert torch.equal(faithful.layer3[0].conv1.conv.weight, standard.layer3[0].conv1.conv.weight)
    x = torch.randn(3, 3, 32, 32)
    assert not torch.allclose(faithful.eval()(x), standard.eval()(x))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['layer5.0.conv1'\]"):
        ResNet18CIFAR(width=0.125, passport_layers=["stem", "layer5.0.conv1"])
    with pytest.raises(ValueError, match="variant"):
        ResNet18CIFAR(width=0.125, variant="preact")
    with pytest.raises(ValueError, match="no passport layers"):
        ResNet18CIFAR(width=0.125, scheme="plain")(torch.randn(1, 3, 32, 32), 1)


@pytest.mark.parametrize("variant", ["faithful", "standard"])
def test_export_is_stock_and_vault_restores_branch1(variant):
    model = _warm(_keyed(variant))
    public = export_public(model).eval()
    state = public.state_dict()
    forbidden = ("passport", "signature", "mlp", "norm1", "gamma", "beta")
    assert not [k for k in state if any(f in k for f in forbidden)]
    assert not any(isinstance(m, PassportAwareNorm) for m in public.modules())
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(public(x), model(x), rtol=1e-5, atol=1e-5)
    rebuilt = build_model(public.config).eval()
    rebuilt.load_state_dict(state)
    torch.testing.assert_close(rebuilt(x), public(x))
    restored = Vault.from_model(model).attach(public).eval()
    torch.testing.assert_close(restored(x, 1), model(x, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(restored(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["faithful", "standard"])
def test_batched_step_equals_two_pass_step(variant):
    """Losses, gradients, updated weights and BN statistics agree (float64: no ReLU flips)."""
    a = _keyed(variant).double()
    b = copy.deepcopy(a)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, 32, 32, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (10,), generator=g)
    cfg = TrainConfig(recipe=Recipe(lr=0.05))
    opt_a = torch.optim.SGD(a.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    a.train()
    b.train()
    la = training_step(a, x, y, opt_a, TrainConfig(**{**cfg.__dict__, "batched": False}))
    lb = training_step(b, x, y, opt_b, cfg)
    for k in la:
        torch.testing.assert_close(la[k], lb[k], rtol=1e-10, atol=1e-12)
    assert la["loss1"] > 0 and la["sign"] > 0
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-9, atol=1e-12, msg=name)
        torch.testing.assert_close(pa, pb, rtol=1e-10, atol=1e-12, msg=name)
    for (name, ba), bb in zip(a.named_buffers(), b.buffers(), strict=True):
        torch.testing.assert_close(ba, bb, rtol=1e-10, atol=1e-12, msg=name)
