"""Scale profiles: ``smoke`` (CI), ``cpu`` (embedded default), ``gpu`` and ``paper``.

``PNORM_PROFILE`` picks one (default: ``gpu`` when CUDA is present, else ``cpu``);
``PNORM_DATA=synthetic|real`` and ``PNORM_DEVICE`` override its data and device.
``chapter_minutes`` estimates each chapter's time for a profile before a reader starts.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .recipes import Recipe

__all__ = ["ASSUMED_GPU_SPEEDUP", "CHAPTERS", "PROFILES", "SEEDS", "PointScale", "Profile",
           "cache_dir", "chapter_minutes", "estimate_line", "estimate_table", "get_profile",
           "profile_dict", "progress_bar", "show_progress"]


# The budgets' common parts: the forger optimises with Adam at a constant 0.01 (the original:
# SGD); the ERB forger with Adam, cosine decay and batch 32 (book/method.md#method-later-attacks).
_FORGE = Recipe(optimizer="adam", lr=0.01, milestones=())
_ERB = Recipe(batch_size=32, optimizer="adam", lr=0.01, weight_decay=0.0, lr_schedule="cosine",
              milestones=())
# The original 3-D recipe (book/method.md#method-point-clouds): Adam 1e-3, weight decay 1e-4,
# ×0.7 every 20 of 200 epochs, batch 16.
_POINTS = Recipe(epochs=200, batch_size=16, optimizer="adam", lr=0.001, weight_decay=1e-4,
                 milestones=tuple(m / 200 for m in range(20, 200, 20)), lr_gamma=0.7)


@dataclass(frozen=True)
class PointScale:
    """The 3-D chapter's scale: PointNet on ModelNet40 or the synthetic solids.

    Defaults are the original's recipe: 1,024 points, ``_POINTS`` for 200 epochs with a batch of
    16 triggers beside each batch of 16 clouds, six passport layers; fine-tuning 200 epochs at
    1e-3; forging 100 epochs on the whole training set.
    """

    width: float = 1.0  # PointNet channel multiplier (T-Nets included)
    n_points: int = 1024
    n_train: int = 0  # synthetic only (real data uses the full set)
    n_val: int = 1000  # held out of the training set
    n_test: int = 0  # synthetic only
    train: Recipe = _POINTS
    n_triggers: int = 100
    triggers_per_batch: int = 16
    passport_layers: tuple[str, ...] | None = None  # None: all six
    finetune: Recipe = replace(_POINTS, milestones=())
    forge: Recipe = replace(_FORGE, batch_size=16)
    forge_data_fraction: float = 1.0

    def describe(self) -> str:
        """One line for the 3-D chapter's setup cell."""
        r = self.train
        return (
            f"PointNet width={self.width} | points={self.n_points} | epochs={r.epochs} | "
            f"batch={r.batch_size}+{self.triggers_per_batch} triggers | Adam lr={r.lr} | "
            f"passport layers={','.join(self.passport_layers) if self.passport_layers else 'all'}"
        )


@dataclass(frozen=True)
class Profile:
    """Every scale knob a chapter needs, so chapters never hard-code sizes.

    Each optimisation has its ``Recipe``: ``train`` (the owner's AlexNet), ``finetune`` (the
    attacker's transfer learning, chapter 4), ``forge`` (passport forgeries, chapters 3 and 6)
    and ``erb`` (the ERB forgery, chapter 8).
    """

    name: str
    data: str  # "synthetic" or "real"
    device: str
    width: float  # AlexNet channel multiplier
    n_train: int  # synthetic only: training images (real data uses the full set)
    n_val: int  # held-out part of the training set, for model selection
    n_test: int  # synthetic only
    train: Recipe
    n_triggers: int = 100
    triggers_per_batch: int = 2
    n_forged: int = 20  # forged passports drawn in verification chapters
    eval_batch_size: int = 500
    # Which AlexNet units carry passports: None = all five (the PAN default); the CPU profiles
    # use conv3-conv5 (the original's `_ori` map), see `benchmarks/calibrate_cpu_profile.py`.
    passport_layers: tuple[str, ...] | None = None
    # AlexNet activations in NHWC while training (TrainConfig.channels_last; None = automatic,
    # CUDA only). The CPU profiles turn it on: 1.1-1.2x faster steps on a 2-core CPU, measured
    # side by side (book/reproduce.md).
    channels_last: bool | None = None
    # Attack budgets (chapters 04-06). The original fine-tunes for 200 epochs at lr 1e-3 and
    # forges passports for 100 epochs on the full training set.
    finetune: Recipe = Recipe(lr=0.001)
    forge: Recipe = _FORGE
    forge_data_fraction: float = 1.0
    # Beyond the paper (chapter 08): the ERB forgery's budget and the attacker's data fractions
    # (CVPR 2023 uses 2 % and 10 % of CIFAR-10), and how many random permutations are drawn.
    erb: Recipe = replace(_ERB, epochs=100)
    erb_fractions: tuple[float, ...] = (0.02, 0.1)
    n_permutations: int = 10
    points: PointScale = PointScale()  # the 3-D chapter (07)

    def describe(self) -> str:
        """One line for a chapter's setup cell: profile, data, device and scale."""
        r = self.train
        return (
            f"profile={self.name} | data={self.data} | device={self.device} | "
            f"AlexNet width={self.width} | {r.optimizer} lr={r.lr:g} {r.lr_schedule} | "
            f"epochs={r.epochs} | batch={r.batch_size}"
            f"+{self.triggers_per_batch} triggers | passport layers="
            f"{','.join(self.passport_layers) if self.passport_layers else 'all'}"
        )


# The CPU profiles protect four of PointNet's six units (chapter 07 says why): p3, the classifier,
# has a K/4-unit MLP whose passport branch starts with logits of order 1e-3 and does not catch
# up within a few epochs; convp1 reads 3 coordinates, so all its scales are linear functions of
# one 3-vector (the passport's mean point) and its sign loss fights the task.
_POINT_LAYERS_CPU = ("convp2", "convp3", "p1", "p2")
_CONV345 = ("conv3", "conv4", "conv5")
# The `cpu` recipe, chosen with `benchmarks/calibrate_cpu_profile.py` (book/reproduce.md has the
# table): SGD with step decay stayed near chance for several epochs and had not converged after
# 16; Adam with a cosine decay converges plain, PAN and DeepIPR-style within 16 epochs.
_CPU_TRAIN = Recipe(epochs=16, batch_size=128, optimizer="adam", lr=0.002, weight_decay=5e-4,
                    lr_schedule="cosine", milestones=())


def _sgd(epochs: int, batch_size: int, lr: float, milestones: tuple[float, ...] = ()) -> Recipe:
    return Recipe(epochs=epochs, batch_size=batch_size, lr=lr, milestones=milestones)


def _adam(epochs: int, batch_size: int, lr: float, milestones: tuple[float, ...] = (),
          lr_gamma: float = 0.1) -> Recipe:
    return Recipe(epochs=epochs, batch_size=batch_size, optimizer="adam", lr=lr,
                  weight_decay=1e-4, milestones=milestones, lr_gamma=lr_gamma)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", data="synthetic", device="cpu", width=0.25, n_train=768, n_val=256,
        n_test=512, train=_sgd(3, 64, 0.02, (2 / 3,)), n_triggers=20, triggers_per_batch=2,
        n_forged=5, passport_layers=_CONV345, channels_last=True, finetune=_sgd(2, 64, 0.01),
        forge=replace(_FORGE, epochs=1, batch_size=64), forge_data_fraction=0.25,
        erb=replace(_ERB, epochs=1), erb_fractions=(0.1,), n_permutations=2,
        points=PointScale(
            width=0.125, n_points=64, n_train=256, n_val=128, n_test=256,
            train=_adam(2, 32, 0.005, (0.5,)), n_triggers=16, triggers_per_batch=4,
            passport_layers=_POINT_LAYERS_CPU, finetune=_adam(1, 32, 0.002),
            forge=replace(_FORGE, epochs=1, batch_size=32), forge_data_fraction=0.25),
    ),
    "cpu": Profile(
        name="cpu", data="synthetic", device="cpu", width=0.25, n_train=5000, n_val=1000,
        n_test=2000, train=_CPU_TRAIN, n_triggers=50,
        triggers_per_batch=4, n_forged=20, passport_layers=_CONV345, channels_last=True,
        finetune=_sgd(8, 128, 0.01), forge=replace(_FORGE, epochs=3, batch_size=128),
        forge_data_fraction=0.5, erb=replace(_ERB, epochs=10), erb_fractions=(0.02, 0.1),
        n_permutations=5,
        points=PointScale(
            width=0.125, n_points=128, n_train=2000, n_val=500, n_test=1000,
            train=_adam(20, 32, 0.005, (0.7, 0.85)), n_triggers=50, triggers_per_batch=4,
            passport_layers=_POINT_LAYERS_CPU, finetune=_adam(4, 32, 0.002),
            forge=replace(_FORGE, epochs=2, batch_size=32), forge_data_fraction=0.5),
    ),
    "gpu": Profile(
        name="gpu", data="real", device="cuda", width=1.0, n_train=0, n_val=5000, n_test=0,
        train=_sgd(40, 64, 0.01, (0.5, 0.75)), n_triggers=100, triggers_per_batch=2,
        n_forged=50, finetune=_sgd(20, 64, 0.001), forge=replace(_FORGE, epochs=10),
        forge_data_fraction=1.0, erb=replace(_ERB, epochs=30),
        points=PointScale(train=replace(_POINTS, epochs=50, milestones=(0.4, 0.8)),
                          finetune=replace(_POINTS, epochs=20, milestones=()),
                          forge=replace(_FORGE, epochs=10, batch_size=16)),
    ),
    "paper": Profile(
        name="paper", data="real", device="cuda", width=1.0, n_train=0, n_val=5000, n_test=0,
        train=_sgd(200, 64, 0.01, (0.5, 0.75)), n_triggers=100, triggers_per_batch=2,
        n_forged=100,
    ),
}


def get_profile(name: str | None = None) -> Profile:
    """The active profile: ``name`` or ``PNORM_PROFILE``, with env overrides applied."""
    name = name or os.environ.get("PNORM_PROFILE") or (
        "gpu" if torch.cuda.is_available() else "cpu"
    )
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r} (PNORM_PROFILE); choose from {list(PROFILES)}")
    profile = PROFILES[name]
    data = os.environ.get("PNORM_DATA")
    if data:
        if data not in ("synthetic", "real"):
            raise ValueError(f"PNORM_DATA must be 'synthetic' or 'real', got {data!r}")
        profile = replace(profile, data=data)
    device = os.environ.get("PNORM_DEVICE")
    if device:
        profile = replace(profile, device=device)
    elif profile.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"profile {name!r} expects a CUDA GPU but none is available; "
            "set PNORM_DEVICE=cpu to run it on the CPU anyway (slow), or use PNORM_PROFILE=cpu"
        )
    _check_device(profile.device)
    return profile


def _check_device(device: str) -> None:
    """Compute on ``device`` and read the result back, so an unusable device fails at start-up."""
    try:  # a real kernel and a copy to the CPU: "meta" or a missing GPU index fail here
        result = (torch.ones(2, device=device) * 2).sum().item()
    except Exception as e:  # RuntimeError, AssertionError (no CUDA build), NotImplementedError
        result = f"{type(e).__name__}: {e}"
    if result != 4.0:
        raise RuntimeError(f"device {device!r} (PNORM_DEVICE) is not usable: computing 2+2 on it "
                           f"gave {result!r}; set PNORM_DEVICE to a working device such as "
                           f"'cpu' or 'cuda:0'")


def show_progress(progress: bool) -> bool:
    """Whether to draw a progress bar: asked for, and not switched off with ``TQDM_DISABLE=1``.

    The book build sets that variable, so bars help a reader running a chapter but never end
    up in the published pages.
    """
    return bool(progress) and os.environ.get("TQDM_DISABLE", "").lower() not in ("1", "true")


def progress_bar(iterable: Iterable, desc: str, progress: bool = True) -> Iterable:
    """A ``tqdm.auto`` bar over ``iterable`` that honours ``show_progress`` (and so the build)."""
    return tqdm(iterable, desc=desc, disable=not show_progress(progress))


def cache_dir() -> Path:
    """Folder for downloads and trained models: ``PNORM_CACHE`` or ``~/.cache/pnorm``.

    The folder is created and a small temp file written to it (and removed), so a cache that
    cannot be written fails here, at start-up, not when the first trained model is saved.
    """
    path = Path(os.environ.get("PNORM_CACHE") or Path.home() / ".cache" / "pnorm").expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".pnorm-write-test-") as f:
            f.write(b"pnorm")
            f.flush()
    except OSError as e:
        kind = PermissionError if isinstance(e, PermissionError) else OSError
        raise kind(f"the pnorm cache folder {path} is not writable ({e}); set PNORM_CACHE to a "
                   f"folder you can write to, or fix that folder's permissions") from e
    return path


def profile_dict(profile: Profile) -> dict:
    """The profile as a plain dict (for cache keys and result records)."""
    return {f.name: getattr(profile, f.name) for f in fields(profile)}


# ------------------------------------------------------------------ minutes per chapter
# A chapter's work is counted in training steps of one image (or cloud): epochs × training images
# of every model it trains (×2 for the two-branch PAN and DeepIPR-style models), its attacks'
# optimisation budgets, and its evaluation sweeps at a third of a step (forward only; the
# per-epoch evaluations are left out); network cost scales with width² (PointNet's also with the
# points per cloud). NO GPU FIGURE HAS BEEN MEASURED: work is converted with the 2-core CPU
# throughputs below and, on CUDA profiles, multiplied by ASSUMED_GPU_SPEEDUP, an assumption to
# replace with a figure measured by scripts/gpu_check.sh.

# Approximate training throughputs on the 2-core CPUs this book was developed on:
CPU_ALEXNET_IMAGES_PER_S = 120.0  # AlexNet-CIFAR, full width, plain
CPU_POINTNET_CLOUDS_PER_S = 16.0  # PointNet, full width, 1,024 points, plain
TWO_BRANCH_COST = 2.0  # a PAN (or DeepIPR-style) step ÷ a plain step, passports everywhere
EVAL_COST = 1 / 3  # a forward pass ÷ a training step
ASSUMED_GPU_SPEEDUP = 50.0  # ASSUMPTION (a GPU = 50× a 2-core CPU), not a measurement
CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000  # CIFAR-10 and CIFAR-100 alike
MODELNET_TRAIN, MODELNET_TEST = 9_843, 2_468
REAL_OBJECTS_TRAIN = 4_000  # chapter 7's synthetic fine-tuning target on real-data profiles

# The models each chapter loads ("scheme@seed"; no seed means seed 0); in book order the first
# chapter that needs one trains it. Chapter 2 trains every scheme with three seeds.
SEEDS = (0, 1, 2)
_ALL_SEEDS = tuple(f"{m}@{s}" if s else m for s in SEEDS for m in ("plain", "deepipr", "pan"))
CHAPTERS: dict[str, tuple[str, ...]] = {
    "01-anatomy": ("pan",), "02-training": _ALL_SEEDS, "03-verification": _ALL_SEEDS,
    "04-fine-tuning": ("pan", "deepipr"),
    "05-pruning": ("pan", "deepipr"), "06-ambiguity": ("pan", "deepipr"),
    "07-point-clouds": ("points-plain", "points-pan"), "08-beyond-the-paper": ("pan",),
    "09-summary": (),
}


def _chapter_work(p: Profile) -> tuple[dict[str, float], dict[str, float]]:
    """(steps to train each model, steps of each chapter's attacks and evaluations), in steps of
    one image through a full-width AlexNet (PointNet's converted by the throughput ratio)."""
    real, ps = p.data == "real", p.points
    n, t = (CIFAR_TRAIN - p.n_val, CIFAR_TEST) if real else (p.n_train, p.n_test)
    pn, pt = (MODELNET_TRAIN - ps.n_val, MODELNET_TEST) if real else (ps.n_train, ps.n_test)
    img = p.width ** 2
    cloud = (ps.width ** 2 * ps.n_points / 1024
             * CPU_ALEXNET_IMAGES_PER_S / CPU_POINTNET_CLOUDS_PER_S)
    train = p.train.epochs * n * (1 + p.triggers_per_batch / p.train.batch_size) * img
    train3d = ps.train.epochs * pn * (1 + ps.triggers_per_batch / ps.train.batch_size) * cloud
    models = {"plain": train, "deepipr": TWO_BRANCH_COST * train, "pan": TWO_BRANCH_COST * train,
              "points-plain": train3d, "points-pan": TWO_BRANCH_COST * train3d}
    forge = p.forge.epochs * p.forge_data_fraction * n * img
    attacks = {
        "03-verification": p.n_forged * t * EVAL_COST * img,  # the forged passports
        "04-fine-tuning": (2 * p.finetune.epochs + 1) * n * img,  # PAN, DeepIPR, 1 faithful
        "05-pruning": 3 * 11 * 2 * t * EVAL_COST * img,  # 3 sweeps × 11 ratios × 2 branches
        "06-ambiguity": (2 + 11) * forge,  # Attack I on two models, Attack II at 11 flips
        "07-point-clouds": cloud * (
            ps.finetune.epochs * (REAL_OBJECTS_TRAIN if real else ps.n_train)
            + 2 * ps.forge.epochs * ps.forge_data_fraction * pn
            + (2 * 11 + p.n_forged) * pt * EVAL_COST),
        "08-beyond-the-paper": img * (  # ERB: 3 kinds × each fraction + CERB from γ0
            p.erb.epochs * n * (3 * sum(p.erb_fractions) + max(p.erb_fractions))
            + 2 * p.n_permutations * t * EVAL_COST),
    }
    return models, attacks


def chapter_minutes(profile: Profile, alone: bool = False,
                    speedup: float | None = None) -> dict[str, float]:
    """ESTIMATED minutes per chapter for ``profile`` (not measured; see the comment above).

    In book order (default) a model is trained by the first chapter that loads it; ``alone=True``
    counts every model a chapter loads (an empty cache). ``speedup`` multiplies the 2-core CPU
    throughputs: by default ``ASSUMED_GPU_SPEEDUP`` on a CUDA profile, else 1.
    """
    if speedup is None:
        speedup = ASSUMED_GPU_SPEEDUP if profile.device.startswith("cuda") else 1.0
    models, attacks = _chapter_work(profile)
    seen: set[str] = set()
    minutes = {}
    for chapter, needs in CHAPTERS.items():
        steps = sum(models[m.split("@")[0]] for m in needs if alone or m not in seen)
        seen.update(needs)
        minutes[chapter] = (steps + attacks.get(chapter, 0.0)) / (
            CPU_ALEXNET_IMAGES_PER_S * speedup) / 60
    return minutes


def _minutes(m: float) -> str:
    return f"{m:.0f}" if m >= 10 else f"{m:.1f}"


def _basis(p: Profile) -> str:
    return (f"GPU assumed {ASSUMED_GPU_SPEEDUP:g}× a 2-core CPU, not measured"
            if p.device.startswith("cuda") else "2-core CPU")


def estimate_line(chapter: str, profile: str = "gpu") -> str:
    """One line for a chapter's setup cell: ``profile``'s estimated minutes for ``chapter``."""
    p = PROFILES[profile]
    in_order, alone = chapter_minutes(p)[chapter], chapter_minutes(p, alone=True)[chapter]
    return (f"{profile} profile: ~{_minutes(in_order)} min after the earlier chapters, "
            f"~{_minutes(alone)} min alone (estimate: {_basis(p)})")


def estimate_table(profile: str = "gpu") -> str:
    """Markdown table of estimated minutes per chapter (``book/reproduce.md`` shows ``gpu``'s)."""
    p = PROFILES[profile]
    in_order, alone = chapter_minutes(p), chapter_minutes(p, alone=True)
    return "\n".join([
        f"| chapter (`{profile}` profile; {_basis(p)}) | estimated minutes, in book order | "
        "estimated minutes, alone |", "|---|---|---|",
        *(f"| {ch} | {_minutes(in_order[ch])} | {_minutes(alone[ch])} |" for ch in CHAPTERS),
        f"| all chapters | {_minutes(sum(in_order.values()))} | |"])
