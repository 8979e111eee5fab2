"""Both branches in one call (``pnorm.branches``) equal two separate passes, in every mode.

The shared prefix (plain units before the first passport layer) runs once with a doubled
running-statistics update; the diverged rest runs batched (CUDA) or branch by branch (CPU).
The sign loss reuses the scales the forward computed.
"""

import copy

import pytest
import torch
from torch import nn

from pnorm.alexnet import AlexNetCIFAR
from pnorm.layers import BranchNormUnit, ConvNormAct, PassportAwareNorm, _batch_norm_twice
from pnorm.models import export_public
from pnorm.passport import key_model
from pnorm.resnet import RESNET18_LAYER4, ResNet18CIFAR
from pnorm.training import TrainConfig, training_step
from pnorm.units import passport_layers, recording_scales, total_sign_loss
from pnorm.vault import Vault

ALEXNET_MAPS = [None, ("conv3", "conv4", "conv5"), ("conv2",)]
RESNET_MAPS = [RESNET18_LAYER4, ("layer2.0.conv2", "layer3.1.conv1")]


def _alexnet(layers, scheme="pan", dtype=torch.float64) -> nn.Module:
    model = AlexNetCIFAR(width=0.125, scheme=scheme, passport_layers=layers, seed=3)
    key_model(model, torch.Generator().manual_seed(4))
    return model.to(dtype).train()


def _resnet(layers, dtype=torch.float64) -> nn.Module:
    model = ResNet18CIFAR(width=0.125, passport_layers=layers, seed=3)
    key_model(model, torch.Generator().manual_seed(4))
    return model.to(dtype).train()


def _data(n=10, dtype=torch.float64):
    """float64 by default: no ReLU flips from rounding, so the comparisons can be tight."""
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n, 3, 32, 32, generator=g, dtype=dtype),
            torch.randint(0, 10, (n,), generator=g))


def _assert_same_step(reference: nn.Module, model: nn.Module, batch: bool | None) -> None:
    """Two steps: separate passes on ``reference``, ``branch="both"`` on ``model``; compare."""
    model.batch_branches = batch
    x, y = _data()
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
            for m in (reference, model)]
    for step in range(2):
        la = training_step(reference, x, y, opts[0], TrainConfig(batched=False), step=step)
        lb = training_step(model, x, y, opts[1], TrainConfig(batched=True), step=step)
        for k in la:
            torch.testing.assert_close(la[k], lb[k], rtol=1e-10, atol=1e-12, msg=k)
    for (name, pa), pb in zip(reference.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-9, atol=1e-12, msg=name)
        torch.testing.assert_close(pa, pb, rtol=1e-10, atol=1e-12, msg=name)
    for (name, ba), bb in zip(reference.named_buffers(), model.buffers(), strict=True):
        torch.testing.assert_close(ba, bb, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("batch", [False, True], ids=["split", "batched"])
@pytest.mark.parametrize("layers", ALEXNET_MAPS, ids=["all", "conv3-5", "conv2"])
def test_alexnet_both_equals_two_passes(layers, batch):
    model = _alexnet(layers)
    _assert_same_step(copy.deepcopy(model), model, batch)


@pytest.mark.parametrize("batch", [False, True], ids=["split", "batched"])
@pytest.mark.parametrize("layers", RESNET_MAPS, ids=["layer4", "mid"])
def test_resnet_both_equals_two_passes(layers, batch):
    model = _resnet(layers)
    _assert_same_step(copy.deepcopy(model), model, batch)


def test_deepipr_prefix_equals_two_passes():
    model = _alexnet(("conv3", "conv4", "conv5"), scheme="deepipr")
    _assert_same_step(copy.deepcopy(model), model, None)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_doubled_running_statistics_update_equals_two_calls(momentum):
    a = nn.BatchNorm2d(4, momentum=momentum).double()
    a.num_batches_tracked.fill_(3)
    a.running_mean.uniform_()
    b = copy.deepcopy(a)
    z = torch.randn(6, 4, 5, 5, dtype=torch.float64)
    a(z)
    ya = a(z)
    yb = _batch_norm_twice(b, z)
    torch.testing.assert_close(ya, yb)
    for name, buf in a.named_buffers():
        torch.testing.assert_close(buf, getattr(b, name), rtol=1e-12, atol=1e-14, msg=name)
    assert int(b.num_batches_tracked) == 5


def test_plain_prefix_runs_once():
    """With passports in conv3-5, conv1 and conv2 see one input: one call each, not two."""
    model = _alexnet(("conv3", "conv4", "conv5"))
    calls = {"conv1": 0, "conv3": 0, "conv4": 0}
    for name in calls:
        getattr(model, name).conv.register_forward_hook(
            lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    model(_data()[0], "both")
    # conv3, the first passport layer, still gets one input; conv4 gets two (on the CPU one
    # after the other). The passports' mean responses need no convolution (mean_response).
    assert calls == {"conv1": 1, "conv3": 1, "conv4": 2}


def test_units_after_a_passport_layer_get_a_private_branch1_norm():
    alex = AlexNetCIFAR(width=0.125, passport_layers=["conv2"])
    assert isinstance(alex.conv1, ConvNormAct) and isinstance(alex.conv3, BranchNormUnit)
    res = ResNet18CIFAR(width=0.125, passport_layers=["layer2.0.conv1"])
    assert isinstance(res.layer2[0].shortcut, ConvNormAct)  # reads the block's input
    assert isinstance(res.layer2[0].conv2, BranchNormUnit)
    assert isinstance(res.layer3[0].shortcut, BranchNormUnit)
    assert isinstance(res.layer1[1].conv2, ConvNormAct)


@pytest.mark.parametrize("make", [lambda: _alexnet(("conv2",), dtype=torch.float32),
                                  lambda: _resnet(("layer2.0.conv2",), dtype=torch.float32)],
                         ids=["alexnet", "resnet"])
def test_private_norms_travel_through_export_and_vault(make):
    model = make()
    x = _data(16, torch.float32)[0]
    with torch.no_grad():
        for _ in range(3):
            model(x, "both")
    model.eval()
    public = export_public(model).eval()
    assert not any(isinstance(m, (BranchNormUnit, PassportAwareNorm)) for m in public.modules())
    torch.testing.assert_close(public(x), model(x))
    restored = Vault.from_model(model).attach(public).eval()
    torch.testing.assert_close(restored(x, 1), model(x, 1))


def test_sign_loss_reuses_the_forward_scales():
    model = _alexnet(None)
    x, _ = _data()
    with recording_scales(model) as scales:
        model(x, "both")
    assert set(scales) == set(passport_layers(model).values())
    assert all(layer.scale_record is None for layer in passport_layers(model).values())
    reused, fresh = total_sign_loss(model, scales), total_sign_loss(model)
    torch.testing.assert_close(reused, fresh)
    g1 = torch.autograd.grad(reused, model.conv2.conv.weight)[0]
    g2 = torch.autograd.grad(fresh, model.conv2.conv.weight)[0]
    torch.testing.assert_close(g1, g2)


def test_training_step_reads_each_passport_once(monkeypatch):
    """The branch-1 forward's scales serve the sign loss too (no second passport pass)."""
    model = _alexnet(None)
    x, y = _data()
    calls = []
    original = PassportAwareNorm.passport_scales

    def counted(self, *args, **kwargs):
        calls.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PassportAwareNorm, "passport_scales", counted)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for batched in (True, False):
        calls.clear()
        training_step(model, x, y, opt, TrainConfig(batched=batched))
        assert sorted(map(id, calls)) == sorted(map(id, passport_layers(model).values()))
