"""Calibrated evidence: empirical nulls of the signature test, the paired accuracy test and the
commitment protocol that rejects vaults made after a release."""

from __future__ import annotations

import copy

import pytest
import torch

from pnorm.alexnet import AlexNetCIFAR
from pnorm.claims import (
    MIN_TEST_SIZE,
    Commitment,
    SignatureNull,
    check_commitment,
    commit,
    image_passport_null,
    independent_model_null,
    module_digest,
    paired_accuracy_test,
    random_passport_null,
    vault_digest,
)
from pnorm.models import export_public
from pnorm.passport import key_model
from pnorm.vault import Vault
from pnorm.verify import Thresholds, signature_detection


def test_p_values_of_a_null():
    null = SignatureNull("toy", [100, 110, 120, 130, 140] * 20, bits=224)
    assert null.empirical_p(200) == pytest.approx(1 / 101)  # beyond every sample
    assert null.empirical_p(140) == pytest.approx(21 / 101)
    assert null.fitted_log10_p(200) < null.fitted_log10_p(150) < 0
    assert null.naive_log10_p(224) == pytest.approx(-224 * 0.30103, abs=1e-3)
    row = null.summary(200)
    assert row["sd matches"] > row["sd if independent"]  # correlated bits spread wider
    with pytest.raises(ValueError, match="at least 2"):
        SignatureNull("one", [3], 10).fitted_log10_p(5)


def test_owner_beats_the_nulls_and_an_independent_model_does_not(trained_pan):
    model, vault, splits = trained_pan["model"], trained_pan["vault"], trained_pan["splits"]
    public = export_public(model)
    protected = vault.attach(public)
    owner = signature_detection(protected)["matches"]
    signature = vault.signature
    for null in (random_passport_null(protected, signature, n=99, seed=1),
                 image_passport_null(protected, public, signature, splits.test, splits.mean,
                                     splits.std, n=20, per_draw=8, seed=2)):
        assert null.empirical_p(owner) == pytest.approx(1 / (len(null.matches) + 1))
        assert null.fitted_log10_p(owner) < -3, null.summary(owner)
    # Models trained without the owner's keys: here fresh, independently initialised releases,
    # and one keyed with other passports.
    others = [export_public(AlexNetCIFAR(width=0.125, scheme="plain", seed=s)) for s in (5, 6)]
    keyed = AlexNetCIFAR(width=0.125, scheme="pan", seed=7)
    key_model(keyed, torch.Generator().manual_seed(99))
    others.append(export_public(keyed))
    independent = independent_model_null(vault, others)
    assert max(independent.matches) < owner
    null = random_passport_null(protected, signature, n=99, seed=3)
    assert all(null.empirical_p(k) > 0.01 for k in independent.matches)


def test_paired_accuracy_test():
    n = 400
    right = torch.ones(n, dtype=torch.bool)
    same = paired_accuracy_test(right, right, num_classes=10)
    assert same.passed and same.applicable and same.difference_low == 0.0
    wrong = torch.zeros(n, dtype=torch.bool)
    assert not paired_accuracy_test(right, wrong, num_classes=10).passed
    slightly = right.clone()
    slightly[:8] = False  # 2 points worse on 400 samples
    assert paired_accuracy_test(right, slightly, num_classes=10).passed
    # damage hurts the passport branch more: 60 % against 40 % still beats chance, and keeps
    # 60 % of the skill above chance (enough for a share of 0.5, not of 0.7)
    damaged0, damaged1 = torch.arange(n) < 0.60 * n, torch.arange(n) < 0.40 * n
    kept = paired_accuracy_test(damaged0, damaged1, num_classes=10)
    assert kept.passed and kept.difference_high < 0
    assert paired_accuracy_test(damaged0, damaged1, num_classes=10, min_retention=0.5).passed
    assert not paired_accuracy_test(damaged0, damaged1, num_classes=10, min_retention=0.7).passed
    at_chance1 = paired_accuracy_test(damaged0, torch.arange(n) < 0.1 * n, num_classes=10)
    assert at_chance1.applicable and not at_chance1.passed  # the passport unlocks nothing
    g = torch.Generator().manual_seed(0)
    chance = torch.rand(n, generator=g) < 0.1  # a deployed branch at chance level
    at_chance = paired_accuracy_test(chance, chance, num_classes=10)
    assert not at_chance.applicable and not at_chance.passed
    with pytest.raises(ValueError, match=f"at least {MIN_TEST_SIZE}"):
        paired_accuracy_test(right[:50], right[:50], num_classes=10)
    with pytest.raises(ValueError, match="pair them"):
        paired_accuracy_test(right, right[:-1], num_classes=10)


def test_commitment_rejects_a_vault_made_after_the_release(trained_pan):
    vault = trained_pan["vault"]
    published = [commit(vault, timestamp=1000.0)]
    ok, why = check_commitment(vault, published, suspect_first_seen=2000.0)
    assert ok, why
    late, why = check_commitment(vault, published, suspect_first_seen=500.0)
    assert not late and "after" in why
    forged = copy.deepcopy(vault)  # a claimant's vault: other passports, same release
    name = next(iter(forged.layers))
    forged.layers[name]["tensors"]["passport_gamma"] = -forged.layers[name]["tensors"][
        "passport_gamma"]
    assert vault_digest(forged) != vault_digest(vault)
    ok, why = check_commitment(forged, published, suspect_first_seen=2000.0)
    assert not ok and "no published commitment" in why
    # the forger may commit too, but only after the release it forged from was public
    ok, why = check_commitment(forged, published + [commit(forged, 3000.0)], 2000.0)
    assert not ok and "after" in why
    with pytest.raises(ValueError, match="public_sha256"):
        commit(Vault(arch={}, layers=vault.layers), 1.0)
    # a claim whose private branch is not a vault (an ERB scale branch) commits to its digest
    branch = torch.nn.Linear(3, 2)
    digest = module_digest(branch)
    late_branch = [commit(vault, 1000.0), Commitment(digest, vault.public_sha256, 3000.0)]
    ok, why = check_commitment(digest, late_branch, 2000.0)
    assert not ok and "after" in why
    assert check_commitment(digest, [Commitment(digest, "", 10.0)], 2000.0)[0]
    with torch.no_grad():
        branch.weight[0, 0] += 1
    assert module_digest(branch) != digest


def test_the_default_rule_needs_a_quarter_of_the_skill_and_a_margin_above_chance():
    rule = Thresholds()
    n = 400
    deployed = torch.arange(n) < 0.60 * n
    barely = torch.arange(n) < 0.15 * n  # beats chance on 400 samples, keeps 10 % of the skill
    test = paired_accuracy_test(deployed, barely, 10, rule.min_retention)
    assert test.passport_beats_chance and not test.passed
    assert paired_accuracy_test(deployed, torch.arange(n) < 0.40 * n, 10, rule.min_retention).passed
    # point estimates: 12 % on 1,000 samples is within noise of chance (10 %)
    assert rule.accuracy_retained(0.14, 0.12, 0.1, None)
    assert not rule.accuracy_retained(0.14, 0.12, 0.1, 1000)
    assert rule.accuracy_retained(0.90, 0.80, 0.1, 1000)
    assert not rule.accuracy_retained(0.90, 0.20, 0.1, 1000)  # above chance, keeps 12.5 %


def test_the_decision_flips_when_the_passport_branch_is_broken(trained_pan):
    from pnorm.images import ImageData
    from pnorm.verify import Thresholds, verify_ownership

    model, vault, splits = trained_pan["model"], trained_pan["vault"], trained_pan["splits"]
    public = export_public(model)
    short = Thresholds(min_retention=0.5)  # the fixture's branch 1 trails after 6 epochs
    report = verify_ownership(public, vault, splits.test, n_null=99, thresholds=short)
    assert report.verified and report.verdict == "ownership verified", report.rows()
    assert report.null["empirical p"] == pytest.approx(1 / 100)
    broken = copy.deepcopy(vault)
    for entry in broken.layers.values():  # the passports of someone else: signs scrambled
        for key in ("passport_gamma", "passport_beta"):
            p = entry["tensors"][key]
            entry["tensors"][key] = torch.rand(p.shape, generator=torch.Generator().manual_seed(
                p.numel())) * 2 - 1
    assert not verify_ownership(public, broken, splits.test, n_null=99,
                                thresholds=short).verified
    # Random-noise inputs: the deployed branch is at chance, so accuracy says nothing.
    g = torch.Generator().manual_seed(0)
    noise = ImageData(torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8, generator=g),
                      torch.randint(0, 10, (200,), generator=g))
    # The true vault then wins on the signature alone, and the verdict says so; a wrong one loses.
    at_chance = verify_ownership(public, vault, noise, n_null=99, thresholds=short)
    assert not at_chance.accuracy_applicable and not at_chance.accuracy_ok
    assert at_chance.verified and "signature alone" in at_chance.verdict
    wrong = verify_ownership(public, broken, noise, n_null=99, thresholds=short)
    assert not wrong.verified and wrong.verdict == "not verified"


def test_error_rate_upper_bound():
    from pnorm.claims import error_rate_upper95

    assert error_rate_upper95(0, 20) == pytest.approx(1 - 0.05 ** (1 / 20), abs=1e-9)
    assert error_rate_upper95(0, 100) < error_rate_upper95(0, 20)
    assert 0.01 < error_rate_upper95(1, 20) < 0.3  # Clopper-Pearson: 0.2161
    assert error_rate_upper95(1, 20) == pytest.approx(0.2161, abs=1e-3)
    assert error_rate_upper95(5, 5) == 1.0
    with pytest.raises(ValueError):
        error_rate_upper95(3, 2)
