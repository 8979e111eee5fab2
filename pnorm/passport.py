"""Signatures (bits ⇄ text), passports (random or from images) and the owner's keying step.

By default the owner's keys come from the operating system's cryptographic randomness, so
nobody can regenerate them from the code; a ``torch.Generator`` the caller seeds is for
reproducible teaching only (the original fixed them with ``np.random.seed(0)`` at import,
book/method.md#method-quirks).
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Sequence

import torch
from torch import nn

from .units import passport_layers

__all__ = [
    "bits_to_text",
    "capacity",
    "key_model",
    "secret_generator",
    "signature_detection",
    "make_signature",
    "passports_from_images",
    "random_passports",
    "text_to_bits",
]


def _check_message(message: object) -> None:
    """A signature message is text: refuse bytes and anything else with a clear TypeError."""
    if not isinstance(message, str):
        hint = " (decode it first, e.g. message.decode('utf-8'))" \
            if isinstance(message, bytes | bytearray) else ""
        raise TypeError(f"a signature message must be a str, got {type(message).__name__} "
                        f"{message!r:.60}{hint}")


def text_to_bits(text: str) -> torch.Tensor:
    """UTF-8 bytes of ``text`` as ±1 bits, most significant bit first (+1 = bit 1)."""
    _check_message(text)
    data = text.encode("utf-8")
    bits = [(byte >> (7 - i)) & 1 for byte in data for i in range(8)]
    return torch.tensor(bits, dtype=torch.float32) * 2 - 1


def bits_to_text(bits: torch.Tensor, n_bytes: int | None = None) -> str:
    """Decode ±1 (or signed real) bits back to text; undecodable bytes show as U+FFFD."""
    b = (torch.as_tensor(bits).flatten() > 0).to(torch.int64).tolist()
    n = len(b) // 8 if n_bytes is None else n_bytes
    if n * 8 > len(b):
        raise ValueError(f"asked for {n} bytes but only {len(b)} bits ({len(b) // 8} bytes) given")
    data = bytes(int("".join(map(str, b[8 * i : 8 * i + 8])), 2) for i in range(n))
    return data.decode("utf-8", errors="replace")


def capacity(model: nn.Module) -> int:
    """Number of signature bits the model's passport layers can carry (one per channel)."""
    return sum(layer.channels for layer in passport_layers(model).values())


def make_signature(
    n_bits: int, generator: torch.Generator, message: str | None = None
) -> torch.Tensor:
    """An ``n_bits`` ±1 signature: the message's bits first, the rest random from ``generator``.

    A message longer than the capacity is an error that states the capacity.
    """
    if message is not None:
        _check_message(message)
    bits = torch.randint(0, 2, (n_bits,), generator=generator).float() * 2 - 1
    if message:
        msg = text_to_bits(message)
        if msg.numel() > n_bits:
            raise ValueError(
                f"signature message {message!r} needs {msg.numel()} bits "
                f"({msg.numel() // 8} UTF-8 bytes) but the passport layers hold only "
                f"{n_bits} bits ({n_bits // 8} bytes); shorten it or add passport layers"
            )
        bits[: msg.numel()] = msg
    return bits


def random_passports(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """A passport drawn element-wise from U(-1, 1) (the original's ``--key-type random``)."""
    return torch.rand(tuple(shape), generator=generator) * 2 - 1


@torch.no_grad()
def passports_from_images(
    plain_model: nn.Module,
    images: torch.Tensor,
    layer_names: Sequence[str],
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Passports made of the activations that enter each named layer of a plain network.

    ``images`` (n×3×H×W, normalised) go through ``plain_model`` in eval mode; the n candidate
    maps of each layer are reduced to one 1×C×H×W passport by *passport selection*: pick one
    whole image at the input layer, otherwise channel j comes from image ``j mod n``, from a
    randomly chosen channel not used before (book/method.md#method-passports).
    """
    captured: dict[str, torch.Tensor] = {}
    modules = dict(plain_model.named_modules())
    missing = [n for n in layer_names if n not in modules]
    if missing:
        raise ValueError(f"layer(s) {missing} not found in the plain model")
    hooks = [
        modules[name].register_forward_pre_hook(
            lambda _m, args, name=name: captured.__setitem__(name, args[0].detach())
        )
        for name in layer_names
    ]
    was_training = plain_model.training
    try:
        plain_model.eval()
        plain_model(images)
    finally:
        plain_model.train(was_training)
        for h in hooks:
            h.remove()
    return {name: _select_passport(captured[name], generator) for name in layer_names}


def _select_passport(candidates: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Reduce n candidate maps (n×C×...) to one passport (1×C×...) by passport selection."""
    n, c = candidates.shape[:2]
    if c == 3:
        pick = int(torch.randint(0, n, (1,), generator=generator))
        return candidates[pick : pick + 1].clone()
    order = torch.randperm(c, generator=generator)
    channels = [candidates[j % n, order[j]] for j in range(c)]
    return torch.stack(channels).unsqueeze(0)


def secret_generator() -> tuple[torch.Generator, int]:
    """A generator seeded with 63 bits from the OS's cryptographic randomness, and its seed.

    The seed is a secret: keep it only where the passports are kept (the vault).
    """
    seed = secrets.randbits(63)
    return torch.Generator().manual_seed(seed), seed


@torch.no_grad()
def key_model(
    model: nn.Module,
    generator: torch.Generator | None = None,
    message: str | None = None,
    passports: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Give every passport layer its passports and signature bits; returns the full signature.

    Random U(-1, 1) passports are drawn per layer in forward order (gamma, then beta) unless
    ``passports`` maps a layer name to ``(P_gamma, P_beta)``. Without ``generator`` the keys
    come from the OS's cryptographic randomness (``secret_generator``); a seeded generator
    makes them reproducible, and so guessable: for teaching, not for a real owner.
    """
    if generator is None:
        generator, _ = secret_generator()
    layers = passport_layers(model)
    if not layers:
        raise ValueError("the model has no passport layers to key")
    unknown = set(passports or {}) - set(layers)
    if unknown:
        raise ValueError(f"passports given for unknown layer(s) {sorted(unknown)}")
    bits = make_signature(capacity(model), generator, message)
    start = 0
    for name, layer in layers.items():
        if passports and name in passports:
            p_gamma, p_beta = passports[name]
        else:
            p_gamma = random_passports(layer.passport_shape, generator)
            p_beta = random_passports(layer.passport_shape, generator)
        for given, buffer in ((p_gamma, layer.passport_gamma), (p_beta, layer.passport_beta)):
            if tuple(given.shape) != tuple(buffer.shape):
                raise ValueError(
                    f"passport for layer {name!r} has shape {tuple(given.shape)}, "
                    f"expected {tuple(buffer.shape)} (1 × C_in × input size of the layer)"
                )
            buffer.copy_(given)
        layer.signature.copy_(bits[start : start + layer.channels])
        start += layer.channels
    return bits


@torch.no_grad()
def signature_detection(
    model: nn.Module,
    passports: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    signature: torch.Tensor | None = None,
    layers: Collection[str] | None = None,
) -> dict:
    """Signature detection rate: share of channels with sign(s_gamma) equal to the bit.

    Per layer, the mean of per-layer rates (what the original reports) and bit-pooled, with
    the pooled match count. ``passports``/``signature`` override the layers' own (forgeries);
    ``layers`` restricts the count to those passport layers (e.g. all but a replaced head).
    """
    per_layer, matches, total, start = {}, 0, 0, 0
    for name, layer in passport_layers(model).items():
        bits = layer.signature if signature is None else signature[start : start + layer.channels]
        start += layer.channels
        if layers is not None and name not in layers:
            continue
        pg, pb = passports[name] if passports and name in passports else (None, None)
        s_gamma, _ = layer.passport_scales(pg, pb)
        hit = (torch.sign(s_gamma) == bits.to(s_gamma.device)).sum().item()
        per_layer[name] = hit / layer.channels
        matches += int(hit)
        total += layer.channels
    if not total:
        raise ValueError("the model has no passport layers: no signature to detect")
    return {
        "per_layer": per_layer,
        "mean_of_layers": sum(per_layer.values()) / len(per_layer),
        "pooled": matches / total,
        "matches": matches,
        "bits": total,
    }
