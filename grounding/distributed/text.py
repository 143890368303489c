"""(R) Ray Data adapter: tokenise report texts in parallel for Word2Vec.

The UDF is a pure ``dict[str, np.ndarray] -> dict`` function over batches. Each row keeps its
corpus index, and the driver sorts by it, so the sentence order (and therefore the trained
vectors) does not depend on how Ray scheduled the batches.
"""

from __future__ import annotations

import numpy as np

from grounding.text.word_vectors import sentences_of

_SENTENCE_SEP = "\n"


def tokenize_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{"index": (B,), "text": (B,)} -> {"index": (B,), "sentences": (B,) str, one sentence a line}."""
    joined = [_SENTENCE_SEP.join(" ".join(s) for s in sentences_of(t)) for t in batch["text"]]
    return {"index": np.asarray(batch["index"]), "sentences": np.asarray(joined, dtype=object)}


def tokenize_texts(texts: list[str], batch_size: int = 256) -> list[list[list[str]]]:
    """Each report's sentences (in corpus order), tokenised by Ray Data ``map_batches``.

    Ray must already be initialised (``grounding.distributed.runtime.init_ray``).
    """
    import ray

    if not texts:
        return []
    ds = ray.data.from_items([{"index": i, "text": t} for i, t in enumerate(texts)])
    ds = ds.map_batches(tokenize_batch, batch_size=batch_size, batch_format="numpy")
    rows = sorted(ds.take_all(), key=lambda r: int(r["index"]))
    return [[s.split(" ") for s in str(r["sentences"]).split(_SENTENCE_SEP) if s] for r in rows]
