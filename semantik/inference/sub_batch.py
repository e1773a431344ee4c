"""How many texts an indexing sub-batch takes, so that it runs about as long as aimed at.

A model call costs a fixed part (dispatching the graph: about 5.5 ms a call for torch bf16 on an
AMX Xeon, whatever the batch) plus a part per padded character. Sizing from the last call's time
per character alone counted the fixed part as work: after a short call the estimate rose, the next
sub-batch shrank, its fixed part weighed more again, and torch settled on one text per call (1,586
of 1,840 calls in a job), indexing at 48 chunks/s against 124 for batches of 32. ``SubBatchSizer``
fits both parts over the last calls (least squares) and never lets the fixed part be more than half
of a call, so a backend with a heavy call (torch) takes a few texts per call, and one with a light
call (OpenVINO, ONNX Runtime) is sized as before.

Pure arithmetic: no model here; ``embedder.py`` feeds it each call's size and time.
"""

from __future__ import annotations

from collections import deque

# Calls remembered for the fit: enough to smooth a slow first call on a new shape, few enough to
# follow a change of load.
WINDOW = 32


class SubBatchSizer:
    def __init__(self, window: int = WINDOW) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=window)  # (padded characters, seconds)

    @property
    def known(self) -> bool:
        return bool(self.samples)

    def observe(self, chars: float, seconds: float) -> None:
        """One call: ``chars`` = texts x the padded width of the call; ``seconds`` = its model time."""
        if chars > 0 and seconds >= 0:
            self.samples.append((float(chars), float(seconds)))

    def costs(self) -> tuple[float, float]:
        """(seconds a call costs whatever its size, seconds per padded character)."""
        n = len(self.samples)
        total_chars = sum(c for c, _ in self.samples)
        total_s = sum(s for _, s in self.samples)
        mean_c, mean_s = total_chars / n, total_s / n
        spread = sum((c - mean_c) ** 2 for c, _ in self.samples)
        if n >= 3 and spread > 0:
            per_char = sum((c - mean_c) * (s - mean_s) for c, s in self.samples) / spread
            fixed = mean_s - per_char * mean_c
            if per_char > 0 and fixed >= 0:
                return fixed, per_char
        # Too few calls, or all the same size, or noise: all the time counted per character.
        return 0.0, total_s / total_chars

    def size(self, aim_s: float, width: int, limit: int) -> int:
        """Texts of ``width`` padded characters to run in about ``aim_s`` seconds (1 to ``limit``).
        Where the fixed part alone takes half of ``aim_s`` or more, the call still gets as much work
        as fixed cost (half of it useful), rather than one text."""
        fixed, per_char = self.costs()
        work_s = max(aim_s - fixed, fixed)
        return max(1, min(limit, int(work_s / (per_char * max(width, 1)))))
