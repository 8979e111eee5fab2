"""The expanded-residual-block (ERB) ambiguity attack of CVPR 2023, adapted to PAN's release.

Chen et al. (CVPR 2023, book/method.md#method-later-attacks) replace each passport layer's affine
by a normalisation
whose scale γ goes through a trainable *expanded residual block* before use, ``γ + block(γ)``
(IERB: an independent 1→10→1 MLP per channel; CERB: one C→C/8→C MLP over all channels), and
train γ, β and the block with cross-entropy only on ≤10 % of the training data. The reported
gain over optimising γ directly is that the reparameterisation lets many more scale signs flip,
so the forged sign pattern sign(ERB(γ)) is far from the authorised signature (high
bit-dissimilarity rate, BDR) while accuracy stays close to the original.

Threat model here. PAN's release is a stock network (conv → BN with the public affine γ0, β0);
the passport branch (passports, MLP, branch-1 BN statistics) was removed before release and stays
in the owner's vault. The attacker holds the release and a fraction of the training data and
wants a claim of its own: a "passport branch" of its own making (γ, β, ERB on the layers the
vault names) that is about as accurate as the release and whose scale signs form a signature it
can present. Only γ, β and the block are trained; convolutions and classifier stay frozen.

What this shows, and what it does not. PAN's signature is read from the *removed* branch
(s_γ = conv(P_γ), book/method.md#method-sign-loss), so the signs of the released γ0 are unrelated
to it: starting
from γ0, BDR before any training is the share of owner bits that disagree with sign(γ0) (BN
scales usually stay positive, so: the share of −1 bits, ≈ 50 % for random bits), and training
cannot aim at the owner's bits, which the attacker never sees. Starting from γ0 the forgery
*is* the release (little to train when the release is accurate), and its claimed signs are
sign(γ0), which anyone can read off the release; a claim far from those signs needs a random
start (``init="random"``, as CVPR 2023's Fig. 1) and is what ``release_bdr`` measures. The
attack therefore does not "erase" PAN's signature; it shows that anyone can build a
differently-signed, accurate scale branch from the release, whose self-detection is 1.0 by
construction. The owner's protocol must rule such claims out by other means (e.g. the owner's
branch is committed and timestamped before release, book/method.md#method-verification).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .batches import Data, augment_batch, model_inputs, raw_inputs
from .claims import AccuracyTest, paired_accuracy_test
from .layers import ConvNormAct, channel_view, make_norm
from .profiles import show_progress
from .recipes import Recipe, flat_fields, make_optimizer
from .rng import derive_seed
from .units import replace_module
from .vault import Vault
from .verify import Thresholds, binomial_tail, correct_predictions, evaluate

__all__ = ["ERBConfig", "ERBNormUnit", "ExpandedResidualBlock", "bit_dissimilarity",
           "erb_claim_test", "erb_forgery", "erb_sweep", "forged_scales", "scale_bits"]


class ExpandedResidualBlock(nn.Module):
    """``out = γ + block(γ)``: IERB (a 1→hidden→1 MLP per channel) or CERB (C→C/r→C).

    With ``zero_last`` the block's output layer starts at zero, so out = γ at initialisation.
    """

    def __init__(self, channels: int, kind: str = "cerb", hidden: int = 10, reduction: int = 8,
                 zero_last: bool = True, generator: torch.Generator | None = None):
        super().__init__()
        if kind not in ("cerb", "ierb"):
            raise ValueError(f"kind must be 'cerb' or 'ierb', got {kind!r}")
        self.kind = kind
        g = generator or torch.Generator().manual_seed(0)
        if kind == "ierb":  # PyTorch's default Linear init: U(±1/sqrt(fan-in)), fan-in 1 then h
            def uniform(*shape: int, bound: float = 1.0) -> nn.Parameter:
                return nn.Parameter((torch.rand(*shape, generator=g) * 2 - 1) * bound)

            self.w1, self.b1 = uniform(channels, hidden), uniform(channels, hidden)
            b = 1 / math.sqrt(hidden)
            self.w2, self.b2 = uniform(channels, hidden, bound=b), uniform(channels, bound=b)
            last = (self.w2, self.b2)
        else:
            h = max(1, channels // reduction)
            self.mlp = nn.Sequential(nn.Linear(channels, h), nn.LeakyReLU(0.01),
                                     nn.Linear(h, channels))
            for lin in (self.mlp[0], self.mlp[2]):
                nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5), generator=g)
                nn.init.uniform_(lin.bias, -lin.in_features ** -0.5, lin.in_features ** -0.5,
                                 generator=g)
            last = (self.mlp[2].weight, self.mlp[2].bias)
        if zero_last:
            with torch.no_grad():
                for p in last:
                    p.zero_()

    def forward(self, gamma: torch.Tensor) -> torch.Tensor:
        if self.kind == "cerb":
            return gamma + self.mlp(gamma)
        h = F.leaky_relu(gamma[:, None] * self.w1 + self.b1, 0.01)  # C × hidden, per channel
        return gamma + torch.einsum("ch,ch->c", h, self.w2) + self.b2


class ERBNormUnit(nn.Module):
    """A released conv unit with the attacker's scale branch: ``act(ERB(γ)·norm(conv x) + β)``.

    The conv is a frozen copy; the norm starts from the release's BN statistics (no affine).
    """

    def __init__(self, unit: ConvNormAct, kind: str, init: str, init_generator: torch.Generator,
                 erb_generator: torch.Generator, **erb_kwargs):
        super().__init__()
        if unit.norm_kind == "none":
            raise ValueError("the unit has no normalisation: its affine is folded into the conv")
        self.conv = copy.deepcopy(unit.conv).requires_grad_(False)
        c = unit.norm.weight.numel()
        ndim = 2 if isinstance(unit.conv, nn.Linear) else unit.conv.weight.dim()
        self.norm = make_norm(unit.norm_kind, c, ndim, affine=False).to(unit.norm.weight.device)
        if unit.norm_kind == "bn":
            self.norm.load_state_dict({k: v for k, v in unit.norm.state_dict().items()
                                       if k not in ("weight", "bias")})
        self.act = copy.deepcopy(unit.act)
        if init == "released":
            gamma, beta = unit.norm.weight.detach().clone(), unit.norm.bias.detach().clone()
        else:  # random signs, unit magnitude, zero shift (as DeepIPR's fake attack 2 starts)
            gamma = torch.randint(0, 2, (c,), generator=init_generator).float() * 2 - 1
            beta = torch.zeros(c)
        dev = unit.norm.weight.device
        self.gamma, self.beta = nn.Parameter(gamma.to(dev)), nn.Parameter(beta.to(dev))
        self.erb = (nn.Identity() if kind == "none" else
                    ExpandedResidualBlock(c, kind, generator=erb_generator, **erb_kwargs).to(dev))

    def scale(self) -> torch.Tensor:
        """The per-channel scale actually used, ERB(γ); its signs are the claimed signature."""
        return self.erb(self.gamma)

    def forward(self, x: torch.Tensor, branch: int = 0) -> torch.Tensor:
        if branch != 0:
            raise ValueError("a forged model has only its own (deployed) branch: use branch=0")
        z = self.norm(self.conv(x))
        scale, shift = channel_view(self.scale(), z.dim()), channel_view(self.beta, z.dim())
        return self.act(z * scale + shift)


@dataclass(frozen=True)
class ERBConfig:
    """One ERB forgery: the block, the attacker's data and optimiser, and its starting point."""

    kind: Literal["cerb", "ierb", "none"] = "cerb"  # "none": optimise γ, β directly (baseline)
    data_fraction: float = 0.1  # share of the training set the attacker holds
    init: Literal["released", "random"] = "released"  # γ0, β0 of the release, or ±1 and 0
    reestimate_bn: bool = True  # BN in train mode during the attack (batch stats, updated)
    zero_last: bool = True  # the block's output layer starts at zero: ERB(γ) = γ at epoch 0
    ierb_hidden: int = 10
    cerb_reduction: int = 8
    seed: int = 0
    recipe: Recipe = Recipe(epochs=20, optimizer="adam", lr=0.01, weight_decay=0.0,
                            milestones=())  # lr_schedule="cosine" decays it to 0 by the end

    def __post_init__(self) -> None:
        choices = {"kind": ("cerb", "ierb", "none"), "init": ("released", "random")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 0.0 < self.data_fraction <= 1.0:
            raise ValueError(f"data_fraction must be in (0, 1], got {self.data_fraction}")
        for name in ("ierb_hidden", "cerb_reduction"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def scale_bits(scale: torch.Tensor) -> torch.Tensor:
    """The ±1 bits a scale vector claims: sign(scale), with an exact zero read as +1."""
    return torch.where(scale >= 0, 1.0, -1.0).to(scale)


def forged_scales(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every ERB unit's scale ERB(γ) by module name, in forward order (detached)."""
    return {n: m.scale().detach() for n, m in model.named_modules() if isinstance(m, ERBNormUnit)}


def bit_dissimilarity(scales: dict[str, torch.Tensor], vault: Vault) -> dict:
    """BDR: share of bits where the scales' signs differ from the owner's signature (vault).

    Bit-pooled over the layers the vault names, and per layer; every named layer is needed.
    """
    per_layer, differ, total = {}, 0, 0
    for name, entry in vault.layers.items():
        if name not in scales:
            raise ValueError(f"no forged scale for the vault's passport layer {name!r}")
        owner = entry["tensors"]["signature"].to(scales[name].device)
        if owner.numel() != scales[name].numel():
            raise ValueError(f"layer {name!r}: {scales[name].numel()} scales, "
                             f"{owner.numel()} signature bits")
        d = int((scale_bits(scales[name]) != owner).sum())
        per_layer[name], differ, total = d / owner.numel(), differ + d, total + owner.numel()
    return {"pooled": differ / total, "per_layer": per_layer, "bits": total}


def _forged_model(public: nn.Module, vault: Vault, config: ERBConfig) -> nn.Module:
    """A copy of the release with the vault's passport layers replaced by ERB units.

    γ, β and the blocks draw from generators of their own, so runs that differ only in
    ``kind`` start from the same γ (and, with ``zero_last``, the same function). Seeds are
    derived, never the raw seed: a ``manual_seed(1)`` draw of ±1 would replay the signature of
    an owner keyed with ``manual_seed(1)`` (as the test fixture is) and fake a tiny BDR.
    """
    g_init = torch.Generator().manual_seed(derive_seed(config.seed, "erb", "init"))
    g_erb = torch.Generator().manual_seed(derive_seed(config.seed, "erb", "block"))
    model = copy.deepcopy(public).requires_grad_(False)
    modules = dict(model.named_modules())
    kwargs = {"hidden": config.ierb_hidden, "reduction": config.cerb_reduction,
              "zero_last": config.zero_last}
    for name in vault.layers:
        if not isinstance(modules.get(name), ConvNormAct):
            raise ValueError(f"the release has no plain conv unit {name!r} (the vault names it)")
        replace_module(model, name, ERBNormUnit(modules[name], config.kind, config.init, g_init,
                                                g_erb, **kwargs))
    return model.eval()


def _pooled_scales(model: nn.Module, vault: Vault) -> torch.Tensor:
    scales = forged_scales(model)
    return torch.cat([scales[name] for name in vault.layers])


@torch.no_grad()
def _measure(model, vault, references: dict, test, mean, std, device, batch_size) -> dict:
    bdr = bit_dissimilarity(forged_scales(model), vault)
    s = _pooled_scales(model, vault)
    claimed = scale_bits(s)  # the signature the attacker presents: its own signs
    matches = int((torch.sign(s) == claimed).sum())  # 1.0 by construction (unless s == 0)
    return {
        "accuracy": evaluate(model, test, mean, std, 0, batch_size, device),
        "bdr": bdr["pooled"], "per_layer_bdr": bdr["per_layer"], "bits": bdr["bits"],
        "claimed_detection": matches / bdr["bits"],
        "claimed_log10_p": binomial_tail(matches, bdr["bits"]),
        **{k: (claimed != bits).float().mean().item() for k, bits in references.items()},
    }


def _train_epoch(model, opt, images, labels, mean, std, config: ERBConfig, g) -> None:
    """One pass over the attacker's images: cross-entropy only, BN as the config says."""
    model.eval()
    if config.reestimate_bn:
        for m in model.modules():
            if isinstance(m, ERBNormUnit):
                m.norm.train()
    n = len(labels)
    bs = min(config.recipe.batch_size, n)
    order = torch.randperm(n, generator=g).to(labels.device)
    for i in range(0, n - bs + 1, bs):
        idx = order[i : i + bs]
        x = augment_batch(images[idx], g) if config.recipe.augment else images[idx]
        loss = F.cross_entropy(model(model_inputs(x, mean, std)), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


def erb_forgery(public: nn.Module, vault: Vault, attacker_data: Data, test: Data,
                mean, std, config: ERBConfig, device: str | torch.device = "cpu",
                progress: bool = True, desc: str = "ERB forgery", every_epoch: bool = True,
                eval_batch_size: int = 500, reference_accuracy: float | None = None,
                ) -> tuple[nn.Module, list[dict]]:
    """Train an ERB scale branch on a copy of the release (frozen weights), measuring each epoch.

    Records (epoch 0 = before training): forged and deployed test accuracy, BDR against the
    vault's signature (pooled, per layer), ``release_bdr`` (against the signs of the released
    γ0), ``sign_changes`` (against epoch 0), self-detection of the claimed signs, config flags.
    ``reference_accuracy``: the release's test accuracy if known (else it is evaluated).
    """
    # data subset and batches; one permutation per seed, so subsets nest across fractions
    g = torch.Generator().manual_seed(derive_seed(config.seed, "erb", "data"))
    release = copy.deepcopy(public).to(device)  # the caller's model is never moved or changed
    model = _forged_model(release, vault, config).to(device)
    params = [p for m in model.modules() if isinstance(m, ERBNormUnit)
              for p in (m.gamma, m.beta, *m.erb.parameters())]
    for p in params:
        p.requires_grad_(True)
    opt = make_optimizer(params, config.recipe)
    lrs = config.recipe.epoch_lrs()
    n = max(1, int(round(config.data_fraction * len(attacker_data))))  # as forge_passports
    chosen = torch.randperm(len(attacker_data), generator=g)[:n]
    images = raw_inputs(attacker_data)[chosen].to(device)
    labels = attacker_data.labels[chosen].to(device)
    deployed = (evaluate(release, test, mean, std, 0, eval_batch_size, device)
                if reference_accuracy is None else reference_accuracy)
    units = dict(release.named_modules())
    references = {  # share of claimed bits that differ from the release's signs / epoch 0
        "release_bdr": scale_bits(torch.cat([units[name].norm.weight for name in vault.layers])),
        "sign_changes": scale_bits(_pooled_scales(model, vault)),
    }
    flags = {**flat_fields(config), "attacker_images": n, "deployed_accuracy": deployed}

    def record(epoch: int) -> dict:
        r = _measure(model, vault, references, test, mean, std, device, eval_batch_size)
        return {"epoch": epoch, **flags, **r, "accuracy_drop": deployed - r["accuracy"]}

    records = [record(0)]
    epochs = range(1, config.recipe.epochs + 1)
    for epoch in tqdm(epochs, desc=desc, disable=not show_progress(progress)):
        for group in opt.param_groups:
            group["lr"] = lrs[epoch - 1]
        _train_epoch(model, opt, images, labels, mean, std, config, g)
        if every_epoch or epoch == config.recipe.epochs:
            records.append(record(epoch))
    for p in params:
        p.requires_grad_(False)
    return model, records


def erb_claim_test(suspect: nn.Module, forged: nn.Module, test: Data, mean, std, num_classes: int,
                   thresholds: Thresholds | None = None, batch_size: int = 500,
                   seed: int = 0) -> AccuracyTest:
    """The decision rule's accuracy test for an ERB claim: its scale branch against the suspect.

    The claim's signature is its own scales' signs, read back in full by construction, so the
    signature test cannot stop it; accuracy (paired) and the claim protocol are what remain.
    """
    (deployed,) = correct_predictions(suspect, test, mean, std, batch_size, branch=0)
    (claimed,) = correct_predictions(forged, test, mean, std, batch_size, branch=0)
    return paired_accuracy_test(deployed, claimed, num_classes,
                                (thresholds or Thresholds()).min_retention, seed=seed)


def erb_sweep(public: nn.Module, vault: Vault, attacker_data: Data, test: Data,
              mean, std, config: ERBConfig | None = None,
              kinds: tuple[str, ...] = ("cerb", "ierb", "none"),
              fractions: tuple[float, ...] = (0.01, 0.05, 0.1),
              device: str | torch.device = "cpu", progress: bool = True,
              eval_batch_size: int = 500) -> list[dict]:
    """The final record of one ERB forgery per (kind, data fraction), for accuracy/BDR plots.

    Every run uses ``config`` with only ``kind`` and ``data_fraction`` replaced; the release's
    accuracy is evaluated once for all of them.
    """
    config = config or ERBConfig()
    runs = [(k, f) for k in kinds for f in fractions]
    deployed = evaluate(public, test, mean, std, 0, eval_batch_size, device)
    out = []
    for kind, fraction in tqdm(runs, desc="ERB sweep", disable=not show_progress(progress)):
        cfg = replace(config, kind=kind, data_fraction=fraction)
        _, records = erb_forgery(public, vault, attacker_data, test, mean, std, cfg, device,
                                 progress=False, every_epoch=False,
                                 eval_batch_size=eval_batch_size, reference_accuracy=deployed)
        out.append(records[-1])
    return out
