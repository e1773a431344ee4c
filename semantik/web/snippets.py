"""Snippets: the passage of a hit's text that best shows why it matched, with the query's terms
marked by offsets (never markup: the text is the document's own, and a client renders it as text).

A term matches a word of the text when they are equal ignoring case, or, for words of four letters
or more, when one begins with the other ("measurement" marks "measurements"), a rough stand-in for
the BM25 retriever's stemming. The passage is the window of ``SNIPPET_CHARS`` that holds the most
distinct terms (then the most matches); without any match it is the text's beginning.
"""

from __future__ import annotations

import re

SNIPPET_CHARS = 240
# Context kept before the first matched term of the window.
LEAD_CHARS = 40
_WORD = re.compile(r"\w+", re.UNICODE)
_STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "in", "is",
    "it", "its", "of", "on", "or", "that", "the", "this", "to", "was", "were", "what", "when",
    "where", "which", "who", "why", "will", "with", "how", "do", "does", "did", "not", "no",
})  # fmt: skip
_MIN_PREFIX = 4
_MAX_TERMS = 32


def query_terms(query: str) -> list[str]:
    terms = [word.lower() for word in _WORD.findall(query)]
    kept = [term for term in dict.fromkeys(terms) if term not in _STOPWORDS]
    return (kept or list(dict.fromkeys(terms)))[:_MAX_TERMS]


def _matches(word: str, term: str) -> bool:
    if word == term:
        return True
    if min(len(word), len(term)) < _MIN_PREFIX:
        return False
    return word.startswith(term) or term.startswith(word)


def snippet(text: str, query: str) -> tuple[str, list[tuple[int, int]]]:
    """The passage and the [start, end) offsets of the matched words in it."""
    terms = query_terms(query)
    found: list[tuple[int, int, int]] = []  # (start, end, which term)
    for match in _WORD.finditer(text):
        word = match.group().lower()
        for index, term in enumerate(terms):
            if _matches(word, term):
                found.append((match.start(), match.end(), index))
                break
    if not found:
        return _cut(text, 0, SNIPPET_CHARS)[0], []
    best, best_score, right = 0, (-1, -1), 0
    for left in range(len(found)):  # two pointers: the matches within SNIPPET_CHARS of found[left]
        right = max(right, left)
        while right + 1 < len(found) and found[right + 1][1] - found[left][0] <= SNIPPET_CHARS - LEAD_CHARS:
            right += 1
        window = found[left : right + 1]
        score = (len({term for _, _, term in window}), len(window))
        if score > best_score:
            best, best_score = left, score
    start = max(0, found[best][0] - LEAD_CHARS)
    if start > 0:  # begin at a word
        space = text.find(" ", start, found[best][0])
        start = space + 1 if space >= 0 else start
    passage, end, lead = _cut(text, start, start + SNIPPET_CHARS)
    highlights = [(s - start + lead, e - start + lead) for s, e, _ in found if s >= start and e <= end]
    return passage, highlights


def _cut(text: str, start: int, end: int) -> tuple[str, int, int]:
    """``text[start:end]``, ended at a word when cut, with an ellipsis at each cut side; and where
    it ended, and how many characters the passage has before ``text[start]``."""
    if end < len(text):
        space = text.rfind(" ", start, end)
        end = space if space > start + SNIPPET_CHARS // 2 else end
    else:
        end = len(text)
    lead = 1 if start > 0 else 0
    return ("…" * lead) + text[start:end] + ("…" if end < len(text) else ""), end, lead
