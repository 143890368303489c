"""Rule engine behind :func:`grounding.text.reports.extract_attributes` (pure Python, no models).

Pipeline, all linear in the text length:

1. ``tokenize``: lower-case word tokens (unicode letters, digits) plus the boundary marks
   ``. ; ! ? :`` and paragraph breaks.
2. ``match``: greedy longest-phrase matching against the tables in :mod:`grounding.text.vocabulary`
   (findings, attribute synonyms, negation/uncertainty/history triggers, scope ends, section
   headers, other findings). Each match is a :class:`Mention`.
3. ``clauses``: sentence ends (``. ; ! \\n\\n``, a section header) cut the mentions into clauses;
   a clause longer than ``MAX_CLAUSE_TOKENS`` is cut too (bounds the work on garbage input).
4. ``assign_states``: NegEx-style scopes give each finding mention a state
   (positive / differential / negated / uncertain / history), precedence negated > history >
   uncertain > differential ("atelectasis versus infiltrate") > positive.
5. ``attach``: each run of attribute mentions (one phrase: "the left lung base") attaches to the
   nearest finding *or other finding* in its clause, at most ``MAX_ATTACH_DISTANCE`` tokens away,
   preferring the following one on a tie (pre-modifiers are the common case: "right lower lobe
   opacity"), and to the findings coordinated with it. Attributes that land on an other finding
   ("small left effusion") or on nothing are dropped.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from grounding.text import vocabulary as V

MAX_CLAUSE_TOKENS = 256
MAX_ATTACH_DISTANCE = 8  # tokens between an attribute phrase and its finding
BIDIRECTIONAL_WINDOW = 4  # "atelectasis versus pneumonia": nearest finding on each side, this close

_TOKEN_RE = re.compile(r"\n[ \t\r]*\n|[^\W_]+|[.;!?:,/]")
BOUNDARY = frozenset({".", ";", "!", "\n\n"})


class Kind(str, enum.Enum):
    FINDING = "finding"
    ATTRIBUTE = "attribute"
    OTHER = "other"  # other finding or anatomy: an attachment sink
    FOCUS = "focus"  # "most notably": what follows attaches backward
    NEG_PRE = "neg_pre"
    NEG_POST = "neg_post"
    NEG_BI = "neg_bi"
    PSEUDO = "pseudo"
    UNC_PRE = "unc_pre"
    UNC_POST = "unc_post"
    UNC_BI = "unc_bi"
    UNC_DIFF = "unc_diff"  # a differential: hedges the nearest finding on each side
    HIST_PRE = "hist_pre"
    END = "end"
    SECTION_HISTORY = "section_history"
    SECTION_BODY = "section_body"


class State(str, enum.Enum):
    POSITIVE = "positive"
    NEGATED = "negated"
    UNCERTAIN = "uncertain"
    HISTORY = "history"
    # one side of a differential ("atelectasis versus infiltrate"): the finding is hedged, but the
    # opacity it names is seen where the report says, so its attributes count as present
    DIFFERENTIAL = "differential"


_PRECEDENCE = {State.POSITIVE: 0, State.DIFFERENTIAL: 1, State.UNCERTAIN: 2, State.HISTORY: 3,
               State.NEGATED: 4}


@dataclass
class Mention:
    start: int  # token index of the first token
    end: int  # token index one past the last token
    kind: Kind
    payload: tuple[str, ...] = ()  # canonical finding or attribute names
    state: State = State.POSITIVE
    attached: list[str] = field(default_factory=list)


def _build_table() -> dict[str, list[tuple[int, dict[tuple[str, ...], tuple[Kind, tuple[str, ...]]]]]]:
    """First token -> [(phrase tokens, kind, payload)], longest phrase first.

    A phrase listed as both a PRE and a POST trigger becomes a two-way (BI) trigger; otherwise
    the first table that names a phrase wins, in the order below (pseudo-negations first so
    "no change" never reads as "no").
    """
    entries: dict[tuple[str, ...], tuple[Kind, tuple[str, ...]]] = {}

    def add(phrases, kind, payload_of=lambda p: ()):
        for phrase in phrases:
            key = tuple(phrase.split())
            if key not in entries:
                entries[key] = (kind, payload_of(phrase))

    def two_way(pre, post, pre_kind, post_kind, bi_kind):
        both = set(pre) & set(post)
        add(sorted(both), bi_kind)
        add([p for p in pre if p not in both], pre_kind)
        add([p for p in post if p not in both], post_kind)

    add(V.PSEUDO_NEGATION, Kind.PSEUDO)
    add(V.FINDING_SYNONYMS, Kind.FINDING, lambda p: (V.FINDING_SYNONYMS[p],))
    add(V.ATTRIBUTE_SYNONYMS, Kind.ATTRIBUTE, lambda p: V.ATTRIBUTE_SYNONYMS[p])
    add(V.HISTORY_PRE, Kind.HIST_PRE)
    add(V.UNCERTAIN_DIFFERENTIAL, Kind.UNC_DIFF)
    two_way(V.NEGATION_PRE, V.NEGATION_POST, Kind.NEG_PRE, Kind.NEG_POST, Kind.NEG_BI)
    two_way(V.UNCERTAIN_PRE, V.UNCERTAIN_POST, Kind.UNC_PRE, Kind.UNC_POST, Kind.UNC_BI)
    add(V.SCOPE_END, Kind.END)
    add(V.LOCATION_FOCUS, Kind.FOCUS)
    add(V.OTHER_FINDINGS, Kind.OTHER)
    by_first: dict[str, dict[int, dict[tuple[str, ...], tuple[Kind, tuple[str, ...]]]]] = {}
    for key, value in entries.items():
        by_first.setdefault(key[0], {}).setdefault(len(key), {})[key] = value
    # first token -> [(length, {phrase: (kind, payload)})], longest first: one dict probe per length
    return {first: sorted(by_len.items(), reverse=True) for first, by_len in by_first.items()}


_TABLE = _build_table()
_SECTION_HEADERS = {tuple(p.split()): Kind.SECTION_HISTORY for p in V.HISTORY_SECTIONS}
_SECTION_HEADERS.update({tuple(p.split()): Kind.SECTION_BODY for p in V.BODY_SECTIONS})
_MAX_HEADER = max(len(k) for k in _SECTION_HEADERS)


def tokenize(text: str) -> list[str]:
    """Lower-case tokens; paragraph breaks become the token ``"\\n\\n"``."""
    return [t if not t.startswith("\n") else "\n\n" for t in _TOKEN_RE.findall(text.lower())]


def _header_at(tokens: list[str], i: int, sentence_start: bool) -> tuple[int, Kind] | None:
    """A section header (``INDICATION:``) starting at ``i``: (length incl. ':', kind)."""
    if not sentence_start:
        return None
    for n in range(min(_MAX_HEADER, len(tokens) - i - 1), 0, -1):
        if tokens[i + n] == ":" and tuple(tokens[i:i + n]) in _SECTION_HEADERS:
            return n + 1, _SECTION_HEADERS[tuple(tokens[i:i + n])]
    return None


def match(tokens: list[str]) -> list[list[Mention]]:
    """Tokens -> clauses, each a list of mentions in text order (history sections applied)."""
    clauses: list[list[Mention]] = []
    current: list[Mention] = []
    clause_start = 0
    in_history_section = False
    i, n = 0, len(tokens)
    sentence_start = True

    def close(at: int) -> None:
        nonlocal current, clause_start
        if current:
            if in_history_section:
                for m in current:
                    m.state = State.HISTORY if m.kind is Kind.FINDING else m.state
            clauses.append(current)
        current, clause_start = [], at

    while i < n:
        tok = tokens[i]
        if tok in BOUNDARY:
            close(i + 1)
            sentence_start, i = True, i + 1
            continue
        header = _header_at(tokens, i, sentence_start or tokens[i - 1] in (":", "?"))
        if header is not None:
            close(i + header[0])
            in_history_section = header[1] is Kind.SECTION_HISTORY
            sentence_start, i = True, i + header[0]
            continue
        sentence_start = False
        if i - clause_start >= MAX_CLAUSE_TOKENS:
            close(i)
        for length, phrases in _TABLE.get(tok, ()):
            found = phrases.get(tuple(tokens[i:i + length])) if length > 1 else phrases.get((tok,))
            if found is not None:
                current.append(Mention(i, i + length, found[0], found[1]))
                i += length
                break
        else:
            i += 1
    close(n)
    return clauses


def _mark(m: Mention, state: State) -> None:
    if m.kind is Kind.FINDING and _PRECEDENCE[state] > _PRECEDENCE[m.state]:
        m.state = state


_PRE = {Kind.NEG_PRE: State.NEGATED, Kind.NEG_BI: State.NEGATED, Kind.UNC_PRE: State.UNCERTAIN,
        Kind.UNC_BI: State.UNCERTAIN, Kind.HIST_PRE: State.HISTORY}
_POST = {Kind.NEG_POST: State.NEGATED, Kind.NEG_BI: State.NEGATED, Kind.UNC_POST: State.UNCERTAIN,
         Kind.UNC_BI: State.UNCERTAIN}
# A conjunction between an attribute and the finding before it starts a new noun phrase:
# "small left effusion and right opacity" -> "right" belongs to what follows.
_NEW_PHRASE = frozenset({"and", ",", "with", "plus", "also"})
NEW_PHRASE_PENALTY = 4
_COORDINATORS = frozenset(t for p in V.COORDINATORS for t in p.split())
_BACKWARD_STOP = frozenset({"but", "however", "although", "though", "whereas", "while", "yet"})


def assign_states(clause: list[Mention], tokens: list[str]) -> None:
    """Set ``state`` of every finding mention in one clause (in place)."""
    for k, trig in enumerate(clause):
        if trig.kind is Kind.UNC_DIFF:
            # "? pneumonia", "atelectasis versus pneumonia": the nearest finding-like mention on
            # each side, if close
            for step in (-1, 1):
                j = k + step
                while 0 <= j < len(clause) and clause[j].kind not in (Kind.FINDING, Kind.OTHER):
                    j += step
                if 0 <= j < len(clause):
                    gap = trig.start - clause[j].end if step < 0 else clause[j].start - trig.end
                    if gap <= BIDIRECTIONAL_WINDOW:
                        _mark(clause[j], State.UNCERTAIN if tokens[trig.start] == "?" else State.DIFFERENTIAL)
            continue
        if trig.kind in _PRE:
            for m in clause[k + 1:]:
                if m.kind is Kind.END:
                    break
                _mark(m, _PRE[trig.kind])
        if trig.kind in _POST:
            for m in reversed(clause[:k]):
                if m.kind is Kind.END and tokens[m.start] in _BACKWARD_STOP:
                    break
                if trig.start - m.end > 2 * MAX_ATTACH_DISTANCE:
                    break
                _mark(m, _POST[trig.kind])


_ANCHORS = (Kind.FINDING, Kind.OTHER)
# Forward attachment stops at any trigger or scope end ("bases compatible with scarring"),
# backward attachment only at a scope end ("opacity which is now in the left base" still attaches).
_FORWARD_BLOCK = frozenset(Kind) - {Kind.ATTRIBUTE, Kind.FINDING, Kind.OTHER, Kind.PSEUDO, Kind.FOCUS}
_BACKWARD_BLOCK = frozenset({Kind.END})


def _nearest(clause: list[Mention], i: int, step: int) -> int | None:
    """Index of the nearest anchor from mention ``i`` in direction ``step``, if in reach."""
    blocked = _FORWARD_BLOCK if step > 0 else _BACKWARD_BLOCK
    j = i + step
    while 0 <= j < len(clause):
        m = clause[j]
        gap = m.start - clause[i].end if step > 0 else clause[i].start - m.end
        if gap > MAX_ATTACH_DISTANCE or m.kind in blocked:
            return None
        if m.kind in _ANCHORS:
            return j
        j += step
    return None


# Tokens that may sit inside one location phrase: "the left lung base", "right mid lung".
_PHRASE_FILLER = frozenset({"the", "lung", "lungs"})


def _phrases(clause: list[Mention], tokens: list[str]) -> list[tuple[int, int]]:
    """Runs of attribute mentions that form one phrase, as (first, last) clause indices.

    "opacity in the left base, XXXX scarring": "left" and "base" are decided together, so the
    phrase attaches to the opacity instead of "base" drifting to the scarring after the comma.
    """
    runs: list[tuple[int, int]] = []
    for i, m in enumerate(clause):
        if m.kind is not Kind.ATTRIBUTE:
            continue
        if runs and runs[-1][1] == i - 1 and all(
                t in _PHRASE_FILLER for t in tokens[clause[i - 1].end:m.start]):
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


_PLURAL_ZONE = frozenset({"lobes", "lungs", "zones"})
_IMPLIED_BILATERAL = "bilateral?"  # from a plural zone; settled once the clause is attached


def _coordinated(clause: list[Mention], tokens: list[str], k: int, step: int) -> list[Mention]:
    """Anchors joined to anchor ``k`` by coordinators only, walking in direction ``step``."""
    out = []
    while True:
        nxt = next((x for x in range(k + step, len(clause) if step > 0 else -1, step)
                    if clause[x].kind in _ANCHORS), None)
        if nxt is None:
            return out
        lo, hi = (k, nxt) if step > 0 else (nxt, k)
        between = tokens[clause[lo].end:clause[hi].start]
        # "nipple shadows": two adjacent anchors are one noun, not a coordination
        if not between or not all(t in _COORDINATORS for t in between):
            return out
        out.append(clause[nxt])
        k = nxt


def attach(clause: list[Mention], tokens: list[str]) -> None:
    """Attach every attribute mention of one clause to its finding (fills ``Mention.attached``)."""
    for first, last in _phrases(clause, tokens):
        after, before = _nearest(clause, last, 1), _nearest(clause, first, -1)
        best = after
        if before is not None:
            gap = clause[first].start - clause[before].end
            joined = tokens[clause[before].end:clause[first].start]
            if after is not None and any(t in _NEW_PHRASE for t in joined):
                gap += NEW_PHRASE_PENALTY
            after_gap = clause[after].start - clause[last].end if after is not None else 0
            # a comma before the following anchor starts a new phrase too: "in the left base, XXXX scarring"
            if after is not None and "," in tokens[clause[last].end:clause[after].start]:
                after_gap += NEW_PHRASE_PENALTY
            if after is None or gap < after_gap or any(
                    x.kind is Kind.FOCUS for x in clause[before + 1:first]):
                best = before
        if best is None:
            continue
        # a modifier also covers the findings coordinated with its anchor: after its head noun for a
        # pre-modifier ("bibasilar atelectasis/infiltrate"), before it for a post-modifier
        # ("consolidation and atelectasis have developed in the right lower lobe")
        group = [clause[best]] + _coordinated(clause, tokens, best, 1 if best == after else -1)
        for anchor in group:
            if anchor.kind is Kind.FINDING:
                for m in clause[first:last + 1]:
                    if tokens[m.end - 1] in _PLURAL_ZONE and "bilateral" in m.payload:
                        anchor.attached.extend(
                            a if a != "bilateral" else _IMPLIED_BILATERAL for a in m.payload)
                    else:
                        anchor.attached.extend(m.payload)
    for anchor in clause:
        if _IMPLIED_BILATERAL in anchor.attached:
            # "the right middle and lower lobes" is one lung: a plural zone means both lungs only
            # when no single side is named
            anchor.attached = [a for a in anchor.attached if a != _IMPLIED_BILATERAL]
            if ("left" in anchor.attached) == ("right" in anchor.attached):
                anchor.attached.append("bilateral")


def analyse(text: str) -> list[Mention]:
    """All finding mentions of a text with their state and attached attributes, in text order."""
    tokens = tokenize(text)
    findings: list[Mention] = []
    for clause in match(tokens):
        assign_states(clause, tokens)
        attach(clause, tokens)
        findings.extend(m for m in clause if m.kind is Kind.FINDING)
    return findings
