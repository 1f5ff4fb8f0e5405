"""Checks on what a visitor sends: the upload must be a readable, not-too-large image; the prompt non-empty.

Huge images are refused, not downscaled: a 40-megapixel decode alone costs ~120 MB per session,
and the model sees a 336-pixel (or smaller) resize anyway, so a visitor loses nothing by
downscaling first. Limits are our choice for a shared CPU demo.
"""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from lvlm_guard.errors import GuardError, ImageInputError

MAX_UPLOAD_MB = 20  # our choice; app/.streamlit/config.toml's server.maxUploadSize says the same to Streamlit
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024  # Streamlit's MB are MiB (maxUploadSize * 1024 * 1024)
MAX_PIXELS = 40_000_000  # our choice: 40 megapixels
UPLOAD_LABEL = f"An image (PNG, JPEG, WebP ...; at most {MAX_UPLOAD_MB} MB and {MAX_PIXELS // 1_000_000} megapixels)"


class PromptInputError(GuardError, ValueError):
    """The question is empty (or only whitespace)."""


def read_image(data: bytes, name: str = "upload") -> Image.Image:
    """Decode an uploaded file into an RGB image, or raise `ImageInputError` saying why not."""
    if not data:
        raise ImageInputError(f"{name!r} is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageInputError(
            f"{name!r} is {len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD_MB} MB, downscale it first"
        )
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only: the size is known before decoding
    except (UnidentifiedImageError, OSError) as err:
        raise ImageInputError(f"{name!r} is not an image PIL can read (PNG, JPEG, WebP ...)") from err
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageInputError(
            f"{name!r} is {width}x{height} = {width * height / 1e6:.0f} megapixels; the limit is"
            f" {MAX_PIXELS / 1e6:.0f}, downscale it first"
        )
    if width == 0 or height == 0:
        raise ImageInputError(f"{name!r} has no pixels")
    try:
        return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageInputError(f"{name!r} could not be decoded: {err}") from err


def check_prompt(prompt: str | None) -> str:
    """The stripped prompt, or `PromptInputError` when there is nothing to ask."""
    text = (prompt or "").strip()
    if not text:
        raise PromptInputError("the question is empty; type what you want to know about the image")
    return text
