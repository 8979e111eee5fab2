"""Ambiguity attacks: forge passports (and a signature) that make a released model work.

An attacker who claims the model must present passports under which the passport branch is
accurate and the claimed signature is read back (book/method.md#method-ambiguity). What the
attacker knows and
trains is a ``ThreatModel``: explicit switches, never substring tests on a name. The original
code's two attacks are named configurations in ``THREAT_MODELS``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .batches import Data, augment_batch, model_inputs, raw_inputs
from .claims import MIN_TEST_SIZE, paired_accuracy_test, random_passport_null
from .profiles import show_progress
from .recipes import Recipe, flat_fields, make_optimizer
from .units import passport_layers
from .vault import Vault
from .verify import (
    Thresholds,
    binomial_tail,
    correct_predictions,
    evaluate,
    signature_detection,
)

__all__ = [
    "THREAT_MODELS",
    "ThreatModel",
    "flip_signature",
    "forge_passports",
    "threat_model",
]


# The forger's default budget: Adam at a constant 0.01 for 100 epochs (the original: SGD).
FORGE_RECIPE = Recipe(epochs=100, optimizer="adam", lr=0.01, milestones=())


@dataclass(frozen=True)
class ThreatModel:
    """What an ambiguity attacker starts from, what it trains, and with which budget.

    Defaults describe the holder of the released model: it knows no passport, MLP or branch-1
    statistics, so it starts from random passports and a random MLP, trains both, and estimates
    the statistics on its own data. ``THREAT_MODELS`` lists the named alternatives.
    """

    init: Literal["random", "true"] = "random"  # N(0,1) passports, or the owner's + 0.001·N(0,1)
    know_mlp: bool = False  # start from the owner's MLP (else a fresh Xavier-normal one)
    train_mlp: bool = True  # the MLP is optimised together with the passports
    # Data-free construction before any training: solve the (linear) passport-to-scale map so
    # the scales carry the claimed signature, then fit the attacker's own MLP in closed form so
    # it maps them to the released gamma0, beta0. Without an MLP (DeepIPR) the scales must
    # equal the affine itself, so only the claimed signs of gamma0 can be chosen.
    construct: bool = False
    know_bn1: bool = False  # start from the owner's branch-1 BN statistics (else branch 0's)
    reestimate_bn: bool = True  # update branch-1 BN statistics on the attacker's data
    flip: float = 0.0  # fraction of each layer's signature bits the attacker claims differently
    sign_weight: float = 1.0  # weight of the sign loss towards the claimed signature
    distance_weight: float = 0.0  # weight of Σ 1/MSE(true, forged): needs the true passports
    data_fraction: float = 1.0  # share of the training set the attacker holds
    grad_clip: float = 2.0
    # The original's Attack I keeps the two forged passports in one storage, so P_gamma and
    # P_beta stay identical; False forges two separate passports (more freedom).
    shared_passports: bool = False
    recipe: Recipe = FORGE_RECIPE  # the original used SGD (momentum 0.9), no schedule

    def __post_init__(self) -> None:
        if self.init not in ("random", "true"):
            raise ValueError(f"init must be 'random' or 'true', got {self.init!r}")
        if not 0.0 <= self.flip <= 1.0:
            raise ValueError(f"flip must be a fraction in [0, 1], got {self.flip}")
        if not 0.0 < self.data_fraction <= 1.0:
            raise ValueError(f"data_fraction must be in (0, 1], got {self.data_fraction}")
        if self.construct and self.know_mlp:
            raise ValueError("construct fits the attacker's own MLP, so it needs know_mlp=False")
        if self.distance_weight and self.init != "true":
            raise ValueError("distance_weight > 0 pushes forgeries away from the true passports, "
                             "so the attacker must know them: use init='true'")


THREAT_MODELS: dict[str, ThreatModel] = {
    # The holder of the released model (the defaults): nothing secret, everything trained,
    # with Adam (a capable attacker; the original attacks used plain SGD).
    "release-holder": ThreatModel(),
    # The same attacker, data-free: closed-form passports and MLP, no training at all.
    "release-holder-construct": ThreatModel(construct=True,
                                            recipe=replace(FORGE_RECIPE, epochs=0)),
    # The original `--type fake2-…` (Attack I): the owner's full checkpoint (MLP, BN¹ kept),
    # random passports, cross-entropy only; BN¹ re-estimated in train mode.
    "original-attack-1": ThreatModel(
        init="random", know_mlp=True, train_mlp=False, know_bn1=True, sign_weight=0.0,
        shared_passports=True, recipe=replace(FORGE_RECIPE, optimizer="sgd")),
    # The original `fake3s` (Attack II): true passports + noise, a re-initialised MLP that is
    # never optimised, CE + distance + sign loss towards a signature with `flip` bits changed.
    "original-attack-2": ThreatModel(
        init="true", know_mlp=False, train_mlp=False, know_bn1=True, flip=0.1,
        distance_weight=1.0, recipe=replace(FORGE_RECIPE, optimizer="sgd")),
}


def threat_model(name: str, **overrides: Any) -> ThreatModel:
    """A named threat model from ``THREAT_MODELS`` with explicit overrides (e.g. epochs)."""
    if name not in THREAT_MODELS:
        raise ValueError(f"unknown threat model {name!r}; choose from {list(THREAT_MODELS)}")
    return replace(THREAT_MODELS[name], **overrides)


def flip_signature(
    signature: torch.Tensor, fraction: float, generator: torch.Generator
) -> torch.Tensor:
    """A copy of one layer's ±1 ``signature`` with exactly ⌊fraction·C⌋ bits negated.

    The bits are drawn without replacement (book/method.md#method-ambiguity); the input is never
    modified.
    """
    n = int(fraction * signature.numel() + 1e-9)
    flipped = signature.clone()
    idx = torch.randperm(signature.numel(), generator=generator)[:n]
    flipped[idx] = -flipped[idx]
    return flipped


def _attacker_model(
    public: nn.Module, vault: Vault, threat: ThreatModel, g: torch.Generator
) -> tuple[nn.Module, dict, dict]:
    """The attacker's protected model: the vault's layer structure, secrets replaced as allowed.

    Returns the model, the true passports (for the owner's comparisons) and the claimed
    signature per layer. The vault and ``public`` are not modified.
    """
    model = vault.attach(public)
    for p in model.parameters():
        p.requires_grad_(False)
    true, claimed = {}, {}
    for name, layer in passport_layers(model).items():
        true[name] = (layer.passport_gamma.clone(), layer.passport_beta.clone())
        claimed[name] = flip_signature(layer.signature, threat.flip, g)
        layer.signature.copy_(claimed[name])
        for buf in (layer.passport_gamma, layer.passport_beta):  # forged in place, never aliased
            noise = torch.randn(buf.shape, generator=g)
            buf.copy_(noise if threat.init == "random" else buf + 0.001 * noise)
        if threat.shared_passports:  # one storage for both, as the original's Attack I
            layer.passport_beta = layer.passport_gamma
        if layer.mlp is not None and not threat.know_mlp:
            for m in layer.mlp.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_normal_(m.weight, generator=g)
        if layer.norm1 is not None and not threat.know_bn1:
            layer.norm1.load_state_dict(layer.norm0.state_dict())
        if threat.construct:
            _construct(layer)
    return model, true, claimed


@torch.no_grad()
def _solve_passport(layer: nn.Module, which: int, target: torch.Tensor) -> None:
    """Move passport ``which`` (0: gamma, 1: beta) the least distance so its scale = ``target``.

    The scale is linear (affine for Linear layers) in the passport, so the step is the
    minimum-norm least-squares solution: the Jacobian's pseudo-inverse times the residual.
    """
    bufs = (layer.passport_gamma, layer.passport_beta)
    p = bufs[which]

    def scale(q: torch.Tensor) -> torch.Tensor:
        pair = (q, bufs[1]) if which == 0 else (bufs[0], q)
        return layer.passport_scales(*pair)[which]

    with torch.enable_grad():
        jacobian = torch.autograd.functional.jacobian(scale, p, vectorize=True)
    jacobian = jacobian.reshape(target.numel(), -1).double()
    residual = (target - scale(p)).double().flatten()
    p.add_((torch.linalg.pinv(jacobian) @ residual).view_as(p).to(p.dtype))


@torch.no_grad()
def _construct(layer: nn.Module) -> None:
    """Data-free forgery of one layer (see ``ThreatModel.construct``)."""
    claimed = layer.signature
    if layer.mlp is None:  # DeepIPR-style: the scales are the affine
        _solve_passport(layer, 0, claimed * layer.gamma0.abs().clamp_min(0.1))
        _solve_passport(layer, 1, layer.beta0.clone())
        return
    s_gamma, _ = layer.passport_scales()
    _solve_passport(layer, 0, claimed * s_gamma.abs().clamp_min(0.1))
    _fit_mlp_to_public(layer)


@torch.no_grad()
def _fit_mlp_to_public(layer: nn.Module) -> None:
    """Set the MLP so that M(s_gamma) = gamma0 and M(s_beta) = beta0 for the layer's passports.

    Two hidden units read the passports' scales through a pseudo-inverse, so s_gamma maps to
    the hidden code (1, 0) and s_beta to (0, 1) (both fixed points of the leaky ReLU); the
    output layer then writes the public affine. Nothing secret is needed: gamma0 and beta0
    are the released BatchNorm weight and bias.
    """
    first, last = layer.mlp[0], layer.mlp[-1]
    if first.out_features < 2:
        raise ValueError("fit_public needs an MLP with at least two hidden units")
    s_gamma, s_beta = layer.passport_scales()
    readout = torch.linalg.pinv(torch.stack([s_gamma, s_beta]))  # C x 2
    first.weight.zero_()
    first.weight[:2] = readout.T
    last.weight.zero_()
    last.weight[:, 0] = layer.gamma0
    last.weight[:, 1] = layer.beta0


def _trainables(model: nn.Module, threat: ThreatModel) -> list[torch.Tensor]:
    tensors = []
    for layer in passport_layers(model).values():
        passports = [layer.passport_gamma]
        if layer.passport_beta is not layer.passport_gamma:  # a shared one is optimised once
            passports.append(layer.passport_beta)
        for passport in passports:
            passport.requires_grad_(True)
            tensors.append(passport)
        if threat.train_mlp and layer.mlp is not None:
            for p in layer.mlp.parameters():
                p.requires_grad_(True)
                tensors.append(p)
    return tensors


def _set_mode(model: nn.Module, threat: ThreatModel) -> None:
    """Eval mode everywhere, except branch-1 BN when its statistics are re-estimated."""
    model.eval()
    if threat.reestimate_bn:
        for layer in passport_layers(model).values():
            if layer.norm1 is not None:
                layer.norm1.train()


def _loss(model: nn.Module, x, y, threat: ThreatModel, true: dict) -> torch.Tensor:
    loss = F.cross_entropy(model(x, 1), y)
    layers = passport_layers(model)
    if threat.sign_weight:
        loss = loss + threat.sign_weight * sum(layer.sign_loss() for layer in layers.values())
    if threat.distance_weight:
        dist = sum(
            1.0 / F.mse_loss(fake, real)
            for name, layer in layers.items()
            for fake, real in zip((layer.passport_gamma, layer.passport_beta), true[name],
                                  strict=True)
        )
        loss = loss + threat.distance_weight * dist
    return loss


@torch.no_grad()
def _measure(model, vault: Vault, true: dict, test: Data, mean, std, device,
             batch_size: int) -> dict:
    acc = evaluate(model, test, mean, std, 1, batch_size, device)
    claimed = signature_detection(model)  # against the layers' signature = the claimed one
    owner_bits = vault.signature.to(device)
    owner = signature_detection(model, signature=owner_bits)
    claimed_bits = torch.cat([lay.signature for lay in passport_layers(model).values()])
    cos, mse = [], []
    for name, layer in passport_layers(model).items():
        for fake, real in zip((layer.passport_gamma, layer.passport_beta), true[name],
                              strict=True):
            cos.append(F.cosine_similarity(fake.flatten(), real.flatten(), dim=0).item())
            mse.append(F.mse_loss(fake, real).item())
    return {
        "accuracy": acc, "claimed_detection": claimed["pooled"],
        "claimed_matches": claimed["matches"], "bits": claimed["bits"],
        "claimed_log10_p": binomial_tail(claimed["matches"], claimed["bits"]),
        "owner_detection": owner["pooled"],
        "claimed_differs": (claimed_bits != owner_bits).float().mean().item(),
        "cosine_to_true": sum(cos) / len(cos), "mse_to_true": sum(mse) / len(mse),
    }


def forge_passports(
    public: nn.Module,
    vault: Vault,
    attacker_data: Data,
    test: Data,
    mean,
    std,
    threat: ThreatModel,
    seed: int = 0,
    device: str | torch.device = "cpu",
    reference_accuracy: float | None = None,
    thresholds: Thresholds | None = None,
    eval_batch_size: int = 500,
    every_epoch: bool = True,
    progress: bool = True,
    desc: str = "forging passports",
) -> tuple[nn.Module, list[dict]]:
    """Run one ambiguity attack on the released model and measure it every epoch.

    The attacker optimises forged passports (and, if the threat model says so, its MLP) with
    the model's weights frozen, on ``threat.data_fraction`` of ``attacker_data``. Records hold
    the forged branch's test accuracy, detection of the claimed and of the owner's signature,
    and similarity to the true passports; the last one says whether the forgery would pass the
    decision rule against ``reference_accuracy`` (the deployed accuracy). With
    ``every_epoch=False`` only the start and the end are measured (for sweeps).
    """
    thresholds = thresholds or Thresholds()
    g = torch.Generator().manual_seed(seed)
    model, true, _ = _attacker_model(public, vault, threat, g)
    model = model.to(device)
    true = {k: (a.to(device), b.to(device)) for k, (a, b) in true.items()}
    params = _trainables(model, threat)
    recipe = threat.recipe
    opt = make_optimizer(params, recipe)
    lrs = recipe.epoch_lrs()
    n = max(1, int(round(threat.data_fraction * len(attacker_data))))
    chosen = torch.randperm(len(attacker_data), generator=g)[:n]
    samples = raw_inputs(attacker_data)[chosen].to(device)
    labels = attacker_data.labels[chosen].to(device)
    flags = flat_fields(threat)
    records = [{"epoch": 0, **flags, **_measure(model, vault, true, test, mean, std, device,
                                                 eval_batch_size)}]
    bs = min(recipe.batch_size, n)
    for epoch in tqdm(range(1, recipe.epochs + 1), desc=desc, disable=not show_progress(progress)):
        for group in opt.param_groups:
            group["lr"] = lrs[epoch - 1]
        _set_mode(model, threat)
        order = torch.randperm(n, generator=g).to(device)
        for i in range(0, n - bs + 1, bs):
            idx = order[i : i + bs]
            x = augment_batch(samples[idx], g) if recipe.augment else samples[idx]
            loss = _loss(model, model_inputs(x, mean, std), labels[idx], threat, true)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if threat.grad_clip:
                nn.utils.clip_grad_norm_(params, threat.grad_clip)
            opt.step()
        if every_epoch or epoch == recipe.epochs:
            records.append({"epoch": epoch, **flags, **_measure(
                model, vault, true, test, mean, std, device, eval_batch_size)})
    for p in params:
        p.requires_grad_(False)
    model.eval()
    if reference_accuracy is not None:  # the claim, judged by the owner's decision rule
        last = records[-1]
        claimed_bits = torch.cat([lay.signature for lay in passport_layers(model).values()])
        null = random_passport_null(model, claimed_bits, 200, seed).summary(
            last["claimed_matches"])
        last["claimed_empirical_p"] = null["empirical p"]
        last["claimed_fitted_log10_p"] = null["fitted log10 p"]
        last["signature_ok"] = thresholds.signature_passes(null)
        num_classes = int(vault.arch.get("num_classes", 10))
        if len(test) >= MIN_TEST_SIZE:  # paired test of forged branch 1 against the release
            c0, c1 = correct_predictions(model, test, mean, std, eval_batch_size)
            test_result = paired_accuracy_test(c0, c1, num_classes, thresholds.min_retention,
                                               seed=seed)
            last["accuracy_ok"] = test_result.passed
            last["accuracy_applicable"] = test_result.applicable
        else:  # too few samples to pair: the point estimates against the release
            last["accuracy_ok"] = thresholds.accuracy_retained(
                reference_accuracy, last["accuracy"], 1 / num_classes, len(test))
            last["accuracy_applicable"] = True
        # as OwnershipReport.verified: where accuracy cannot be judged, the signature decides
        last["forgery_passes"] = last["signature_ok"] and (last["accuracy_ok"]
                                                           or not last["accuracy_applicable"])
    return model, records

