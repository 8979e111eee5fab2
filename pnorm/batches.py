"""What a model is fed, for images and point clouds alike: inputs, augmentation, trigger sets.

Training, evaluation and the attacks are written once; the few steps that depend on the kind
of data (normalising uint8 images, augmenting clouds) dispatch here on ``ImageData`` vs
``PointData``, so no loop is copied per modality.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .images import ImageData, augment_crop_flip, normalize
from .points import PointData, augment_points
from .vault import Vault

__all__ = ["Data", "augment_batch", "model_inputs", "raw_inputs", "trigger_data"]

Data = ImageData | PointData


def raw_inputs(data: Data) -> torch.Tensor:
    """The stored samples: uint8 images N×3×H×W or float32 clouds N×3×P."""
    return data.images if isinstance(data, ImageData) else data.points


def model_inputs(raw: torch.Tensor, mean: Sequence[float] | None,
                 std: Sequence[float] | None) -> torch.Tensor:
    """Network inputs from stored samples: uint8 images are normalised, clouds pass as they are.

    Images come in the ``channels_last`` layout (same values; convolutions run faster on it).
    Clouds are centred and scaled per cloud when loaded, so they have no dataset constants.
    """
    if raw.dtype == torch.uint8:
        if mean is None or std is None:
            raise ValueError("images need the dataset's mean and std to be normalised")
        return normalize(raw, mean, std).contiguous(memory_format=torch.channels_last)
    return raw


def augment_batch(raw: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Training augmentation of the data kind: crop+flip for images,
    book/method.md#method-point-clouds for clouds."""
    if raw.dtype == torch.uint8:
        return augment_crop_flip(raw, generator)
    return augment_points(raw, generator)


def trigger_data(vault: Vault) -> Data | None:
    """The owner's trigger set from the vault, as image or point data (None if it has none)."""
    if vault.trigger_images is None:
        return None
    samples, labels = vault.trigger_images, vault.trigger_labels
    if samples.dtype == torch.uint8:
        return ImageData(samples, labels, [], "trigger")
    return PointData(samples.float(), labels, [], "trigger")
