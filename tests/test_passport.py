"""Signatures (bits ⇄ text, capacity), random passports, keying, and passports from images."""

import pytest
import torch

from pnorm.alexnet import ALEXNET_LAYERS, AlexNetCIFAR
from pnorm.passport import (
    bits_to_text,
    capacity,
    key_model,
    make_signature,
    passports_from_images,
    random_passports,
    text_to_bits,
)
from pnorm.units import passport_layers

WIDTH = 0.125  # channels 8, 24, 48, 32, 32 -> 144 signature bits


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _byte_bits(byte: int) -> list[float]:
    return [1.0 if (byte >> (7 - i)) & 1 else -1.0 for i in range(8)]


# ----------------------------------------------------------------------------- bits <-> text


def test_known_byte_is_msb_first():
    assert text_to_bits("A").tolist() == [-1, 1, -1, -1, -1, -1, -1, 1]  # 0x41
    assert text_to_bits("A").dtype == torch.float32


@pytest.mark.parametrize("text", ["owner", "Ω owner ✓", "ü", "🔑 key", ""])
def test_text_round_trip_is_utf8_with_8_bits_per_byte(text):
    bits = text_to_bits(text)
    data = text.encode("utf-8")
    assert bits.numel() == 8 * len(data)
    expected = [b for byte in data for b in _byte_bits(byte)]
    assert bits.tolist() == expected
    assert bits_to_text(bits) == text


def test_non_ascii_code_points_do_not_shift_the_layout():
    # The original wrote format(ord(c), 'b') per character: 'Ω' (U+03A9) became 10 bits and
    # shifted every following character. UTF-8 keeps byte boundaries at multiples of 8.
    bits = text_to_bits("ΩA")
    assert bits.numel() == 24  # 0xCE 0xA9 'A'
    assert bits[16:].tolist() == text_to_bits("A").tolist()
    assert bits[:16].tolist() == _byte_bits(0xCE) + _byte_bits(0xA9)


def test_bits_to_text_reads_signs_and_prefixes():
    bits = text_to_bits("owner") * 0.37  # any signed real values decode by their sign
    assert bits_to_text(bits) == "owner"
    assert bits_to_text(torch.cat([text_to_bits("own"), torch.ones(13)]), n_bytes=3) == "own"
    with pytest.raises(ValueError, match="bytes"):
        bits_to_text(text_to_bits("ab"), n_bytes=3)


# ----------------------------------------------------------------------------- signatures


def test_capacity_counts_passport_channels():
    assert capacity(AlexNetCIFAR(width=WIDTH)) == 8 + 24 + 48 + 32 + 32
    assert capacity(AlexNetCIFAR(width=WIDTH, passport_layers=["conv4", "conv5"])) == 64
    assert capacity(AlexNetCIFAR(width=WIDTH, scheme="plain")) == 0


def test_make_signature_puts_the_message_first_and_fills_from_the_generator():
    msg = "Ω owner ✓"
    n = 144
    sig = make_signature(n, _gen(5), msg)
    m = text_to_bits(msg).numel()
    assert sig.shape == (n,)
    assert set(sig.unique().tolist()) == {-1.0, 1.0}
    assert sig[:m].tolist() == text_to_bits(msg).tolist()
    assert bits_to_text(sig[:m]) == msg
    assert torch.equal(sig, make_signature(n, _gen(5), msg))  # same seed -> same bits
    other = make_signature(n, _gen(6), msg)
    assert torch.equal(other[:m], sig[:m])
    assert not torch.equal(other[m:], sig[m:])  # the filler comes from the generator
    tail = sig[m:]
    assert (tail == 1).any() and (tail == -1).any()
    no_msg = make_signature(n, _gen(5))
    assert set(no_msg.unique().tolist()) == {-1.0, 1.0}


def test_message_longer_than_capacity_states_the_capacity():
    model = AlexNetCIFAR(width=WIDTH)
    cap = capacity(model)
    too_long = "x" * (cap // 8 + 1)
    with pytest.raises(ValueError, match=rf"{cap} bits"):
        make_signature(cap, _gen(0), too_long)
    with pytest.raises(ValueError, match=rf"{cap} bits"):
        key_model(model, _gen(0), message=too_long)
    # Multi-byte characters count by their UTF-8 bytes: 9 × 'Ω' = 18 bytes = 144 bits fits,
    # one more byte does not.
    key_model(AlexNetCIFAR(width=WIDTH), _gen(0), message="Ω" * 9)
    with pytest.raises(ValueError, match=rf"{cap} bits"):
        key_model(AlexNetCIFAR(width=WIDTH), _gen(0), message="Ω" * 9 + "a")


@pytest.mark.parametrize("message", [b"owner", b"", bytearray(b"owner"), 42])
def test_a_message_that_is_not_text_is_a_type_error(message):
    with pytest.raises(TypeError, match=r"signature message must be a str") as info:
        make_signature(64, _gen(0), message)
    if isinstance(message, bytes | bytearray):
        assert "decode it first" in str(info.value)
    with pytest.raises(TypeError, match="must be a str"):
        text_to_bits(message)
    model = AlexNetCIFAR(width=WIDTH, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError, match="must be a str"):
        key_model(model, _gen(1), message=message)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------- key_model


def _passports(model):
    return {
        n: (lay.passport_gamma.clone(), lay.passport_beta.clone(), lay.signature.clone())
        for n, lay in passport_layers(model).items()
    }


def test_random_passports_are_uniform_in_range():
    p = random_passports((1, 3, 32, 32), _gen(0))
    assert p.shape == (1, 3, 32, 32)
    assert p.min() >= -1 and p.max() <= 1
    assert p.min() < -0.9 and p.max() > 0.9  # spans the range, not a constant
    assert abs(p.mean().item()) < 0.05


def test_key_model_gives_every_layer_passports_and_signature_bits():
    model = AlexNetCIFAR(width=WIDTH, seed=0)
    bits = key_model(model, _gen(1), message="owner")
    layers = passport_layers(model)
    assert list(layers) == list(ALEXNET_LAYERS)
    assert torch.equal(bits, torch.cat([lay.signature for lay in layers.values()]))
    assert bits_to_text(layers["conv1"].signature, n_bytes=1) == "o"  # message starts at conv1
    assert bits_to_text(bits, n_bytes=5) == "owner"
    for lay in layers.values():
        for p in (lay.passport_gamma, lay.passport_beta):
            assert p.shape == lay.passport_shape
            assert p.shape[0] == 1
            assert p.min() >= -1 and p.max() <= 1 and p.std() > 0.4
        assert not torch.equal(lay.passport_gamma, lay.passport_beta)
    assert layers["conv2"].passport_shape == (1, 8, 16, 16)


def test_key_model_is_reproducible_per_seed():
    a, b, c = (AlexNetCIFAR(width=WIDTH, seed=0) for _ in range(3))
    key_model(a, _gen(1))
    key_model(b, _gen(1))
    key_model(c, _gen(2))
    pa, pb, pc = _passports(a), _passports(b), _passports(c)
    for name in pa:
        for ta, tb in zip(pa[name], pb[name], strict=True):
            assert torch.equal(ta, tb)
        assert not torch.equal(pa[name][0], pc[name][0])
        assert not torch.equal(pa[name][1], pc[name][1])
    assert not torch.equal(
        torch.cat([v[2] for v in pa.values()]), torch.cat([v[2] for v in pc.values()])
    )


def test_given_passports_are_used_and_checked():
    model = AlexNetCIFAR(width=WIDTH, seed=0)
    shape = model.conv3.passport_shape
    pg, pb = torch.full(shape, 0.25), torch.full(shape, -0.5)
    key_model(model, _gen(1), passports={"conv3": (pg, pb)})
    assert torch.equal(model.conv3.passport_gamma, pg)
    assert torch.equal(model.conv3.passport_beta, pb)
    assert model.conv4.passport_gamma.std() > 0.4  # the others are still drawn

    wrong = torch.zeros(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"'conv2'.*\(1, 3, 16, 16\).*\(1, 8, 16, 16\)"):
        key_model(model, _gen(1), passports={"conv2": (wrong, wrong)})
    with pytest.raises(ValueError, match="'conv2'"):
        key_model(model, _gen(1), passports={"conv2": (torch.zeros(1, 8, 16, 16), wrong)})
    with pytest.raises(ValueError, match="unknown layer.*fc9"):
        key_model(model, _gen(1), passports={"fc9": (pg, pb)})
    # conv1 is a plain unit in this model, so passports for it are an error too.
    partial = AlexNetCIFAR(width=WIDTH, passport_layers=["conv4", "conv5"])
    with pytest.raises(ValueError, match="unknown layer.*conv1"):
        key_model(partial, _gen(1), passports={"conv1": (pg, pb)})
    with pytest.raises(ValueError, match="no passport layers"):
        key_model(AlexNetCIFAR(width=WIDTH, scheme="plain"), _gen(1))


# ----------------------------------------------------------------------------- from images


def _capture_inputs(model, images, names):
    """The activations entering each named unit, captured independently of pnorm.passport."""
    seen = {}
    modules = dict(model.named_modules())
    hooks = [
        modules[n].register_forward_pre_hook(
            lambda _m, args, n=n: seen.__setitem__(n, args[0].detach().clone())
        )
        for n in names
    ]
    model.eval()
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    return seen


@pytest.fixture(scope="module")
def plain_and_images():
    plain = AlexNetCIFAR(width=WIDTH, scheme="plain", seed=0)
    plain.train()
    with torch.no_grad():  # give BN non-trivial running statistics
        for _ in range(2):
            plain(torch.randn(16, 3, 32, 32, generator=_gen(9)))
    images = torch.randn(5, 3, 32, 32, generator=_gen(3))
    return plain, images


def test_passports_from_images_follow_passport_selection(plain_and_images):
    plain, images = plain_and_images
    n = images.shape[0]
    plain.train()
    passports = passports_from_images(plain, images, ALEXNET_LAYERS, _gen(11))
    assert plain.training  # mode restored
    pan = AlexNetCIFAR(width=WIDTH, scheme="pan")
    expected_shapes = {k: lay.passport_shape for k, lay in passport_layers(pan).items()}
    assert {k: tuple(v.shape) for k, v in passports.items()} == expected_shapes

    # conv1: exactly one whole input image.
    assert any(torch.equal(passports["conv1"][0], img) for img in images)

    captured = _capture_inputs(plain, images, ALEXNET_LAYERS)
    for name in ALEXNET_LAYERS[1:]:
        p, acts = passports[name][0], captured[name]
        used: dict[int, list[int]] = {}
        for j in range(p.shape[0]):
            src = j % n  # channel j comes from image j mod n
            matches = [c for c in range(acts.shape[1]) if torch.equal(p[j], acts[src, c])]
            assert matches, f"{name}: channel {j} is not a channel of image {src}"
            used.setdefault(src, []).append(matches[0])
        for src, chans in used.items():  # a channel of an image is used at most once
            assert len(set(chans)) == len(chans), (name, src)
        # The selection is scrambled, not simply channel j of image j mod n everywhere.
        assert not all(torch.equal(p[j], acts[j % n, j]) for j in range(p.shape[0]))

    # The passports fit a PAN model of the same width.
    key_model(pan, _gen(0), passports={k: (v, v) for k, v in passports.items()})
    assert torch.equal(pan.conv3.passport_gamma, passports["conv3"])


def test_passports_from_images_depend_on_the_generator(plain_and_images):
    plain, images = plain_and_images
    a = passports_from_images(plain, images, ALEXNET_LAYERS, _gen(1))
    b = passports_from_images(plain, images, ALEXNET_LAYERS, _gen(1))
    c = passports_from_images(plain, images, ALEXNET_LAYERS, _gen(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    for k in ALEXNET_LAYERS[1:]:
        assert not torch.equal(a[k], c[k])
    with pytest.raises(ValueError, match="fc9"):
        passports_from_images(plain, images, ["conv2", "fc9"], _gen(1))
