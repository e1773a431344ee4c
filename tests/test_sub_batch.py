"""Indexing sub-batches are sized from the calls' measured times: the fixed cost of a call is told
apart from the cost per character, so a model with a heavy call (torch) is not driven down to one
text per call, and the sub-batch still ends about when it was aimed to (a query waits for it)."""

from __future__ import annotations

import random

from semantik.inference.sub_batch import SubBatchSizer


def call_seconds(fixed_s: float, per_char_s: float, texts: int, width: int, rng: random.Random) -> float:
    return (fixed_s + per_char_s * texts * width) * rng.uniform(0.9, 1.1)  # a real call's jitter


def run(fixed_s: float, per_char_s: float, widths: list[int], aim_s: float, seed: int = 0) -> list[tuple[int, float]]:
    """Sub-batches as the embedder cuts them from texts of ``widths`` (longest first): (size, seconds)."""
    rng = random.Random(seed)
    sizer = SubBatchSizer()
    calls = []
    start = 0
    while start < len(widths):
        size = sizer.size(aim_s, widths[start], 32) if sizer.known else 4
        size = min(size, len(widths) - start)
        seconds = call_seconds(fixed_s, per_char_s, size, widths[start], rng)
        sizer.observe(size * widths[start], seconds)
        calls.append((size, seconds))
        start += size
    return calls


def texts_longest_first(rng: random.Random, groups: int) -> list[int]:
    widths: list[int] = []
    for _ in range(groups):  # as the job hands them over: groups of 128, each sorted longest first
        widths += sorted((max(64, int(rng.uniform(100, 1100))) for _ in range(128)), reverse=True)
    return widths


def test_a_model_with_a_heavy_call_gets_several_texts_a_call_within_the_aim() -> None:
    # torch bf16 as measured on an AMX Xeon: 5.5 ms a call, about 8 ms for a 1,000-character text.
    widths = texts_longest_first(random.Random(1), 8)
    calls = run(fixed_s=0.0055, per_char_s=2.5e-6, widths=widths, aim_s=0.05)
    sizes = sorted(size for size, _ in calls)
    assert sizes[len(sizes) // 2] >= 5  # the median call: before, one text per call
    assert sum(seconds for _, seconds in calls[8:]) / len(calls[8:]) < 0.05  # about the aim, on average
    assert max(seconds for _, seconds in calls[8:]) < 0.05 * 1.6  # and no call far past it


def test_a_model_with_a_light_call_is_sized_by_its_work_alone() -> None:
    widths = texts_longest_first(random.Random(2), 4)
    calls = run(fixed_s=0.0002, per_char_s=6e-6, widths=widths, aim_s=0.02)
    later = calls[8:]
    assert 0.012 < sum(seconds for _, seconds in later) / len(later) < 0.024
    assert max(seconds for _, seconds in later) < 0.02 * 1.5


def test_a_call_costlier_than_the_aim_still_does_as_much_work_as_overhead() -> None:
    sizer = SubBatchSizer()
    for texts in (1, 2, 4, 8, 1, 3):  # 40 ms a call whatever it holds, 1 ms a text of 500 characters
        sizer.observe(texts * 500, 0.040 + 0.001 * texts)
    fixed, per_char = sizer.costs()
    assert abs(fixed - 0.040) < 1e-6 and abs(per_char * 500 - 0.001) < 1e-9
    assert sizer.size(0.05, 500, 64) == 40  # 40 ms of work beside 40 ms of call, not 10
    assert sizer.size(0.02, 500, 64) == 40
    assert sizer.size(0.02, 500, 8) == 8  # never past the batch size


def test_before_a_fit_all_the_time_counts_per_character() -> None:
    sizer = SubBatchSizer()
    sizer.observe(4 * 1000, 0.04)  # one call: 10 us per character
    assert sizer.costs() == (0.0, 0.04 / 4000)
    assert sizer.size(0.05, 1000, 32) == 5
    sizer.observe(0, 1.0)  # an empty call tells nothing
    assert len(sizer.samples) == 1
