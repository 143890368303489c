"""Word2Vec on the report corpus, the 22 attribute vectors m_j and their negatives (design.md 1.2).

Rules:

* Corpus: every report tokenised into sentences of lower-case words (``sentences_of``; the
  anonymisation token ``xxxx`` and punctuation are dropped). Trained with gensim Word2Vec,
  ``workers=1`` and a fixed seed, so the same corpus in the same order gives identical vectors.
* Attribute vector m_j: the word vector of the attribute word itself when it is in the model's
  vocabulary; else the mean of the unit vectors of its one-word synonyms that map to it alone
  (``basal`` <- ``basilar``, ``base``); else a deterministic random vector (seed, j) with the mean
  norm of the others, flagged ``fallback`` in the table.
* Negative attribute (``negative_rule``): ``attributes`` (default) picks, among the *other 21
  attribute vectors*, the one with the highest cosine to m_j, excluding attributes that share a
  synonym phrase with j (``bibasilar`` is both basal and bilateral, so those two never pair). The
  triplet loss swaps a report's attributes for their negatives, so a negative must itself be an
  attribute. ``vocabulary`` picks the nearest word of the whole vocabulary that is not j's word,
  not one of its synonyms and not a word mapping to j; its vector is that word's vector.
* Files in the output folder: ``word2vec.model`` (gensim, for inspection; pickle-based, never read
  by training), ``attribute_vectors.npz`` (``vectors``, ``negative_vectors``: float32 (22, d)),
  ``attribute_vectors.json`` (vocabulary version, attribute order, negative words, cosines,
  sources, sha256 of the npz, settings) and ``attribute_table.csv``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from grounding.text import report_rules
from grounding.data.storage import atomic_path, atomic_write_bytes, atomic_write_text
from grounding.text.vocabulary import ATTRIBUTE_SYNONYMS, ATTRIBUTES, VOCABULARY_VERSION

log = logging.getLogger(__name__)

MODEL_FILE = "word2vec.model"
VECTORS_FILE = "attribute_vectors.npz"
META_FILE = "attribute_vectors.json"
TABLE_FILE = "attribute_table.csv"
_DROP = frozenset({"xxxx", "\n\n", ".", ";", "!", "?", ":", ",", "/"})


@dataclass(frozen=True)
class AttributeVectors:
    """What the grounding model needs from the word vectors.

    Shapes: ``vectors`` and ``negative_vectors`` are float32 (22, d), rows in ``ATTRIBUTES`` order.
    """

    vectors: np.ndarray
    negative_vectors: np.ndarray
    negative_words: tuple[str, ...]
    vocabulary_version: str


def sentences_of(text: Any) -> list[list[str]]:
    """One report -> its sentences as word lists (empty for empty/non-text input)."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        return []
    out: list[list[str]] = []
    current: list[str] = []
    for tok in report_rules.tokenize(text):
        if tok in report_rules.BOUNDARY or tok in ("?", ":"):
            if current:
                out.append(current)
            current = []
        elif tok not in _DROP:
            current.append(tok)
    if current:
        out.append(current)
    return out


def rare_words(texts: Sequence[Any], reports: Sequence[list[list[str]]], min_reports: int) -> set[str]:
    """Words used by fewer than ``min_reports`` distinct reports, attribute words and their synonyms
    excepted: they are dropped before training, so no identifier, name or date written in one
    patient's report (or its copies) enters the vocabulary of ``word2vec.model``.

    ``reports[i]`` is the tokenised ``texts[i]`` (its sentences); identical texts count once.
    """
    if min_reports <= 1:
        return set()
    keep = {w for a in ATTRIBUTES for w in words_of(a)}
    counts: Counter = Counter()
    for sentences in dict(zip(texts, reports)).values():  # one entry per distinct text
        counts.update({w for sentence in sentences for w in sentence})
    return {w for w, n in counts.items() if n < min_reports and w not in keep}


def train_word2vec(sentences: list[list[str]], vector_size: int, window: int, min_count: int,
                   epochs: int, seed: int, skip_gram: bool = True):
    """gensim Word2Vec, single worker (deterministic for a seed and sentence order)."""
    from gensim.models import Word2Vec

    if not sentences:
        raise ValueError("word vectors: the corpus is empty (no report text found)")
    return Word2Vec(sentences=sentences, vector_size=vector_size, window=window,
                    min_count=min_count, epochs=epochs, seed=seed, workers=1,
                    sg=1 if skip_gram else 0)


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def single_word_synonyms() -> dict[str, list[str]]:
    """Attribute -> its one-token synonyms that name it alone (``basilar`` -> basal)."""
    out: dict[str, list[str]] = {a: [] for a in ATTRIBUTES}
    for phrase, attrs in ATTRIBUTE_SYNONYMS.items():
        if len(attrs) == 1 and " " not in phrase and phrase != attrs[0]:
            out[attrs[0]].append(phrase)
    return out


def words_of(attribute: str) -> set[str]:
    """Every token of every phrase that maps to ``attribute`` (its synonyms), and the word itself."""
    words = {attribute}
    for phrase, attrs in ATTRIBUTE_SYNONYMS.items():
        if attribute in attrs:
            words.update(phrase.split())
    return words


def sharing_attributes(attribute: str) -> set[str]:
    """Attributes named together with ``attribute`` by one phrase (bibasilar: basal+bilateral)."""
    return {a for attrs in ATTRIBUTE_SYNONYMS.values() if attribute in attrs for a in attrs} - {attribute}


def attribute_vectors(wv, seed: int) -> tuple[np.ndarray, list[str]]:
    """(22, d) float32 m_j from gensim KeyedVectors, and each row's source (word/synonyms/fallback)."""
    d = wv.vector_size
    rows: list[np.ndarray | None] = []
    sources: list[str] = []
    synonyms = single_word_synonyms()
    for name in ATTRIBUTES:
        if name in wv.key_to_index:
            rows.append(np.asarray(wv[name], dtype=np.float32))
            sources.append("word")
            continue
        found = [_unit(np.asarray(wv[w], dtype=np.float32)) for w in synonyms[name] if w in wv.key_to_index]
        if found:
            rows.append(np.mean(found, axis=0).astype(np.float32))
            sources.append("synonyms")
        else:
            rows.append(None)
            sources.append("fallback")
    norms = [float(np.linalg.norm(r)) for r in rows if r is not None]
    scale = float(np.mean(norms)) if norms else 1.0
    for j, r in enumerate(rows):
        if r is None:  # deterministic for (seed, j): never silently a zero vector
            rng = np.random.default_rng([seed, j])
            rows[j] = (_unit(rng.standard_normal(d)) * scale).astype(np.float32)
    return np.stack(rows).astype(np.float32), sources


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, d) x (m, d) -> (n, m) cosines (zero rows give 0)."""
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return an @ bn.T


def choose_negatives_among_attributes(vectors: np.ndarray) -> tuple[list[int], list[float]]:
    """For each attribute j, the index of the most similar other attribute (rule ``attributes``).

    Attributes that share a synonym phrase with j are excluded. Ties go to the lower index.
    """
    sims = cosine_matrix(vectors, vectors)
    picks, cosines = [], []
    for j, name in enumerate(ATTRIBUTES):
        excluded = {j} | {ATTRIBUTES.index(a) for a in sharing_attributes(name)}
        order = [k for k in np.argsort(-sims[j], kind="stable") if k not in excluded]
        picks.append(int(order[0]))
        cosines.append(float(sims[j, order[0]]))
    return picks, cosines


def choose_negative_word(wv, vector: np.ndarray, attribute: str, topn: int = 50) -> tuple[str, float]:
    """Nearest vocabulary word to ``vector`` that is not a word of ``attribute`` (rule ``vocabulary``)."""
    excluded = words_of(attribute)
    for word, cos in wv.similar_by_vector(vector, topn=topn):
        if word not in excluded:
            return word, float(cos)
    raise ValueError(f"no negative word for {attribute!r} among the {topn} nearest words")


def build_attribute_table(wv, seed: int, rule: str = "attributes") -> dict[str, Any]:
    """All outputs of the word-vector stage as plain data (vectors as arrays)."""
    vectors, sources = attribute_vectors(wv, seed)
    if rule == "attributes":
        picks, cosines = choose_negatives_among_attributes(vectors)
        negative_words = [ATTRIBUTES[k] for k in picks]
        negative_vectors = vectors[picks]
    elif rule == "vocabulary":
        pairs = [choose_negative_word(wv, vectors[j], a) for j, a in enumerate(ATTRIBUTES)]
        negative_words = [w for w, _ in pairs]
        cosines = [c for _, c in pairs]
        negative_vectors = np.stack([np.asarray(wv[w], dtype=np.float32) for w in negative_words])
    else:
        raise ValueError(f"negative_rule must be 'attributes' or 'vocabulary', got {rule!r}")
    neighbours = []
    for j, name in enumerate(ATTRIBUTES):
        near = [(w, float(c)) for w, c in wv.similar_by_vector(vectors[j], topn=4) if w != name][:3]
        neighbours.append(near)
    return {
        "vectors": vectors.astype(np.float32), "negative_vectors": negative_vectors.astype(np.float32),
        "negative_words": negative_words, "cosines": cosines, "sources": sources,
        "neighbours": neighbours,
    }


def format_table(table: dict[str, Any]) -> str:
    lines = [f"{'attribute':<13}{'negative':<14}{'cosine':>7}  {'source':<9} nearest neighbours"]
    for j, name in enumerate(ATTRIBUTES):
        near = ", ".join(f"{w} ({c:.2f})" for w, c in table["neighbours"][j])
        lines.append(f"{name:<13}{table['negative_words'][j]:<14}{table['cosines'][j]:7.3f}  "
                     f"{table['sources'][j]:<9} {near}")
    return "\n".join(lines)


def write_attribute_vectors(directory: str | Path, vectors: np.ndarray, negative_vectors: np.ndarray,
                            negative_words: Iterable[str], extra: dict[str, Any] | None = None) -> None:
    """The npz + json pair that ``load_attribute_vectors`` reads; the json records the npz's sha256."""
    directory = Path(directory)
    buf = io.BytesIO()
    np.savez(buf, vectors=vectors, negative_vectors=negative_vectors)
    data = buf.getvalue()
    atomic_write_bytes(directory / VECTORS_FILE, data)
    meta = {"vocabulary_version": VOCABULARY_VERSION, "attributes": list(ATTRIBUTES),
            "negative_words": list(negative_words), "vector_size": int(np.asarray(vectors).shape[1]),
            "npz_sha256": hashlib.sha256(data).hexdigest(), **(extra or {})}
    atomic_write_text(directory / META_FILE, json.dumps(meta, indent=2))


def save_outputs(out_dir: str, model, table: dict[str, Any], settings: dict[str, Any]) -> None:
    """Write the model, the npz + json pair (sha256 recorded) and the CSV table, each atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / MODEL_FILE) as tmp:
        model.save(str(tmp), separately=[])  # one file, no side .npy files to lose
    write_attribute_vectors(out, table["vectors"], table["negative_vectors"], table["negative_words"],
                            extra={"cosines": list(table["cosines"]), "sources": list(table["sources"]),
                                   "settings": settings})
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["attribute", "negative_word", "cosine", "source", "neighbour_1", "neighbour_2",
                     "neighbour_3"])
    for j, name in enumerate(ATTRIBUTES):
        near = [f"{w}:{c:.3f}" for w, c in table["neighbours"][j]] + [""] * 3
        writer.writerow([name, table["negative_words"][j], f"{table['cosines'][j]:.4f}",
                         table["sources"][j], *near[:3]])
    atomic_write_text(out / TABLE_FILE, text.getvalue())


def load_attribute_vectors(directory: str | Path) -> AttributeVectors:
    """Read ``attribute_vectors.npz`` + ``.json`` (no pickle); the sha256 and shapes are checked.

    Raises:
        FileNotFoundError: a file is missing. ValueError: checksum, attribute order or shape
        mismatch. A different ``vocabulary_version`` with the same attribute order only warns.
    """
    directory = Path(directory)
    meta_path, npz_path = directory / META_FILE, directory / VECTORS_FILE
    meta = json.loads(meta_path.read_text())
    data = npz_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta.get("npz_sha256"):
        raise ValueError(f"{npz_path}: sha256 {digest} does not match {meta_path} ({meta.get('npz_sha256')})")
    if tuple(meta.get("attributes", ())) != ATTRIBUTES:
        raise ValueError(f"{meta_path}: attribute order differs from grounding.text.vocabulary.ATTRIBUTES")
    if meta.get("vocabulary_version") != VOCABULARY_VERSION:
        warnings.warn(f"{meta_path}: vocabulary version {meta.get('vocabulary_version')} != "
                      f"{VOCABULARY_VERSION} (same attribute order)", stacklevel=2)
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        vectors = np.asarray(npz["vectors"], dtype=np.float32)
        negatives = np.asarray(npz["negative_vectors"], dtype=np.float32)
    n = len(ATTRIBUTES)
    if vectors.ndim != 2 or vectors.shape[0] != n or negatives.shape != vectors.shape:
        raise ValueError(f"{npz_path}: expected two ({n}, d) arrays, got {vectors.shape} and {negatives.shape}")
    if not (np.isfinite(vectors).all() and np.isfinite(negatives).all()):
        raise ValueError(f"{npz_path}: non-finite values")
    words = tuple(meta.get("negative_words", ()))
    if len(words) != n:
        raise ValueError(f"{meta_path}: {len(words)} negative words for {n} attributes")
    return AttributeVectors(vectors, negatives, words, str(meta.get("vocabulary_version")))


def corpus_texts(manifest: str | None = None, indiana: str | None = None,
                 texts_dir: str | None = None) -> list[str]:
    """Report texts from a manifest (``report_text``), the Indiana archive and/or ``*.txt`` files.

    Order is deterministic (manifest rows, Indiana by number, files by name). Unreadable text
    files are logged by name and skipped.
    """
    out: list[str] = []
    if manifest:
        from grounding.data.storage import read_table

        out.extend(t for t in read_table(manifest, columns=["report_text"]).column(0).to_pylist() if t)
    if indiana:
        from grounding.text.indiana import iter_reports

        out.extend(r.text for r in iter_reports(indiana, "all") if r.text)
    if texts_dir:
        for path in sorted(Path(texts_dir).rglob("*.txt")):
            try:
                out.append(path.read_bytes().decode("utf-8", errors="replace"))
            except OSError as err:
                log.warning("%s: cannot read (%s); skipped", path, err.strerror)
    return out


def sentences_by_report(texts: Iterable[Any]) -> list[list[list[str]]]:
    """Each report's sentences, in order (the non-Ray path)."""
    return [sentences_of(t) for t in texts]


def sentences_from_texts(texts: Iterable[Any]) -> list[list[str]]:
    """All sentences of many reports, in order."""
    return [s for report in sentences_by_report(texts) for s in report]


def run(texts: list[str], out_dir: str, *, vector_size: int, window: int, min_count: int,
        epochs: int, seed: int, skip_gram: bool, negative_rule: str, min_reports: int = 1,
        tokenize=sentences_by_report) -> dict[str, Any]:
    """Tokenise (``tokenize``, per report: the Ray adapter or the in-process default), drop the words of
    fewer than ``min_reports`` reports (:func:`rare_words`), train, choose negatives, write every output
    into ``out_dir``. Returns the table (see :func:`build_attribute_table`)."""
    reports = tokenize(texts)
    rare = rare_words(texts, reports, min_reports)
    sentences = [kept for report in reports for s in report if (kept := [w for w in s if w not in rare])]
    model = train_word2vec(sentences, vector_size, window, min_count, epochs, seed, skip_gram)
    table = build_attribute_table(model.wv, seed, negative_rule)
    settings = {"vector_size": vector_size, "window": window, "min_count": min_count,
                "min_reports": min_reports, "words_dropped_as_rare": len(rare), "epochs": epochs,
                "seed": seed, "skip_gram": skip_gram, "negative_rule": negative_rule, "workers": 1,
                "reports": len(texts), "sentences": len(sentences),
                "tokens": sum(len(s) for s in sentences), "vocabulary": len(model.wv)}
    save_outputs(out_dir, model, table, settings)
    table["settings"] = settings
    return table
