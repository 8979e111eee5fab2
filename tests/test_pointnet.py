"""PointNet with PAN: shapes, batched == two-pass, the T-Net regulariser, export and vault."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from pnorm.layers import BranchNormUnit, ConvNormAct, PassportAwareNorm
from pnorm.models import build_model, export_public
from pnorm.passport import key_model
from pnorm.pointnet import (
    POINTNET_LAYERS,
    PointNetCls,
    feature_transform_regularizer,
    pointnet_loss,
)
from pnorm.units import passport_layers, total_sign_loss
from pnorm.vault import Vault, VaultError

P = 32  # points per cloud in these tests
VARIANTS = [("pan", False), ("pan", True), ("deepipr", False)]  # (scheme, faithful)


def _keyed(scheme: str = "pan", message: str | None = "owner", **kw) -> PointNetCls:
    model = PointNetCls(num_classes=10, width=0.125, scheme=scheme, num_points=P, seed=3, **kw)
    if scheme != "plain":
        key_model(model, torch.Generator().manual_seed(4), message=message)
    return model


def _clouds(n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, P, generator=g), torch.randint(0, 10, (n,), generator=g)


def _rebuild(config: dict) -> PointNetCls:
    return build_model(config)


def test_full_width_matches_the_spec_table() -> None:
    model = PointNetCls(num_classes=40, scheme="pan")
    got = {n: (lay.passport_shape, lay.channels, lay.mlp[0].out_features)
           for n, lay in passport_layers(model).items()}
    assert got == {
        "convp1": ((1, 3, 1024), 64, 16),
        "convp2": ((1, 64, 1024), 128, 32),
        "convp3": ((1, 128, 1024), 1024, 256),
        "p1": ((1, 1024), 512, 128),
        "p2": ((1, 512), 256, 64),
        "p3": ((1, 256), 40, 10),
    }
    assert sum(c for _, c, _ in got.values()) == 2024
    assert isinstance(model.convp1.conv, nn.Conv1d) and model.convp1.conv.bias is None
    assert isinstance(model.p1.conv, nn.Linear) and model.p1.conv.bias is not None
    assert model.p3.norm_kind == "none" and not model.p3.activation
    assert not model.convp3.activation and model.convp2.activation
    assert model.feature_tnet.k == 64 and model.config["arch"] == "pointnet"


@pytest.mark.parametrize("scheme", ["plain", "pan", "deepipr"])
def test_output_shapes_and_branches(scheme: str) -> None:
    model = _keyed(scheme).eval()
    x, _ = _clouds(5)
    assert model(x).shape == (5, 10)
    logits, trans = model(x, return_transform=True)
    assert logits.shape == (5, 10) and trans.shape == (5, 8, 8)  # 64 · width 0.125
    if scheme == "plain":
        assert not passport_layers(model)
        with pytest.raises(ValueError, match="no passport layers"):
            model(x, 1)
        return
    assert list(passport_layers(model)) == list(POINTNET_LAYERS)
    (o0, o1), (t0, t1) = model(x, "both", return_transform=True)
    assert o0.shape == o1.shape == (5, 10) and t0.shape == t1.shape == (5, 8, 8)
    torch.testing.assert_close(o0, model(x, 0))
    torch.testing.assert_close(o1, model(x, 1))
    assert not torch.allclose(o0, o1)
    # Input T-Net starts at the identity.
    eye = torch.eye(3).expand(5, 3, 3)
    torch.testing.assert_close(model.input_tnet(x), eye)


def test_schemes_and_faithful_flag_pick_the_layers() -> None:
    clean, faithful = _keyed("pan"), _keyed("pan", faithful=True)
    assert all(not lay.shared_stats and lay.norm1 is not None
               for n, lay in passport_layers(clean).items() if n != "p3")
    assert all(lay.shared_stats and lay.norm1 is None
               for lay in passport_layers(faithful).values())
    dipr = _keyed("deepipr")
    assert all(lay.mlp is None and lay.norm_kind in ("gn", "none")
               for lay in passport_layers(dipr).values())
    partial = PointNetCls(num_classes=10, width=0.125, passport_layers=["p1", "convp2"])
    assert list(passport_layers(partial)) == ["convp2", "p1"]
    assert isinstance(partial.p3, ConvNormAct) and isinstance(partial.convp1, ConvNormAct)
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['fc3'\]"):
        PointNetCls(passport_layers=["p1", "fc3"])
    with pytest.raises(ValueError, match="num_classes"):
        PointNetCls(num_classes=1)
    with pytest.raises(ValueError, match="B×3×P"):
        clean(torch.randn(2, P, 3))


def test_same_seed_same_weights_across_schemes() -> None:
    nets = [PointNetCls(num_classes=10, width=0.125, scheme=s, seed=11)
            for s in ("plain", "pan", "deepipr")]
    for name in ("convp2", "p1", "p3"):
        weights = [getattr(n, name).conv.weight for n in nets]
        assert all(torch.equal(weights[0], w) for w in weights[1:])
    other = PointNetCls(num_classes=10, width=0.125, seed=12)
    assert not torch.equal(nets[1].convp2.conv.weight, other.convp2.conv.weight)


def _step(model: PointNetCls, x, y, batched: bool, faithful: bool):
    """One SGD step on L0 + L1 + sign loss (each L with the T-Net regulariser); dropout on.

    SGD rather than the 3-D recipe's Adam: Adam's g/sqrt(v) turns 1e-9 gradient noise on
    near-zero gradients into visible weight differences, which would test Adam, not the model.
    """
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    torch.manual_seed(123)  # dropout masks: the same draws in both structures
    if batched:
        (o0, o1), (t0, t1) = model(x, "both", return_transform=True)
    else:
        o0, t0 = model(x, 0, return_transform=True)
        o1, t1 = model(x, 1, return_transform=True)
    l0, l1 = pointnet_loss(o0, y, t0, faithful), pointnet_loss(o1, y, t1, faithful)
    sign = total_sign_loss(model)
    (l0 + l1 + sign).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    return (o0, o1), torch.stack([l0, l1, sign]).detach(), grads


PREFIX_MAPS = [("pan", False, ("convp2", "convp3", "p1", "p2")), ("pan", False, ("p3",)),
               ("deepipr", False, ("convp3", "p1"))]  # plain units first: a shared prefix
# ("p3",): the branches are still one tensor at the dropout, which must draw two masks anyway


@pytest.mark.parametrize(("scheme", "faithful", "layers"),
                         [(*v, None) for v in VARIANTS] + PREFIX_MAPS)
def test_batched_step_equals_two_pass_step(scheme: str, faithful: bool, layers) -> None:
    """Outputs, losses, gradients, updated weights and BN statistics agree to float tolerance."""
    a = _keyed(scheme, faithful=faithful, passport_layers=layers, message=None).train()
    b = copy.deepcopy(a)
    x, y = _clouds()
    out_a, loss_a, grad_a = _step(a, x, y, batched=False, faithful=faithful)
    out_b, loss_b, grad_b = _step(b, x, y, batched=True, faithful=faithful)
    for s, t in zip(out_a, out_b, strict=True):
        torch.testing.assert_close(s, t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    assert loss_a[1] > 0 and loss_a[2] > 0
    assert grad_a.keys() == grad_b.keys() and any(".mlp." in k for k in grad_a) == (
        scheme == "pan")
    for name in grad_a:
        torch.testing.assert_close(grad_a[name], grad_b[name], rtol=1e-4, atol=1e-6, msg=name)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)
    for (name, ba), bb in zip(a.named_buffers(), b.buffers(), strict=True):
        torch.testing.assert_close(ba, bb, msg=name)


def test_feature_transform_regularizer_on_hand_made_matrices() -> None:
    eye = torch.eye(2).expand(3, 2, 2)
    for faithful in (False, True):
        assert feature_transform_regularizer(eye, faithful) == 0
    two = 2 * torch.eye(2).unsqueeze(0)
    # clean: ‖4I - I‖ = 3√2; faithful: ‖2I·(2I - I)‖ = ‖2I‖ = 2√2
    assert math.isclose(feature_transform_regularizer(two, False).item(), 3 * math.sqrt(2),
                        rel_tol=1e-6)
    assert math.isclose(feature_transform_regularizer(two, True).item(), 2 * math.sqrt(2),
                        rel_tol=1e-6)
    c, s = math.cos(0.5), math.sin(0.5)
    rot = torch.tensor([[[c, -s], [s, c]]])
    assert feature_transform_regularizer(rot, False).item() < 1e-6  # orthogonal: no penalty
    # faithful: R·(Rᵀ - I) = I - R, ‖I - R‖_F = 2·sqrt(1 - cos θ)... per entry: (1-c, s; -s, 1-c)
    expected = math.sqrt(2 * (1 - c) ** 2 + 2 * s**2)
    assert math.isclose(feature_transform_regularizer(rot, True).item(), expected, rel_tol=1e-6)
    # Mean over the batch of per-sample norms.
    batch = torch.cat([two, torch.eye(2).unsqueeze(0)])
    assert math.isclose(feature_transform_regularizer(batch, False).item(),
                        3 * math.sqrt(2) / 2, rel_tol=1e-6)
    nonsym = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])  # T·Tᵀ - I = [[1,1],[1,0]]; T·Tᵀ - T
    assert math.isclose(feature_transform_regularizer(nonsym, False).item(), math.sqrt(3),
                        rel_tol=1e-6)
    assert math.isclose(feature_transform_regularizer(nonsym, True).item(),
                        torch.tensor([[1.0, 0.0], [1.0, 0.0]]).norm().item(), rel_tol=1e-6)


def _trained_a_little(scheme: str, faithful: bool = False, **kw) -> PointNetCls:
    model = _keyed(scheme, faithful=faithful, **kw).train()
    with torch.no_grad():
        for seed in range(3):
            model(_clouds(16, seed)[0] * 1.5, "both")
    return model.eval()


@pytest.mark.parametrize(("scheme", "faithful"), VARIANTS)
def test_public_export_holds_no_secret_and_equals_branch0(scheme: str, faithful: bool) -> None:
    model = _trained_a_little(scheme, faithful)
    public = export_public(model).eval()
    state = public.state_dict()
    forbidden = ("passport", "signature", "mlp", "norm1", "gamma", "beta")
    assert not [k for k in state if any(f in k for f in forbidden)]
    assert not any(isinstance(m, PassportAwareNorm) for m in public.modules())
    assert public.config["scheme"] == "plain" and public.config["passport_layers"] == []
    x, _ = _clouds(6, seed=9)
    torch.testing.assert_close(public(x), model(x), rtol=1e-5, atol=1e-5)
    rebuilt = _rebuild(public.config)  # the export is a stock plain PointNet
    rebuilt.load_state_dict(state)
    torch.testing.assert_close(rebuilt.eval()(x), public(x))
    assert passport_layers(model)  # the protected model was left untouched


@pytest.mark.parametrize(("scheme", "faithful"), VARIANTS)
def test_vault_round_trip_reproduces_branch1(tmp_path, scheme: str, faithful: bool) -> None:
    layers = ["convp1", "convp2", "convp3", "p1", "p2"]  # p3 (no norm): see the next test
    model = _trained_a_little(scheme, faithful, passport_layers=layers)
    path = Vault.from_model(model, seeds={"model": 3}).save(tmp_path / "v.pt")
    public = export_public(model)
    protected = Vault.load(path).attach(public).eval()
    assert list(passport_layers(protected)) == layers
    x, _ = _clouds(6, seed=9)
    torch.testing.assert_close(protected(x, 1), model(x, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(protected(x, 0), model(x, 0), rtol=1e-5, atol=1e-5)
    assert protected.config == model.config


def test_vault_reattaches_the_unnormalised_last_layer(tmp_path) -> None:
    """p3 has no norm: the release folds its gamma0/beta0 into the weights; the vault unfolds."""
    model = _trained_a_little("pan")
    assert "p3" in passport_layers(model) and model.p3.norm_kind == "none"
    path = Vault.from_model(model).save(tmp_path / "v.pt")
    protected = Vault.load(path).attach(export_public(model)).eval()
    x, _ = _clouds(6, seed=9)
    torch.testing.assert_close(protected(x, 1), model(x, 1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(protected(x, 0), model(x, 0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(protected.p3.conv.weight, model.p3.conv.weight)
    zero = Vault.from_model(model)
    zero.layers["p3"]["tensors"]["gamma0"][0] = 0.0
    with pytest.raises(VaultError, match="zero entries"):
        zero.attach(export_public(model))


def test_branch0_never_touches_the_passport_mlps() -> None:
    model = _keyed("pan").train()
    x, y = _clouds()
    logits, trans = model(x, 0, return_transform=True)
    pointnet_loss(logits, y, trans, faithful=False).backward()
    assert model.p1.mlp[0].weight.grad is None and model.convp2.gamma0.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    logits, trans = model(x, 1, return_transform=True)
    pointnet_loss(logits, y, trans, faithful=False).backward()
    assert model.p1.mlp[0].weight.grad.abs().sum() > 0 and model.convp2.gamma0.grad is None


def test_build_model_rebuilds_a_pointnet_from_its_config() -> None:
    model = _keyed("pan")
    rebuilt = build_model(model.config, seed=0)
    assert type(rebuilt) is type(model) and rebuilt.config == model.config
    assert list(passport_layers(rebuilt)) == list(passport_layers(model))


def test_units_after_a_passport_layer_keep_a_private_branch1_norm(tmp_path) -> None:
    model = _keyed("pan", passport_layers=["convp2", "p1"])
    feature, main = model.feature_tnet, {n: getattr(model, n) for n in ("convp3", "p2")}
    assert all(isinstance(m, ConvNormAct) for m in model.input_tnet.children()
               if hasattr(m, "norm"))
    assert isinstance(feature.conv1, ConvNormAct)  # convp1 is plain: same input in both branches
    assert all(isinstance(m, BranchNormUnit) for m in main.values())
    full = _keyed("pan")
    assert isinstance(full.feature_tnet.conv1, BranchNormUnit)
    public = export_public(full)
    assert not any(isinstance(m, BranchNormUnit) for m in public.modules())
    assert not any("norm1" in k for k in public.state_dict())
    with torch.no_grad():
        for m in full.modules():
            if isinstance(m, BranchNormUnit):
                m.norm1.running_mean.uniform_(-1, 1)
    vault = Vault.from_model(full)
    assert set(vault.branch_norms) == {f"feature_tnet.{n}" for n in
                                       ("conv1", "conv2", "conv3", "fc1", "fc2")}
    vault.save(tmp_path / "v.pt")
    again = Vault.load(tmp_path / "v.pt").attach(public)
    for name, state in vault.branch_norms.items():
        assert torch.equal(again.get_submodule(name).norm1.running_mean, state["running_mean"])
