"""The chunker never gives the model more than it reads, nor a chunk longer than its character cap,
and loses no text; it needs only the model folder's files (the extraction processes load no model)."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from semantik.indexing.chunk import Chunker, chunker_for, model_max_seq_length, words_tokenized_alone
from semantik.inference.embedder import Embedder, default_model_path

MODEL_DIR = default_model_path()


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    model = Embedder(default_model_path(), device="cpu", backend="torch", dtype="fp32", batch_size=8)
    yield model
    model.close()


def make_chunker(size: int, overlap: int, max_chars: int = 4000, **extra: int) -> Chunker:
    return Chunker.from_model_dir(MODEL_DIR, chunk_size=size, overlap=overlap, max_chars=max_chars, **extra)


@pytest.fixture(scope="module")
def model_tokenizer() -> Any:
    """The tokenizer sentence-transformers gives the model (transformers' own, not ours)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(MODEL_DIR), local_files_only=True)


def model_token_count(tokenizer: Any, text: str) -> int:
    """Tokens the model itself would see, special tokens included, with no truncation."""
    return len(tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])


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
def test_no_chunk_exceeds_the_model_limit(embedder: Embedder, model_tokenizer: Any, size: int, overlap: int) -> None:
    chunker = make_chunker(size, overlap)
    text = varied_text(6000)
    chunks = chunker.chunk(text)
    assert len(chunks) > 5
    limit = min(size, embedder.max_seq_length)
    assert max(model_token_count(model_tokenizer, chunk) for chunk in chunks) <= limit
    assert chunker.max_tokens == limit - 2  # [CLS] and [SEP]


def test_chunks_keep_all_text_in_order(embedder: Embedder) -> None:
    chunker = make_chunker(128, 16)
    text = " ".join(f"word{i}" for i in range(3000))
    chunks = chunker.chunk(text)
    seen = [int(m) for chunk in chunks for m in re.findall(r"word(\d+)", chunk)]
    assert sorted(set(seen)) == list(range(3000))  # every word is somewhere
    # In order, and consecutive chunks overlap rather than leave a gap.
    firsts = [int(re.findall(r"word(\d+)", c)[0]) for c in chunks]
    lasts = [int(re.findall(r"word(\d+)", c)[-1]) for c in chunks]
    assert firsts == sorted(firsts)
    assert all(firsts[i + 1] <= lasts[i] for i in range(len(chunks) - 1))


def test_words_are_not_cut_in_two() -> None:
    chunker = make_chunker(32, 4)
    text = " ".join(["antidisestablishmentarianism"] * 200)
    for chunk in chunker.chunk(text):
        assert set(chunk.split()) == {"antidisestablishmentarianism"}


def test_short_and_empty_text() -> None:
    chunker = make_chunker(256, 32)
    assert chunker.chunk("A single short sentence.") == ["A single short sentence."]
    assert chunker.chunk("") == []
    assert chunker.chunk("   \n ") == []


def test_built_from_the_model_files_as_the_model_sees_them(embedder: Embedder, model_tokenizer: Any) -> None:
    assert model_max_seq_length(MODEL_DIR) == embedder.max_seq_length == 256
    assert chunker_for(embedder, 256, 32) is chunker_for(MODEL_DIR, 256, 32)  # one chunker per model folder
    chunker = make_chunker(256, 32)
    text = varied_text(500)
    assert chunker.count_tokens(text) + 2 == model_token_count(model_tokenizer, text)


def test_a_run_without_breaks_is_split_within_the_character_cap() -> None:
    # More than 100 characters with no break is one [UNK] token: the token cap alone would make
    # this whole run one chunk.
    chunker = make_chunker(256, 32, max_chars=1000)
    run = "a" * 300_000
    chunks = chunker.chunk(f"Before the run. {run} After the run.")
    assert max(len(chunk) for chunk in chunks) <= 1000
    assert chunks[0] == "Before the run."
    assert chunks[-1] == "After the run."
    assert "".join(chunks[1:-1]) == run  # every character, once, in order


def test_long_words_never_make_a_chunk_longer_than_the_cap(model_tokenizer: Any) -> None:
    # Words of 150 characters are one [UNK] each: 256 of them would be 38,000 characters.
    chunker = make_chunker(256, 32, max_chars=2000)
    words = [f"{i:04d}" + "x" * 146 for i in range(400)]
    chunks = chunker.chunk(" ".join(words))
    assert max(len(chunk) for chunk in chunks) <= 2000
    assert [w for chunk in chunks for w in chunk.split()] == words  # no text lost, none repeated
    assert max(model_token_count(model_tokenizer, chunk) for chunk in chunks) <= 256


def test_long_text_in_segments_gives_the_same_chunks_as_one_pass() -> None:
    text = varied_text(40_000, seed=11).replace("\n\n", " ")  # one line of about 350,000 characters
    segmented = make_chunker(64, 8, segment_chars=20_000).chunk(text)
    whole = make_chunker(64, 8, segment_chars=len(text)).chunk(text)
    assert segmented == whole
    assert len(whole) > 1000


def test_eight_megabytes_on_one_line_stay_within_the_caps() -> None:
    chunker = make_chunker(256, 32)
    rng = random.Random(5)
    text = " ".join(rng.choice(["alpha", "beta", "3.14159", "e-mail", "naïve", "東京"]) for _ in range(1_300_000))
    assert len(text) > 7_000_000
    chunks = chunker.chunk(text)
    assert max(len(chunk) for chunk in chunks) <= 4000
    assert chunks[0].split()[:20] == text.split()[:20] and chunks[-1].split()[-20:] == text.split()[-20:]


@pytest.mark.parametrize(("size", "overlap", "max_chars"), [(256, 32, 4000), (64, 8, 4000), (128, 16, 300)])
def test_chunks_are_the_same_without_tokenizing_each_one_again(size: int, overlap: int, max_chars: int) -> None:
    # The model's tokenizer (WordPiece after BERT's pre-tokenizer) tokenizes each word alone, so the
    # chunker trusts a run of whole words to fit without tokenizing it a second time: the chunks
    # must be exactly those the check would have made, on text full of punctuation, numbers, CJK,
    # emoji, paragraph breaks and long runs.
    fast = make_chunker(size, overlap, max_chars)
    assert fast.words_alone
    checked = make_chunker(size, overlap, max_chars)
    checked.words_alone = False
    text = varied_text(8000, seed=11) + " " + "x" * 700 + " " + "ab-" * 400
    chunks = fast.chunk(text)
    assert len(chunks) > 10
    assert chunks == checked.chunk(text)
    assert max(fast.count_tokens(chunk) for chunk in chunks) <= fast.max_tokens


def test_a_byte_level_tokenizer_keeps_the_check() -> None:
    byte_level = Tokenizer(models.BPE())
    byte_level.pre_tokenizer = pre_tokenizers.ByteLevel()  # a word's first token depends on the space before it
    assert not words_tokenized_alone(byte_level)
    assert words_tokenized_alone(Tokenizer.from_file(str(default_model_path() / "tokenizer.json")))


@pytest.mark.parametrize(("size", "overlap", "max_chars"), [(256, 32, 4000), (64, 8, 4000), (128, 16, 300)])
def test_the_tokens_a_chunk_carries_give_the_model_the_inputs_its_text_gives(
    size: int, overlap: int, max_chars: int
) -> None:
    """A chunk from the extraction process carries its token ids, so the model does not tokenize it
    again: the model's inputs (ids, mask, types, padding, truncation) must be the same arrays."""
    from semantik.indexing.formats.base import Section
    from semantik.inference.backends import PAD_MULTIPLE, Tokens

    odd = " Größe ÉCOLE naïve \ufb01ne \u2168 \U0001d518"  # normalization that changes characters
    text = varied_text(6000, seed=5) + " " + "x" * 700 + " " + "ab-" * 400 + odd
    chunks = make_chunker(size, overlap, max_chars).chunk_sections([Section(text)])
    carrying = [chunk for chunk in chunks if chunk.tokens is not None]
    assert len(carrying) >= 0.8 * len(chunks)
    for multiple in (PAD_MULTIPLE, None):
        tokens = Tokens(MODEL_DIR, model_max_seq_length(MODEL_DIR), pad_to_multiple_of=multiple)
        for start in range(0, len(chunks), 16):
            batch = chunks[start : start + 16]
            texts, ids = [chunk.text for chunk in batch], [chunk.tokens for chunk in batch]
            retokenized = tokens(texts)
            given = tokens(texts, ids)
            if all(chunk.tokens is not None for chunk in batch):  # the ids decide, not the texts
                assert np.array_equal(tokens(["?"] * len(texts), ids)["input_ids"], retokenized["input_ids"])
            assert retokenized.keys() == given.keys()
            for key, value in retokenized.items():
                assert np.array_equal(value, given[key]), (key, texts)
    # Ids longer than the model reads are cut as the tokenizer cuts a long text.
    long_text = "word " * 600
    tokens = Tokens(MODEL_DIR, model_max_seq_length(MODEL_DIR), pad_to_multiple_of=PAD_MULTIPLE)
    plain = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    plain.no_truncation()
    plain.no_padding()
    long_ids = plain.encode(long_text, add_special_tokens=False).ids
    for key, value in tokens([long_text]).items():
        assert np.array_equal(value, tokens(["?"], [long_ids])[key]), key
