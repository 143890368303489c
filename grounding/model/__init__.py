"""Model: cross-attention (design.md 1.4), the grounding model, triplet and attribute losses,
batching, the train/validation engine, checkpoints and inference.
"""
