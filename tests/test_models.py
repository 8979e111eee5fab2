"""AlexNet built from a passport map; batched step == two-pass step; the public export is clean."""

import copy

import pytest
import torch
from torch import nn

from pnorm.alexnet import AlexNetCIFAR
from pnorm.layers import ConvNormAct, PassportAwareNorm
from pnorm.models import build_model, export_public
from pnorm.passport import key_model
from pnorm.recipes import Recipe
from pnorm.training import TrainConfig, training_step
from pnorm.units import passport_layers


def _keyed(scheme="pan", **kw) -> AlexNetCIFAR:
    model = AlexNetCIFAR(width=0.125, scheme=scheme, seed=3, **kw)
    if scheme != "plain":
        key_model(model, torch.Generator().manual_seed(4), message="owner")
    return model


def test_schemes_build_the_right_layers():
    assert not passport_layers(AlexNetCIFAR(width=0.125, scheme="plain"))
    pan = AlexNetCIFAR(width=0.125, scheme="pan", passport_layers=["conv3", "conv4", "conv5"])
    assert list(passport_layers(pan)) == ["conv3", "conv4", "conv5"]
    assert isinstance(pan.conv1, ConvNormAct)
    layer = pan.conv3
    assert layer.mlp is not None and layer.norm1 is not None and layer.norm_kind == "bn"
    assert layer.passport_shape == (1, round(192 * 0.125), 8, 8)
    dipr = AlexNetCIFAR(width=0.125, scheme="deepipr")
    assert all(lay.mlp is None and lay.norm_kind == "gn" for lay in passport_layers(dipr).values())


def test_full_width_matches_the_spec_table():
    model = AlexNetCIFAR(scheme="pan")
    shapes = {n: (lay.passport_shape, lay.channels) for n, lay in passport_layers(model).items()}
    assert shapes == {
        "conv1": ((1, 3, 32, 32), 64),
        "conv2": ((1, 64, 16, 16), 192),
        "conv3": ((1, 192, 8, 8), 384),
        "conv4": ((1, 384, 8, 8), 256),
        "conv5": ((1, 256, 8, 8), 256),
    }
    assert sum(c for _, c in shapes.values()) == 1152
    assert model.conv2.mlp[0].out_features == 48


def test_bad_passport_map_and_classes_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['fc9'\]"):
        AlexNetCIFAR(passport_layers=["conv1", "fc9"])
    with pytest.raises(ValueError, match="num_classes"):
        AlexNetCIFAR(num_classes=1)
    with pytest.raises(ValueError, match="no passport layers"):
        AlexNetCIFAR(width=0.125, scheme="plain")(torch.randn(1, 3, 32, 32), 1)


def test_same_seed_same_weights():
    a, b = AlexNetCIFAR(width=0.125, seed=7), AlexNetCIFAR(width=0.125, seed=7)
    c = AlexNetCIFAR(width=0.125, seed=8)
    assert torch.equal(a.conv2.conv.weight, b.conv2.conv.weight)
    assert not torch.equal(a.conv2.conv.weight, c.conv2.conv.weight)


@pytest.mark.parametrize("scheme", ["pan", "deepipr"])
def test_batched_step_equals_two_pass_step(scheme):
    """Outputs, losses, gradients, updated weights and BN statistics agree to float tolerance."""
    a = _keyed(scheme)
    b = copy.deepcopy(a)
    x, y = torch.randn(12, 3, 32, 32), torch.randint(0, 10, (12,))
    a.train()
    b.train()
    out_sep = (a(x, 0), a(x, 1))
    out_both = b(x, "both")
    for s, t in zip(out_sep, out_both, strict=True):
        torch.testing.assert_close(s, t, rtol=1e-5, atol=1e-5)

    a2, b2 = copy.deepcopy(a), copy.deepcopy(b)  # statistics now equal; take one step each
    cfg = TrainConfig(recipe=Recipe(lr=0.05))
    opt_a = torch.optim.SGD(a2.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    opt_b = torch.optim.SGD(b2.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    la = training_step(a2, x, y, opt_a, TrainConfig(**{**cfg.__dict__, "batched": False}))
    lb = training_step(b2, x, y, opt_b, cfg)
    for k in la:
        torch.testing.assert_close(la[k], lb[k], rtol=1e-5, atol=1e-6)
    assert la["loss1"] > 0 and la["sign"] > 0
    for (name, pa), pb in zip(a2.named_parameters(), b2.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)
    for (name, ba), bb in zip(a2.named_buffers(), b2.buffers(), strict=True):
        torch.testing.assert_close(ba, bb, msg=name)


def test_gradients_reach_the_right_parameters():
    model = _keyed()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    training_step(model, x, y, opt, TrainConfig(), step=0)
    layer = model.conv2
    assert layer.gamma0.grad.abs().sum() > 0  # branch 0
    assert layer.mlp[0].weight.grad.abs().sum() > 0  # branch 1
    # Branch 0 alone never touches the MLP.
    model.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert layer.mlp[0].weight.grad is None


def _secret_arrays(model: nn.Module) -> list[torch.Tensor]:
    out = []
    for layer in passport_layers(model).values():
        out += [layer.passport_gamma, layer.passport_beta, layer.signature]
        out += [p for p in layer.mlp.parameters()] if layer.mlp is not None else []
        # Branch-1 statistics are secret except where they equal the public ones: at the first
        # layer both branches normalise the same conv output, so their statistics coincide.
        if layer.norm1 is not None and not torch.equal(
            layer.norm1.running_mean, layer.norm0.running_mean
        ):
            out += [layer.norm1.running_mean, layer.norm1.running_var]
    return out


@pytest.mark.parametrize("scheme", ["pan", "deepipr"])
def test_public_export_holds_no_secret_and_equals_branch0(scheme):
    model = _keyed(scheme)
    model.train()
    for _ in range(3):
        model(torch.randn(16, 3, 32, 32), "both")
    model.eval()
    public = export_public(model).eval()
    state = public.state_dict()
    forbidden = ("passport", "signature", "mlp", "norm1", "gamma", "beta")
    assert not [k for k in state if any(f in k for f in forbidden)]
    assert not any(isinstance(m, PassportAwareNorm) for m in public.modules())
    assert all(type(m).__module__.startswith(("torch.", "pnorm.")) for m in public.modules())
    # No tensor in the export equals (or contains) any secret array.
    public_tensors = list(state.values())
    for secret in _secret_arrays(model):
        for t in public_tensors:
            assert not (t.shape == secret.shape and torch.equal(t, secret))
    assert {type(m) for m in public.modules()} >= {nn.Conv2d, nn.Linear}
    x = torch.randn(5, 3, 32, 32)
    torch.testing.assert_close(public(x), model(x), rtol=1e-5, atol=1e-5)
    # The export is rebuildable from its config as a stock model.
    rebuilt = build_model(public.config)
    rebuilt.load_state_dict(state)
    torch.testing.assert_close(rebuilt.eval()(x), public(x))
    # And the protected model was left untouched.
    assert passport_layers(model)


def test_schemes_share_their_initial_conv_and_classifier_weights():
    """Same seed: plain, DeepIPR-style and PAN start from the same weights (fair comparison)."""
    nets = [AlexNetCIFAR(width=0.125, scheme=s, seed=11) for s in ("plain", "deepipr", "pan")]
    for name in ("conv1", "conv3", "conv5"):
        weights = [getattr(n, name).conv.weight for n in nets]
        assert all(torch.equal(weights[0], w) for w in weights[1:])
    assert all(torch.equal(nets[0].classifier.weight, n.classifier.weight) for n in nets[1:])
