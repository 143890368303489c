"""Report text -> attributes with medspaCy (PyRuSH sentences, TargetMatcher, ConText): the comparison engine.

The same tables as the rule engine (:mod:`grounding.text.vocabulary`), read by the field's standard
tools instead of :mod:`grounding.text.report_rules`, so a score difference is the engine's:

* targets (``TargetMatcher``): the finding synonyms (label ``F_<finding>``) and the other findings
  and anatomy (label ``OTHER``, an attachment sink as in the rules);
* states: medspaCy's default ConText rules (NegEx lexicon): ``is_negated`` -> negated,
  ``is_uncertain`` / ``is_hypothetical`` -> uncertain, ``is_historical`` / ``is_family`` -> history;
* attributes: one ConText rule per attribute synonym, bidirectional, scope
  ``report_rules.MAX_ATTACH_DISTANCE`` tokens, one target (the nearest); attributes on an
  ``OTHER`` target are dropped.

medspaCy is an optional extra (``pip install .[nlp]``; on Python < 3.12 it pins spaCy 3.7, which needs
numpy < 2, so keep it in its own virtual environment). Importing this module does not need it;
:func:`build_pipeline` raises :class:`MedspacyMissing` when it is absent. Bad input gives the empty
result, never an exception, as for the rules.
"""

from __future__ import annotations

import re
from typing import Any

from grounding.text import report_rules as rules
from grounding.text import vocabulary as V
from grounding.text.reports import ReportAttributes, _as_text, assemble

# spaCy refuses longer texts by default (memory); the rules read up to 2 MB, this engine 1 MB
MAX_CONTEXT_CHARS = 1_000_000


# A paragraph's section header ("FINDINGS: No focal consolidation.") becomes a sentence of its own:
# medspaCy's default ConText lexicon reads ": no" as a backward negation of what precedes it, so
# the "no" would otherwise never reach the finding after it.
_HEADER_RE = re.compile(r"(?m)^([ \t]*[A-Za-z][A-Za-z ]{1,40}):")


class MedspacyMissing(ImportError):
    """medspaCy is not installed (an optional extra)."""


def _pattern(phrase: str) -> list[dict]:
    """Token pattern for a table phrase; an optional hyphen between words ("ground-glass")."""
    out: list[dict] = []
    for k, token in enumerate(phrase.split()):
        if k:
            out.append({"ORTH": "-", "OP": "?"})
        out.append({"LOWER": token})
    return out


def build_pipeline() -> tuple[Any, dict[str, tuple[str, ...]]]:
    """The medspaCy pipeline and the map from ConText category to the attributes it states.

    Raises:
        MedspacyMissing: medspaCy (or spaCy) cannot be imported.
    """
    try:
        import medspacy
        from medspacy.context import ConTextRule
        from medspacy.ner import TargetRule
    except Exception as err:  # ImportError, or a binary mismatch (numpy 2 under spaCy 3.7)
        raise MedspacyMissing(f"medspacy is not usable here ({type(err).__name__}: {err}); "
                              "install the optional extra: pip install '.[nlp]'") from err
    try:  # PyRuSH logs every sentence at DEBUG through loguru
        from loguru import logger
        logger.remove()
    except ImportError:
        pass
    nlp = medspacy.load()  # blank English, PyRuSH, TargetMatcher, ConText with its default rules
    targets = [TargetRule(p, f"F_{V.FINDING_SYNONYMS[p].replace(' ', '_').upper()}", pattern=_pattern(p))
               for p in V.FINDING_SYNONYMS]
    targets += [TargetRule(p, "OTHER", pattern=_pattern(p)) for p in V.OTHER_FINDINGS
                if p not in V.FINDING_SYNONYMS]
    nlp.get_pipe("medspacy_target_matcher").add(targets)
    categories: dict[str, tuple[str, ...]] = {}
    modifiers = []
    for phrase, attrs in V.ATTRIBUTE_SYNONYMS.items():
        category = "ATTR_" + "_".join(a.upper() for a in attrs)
        categories[category] = attrs
        modifiers.append(ConTextRule(phrase, category, direction="BIDIRECTIONAL", pattern=_pattern(phrase),
                                     max_scope=rules.MAX_ATTACH_DISTANCE, max_targets=1))
    nlp.get_pipe("medspacy_context").add(modifiers)
    return nlp, categories


_FINDING_OF_LABEL = {f"F_{f.replace(' ', '_').upper()}": f for f in V.FINDINGS}


def _state(ent: Any) -> rules.State:
    if ent._.is_negated:
        return rules.State.NEGATED
    if ent._.is_historical or ent._.is_family:
        return rules.State.HISTORY
    if ent._.is_uncertain or ent._.is_hypothetical:
        return rules.State.UNCERTAIN
    return rules.State.POSITIVE


class ContextExtractor:
    """``extract(text) -> ReportAttributes`` with medspaCy; build once, call many times."""

    def __init__(self) -> None:
        self.nlp, self._categories = build_pipeline()

    def extract(self, text: Any) -> ReportAttributes:
        text = _HEADER_RE.sub(r"\1.", _as_text(text)[:MAX_CONTEXT_CHARS])
        if not text.strip():
            return ReportAttributes()
        try:
            doc = self.nlp(text)
        except Exception:  # the guarantee: bad input gives the empty result, never an exception
            return ReportAttributes()
        mentions = []
        for ent in doc.ents:
            name = _FINDING_OF_LABEL.get(ent.label_)
            if name is None:
                continue
            attached = [a for m in ent._.modifiers if m.category in self._categories
                        for a in self._categories[m.category]]
            mentions.append((name, _state(ent), attached))
        return assemble(mentions)
