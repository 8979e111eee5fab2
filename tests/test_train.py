"""Training: exact resume after an interruption, checkpoint safety, seeds, schedules, selection,
and the refusals: bad configs, inputs the model cannot learn, divergence."""

import math
import shutil
from dataclasses import replace

import pytest
import torch

import pnorm.training
from pnorm.alexnet import AlexNetCIFAR
from pnorm.images import ImageData
from pnorm.passport import key_model
from pnorm.pointnet import PointNetCls
from pnorm.recipes import Recipe
from pnorm.synthetic_images import abstract_trigger_set, synthetic_splits
from pnorm.synthetic_points import synthetic_point_splits
from pnorm.training import (
    TrainConfig,
    TrainingDivergedError,
    amp_dtype,
    config_for,
    train,
    training_step,
)
from pnorm.units import passport_layers

CFG = TrainConfig(recipe=Recipe(epochs=3, batch_size=32, lr=0.02, milestones=(2 / 3,)),
                  triggers_per_batch=2, select="last", eval_batch_size=64)
N_TRAIN = 64  # two steps per epoch


def _with(config: TrainConfig, **recipe_fields) -> TrainConfig:
    """``config`` with some of its recipe's fields replaced (epochs, lr, milestones, …)."""
    return replace(config, recipe=replace(config.recipe, **recipe_fields))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _fresh(scheme: str = "pan") -> AlexNetCIFAR:
    model = AlexNetCIFAR(width=0.125, scheme=scheme, seed=0)
    if scheme != "plain":
        key_model(model, _gen(1))
    return model


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _without_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in rec.items() if k != "train_seconds"} for rec in history]


@pytest.fixture(scope="module")
def data():
    return synthetic_splits(N_TRAIN, 32, 32, seed=0), abstract_trigger_set(6)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted 3-epoch run with a checkpoint."""
    splits, trigger = data
    path = tmp_path_factory.mktemp("ref") / "checkpoint.pt"
    result = train(_fresh(), splits, CFG, trigger, checkpoint=path, progress=False)
    return result, path


@pytest.fixture()
def step_log(monkeypatch):
    """Record the batch size of every training step that ``train`` takes."""
    sizes: list[int] = []
    real = pnorm.training.training_step

    def counting(model, x, y, *args, **kwargs):
        sizes.append(int(x.shape[0]))
        return real(model, x, y, *args, **kwargs)

    monkeypatch.setattr(pnorm.training, "training_step", counting)
    return sizes


def test_reference_run_history(reference):
    result, path = reference
    assert [r["epoch"] for r in result.history] == [0, 1, 2]
    assert [r["lr"] for r in result.history] == pytest.approx([0.02, 0.02, 0.002])
    assert result.selected_epoch == 2
    for rec in result.history:
        assert rec["loss0"] > 0 and rec["loss1"] > 0 and rec["sign"] > 0
        assert 0 <= rec["val_acc0"] <= 1 and 0 <= rec["val_acc1"] <= 1
        assert 0 <= rec["detection"] <= 1
    assert path.exists()


def test_resume_after_an_interruption_is_exact(data, reference, tmp_path, monkeypatch, step_log):
    splits, trigger = data
    ref_result, ref_path = reference
    path = tmp_path / "checkpoint.pt"
    real_save = pnorm.training.atomic_torch_save

    def save_then_crash(obj, p):
        real_save(obj, p)
        if obj["epoch"] == 1:  # the second checkpoint is on disk: the session dies now
            raise KeyboardInterrupt

    monkeypatch.setattr(pnorm.training, "atomic_torch_save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(_fresh(), splits, CFG, trigger, checkpoint=path, progress=False)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert len(step_log) == 4
    monkeypatch.setattr(pnorm.training, "atomic_torch_save", real_save)

    step_log.clear()
    resumed = train(_fresh(), splits, CFG, trigger, checkpoint=path, progress=False)
    assert len(step_log) == 2  # only the last epoch was trained again
    assert step_log == [32 + 2, 32 + 2]  # clean batch plus two trigger images
    assert _same_weights(resumed.model, ref_result.model)
    assert _without_time(resumed.history) == _without_time(ref_result.history)
    assert resumed.selected_epoch == ref_result.selected_epoch
    final = torch.load(path, weights_only=True)
    ref_final = torch.load(ref_path, weights_only=True)
    assert final["epoch"] == 2
    assert all(torch.equal(final["model"][k], v) for k, v in ref_final["model"].items())


def test_a_finished_checkpoint_trains_nothing_more(data, reference, tmp_path, step_log):
    splits, trigger = data
    ref_result, ref_path = reference
    path = tmp_path / "checkpoint.pt"
    shutil.copy(ref_path, path)
    again = train(_fresh(), splits, CFG, trigger, checkpoint=path, progress=False)
    assert step_log == []
    assert _same_weights(again.model, ref_result.model)
    assert _without_time(again.history) == _without_time(ref_result.history)


def test_same_seed_same_result_other_seed_other_result(data, reference):
    splits, trigger = data
    ref_result, _ = reference
    one = _with(CFG, epochs=1)
    a = train(_fresh(), splits, one, trigger, progress=False)  # and without a checkpoint
    b = train(_fresh(), splits, one, trigger, progress=False)
    assert _same_weights(a.model, b.model)
    assert _without_time(a.history) == _without_time(b.history)
    # Epoch 0 does not depend on the number of epochs: it is the reference run's epoch 0.
    assert _without_time(a.history) == _without_time(ref_result.history[:1])
    other = train(_fresh(), splits, replace(one, seed=1), trigger, progress=False)
    assert not _same_weights(other.model, a.model)
    assert other.history[0]["loss0"] != a.history[0]["loss0"]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_checkpoint_is_moved_aside_and_training_starts_afresh(
    data, reference, tmp_path, damage, step_log
):
    splits, trigger = data
    ref_result, ref_path = reference
    path = tmp_path / "checkpoint.pt"
    bad = b"\x00garbage\xff" * 50 if damage == "garbage" else ref_path.read_bytes()[:3000]
    path.write_bytes(bad)
    one = _with(CFG, epochs=1)
    with pytest.warns(UserWarning, match="unreadable"):
        result = train(_fresh(), splits, one, trigger, checkpoint=path, progress=False)
    aside = tmp_path / "checkpoint.pt.corrupt"
    assert aside.read_bytes() == bad
    assert len(step_log) == 2  # the epoch was trained from scratch ...
    assert _without_time(result.history) == _without_time(ref_result.history[:1])  # ... exactly
    ckpt = torch.load(path, weights_only=True)  # and the checkpoint is sound again
    assert ckpt["epoch"] == 0 and ckpt["config"]["recipe"]["epochs"] == 1


def test_a_checkpoint_of_another_config_is_refused(data, reference, tmp_path):
    splits, trigger = data
    _, ref_path = reference
    path = tmp_path / "checkpoint.pt"
    shutil.copy(ref_path, path)
    with pytest.raises(ValueError, match="another training configuration"):
        train(_fresh(), splits, _with(CFG, lr=0.05), trigger, checkpoint=path, progress=False)
    assert path.read_bytes() == ref_path.read_bytes()  # left alone, not overwritten


def test_checkpoint_loads_with_weights_only(reference):
    result, path = reference
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) >= {"epoch", "model", "optimizer", "history", "best", "config"}
    assert ckpt["epoch"] == 2
    recipe = ckpt["config"]["recipe"]
    assert recipe["lr"] == CFG.recipe.lr and recipe["milestones"] == [2 / 3]
    assert _without_time(ckpt["history"]) == _without_time(result.history)
    state = result.model.state_dict()
    assert all(torch.equal(ckpt["model"][k], v) for k, v in state.items())
    assert ckpt["optimizer"]["state"]  # momentum buffers are saved for an exact resume


def test_alternating_schedule_trains_branch1_every_other_step():
    model = _fresh()
    cfg = TrainConfig(schedule="alternating", alternate_every=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = _gen(0)
    for step in range(4):
        x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
        losses = training_step(model, x, y, opt, cfg, step=step)
        assert losses["loss0"] > 0
        if step % 2 == 0:
            assert losses["loss1"] == 0 and losses["sign"] == 0
            assert model.conv2.mlp[0].weight.grad is None  # branch 1 not run at all
        else:
            assert losses["loss1"] > 0 and losses["sign"] > 0
            assert model.conv2.mlp[0].weight.grad.abs().sum() > 0
    summed = TrainConfig()
    for step in range(2):
        x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
        assert training_step(model, x, y, opt, summed, step=step)["loss1"] > 0


def test_a_plain_model_trains_with_branch0_only(data):
    splits, trigger = data
    model = _fresh("plain")
    before = model.conv2.conv.weight.detach().clone()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = training_step(model, x, y, opt, TrainConfig(), step=1)
    assert losses["loss0"] > 0 and losses["loss1"] == 0 and losses["sign"] == 0
    result = train(model, splits, _with(CFG, epochs=1), trigger, progress=False)
    rec = result.history[0]
    assert rec["loss1"] == 0 and rec["sign"] == 0 and rec["val_acc1"] is None
    assert "detection" not in rec
    assert not torch.equal(model.conv2.conv.weight, before)


def test_select_val_keeps_the_best_validation_epoch(data):
    splits, trigger = data
    cfg = replace(_with(CFG, epochs=3, milestones=()), select="val")
    result = train(_fresh(), splits, cfg, trigger, progress=False)
    scores = [(r["val_acc0"] + r["val_acc1"]) / 2 for r in result.history]
    best = max(scores)
    assert scores[result.selected_epoch] == best
    assert result.selected_epoch == max(i for i, s in enumerate(scores) if s == best)  # ties: later
    assert all("test_acc0" not in r for r in result.history)  # the test split is not looked at
    # The returned weights are those of the selected epoch: an identical run stopped there.
    stopped = train(_fresh(), splits, replace(_with(cfg, epochs=result.selected_epoch + 1),
                                              select="last"), trigger, progress=False)
    assert _same_weights(result.model, stopped.model)


def test_select_test_is_the_faithful_preset(data):
    splits, trigger = data
    cfg = config_for("faithful", recipe=Recipe(epochs=1, batch_size=32, milestones=()),
                     eval_batch_size=64)
    assert cfg.select == "test"
    rec = train(_fresh(), splits, cfg, trigger, progress=False).history[0]
    assert 0 <= rec["test_acc0"] <= 1 and 0 <= rec["test_acc1"] <= 1


def test_config_for_presets_and_overrides():
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        config_for("nope")
    clean = config_for("clean", recipe=Recipe(epochs=2, lr=0.5))
    assert clean.select == "val" and clean.recipe.epochs == 2 and clean.recipe.lr == 0.5
    assert clean.amp is None  # automatic: autocast allowed on CUDA
    faithful = config_for("faithful")
    assert faithful.select == "test" and faithful.amp == "off"
    assert amp_dtype(faithful, "cuda") is None  # float32 everywhere, as the original
    assert replace(faithful, select="last", amp=None) == TrainConfig()  # nothing else changes
    with pytest.raises(TypeError, match="no_such_option"):
        config_for("clean", no_such_option=1)


def test_sign_weight_zero_drops_only_the_sign_loss():
    """The ablation knob removes the sign loss and nothing else from the objective."""
    base = AlexNetCIFAR(width=0.125, scheme="pan", seed=2)
    key_model(base, torch.Generator().manual_seed(3))
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    results = {}
    for weight in (1.0, 0.0):
        model = AlexNetCIFAR(width=0.125, scheme="pan", seed=2)
        model.load_state_dict(base.state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        results[weight] = training_step(model, x, y, opt, TrainConfig(sign_weight=weight))
    assert results[1.0]["sign"] > 0 and results[0.0]["sign"] == 0
    torch.testing.assert_close(results[1.0]["loss0"], results[0.0]["loss0"])
    torch.testing.assert_close(results[1.0]["loss1"], results[0.0]["loss1"])


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("field,value", [
    ("schedule", "both"), ("select", "best"), ("amp", "fp8"), ("amp", True),
    ("alternate_every", 0), ("triggers_per_batch", -1), ("eval_batch_size", 0),
    ("seed", 1.5), ("sign_weight", math.nan), ("sign_weight", math.inf), ("sign_weight", -1.0),
    ("channels_last", "yes"), ("compile", 1), ("batched", None)])
def test_train_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^TrainConfig\.{field} must be") as info:
        TrainConfig(**{field: value})
    assert repr(value) in str(info.value)
    with pytest.raises(ValueError, match=rf"^TrainConfig\.{field}"):
        replace(TrainConfig(), **{field: value})  # replace() checks too
    with pytest.raises(ValueError, match=rf"^TrainConfig\.{field}"):
        config_for("clean", **{field: value})


def test_train_config_names_the_allowed_values_and_wants_a_recipe():
    with pytest.raises(ValueError, match=r"\('summed', 'alternating'\)"):
        TrainConfig(schedule="both")
    with pytest.raises(ValueError, match=r"\(None, 'bf16', 'fp16', 'off'\)"):
        TrainConfig(amp="fp8")
    with pytest.raises(TypeError, match="TrainConfig.recipe must be a pnorm Recipe, got dict"):
        TrainConfig(recipe={"epochs": 3})


def test_a_diverging_run_stops_before_anything_is_saved(data, tmp_path):
    splits, trigger = data
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(TrainingDivergedError, match=r"epoch 1 of 3, after step 2 of 2") as info:
        train(_fresh(), splits, _with(CFG, lr=1e6), trigger, checkpoint=path, progress=False)
    assert isinstance(info.value, FloatingPointError)
    assert "lower the learning rate (recipe.lr=1e+06)" in str(info.value)
    assert not path.exists()  # no non-finite model was written


def test_divergence_names_the_first_step_with_a_bad_loss(data, tmp_path, monkeypatch):
    """A passport turned NaN in epoch 2, step 2: the loss of that step is the first bad one."""
    splits, trigger = data
    path = tmp_path / "checkpoint.pt"
    real, calls = pnorm.training.training_step, []

    def poison_then_step(model, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            next(iter(passport_layers(model).values())).passport_gamma[0, 0] = math.nan
        return real(model, *args, **kwargs)

    monkeypatch.setattr(pnorm.training, "training_step", poison_then_step)
    with pytest.raises(TrainingDivergedError, match=r"epoch 2 of 3, step 2 of 2: the losses "
                                                    r"are \{'loss0': [0-9.]+, 'loss1': nan"):
        train(_fresh(), splits, CFG, trigger, checkpoint=path, progress=False)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["epoch"] == 0  # the last sound epoch; the bad one was never written
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_a_nan_passport_is_refused_before_training(data, step_log):
    splits, trigger = data
    model = _fresh()
    model.conv3.passport_gamma[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"conv3\.passport_gamma holds NaN.*key_model"):
        train(model, splits, CFG, trigger, progress=False)
    assert step_log == []


def test_a_batch_larger_than_the_training_set_is_refused(data, step_log):
    splits, trigger = data
    with pytest.raises(ValueError, match=rf"batch size 65 .* training set \({N_TRAIN} samples\)"):
        train(_fresh(), splits, _with(CFG, batch_size=N_TRAIN + 1), trigger, progress=False)
    assert step_log == []


def _relabelled(data: ImageData, label: int) -> ImageData:
    labels = data.labels.clone()
    labels[-1] = label
    return ImageData(data.images, labels, data.classes, data.name)


@pytest.mark.parametrize("where", ["train", "val", "trigger"])
def test_labels_beyond_the_model_classes_are_refused(data, step_log, where):
    splits, trigger = data
    if where == "trigger":
        trigger = _relabelled(trigger, 10)
    else:
        splits = replace(splits, **{where: _relabelled(getattr(splits, where), 10)})
    with pytest.raises(ValueError, match=r"largest \w+ label is 10, but the model has 10 classes"):
        train(_fresh(), splits, CFG, trigger, progress=False)
    assert step_log == []


def test_the_class_count_comes_from_the_last_linear_without_a_config(data):
    splits, trigger = data
    model = AlexNetCIFAR(width=0.125, scheme="plain", num_classes=5, seed=0)
    del model.config
    with pytest.raises(ValueError, match=r"largest training label is 9, but the model has 5"):
        train(model, splits, CFG, trigger, progress=False)


def test_non_finite_point_clouds_are_refused(step_log):
    splits = synthetic_point_splits(32, 16, 16, 32, seed=0)
    splits.train.points[3, 1, 7] = math.inf  # changed after PointData checked it
    model = PointNetCls(splits.num_classes, width=1 / 16, scheme="plain", num_points=32, seed=0)
    cfg = TrainConfig(recipe=Recipe(epochs=1, batch_size=16, optimizer="adam", lr=1e-3))
    with pytest.raises(ValueError, match="training inputs hold NaN or infinite values"):
        train(model, splits, cfg, progress=False)
    assert step_log == []


def test_a_checkpoint_resumes_only_into_its_own_model(data, tmp_path, step_log):
    """Same config, same path, other passports: refused; the model it was written for resumes."""
    splits, trigger = data
    one = _with(CFG, epochs=1)
    path = tmp_path / "checkpoint.pt"
    first = train(_fresh(), splits, one, trigger, checkpoint=path, progress=False)
    saved = path.read_bytes()
    other = AlexNetCIFAR(width=0.125, scheme="pan", seed=0)
    key_model(other, _gen(2))
    step_log.clear()
    with pytest.raises(ValueError, match=rf"checkpoint {path} was written for another model.*"
                                         r"delete it or use another checkpoint path"):
        train(other, splits, one, trigger, checkpoint=path, progress=False)
    assert path.read_bytes() == saved and step_log == []
    again = train(_fresh(), splits, one, trigger, checkpoint=path, progress=False)
    assert step_log == [] and _same_weights(again.model, first.model)
