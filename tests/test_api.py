"""The public API's newer pieces: ``Recipe``, ``image_data``, releases, verification defaults,
the presets, and the README's owner path through ``import pnorm`` alone."""

from __future__ import annotations

import math
from dataclasses import asdict, fields, replace

import pytest
import torch

import pnorm
from pnorm.images import CIFAR_MEAN, CIFAR_STD, normalize
from pnorm.recipes import Preset, get_preset, make_optimizer

# ------------------------------------------------------------------ Recipe


def test_recipe_milestones_are_fractions_of_the_epochs():
    paper = pnorm.Recipe()
    assert paper.epochs == 200 and paper.milestones == (0.5, 0.75)
    assert paper.milestone_epochs == (100, 150)  # the paper's epochs 100 and 150
    assert pnorm.Recipe(epochs=3, milestones=(2 / 3,)).milestone_epochs == (2,)
    assert pnorm.Recipe(epochs=16, milestones=[0.5, 0.75]).milestones == (0.5, 0.75)  # a tuple
    assert pnorm.Recipe(epochs=10, milestones=()).milestone_epochs == ()


def test_step_schedule_multiplies_at_each_milestone_as_torch_does():
    recipe = pnorm.Recipe(epochs=8, lr=0.1, milestones=(0.5, 0.75), lr_gamma=0.1)
    assert recipe.epoch_lrs() == pytest.approx([0.1] * 4 + [0.01] * 2 + [0.001] * 2)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(recipe.milestone_epochs), 0.1)
    expected = []
    for _ in range(recipe.epochs):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert recipe.epoch_lrs() == pytest.approx(expected, rel=1e-12)
    assert pnorm.Recipe(epochs=5, lr=0.3, milestones=()).epoch_lrs() == [0.3] * 5  # constant


@pytest.mark.parametrize("epochs", [1, 2, 7, 20])
def test_cosine_schedule_is_what_torch_cosine_annealing_sets(epochs):
    recipe = pnorm.Recipe(epochs=epochs, lr=0.05, lr_schedule="cosine", milestones=())
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    expected = []
    for _ in range(epochs):  # the rate each epoch trains with: read before the epoch's step
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    lrs = recipe.epoch_lrs()
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-15)
    closed_form = [0.05 * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)]
    assert lrs == pytest.approx(closed_form, rel=1e-9, abs=1e-12)
    assert lrs[0] == 0.05 and all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert pnorm.Recipe(epochs=0, lr_schedule="cosine", milestones=()).epoch_lrs() == []


@pytest.mark.parametrize("field,value", [
    ("optimizer", "rmsprop"), ("lr_schedule", "linear"), ("epochs", -1), ("batch_size", 0),
    ("lr", 0.0), ("lr", -0.1), ("milestones", (0.0,)), ("milestones", (1.0,)),
    ("milestones", (100, 150)), ("lr", math.nan), ("lr", math.inf), ("momentum", math.nan),
    ("momentum", -0.1), ("weight_decay", math.inf), ("weight_decay", -1e-4), ("lr_gamma", 0.0),
    ("lr_gamma", -0.5), ("lr_gamma", math.nan)])
def test_recipe_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^Recipe\.{field}"):
        pnorm.Recipe(**{field: value})
    with pytest.raises(ValueError, match=rf"^Recipe\.{field}"):
        replace(pnorm.Recipe(), **{field: value})  # replace() checks too


def test_make_optimizer_follows_the_recipe():
    params = [torch.nn.Parameter(torch.zeros(3))]
    sgd = make_optimizer(params, pnorm.Recipe(lr=0.02, momentum=0.8, weight_decay=1e-3))
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.02, 0.8, 1e-3)
    adam = make_optimizer(params, pnorm.Recipe(optimizer="adam", lr=0.001, weight_decay=0.0))
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["lr"] == 0.001


# ------------------------------------------------------------------ image_data


def _uint8(n: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    u[0, 0, 0, 0], u[0, 0, 0, 1] = 0, 255  # both ends of the range
    return u


def test_image_data_passes_uint8_through():
    u = _uint8()
    d = pnorm.image_data(u, [0, 2, 1, 2, 0, 1], name="mine")
    assert isinstance(d, pnorm.ImageData) and d.name == "mine"
    assert d.images.dtype == torch.uint8 and torch.equal(d.images, u)
    assert d.labels.dtype == torch.int64 and d.labels.tolist() == [0, 2, 1, 2, 0, 1]
    assert d.classes == ["0", "1", "2"]  # up to the largest label
    named = pnorm.image_data(u, torch.zeros(6), classes=["cat", "dog"])
    assert named.classes == ["cat", "dog"] and named.labels.dtype == torch.int64


def test_image_data_round_trips_floats_in_0_1():
    u = _uint8()
    d = pnorm.image_data(u.float() / 255, torch.arange(6))
    assert d.images.dtype == torch.uint8 and torch.equal(d.images, u)
    assert torch.equal(pnorm.image_data(u.double() / 255, torch.arange(6)).images, u)


def test_image_data_undoes_a_normalisation_given_its_mean_and_std():
    u = _uint8()
    x = normalize(u, CIFAR_MEAN, CIFAR_STD)  # what a torchvision pipeline would hand over
    d = pnorm.image_data(x, torch.arange(6), mean=CIFAR_MEAN, std=CIFAR_STD)
    assert torch.equal(d.images, u)
    with pytest.raises(ValueError, match="must lie in"):  # normalised, but stats not given
        pnorm.image_data(x, torch.arange(6))
    with pytest.raises(ValueError, match="both mean and std"):
        pnorm.image_data(x, torch.arange(6), mean=CIFAR_MEAN)


@pytest.mark.parametrize("scale,shift", [(2.0, 0.0), (1.0, -0.5), (255.0, 0.0)])
def test_image_data_rejects_floats_outside_0_1(scale, shift):
    x = _uint8().float() / 255 * scale + shift
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        pnorm.image_data(x, torch.arange(6))


def test_image_data_rejects_nan_and_bad_shapes():
    x = _uint8().float() / 255
    x[2, 1, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        pnorm.image_data(x, torch.arange(6))
    x[2, 1, 3, 3] = float("inf")
    with pytest.raises(ValueError, match="infinite"):
        pnorm.image_data(x, torch.arange(6))
    with pytest.raises(ValueError, match="N×C×H×W"):
        pnorm.image_data(torch.zeros(3, 8, 8), [0])
    with pytest.raises(ValueError, match="uint8 or floating point"):
        pnorm.image_data(torch.zeros(1, 3, 8, 8, dtype=torch.int32), [0])


# ------------------------------------------------------------------ releases


def _pan_alexnet() -> torch.nn.Module:
    model = pnorm.AlexNetCIFAR(width=0.125, scheme="pan", seed=3)
    pnorm.key_model(model, torch.Generator().manual_seed(4), message="owner")
    with torch.no_grad():  # move the BatchNorm statistics away from their initial values
        model.train()(torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(5)))
    return model.eval()


def test_a_release_round_trips_and_rebuilds_from_its_own_config(tmp_path):
    model = _pan_alexnet()
    public = pnorm.export_public(model).eval()
    path = pnorm.save_release(public, tmp_path / "release.pt")
    assert path == tmp_path / "release.pt" and path.is_file()
    loaded = pnorm.load_release(path)  # nothing but the file: no config, no class
    assert isinstance(loaded, pnorm.AlexNetCIFAR) and not loaded.training
    assert loaded.config == public.config and loaded.config["scheme"] == "plain"
    assert loaded.state_dict().keys() == public.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                 public.state_dict().values(), strict=True))
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(loaded(x), public(x))
        torch.testing.assert_close(loaded(x), model(x, 0), rtol=1e-5, atol=1e-5)


def test_only_an_exported_model_can_be_released(tmp_path):
    with pytest.raises(ValueError, match="private layers"):
        pnorm.save_release(_pan_alexnet(), tmp_path / "secret.pt")
    assert not (tmp_path / "secret.pt").exists()
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a pnorm release"):
        pnorm.load_release(tmp_path / "other.pt")


# ------------------------------------------------------------------ verification defaults


def test_verify_ownership_uses_the_vaults_statistics_by_default(trained_pan):
    model, vault, splits = trained_pan["model"], trained_pan["vault"], trained_pan["splits"]
    assert vault.data_stats == {"mean": list(splits.mean), "std": list(splits.std)}
    public = pnorm.export_public(model)
    default = pnorm.verify_ownership(public, vault, splits.test)
    explicit = pnorm.verify_ownership(public, vault, splits.test, splits.mean, splits.std)
    assert default.to_dict() == explicit.to_dict()
    # The statistics matter: other ones give another report (so the default is not ignored).
    other = pnorm.verify_ownership(public, vault, splits.test, (0.0,) * 3, (1.0,) * 3)
    assert other.to_dict() != default.to_dict()


def test_verify_ownership_refuses_an_empty_test_set(trained_pan):
    vault, splits = trained_pan["vault"], trained_pan["splits"]
    empty = splits.test.subset(torch.zeros(0, dtype=torch.long))
    assert len(empty) == 0
    with pytest.raises(ValueError, match="at least 100 samples"):
        pnorm.verify_ownership(pnorm.export_public(trained_pan["model"]), vault, empty)


# ------------------------------------------------------------------ presets


def test_presets_set_the_same_fields_and_differ_in_every_switch():
    assert set(pnorm.PRESETS) == {"faithful", "clean"}
    names = {f.name for f in fields(Preset)}
    for key, preset in pnorm.PRESETS.items():
        assert isinstance(preset, Preset) and preset.name == key
        assert set(asdict(preset)) == names
        assert all(v is not None for v in asdict(preset).values())
        assert get_preset(key) is preset
    faithful, clean = asdict(pnorm.PRESETS["faithful"]), asdict(pnorm.PRESETS["clean"])
    # faithful keeps every quirk of the original, clean fixes every one
    assert [k for k in names - {"name"} if faithful[k] == clean[k]] == []
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        get_preset("nope")


# ------------------------------------------------------------------ the README's path


def test_the_owner_path_through_import_pnorm_alone(tmp_path):
    splits = pnorm.synthetic_splits(n_train=64, n_val=32, n_test=128, seed=0)
    trigger = pnorm.abstract_trigger_set(8, num_classes=10, seed=1)
    model = pnorm.AlexNetCIFAR(num_classes=10, width=0.125, scheme="pan",
                               passport_layers=["conv3", "conv4", "conv5"])
    key = torch.Generator().manual_seed(12345)
    pnorm.key_model(model, key, message="© me")
    config = pnorm.TrainConfig(recipe=pnorm.Recipe(epochs=1, lr=0.02, batch_size=32),
                               eval_batch_size=64)
    result = pnorm.train(model, splits, config, trigger, progress=False)
    assert isinstance(result, pnorm.TrainResult) and len(result.history) == 1
    model = result.model.eval()
    assert list(pnorm.passport_layers(model)) == ["conv3", "conv4", "conv5"]

    public = pnorm.export_public(model)
    assert not pnorm.passport_layers(public)
    pnorm.save_release(public, tmp_path / "release.pt")
    vault = pnorm.Vault.from_model(model, trigger.images, trigger.labels, public_model=public,
                                   message="© me",
                                   data_stats={"mean": list(splits.mean),
                                               "std": list(splits.std)})
    vault.save(tmp_path / "vault.pt")

    suspect = pnorm.load_release(tmp_path / "release.pt")
    kept = pnorm.Vault.load(tmp_path / "vault.pt")
    assert pnorm.bits_to_text(kept.signature, len("© me".encode())) == "© me"
    report = pnorm.verify_ownership(suspect, kept, splits.test)
    assert isinstance(report, pnorm.OwnershipReport)
    acc0, acc1 = pnorm.evaluate(model, splits.test, splits.mean, splits.std, "both")
    assert (report.branch0_accuracy, report.branch1_accuracy) == (acc0, acc1)
    assert report.detection == pnorm.signature_detection(model)
    assert report.trigger_accuracy is not None and report.rows()[-1]["quantity"].startswith(
        "decision")
