"""Train-or-load cache: keys, reuse, rebuilds of damaged entries, and what each entry holds."""

import re
import shutil
from dataclasses import replace

import pytest
import torch

import pnorm.fileio
import pnorm.model_cache
import pnorm.profile_data
import pnorm.training
from pnorm.fileio import source_fingerprint, state_sha256
from pnorm.model_cache import train_or_load
from pnorm.models import export_public
from pnorm.profile_data import trigger_set
from pnorm.profiles import PROFILES
from pnorm.synthetic_images import synthetic_splits
from pnorm.units import passport_layers
from pnorm.vault import Vault

SMOKE = PROFILES["smoke"]
PROFILE = replace(SMOKE, width=0.125, n_train=64, n_val=32, n_test=32,
                  train=replace(SMOKE.train, epochs=2, batch_size=32, milestones=(1 / 2,)),
                  n_triggers=4, triggers_per_batch=2, eval_batch_size=64)
FINGERPRINT = "f" * 64  # fixed, so that edits to pnorm/ during a test run change no key


class _TrainCalled(Exception):
    """Raised by the stand-in for pnorm.model_cache.train; carries its checkpoint path."""


@pytest.fixture(scope="module")
def data():
    splits = synthetic_splits(PROFILE.n_train, PROFILE.n_val, PROFILE.n_test, seed=0)
    return splits, trigger_set(PROFILE)


@pytest.fixture(scope="module")
def cached(data, tmp_path_factory):
    """One protected entry trained into a module cache: (cache folder, Trained)."""
    cache = tmp_path_factory.mktemp("pnorm-cache")
    splits, trigger = data
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PNORM_CACHE", str(cache))
        mp.setattr(pnorm.model_cache, "source_fingerprint", lambda: FINGERPRINT)
        trained = train_or_load("pan", PROFILE, splits, trigger, message="owner", key_seed=1,
                            progress=False)
    return cache, trained


@pytest.fixture()
def use_cache(monkeypatch, cached, tmp_path):
    """Point PNORM_CACHE at a private copy of the module cache for one test."""
    cache = tmp_path / "cache"
    shutil.copytree(cached[0], cache)
    monkeypatch.setenv("PNORM_CACHE", str(cache))
    monkeypatch.setattr(pnorm.model_cache, "source_fingerprint", lambda: FINGERPRINT)
    return cache


@pytest.fixture()
def no_training(monkeypatch):
    """Make any training attempt raise, recording the cache key it would have trained."""
    keys: list[str] = []

    def refuse(model, splits, config, trigger=None, device="cpu", checkpoint=None, **kw):
        keys.append(re.search(r"-([0-9a-f]{16})$", checkpoint.parent.name).group(1))
        raise _TrainCalled(checkpoint)

    monkeypatch.setattr(pnorm.model_cache, "train", refuse)
    return keys


@pytest.fixture()
def step_log(monkeypatch):
    steps: list[int] = []
    real = pnorm.training.training_step

    def counting(*args, **kwargs):
        steps.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pnorm.training, "training_step", counting)
    return steps


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _same_vault(a: Vault, b: Vault) -> bool:
    meta_a, ta = a._flat()
    meta_b, tb = b._flat()
    return meta_a == meta_b and _same_state(ta, tb)


def _folder(cache, trained):
    return cache / "models" / f"alexnet-{trained.record['model']['scheme']}-{trained.key}"


def test_first_call_trains_and_writes_the_entry(cached):
    cache, trained = cached
    folder = _folder(cache, trained)
    assert {p.name for p in folder.iterdir()} == {"final.pt", "vault.pt", "checkpoint.pt"}
    assert len(trained.history) == PROFILE.train.epochs
    assert trained.record["source"] == FINGERPRINT
    assert trained.vault is not None and trained.vault.message == "owner"
    assert trained.vault.public_sha256 == state_sha256(trained.public)
    assert trained.vault.seeds == {"model": 0, "passports": 1}
    for name in ("final.pt", "checkpoint.pt"):
        torch.load(folder / name, weights_only=True)  # no pickled code
    Vault.load(folder / "vault.pt")


def test_second_call_loads_without_training(data, cached, use_cache, no_training):
    splits, trigger = data
    first = cached[1]
    again = train_or_load("pan", PROFILE, splits, trigger, message="owner", key_seed=1,
                            progress=False)
    assert no_training == []
    assert again.key == first.key and again.record == first.record
    assert _same_state(again.model.state_dict(), first.model.state_dict())
    assert again.history == first.history and again.selected_epoch == first.selected_epoch
    assert _same_state(again.public.state_dict(), first.public.state_dict())
    assert _same_vault(again.vault, first.vault)
    assert not again.model.training
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again.model(x, 1), first.model.eval()(x, 1))


def test_public_model_has_no_passport_layers(cached):
    trained = cached[1]
    assert passport_layers(trained.model)
    assert not passport_layers(trained.public)
    secret = ("passport", "signature", "mlp", "norm1")
    assert not [k for k in trained.public.state_dict() if any(s in k for s in secret)]
    assert trained.public.config["scheme"] == "plain"
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(trained.public.eval()(x), trained.model.eval()(x),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "change",
    [{"seed": 1}, {"message": "someone else"}, {"preset": "clean"}, {"schedule": "alternating"},
     {"fingerprint": "0" * 64}, {"profile": {"train": replace(PROFILE.train, epochs=3)}},
     {"data_seed": 1}],
    ids=lambda c: next(iter(c)),
)
def test_the_key_covers_config_seed_message_data_and_source(
    data, cached, use_cache, no_training, monkeypatch, change
):
    splits, trigger = data
    kwargs = {"message": "owner"}
    profile = PROFILE
    if "fingerprint" in change:
        monkeypatch.setattr(pnorm.model_cache, "source_fingerprint", lambda: change["fingerprint"])
    elif "profile" in change:
        profile = replace(PROFILE, **change["profile"])
    elif "data_seed" in change:
        splits = synthetic_splits(PROFILE.n_train, PROFILE.n_val, PROFILE.n_test, seed=1)
    else:
        kwargs.update(change)
    with pytest.raises(_TrainCalled):  # a new key: not served from the cache, trained anew
        train_or_load("pan", profile, splits, trigger, key_seed=1, progress=False, **kwargs)
    assert len(no_training) == 1 and no_training[0] != cached[1].key


def test_a_changed_fingerprint_retrains_for_real(data, cached, use_cache, monkeypatch):
    splits, trigger = data
    monkeypatch.setattr(pnorm.model_cache, "source_fingerprint", lambda: "0" * 64)
    calls = []
    real = pnorm.model_cache.train
    monkeypatch.setattr(pnorm.model_cache, "train",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    fresh = train_or_load("pan", PROFILE, splits, trigger, message="owner", key_seed=1,
                            progress=False)
    assert calls == [1] and fresh.key != cached[1].key
    assert _folder(use_cache, fresh).is_dir() and _folder(use_cache, cached[1]).is_dir()
    # Same code, same data: the retrained weights equal the old ones (training is seeded).
    assert _same_state(fresh.model.state_dict(), cached[1].model.state_dict())


def test_real_source_fingerprint_is_a_stable_sha256():
    fp = source_fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", fp) and fp == source_fingerprint()


def test_fingerprint_covers_training_modules_but_not_attacks_or_figures(tmp_path, monkeypatch):
    for name in ("layers.py", "training.py", "attacks.py", "plots.py"):
        (tmp_path / name).write_text(f"# {name}\n")
    monkeypatch.setattr(pnorm.fileio, "_PKG_DIR", tmp_path)
    base = source_fingerprint()
    (tmp_path / "attacks.py").write_text("# a new attack\n")
    (tmp_path / "plots.py").write_text("# a new colour\n")
    assert source_fingerprint() == base
    (tmp_path / "layers.py").write_text("# a changed layer\n")
    assert source_fingerprint() != base
    (tmp_path / "newmodule.py").write_text("# unknown modules count\n")
    changed = source_fingerprint()
    (tmp_path / "newmodule.py").write_text("# edited\n")
    assert source_fingerprint() != changed


@pytest.mark.parametrize("damaged", ["final.pt", "vault.pt"])
def test_a_corrupt_entry_is_rebuilt_from_its_complete_checkpoint(
    data, cached, use_cache, step_log, damaged
):
    splits, trigger = data
    first = cached[1]
    folder = _folder(use_cache, first)
    (folder / damaged).write_bytes(b"\x00not a torch file\xff" * 20)
    with pytest.warns(UserWarning, match="unusable"):
        rebuilt = train_or_load("pan", PROFILE, splits, trigger, message="owner", key_seed=1,
                            progress=False)
    assert step_log == []  # the epoch checkpoint was complete: nothing trained again
    assert (folder / f"{damaged}.unusable-0").is_file()  # moved aside, never deleted
    assert rebuilt.key == first.key
    assert _same_state(rebuilt.model.state_dict(), first.model.state_dict())
    assert rebuilt.history == first.history and rebuilt.selected_epoch == first.selected_epoch
    assert _same_vault(rebuilt.vault, first.vault)
    # The entry is sound again and loads silently.
    assert torch.load(folder / "final.pt", weights_only=True)["key"] == first.key
    again = train_or_load("pan", PROFILE, splits, trigger, message="owner", key_seed=1,
                            progress=False)
    assert _same_state(again.model.state_dict(), first.model.state_dict())
    assert step_log == []


def test_plain_scheme_has_no_vault(data, use_cache, no_training, monkeypatch):
    splits, trigger = data
    monkeypatch.setattr(pnorm.model_cache, "train", pnorm.training.train)  # allow this one
    plain = train_or_load("plain", PROFILE, splits, trigger, progress=False)
    assert plain.vault is None
    assert not passport_layers(plain.model) and not passport_layers(plain.public)
    folder = _folder(use_cache, plain)
    assert not (folder / "vault.pt").exists() and (folder / "final.pt").exists()
    assert all(rec["val_acc1"] is None for rec in plain.history)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(export_public(plain.model).eval()(x), plain.public.eval()(x))
    monkeypatch.setattr(pnorm.model_cache, "train", lambda *a, **k: pytest.fail("should load"))
    again = train_or_load("plain", PROFILE, splits, trigger, progress=False)
    assert again.vault is None
    assert _same_state(again.model.state_dict(), plain.model.state_dict())


def test_real_profiles_use_the_adi_trigger_set(monkeypatch, tmp_path):
    """Real data: the Adi et al. set from the cache (downloaded when missing); synthetic:
    generated abstract images."""
    from PIL import Image

    from pnorm.profiles import PROFILES

    monkeypatch.setenv("PNORM_CACHE", str(tmp_path))
    folder = tmp_path / "data" / pnorm.profile_data.ADI_FOLDER
    fetched = []

    def fake_download(target):
        fetched.append(target)
        (target / "pics").mkdir(parents=True)
        for k in (1, 2):
            Image.new("RGB", (32, 32), (90 * k, 0, 0)).save(target / "pics" / f"{k}.png")
        (target / "labels-cifar.txt").write_text("5\n7\n")
        return target

    monkeypatch.setattr(pnorm.profile_data, "download_adi_trigger_set", fake_download)
    real = PROFILES["gpu"]
    trig = pnorm.profile_data.trigger_set(real)
    assert fetched == [folder] and trig.name == "trigger/adi" and trig.labels.tolist() == [5, 7]
    pnorm.profile_data.trigger_set(real)
    assert fetched == [folder]  # read from the cache the second time
    with pytest.raises(ValueError, match="labels up to 7, too many for 5 classes"):
        pnorm.profile_data.trigger_set(real, num_classes=5)
    assert pnorm.profile_data.trigger_set(PROFILES["smoke"]).name == "trigger/abstract"


def test_a_diverging_run_caches_no_model_and_no_vault(data, tmp_path, monkeypatch):
    """Training stops on a non-finite loss or weight before that epoch reaches any file."""
    splits, trigger = data
    monkeypatch.setenv("PNORM_CACHE", str(tmp_path))
    monkeypatch.setattr(pnorm.model_cache, "source_fingerprint", lambda: FINGERPRINT)
    wild = replace(PROFILE, train=replace(PROFILE.train, lr=1e6))
    with pytest.raises(pnorm.training.TrainingDivergedError, match="epoch 2 of 2, step 1 of 2"):
        train_or_load("pan", wild, splits, trigger, message="owner", key_seed=1, progress=False)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert [p.name for p in files] == ["checkpoint.pt"]  # no final.pt, no vault.pt
    ckpt = torch.load(files[0], weights_only=True)
    assert ckpt["epoch"] == 0  # the first epoch, still finite; the second was never written
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_a_message_that_is_not_text_is_refused_before_anything_runs(data, no_training):
    splits, trigger = data
    with pytest.raises(TypeError, match="signature message must be a str, got bytes"):
        train_or_load("pan", PROFILE, splits, trigger, message=b"owner", progress=False)
    assert no_training == []


def test_fine_tuning_is_computed_once_and_a_damaged_entry_is_recomputed(
        trained_pan, tmp_path, monkeypatch):
    from pnorm.attacks import finetune_config
    from pnorm.model_cache import Trained, fine_tune_or_load
    from pnorm.recipes import Recipe

    monkeypatch.setenv("PNORM_CACHE", str(tmp_path))
    model = trained_pan["model"]
    owner = Trained(model, export_public(model), trained_pan["vault"], [], 0, "owner-key", {})
    task = synthetic_splits(96, 32, 32, seed=5)
    config = finetune_config("clean", PROFILES["smoke"], seed=0,
                             recipe=Recipe(epochs=1, batch_size=32, lr=0.01, milestones=()))
    assert config.channels_last is True and config.eval_batch_size == 500
    tuned, records = fine_tune_or_load(owner, task, config, progress=False)
    [path] = (tmp_path / "attacks").glob("finetune-*.pt")
    calls = []
    real = pnorm.model_cache.fine_tune
    monkeypatch.setattr(pnorm.model_cache, "fine_tune",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    again, again_records = fine_tune_or_load(owner, task, config, progress=False)
    assert not calls and again_records == records
    assert all(torch.equal(a, b) for a, b in zip(tuned.state_dict().values(),
                                                 again.state_dict().values(), strict=True))
    path.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="unusable"):
        fine_tune_or_load(owner, task, config, progress=False)
    assert calls == [1] and path.exists()
    assert list((tmp_path / "attacks").glob("finetune-*.pt.unusable-*"))
