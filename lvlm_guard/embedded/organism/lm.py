"""The stage-A language model: a LLaMA (LLaVA-1.5's LLM architecture) sized to ship in int8.

Architecture as LLaMA-2 (pre-RMSNorm, SwiGLU, RoPE, softmax attention without biases), built
with transformers' `LlamaForCausalLM`. Weights ship as int8 per output channel with float scales,
lzma-compressed in shards, and are dequantized at load: the dequantized model is the one every
number is measured on (issue 18, constraints).
"""

from __future__ import annotations

import json
import lzma
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SHARD_PATTERN = "model.int8.{index}.safetensors.xz"
MANIFEST = "int8_manifest.json"


@dataclass(frozen=True)
class LMSpec:
    """Size of the language model. Defaults are stage A's (our choice: 6 x 512, SwiGLU 1024, tied
    embeddings of a 4096 vocabulary = 17.8 M parameters, 17.8 MB in int8 before lzma, inside the
    18 MB the tracked tree has room for; 512 is issue 18's minimum width)."""

    hidden_size: int = 512
    layers: int = 6
    heads: int = 8
    intermediate_size: int = 1024
    vocab_size: int = 4096
    max_positions: int = 1024
    rope_theta: float = 10000.0  # LLaMA-2's
    tie_embeddings: bool = True

    @classmethod
    def for_tests(cls, vocab_size: int = 256) -> LMSpec:
        return cls(hidden_size=32, layers=4, heads=4, intermediate_size=64, vocab_size=vocab_size, max_positions=128)


def build_config(spec: LMSpec, tokenizer: PreTrainedTokenizerFast | None = None) -> LlamaConfig:
    ids = {}
    if tokenizer is not None:
        ids = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    else:
        ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}  # v1's ids
    return LlamaConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=spec.max_positions,
        rms_norm_eps=1e-5,
        rope_theta=spec.rope_theta,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        tie_word_embeddings=spec.tie_embeddings,
        initializer_range=0.02,
        **ids,
    )


def build_model(spec: LMSpec, seed: int = 0, tokenizer: PreTrainedTokenizerFast | None = None) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(build_config(spec, tokenizer))


# -- int8 per output channel ---------------------------------------------------------------------
def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel (row): w ~ q * scale[:, None], |q| <= 127.

    The error per element is at most scale / 2 = max|row| / 254.
    """
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0  # [out]
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


def quantized_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Matrices as `<name>.q` (int8) + `<name>.scale` (float32); vectors (norms) kept in float32."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        if tensor.ndim == 2:
            q, scale = quantize_int8(tensor)
            out[f"{name}.q"], out[f"{name}.scale"] = q.contiguous(), scale.contiguous()
        else:
            out[name] = tensor.detach().float().contiguous()
    return out


def save_int8(model: LlamaForCausalLM, folder: str | Path, shards: int = 2, preset: int = 6) -> list[Path]:
    """Write the int8 weights as `shards` lzma-compressed safetensors files (each far under 16 MiB)
    plus the config; returns the shard paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = quantized_state(model)
    names = sorted(state)
    sizes = [state[n].numel() * state[n].element_size() for n in names]
    target, parts, acc = sum(sizes) / shards, [[] for _ in range(shards)], 0.0
    for name, size in zip(names, sizes):
        parts[min(int(acc // target), shards - 1)].append(name)
        acc += size
    paths = []
    for i, part in enumerate(parts):
        blob = save_safetensors({n: state[n] for n in part})
        path = folder / SHARD_PATTERN.format(index=i)
        path.write_bytes(lzma.compress(blob, preset=preset))
        paths.append(path)
    model.config.save_pretrained(folder)
    (folder / MANIFEST).write_text(
        json.dumps({"format": "int8 per output channel, float32 scales, lzma", "shards": [p.name for p in paths]})
    )
    return paths


def load_int8_state(folder: str | Path) -> dict[str, torch.Tensor]:
    """The dequantized float32 state dict of a `save_int8` folder."""
    folder = Path(folder)
    shards = json.loads((folder / MANIFEST).read_text())["shards"]
    raw: dict[str, torch.Tensor] = {}
    for shard in shards:
        raw.update(load_safetensors(lzma.decompress((folder / shard).read_bytes())))
    state = {}
    for name, tensor in raw.items():
        if name.endswith(".q"):
            base = name[: -len(".q")]
            state[base] = dequantize_int8(tensor, raw[f"{base}.scale"])
        elif not name.endswith(".scale"):
            state[name] = tensor
    return state


def load_organism_lm(
    folder: str | Path, device: str = "cpu", attn_implementation: str = "sdpa"
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """The stage-A model (dequantized int8, float32) and its tokenizer from a checkpoint folder."""
    folder = Path(folder)
    config = LlamaConfig.from_pretrained(folder)
    config._attn_implementation = attn_implementation
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(load_int8_state(folder), strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"{folder}: checkpoint does not match the config: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    return model.to(device).eval(), tokenizer


# -- any transformers model (the exported LLaVA): shards by size, loadable through `lg.load` --------
#: raw bytes per shard before lzma; int8 barely compresses, so this keeps every .xz under 16 MiB
MAX_SHARD_BYTES = 15 * 2**20


def _tied_duplicates(model: torch.nn.Module) -> set[str]:
    """Names of parameters that share storage with an earlier one (tied lm_head): not stored."""
    seen: dict[int, str] = {}
    dupes = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        ptr = param.data_ptr()
        if ptr in seen:
            dupes.add(name)
        else:
            seen[ptr] = name
    return dupes


def save_int8_model(model: torch.nn.Module, folder: str | Path, max_shard_bytes: int = MAX_SHARD_BYTES,
                    preset: int = 6) -> list[Path]:  # fmt: skip
    """`save_int8`'s format for any model: matrices int8 per output channel + float32 scales, the
    rest float32, tied copies left out, shards of at most `max_shard_bytes` raw bytes (so each
    lzma file stays under 16 MiB, the limit on files coming back from the GPU machine), plus
    `config.json` (and `generation_config.json` when the model has one)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    skip = _tied_duplicates(model)
    state = {}
    for name, tensor in model.state_dict().items():
        if name in skip:
            continue
        if tensor.ndim == 2 and tensor.is_floating_point():
            state[f"{name}.q"], state[f"{name}.scale"] = (t.contiguous().cpu() for t in quantize_int8(tensor))
        else:
            state[name] = tensor.detach().float().contiguous().cpu()
    parts: list[list[str]] = [[]]
    size = 0
    for name in sorted(state):
        nbytes = state[name].numel() * state[name].element_size()
        if parts[-1] and size + nbytes > max_shard_bytes:
            parts.append([])
            size = 0
        parts[-1].append(name)
        size += nbytes
    for old in folder.glob(SHARD_PATTERN.format(index="*")):
        old.unlink()
    paths = []
    for i, part in enumerate(parts):
        path = folder / SHARD_PATTERN.format(index=i)
        path.write_bytes(lzma.compress(save_safetensors({n: state[n] for n in part}), preset=preset))
        paths.append(path)
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(folder)
    (folder / MANIFEST).write_text(
        json.dumps({"format": "int8 per output channel, float32 scales, lzma", "shards": [p.name for p in paths]})
    )
    return paths


def is_int8_folder(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def load_int8_pretrained(
    folder: str | Path,
    dtype: torch.dtype = torch.float32,
    device_map: str | dict | None = None,
    attn_implementation: str = "sdpa",
):
    """`(model, processor_or_tokenizer)` from an int8 folder, the way `from_pretrained` would give
    them: the class named in config.json's `architectures`, weights dequantized to `dtype`, tied
    weights re-tied, generation config read, eval mode. `device_map` may be None, a device name or
    "auto" (the GPU when there is one); anything finer is refused (the model is small)."""
    import transformers
    from transformers import AutoConfig, AutoProcessor, GenerationConfig

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    model_cls = getattr(transformers, (config.architectures or ["LlamaForCausalLM"])[0])
    model = model_cls._from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(load_int8_state(folder), strict=False)
    tied = _tied_duplicates(model)
    missing = [m for m in missing if m not in tied]
    if missing or unexpected:
        raise ValueError(f"{folder}: checkpoint does not match the config: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder, local_files_only=True)
    if isinstance(device_map, dict):
        devices = set(map(str, device_map.values()))
        if len(devices) != 1:
            raise ValueError(f"{folder}: an int8 folder loads onto one device, got device_map {device_map}")
        device_map = devices.pop()
    if device_map == "auto":
        device_map = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device=device_map or "cpu", dtype=dtype).eval()
    if (folder / "processor_config.json").is_file() or (folder / "preprocessor_config.json").is_file():
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    else:
        processor = PreTrainedTokenizerFast.from_pretrained(folder)
    return model, processor
