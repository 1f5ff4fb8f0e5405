"""VCD's visual uncertainty: the forward diffusion process applied to the processed image.

Official code DAMO-NLP-SG/VCD `vcd_utils/vcd_add_noise.py`:
- 1000 steps (:4); betas = sigmoid(linspace(-6, 6, 1000)) * (0.5e-2 - 1e-5) + 1e-5 (:7-8), float32;
- alpha_bar_t = cumprod(1 - betas) (:11-12);
- q(x_t | x_0) = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * eps, eps ~ N(0, I) (:18-22, :26);
- applied to `image_processor.preprocess(image)['pixel_values']`, i.e. the normalised tensor the
  model reads (experiments/eval/object_hallucination_vqa_llava.py:57-60), at noise_step 500 (:115).

The official code draws eps from torch's global generator once per question (set_seed(42) at the
start of the run, :121). Here eps is drawn per picture from a generator seeded with `seed` and the
picture's own content, so the noised image depends only on the image and the seed: the same under
any batch composition, any device and any earlier run.
"""

from __future__ import annotations

import hashlib

import torch

NUM_STEPS = 1000  # vcd_add_noise.py:4


def alpha_bar_sqrt(noise_step: int) -> tuple[float, float]:
    """`(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t))` of step `t`, in the official float32 schedule."""
    betas = torch.linspace(-6, 6, NUM_STEPS)
    betas = torch.sigmoid(betas) * (0.5e-2 - 1e-5) + 1e-5  # vcd_add_noise.py:7-8
    alphas_prod = torch.cumprod(1 - betas, dim=0)  # :11-12
    return float(torch.sqrt(alphas_prod[noise_step])), float(torch.sqrt(1 - alphas_prod[noise_step]))  # :14,16


def q_sample(x0: torch.Tensor, eps: torch.Tensor, noise_step: int) -> torch.Tensor:
    """`sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps` (vcd_add_noise.py:18-22), in float32."""
    keep, mix = alpha_bar_sqrt(noise_step)
    return keep * x0.float() + mix * eps.float()


def picture_noise(picture: torch.Tensor, seed: int) -> torch.Tensor:
    """Standard normal noise of `picture`'s shape (float32, CPU), seeded by `seed` and its content."""
    content = picture.detach().float().cpu().contiguous().numpy().tobytes()
    digest = hashlib.blake2b(content, digest_size=8, key=str(seed).encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    return torch.randn(picture.shape, generator=generator, dtype=torch.float32)


def pictures(pixel_values: torch.Tensor) -> torch.Tensor:
    """The processor's tensor as a stack of the units noise is drawn for: `[n, C, H, W]` pictures
    (images, tiles, crops, sub-images: every leading axis flattened) or, for a 2-D tensor of
    flattened patches (Qwen2-VL), its rows."""
    if pixel_values.ndim >= 4:
        return pixel_values.reshape(-1, *pixel_values.shape[-3:])
    return pixel_values


def add_diffusion_noise(pixel_values: torch.Tensor, noise_step: int, seed: int) -> torch.Tensor:
    """The noised copy of a processor's `pixel_values` (same shape and dtype).

    Pictures that are exactly zero are left as they are: they are the padding images of a batch
    (Idefics3 marks padding that way and would read noised padding as real images)."""
    units = pictures(pixel_values)
    out = torch.empty_like(units)
    for i, unit in enumerate(units):
        if not unit.any():
            out[i] = unit
            continue
        eps = picture_noise(unit, seed).to(unit.device)
        out[i] = q_sample(unit, eps, noise_step).to(unit.dtype)
    return out.reshape(pixel_values.shape)
