"""`load()`: a model and its processor from a hub id, a local directory or a short name.

The loading path is the real one (transformers `from_pretrained`), so it works on real
checkpoints; offline with missing weights it raises one `ModelNotFoundError` naming the id.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoProcessor

from lvlm_guard.embedded import CHECKPOINTS
from lvlm_guard.errors import LoadOptionError, ModelNotFoundError, QuantizationUnavailableError
from lvlm_guard.models import adapter_class_for_architecture

#: short names of models that ship inside the package
SHORT_NAMES = {"tiny-coco": CHECKPOINTS / "tiny-coco"}

_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "auto": "auto",  # transformers: the checkpoint's own dtype
}


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # not a valid repo id, or an old huggingface_hub: let from_pretrained decide
        return True


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (HF_HUB_OFFLINE=1: never asked)."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def default_dtype(device_map, quantization: str | None = None) -> torch.dtype:
    """The one default of the API and the CLI: bfloat16 where the model goes to a GPU (or is
    quantized), float32 on the CPU (bfloat16 matmuls are slow on most CPUs, and one default keeps
    the API's and the CLI's unguarded answers identical)."""
    on_cpu = device_map is None or device_map == "cpu" or (
        isinstance(device_map, dict) and set(map(str, device_map.values())) <= {"cpu"}
    )
    if quantization is not None or (not on_cpu and torch.cuda.is_available()):
        return torch.bfloat16
    return torch.float32


def resolve_model_path(name_or_path: str | Path) -> str:
    """A short name's packaged directory, a local directory, or the hub id unchanged."""
    name = str(name_or_path)
    if name in SHORT_NAMES:
        path = SHORT_NAMES[name]
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"the packaged model {name!r} is missing at {path}; reinstall lvlm_guard or train it with"
                " scripts/train_tiny_llava.py"
            )
        return str(path)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{name!r} is a local path but has no config.json")
        return str(path)
    return name


def _dtype(dtype: str | torch.dtype):
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise LoadOptionError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)} (or leave it unset)") from None


def quantization_config(quantization: str | None, compute_dtype, skip_modules: tuple[str, ...]):
    """bitsandbytes config that leaves the vision tower, projector and lm_head unquantized."""
    if quantization is None:
        return None
    if quantization not in ("4bit", "8bit"):
        raise LoadOptionError(f"quantization must be '4bit', '8bit' or None, got {quantization!r}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise QuantizationUnavailableError(
            f"{quantization} loading needs bitsandbytes: pip install 'lvlm_guard[quant]'"
        ) from None
    if not torch.cuda.is_available():
        raise QuantizationUnavailableError(f"{quantization} loading with bitsandbytes needs a CUDA GPU")
    if quantization == "4bit":
        return transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute_dtype if compute_dtype != "auto" else torch.bfloat16,
            llm_int8_skip_modules=list(skip_modules),
        )
    return transformers.BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(skip_modules))


def load(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
    quantization: str | None = None,
    attn_implementation: str = "sdpa",
    local_files_only: bool | None = None,
):
    """Load `(model, processor)`; the model is in eval mode.

    `dtype` None: `default_dtype` (float32 on the CPU, bfloat16 on a GPU); "auto": the
    checkpoint's. `device_map` goes to accelerate ("auto", "cuda:0", a dict ...); `quantization` is
    "4bit", "8bit" or None (the vision tower and projector stay in `dtype`).
    """
    source = resolve_model_path(name_or_path)
    is_local = Path(source).exists()
    if not is_local and not local_files_only and not _in_hub_cache(source) and not hub_reachable():
        raise ModelNotFoundError(
            f"cannot load model {source!r}: it is not a local directory, not in the local Hugging Face cache,"
            " and the hub cannot be reached from here (offline?); pass a local directory or 'tiny-coco'"
        )  # at once, instead of the hub client's retries
    offline = {"local_files_only": True} if (is_local or local_files_only) else {}
    if is_local and (Path(source) / "int8_manifest.json").is_file():  # int8 + lzma (organism v2, issue 18)
        from lvlm_guard.embedded.organism.lm import load_int8_pretrained

        if quantization is not None:
            raise LoadOptionError(f"{source} is stored in int8 already; load it without quantization=")
        wanted = default_dtype(device_map) if dtype is None else _dtype(dtype)
        return load_int8_pretrained(source, dtype=torch.float32 if wanted == "auto" else wanted,
                                    device_map=device_map, attn_implementation=attn_implementation)  # fmt: skip
    try:
        config = AutoConfig.from_pretrained(source, **offline)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"cannot load model {str(name_or_path)!r}: no local directory of that name and the hub id"
            f" is not in the local Hugging Face cache (offline?). Cause: {str(exc).splitlines()[0]}"
        ) from None
    architecture = (config.architectures or [type(config).__name__.replace("Config", "ForConditionalGeneration")])[0]
    adapter_cls = adapter_class_for_architecture(architecture, source=str(name_or_path))
    model_cls = getattr(transformers, architecture)
    compute_dtype = default_dtype(device_map, quantization) if dtype is None else _dtype(dtype)
    kwargs = {"dtype": compute_dtype, "attn_implementation": attn_implementation, **offline}
    if device_map is not None:
        kwargs["device_map"] = device_map
    quant = quantization_config(quantization, compute_dtype, adapter_cls.unquantized_modules)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs.setdefault("device_map", "auto")
    try:
        model = model_cls.from_pretrained(source, **kwargs)
        processor = AutoProcessor.from_pretrained(source, **offline)
    except OSError as exc:
        raise ModelNotFoundError(
            f"cannot load the weights or processor of {str(name_or_path)!r} ({source}): {str(exc).splitlines()[0]}"
        ) from None
    model.eval()
    return model, processor
