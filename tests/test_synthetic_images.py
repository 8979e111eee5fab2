"""Tests of pnorm.synthetic_images: the offline stand-ins and the abstract trigger set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import linear_probe_accuracy

from pnorm import synthetic_images as synthetic
from pnorm.synthetic_images import abstract_trigger_set, synthetic_images, synthetic_splits

# ------------------------------------------------------------------ synthetic data


@pytest.mark.parametrize("task", ["shapes", "textures"])
def test_synthetic_images_shape_dtype_balance(task: str) -> None:
    d = synthetic_images(203, seed=3, task=task)
    assert d.images.shape == (203, 3, 32, 32) and d.images.dtype == torch.uint8
    assert d.labels.dtype == torch.int64 and len(d) == 203
    assert len(d.classes) == 10 and all(isinstance(c, str) for c in d.classes)
    counts = torch.bincount(d.labels, minlength=10)
    assert counts.max() - counts.min() <= 1  # balanced up to the remainder
    assert d.images.min() < 30 and d.images.max() > 225  # uses the pixel range
    per_image_std = d.images.float().flatten(1).std(1)
    assert (per_image_std > 5).all()  # no blank images
    assert d.name == f"synthetic-{task}"


def test_synthetic_images_deterministic_and_seed_dependent() -> None:
    threads = torch.get_num_threads()
    a, b = synthetic_images(64, seed=7), synthetic_images(64, seed=7)
    assert torch.get_num_threads() == threads  # rendering runs on one thread, then restores
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    c = synthetic_images(64, seed=8)
    assert not torch.equal(a.images, c.images)
    t = synthetic_images(64, seed=7, task="textures")
    assert not torch.equal(a.images, t.images) and t.classes != a.classes
    with pytest.raises(ValueError, match="unknown synthetic task"):
        synthetic_images(4, seed=0, task="clouds")
    assert len(synthetic_images(0, seed=0)) == 0
    with pytest.raises(TypeError):  # difficulty is edited in the source, never at run time
        synthetic.SHAPES_NUISANCE["noise"] = 0.0  # type: ignore[index]


def test_synthetic_splits_are_independent_and_measured() -> None:
    sp = synthetic_splits(120, 30, 50, seed=1)
    assert (len(sp.train), len(sp.val), len(sp.test)) == (120, 30, 50)
    assert sp.source == "synthetic" and sp.num_classes == 10
    assert [sp.train.name, sp.val.name, sp.test.name] == [
        "synthetic-shapes/train", "synthetic-shapes/val", "synthetic-shapes/test"]
    # splits come from different seeds: no image is shared between train and test
    flat_train = {bytes(x.numpy()) for x in sp.train.images}
    assert not any(bytes(x.numpy()) in flat_train for x in sp.test.images)
    x = sp.train.images.double() / 255
    assert np.allclose(sp.mean, x.mean((0, 2, 3)).numpy())
    assert np.allclose(sp.std, x.transpose(0, 1).reshape(3, -1).std(1).numpy())
    again = synthetic_splits(120, 30, 50, seed=1)
    assert torch.equal(again.test.images, sp.test.images)


def test_abstract_trigger_set_labels_fixed_by_seed() -> None:
    a, b = abstract_trigger_set(), abstract_trigger_set()
    assert a.images.shape == (100, 3, 32, 32) and a.images.dtype == torch.uint8
    assert torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images)
    assert a.labels.min() >= 0 and a.labels.max() < 10 and len(a.labels.unique()) > 5
    c = abstract_trigger_set(seed=1)
    assert not torch.equal(a.labels, c.labels)
    d = abstract_trigger_set(n=40, num_classes=100, seed=2)
    assert len(d) == 40 and d.labels.max() < 100 and len(d.classes) == 100
    assert a.name == "trigger/abstract"


def _spectrum_features(images: torch.Tensor) -> torch.Tensor:
    """Log |FFT| of the standardised grey image: invariant to position, colour and contrast."""
    x = images.float().mean(1)
    x = (x - x.mean((1, 2), keepdim=True)) / (x.std((1, 2), keepdim=True) + 1e-6)
    return torch.log1p(torch.fft.rfft2(x).abs()).flatten(1)


@pytest.mark.parametrize("task", ["shapes", "textures"])
def test_synthetic_tasks_are_learnable_but_not_trivial(task: str) -> None:
    # A linear model on translation-invariant spectrum features, 1,500 train / 500 test images.
    # Not tuned to pass: it only checks "clearly above chance (10 %), below perfect".
    d = synthetic_images(2000, seed=11, task=task)
    acc = linear_probe_accuracy(_spectrum_features(d.images), d.labels, 1500, l2=0.05)
    print(f"{task}: linear spectrum model test accuracy {acc:.3f}")
    assert 0.2 < acc < 1.0
