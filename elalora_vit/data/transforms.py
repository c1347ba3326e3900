"""VTAB-1k preprocessing: resize to a square (bicubic for our timm ViTs, or whatever
interpolation the model's pre-trained weights expect), then mean/std normalisation.

No augmentation: the protocol trains on the plain resized images. The two steps
are separate functions so that `TensorCacheDataset` can resize once and
normalise on every access, while `LazyDataset` does both per item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from elalora_vit.data.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# timm's interpolation names (``pretrained_cfg["interpolation"]``) as PIL filters.
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def resized_pixels(
    image: Image.Image | np.ndarray, image_size: int, interpolation: str = "bicubic"
) -> torch.Tensor:
    """The image resized to image_size x image_size, aspect ratio not kept.

    `interpolation` is one of `INTERPOLATIONS` (timm's names).
    `image` is a PIL image or a uint8 (H, W, 3) array. Returns a uint8 tensor of
    shape (3, image_size, image_size).
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), _resample(interpolation))
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def normalized(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Float pixels (x / 255 - mean) / std from uint8 pixels of shape (..., 3, H, W).

    `mean` and `std` are float tensors of shape (3, 1, 1).
    """
    return pixels.float().div_(255.0).sub_(mean).div_(std)  # in place: one float copy, the same values


def device_batch(dataset, indices: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of ``dataset`` on ``device``, normalised there.

    Datasets that hold uint8 pixels (``uint8_batch``: the in-memory and on-disk caches) are
    copied as uint8 (a quarter of float32's bytes; pinned and ``non_blocking`` on CUDA) and
    normalised on ``device``, with the same values as their items; others are stacked per item.
    """
    if not hasattr(dataset, "uint8_batch"):
        items = [dataset[i] for i in indices.tolist()]
        return torch.stack([x for x, _ in items]).to(device), torch.tensor([y for _, y in items]).to(device)
    pixels, labels = dataset.uint8_batch(indices)
    cuda = device.type == "cuda"
    if cuda:
        pixels, labels = pixels.pin_memory(), labels.pin_memory()
    pixels, labels = pixels.to(device, non_blocking=cuda), labels.to(device, non_blocking=cuda)
    mean, std = (t.to(device, non_blocking=cuda) for t in (dataset.preprocess.mean_tensor(), dataset.preprocess.std_tensor()))
    return normalized(pixels, mean, std), labels


def _resample(interpolation: str) -> Image.Resampling:
    try:
        return INTERPOLATIONS[interpolation]
    except (KeyError, TypeError):
        raise DataError(
            f"unknown interpolation {interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}."
        ) from None


@dataclass(frozen=True)
class Preprocess:
    """Resize to `image_size` (with `interpolation`) and normalise with `mean` / `std` per channel.

    Calling it on a PIL image or uint8 (H, W, 3) array returns a float tensor of
    shape (3, image_size, image_size). Picklable, so DataLoader workers can use it.
    """

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise DataError(f"image_size must be a positive integer, got {self.image_size!r}.")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3:
                raise DataError(f"{name} needs one value per RGB channel (3 values), got {values!r}.")
        if min(self.std) <= 0:
            raise DataError(f"std values must be positive, got {self.std!r}.")
        _resample(self.interpolation)
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def mean_tensor(self) -> torch.Tensor:
        """`mean` as a (3, 1, 1) float tensor."""
        return torch.tensor(self.mean).view(3, 1, 1)

    def std_tensor(self) -> torch.Tensor:
        """`std` as a (3, 1, 1) float tensor."""
        return torch.tensor(self.std).view(3, 1, 1)

    def resized(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """The uint8 pixels (3, image_size, image_size) of `image`, before normalisation."""
        return resized_pixels(image, self.image_size, self.interpolation)

    def __call__(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        return normalized(self.resized(image), self.mean_tensor(), self.std_tensor())
