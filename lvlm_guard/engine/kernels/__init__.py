"""The fused Triton decoding kernel and its cached launcher: generic over a method's per-key and
per-group weights (modes AMPLIFY, REDISTRIBUTE), no method names inside."""
