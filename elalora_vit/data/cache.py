"""The decoded-image cache: each split decoded and resized once, read by every later run.

A sweep trains and evaluates one task many times (methods x seeds x tuning), and the
evaluation splits are large (388k test images over the 19 tasks).  Decoding a JPEG and
resizing it costs milliseconds; reading its resized pixels back costs microseconds.  So
:func:`cached_split` decodes a split once, stores its uint8 pixels on disk, and serves
them memory-mapped to every later run, evaluation and sweep shard.

Layout, under the cache folder (``data.cache_dir``; default ``$ELALORA_VIT_CACHE`` or
``~/.cache/elalora-vit/images``)::

    <task>-<split>-<size>px-<interpolation>-<key>/
        pixels.npy      uint8 (N, 3, size, size), read with numpy's memory map
        labels.npy      int64 (N,)
        meta.json       written last: its presence marks a complete entry
        .elalora.lock   the folder lock (core/lock.py) the builder holds

``key`` is a SHA-256 of the split's data fingerprint (``data/fingerprint.py``: every
image file's bytes for folder data, the prepared builder's info for TFDS), the size,
the interpolation and the cache format, so edited images, another size or another
filter never read a stale entry.

Building is safe with several processes: the builder holds the entry's folder lock;
a process that finds it locked waits, then reads the finished entry.  Files are
written under temporary names and renamed into place, ``meta.json`` last, so a build
killed at any point leaves no entry that is used: the next process rebuilds it.
Clear the cache by deleting its folder (``elalora-vit`` never deletes it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from elalora_vit.storage.files import atomic_write, atomic_write_json
from elalora_vit.storage.lock import FolderLock
from elalora_vit.data.datasets import ImageSource
from elalora_vit.data.errors import DataError
from elalora_vit.data.transforms import Preprocess, normalized

FORMAT = 1
ENV_VAR = "ELALORA_VIT_CACHE"
BUILD_WAIT_S = 3600.0  # how long a process waits for another one building the same entry


def default_cache_dir() -> Path:
    """``$ELALORA_VIT_CACHE``, else ``$XDG_CACHE_HOME/elalora-vit/images`` (``~/.cache`` by default)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "elalora-vit" / "images"


def resolve_cache_dir(enabled: bool, cache_dir: str | os.PathLike | None) -> Path | None:
    """The cache folder a run uses (``data.cache``, ``data.cache_dir``), None when it is off."""
    if not enabled:
        return None
    return default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()


def entry_name(task: str, split: str, preprocess: Preprocess, fingerprint: str) -> str:
    """The entry folder's name for one split at one size and interpolation."""
    key = hashlib.sha256(json.dumps(
        {"fingerprint": fingerprint, "size": preprocess.image_size, "interpolation": preprocess.interpolation,
         "format": FORMAT}, sort_keys=True).encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9_.]+", "_", f"{task}-{split}")
    return f"{safe}-{preprocess.image_size}px-{preprocess.interpolation}-{key}"


class CachedSplit:
    """A split's resized uint8 pixels (memory-mapped) and labels, from the cache."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.pixels = np.load(folder / "pixels.npy", mmap_mode="r")
        self.labels = np.load(folder / "labels.npy")
        self.meta = json.loads((folder / "meta.json").read_text())
        if len(self.pixels) != len(self.labels) or len(self.labels) != self.meta["images"]:
            raise DataError(f"the image cache entry {folder} is inconsistent; delete that folder to rebuild it")

    def __len__(self) -> int:
        return len(self.labels)


def cached_split(
    source: ImageSource,
    preprocess: Preprocess,
    *,
    task: str,
    split: str,
    fingerprint: str,
    cache_dir: str | os.PathLike,
    progress: bool = True,
) -> CachedSplit:
    """The cached pixels of ``source`` at ``preprocess``'s size, built first if missing.

    Raises:
        FolderLocked: another process has been building the entry for ``BUILD_WAIT_S``.
    """
    folder = Path(cache_dir) / entry_name(task, split, preprocess, fingerprint)
    if (folder / "meta.json").is_file():
        return CachedSplit(folder)
    with FolderLock(folder, f"caching {task} {split}").acquire(timeout=BUILD_WAIT_S, poll=0.5):
        if not (folder / "meta.json").is_file():  # nobody finished it while this process waited
            _build(folder, source, preprocess, task, split, fingerprint, progress)
    return CachedSplit(folder)


def _build(folder: Path, source: ImageSource, preprocess: Preprocess, task: str, split: str,
           fingerprint: str, progress: bool) -> None:
    started = time.time()
    for stale in folder.glob(".*.tmp*"):  # what a killed build left
        stale.unlink(missing_ok=True)
    count, size = len(source), preprocess.image_size
    labels = np.empty(count, dtype=np.int64)

    def write_pixels(tmp: Path) -> None:
        pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(count, 3, size, size))
        for index in tqdm(range(count), desc=f"caching {task} {split} at {size} px", disable=not progress,
                          leave=False):
            image, label = source[index]
            pixels[index] = preprocess.resized(image).numpy()
            labels[index] = int(label)
        pixels.flush()
        del pixels

    atomic_write(folder / "pixels.npy", write_pixels)
    atomic_write(folder / "labels.npy", lambda tmp: np.save(tmp, labels))
    atomic_write_json(folder / "meta.json", {
        "format": FORMAT, "task": task, "split": split, "images": count, "image_size": size,
        "interpolation": preprocess.interpolation, "fingerprint": fingerprint,
        "seconds": round(time.time() - started, 2),
    })


class CachedDataset(Dataset):
    """Items (float tensor (3, H, W), label) from a :class:`CachedSplit`: a memory-mapped
    read and the normalisation, no decoding.  Picklable (workers reopen the memory map)."""

    def __init__(self, split: CachedSplit, preprocess: Preprocess):
        self.split = split
        self.preprocess = preprocess
        self._mean = preprocess.mean_tensor()
        self._std = preprocess.std_tensor()

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels = torch.from_numpy(np.array(self.split.pixels[index]))
        return normalized(pixels, self._mean, self._std), int(self.split.labels[index])

    def uint8_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 pixels (B, 3, H, W) and labels (B,) of ``indices``, not normalised: the loop
        normalises them on its device.  A contiguous run of indices is a read-only view of the
        memory map (no copy): do not write to it."""
        index = indices.numpy()
        if len(index) and (index[-1] - index[0] == len(index) - 1) and bool((index[1:] > index[:-1]).all()):
            with warnings.catch_warnings():  # a view of the read-only map: normalising copies it anyway
                warnings.simplefilter("ignore", UserWarning)
                pixels = torch.from_numpy(self.split.pixels[index[0] : index[-1] + 1])
        else:
            pixels = torch.from_numpy(self.split.pixels[index])
        return pixels, torch.from_numpy(self.split.labels[index])

    def pixels(self) -> torch.Tensor:
        """Every image's uint8 pixels (N, 3, H, W), read into memory."""
        return torch.from_numpy(np.array(self.split.pixels))

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.split.folder, "preprocess": self.preprocess}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(CachedSplit(state["folder"]), state["preprocess"])
