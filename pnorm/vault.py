"""The owner's vault: everything secret that verification needs, kept apart from the release.

The released model is a stock network (``export_public``); the vault holds per passport layer
the passports, signature bits, MLP and branch-1 statistics, plus the trigger set, seeds and a
hash of the released weights (book/method.md#method-vault). It is saved without pickle, with
a SHA-256 corruption check and, when the owner gives a secret key, an HMAC tamper check.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .fileio import atomic_torch_save, state_sha256, tensors_sha256
from .layers import BranchNormUnit, ConvNormAct, PassportAwareNorm, clone_weight_layer
from .units import passport_layers, replace_module

__all__ = ["Vault", "VaultError"]

_FORMAT = "pnorm-vault"
_VERSION = 1


class VaultError(ValueError):
    """A vault file that is missing, damaged, malformed, edited, or does not fit a model."""


_LAYER_KEYS = ("passport_gamma", "passport_beta", "signature")


@dataclass
class Vault:
    """Private verification material for one protected model (see module docstring)."""

    arch: dict[str, Any]
    layers: dict[str, dict[str, Any]]
    trigger_images: torch.Tensor | None = None
    trigger_labels: torch.Tensor | None = None
    seeds: dict[str, int] = field(default_factory=dict)
    message: str | None = None
    public_sha256: str | None = None
    data_stats: dict[str, Any] = field(default_factory=dict)
    # Private branch-1 BatchNorm states of plain units after passport layers (PointNet T-Net).
    branch_norms: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        trigger_images: torch.Tensor | None = None,
        trigger_labels: torch.Tensor | None = None,
        seeds: dict[str, int] | None = None,
        message: str | None = None,
        public_model: nn.Module | None = None,
        data_stats: dict[str, Any] | None = None,
    ) -> Vault:
        """Collect the secrets of a trained protected ``model`` (copies, on the CPU)."""
        layers = {}
        for name, layer in passport_layers(model).items():
            tensors = {k: getattr(layer, k).detach().cpu().clone() for k in _LAYER_KEYS}
            if layer.mlp is not None:
                for k, v in layer.mlp.state_dict().items():
                    tensors[f"mlp.{k}"] = v.detach().cpu().clone()
            if layer.norm1 is not None:
                for k, v in layer.norm1.state_dict().items():
                    tensors[f"norm1.{k}"] = v.detach().cpu().clone()
            if layer.norm_kind == "none":  # the release folds these into the weights
                tensors["gamma0"] = layer.gamma0.detach().cpu().clone()
                tensors["beta0"] = layer.beta0.detach().cpu().clone()
            layers[name] = {
                "tensors": tensors,
                "config": {
                    "norm": layer.norm_kind,
                    "mlp": layer.mlp is not None,
                    "shared_stats": layer.shared_stats,
                    "activation": layer.activation,
                    "sign_alpha": layer.sign_alpha,
                    "passport_shape": list(layer.passport_shape),
                    "bias": layer.conv.bias is not None,
                },
            }
        if not layers:
            raise VaultError("the model has no passport layers: nothing to put in a vault")
        branch_norms = {
            name: {k: v.detach().cpu().clone() for k, v in m.norm1.state_dict().items()}
            for name, m in model.named_modules() if isinstance(m, BranchNormUnit)
        }
        return cls(
            arch=dict(getattr(model, "config", {})),
            layers=layers,
            trigger_images=None if trigger_images is None else trigger_images.cpu().clone(),
            trigger_labels=None if trigger_labels is None else trigger_labels.cpu().clone(),
            seeds=dict(seeds or {}),
            message=message,
            public_sha256=None if public_model is None else state_sha256(public_model),
            data_stats=dict(data_stats or {}),
            branch_norms=branch_norms,
        )

    @property
    def signature(self) -> torch.Tensor:
        """The full signature: all layers' bits concatenated in forward order."""
        return torch.cat([entry["tensors"]["signature"] for entry in self.layers.values()])

    @torch.no_grad()
    def attach(self, public_model: nn.Module) -> nn.Module:
        """A protected copy of ``public_model``: its weights plus this vault's passport branch.

        The suspect's conv weights and branch-0 affine/statistics are used as they are; only
        the secrets come from the vault. The input model is not modified.
        """
        protected = copy.deepcopy(public_model)
        modules = dict(protected.named_modules())
        for name, entry in self.layers.items():
            unit = modules.get(name)
            if not isinstance(unit, ConvNormAct):
                raise VaultError(
                    f"the suspect model has no plain conv unit {name!r} "
                    f"(found {type(unit).__name__}); this vault is for a {self.arch.get('arch')} "
                    f"with passport layers {list(self.layers)}"
                )
            replace_module(protected, name, self._rebuild_layer(name, unit, entry))
        for name, state in self.branch_norms.items():
            unit = modules.get(name)
            if not (isinstance(unit, ConvNormAct) and unit.norm_kind == "bn"):
                raise VaultError(f"the suspect model has no plain BatchNorm unit {name!r} for "
                                 f"the vault's branch-1 normaliser (found {type(unit).__name__})")
            replace_module(protected, name, BranchNormUnit.from_public(unit, state))
        if hasattr(protected, "config") and self.arch:
            protected.config = dict(self.arch)
        return protected

    def _rebuild_layer(self, name: str, unit: ConvNormAct, entry: dict) -> PassportAwareNorm:
        cfg, tensors = entry["config"], entry["tensors"]
        if unit.norm_kind != cfg["norm"]:
            raise VaultError(
                f"layer {name!r}: the suspect uses norm {unit.norm_kind!r}, vault expects "
                f"{cfg['norm']!r}"
            )
        if cfg["norm"] == "none":
            conv = _unfold_affine(unit.conv, tensors["gamma0"], tensors["beta0"], cfg["bias"])
        else:
            conv = copy.deepcopy(unit.conv)
        layer = PassportAwareNorm(
            conv,
            tuple(cfg["passport_shape"]),
            norm=cfg["norm"],
            mlp=cfg["mlp"],
            shared_stats=cfg["shared_stats"],
            activation=cfg["activation"],
            sign_alpha=cfg["sign_alpha"],
        ).to(unit.conv.weight.device)
        if layer.signature.numel() != tensors["signature"].numel():
            raise VaultError(
                f"layer {name!r}: suspect has {layer.signature.numel()} channels, vault signature "
                f"has {tensors['signature'].numel()} bits"
            )
        if cfg["norm"] == "none":
            layer.gamma0.copy_(tensors["gamma0"])
            layer.beta0.copy_(tensors["beta0"])
        else:
            layer.gamma0.copy_(unit.norm.weight)
            layer.beta0.copy_(unit.norm.bias)
        if cfg["norm"] == "bn":
            layer.norm0.load_state_dict(
                {k: v for k, v in unit.norm.state_dict().items() if k not in ("weight", "bias")}
            )
        own = {k: tensors[k] for k in _LAYER_KEYS}
        for k, v in own.items():
            getattr(layer, k).copy_(v)
        if layer.mlp is not None:
            layer.mlp.load_state_dict(_sub(tensors, "mlp."))
        if layer.norm1 is not None:
            layer.norm1.load_state_dict(_sub(tensors, "norm1."))
        return layer

    # ------------------------------------------------------------------ persistence
    def _flat(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors: dict[str, torch.Tensor] = {}
        for lname, entry in self.layers.items():
            for k, v in entry["tensors"].items():
                tensors[f"layers/{lname}/{k}"] = v
        for uname, state in self.branch_norms.items():
            for k, v in state.items():
                tensors[f"branch_norms/{uname}/{k}"] = v
        if self.trigger_images is not None:
            tensors["trigger/images"] = self.trigger_images
            tensors["trigger/labels"] = self.trigger_labels
        meta = {
            "arch": self.arch,
            "layer_config": {n: e["config"] for n, e in self.layers.items()},
            "layer_order": list(self.layers),
            "branch_norm_order": list(self.branch_norms),
            "seeds": self.seeds,
            "message": self.message,
            "public_sha256": self.public_sha256,
            "data_stats": self.data_stats,
        }
        return meta, tensors

    def save(self, path: str | Path, key: bytes | None = None) -> Path:
        """Write the vault atomically, with a corruption check and, given ``key``, a tamper check.

        The SHA-256 over the contents catches damage (truncation, flipped bits) but not a
        deliberate edit: anyone can recompute it. With the owner's secret ``key`` the file also
        carries an HMAC-SHA-256 that only the key's holder can make; ``load(path, key)`` checks it.
        """
        meta, tensors = self._flat()
        meta_json = json.dumps(meta, sort_keys=True)
        digest = tensors_sha256(meta_json, tensors)
        payload = {"format": _FORMAT, "version": _VERSION, "meta": meta_json, "tensors": tensors,
                   "sha256": digest}
        if key is not None:
            payload["hmac_sha256"] = _hmac(key, digest)
        atomic_torch_save(payload, path)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, key: bytes | None = None) -> Vault:
        """Read a vault without executing code; a damaged or malformed file raises VaultError.

        With ``key`` the file must carry a matching HMAC (``save(path, key)``): an edit by
        anyone without the key is then detected, not only accidental damage.
        """
        path = Path(path)
        if not path.is_file():
            raise VaultError(f"no vault file at {path}")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a damaged file can fail anywhere in unzip/unpickle
            raise VaultError(
                f"{path} could not be read as a vault (truncated or not a pnorm vault): "
                f"{type(e).__name__}: {e}"
            ) from e
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise VaultError(f"{path} is not a pnorm vault file")
        if payload.get("version") != _VERSION:
            raise VaultError(f"{path} has vault version {payload.get('version')}, expected 1")
        meta_json, tensors = payload.get("meta"), payload.get("tensors")
        if not (isinstance(meta_json, str) and isinstance(tensors, dict)
                and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                        for k, v in tensors.items())):
            raise VaultError(f"{path} is malformed: 'meta' must be JSON text and 'tensors' a "
                             "dict of named tensors")
        digest = tensors_sha256(meta_json, tensors)
        if digest != payload.get("sha256"):
            raise VaultError(f"{path} failed its corruption check (SHA-256): the file was "
                             "damaged or changed after it was saved")
        if key is not None and not hmac.compare_digest(
                str(payload.get("hmac_sha256", "")), _hmac(key, digest)):
            raise VaultError(f"{path} failed its tamper check (HMAC-SHA-256): it was changed by "
                             "someone without the key, or saved with another key or none")
        try:
            meta = json.loads(meta_json)
        except json.JSONDecodeError as e:
            raise VaultError(f"{path}: field 'meta' is not valid JSON ({e})") from e
        return cls._from_stored(path, meta, tensors)

    @classmethod
    def _from_stored(cls, path: Path, meta: Any, tensors: dict[str, torch.Tensor]) -> Vault:
        """Build a vault from its stored fields, refusing (and naming) any that does not fit."""
        def need(ok: bool, field_name: str, what: str) -> None:
            if not ok:
                raise VaultError(f"{path}: field {field_name!r} {what}")

        need(isinstance(meta, dict), "meta", "must be a JSON object")
        for name, kind in (("arch", dict), ("layer_config", dict), ("layer_order", list),
                           ("seeds", dict), ("data_stats", dict)):
            need(isinstance(meta.get(name), kind), name, f"is missing or not a {kind.__name__}")
        need(meta.get("message") is None or isinstance(meta["message"], str), "message",
             "must be text or null")
        need(bool(meta["layer_order"]), "layer_order", "lists no passport layer")
        layers = {}
        for lname in meta["layer_order"]:
            own = _sub(tensors, f"layers/{lname}/")
            config = meta["layer_config"].get(lname)
            need(isinstance(config, dict) and "passport_shape" in config,
                 f"layer_config/{lname}", "is missing or lacks passport_shape")
            for k in _LAYER_KEYS:
                need(k in own, f"layers/{lname}/{k}", "is missing")
                need(own[k].is_floating_point() and bool(torch.isfinite(own[k]).all()),
                     f"layers/{lname}/{k}", "must hold finite numbers")
            for k in ("passport_gamma", "passport_beta"):
                need(list(own[k].shape) == list(config["passport_shape"]), f"layers/{lname}/{k}",
                     f"has shape {list(own[k].shape)}, not {config['passport_shape']}")
            need(bool((own["signature"].abs() == 1).all()), f"layers/{lname}/signature",
                 "must hold ±1 bits")
            layers[lname] = {"tensors": own, "config": config}
        images, labels = tensors.get("trigger/images"), tensors.get("trigger/labels")
        need((images is None) == (labels is None), "trigger", "needs both images and labels")
        need(images is None or len(images) == len(labels), "trigger/labels",
             "must have one label per trigger image")
        return cls(
            arch=meta["arch"],
            layers=layers,
            trigger_images=images,
            trigger_labels=labels,
            seeds=meta["seeds"],
            message=meta["message"],
            public_sha256=meta.get("public_sha256"),
            data_stats=meta["data_stats"],
            branch_norms={u: _sub(tensors, f"branch_norms/{u}/")
                          for u in meta.get("branch_norm_order", [])},
        )


def _hmac(key: bytes, digest: str) -> str:
    """HMAC-SHA-256 of a vault's content digest under the owner's secret ``key``."""
    if not isinstance(key, bytes) or len(key) < 16:
        raise VaultError("the vault key must be at least 16 secret bytes, e.g. "
                         "secrets.token_bytes(32)")
    return hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()


@torch.no_grad()
def _unfold_affine(
    folded: nn.Module, gamma0: torch.Tensor, beta0: torch.Tensor, had_bias: bool
) -> nn.Module:
    """Undo ``to_public`` for a layer without normalisation, with the owner's gamma0, beta0.

    The release computes ``gamma0 * (W x + b) + beta0`` as one layer ``W' x + b'``; the owner
    divides it back out so that branch 1 sees ``W`` (and branch 0 still computes ``W' x + b'``).
    """
    if (gamma0 == 0).any():
        raise VaultError("the owner's gamma0 has zero entries: the folded layer cannot be unfolded")
    g = gamma0.to(folded.weight.device)
    layer = clone_weight_layer(folded, with_bias=had_bias)
    shape = (-1,) + (1,) * (folded.weight.dim() - 1)
    layer.weight.div_(g.view(shape))
    if had_bias:
        bias = folded.bias if folded.bias is not None else torch.zeros_like(g)
        layer.bias.copy_((bias - beta0.to(g.device)) / g)
    elif folded.bias is not None:
        layer.bias = None
    return layer


def _sub(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
