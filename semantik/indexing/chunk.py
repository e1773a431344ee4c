"""Cut text into chunks measured in the model's own tokens, never longer than the model reads.

A chunk longer than the model's ``max_seq_length`` would be silently truncated by ``encode`` and its
tail lost, so the limit here is ``max_seq_length`` minus the special tokens the model adds.
Windows end on word boundaries and overlap by ``overlap_tokens`` so that no text is lost between them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from tokenizers import Tokenizer


class Chunker:
    def __init__(self, hf_tokenizer: Any, *, max_seq_length: int, chunk_size: int, overlap: int) -> None:
        # A private copy of the fast tokenizer with truncation and padding off: the model's own
        # copy is configured to cut at 128 tokens and pad, which would hide text from us.
        self._tokenizer = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        specials = int(hf_tokenizer.num_special_tokens_to_add(pair=False))
        self.max_tokens = max(1, min(chunk_size, max_seq_length) - specials)
        self.overlap = max(0, min(overlap, self.max_tokens // 2))

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def chunk(self, text: str) -> list[str]:
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        offsets, words = encoding.offsets, encoding.word_ids
        total = len(offsets)
        chunks: list[str] = []
        start = 0
        while start < total:
            end = min(start + self.max_tokens, total)
            if end < total:
                # Do not cut a word in two: "##ing" re-tokenised alone can change the count.
                cut = end
                while cut > start + 1 and words[cut] is not None and words[cut] == words[cut - 1]:
                    cut -= 1
                if cut > start + 1:
                    end = cut
            piece = text[offsets[start][0] : offsets[end - 1][1]]
            # Guard against re-tokenisation surprises: shrink until the piece fits.
            while end - start > 1 and self.count_tokens(piece) > self.max_tokens:
                end -= 1
                piece = text[offsets[start][0] : offsets[end - 1][1]]
            chunks.append(piece)
            if end >= total:
                break
            next_start = max(end - self.overlap, start + 1)
            while next_start < end and words[next_start] is not None and words[next_start] == words[next_start - 1]:
                next_start += 1
            start = next_start
        return chunks


@lru_cache(maxsize=8)
def chunker_for(embedder: Any, chunk_size: int, overlap: int) -> Chunker:
    """The chunker for a loaded model (``Embedder``), made once per model and settings."""
    return Chunker(embedder.tokenizer, max_seq_length=embedder.max_seq_length, chunk_size=chunk_size, overlap=overlap)
