"""Stage-A gate of issue 18: does the text-only LM have LLaMA's BOS sink and massive activations?

Definitions (ours, stated in the results' README):

* layers are the decoder layers, numbered 0..L-1; the hidden state of layer l is its output
  (`hidden_states[l + 1]` in transformers); probed layers are l = 2..L-2;
* layer median: the median of |h| over every token of every probe prompt and every dimension of
  that layer's hidden state;
* BOS ratio: max over dimensions of |h| at position 0 (BOS), over the layer median, averaged over
  prompts (with causal attention BOS's state is the same in every prompt);
* top-2 energy share: sum of h^2 in BOS's two largest |h| dimensions over BOS's sum of h^2;
  "fixed" dims: the set of two dims that is BOS's top-2 most often over (prompt, layer), and the
  share of probed (prompt, layer) pairs whose top-2 is that set;
* BOS attention of a head: attention weight on key 0, averaged over query rows q >= `min_query`
  and over prompts; a sink head has >= 0.3 (Gu et al., ICLR 2025, Sec. 3's epsilon = 0.3).

Gate (issue 18): in every probed layer BOS ratio >= 100 with >= 50% of BOS's energy in the fixed
top-2 dims; >= 30% of the heads of the probed layers are sink heads.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
import torch

RATIO_MIN = 100.0
ENERGY_MIN = 0.5
HEAD_ATTENTION_MIN = 0.3
HEAD_SHARE_MIN = 0.3
MIN_QUERY = 16  # query rows before this see few keys, where BOS gets attention trivially


def probed_layers(num_layers: int) -> list[int]:
    return list(range(2, num_layers - 1))


def bos_activation_stats(hidden: torch.Tensor) -> dict[str, object]:
    """One layer, one prompt. hidden: [seq, dim]. BOS max|h|, median |h| of the layer over all
    tokens and dims, BOS's top-2 dims and their share of BOS's energy."""
    h = hidden.double()
    bos = h[0]
    magnitude = bos.abs()
    top2 = torch.topk(magnitude, 2).indices
    energy = (bos**2).sum()
    return {
        "bos_max": float(magnitude.max()),
        "median": float(np.median(h.abs().numpy())),  # numpy's median: mean of the middle two
        "top2": sorted(int(i) for i in top2),
        "top2_share": float((bos[top2] ** 2).sum() / energy),
    }


def head_bos_attention(attentions: torch.Tensor, min_query: int = MIN_QUERY) -> torch.Tensor:
    """attentions: [heads, q_len, k_len] of one prompt -> [heads]: mean over rows q >= min_query of
    the weight on key 0."""
    return attentions[:, min_query:, 0].double().mean(dim=1)


@dataclass(frozen=True)
class LayerReport:
    layer: int
    bos_ratio: float
    bos_max: float
    median: float
    top2_dims: list[int]
    top2_share: float  # BOS energy share in its own top-2 dims (mean over prompts)
    fixed_dims_share: float  # BOS energy share in the session-wide fixed dims (mean over prompts)
    head_bos_attention: list[float]


@dataclass(frozen=True)
class GateReport:
    layers: list[LayerReport]
    fixed_dims: list[int]
    fixed_dims_agreement: float  # share of (prompt, probed layer) whose top-2 is fixed_dims
    sink_head_share: float
    sink_heads: int
    heads: int
    prompts: int
    min_query: int
    massive_pass: bool
    sink_pass: bool

    @property
    def passed(self) -> bool:
        return self.massive_pass and self.sink_pass

    def to_json(self) -> dict:
        return {**asdict(self), "passed": self.passed}


@torch.no_grad()
def probe(model, prompts: list[torch.Tensor], min_query: int = MIN_QUERY) -> GateReport:
    """Run `prompts` (each [seq] token ids, BOS first) one at a time through a model that returns
    attentions (eager attention) and hidden states, and compute the gate."""
    num_layers = model.config.num_hidden_layers
    layers = probed_layers(num_layers)
    stats: dict[int, list[dict]] = {layer: [] for layer in layers}
    heads: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    device = next(model.parameters()).device
    for ids in prompts:
        out = model(input_ids=ids[None].to(device), output_hidden_states=True, output_attentions=True)
        for layer in layers:
            stats[layer].append(bos_activation_stats(out.hidden_states[layer + 1][0].float().cpu()))
            heads[layer].append(head_bos_attention(out.attentions[layer][0].float().cpu(), min_query))
    top2_sets = Counter(tuple(s["top2"]) for layer in layers for s in stats[layer])
    fixed, agree = top2_sets.most_common(1)[0]
    fixed_dims = list(fixed)
    agreement = agree / sum(top2_sets.values())
    reports = []
    for layer in layers:
        reports.append(_layer_report(model, layer, stats[layer], heads[layer], fixed_dims, prompts[0], device))
    all_heads = np.concatenate([r.head_bos_attention for r in reports])
    sink = int((all_heads >= HEAD_ATTENTION_MIN).sum())
    massive = all(r.bos_ratio >= RATIO_MIN and r.fixed_dims_share >= ENERGY_MIN for r in reports)
    share = sink / len(all_heads)
    return GateReport(
        reports,
        fixed_dims,
        agreement,
        share,
        sink,
        len(all_heads),
        len(prompts),
        min_query,
        massive,
        share >= HEAD_SHARE_MIN,
    )


def _layer_report(model, layer, stats, heads, fixed_dims, prompt, device) -> LayerReport:
    bos = _bos_state(model, layer, prompt, device)  # BOS's state is prompt-independent (causal)
    share = float((bos[fixed_dims] ** 2).sum() / (bos**2).sum())
    ratio = float(np.mean([s["bos_max"] / s["median"] for s in stats]))
    head_mean = torch.stack(heads).mean(dim=0)
    top = Counter(tuple(s["top2"]) for s in stats).most_common(1)[0][0]
    return LayerReport(
        layer,
        ratio,
        float(np.mean([s["bos_max"] for s in stats])),
        float(np.mean([s["median"] for s in stats])),
        list(top),
        float(np.mean([s["top2_share"] for s in stats])),
        share,
        [float(x) for x in head_mean],
    )


@torch.no_grad()
def _bos_state(model, layer: int, ids: torch.Tensor, device) -> torch.Tensor:
    out = model(input_ids=ids[:1][None].to(device), output_hidden_states=True)
    return out.hidden_states[layer + 1][0, 0].double().cpu()


def markdown(report: GateReport, title: str = "Stage-A gate") -> str:
    """A short table of the gate's numbers."""
    lines = [
        f"# {title}",
        "",
        f"{report.prompts} probe prompts; layers {report.layers[0].layer}..{report.layers[-1].layer} "
        f"(0-based decoder layers, output hidden states); head BOS attention averaged over query rows "
        f">= {report.min_query}.",
        "",
        "| layer | BOS max abs h | layer median abs h | ratio | BOS top-2 dims | top-2 energy | fixed-dims energy "
        "| heads >= 0.3 on BOS |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report.layers:
        sinks = sum(a >= HEAD_ATTENTION_MIN for a in r.head_bos_attention)
        lines.append(
            f"| {r.layer} | {r.bos_max:.2f} | {r.median:.4f} | {r.bos_ratio:.1f} | {r.top2_dims} | "
            f"{r.top2_share:.2f} | {r.fixed_dims_share:.2f} | {sinks}/{len(r.head_bos_attention)} |"
        )
    lines += [
        "",
        f"- fixed dims {report.fixed_dims}: BOS's top-2 in {report.fixed_dims_agreement:.0%} of (prompt, layer)",
        f"- massive activations (ratio >= {RATIO_MIN:g} and fixed-dims energy >= {ENERGY_MIN:.0%} in every "
        f"probed layer): **{'pass' if report.massive_pass else 'fail'}**",
        f"- sink heads: {report.sink_heads}/{report.heads} = {report.sink_head_share:.0%} (need "
        f">= {HEAD_SHARE_MIN:.0%}): **{'pass' if report.sink_pass else 'fail'}**",
        f"- gate: **{'pass' if report.passed else 'fail'}**",
        "",
    ]
    return "\n".join(lines)


def plot(report: GateReport, path) -> None:
    """Per-layer BOS ratio and per-head BOS attention."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    layers = [r.layer for r in report.layers]
    a.bar(layers, [r.bos_ratio for r in report.layers], color="tab:blue")
    a.axhline(RATIO_MIN, color="k", ls="--", lw=1)
    a.set_yscale("log")
    a.set_xlabel("layer")
    a.set_ylabel("BOS max|h| / layer median |h|")
    grid = np.array([r.head_bos_attention for r in report.layers])
    im = b.imshow(grid, vmin=0, vmax=1, aspect="auto", cmap="viridis")
    b.set_yticks(range(len(layers)), layers)
    b.set_xlabel("head")
    b.set_ylabel("layer")
    b.set_title("attention on BOS")
    fig.colorbar(im, ax=b)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def probe_prompts(tokenizer, seed: int = 10_000, count: int = 16, length: int = 512) -> list[torch.Tensor]:
    """Held-out probe prompts: world documents (text generator, `seed`) joined by </s> up to
    `length` tokens, BOS first."""
    from lvlm_guard.embedded.organism.text import WorldText

    gen = WorldText(np.random.default_rng(seed))
    core = tokenizer.backend_tokenizer
    prompts = []
    for _ in range(count):
        ids = [tokenizer.bos_token_id]
        while len(ids) < length:
            ids += core.encode(gen.document(), add_special_tokens=False).ids + [tokenizer.eos_token_id]
        prompts.append(torch.tensor(ids[:length]))
    return prompts
