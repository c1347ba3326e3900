"""Any decoded or encoded image, as the uint8 RGB pixels every source serves.

Real data comes in every mode PIL knows: CLEVR's PNGs are RGBA, some PNGs are
palette (P), grey with alpha (LA), 16-bit grey (I;16) or 1-bit, some JPEGs are
CMYK. TensorFlow's `decode_image(channels=3)`, which the VTAB reference code
used, turns each into RGB: alpha is dropped, palettes are looked up, grey is
tiled, 16-bit values keep their high byte. These functions do the same without
TensorFlow, for the folder source and the TFDS source alike.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from elalora_vit.data.errors import DataError

WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def rgb_from_pil(image: Image.Image) -> Image.Image:
    """`image` in RGB mode, whatever mode it was decoded in."""
    if image.mode in WIDE_GREY_MODES:
        # 16-bit grey: keep the high byte, as TensorFlow's decode_png does for uint8.
        grey = (np.asarray(image, dtype=np.int64) >> 8).clip(0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return image.convert("RGB")


def decode_rgb(data: bytes) -> np.ndarray:
    """The uint8 (H, W, 3) pixels of an encoded image (PNG, JPEG, ...)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(rgb_from_pil(image))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot decode the image bytes ({len(data)} bytes): {err}.") from err


def rgb_array(image: Any, pixel_scale: int = 1) -> np.ndarray:
    """uint8 (H, W, 3) pixels from encoded bytes, a PIL image or a decoded array.

    Arrays may be (H, W) or (H, W, C) with C = 1 (grey), 2 (grey, alpha),
    3 (RGB) or 4 (RGBA); 16-bit arrays keep their high byte. `pixel_scale`
    multiplies the values first (255 for dsprites, whose pixels are 0 or 1).
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        array = decode_rgb(bytes(image))
    elif isinstance(image, Image.Image):
        array = np.asarray(rgb_from_pil(image))
    else:
        array = rgb_from_decoded(np.asarray(image))
    if pixel_scale != 1:
        array = np.clip(array.astype(np.int64) * pixel_scale, 0, 255).astype(np.uint8)
    return array


def rgb_from_decoded(array: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) from a decoded (H, W) or (H, W, C) array, C in 1 to 4."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or not 1 <= array.shape[2] <= 4:
        raise DataError(
            f"expected an image of shape (H, W) or (H, W, C) with 1 to 4 channels, "
            f"got shape {array.shape}."
        )
    if array.dtype == np.uint16:
        array = array >> 8
    array = array.astype(np.uint8, copy=False)
    channels = array.shape[2]
    if channels in (1, 2):  # grey, or grey and alpha
        return np.repeat(array[:, :, :1], 3, axis=2)
    return array[:, :, :3]  # RGB, or RGB and alpha
