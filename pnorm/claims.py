"""Calibrated evidence for an ownership claim: empirical nulls, a paired accuracy test, commitments.

The binomial p-value of the signature assumes independent fair-coin bits; forged passports give
strongly correlated bits, so the chance that a wrong passport matches this well is taken from
empirical nulls instead (book/method.md#method-verification). The accuracy test compares the
two branches on the same samples. A commitment published at release time lets a verifier
reject vaults made afterwards, which stops forgeries built from the release alone.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .batches import Data, model_inputs, raw_inputs
from .passport import passports_from_images, random_passports, signature_detection
from .units import passport_layers
from .vault import Vault

__all__ = [
    "AccuracyTest",
    "Commitment",
    "SignatureNull",
    "beats_chance",
    "binomial_tail",
    "check_commitment",
    "commit",
    "error_rate_upper95",
    "module_digest",
    "image_passport_null",
    "independent_model_null",
    "paired_accuracy_test",
    "random_passport_null",
    "retention",
    "vault_digest",
]

MIN_TEST_SIZE = 100  # labelled samples below which an accuracy comparison says nothing useful


@dataclass
class SignatureNull:
    """Matched-bit counts of claims that should fail, and p-values of an observed count.

    ``empirical_p`` is the (k+1)/(n+1) tail, valid for any null but never below 1/(n+1);
    ``fitted_log10_p`` extrapolates with a normal fitted to the counts (an assumption: a tail no
    heavier than Gaussian), and ``naive_log10_p`` is the binomial of independent fair bits.
    """

    name: str
    matches: list[int]
    bits: int

    def empirical_p(self, k: int) -> float:
        return (sum(m >= k for m in self.matches) + 1) / (len(self.matches) + 1)

    def fitted_log10_p(self, k: int) -> float:
        n = len(self.matches)
        if n < 2:
            raise ValueError(f"the {self.name} null needs at least 2 samples to fit, has {n}")
        mean = sum(self.matches) / n
        sd = max(math.sqrt(sum((m - mean) ** 2 for m in self.matches) / (n - 1)), 0.5)
        z = (k - 0.5 - mean) / sd  # continuity correction: counts are integers
        return _log10_normal_tail(z)

    def naive_log10_p(self, k: int) -> float:
        return binomial_tail(k, self.bits)

    def summary(self, k: int) -> dict:
        """One table row: the null's spread against independent bits, and the three p-values."""
        n = len(self.matches)
        mean = sum(self.matches) / n
        sd = math.sqrt(sum((m - mean) ** 2 for m in self.matches) / max(1, n - 1))
        return {"null": self.name, "samples": n, "bits": self.bits, "mean matches": mean,
                "sd matches": sd, "sd if independent": math.sqrt(self.bits) / 2,
                "max matches": max(self.matches), "observed": k,
                "empirical p": self.empirical_p(k), "fitted log10 p": self.fitted_log10_p(k),
                "naive log10 p": self.naive_log10_p(k)}


def _log10_normal_tail(z: float) -> float:
    """log10 P(Z >= z) for a standard normal, accurate far into the tail."""
    if z < 5:
        return math.log10(max(0.5 * math.erfc(z / math.sqrt(2)), 1e-300))
    # Mills ratio: P(Z >= z) ≈ φ(z)/z · (1 - 1/z² + 3/z⁴)
    log_phi = -0.5 * z * z - 0.5 * math.log(2 * math.pi)
    return (log_phi - math.log(z) + math.log1p(-1 / z**2 + 3 / z**4)) / math.log(10)


def binomial_tail(k: int, n: int, p: float = 0.5) -> float:
    """log10 P(X >= k) for X ~ Binomial(n, p), exact (big integers for p = 1/2).

    Returned as a log10 because 1,000 matching bits give probabilities far below 1e-308.
    """
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if p == 0.5:
        count = sum(math.comb(n, i) for i in range(k, n + 1))
        return math.log10(count) - n * math.log10(2)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
        + i * math.log(p) + (n - i) * math.log1p(-p)
        for i in range(k, n + 1)
    ]
    top = max(terms)
    return (top + math.log(sum(math.exp(t - top) for t in terms))) / math.log(10)


def _matches(model: nn.Module, signature: torch.Tensor,
             passports: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> int:
    """Channels whose sign(s_gamma) equals the claimed bit, over every passport layer."""
    return signature_detection(model, passports, signature)["matches"]


def _null(name: str, protected: nn.Module, signature: torch.Tensor, n: int,
          draw: Callable[[], dict[str, tuple[torch.Tensor, torch.Tensor]]]) -> SignatureNull:
    return SignatureNull(name, [_matches(protected, signature, draw()) for _ in range(n)],
                         int(signature.numel()))


def random_passport_null(protected: nn.Module, signature: torch.Tensor, n: int = 200,
                         seed: int = 0) -> SignatureNull:
    """The owner's claim with ``n`` random U(-1, 1) passports in place of the true ones."""
    g = torch.Generator().manual_seed(seed)
    layers = passport_layers(protected)

    def draw() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        device = next(protected.parameters()).device
        return {name: (random_passports(la.passport_shape, g).to(device),
                       random_passports(la.passport_shape, g).to(device))
                for name, la in layers.items()}

    return _null("random passports", protected, signature, n, draw)


def image_passport_null(protected: nn.Module, public: nn.Module, signature: torch.Tensor,
                        images: Data, mean: Sequence[float] | None,
                        std: Sequence[float] | None, n: int = 100, per_draw: int = 20,
                        seed: int = 0) -> SignatureNull:
    """Passports made from ``per_draw`` random images through the release: a cheap forger.

    DeepIPR's first fake attack, with the attacker's best plain network, the release itself.
    """
    g = torch.Generator().manual_seed(seed)
    names = list(passport_layers(protected))
    device = next(protected.parameters()).device
    raw = raw_inputs(images)
    if len(raw) < per_draw:
        raise ValueError(f"image passports need at least {per_draw} images, got {len(raw)}")

    def draw() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        pick = torch.randperm(len(raw), generator=g)[: 2 * per_draw] % len(raw)
        x = model_inputs(raw[pick].to(device), mean, std)
        pg = passports_from_images(public, x[:per_draw], names, g)
        pb = passports_from_images(public, x[per_draw:], names, g)
        return {name: (pg[name], pb[name]) for name in names}

    return _null("image passports", protected, signature, n, draw)


def independent_model_null(vault: Vault, models: Sequence[nn.Module]) -> SignatureNull:
    """The owner's vault attached to models trained without it (plain, or keyed by others)."""
    if not models:
        raise ValueError("independent_model_null needs at least one independently trained model")
    counts = [_matches(vault.attach(m), vault.signature) for m in models]
    return SignatureNull("independent models", counts, int(vault.signature.numel()))


def retention(accuracy0: float, accuracy1: float, chance: float) -> float:
    """How much of the deployed branch's accuracy above chance the passport branch keeps.

    1 = all of it, 0 = the passport branch is at chance. A wrong passport drives it to about 0;
    damage hurts the passport branch more than the deployed one (chapter 3 measures how much).
    """
    return (accuracy1 - chance) / max(accuracy0 - chance, 1e-9)


@dataclass
class AccuracyTest:
    """Passport branch against deployed branch on the same samples (a paired bootstrap).

    ``applicable`` is False when the deployed branch is not better than chance on this test
    set: then neither branch's accuracy says anything, and the claim cannot rest on it.
    ``passed``: the passport branch beats chance too (the passport unlocks the network) and,
    when ``min_retention`` > 0, keeps that share of the deployed branch's skill.
    """

    n: int
    accuracy0: float
    accuracy1: float
    difference_low: float  # the 95 % interval of accuracy1 - accuracy0
    difference_high: float
    retention_low: float  # lower end of the 95 % interval of ``retention``
    chance: float
    applicable: bool
    passport_beats_chance: bool
    min_retention: float = 0.0
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        kept = self.min_retention <= 0 or self.retention_low >= self.min_retention
        self.passed = self.applicable and self.passport_beats_chance and kept


def beats_chance(accuracy: float, n: int, chance: float) -> bool:
    """Whether an accuracy on ``n`` samples is above ``chance`` (one-sided 99 %, normal approx.)."""
    return accuracy > chance + 2.326 * math.sqrt(chance * (1 - chance) / n)


def paired_accuracy_test(correct0: torch.Tensor, correct1: torch.Tensor, num_classes: int,
                         min_retention: float = 0.0, resamples: int = 2000,
                         seed: int = 0) -> AccuracyTest:
    """Does the passport branch work where the deployed one does (paired, 95 % bootstrap)?

    ``correct0``/``correct1`` say per test sample whether each branch was right; the same
    bootstrap resamples give intervals of the accuracy difference and of ``retention``. Not
    applicable unless the deployed branch beats chance (1/num_classes); fewer than
    ``MIN_TEST_SIZE`` samples are refused.
    """
    c0, c1 = correct0.flatten().float().cpu(), correct1.flatten().float().cpu()
    n = len(c0)
    if n != len(c1):
        raise ValueError(f"the branches were scored on {n} and {len(c1)} samples; pair them")
    if n < MIN_TEST_SIZE:
        raise ValueError(f"an accuracy test needs at least {MIN_TEST_SIZE} labelled samples, "
                         f"got {n}: the comparison would be noise")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (resamples, n), generator=g)
    acc0s, acc1s = c0[idx].mean(1), c1[idx].mean(1)
    chance = 1.0 / num_classes

    def interval(values: torch.Tensor) -> tuple[float, float]:
        v = values.sort().values
        return float(v[int(0.025 * resamples)]), float(v[int(0.975 * resamples) - 1])

    low, high = interval(acc1s - acc0s)
    kept_low, _ = interval((acc1s - chance) / (acc0s - chance).clamp_min(1e-9))
    acc0, acc1 = float(c0.mean()), float(c1.mean())
    return AccuracyTest(n, acc0, acc1, low, high, kept_low, chance,
                        beats_chance(acc0, n, chance), beats_chance(acc1, n, chance),
                        min_retention)


def error_rate_upper95(errors: int, n: int) -> float:
    """One-sided 95 % Clopper-Pearson upper bound of an error rate seen ``errors`` times in ``n``.

    The p at which seeing at most ``errors`` errors has probability 5 %; 1 - 0.05^(1/n) for 0.
    """
    if not 0 <= errors <= n or n == 0:
        raise ValueError(f"need 0 <= errors <= n and n > 0, got errors={errors}, n={n}")
    if errors == n:
        return 1.0

    def cdf(p: float) -> float:
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(errors + 1))

    lo, hi = errors / n, 1.0
    for _ in range(60):  # bisection: cdf falls as p grows
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) > 0.05 else (lo, mid)
    return hi


# ------------------------------------------------------------------ claim protocol


def _digest(tensors: Iterable[tuple[str, torch.Tensor]], extra: bytes = b"") -> str:
    """SHA-256 over named tensors (name, dtype, shape and bytes, in the order given)."""
    h = hashlib.sha256()
    for name, tensor in tensors:
        t = tensor.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(extra)
    return h.hexdigest()


def vault_digest(vault: Vault) -> str:
    """SHA-256 over everything that makes the owner's private branch: passports, signature,
    MLPs, branch-1 statistics, in a fixed order. Changing any secret changes the digest."""
    named = ((f"{name}/{key}", tensors[key]) for name in sorted(vault.layers)
             for tensors in [vault.layers[name]["tensors"]] for key in sorted(tensors))
    return _digest(named, json.dumps(vault.arch, sort_keys=True).encode())


def module_digest(module: nn.Module) -> str:
    """SHA-256 over a module's state (sorted by name): the commitment for a claim whose private
    branch is not a PAN vault, e.g. the scale branch of an ERB forgery."""
    return _digest(sorted(module.state_dict().items()))


@dataclass(frozen=True)
class Commitment:
    """What the owner publishes when releasing: the vault's digest, the release's digest and
    the time a trusted timestamping service (or a public ledger) vouches for."""

    vault_sha256: str
    release_sha256: str
    timestamp: float  # seconds since the epoch, as vouched for by the timestamp authority


def commit(vault: Vault, timestamp: float) -> Commitment:
    """The commitment an owner publishes with a release (``vault.public_sha256`` names it)."""
    if not vault.public_sha256:
        raise ValueError("the vault does not record its release (public_sha256); make it with "
                         "Vault.from_model(..., public_model=export_public(model))")
    return Commitment(vault_digest(vault), vault.public_sha256, float(timestamp))


def check_commitment(claim: Vault | str, commitments: Sequence[Commitment],
                     suspect_first_seen: float) -> tuple[bool, str]:
    """Accept a claim only if its vault was committed before the suspect model appeared.

    ``claim``: the claimant's vault, or the digest of its private branch (``module_digest``).
    Returns (accepted, reason). A vault built after the release, however well it verifies,
    matches no commitment that old: this stops forgeries made from the release alone. It
    assumes honest timestamps and that the owner committed before anyone else could.
    """
    digest = claim if isinstance(claim, str) else vault_digest(claim)
    mine = [c for c in commitments if c.vault_sha256 == digest]
    if not mine:
        return False, "no published commitment matches this vault"
    earliest = min(c.timestamp for c in mine)
    if earliest >= suspect_first_seen:
        return False, "the vault was committed only after the suspect model appeared"
    return True, "the vault was committed before the suspect model appeared"
