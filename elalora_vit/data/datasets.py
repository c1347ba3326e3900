"""Torch datasets over image sources: cached for training, lazy for evaluation.

An image source is any random-access sequence whose items are
`(image, label)`, the image a PIL image or a uint8 (H, W, 3) array:
`folder.FolderSource`, `tfds_source.TfdsSource`, `ArraySource`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from elalora_vit.data.transforms import Preprocess, normalized

ImageSource = Sequence[tuple[Any, int]]


class ArraySource:
    """An in-memory image source: uint8 images (N, H, W, 3) with labels (N,)."""

    def __init__(self, images: np.ndarray, labels: Sequence[int]):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels; they must pair up.")
        self.images = images
        self.labels = [int(label) for label in labels]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.images[index], self.labels[index]


class LazyDataset(Dataset):
    """Decodes and preprocesses one image per access.

    Meant for large evaluation sets, read by DataLoader worker processes; it is
    picklable when its source is. Items are (float tensor (3, H, W), int label).
    Build its loader with `loader_workers`, which starts the workers the way the
    source needs (`multiprocessing_context`).
    """

    def __init__(self, source: ImageSource, preprocess: Preprocess):
        self.source = source
        self.preprocess = preprocess

    @property
    def multiprocessing_context(self) -> Any:
        """The worker start method the source needs (a context, for TFDS), or None."""
        return getattr(self.source, "multiprocessing_context", None)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.source[index]
        return self.preprocess(image), int(label)


def loader_workers(dataset: Dataset, num_workers: int) -> dict[str, Any]:
    """DataLoader keyword arguments for `num_workers` worker processes reading `dataset`.

    A dataset that cannot be read in forked workers (one over `TfdsSource`:
    array_record crashes in a process forked after its parent read records)
    names a safe start method in its `multiprocessing_context` attribute::

        DataLoader(data.eval, batch_size=256, **loader_workers(data.eval, 4))

    Workers that are not forked re-import the main module, so a script using
    this needs an `if __name__ == "__main__":` guard.
    """
    context = getattr(dataset, "multiprocessing_context", None) if num_workers > 0 else None
    return {"num_workers": num_workers, "multiprocessing_context": context}


class TensorCacheDataset(Dataset):
    """Decodes and resizes every image once, then serves them from memory.

    VTAB-1k trains 100 epochs on 1000 images without augmentation, so decoding
    them each epoch is wasted work. The resized images are kept as uint8
    (N, 3, H, W), a quarter of the memory of float32 (1000 images at 224 x 224:
    150 MB instead of 600 MB); normalisation runs on every access, which costs
    little next to the model. Items are (float tensor (3, H, W), int label).
    """

    def __init__(
        self,
        source: ImageSource,
        preprocess: Preprocess,
        *,
        progress: bool = True,
        description: str = "caching images",
    ):
        self.preprocess = preprocess
        self.pixels, self.labels = cached_pixels(source, preprocess, progress, description)
        self._mean = preprocess.mean_tensor()
        self._std = preprocess.std_tensor()

    @classmethod
    def from_pixels(cls, pixels: torch.Tensor, labels: torch.Tensor, preprocess: Preprocess) -> "TensorCacheDataset":
        """The dataset of already resized uint8 ``pixels`` (N, 3, H, W) and ``labels`` (N,)."""
        dataset = cls.__new__(cls)
        dataset.preprocess, dataset.pixels, dataset.labels = preprocess, pixels, labels
        dataset._mean, dataset._std = preprocess.mean_tensor(), preprocess.std_tensor()
        return dataset

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return normalized(self.pixels[index], self._mean, self._std), int(self.labels[index])

    def uint8_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 pixels (B, 3, H, W) and labels (B,) of ``indices``, not normalised: the
        loop normalises them on its device (``normalized``, the same values as items)."""
        return self.pixels[indices], self.labels[indices]


def cached_pixels(
    source: ImageSource, preprocess: Preprocess, progress: bool = True, description: str = "caching images"
) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of `source` resized by `preprocess`: uint8 (N, 3, image_size, image_size), and labels (N,)."""
    count, size = len(source), preprocess.image_size
    pixels = torch.empty((count, 3, size, size), dtype=torch.uint8)
    labels = torch.empty(count, dtype=torch.long)
    for index in tqdm(range(count), desc=description, disable=not progress, leave=False):
        image, label = source[index]
        pixels[index] = preprocess.resized(image)
        labels[index] = int(label)
    return pixels, labels
