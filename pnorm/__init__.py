"""pnorm: Passport-aware Normalization (Zhang et al., NeurIPS 2020), re-implemented and attacked.

The owner's path, in the order data flows through it::

    import pnorm
    model = pnorm.AlexNetCIFAR(num_classes=10, scheme="pan")       # build
    pnorm.key_model(model, generator, message="© me")               # passports + signature
    pnorm.train(model, splits, pnorm.TrainConfig(), trigger)        # both branches, sign loss
    public = pnorm.export_public(model)                             # the release: no secrets
    vault = pnorm.Vault.from_model(model, public_model=public,      # the owner's secrets
                                   data_stats={"mean": mean, "std": std})
    report = pnorm.verify_ownership(suspect, vault, test)           # the claim

Attacks (``fine_tune``, ``pruning_sweep``, ``forge_passports``) start from the release.
book/method.md states the method precisely.
"""

from .alexnet import AlexNetCIFAR
from .attacks import FineTuneConfig, fine_tune, finetune_config, prune_model, pruning_sweep
from .fileio import DataNotFoundError
from .forgery import THREAT_MODELS, ThreatModel, forge_passports, threat_model
from .images import ImageData, ImageSplits, image_data, load_adi_trigger_set, load_cifar
from .layers import PassportAwareNorm
from .model_cache import Trained, fine_tune_or_load, seed_runs, train_or_load
from .models import build_model, export_public, load_release, save_release
from .passport import bits_to_text, key_model, passports_from_images, text_to_bits
from .pointnet import PointNetCls
from .points import PointData, PointSplits, load_modelnet40
from .profile_data import image_splits, point_splits, point_trigger, trigger_set
from .profiles import PROFILES, Profile, get_profile
from .recipes import PRESETS, Recipe
from .resnet import ResNet18CIFAR
from .synthetic_images import abstract_trigger_set, synthetic_splits
from .synthetic_points import point_trigger_set, synthetic_point_splits
from .training import TrainConfig, TrainingDivergedError, TrainResult, config_for, train
from .units import passport_layers
from .vault import Vault, VaultError
from .verify import OwnershipReport, Thresholds, evaluate, signature_detection, verify_ownership

__all__ = [
    "PRESETS",
    "PROFILES",
    "THREAT_MODELS",
    "AlexNetCIFAR",
    "DataNotFoundError",
    "FineTuneConfig",
    "ImageData",
    "ImageSplits",
    "OwnershipReport",
    "PassportAwareNorm",
    "PointData",
    "PointNetCls",
    "PointSplits",
    "Profile",
    "Recipe",
    "ResNet18CIFAR",
    "ThreatModel",
    "Thresholds",
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "Trained",
    "Vault",
    "VaultError",
    "abstract_trigger_set",
    "bits_to_text",
    "build_model",
    "config_for",
    "evaluate",
    "export_public",
    "fine_tune",
    "fine_tune_or_load",
    "finetune_config",
    "forge_passports",
    "get_profile",
    "image_data",
    "image_splits",
    "key_model",
    "load_adi_trigger_set",
    "load_cifar",
    "load_modelnet40",
    "load_release",
    "passport_layers",
    "passports_from_images",
    "point_splits",
    "point_trigger",
    "point_trigger_set",
    "prune_model",
    "pruning_sweep",
    "save_release",
    "signature_detection",
    "synthetic_point_splits",
    "synthetic_splits",
    "text_to_bits",
    "threat_model",
    "train",
    "seed_runs",
    "train_or_load",
    "trigger_set",
    "verify_ownership",
]
