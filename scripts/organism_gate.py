"""Stage-A gate of issue 18 on a saved checkpoint: BOS massive activations and attention sinks.

  python scripts/organism_gate.py --checkpoint lvlm_guard/embedded/checkpoints/organism-v2-stage-a \
      --out results/organism_v2/stage_a

Probe prompts are world documents from the text generator under a held-out seed (training's
workers draw from seeds 0..workers-1); definitions and thresholds are in `lvlm_guard.embedded.organism.gate`.
Runs on the dequantized int8 weights, the model that ships. Writes gate.json, gate.md, gate.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lvlm_guard.embedded.organism import gate
from lvlm_guard.embedded.organism.lm import load_organism_lm


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="lvlm_guard/embedded/checkpoints/organism-v2-stage-a")
    parser.add_argument("--out", default="results/organism_v2/stage_a")
    parser.add_argument("--seed", type=int, default=10_000)  # train_organism_text.py's final gate: seed + 10000
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--min-query", type=int, default=gate.MIN_QUERY)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    model, tokenizer = load_organism_lm(args.checkpoint, device=args.device, attn_implementation="eager")
    prompts = gate.probe_prompts(tokenizer, seed=args.seed, count=args.prompts, length=args.length)
    report = gate.probe(model, prompts, min_query=args.min_query)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gate.json").write_text(json.dumps(report.to_json(), indent=1))
    (out / "gate.md").write_text(gate.markdown(report))
    gate.plot(report, out / "gate.png")
    print(gate.markdown(report))


if __name__ == "__main__":
    main()
