"""Shared fixtures for the notebook and book tests.

``pnorm_cache_dir`` gives the whole test session one ``PNORM_CACHE`` directory and the
``smoke`` profile, so models trained by one notebook run are reused by later runs and by the
book build.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where ``_config.yml`` and ``_toc.yml`` live)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def pnorm_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One fresh, session-wide ``PNORM_CACHE`` and ``PNORM_PROFILE=smoke``.

    Both variables are set in ``os.environ`` (so kernels and subprocesses inherit them) for
    the rest of the session and restored when the session ends.
    """
    cache = tmp_path_factory.mktemp("pnorm-cache")
    saved = {key: os.environ.get(key) for key in ("PNORM_CACHE", "PNORM_PROFILE")}
    os.environ["PNORM_CACHE"] = str(cache)
    os.environ["PNORM_PROFILE"] = "smoke"
    try:
        yield cache
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ----------------------------------------------------------------------------- a trained model


def learnable_splits(n_train=512, n_val=128, n_test=256, seed=0, num_classes=10):
    """An easy colour task (class colour + uniform noise): learnable in a few epochs.

    Tests of verification and attacks study statistics, so their data must reliably be
    learned by both branches within the test budget, whatever the synthetic stand-ins' difficulty.
    """
    import torch

    from pnorm.images import ImageData, ImageSplits

    g = torch.Generator().manual_seed(seed)
    palette = torch.rand(num_classes, 3, generator=g)

    def make(n: int) -> ImageData:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=g)]
        img = 0.6 * palette[labels].view(n, 3, 1, 1) + 0.4 * torch.rand(n, 3, 32, 32, generator=g)
        return ImageData((img * 255).round().to(torch.uint8), labels,
                         [str(i) for i in range(num_classes)], f"easy-colours-{seed}")

    train_, val, test = make(n_train), make(n_val), make(n_test)
    x = train_.images.double() / 255
    mean = tuple(x.mean((0, 2, 3)).tolist())
    std = tuple(x.std((0, 2, 3)).tolist())
    return ImageSplits(train_, val, test, mean, std, num_classes, "synthetic")


@pytest.fixture(scope="session")
def trained_pan():
    """A small protected AlexNet (width 1/8) trained with the real two-branch recipe.

    Shared by verification and attack tests; they must not modify it (attacks work on copies).
    """
    import torch

    from pnorm.alexnet import AlexNetCIFAR
    from pnorm.models import export_public
    from pnorm.passport import key_model
    from pnorm.recipes import Recipe
    from pnorm.synthetic_images import abstract_trigger_set
    from pnorm.training import TrainConfig, train
    from pnorm.vault import Vault

    splits = learnable_splits()
    trigger = abstract_trigger_set(20)
    model = AlexNetCIFAR(width=0.125, scheme="pan", seed=0)
    key_model(model, torch.Generator().manual_seed(1), message="owner")
    config = TrainConfig(recipe=Recipe(epochs=6, batch_size=32, lr=0.02, milestones=(4 / 6,)),
                         triggers_per_batch=2, select="last")
    result = train(model, splits, config, trigger, progress=False)
    model = result.model.eval()
    vault = Vault.from_model(model, trigger.images, trigger.labels, seeds={"model": 0},
                             public_model=export_public(model),
                             data_stats={"mean": list(splits.mean), "std": list(splits.std)})
    return {"model": model, "vault": vault, "splits": splits, "trigger": trigger,
            "history": result.history}


def linear_probe_accuracy(features, labels, n_train: int, l2: float) -> float:
    """Test accuracy of an L2-regularised linear classifier (LBFGS) on standardised features.

    The first ``n_train`` rows train it, the rest test it: a quick, untuned measure of how
    learnable a synthetic task is from fixed features.
    """
    import torch

    f = (features - features[:n_train].mean(0)) / (features[:n_train].std(0) + 1e-6)
    w = torch.zeros(f.shape[1], int(labels.max()) + 1, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=60)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(f[:n_train] @ w, labels[:n_train])
        loss = loss + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return ((f[n_train:] @ w).argmax(1) == labels[n_train:]).float().mean().item()
