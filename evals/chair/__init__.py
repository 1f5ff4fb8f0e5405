"""CHAIR: Caption Hallucination Assessment with Image Relevance (Rohrbach et al., EMNLP 2018)."""
