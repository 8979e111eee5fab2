"""Secrets stay secret: unguessable keys by default, a vault check that says what it catches,
cache files that are checked before use, and a release that does not fingerprint the scheme."""

from __future__ import annotations

import os
import secrets
import time
import warnings
from dataclasses import replace

import pytest
import torch
from conftest import learnable_splits

import pnorm
from pnorm.alexnet import AlexNetCIFAR
from pnorm.fileio import atomic_write
from pnorm.model_cache import train_or_load
from pnorm.models import export_public
from pnorm.passport import key_model
from pnorm.profiles import PROFILES
from pnorm.recipes import Recipe
from pnorm.synthetic_images import abstract_trigger_set
from pnorm.units import passport_layers
from pnorm.vault import Vault, VaultError


def _passports(model) -> torch.Tensor:
    return torch.cat([torch.cat([la.passport_gamma.flatten(), la.passport_beta.flatten(),
                                 la.signature]) for la in passport_layers(model).values()])


def test_default_keys_cannot_be_regenerated_from_small_seeds():
    owner = AlexNetCIFAR(width=0.125, scheme="pan", passport_layers=["conv5"])
    key_model(owner)  # the default: the OS's cryptographic randomness
    target = _passports(owner)
    guess = AlexNetCIFAR(width=0.125, scheme="pan", passport_layers=["conv5"])
    hits = 0
    for seed in range(10_000):
        key_model(guess, torch.Generator().manual_seed(seed))
        hits += torch.equal(_passports(guess), target)
    key_model(guess)  # the default again: another draw
    hits += torch.equal(_passports(guess), target)
    assert hits == 0
    # the search itself works: a teaching seed is found at once
    key_model(owner, torch.Generator().manual_seed(1234))
    key_model(guess, torch.Generator().manual_seed(1234))
    assert torch.equal(_passports(guess), _passports(owner))


PROFILE = replace(PROFILES["smoke"], width=0.125, n_train=64, n_val=32, n_test=32,
                  train=Recipe(epochs=1, batch_size=32, lr=0.02, milestones=()))


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PNORM_CACHE", str(tmp_path))
    return tmp_path


def test_train_or_load_keys_secretly_unless_given_a_teaching_seed(cache):
    splits = learnable_splits(n_train=64, n_val=32, n_test=32)
    trigger = abstract_trigger_set(8)
    secret = train_or_load("pan", PROFILE, splits, trigger, preset="clean", progress=False)
    folder = next((cache / "models").glob("alexnet-pan-*"))
    seed = secret.vault.seeds["passports"]
    assert seed >= 2**20 and (folder / "key-seed.json").is_file()  # drawn, kept with secrets
    again = train_or_load("pan", PROFILE, splits, trigger, preset="clean", progress=False)
    assert torch.equal(again.vault.signature, secret.vault.signature)  # the cache keeps them
    taught = train_or_load("pan", PROFILE, splits, trigger, preset="clean", key_seed=1,
                           progress=False)
    assert taught.vault.seeds["passports"] == 1
    assert not torch.equal(_passports(taught.model), _passports(secret.model))


def test_cache_files_are_checked_and_never_deleted(cache):
    splits = learnable_splits(n_train=64, n_val=32, n_test=32)
    trigger = abstract_trigger_set(8)
    first = train_or_load("pan", PROFILE, splits, trigger, preset="clean", key_seed=3,
                          progress=False)
    folder = next((cache / "models").glob("alexnet-pan-*"))
    saved = torch.load(folder / "final.pt", weights_only=True)
    name = next(k for k in saved["model_state"] if k.endswith("conv.weight"))
    saved["model_state"][name].view(-1)[0] = -1.5e37  # a flipped exponent bit, say
    torch.save(saved, folder / "final.pt")
    with pytest.warns(UserWarning, match="corruption check"):
        rebuilt = train_or_load("pan", PROFILE, splits, trigger, preset="clean", key_seed=3,
                                progress=False)
    assert (folder / "final.pt.unusable-0").is_file()  # moved aside, not deleted
    assert (folder / "vault.pt.unusable-0").is_file()
    assert torch.equal(rebuilt.vault.signature, first.vault.signature)
    assert float(rebuilt.model.state_dict()[name].view(-1)[0]) != -1.5e37


def test_vault_checks_say_what_they_catch(tmp_path, trained_pan):
    vault = trained_pan["vault"]
    key = secrets.token_bytes(32)
    path = vault.save(tmp_path / "vault.pt", key=key)
    assert torch.equal(Vault.load(path, key=key).signature, vault.signature)
    # An edit with a recomputed SHA-256 passes the corruption check but not the tamper check.
    forged = Vault.load(path)
    forged.message = "not the owner"
    forged.save(tmp_path / "edited.pt")
    assert Vault.load(tmp_path / "edited.pt").message == "not the owner"  # unkeyed: loads
    with pytest.raises(VaultError, match="tamper check"):
        Vault.load(tmp_path / "edited.pt", key=key)
    with pytest.raises(VaultError, match="tamper check"):
        Vault.load(path, key=secrets.token_bytes(32))
    payload = torch.load(path, weights_only=True)
    payload["tensors"]["trigger/labels"] = payload["tensors"]["trigger/labels"] + 1
    torch.save(payload, tmp_path / "damaged.pt")
    with pytest.raises(VaultError, match="corruption check"):
        Vault.load(tmp_path / "damaged.pt")


@pytest.mark.parametrize("edit,field", [
    (lambda t: t.__setitem__(next(k for k in t if k.endswith("passport_gamma")),
                             torch.full_like(t[next(k for k in t if k.endswith("passport_gamma"))],
                                             float("nan"))), "passport_gamma"),
    (lambda t: t.__setitem__(next(k for k in t if k.endswith("signature")),
                             0.5 * t[next(k for k in t if k.endswith("signature"))]), "signature"),
    (lambda t: t.pop(next(k for k in t if k.endswith("passport_beta"))), "passport_beta"),
])
def test_malformed_vault_names_the_field(tmp_path, trained_pan, edit, field):
    from pnorm.fileio import tensors_sha256

    path = trained_pan["vault"].save(tmp_path / "vault.pt")
    payload = torch.load(path, weights_only=True)
    edit(payload["tensors"])
    payload["sha256"] = tensors_sha256(payload["meta"], payload["tensors"])  # a valid checksum
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(VaultError, match=field):
        Vault.load(tmp_path / "bad.pt")


def test_release_counters_do_not_reveal_the_scheme(trained_pan):
    public = export_public(trained_pan["model"])
    counters = {n: int(v) for n, v in public.state_dict().items()
                if n.endswith("num_batches_tracked")}
    assert counters and set(counters.values()) == {0}
    plain = export_public(AlexNetCIFAR(width=0.125, scheme="plain"))
    assert set(public.state_dict()) == set(plain.state_dict())


def test_stale_temp_files_are_removed_on_the_next_write(tmp_path):
    target = tmp_path / "final.pt"
    stale = tmp_path / ".final.pt.abc123.tmp"
    fresh = tmp_path / ".final.pt.def456.tmp"
    stale.write_bytes(b"x" * 100)
    fresh.write_bytes(b"y")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    atomic_write(target, lambda f: f.write(b"done"))
    assert target.read_bytes() == b"done"
    assert not stale.exists()
    assert fresh.exists()  # a live writer's temp file is left alone


def test_public_api_keys_without_a_generator():
    model = pnorm.AlexNetCIFAR(width=0.125, scheme="pan", passport_layers=["conv5"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bits = pnorm.key_model(model, message="me")
    assert pnorm.bits_to_text(bits[:16]) == "me"
