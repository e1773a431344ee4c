"""Cut text into chunks measured in the model's own tokens, never longer than the model reads.

A chunk longer than the model's ``max_seq_length`` would be silently truncated by ``encode`` and its
tail lost, so the limit here is ``max_seq_length`` minus the special tokens the model adds.
Windows end on word boundaries and overlap by ``overlap_tokens`` so that no text is lost between them.

A chunk also holds at most ``max_chars`` characters: the tokenizer turns a word of more than 100
characters (a run of base64, ``aaaa…``) into one ``[UNK]`` token, so the token cap alone would let one
chunk hold megabytes. Long texts are tokenized in segments of about ``SEGMENT_CHARS`` characters cut
at whitespace, so an 8 MB one-line file never needs gigabytes of token offsets; the chunks are the
same as from one pass over the whole text (a segment hands the chunk it could not finish to the next).

A document comes in sections (a page, a slide, a sheet, the text under one heading): a chunk never
spans two, so each chunk has one location. Within a section a chunk ends at a paragraph break (a
blank line) when one falls in the second half of its window; the next chunk then starts there,
without overlap, since no sentence was cut.

Only ``tokenizers`` is needed (no torch, no transformers): the extraction processes build it from the
model folder's ``tokenizer.json``.
"""

from __future__ import annotations

import json
import re
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from semantik.indexing.formats.base import Section
from semantik.settings import Settings

DEFAULT_MAX_CHARS: int = Settings.model_fields["chunk_max_chars"].default
SEGMENT_CHARS = 100_000
TOKEN_TYPECODE = "i"  # a chunk's token ids: 32-bit signed (any vocabulary), 4 bytes an id when pickled
_WHITESPACE = (" ", "\n", "\t", "\r")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")


@dataclass(frozen=True)
class Chunk:
    """A chunk's text and where it is in its document (``Section.location``: page, slide, sheet,
    heading); what the extraction process hands the worker.

    ``tokens``: the model tokenizer's ids of ``text`` (no special tokens), when the chunker knows
    them to be exactly what tokenizing ``text`` alone gives (a run of whole words of a tokenizer that
    tokenizes each word alone); the model then does not tokenize the chunk a second time. None
    otherwise."""

    text: str
    location: dict[str, Any] = field(default_factory=dict)
    tokens: array[int] | None = field(default=None, compare=False, repr=False)


class Chunker:
    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        max_seq_length: int,
        chunk_size: int,
        overlap: int,
        max_chars: int = DEFAULT_MAX_CHARS,
        segment_chars: int = SEGMENT_CHARS,
    ) -> None:
        # A private copy with truncation and padding off: the model's tokenizer.json cuts at 128
        # tokens and pads, which would hide text from us.
        self._tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        specials = len(self._tokenizer.encode("a", add_special_tokens=True).ids) - len(
            self._tokenizer.encode("a", add_special_tokens=False).ids
        )
        self.max_tokens = max(1, min(chunk_size, max_seq_length) - specials)
        self.overlap = max(0, min(overlap, self.max_tokens // 2))
        self.max_chars = max_chars
        self.segment_chars = max(segment_chars, 2)
        self.words_alone = words_tokenized_alone(self._tokenizer)

    @classmethod
    def from_model_dir(
        cls, model_dir: Path, *, chunk_size: int, overlap: int, max_chars: int, segment_chars: int = SEGMENT_CHARS
    ) -> Chunker:
        """The chunker for a sentence-transformers model folder, from its files alone."""
        return cls(
            Tokenizer.from_file(str(model_dir / "tokenizer.json")),
            max_seq_length=model_max_seq_length(model_dir),
            chunk_size=chunk_size,
            overlap=overlap,
            max_chars=max_chars,
            segment_chars=segment_chars,
        )

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def chunk_sections(self, sections: Iterable[Section]) -> list[Chunk]:
        """The chunks of each section in turn, each with its section's location (and its tokens,
        where known)."""
        return [
            Chunk(text, location, tokens)
            for section in sections
            for location in [section.location()]
            for text, tokens in self._chunks(section.text)
        ]

    def chunk(self, text: str) -> list[str]:
        return [piece for piece, _ in self._chunks(text)]

    def _chunks(self, text: str) -> list[tuple[str, array[int] | None]]:
        chunks: list[tuple[str, array[int] | None]] = []
        position = 0
        while position < len(text):
            segment_end = _segment_end(text, position, self.segment_chars)
            position = self._chunk_segment(text, position, segment_end, chunks)
        return chunks

    def _chunk_segment(
        self, text: str, begin: int, segment_end: int, chunks: list[tuple[str, array[int] | None]]
    ) -> int:
        """Chunks of ``text[begin:segment_end]`` appended to ``chunks``; returns where the next
        segment starts: ``segment_end``, or the start of the word whose chunk reached the segment's
        end before the text's (that chunk is made again from there, with what follows it)."""
        last = segment_end >= len(text)
        segment = text[begin:segment_end]
        encoding = self._tokenizer.encode(segment, add_special_tokens=False)
        offsets, words, ids = encoding.offsets, encoding.word_ids, encoding.ids
        total = len(offsets)
        start = 0
        while start < total:
            end = min(start + self.max_tokens, total)
            if end == total and not last:
                word_start = start
                while word_start > 0 and words[word_start] is not None and words[word_start] == words[word_start - 1]:
                    word_start -= 1
                if offsets[word_start][0] > 0:  # the next segment makes progress
                    return begin + offsets[word_start][0]
            paragraph = False
            if end < total:
                cut = _paragraph_cut(segment, offsets, start, end)
                paragraph = cut is not None
                end = cut if cut is not None else _word_cut(words, start, end)
            capped = offsets[end - 1][1] - offsets[start][0] > self.max_chars
            if capped:
                end = self._char_cut(offsets, words, start, end)
                if end == start:  # one token longer than max_chars: a run with no break
                    token_start, token_end = offsets[start]
                    for cut in range(token_start, token_end, self.max_chars):
                        chunks.append((segment[cut : min(cut + self.max_chars, token_end)], None))
                    start += 1
                    continue
            piece = segment[offsets[start][0] : offsets[end - 1][1]]
            # Guard against re-tokenisation surprises: shrink until the piece fits. Whole words of a
            # tokenizer that tokenizes each word alone come back as the same tokens: no surprise
            # possible, and no second tokenization of every chunk (40% of an extraction process's
            # time on a folder of small files).
            whole_words = _word_starts(words, start) and _word_starts(words, end)
            same_tokens = self.words_alone and whole_words
            while end - start > 1 and not same_tokens and self.count_tokens(piece) > self.max_tokens:
                end -= 1
                piece = segment[offsets[start][0] : offsets[end - 1][1]]
            chunks.append((piece, array(TOKEN_TYPECODE, ids[start:end]) if same_tokens else None))
            if end >= total:
                break
            # Cut by characters, among outsized tokens (overlapping would only repeat them), or at a
            # paragraph break (no sentence was cut): the next chunk starts where this one ended.
            if capped or paragraph:
                start = end
                continue
            next_start = max(end - self.overlap, start + 1)
            while next_start < end and words[next_start] is not None and words[next_start] == words[next_start - 1]:
                next_start += 1
            start = next_start
        return segment_end

    def _char_cut(self, offsets: list[tuple[int, int]], words: list[int | None], start: int, end: int) -> int:
        """The largest end within ``max_chars`` of ``start`` (on a word boundary when one fits);
        ``start`` itself when even one token is longer."""
        limit = offsets[start][0] + self.max_chars
        low, high = start, end  # offsets[low - 1] ends within the limit; offsets[high] does not
        while high - low > 1:
            middle = (low + high) // 2
            if offsets[middle - 1][1] <= limit:
                low = middle
            else:
                high = middle
        if low == start:
            return start
        return _word_cut(words, start, low)


def _paragraph_cut(segment: str, offsets: list[tuple[int, int]], start: int, end: int) -> int | None:
    """The last paragraph break in the second half of the window ``[start, end)``: the index of the
    token that begins the next paragraph, or None."""
    low = start + max((end - start) // 2, 1)
    for index in range(end, low, -1):
        if _PARAGRAPH_BREAK.search(segment, offsets[index - 1][1], offsets[index][0]):
            return index
    return None


def words_tokenized_alone(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer splits text into words first and tokenizes each word by itself, so that
    a run of whole words tokenizes to the same tokens anywhere: WordPiece after BERT's pre-tokenizer
    (whitespace and punctuation), per-character normalization. Not byte-level BPE or SentencePiece,
    where a word's first token depends on the space before it."""
    config = json.loads(tokenizer.to_str())
    model = (config.get("model") or {}).get("type")
    pre_tokenizer = (config.get("pre_tokenizer") or {}).get("type")
    normalizer = (config.get("normalizer") or {}).get("type")
    # An added token matched across spaces or inside words would depend on the text around it.
    added_alone = all(
        not any(token.get(key) for key in ("lstrip", "rstrip", "single_word", "normalized"))
        for token in config.get("added_tokens") or []
    )
    return (
        model == "WordPiece"
        and pre_tokenizer == "BertPreTokenizer"
        and normalizer in (None, "BertNormalizer")
        and added_alone
    )


def _word_starts(words: list[int | None], index: int) -> bool:
    """Whether token ``index`` begins a word (or is the end of the text)."""
    return index == 0 or index >= len(words) or words[index] is None or words[index] != words[index - 1]


def _word_cut(words: list[int | None], start: int, end: int) -> int:
    """``end`` moved back so the chunk does not cut a word in two ("##ing" re-tokenised alone can
    change the count), unless that leaves a single token."""
    cut = end
    while cut > start + 1 and words[cut] is not None and words[cut] == words[cut - 1]:
        cut -= 1
    return cut if cut > start + 1 else end


def _segment_end(text: str, begin: int, segment_chars: int) -> int:
    """Where the segment starting at ``begin`` ends: the text's end, or after the last whitespace in
    the second half of the window (a hard cut only inside a run of ``segment_chars // 2`` characters
    without any)."""
    if len(text) - begin <= segment_chars:
        return len(text)
    low, high = begin + segment_chars // 2, begin + segment_chars
    space = max(text.rfind(char, low, high) for char in _WHITESPACE)
    return space + 1 if space >= 0 else high


def model_max_seq_length(model_dir: Path) -> int:
    """The model's ``max_seq_length`` (sentence-transformers' own config), read without loading it."""
    config = model_dir / "sentence_bert_config.json"
    if config.exists():
        return int(json.loads(config.read_text())["max_seq_length"])
    return int(json.loads((model_dir / "tokenizer_config.json").read_text()).get("model_max_length", 512))


def chunker_for(model: Path | Any, chunk_size: int, overlap: int, max_chars: int = DEFAULT_MAX_CHARS) -> Chunker:
    """The chunker for a model folder (or a loaded ``Embedder``: its ``model_path``), made once per
    model and settings."""
    model_dir = model if isinstance(model, Path) else Path(model.model_path)
    return _cached_chunker(model_dir.resolve(), chunk_size, overlap, max_chars)


@lru_cache(maxsize=8)
def _cached_chunker(model_dir: Path, chunk_size: int, overlap: int, max_chars: int) -> Chunker:
    return Chunker.from_model_dir(model_dir, chunk_size=chunk_size, overlap=overlap, max_chars=max_chars)
