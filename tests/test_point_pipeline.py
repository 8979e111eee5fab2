"""Point clouds end to end: training (resume, regulariser), evaluation, cache, and the attacks.

The same functions that chapters 02-06 run on AlexNet must run on PointNet (chapter 07);
everything here uses a tiny PointNet (width 1/16, 64 points) so it runs in seconds.
"""

from dataclasses import replace

import pytest
import torch

import pnorm.training
from pnorm.attacks import fine_tune, finetune_config, pruning_sweep
from pnorm.batches import trigger_data
from pnorm.fileio import state_sha256
from pnorm.forgery import THREAT_MODELS, forge_passports, threat_model
from pnorm.model_cache import train_or_load
from pnorm.passport import key_model
from pnorm.pointnet import PointNetCls
from pnorm.profiles import PROFILES, PointScale
from pnorm.recipes import Recipe, make_optimizer
from pnorm.synthetic_points import point_trigger_set, synthetic_point_splits
from pnorm.training import TrainConfig, train
from pnorm.verify import evaluate, verify_ownership

POINTS = 64
CFG = TrainConfig(recipe=Recipe(epochs=3, batch_size=16, optimizer="adam", lr=0.003,
                                weight_decay=1e-4, milestones=(2 / 3,), lr_gamma=0.5),
                  triggers_per_batch=4, select="last", eval_batch_size=64)
SCALE = PointScale(width=1 / 16, n_points=POINTS, n_train=96, n_val=32, n_test=128,
                   train=Recipe(epochs=4, batch_size=16, optimizer="adam", lr=0.003,
                                weight_decay=1e-4, milestones=(3 / 4,), lr_gamma=0.5),
                   n_triggers=12, triggers_per_batch=4,
                   finetune=replace(PointScale().finetune, epochs=1, lr=0.003),
                   forge=replace(PointScale().forge, epochs=1), forge_data_fraction=0.5)
PROFILE = replace(PROFILES["smoke"], points=SCALE, eval_batch_size=64)


def _fresh(scheme: str = "pan") -> PointNetCls:
    model = PointNetCls(10, width=1 / 16, scheme=scheme, num_points=POINTS, seed=0)
    if scheme != "plain":
        key_model(model, torch.Generator().manual_seed(1), "owner")
    return model


def _vault_digest(vault) -> str:
    return state_sha256({f"{name}.{key}": t for name, entry in vault.layers.items()
                         for key, t in entry["tensors"].items()})


@pytest.fixture(scope="module")
def data():
    splits = synthetic_point_splits(48, 16, 32, POINTS, seed=0)
    return splits, point_trigger_set(8, 10, POINTS, seed=1)


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    """A tiny PAN PointNet trained through the model cache, as chapter 07 gets it."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PNORM_CACHE", str(tmp_path_factory.mktemp("cache")))
    splits = synthetic_point_splits(SCALE.n_train, SCALE.n_val, SCALE.n_test, POINTS, seed=0)
    trigger = point_trigger_set(SCALE.n_triggers, 10, POINTS, seed=1)
    trained = train_or_load("pan", PROFILE, splits, trigger, preset="clean", message="owner",
                            progress=False, arch="pointnet")
    yield trained, splits
    mp.undo()


def test_training_adds_the_regulariser_and_resumes_exactly(data, tmp_path, monkeypatch):
    splits, trigger = data
    reference = train(_fresh(), splits, CFG, trigger, progress=False)
    assert len(reference.history) == 3 and reference.history[-1]["detection"] > 0.5
    # The loss includes the feature-transform penalty: with it switched off, numbers change.
    monkeypatch.setattr(PointNetCls, "transform_penalty", lambda self, t: 0.0 * t.sum())
    without = train(_fresh(), splits, replace(CFG, recipe=replace(CFG.recipe, epochs=1)),
                    trigger, progress=False)
    assert without.history[0]["loss0"] != reference.history[0]["loss0"]
    monkeypatch.undo()

    path, real_save = tmp_path / "ckpt.pt", pnorm.training.atomic_torch_save

    def save_then_crash(obj, p):
        real_save(obj, p)
        if obj["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(pnorm.training, "atomic_torch_save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(_fresh(), splits, CFG, trigger, checkpoint=path, progress=False)
    monkeypatch.setattr(pnorm.training, "atomic_torch_save", real_save)
    resumed = train(_fresh(), splits, CFG, trigger, checkpoint=path, progress=False)
    for a, b in zip(resumed.model.state_dict().values(), reference.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)  # dropout and augmentation replay exactly


def test_adam_is_used_and_a_bad_optimizer_is_named():
    assert isinstance(make_optimizer(_fresh().parameters(), CFG.recipe), torch.optim.Adam)
    with pytest.raises(ValueError, match=r"Recipe\.optimizer must be one of \('sgd', 'adam'\)"):
        replace(CFG.recipe, optimizer="lbfgs")


def test_evaluate_takes_point_data_without_normalisation_constants(data):
    splits, _ = data
    model = _fresh().eval()
    acc0, acc1 = evaluate(model, splits.test, None, None, "both", batch_size=10)
    with torch.no_grad():
        logits0, logits1 = model(splits.test.points, "both")
    assert acc0 == (logits0.argmax(1) == splits.test.labels).float().mean().item()
    assert acc1 == (logits1.argmax(1) == splits.test.labels).float().mean().item()


def test_model_cache_trains_a_pointnet_and_its_vault_verifies_it(owner):
    trained, splits = owner
    assert trained.record["model"]["arch"] == "pointnet"
    assert trained.record["train"]["recipe"]["optimizer"] == "adam"
    assert trained.record["mean"] is None and trained.vault.data_stats == {}
    assert set(trained.vault.layers) == {"convp1", "convp2", "convp3", "p1", "p2", "p3"}
    trigger = trigger_data(trained.vault)
    assert trigger.points.shape == (SCALE.n_triggers, 3, POINTS)
    report = verify_ownership(trained.public, trained.vault, splits.test, None, None,
                              n_forged=2, batch_size=64)
    acc0, acc1 = evaluate(trained.model, splits.test, None, None, "both", 64)
    assert (report.branch0_accuracy, report.branch1_accuracy) == (acc0, acc1)
    assert report.trigger_accuracy is not None and len(report.forged) == 2


def test_fine_tuning_replaces_p3_and_reads_the_other_five_layers(owner):
    trained, _ = owner
    vault_hash = _vault_digest(trained.vault)
    new_task = synthetic_point_splits(64, 16, 32, POINTS, seed=3, task="objects")
    config = finetune_config("clean", recipe=Recipe(epochs=1, lr=0.003, optimizer="adam",
                                                    batch_size=16, weight_decay=1e-4,
                                                    milestones=()))
    model, records = fine_tune(trained.public, trained.vault, new_task, config, progress=False)
    assert [r["epoch"] for r in records] == [0, 1]
    bits_without_head = sum(e["tensors"]["signature"].numel()
                            for n, e in trained.vault.layers.items() if n != "p3")
    assert all(r["bits"] == bits_without_head for r in records)
    assert records[0]["weight_change"] == 0.0 and records[1]["weight_change"] > 0
    assert model.p3.conv.out_features == 10 and "new_task_acc" in records[1]
    assert 0 <= records[1]["trigger_acc"] <= 1
    assert _vault_digest(trained.vault) == vault_hash


@pytest.mark.parametrize("preset", ["clean", "faithful"])
def test_pruning_sweep_runs_on_pointnet(owner, preset):
    trained, splits = owner
    records = pruning_sweep(trained.model, trained.public, trained.vault, splits.test, None,
                            None, ratios=(0.0, 1.0), preset=preset, batch_size=64,
                            progress=False)
    start, end = records
    acc0, acc1 = evaluate(trained.model, splits.test, None, None, "both", 64)
    assert start["pruned_fraction"] == 0.0 and (start["acc0"], start["acc1"]) == (acc0, acc1)
    assert end["pruned_fraction"] == 1.0 and end["detection"] <= 0.5


def test_forgery_runs_on_pointnet(owner):
    trained, splits = owner
    recipe = replace(THREAT_MODELS["original-attack-2"].recipe, epochs=1, batch_size=16)
    threat = threat_model("original-attack-2", data_fraction=0.5, flip=0.5, recipe=recipe)
    _, records = forge_passports(trained.public, trained.vault, splits.train, splits.test,
                                 None, None, threat, seed=0, eval_batch_size=64,
                                 reference_accuracy=0.5, progress=False)
    assert [r["epoch"] for r in records] == [0, 1]
    assert 0.45 <= records[0]["claimed_differs"] <= 0.55
    assert "forgery_passes" in records[-1]
