"""The chunker never gives the model more than it reads, and loses no text."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

import pytest

from semantik.indexing.chunk import Chunker
from semantik.inference.embedder import Embedder, default_model_path


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    model = Embedder(default_model_path(), device="cpu", dtype="fp32", batch_size=8)
    yield model
    model.close()


def model_token_count(embedder: Embedder, text: str) -> int:
    """Tokens the model itself would see, special tokens included, with no truncation."""
    return len(embedder.tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])


def varied_text(words: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    vocabulary = [
        *["antidisestablishmentarianism", "electroencephalography", "pneumonoultramicroscopic", "café", "naïve"],
        *[
            "the",
            "of",
            "and",
            "to",
            "in",
            "is",
            "mitochondria",
            "3.14159",
            "e-mail",
            "user@example.com",
            "C++",
            "¿qué?",
            "東京",
            "🚀",
        ],
        *["hyper-parameterisation", "re-tokenisation", "state-of-the-art", "2026-11-22", "{json:", "true}", "..."],
    ]
    out = []
    for i in range(words):
        out.append(rng.choice(vocabulary))
        if i % 17 == 16:
            out.append("\n\n")
    return " ".join(out)


@pytest.mark.parametrize(("size", "overlap"), [(256, 32), (64, 8), (1000, 0)])
def test_no_chunk_exceeds_the_model_limit(embedder: Embedder, size: int, overlap: int) -> None:
    chunker = Chunker(embedder.tokenizer, max_seq_length=embedder.max_seq_length, chunk_size=size, overlap=overlap)
    text = varied_text(6000)
    chunks = chunker.chunk(text)
    assert len(chunks) > 5
    limit = min(size, embedder.max_seq_length)
    assert max(model_token_count(embedder, chunk) for chunk in chunks) <= limit
    assert chunker.max_tokens == limit - 2  # [CLS] and [SEP]


def test_chunks_keep_all_text_in_order(embedder: Embedder) -> None:
    chunker = Chunker(embedder.tokenizer, max_seq_length=embedder.max_seq_length, chunk_size=128, overlap=16)
    text = " ".join(f"word{i}" for i in range(3000))
    chunks = chunker.chunk(text)
    seen = [int(m) for chunk in chunks for m in re.findall(r"word(\d+)", chunk)]
    assert sorted(set(seen)) == list(range(3000))  # every word is somewhere
    # In order, and consecutive chunks overlap rather than leave a gap.
    firsts = [int(re.findall(r"word(\d+)", c)[0]) for c in chunks]
    lasts = [int(re.findall(r"word(\d+)", c)[-1]) for c in chunks]
    assert firsts == sorted(firsts)
    assert all(firsts[i + 1] <= lasts[i] for i in range(len(chunks) - 1))


def test_words_are_not_cut_in_two(embedder: Embedder) -> None:
    chunker = Chunker(embedder.tokenizer, max_seq_length=embedder.max_seq_length, chunk_size=32, overlap=4)
    text = " ".join(["antidisestablishmentarianism"] * 200)
    for chunk in chunker.chunk(text):
        assert set(chunk.split()) == {"antidisestablishmentarianism"}


def test_short_and_empty_text(embedder: Embedder) -> None:
    chunker = Chunker(embedder.tokenizer, max_seq_length=embedder.max_seq_length, chunk_size=256, overlap=32)
    assert chunker.chunk("A single short sentence.") == ["A single short sentence."]
    assert chunker.chunk("") == []
    assert chunker.chunk("   \n ") == []
