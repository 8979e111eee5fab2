"""The ERB forgery (CVPR 2023) on PAN's release: the block, BDR, records, and what stays frozen."""

import copy
from dataclasses import replace

import pytest
import torch

from pnorm.erb import (
    ERBConfig,
    ERBNormUnit,
    ExpandedResidualBlock,
    bit_dissimilarity,
    erb_claim_test,
    erb_forgery,
    erb_sweep,
    forged_scales,
    scale_bits,
)
from pnorm.models import export_public
from pnorm.recipes import Recipe
from pnorm.verify import evaluate

# The ERB default optimiser (Adam 0.01, no weight decay, constant), scaled down for tests.
RECIPE = Recipe(epochs=2, batch_size=32, optimizer="adam", lr=0.01, weight_decay=0.0,
                milestones=())


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def release(trained_pan):
    """The released (public) model, its vault and data, and its deployed test accuracy."""
    public = export_public(trained_pan["model"]).eval()
    splits = trained_pan["splits"]
    acc = evaluate(public, splits.test, splits.mean, splits.std, 0)
    return public, trained_pan["vault"], splits, acc


def _forge(release, epochs=2, **overrides):
    public, vault, splits, _ = release
    config = ERBConfig(**{"data_fraction": 0.25, "recipe": replace(RECIPE, epochs=epochs),
                          **overrides})
    return erb_forgery(public, vault, splits.train, splits.test, splits.mean, splits.std,
                       config, progress=False)


@pytest.mark.parametrize("kind,channels,params", [
    ("ierb", 24, 24 * 31), ("cerb", 24, 24 * 3 + 3 + 3 * 24 + 24), ("cerb", 4, 4 + 1 + 4 + 4)])
def test_erb_shapes_and_skip_connection(kind, channels, params):
    gamma = torch.randn(channels, generator=_gen(0))
    block = ExpandedResidualBlock(channels, kind, generator=_gen(1))
    assert sum(p.numel() for p in block.parameters()) == params  # C//8 hidden (at least 1)
    out = block(gamma)
    assert out.shape == (channels,)
    assert torch.equal(out, gamma)  # zero-initialised output layer: ERB(γ) = γ + 0
    trained = ExpandedResidualBlock(channels, kind, zero_last=False, generator=_gen(1))
    assert not torch.allclose(trained(gamma), gamma)
    with pytest.raises(ValueError, match="kind"):
        ExpandedResidualBlock(channels, "none")


def test_ierb_is_per_channel_independent_and_cerb_is_not():
    gamma = torch.randn(16, generator=_gen(0))
    for kind, independent in (("ierb", True), ("cerb", False)):
        block = ExpandedResidualBlock(16, kind, zero_last=False, generator=_gen(1))
        jac = torch.autograd.functional.jacobian(block, gamma)
        off_diagonal = jac - torch.diag(torch.diagonal(jac))
        assert bool(off_diagonal.abs().max() == 0) is independent, kind
        moved = gamma.clone()
        moved[5] += 1.0
        changed = (block(moved) != block(gamma)).nonzero().flatten().tolist()
        assert (changed == [5]) is independent, kind


@pytest.mark.parametrize("field,value,match", [
    ("kind", "erb", "kind"), ("data_fraction", 0.0, "data_fraction"),
    ("data_fraction", 1.5, "data_fraction"), ("init", "true", "init"),
    ("ierb_hidden", 0, "ierb_hidden")])
def test_config_validation(field, value, match):
    with pytest.raises(ValueError, match=match):
        ERBConfig(**{field: value})


@pytest.mark.parametrize("field,value", [
    ("epochs", -1), ("lr", 0.0), ("optimizer", "rmsprop"), ("batch_size", 0)])
def test_recipe_validation(field, value):
    # The optimiser's values are checked by the recipe, whose message names the field.
    with pytest.raises(ValueError, match=rf"Recipe\.{field}"):
        ERBConfig(recipe=replace(RECIPE, **{field: value}))


def test_bdr_against_the_vault_signature_on_hand_made_scales(release):
    _, vault, _, _ = release
    owner = {n: e["tensors"]["signature"] for n, e in vault.layers.items()}
    positive = {n: b * (0.1 + torch.rand(b.numel(), generator=_gen(0))) for n, b in owner.items()}
    assert bit_dissimilarity(positive, vault)["pooled"] == 0.0
    negated = bit_dissimilarity({n: -s for n, s in positive.items()}, vault)
    assert negated["pooled"] == 1.0 and set(negated["per_layer"].values()) == {1.0}
    flipped = {n: torch.cat([-s[:4], s[4:]]) for n, s in positive.items()}  # 4 bits per layer
    bdr = bit_dissimilarity(flipped, vault)
    assert bdr["bits"] == vault.signature.numel() == 144
    assert bdr["pooled"] == pytest.approx(4 * len(owner) / 144)
    assert bdr["per_layer"] == pytest.approx({n: 4 / b.numel() for n, b in owner.items()})
    assert scale_bits(torch.tensor([0.0, -0.0, -1e-9, 2.0])).tolist() == [1, 1, -1, 1]
    with pytest.raises(ValueError, match="conv5"):
        bit_dissimilarity({n: s for n, s in positive.items() if n != "conv5"}, vault)


def test_bdr_through_a_forged_model_whose_scales_are_set_to_the_signature(release):
    _, vault, _, _ = release
    for kind in ("cerb", "ierb", "none"):
        model, _ = _forge(release, kind=kind, epochs=0)
        units = {n: m for n, m in model.named_modules() if isinstance(m, ERBNormUnit)}
        assert list(units) == list(vault.layers)
        for sign, expected in ((1.0, 0.0), (-1.0, 1.0)):
            with torch.no_grad():
                for name, unit in units.items():
                    unit.gamma.copy_(sign * 0.5 * vault.layers[name]["tensors"]["signature"])
            assert bit_dissimilarity(forged_scales(model), vault)["pooled"] == expected, kind


def test_forgery_from_the_release_starts_as_the_release(release):
    public, vault, splits, acc0 = release
    model, records = _forge(release, epochs=0)
    (r,) = records
    assert r["accuracy"] == pytest.approx(acc0) == r["deployed_accuracy"]
    assert r["release_bdr"] == 0.0 and r["sign_changes"] == 0.0
    gamma0 = {n: u.norm.weight for n, u in public.named_modules() if n in vault.layers}
    assert r["bdr"] == bit_dissimilarity(gamma0, vault)["pooled"]  # signs of γ0 vs the owner
    x = torch.randn(4, 3, 32, 32, generator=_gen(0))
    torch.testing.assert_close(model(x), public(x))
    with pytest.raises(ValueError, match="branch"):
        model(x, 1)


@pytest.mark.parametrize("kind", ["cerb", "ierb", "none"])
def test_forgery_runs_and_reports_the_quantities(release, kind):
    public, vault, splits, acc0 = release
    model, records = _forge(release, kind=kind, init="random")
    assert [r["epoch"] for r in records] == [0, 1, 2]
    for r in records:
        assert r["kind"] == kind and r["data_fraction"] == 0.25 and r["init"] == "random"
        assert r["attacker_images"] == 128 and r["bits"] == 144
        assert r["deployed_accuracy"] == pytest.approx(acc0)
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["accuracy_drop"] == pytest.approx(acc0 - r["accuracy"])
        for key in ("bdr", "release_bdr", "sign_changes"):
            assert 0.0 <= r[key] <= 1.0, key
        assert set(r["per_layer_bdr"]) == set(vault.layers)
        assert r["claimed_detection"] == 1.0  # the claim is the forgery's own signs
        assert r["claimed_log10_p"] < -40  # so it "passes" any p-value test by construction
    # Random ±1 starts: about half the owner's bits, and of the release's signs.
    assert 0.3 < records[0]["bdr"] < 0.7 and 0.3 < records[0]["release_bdr"] < 0.7
    # Only γ, β and the block moved; the conv weights and classifier are the release's.
    forged = dict(model.named_parameters())
    shared = [n for n, _ in public.named_parameters() if n in forged]
    assert set(shared) == {f"{n}.conv.weight" for n in vault.layers} | {
        "classifier.weight", "classifier.bias"}
    assert all(torch.equal(forged[n], public.get_parameter(n)) for n in shared)
    assert not any(p.requires_grad for p in model.parameters())


def test_kinds_start_from_the_same_function_and_the_release_is_not_modified(release):
    public, vault, _, _ = release
    before = {k: v.clone() for k, v in public.state_dict().items()}
    signature = vault.signature.clone()
    starts = [_forge(release, kind=k, init="random", epochs=1)[1][0] for k in ("cerb", "none")]
    keys = ("accuracy", "bdr", "release_bdr", "per_layer_bdr")
    assert [starts[0][k] for k in keys] == [starts[1][k] for k in keys]
    after = public.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. BN running stats
    assert not public.training and torch.equal(vault.signature, signature)


def test_sweep_returns_one_final_record_per_kind_and_fraction(release):
    public, vault, splits, _ = release
    config = ERBConfig(recipe=replace(RECIPE, epochs=1), init="random")
    rows = erb_sweep(public, vault, splits.train, splits.test, splits.mean, splits.std, config,
                     kinds=("ierb", "none"), fractions=(0.1, 0.2), progress=False)
    assert [(r["kind"], r["data_fraction"]) for r in rows] == [
        ("ierb", 0.1), ("ierb", 0.2), ("none", 0.1), ("none", 0.2)]
    assert [r["attacker_images"] for r in rows] == [51, 102, 51, 102]
    assert all(r["epoch"] == 1 for r in rows)


def test_cosine_schedule_ends_at_zero_lr_and_a_given_reference_skips_the_evaluation(release,
                                                                                       monkeypatch):
    import pnorm.erb

    public, vault, splits, acc0 = release
    seen = []
    real_step = torch.optim.lr_scheduler.CosineAnnealingLR.step

    def step(self, *a, **k):
        real_step(self, *a, **k)
        seen.append(self.get_last_lr()[0])

    monkeypatch.setattr(torch.optim.lr_scheduler.CosineAnnealingLR, "step", step)
    calls = []
    real_evaluate = pnorm.erb.evaluate
    monkeypatch.setattr(pnorm.erb, "evaluate", lambda m, *a, **k: calls.append(m) or
                        real_evaluate(m, *a, **k))
    config = ERBConfig(data_fraction=0.25, recipe=replace(RECIPE, lr_schedule="cosine"),
                       init="random")
    _, records = erb_forgery(public, vault, splits.train, splits.test, splits.mean, splits.std,
                             config, progress=False, reference_accuracy=0.123)
    assert seen and seen[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(r["deployed_accuracy"] == 0.123 for r in records)
    with_reference = len(calls)
    calls.clear()
    erb_forgery(public, vault, splits.train, splits.test, splits.mean, splits.std, config,
                progress=False)
    assert len(calls) == with_reference + 1  # only the release's own evaluation is saved


def test_an_erb_claim_is_judged_by_its_accuracy_against_the_suspect(release):
    public, _, splits, _ = release
    model, _ = _forge(release, epochs=0)  # from γ0: the release itself, a claim as good as it
    args = (splits.test, splits.mean, splits.std, 10)
    assert len(splits.test) >= 100
    assert erb_claim_test(public, model, *args).passed
    dead = copy.deepcopy(model)
    torch.nn.init.zeros_(dead.classifier.weight)  # a branch that predicts one class: chance
    torch.nn.init.zeros_(dead.classifier.bias)
    verdict = erb_claim_test(public, dead, *args)
    assert verdict.applicable and not verdict.passport_beats_chance and not verdict.passed
