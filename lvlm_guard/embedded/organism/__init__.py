"""The second-generation embedded model (issue 18), built in stages; stage A is a text-only LLaMA.

`text` draws the world's procedural text, `debian` cleans the offline English of Debian's text
packages, `tokenizer` builds the word-level tokenizer, `lm` builds, quantizes and loads the model,
and `gate` computes the stage-A probes (BOS massive activations and attention sinks).
"""
