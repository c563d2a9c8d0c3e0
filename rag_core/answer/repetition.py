"""RepetitionGuard: notices when a generated text has fallen into a loop.

Small models (and large ones at low temperature) sometimes repeat the same line, list items or
phrase until the token budget runs out. The guard watches the growing text and reports a loop
once its tail is the same unit (a line, a few lines, a phrase) repeated several times in a row;
`cut` is then the length of the text up to the end of the unit's first occurrence, so the answer
keeps what came before the loop and one copy of the looping part, never the repeats.

Exact repeats only: a numbered list, a table or steps whose items differ never trigger.
Units without at least two letters (`|---|---|`, `0, 0, 0`, `=====`) never trigger either:
markdown rules and zero-filled code samples repeat by design.
"""

from __future__ import annotations

import math

# A unit must repeat this many times in a row, and the repeats must cover this many characters
# (short phrases need more repeats before they count as a loop). A unit at least
# LONG_UNIT_CHARS long (a paragraph) counts after two copies: answers never restate a whole
# paragraph word for word, and a model often ends such a loop on its own after a third copy.
MIN_REPEATS = 3
MIN_SPAN_CHARS = 200
LONG_UNIT_CHARS = 200
# Longest unit looked for, in characters (a few lines of text).
MAX_UNIT_CHARS = 600


class RepetitionGuard:
    """Feed it the generated text, delta by delta; `feed()` turns True once the text loops."""

    def __init__(
        self,
        *,
        min_repeats: int = MIN_REPEATS,
        min_span_chars: int = MIN_SPAN_CHARS,
        max_unit_chars: int = MAX_UNIT_CHARS,
    ) -> None:
        if min_repeats < 2:
            raise ValueError("min_repeats must be at least 2")
        self.min_repeats = min_repeats
        self.min_span_chars = min_span_chars
        self.max_unit_chars = max_unit_chars
        self.text = ""
        self.cut: int | None = None  # length of the text to keep, once a loop is found
        self.unit: str | None = None  # the repeated unit, for logs

    @property
    def looping(self) -> bool:
        return self.cut is not None

    def feed(self, delta: str) -> bool:
        """Add `delta`; True when the text now ends in a loop (and from then on)."""
        if self.cut is not None:
            return True
        if not delta:
            return False
        self.text += delta
        found = find_loop(
            self.text,
            min_repeats=self.min_repeats,
            min_span_chars=self.min_span_chars,
            max_unit_chars=self.max_unit_chars,
        )
        if found is None:
            return False
        start, period = found
        self.unit = self.text[start : start + period]
        self.cut = len(self.text[: start + period].rstrip())
        return True

    @property
    def kept(self) -> str:
        """The text without the repeats (all of it while no loop was found)."""
        return self.text if self.cut is None else self.text[: self.cut]


def _repeats_needed(period: int, min_repeats: int, min_span_chars: int) -> int:
    if period >= LONG_UNIT_CHARS:
        return 2
    return max(min_repeats, math.ceil(min_span_chars / period))


def find_loop(
    text: str,
    *,
    min_repeats: int = MIN_REPEATS,
    min_span_chars: int = MIN_SPAN_CHARS,
    max_unit_chars: int = MAX_UNIT_CHARS,
) -> tuple[int, int] | None:
    """(start, period) of a loop at the end of `text`, else None.

    The last `period * repeats` characters must have that period exactly (whatever the phase:
    a stream may stop mid-unit); `start` is where the periodic run begins, so
    `text[start:start + period]` is the first occurrence of the looping unit.
    The shortest period wins: a loop of "ab" is also a loop of "abab".
    """
    n = len(text)
    last = n - 1
    for period in range(1, min(max_unit_chars, n // 2) + 1):
        # Cheap filters first: the last characters must recur one period earlier.
        if text[last] != text[last - period]:
            continue
        k = min(16, n - period)
        if text[n - k :] != text[n - k - period : n - period]:
            continue
        span = period * _repeats_needed(period, min_repeats, min_span_chars)
        if span > n:
            continue
        tail = text[n - span :]
        if tail[period:] != tail[:-period]:
            continue
        unit = tail[:period]
        if sum(c.isalpha() for c in unit) < 2:
            continue
        start = n - span
        while start > 0 and text[start - 1] == text[start - 1 + period]:
            start -= 1
        return start, period
    return None
