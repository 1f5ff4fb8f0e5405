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
        if image.ndim not in (2, 3) or image.size == 0:
            raise ImageInputError(f"{where}: array of shape {image.shape} is not an HxW or HxWxC image")
        pil = Image.fromarray(image)
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
