"""The fast training path computes what the reference path computes.

On-device epoch plans replay the per-step draws exactly; ``channels_last`` gives the same loss
and gradients; autocast changes only the cross-entropy terms, within bf16 precision.
"""

import copy
from dataclasses import replace

import pytest
import torch

from pnorm.alexnet import AlexNetCIFAR
from pnorm.images import augment_crop_flip, crop_flip
from pnorm.passport import key_model
from pnorm.recipes import Recipe
from pnorm.resnet import ResNet18CIFAR
from pnorm.synthetic_images import abstract_trigger_set, synthetic_splits
from pnorm.training import (
    TrainConfig,
    _epoch_plan,
    amp_dtype,
    train,
    training_step,
    uses_channels_last,
)


def _keyed(arch: str) -> torch.nn.Module:
    if arch == "alexnet":
        model = AlexNetCIFAR(width=0.125, seed=3)
    else:
        model = ResNet18CIFAR(width=0.125, variant=arch.split("-")[1], seed=3)
    key_model(model, torch.Generator().manual_seed(4))
    return model.train()


def test_epoch_plan_replays_the_per_step_reference_draws():
    """The whole-epoch plan gives the batches, crops, flips and triggers of the per-step loop."""
    cfg = TrainConfig(recipe=Recipe(batch_size=16), triggers_per_batch=3, seed=5)
    images = torch.randint(0, 256, (70, 3, 32, 32), dtype=torch.uint8)
    n_trig = 7

    def gens():
        return torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)

    g_order, g_aug = gens()
    plan = _epoch_plan(len(images), cfg, True, n_trig, g_order, g_aug, torch.device("cpu"))
    g_order, g_aug = gens()  # the reference: draws made step by step, as the original loop did
    trig_order = torch.randperm(n_trig, generator=g_order)
    order = torch.randperm(len(images), generator=g_order)
    bs = cfg.recipe.batch_size
    steps = len(images) // bs
    assert plan["idx"].shape == (steps, bs)
    for s in range(steps):
        idx = order[s * bs : (s + 1) * bs]
        assert torch.equal(plan["idx"][s], idx)
        expected = augment_crop_flip(images[idx], g_aug)
        got = crop_flip(images[idx], plan["oy"][s], plan["ox"][s], plan["flip"][s])
        assert torch.equal(got, expected)
        pos = (s * cfg.triggers_per_batch + torch.arange(cfg.triggers_per_batch)) % n_trig
        assert torch.equal(plan["trig"][s], trig_order[pos])


def test_automatic_speed_knobs_are_off_on_the_cpu():
    cfg = TrainConfig()
    assert amp_dtype(cfg, "cpu") is None and not uses_channels_last(cfg, "cpu")
    assert amp_dtype(replace(cfg, amp="bf16"), "cpu") == torch.bfloat16
    assert amp_dtype(replace(cfg, amp="off"), "cuda") is None
    assert uses_channels_last(replace(cfg, channels_last=True), "cpu")
    with pytest.raises(ValueError, match="amp must be"):
        amp_dtype(replace(cfg, amp="fp8"), "cpu")


@pytest.mark.parametrize("concat", [False, True], ids=["split", "concat"])
@pytest.mark.parametrize("arch", ["alexnet", "resnet-faithful", "resnet-standard"])
def test_channels_last_step_equals_the_reference_step(arch, concat):
    """NHWC activations and weights: same losses, gradients and updated weights as NCHW.

    ``concat`` runs the branches as one batch, as on CUDA. In float64, so that no rounding
    difference can flip a ReLU and hide a real difference.
    """
    ref = _keyed(arch).double()
    fast = copy.deepcopy(ref).to(memory_format=torch.channels_last)
    fast.batch_branches = concat
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (8,), generator=g)
    cfg = TrainConfig(recipe=Recipe(lr=0.05))
    results = []
    for model, inp in ((ref, x), (fast, x.contiguous(memory_format=torch.channels_last))):
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        results.append(training_step(model, inp, y, opt, cfg))
    assert fast.classifier.weight.is_contiguous()  # the classifier input is a flat vector
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-10, atol=1e-12)
    for (name, pa), pb in zip(ref.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-9, atol=1e-12, msg=name)
        torch.testing.assert_close(pa, pb, rtol=1e-10, atol=1e-12, msg=name)
    for (name, ba), bb in zip(ref.named_buffers(), fast.buffers(), strict=True):
        torch.testing.assert_close(ba, bb, rtol=1e-10, atol=1e-12, msg=name)


def test_bf16_autocast_changes_only_the_cross_entropy_within_its_precision():
    ref = _keyed("alexnet")
    amp = copy.deepcopy(ref)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
    out = []
    for model, cfg in ((ref, TrainConfig()), (amp, TrainConfig(amp="bf16"))):
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        out.append(training_step(model, x, y, opt, cfg))
    assert torch.equal(out[0]["sign"], out[1]["sign"])  # the sign loss stays in float32
    assert out[1]["sign"].dtype == torch.float32
    for k in ("loss0", "loss1"):
        torch.testing.assert_close(out[1][k].float(), out[0][k], rtol=0.05, atol=0.05)
    g_ref = ref.conv3.conv.weight.grad
    g_amp = amp.conv3.conv.weight.grad
    assert g_amp.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(g_ref.flatten(), g_amp.flatten(), dim=0) > 0.95


def test_train_with_channels_last_matches_the_reference_run():
    """A whole (short) run with the fast layout tracks the reference run's history.

    Float32 rounding differs between the layouts and SGD amplifies it, hence loose tolerances;
    a wrong layout would give unrelated numbers.
    """
    splits, trigger = synthetic_splits(96, 32, 32, seed=0), abstract_trigger_set(6)
    cfg = TrainConfig(recipe=Recipe(epochs=2, batch_size=32, lr=0.02, milestones=(1 / 2,)),
                      select="last", eval_batch_size=64)
    runs = [
        train(_keyed("alexnet"), splits, replace(cfg, channels_last=cl), trigger, progress=False)
        for cl in (False, True)
    ]
    for a, b in zip(runs[0].history, runs[1].history, strict=True):
        for k in ("loss0", "loss1", "sign"):
            assert a[k] == pytest.approx(b[k], rel=1e-2)
        assert a["val_acc0"] == pytest.approx(b["val_acc0"], abs=2 / 32 + 1e-9)
    conv = runs[1].model.conv1.conv.weight
    assert conv.is_contiguous() and not conv.is_contiguous(memory_format=torch.channels_last)
