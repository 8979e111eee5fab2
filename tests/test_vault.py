"""The owner's vault: round trip, re-attachment to public weights, and damaged or foreign files."""

import copy
import json

import pytest
import torch

from pnorm.alexnet import AlexNetCIFAR
from pnorm.fileio import state_sha256
from pnorm.models import export_public
from pnorm.passport import bits_to_text, key_model
from pnorm.synthetic_images import abstract_trigger_set
from pnorm.training import TrainConfig, training_step
from pnorm.units import passport_layers
from pnorm.vault import Vault, VaultError
from pnorm.verify import signature_detection

MESSAGE = "Ω owner ✓"
SEEDS = {"model": 0, "passports": 1}


@pytest.fixture(scope="module")
def owner():
    """A keyed PAN AlexNet with non-trivial weights and BN statistics in both branches."""
    model = AlexNetCIFAR(width=0.125, scheme="pan", seed=SEEDS["model"])
    bits = key_model(model, torch.Generator().manual_seed(SEEDS["passports"]), MESSAGE)
    g = torch.Generator().manual_seed(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(3):
        x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
        training_step(model, x, y, opt, TrainConfig(), step=step)
        with torch.no_grad():
            model(torch.randn(16, 3, 32, 32, generator=g) * 2 + 0.5, "both")
    model.eval()
    trigger = abstract_trigger_set(6, seed=3)
    public = export_public(model)
    vault = Vault.from_model(
        model, trigger.images, trigger.labels, seeds=SEEDS, message=MESSAGE,
        public_model=public, data_stats={"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]},
    )
    return {"model": model, "bits": bits, "trigger": trigger, "public": public, "vault": vault}


@pytest.fixture(scope="module")
def vault_file(owner, tmp_path_factory):
    path = tmp_path_factory.mktemp("vault") / "owner.vault.pt"
    assert owner["vault"].save(path) == path
    return path


def _assert_same_vault(a: Vault, b: Vault) -> None:
    assert a.arch == b.arch
    assert a.seeds == b.seeds
    assert a.message == b.message
    assert a.public_sha256 == b.public_sha256
    assert a.data_stats == b.data_stats
    assert list(a.layers) == list(b.layers)
    for name in a.layers:
        assert a.layers[name]["config"] == b.layers[name]["config"]
        ta, tb = a.layers[name]["tensors"], b.layers[name]["tensors"]
        assert sorted(ta) == sorted(tb)
        for k in ta:
            assert ta[k].dtype == tb[k].dtype, (name, k)
            assert torch.equal(ta[k], tb[k]), (name, k)
    for x, y in ((a.trigger_images, b.trigger_images), (a.trigger_labels, b.trigger_labels)):
        assert (x is None) == (y is None)
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y)


def test_from_model_collects_every_secret(owner):
    vault, model = owner["vault"], owner["model"]
    assert list(vault.layers) == list(passport_layers(model))
    for name, layer in passport_layers(model).items():
        t = vault.layers[name]["tensors"]
        assert torch.equal(t["passport_gamma"], layer.passport_gamma)
        assert torch.equal(t["passport_beta"], layer.passport_beta)
        assert torch.equal(t["signature"], layer.signature)
        assert torch.equal(t["mlp.0.weight"], layer.mlp[0].weight)
        assert torch.equal(t["mlp.2.weight"], layer.mlp[2].weight)
        assert torch.equal(t["norm1.running_mean"], layer.norm1.running_mean)
        assert torch.equal(t["norm1.running_var"], layer.norm1.running_var)
        assert vault.layers[name]["config"]["passport_shape"] == list(layer.passport_shape)
    assert vault.arch == model.config
    # Copies, not views of the live model.
    before = vault.layers["conv2"]["tensors"]["mlp.0.weight"].clone()
    with torch.no_grad():
        model.conv2.mlp[0].weight.add_(1.0)
    try:
        assert torch.equal(vault.layers["conv2"]["tensors"]["mlp.0.weight"], before)
    finally:
        with torch.no_grad():
            model.conv2.mlp[0].weight.sub_(1.0)


def test_vault_holds_signature_trigger_set_seeds_and_release_hash(owner, vault_file):
    vault, model = owner["vault"], owner["model"]
    layer_bits = torch.cat([lay.signature for lay in passport_layers(model).values()])
    assert torch.equal(vault.signature, layer_bits)
    assert torch.equal(vault.signature, owner["bits"])
    assert bits_to_text(vault.signature, n_bytes=len(MESSAGE.encode())) == MESSAGE
    assert torch.equal(vault.trigger_images, owner["trigger"].images)
    assert torch.equal(vault.trigger_labels, owner["trigger"].labels)
    assert vault.seeds == SEEDS and vault.message == MESSAGE
    assert vault.public_sha256 == state_sha256(owner["public"])
    assert vault.public_sha256 == state_sha256(export_public(model).state_dict())
    # The hash follows the weights: one changed value gives another hash.
    changed = copy.deepcopy(owner["public"])
    with torch.no_grad():
        changed.conv3.conv.weight[0, 0, 0, 0] += 1e-3
    assert state_sha256(changed) != vault.public_sha256
    loaded = Vault.load(vault_file)
    assert torch.equal(loaded.signature, vault.signature)
    assert torch.equal(loaded.trigger_images, vault.trigger_images)
    assert loaded.seeds == SEEDS


def test_save_load_round_trip_is_exact(owner, vault_file):
    _assert_same_vault(Vault.load(vault_file), owner["vault"])


def test_vault_file_loads_with_weights_only(vault_file):
    payload = torch.load(vault_file, weights_only=True)  # no pickled code objects inside
    assert payload["format"] == "pnorm-vault"
    assert isinstance(json.loads(payload["meta"]), dict)
    assert all(isinstance(v, torch.Tensor) for v in payload["tensors"].values())


@pytest.mark.parametrize("from_file", [False, True])
def test_attach_to_public_export_reproduces_both_branches(owner, vault_file, from_file):
    model, public = owner["model"], owner["public"]
    vault = Vault.load(vault_file) if from_file else owner["vault"]
    public_state = {k: v.clone() for k, v in public.state_dict().items()}
    protected = vault.attach(public)
    # The input is untouched: same weights, still no passport layer anywhere.
    assert not passport_layers(public)
    assert public.state_dict().keys() == public_state.keys()
    assert all(torch.equal(public.state_dict()[k], v) for k, v in public_state.items())
    assert public.config["scheme"] == "plain"

    assert list(passport_layers(protected)) == list(passport_layers(model))
    assert protected.config == model.config
    protected.eval()
    model.eval()
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for branch in (0, 1):
            assert torch.equal(protected(x, branch), model(x, branch)), branch
        for got, want in zip(protected(x, "both"), model(x, "both"), strict=True):
            assert torch.equal(got, want)
    assert signature_detection(protected) == signature_detection(model)
    # The branch-1 output really depends on the secrets (not a trivially equal pair).
    assert not torch.equal(model(x, 1), model(x, 0))


def test_attach_to_a_model_of_another_width_is_a_clear_error(owner):
    other = export_public(AlexNetCIFAR(width=0.25, scheme="pan"))
    with pytest.raises(VaultError, match=r"'conv1'.*16 channels.*8 bits"):
        owner["vault"].attach(other)
    with pytest.raises(VaultError, match="no plain conv unit 'conv1'"):
        owner["vault"].attach(owner["model"])  # already protected: not a public export


def test_from_model_without_passport_layers_is_an_error():
    with pytest.raises(VaultError, match="no passport layers"):
        Vault.from_model(AlexNetCIFAR(width=0.125, scheme="plain"))


def test_missing_file_is_a_vault_error(tmp_path):
    with pytest.raises(VaultError, match="no vault file"):
        Vault.load(tmp_path / "nowhere.pt")


def test_truncated_file_is_a_vault_error(vault_file, tmp_path):
    raw = vault_file.read_bytes()
    for cut in (len(raw) // 2, len(raw) - 100, 64):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(raw[:cut])
        with pytest.raises(VaultError, match="could not be read"):
            Vault.load(path)


_TAMPER_MESSAGES = r"could not be read|failed its corruption check"


def test_one_flipped_byte_in_the_middle_is_detected(vault_file, tmp_path):
    raw = bytearray(vault_file.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path = tmp_path / "tampered.pt"
    path.write_bytes(bytes(raw))
    with pytest.raises(VaultError, match=_TAMPER_MESSAGES):
        Vault.load(path)


def test_flipped_bytes_anywhere_never_pass_silently(owner, vault_file, tmp_path):
    """Every damaged copy is a VaultError, or (a byte of zip padding) loads unchanged."""
    raw = vault_file.read_bytes()
    positions = sorted(set(range(0, min(len(raw), 4000), 37)) | set(range(0, len(raw), 2053)))
    path = tmp_path / "flipped.pt"
    detected = 0
    for pos in positions:
        damaged = bytearray(raw)
        damaged[pos] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            loaded = Vault.load(path)
        except VaultError as e:
            assert any(m in str(e) for m in _TAMPER_MESSAGES.split("|")), (pos, str(e))
            detected += 1
        else:
            _assert_same_vault(loaded, owner["vault"])
    assert detected > 0.8 * len(positions)


def test_foreign_torch_files_are_not_vaults(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"a": 1}, path)
    with pytest.raises(VaultError, match="not a pnorm vault"):
        Vault.load(path)
    torch.save([torch.zeros(3)], path)
    with pytest.raises(VaultError, match="not a pnorm vault"):
        Vault.load(path)
    path.write_bytes(b"certainly not a zip or a pickle" * 10)
    with pytest.raises(VaultError, match="could not be read"):
        Vault.load(path)


def test_a_newer_vault_version_is_refused(vault_file, tmp_path):
    payload = torch.load(vault_file, weights_only=True)
    payload["version"] = 2
    path = tmp_path / "v2.pt"
    torch.save(payload, path)
    with pytest.raises(VaultError, match="version 2"):
        Vault.load(path)


def test_edited_metadata_fails_the_checksum(vault_file, tmp_path):
    """A re-saved, well-formed file whose claimed signature owner was edited is caught."""
    payload = torch.load(vault_file, weights_only=True)
    meta = json.loads(payload["meta"])
    meta["message"] = "mallory"
    payload["meta"] = json.dumps(meta, sort_keys=True)
    path = tmp_path / "edited.pt"
    torch.save(payload, path)
    with pytest.raises(VaultError, match="SHA-256"):
        Vault.load(path)
    payload = torch.load(vault_file, weights_only=True)
    payload["tensors"]["layers/conv2/signature"][0] *= -1
    torch.save(payload, path)
    with pytest.raises(VaultError, match="SHA-256"):
        Vault.load(path)
