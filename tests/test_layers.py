"""The PAN layer: algebra of both branches, batched == two passes, sign loss, public folding."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pnorm.layers import ConvNormAct, PassportAwareNorm, mean_response, sign_loss


def _layer(**kw) -> PassportAwareNorm:
    torch.manual_seed(0)
    layer = PassportAwareNorm(nn.Conv2d(3, 8, 3, padding=1, bias=False), (1, 3, 6, 6), **kw)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        layer.passport_gamma.uniform_(-1, 1, generator=g)
        layer.passport_beta.uniform_(-1, 1, generator=g)
        layer.gamma0.uniform_(0.5, 1.5, generator=g)
        layer.beta0.uniform_(-0.5, 0.5, generator=g)
    return layer


def test_branch1_affine_follows_the_spec():
    layer = _layer()
    s_gamma = F.conv2d(layer.passport_gamma, layer.conv.weight, padding=1).mean((0, 2, 3))
    s_beta = F.conv2d(layer.passport_beta, layer.conv.weight, padding=1).mean((0, 2, 3))
    got_sg, got_sb = layer.passport_scales()
    torch.testing.assert_close(got_sg, s_gamma)
    torch.testing.assert_close(got_sb, s_beta)
    gamma1, beta1 = layer.passport_affine()
    torch.testing.assert_close(gamma1, layer.mlp(s_gamma))  # one MLP shared by gamma and beta
    torch.testing.assert_close(beta1, layer.mlp(s_beta))

    x = torch.randn(5, 3, 6, 6)
    layer.eval()
    z = layer.conv(x)
    expected1 = F.relu(layer.norm1(z) * gamma1.view(1, -1, 1, 1) + beta1.view(1, -1, 1, 1))
    expected0 = F.relu(
        layer.norm0(z) * layer.gamma0.view(1, -1, 1, 1) + layer.beta0.view(1, -1, 1, 1)
    )
    torch.testing.assert_close(layer(x, 1), expected1)
    torch.testing.assert_close(layer(x), expected0)


def test_branches_keep_separate_batch_norm_statistics():
    layer = _layer()
    layer.train()
    layer(torch.randn(4, 3, 6, 6) + 3.0, 0)
    assert not torch.allclose(layer.norm0.running_mean, layer.norm1.running_mean)
    assert torch.equal(layer.norm1.running_mean, torch.zeros(8))  # branch 1 never ran


@pytest.mark.parametrize(
    "kw", [{}, {"norm": "gn", "mlp": False, "shared_stats": True}, {"shared_stats": True}]
)
def test_batched_pass_equals_two_passes_outputs_and_state(kw):
    a, b = _layer(**kw), _layer(**kw)
    b.load_state_dict(a.state_dict())
    x = torch.randn(6, 3, 6, 6)
    a.train()
    b.train()
    y0, y1 = a(x, 0), a(x, 1)
    both = b(torch.cat([x, x]), "both")
    torch.testing.assert_close(both, torch.cat([y0, y1]))
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(ta, tb, msg=name)  # running statistics updated identically


def test_sign_loss_value_and_zero_when_margin_met():
    s = torch.tensor([0.5, -0.2, 0.05, -0.01])
    b = torch.tensor([1.0, -1.0, 1.0, 1.0])
    hinge = 0.0 + 0.0 + 0.05 + 0.11
    expected = 0.1 * hinge + 1e-5 * (s**2).sum()
    torch.testing.assert_close(sign_loss(s, b), expected)
    assert sign_loss(torch.tensor([1.0, -1.0]), torch.tensor([1.0, -1.0])) < 1e-4


def test_sign_loss_uses_pre_mlp_scale_so_mlp_gets_no_gradient():
    layer = _layer()
    layer.sign_loss().backward()
    assert layer.conv.weight.grad is not None and layer.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in layer.mlp.parameters())


def test_deepipr_style_layer_has_no_mlp_and_uses_scale_directly():
    layer = _layer(norm="gn", mlp=False, shared_stats=True)
    assert layer.mlp is None and layer.norm1 is None
    s_gamma, s_beta = layer.passport_scales()
    gamma1, beta1 = layer.passport_affine()
    torch.testing.assert_close(gamma1, s_gamma)
    torch.testing.assert_close(beta1, s_beta)


@pytest.mark.parametrize("norm", ["bn", "gn", "none"])
def test_to_public_matches_branch0_in_eval(norm):
    layer = _layer(norm=norm)
    layer.train()
    layer(torch.randn(8, 3, 6, 6), "both")  # give the statistics something non-trivial
    layer.eval()
    public = layer.to_public().eval()
    assert isinstance(public, ConvNormAct)
    x = torch.randn(3, 3, 6, 6)
    torch.testing.assert_close(public(x), layer(x), rtol=1e-5, atol=1e-5)


def test_bad_branch_is_a_clear_error():
    with pytest.raises(ValueError, match="branch must be 0"):
        _layer()(torch.randn(2, 3, 6, 6), 2)


def test_linear_and_conv1d_weight_layers_work():
    lin = PassportAwareNorm(nn.Linear(6, 8), (1, 6))
    conv1d = PassportAwareNorm(nn.Conv1d(3, 8, 1, bias=False), (1, 3, 10))
    assert lin(torch.randn(4, 6), "both").shape == (4, 8)
    assert conv1d(torch.randn(4, 3, 10), 1).shape == (4, 8, 10)


@pytest.mark.parametrize("make", [
    lambda: nn.Conv2d(5, 7, 5, padding=2, bias=False),
    lambda: nn.Conv2d(5, 7, 3, stride=2, padding=1),
    lambda: nn.Conv2d(5, 7, 1, stride=2, bias=False),
    lambda: nn.Conv2d(5, 7, 3, dilation=2, padding=1, bias=False),
    lambda: nn.Conv1d(5, 7, 1, bias=False),
    lambda: nn.Conv1d(5, 7, 3, padding=1),
    lambda: nn.Conv2d(6, 4, 3, groups=2, padding=1),  # falls back to the convolution
    lambda: nn.Linear(5, 7),
], ids=["k5", "stride", "1x1-stride", "dilation", "conv1d", "conv1d-k3", "groups", "linear"])
def test_mean_response_equals_the_mean_of_the_convolution(make):
    layer = make().double()
    shapes = {nn.Linear: (3, 5), nn.Conv1d: (3, 5, 11)}
    shape = shapes.get(type(layer), (3, getattr(layer, "in_channels", 0), 9, 9))
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    z = layer(x)
    expected = z.flatten(2).mean(2) if z.dim() > 2 else z
    got = mean_response(layer, x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(got)
    ge = torch.autograd.grad(expected, (x, layer.weight), g)
    gg = torch.autograd.grad(got, (x, layer.weight), g)
    for a, b in zip(ge, gg, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
