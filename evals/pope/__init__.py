"""POPE: Polling-based Object Probing Evaluation (Li et al., EMNLP 2023)."""
