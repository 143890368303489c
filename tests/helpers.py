"""Small data writers shared by several test files."""

from __future__ import annotations


def write_test_vectors(directory, dim: int = 8) -> None:
    """A word-vectors folder in the job's own format, from random vectors (for training tests)."""
    from grounding.bench.train import synthetic_vectors
    from grounding.text.word_vectors import write_attribute_vectors

    v = synthetic_vectors(dim)
    write_attribute_vectors(directory, v.vectors, v.negative_vectors, v.negative_words)
