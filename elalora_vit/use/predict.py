"""Top-k predictions of a finished run on image files, with the run's preprocessing.

Each image is decoded and checked on its own: one that cannot be read, or has
pixels the model cannot take, gives a :class:`Prediction` with ``error`` set
(naming the file) and the other images are still predicted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..core.errors import first_line
from .rebuild import RunModel, load_run

# PIL modes the preprocessing turns into RGB without losing meaning: 8-bit grey,
# palette, RGB, with or without alpha. 16-bit and float images are refused.
_ACCEPTED_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
_BATCH = 64


class ImageError(ValueError):
    """An image that cannot be decoded or has a channel layout the model cannot take."""


@dataclass
class Prediction:
    """The top-k classes of one image, best first, or why it could not be predicted."""

    image: str
    top_k: list[dict[str, Any]] = field(default_factory=list)  # {"class", "name", "probability"}
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "error": self.error} if self.error else {"image": self.image, "top_k": self.top_k}


def predict_images(
    run: RunModel | str | os.PathLike,
    images: Sequence[str | os.PathLike | Image.Image | np.ndarray],
    *,
    top_k: int = 5,
) -> list[Prediction]:
    """Top-``top_k`` classes with softmax probabilities for each of ``images``.

    ``images`` are file paths, PIL images or uint8 arrays (H, W), (H, W, 1),
    (H, W, 3) or (H, W, 4). ``run`` is a run folder or a :class:`RunModel`.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    run = run if isinstance(run, RunModel) else load_run(run, merge=True)
    preprocess = run.preprocess
    results, inputs = [], []
    for index, image in enumerate(images):
        label = str(image) if isinstance(image, (str, os.PathLike)) else f"image {index}"
        results.append(Prediction(label))
        try:
            inputs.append((index, preprocess(_rgb(image, label))))
        except ImageError as err:
            results[-1].error = str(err)
    for start in range(0, len(inputs), _BATCH):
        chunk = inputs[start : start + _BATCH]
        probabilities = _probabilities(run, torch.stack([x for _, x in chunk]))
        values, classes = probabilities.topk(min(top_k, probabilities.shape[-1]), dim=-1)
        for (index, _), row_p, row_c in zip(chunk, values.tolist(), classes.tolist()):
            results[index].top_k = [
                {"class": c, "name": run.class_name(c), "probability": round(p, 6)} for p, c in zip(row_p, row_c)
            ]
    return results


@torch.no_grad()
def _probabilities(run: RunModel, x: torch.Tensor) -> torch.Tensor:
    device = next(run.model.parameters()).device
    return run.model(x.to(device)).float().softmax(dim=-1).cpu()


def _rgb(image: Any, label: str) -> Image.Image:
    """``image`` as an RGB PIL image; :class:`ImageError` naming ``label`` otherwise."""
    if isinstance(image, np.ndarray):
        return _array_image(image, label)
    if not isinstance(image, Image.Image):
        image = _open(Path(image), label)
    if image.mode not in _ACCEPTED_MODES:
        raise ImageError(
            f"{label}: unsupported pixel format {image.mode!r} (bands {image.getbands()}); "
            "expected an 8-bit greyscale, RGB or RGBA image"
        )
    return image.convert("RGB")


def _open(path: Path, label: str) -> Image.Image:
    if not path.is_file():
        raise ImageError(f"{label}: no such image file")
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not later
            return image.copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ImageError(f"{label}: cannot decode the image ({first_line(err)})") from err


def _array_image(array: np.ndarray, label: str) -> Image.Image:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise ImageError(
            f"{label}: array of shape {array.shape} and dtype {array.dtype}; expected uint8 (H, W) greyscale, "
            "(H, W, 3) RGB or (H, W, 4) RGBA"
        )
    return Image.fromarray(array)
