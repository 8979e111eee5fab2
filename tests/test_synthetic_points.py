"""Tests of pnorm.synthetic_points: the synthetic solids and objects, and the 3-D trigger set."""

from __future__ import annotations

import pytest
import torch
from conftest import linear_probe_accuracy

from pnorm import synthetic_points as synthetic
from pnorm.synthetic_points import (
    OBJECT_CLASSES,
    SOLID_CLASSES,
    point_trigger_set,
    synthetic_point_splits,
    synthetic_points,
)

# ------------------------------------------------------------------ synthetic clouds


@pytest.mark.parametrize("task", ["solids", "objects"])
def test_synthetic_points_shape_balance_normalisation(task: str) -> None:
    d = synthetic_points(203, n_points=64, seed=3, task=task)
    assert d.points.shape == (203, 3, 64) and d.points.dtype == torch.float32
    assert d.labels.dtype == torch.int64 and len(d) == 203 and d.n_points == 64
    assert d.classes == (SOLID_CLASSES if task == "solids" else OBJECT_CLASSES)
    counts = torch.bincount(d.labels, minlength=10)
    assert counts.max() - counts.min() <= 1
    assert d.points.mean(2).abs().max() < 1e-5
    assert (d.points.norm(dim=1).amax(1) - 1).abs().max() < 1e-5
    assert torch.isfinite(d.points).all() and d.name == f"synthetic-{task}"


def test_synthetic_points_deterministic_and_seed_dependent() -> None:
    threads = torch.get_num_threads()
    a, b = synthetic_points(40, 32, seed=7), synthetic_points(40, 32, seed=7)
    assert torch.get_num_threads() == threads
    assert torch.equal(a.points, b.points) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.points, synthetic_points(40, 32, seed=8).points)
    assert not torch.equal(a.points, synthetic_points(40, 32, seed=7, task="objects").points)
    assert len(synthetic_points(0, 32, seed=0)) == 0
    with pytest.raises(ValueError, match="unknown synthetic point task"):
        synthetic_points(4, 32, seed=0, task="clouds")
    with pytest.raises(TypeError):  # difficulty is edited in the source, never at run time
        synthetic.POINTS_NUISANCE["jitter"] = (0.0, 0.0)  # type: ignore[index]


def test_synthetic_point_splits_are_independent() -> None:
    sp = synthetic_point_splits(60, 20, 30, n_points=32, seed=1, task="objects")
    assert (len(sp.train), len(sp.val), len(sp.test)) == (60, 20, 30)
    assert sp.num_classes == 10 and sp.source == "synthetic"
    assert sp.val.name == "synthetic-objects/val"
    train = {bytes(p.numpy()) for p in sp.train.points}
    assert not any(bytes(p.numpy()) in train for p in sp.test.points)
    again = synthetic_point_splits(60, 20, 30, n_points=32, seed=1, task="objects")
    assert torch.equal(again.test.points, sp.test.points)


def _invariant_features(points: torch.Tensor) -> torch.Tensor:
    """Pose-invariant histograms: distances to the centroid and between random point pairs."""
    r = points.norm(dim=1)
    d = (points[:, :, :64] - points[:, :, 64:128]).norm(dim=1)
    edges = torch.linspace(0, 2, 17)
    hist = [torch.stack([((x >= lo) & (x < hi)).float().mean(1)
                         for lo, hi in zip(edges[:-1], edges[1:], strict=True)], 1)
            for x in (r, d)]
    return torch.cat(hist, 1)


@pytest.mark.parametrize("task", ["solids", "objects"])
def test_synthetic_points_are_learnable_but_not_trivial(task: str) -> None:
    # A linear model on pose-invariant distance histograms, 1,500 train / 500 test clouds.
    d = synthetic_points(2000, 128, seed=11, task=task)
    acc = linear_probe_accuracy(_invariant_features(d.points), d.labels, 1500, l2=0.01)
    print(f"{task}: linear histogram model test accuracy {acc:.3f}")
    assert 0.3 < acc < 0.99


# ------------------------------------------------------------------ triggers


def test_point_trigger_set_is_fixed_by_its_seed() -> None:
    a, b = point_trigger_set(), point_trigger_set()
    assert a.points.shape == (100, 3, 1024) and a.name == "trigger/blobs"
    assert torch.equal(a.points, b.points) and torch.equal(a.labels, b.labels)
    assert a.labels.min() >= 0 and a.labels.max() < 10 and len(a.labels.unique()) > 5
    assert (a.points.norm(dim=1).amax(1) - 1).abs().max() < 1e-5
    c = point_trigger_set(seed=1)
    assert not torch.equal(a.labels, c.labels) and not torch.equal(a.points, c.points)
    d = point_trigger_set(n=30, num_classes=40, n_points=64, seed=2)
    assert d.points.shape == (30, 3, 64) and d.labels.max() < 40 and len(d.classes) == 40
