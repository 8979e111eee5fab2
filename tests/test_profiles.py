"""Profiles: PNORM_PROFILE / PNORM_DATA / PNORM_DEVICE selection and errors, and PNORM_CACHE."""

import os
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import pytest
import torch

import pnorm.profiles
from pnorm.profile_data import _REAL_OBJECTS_SIZE
from pnorm.profiles import (
    ASSUMED_GPU_SPEEDUP,
    CHAPTERS,
    PROFILES,
    REAL_OBJECTS_TRAIN,
    cache_dir,
    chapter_minutes,
    estimate_line,
    estimate_table,
    get_profile,
    profile_dict,
)

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("PNORM_PROFILE", "PNORM_DATA", "PNORM_DEVICE", "PNORM_CACHE"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("name", ["smoke", "cpu"])
def test_profile_from_the_environment(monkeypatch, name):
    monkeypatch.setenv("PNORM_PROFILE", name)
    profile = get_profile()
    assert profile == PROFILES[name]
    assert profile.name == name and profile.data == "synthetic" and profile.device == "cpu"
    assert f"profile={name}" in profile.describe() and "data=synthetic" in profile.describe()


def test_cpu_profiles_are_small_and_smoke_is_smallest():
    smoke, cpu = PROFILES["smoke"], PROFILES["cpu"]
    assert smoke.n_train < cpu.n_train and smoke.train.epochs <= cpu.train.epochs
    assert all(e < p.train.epochs for p in PROFILES.values() for e in p.train.milestone_epochs)
    paper = PROFILES["paper"].train
    assert paper.epochs == 200 and paper.milestone_epochs == (100, 150)
    # Milestones are fractions of the epochs; the cpu recipe decays on a cosine instead.
    assert smoke.train.milestone_epochs == (2,)
    assert cpu.train.lr_schedule == "cosine" and cpu.train.milestone_epochs == ()
    assert cpu.points.train.milestone_epochs == (14, 17)
    assert PROFILES["gpu"].points.train.milestone_epochs == (20, 40)


def test_explicit_name_beats_the_environment(monkeypatch):
    monkeypatch.setenv("PNORM_PROFILE", "cpu")
    assert get_profile("smoke").name == "smoke"


@no_cuda
def test_default_without_cuda_is_cpu():
    assert get_profile().name == "cpu"


def test_unknown_profile_lists_the_choices(monkeypatch):
    monkeypatch.setenv("PNORM_PROFILE", "laptop")
    with pytest.raises(ValueError, match="'laptop'") as info:
        get_profile()
    for name in PROFILES:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="smoke"):
        get_profile("nope")


def test_pnorm_data_overrides_and_is_checked(monkeypatch):
    monkeypatch.setenv("PNORM_DATA", "real")
    profile = get_profile("smoke")
    assert profile.data == "real"
    assert profile.n_train == PROFILES["smoke"].n_train  # nothing else changes
    assert PROFILES["smoke"].data == "synthetic"  # the registry itself is untouched
    monkeypatch.setenv("PNORM_DATA", "imagenet")
    with pytest.raises(ValueError, match="PNORM_DATA.*'imagenet'"):
        get_profile("smoke")


def test_pnorm_device_overrides_the_device(monkeypatch):
    monkeypatch.setenv("PNORM_DEVICE", "cpu")
    profile = get_profile("gpu")  # works without CUDA: the user asked for the CPU
    assert profile.device == "cpu" and profile.name == "gpu" and profile.data == "real"
    monkeypatch.setenv("PNORM_DEVICE", "not-a-device")
    with pytest.raises(RuntimeError, match="not-a-device"):
        get_profile("smoke")


@pytest.mark.parametrize("device", ["meta", "cuda:99"])
def test_pnorm_device_must_compute_and_copy_back(monkeypatch, device):
    """A device that can allocate but not compute ("meta") or that is missing fails at start-up."""
    monkeypatch.setenv("PNORM_DEVICE", device)
    with pytest.raises(RuntimeError, match=rf"device '{device}' \(PNORM_DEVICE\) is not usable"):
        get_profile("smoke")


@no_cuda
@pytest.mark.parametrize("name", ["gpu", "paper"])
def test_gpu_profiles_without_cuda_say_what_to_do(name):
    with pytest.raises(RuntimeError, match="PNORM_DEVICE=cpu") as info:
        get_profile(name)
    assert "PNORM_PROFILE=cpu" in str(info.value)


def test_profiles_are_frozen_and_serialisable():
    profile = PROFILES["smoke"]
    with pytest.raises(FrozenInstanceError):
        profile.width = 1.0  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        profile.train.epochs = 100  # type: ignore[misc]
    d = profile_dict(profile)
    assert d["name"] == "smoke" and d["train"] == profile.train
    assert set(d) >= {"data", "device", "width", "n_train", "train", "finetune", "forge", "erb",
                      "points"}


def test_cache_dir_honours_pnorm_cache(monkeypatch, tmp_path):
    target = tmp_path / "deep" / "cache"
    monkeypatch.setenv("PNORM_CACHE", str(target))
    assert cache_dir() == target
    assert target.is_dir()  # created on demand


def test_cache_dir_leaves_no_trace_of_its_write_check(monkeypatch, tmp_path):
    monkeypatch.setenv("PNORM_CACHE", str(tmp_path))
    cache_dir()
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_cache_fails_at_start_up_naming_pnorm_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PNORM_CACHE", str(tmp_path))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(pnorm.profiles.tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(PermissionError, match=rf"{tmp_path} is not writable.*set PNORM_CACHE"):
        cache_dir()


def test_a_cache_below_a_file_fails_naming_pnorm_cache(monkeypatch, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("PNORM_CACHE", str(tmp_path / "a-file" / "cache"))
    with pytest.raises(OSError, match="not writable.*set PNORM_CACHE to a folder you can write"):
        cache_dir()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_cache_fails_naming_pnorm_cache(monkeypatch, tmp_path):
    tmp_path.chmod(0o500)
    monkeypatch.setenv("PNORM_CACHE", str(tmp_path))
    try:
        with pytest.raises(PermissionError, match="PNORM_CACHE"):
            cache_dir()
    finally:
        tmp_path.chmod(0o700)


def test_cache_dir_defaults_to_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Path.home() == tmp_path
    assert cache_dir() == tmp_path / ".cache" / "pnorm"
    assert (tmp_path / ".cache" / "pnorm").is_dir()
    monkeypatch.setenv("PNORM_CACHE", "~/elsewhere")
    assert cache_dir() == tmp_path / "elsewhere"


def test_point_scales_follow_the_3d_recipe_and_shrink_for_the_cpu():
    paper = PROFILES["paper"].points
    r = paper.train
    assert (r.optimizer, r.lr, r.weight_decay, r.lr_gamma, r.epochs) == (
        "adam", 1e-3, 1e-4, 0.7, 200)
    assert r.milestone_epochs == tuple(range(20, 200, 20))  # StepLR(step 20, gamma 0.7)
    assert (r.batch_size, paper.triggers_per_batch, paper.n_points) == (16, 16, 1024)
    assert paper.passport_layers is None  # all six
    smoke, cpu = PROFILES["smoke"].points, PROFILES["cpu"].points
    assert smoke.n_train < cpu.n_train and smoke.train.epochs < cpu.train.epochs
    assert smoke.n_points <= cpu.n_points < paper.n_points
    assert "p3" not in cpu.passport_layers and "PointNet" in cpu.describe()


# ------------------------------------------------------------------ minutes per chapter


def test_chapter_minutes_cover_every_chapter_and_say_they_are_estimates():
    chapters = {p.stem for p in (Path(__file__).resolve().parent.parent / "notebooks").glob(
        "*.ipynb")} - {"index"}  # the landing page reads records; it trains nothing
    gpu = PROFILES["gpu"]
    in_order, alone = chapter_minutes(gpu), chapter_minutes(gpu, alone=True)
    assert set(in_order) == set(alone) == set(CHAPTERS) == chapters
    assert all(alone[c] >= in_order[c] >= 0 for c in chapters)
    assert in_order["02-training"] > 0 and in_order["09-summary"] == 0
    # the GPU figure is the CPU figure times the assumed factor, which every output names
    cpu_rate = chapter_minutes(gpu, speedup=1.0)
    assert cpu_rate["02-training"] == pytest.approx(ASSUMED_GPU_SPEEDUP * in_order["02-training"])
    for text in (estimate_line("04-fine-tuning"), estimate_table("gpu")):
        assert "assumed" in text and "not measured" in text and "50×" in text
    assert "\n" not in estimate_line("04-fine-tuning")
    assert all(c in estimate_table("gpu") for c in chapters)
    assert "assumed" not in estimate_line("02-training", "cpu")  # CPU profiles: no factor


def test_chapter_minutes_grow_with_the_epochs():
    gpu = PROFILES["gpu"]
    base = chapter_minutes(gpu, alone=True)
    longer = replace(gpu, train=replace(gpu.train, epochs=2 * gpu.train.epochs),
                     finetune=replace(gpu.finetune, epochs=gpu.finetune.epochs + 1),
                     forge=replace(gpu.forge, epochs=gpu.forge.epochs + 1),
                     erb=replace(gpu.erb, epochs=gpu.erb.epochs + 1),
                     points=replace(gpu.points, train=replace(gpu.points.train, epochs=60)))
    more = chapter_minutes(longer, alone=True)
    assert all(more[c] >= base[c] for c in base)
    for chapter in ("01-anatomy", "02-training", "04-fine-tuning", "06-ambiguity",
                    "07-point-clouds", "08-beyond-the-paper"):
        assert more[chapter] > base[chapter], chapter
    # twice the owner's epochs: twice the training time of the chapter that only trains PAN
    doubled = replace(gpu, train=replace(gpu.train, epochs=2 * gpu.train.epochs))
    assert chapter_minutes(doubled)["01-anatomy"] == pytest.approx(2 * base["01-anatomy"])


def test_chapter_minutes_use_the_sizes_the_chapters_use():
    assert REAL_OBJECTS_TRAIN == _REAL_OBJECTS_SIZE[0]
    smoke, cpu = PROFILES["smoke"], PROFILES["cpu"]
    assert sum(chapter_minutes(smoke).values()) < sum(chapter_minutes(cpu).values())
    real = chapter_minutes(replace(cpu, data="real"))  # 45,000 CIFAR images instead of 5,000
    assert real["02-training"] > 5 * chapter_minutes(cpu)["02-training"]


def test_reproduce_page_shows_the_current_estimates():
    page = Path(__file__).resolve().parent.parent / "book" / "reproduce.md"
    assert estimate_table("gpu") in page.read_text(encoding="utf-8"), (
        "book/reproduce.md's table of minutes per chapter is out of date: paste the output of "
        "`python -c \"from pnorm.profiles import estimate_table; print(estimate_table('gpu'))\"`")


def test_progress_bars_yield_to_tqdm_disable(monkeypatch):
    from pnorm.profiles import show_progress

    assert show_progress(True) and not show_progress(False)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert not show_progress(True)
