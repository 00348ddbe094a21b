"""What the hypothesis suites (tests/unit/test_fuzz_*.py) share: text people type,
as XML can carry it, and the peak memory a piece of work allocates."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import strategies as st

# Emoji (with joiners), right-to-left text and its overrides, invisible marks.
HUMAN_SAMPLES = [
    "📱",
    "👩\u200d👩\u200d👧",
    "مرحبا",
    "שלום",
    "\u202eevil\u202c",
    "\u200f",
    "\ufeff",
]


def xml_text(
    max_size: int = 40, whitespace: str = "\t\n", samples: Sequence[str] = HUMAN_SAMPLES
) -> st.SearchStrategy[str]:
    """Text XML 1.0 can carry (no C0 controls but `whitespace`, no surrogates), with
    `samples` mixed in.

    Carriage returns are left out by default: XML parsers turn them into newlines, so
    text with them does not come back as written.
    """
    chars = st.characters(
        min_codepoint=0x20, exclude_categories=("Cs",), exclude_characters="\ufffe\uffff"
    )
    plain = st.text(chars | st.sampled_from(whitespace), max_size=max_size)
    return plain | st.tuples(plain, st.sampled_from(list(samples)), plain).map("".join)


def peak_bytes(work: Callable[[], Any]) -> int:
    """Peak memory allocated while `work` runs, in bytes (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
