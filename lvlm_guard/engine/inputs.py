"""Turning user images and prompts into model inputs, with typed errors for bad input."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lvlm_guard.errors import ImageInputError, InputMismatchError

ImageLike = Image.Image | str | os.PathLike | np.ndarray


def load_image(image: ImageLike, *, where: str = "image") -> Image.Image:
    """An RGB PIL image from a PIL image, a path or an HxW(xC) uint8 array.

    Non-RGB modes (L, RGBA, P, CMYK, I;16 ...) are converted; transparency is put on white.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ImageInputError(f"{where}: no such file {str(path)!r}")
        try:
            with Image.open(path) as opened:
                opened.load()
                pil = opened.copy()
        except (UnidentifiedImageError, OSError) as exc:
            raise ImageInputError(f"{where}: cannot read {str(path)!r} as an image ({exc})") from None
    elif isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or image.size == 0 or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ImageInputError(f"{where}: array of shape {image.shape} is not an HxW or HxWxC image (C 1, 3 or 4)")
        if image.dtype.kind == "f":  # floats: [0, 1] as most libraries give them, else already 0-255
            if not np.isfinite(image).all():
                raise ImageInputError(f"{where}: float array holds NaN or infinite values")
            low, high = float(image.min()), float(image.max())
            if low < 0 or high > 255:
                raise ImageInputError(f"{where}: float array values in [{low:g}, {high:g}]; expected [0, 1] or [0, 255]")
            image = np.round(image * 255 if high <= 1 else image).astype(np.uint8)
        elif image.dtype == np.bool_:
            image = image.astype(np.uint8) * 255
        elif image.dtype.kind in "iu" and image.dtype != np.uint8:
            if image.min() < 0 or image.max() > 255:
                raise ImageInputError(f"{where}: {image.dtype} array values outside [0, 255]")
            image = image.astype(np.uint8)
        elif image.dtype != np.uint8:
            raise ImageInputError(f"{where}: array dtype {image.dtype} is not an image type")
        pil = Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    elif isinstance(image, Image.Image):
        pil = image
    else:
        raise ImageInputError(f"{where}: expected a PIL image, a path or an array, got {type(image).__name__}")
    if pil.width == 0 or pil.height == 0:
        raise ImageInputError(f"{where}: image has zero size {pil.width}x{pil.height}")
    if pil.mode in ("RGBA", "LA") or (pil.mode == "P" and "transparency" in pil.info):
        pil = pil.convert("RGBA")
        background = Image.new("RGBA", pil.size, (255, 255, 255, 255))
        pil = Image.alpha_composite(background, pil)
    return pil.convert("RGB") if pil.mode != "RGB" else pil


def images_per_prompt(
    images: Sequence[ImageLike | Sequence[ImageLike] | None] | ImageLike | None, prompts: Sequence[str]
) -> list[list[Image.Image]]:
    """One list of RGB images per prompt.

    `images` may hold one image per prompt, a list of images per prompt (several images) or
    None for a text-only prompt.
    """
    if isinstance(prompts, str):
        raise InputMismatchError("prompts must be a list of strings, got a single string")
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise InputMismatchError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    bad = [i for i, prompt in enumerate(prompts) if not isinstance(prompt, str)]
    if bad:
        raise InputMismatchError(f"prompt {bad[0]} is a {type(prompts[bad[0]]).__name__}, not a string")
    if images is None:
        images = [None] * len(prompts)
    if not isinstance(images, (list, tuple)):
        images = [images]
    if len(images) != len(prompts):
        raise InputMismatchError(f"got {len(images)} image entries for {len(prompts)} prompts; they must match")
    result = []
    for i, entry in enumerate(images):
        if entry is None:
            result.append([])
        elif isinstance(entry, (list, tuple)):
            result.append([load_image(img, where=f"image {j} of prompt {i}") for j, img in enumerate(entry)])
        else:
            result.append([load_image(entry, where=f"image of prompt {i}")])
    return result
