"""Splitting, truncation, source rendering and the throttled editor (a fake edit records calls)."""

from __future__ import annotations

import asyncio
import random
import re
import time
from itertools import pairwise

import pytest

from bot.streaming import (
    MESSAGE_LIMIT,
    ThrottledEditor,
    escape_markdown,
    fit,
    plain_links,
    plain_text,
    render_sources,
    safe_truncate,
    split_message,
)
from tests.fake_discord import clickable_links

# ---------------------------------------------------------------------------------------------
# split_message


_FENCE = re.compile(r"```(?:[\w+#.-]+(?=\n|$))?")


def _tokens(text: str) -> list[tuple[str, bool]]:
    """(word, inside code) for every word, fences and language tags left out, in order.

    Discord's rule: any ``` opens or closes a code block; a word alone after the opening fence
    on its line is the language tag.
    """
    out: list[tuple[str, bool]] = []
    for i, segment in enumerate(_FENCE.split(text)):
        out.extend((w, i % 2 == 1) for w in segment.split())
    return out


def _fences_balanced(part: str) -> bool:
    return part.count("```") % 2 == 0


def _check(text: str, limit: int) -> list[str]:
    parts = split_message(text, limit)
    assert all(0 < len(p) <= limit for p in parts), [len(p) for p in parts]
    assert all(p.strip() for p in parts)
    # Every part renders on its own: fences balanced (the input's are).
    assert all(_fences_balanced(p) for p in parts)
    # Nothing lost, duplicated or moved in or out of a code block.
    assert [t for p in parts for t in _tokens(p)] == _tokens(text)
    return parts


def test_short_text_is_one_part() -> None:
    assert split_message("Hello **world**") == ["Hello **world**"]
    assert split_message("x" * MESSAGE_LIMIT) == ["x" * MESSAGE_LIMIT]


def test_empty_or_blank_gives_no_parts() -> None:
    assert split_message("") == []
    assert split_message(" \n\n \n") == []


def test_limit_too_small_is_rejected() -> None:
    with pytest.raises(ValueError):
        split_message("abc", 5)


def test_prefers_paragraph_then_line_then_sentence_then_word() -> None:
    para = "First paragraph sentence one. Sentence two.\n\nSecond paragraph here."
    assert split_message(para, 60) == [
        "First paragraph sentence one. Sentence two.",
        "Second paragraph here.",
    ]
    lines = "line one is here\nline two is here\nline three"
    assert split_message(lines, 36) == ["line one is here\nline two is here", "line three"]
    sentences = "This is the first sentence. This is the second one. And a third."
    assert split_message(sentences, 55) == [
        "This is the first sentence. This is the second one.",
        "And a third.",
    ]
    words = "alpha beta gamma delta epsilon zeta eta theta"
    assert split_message(words, 24) == ["alpha beta gamma delta", "epsilon zeta eta theta"]


def test_early_paragraph_loses_to_late_line() -> None:
    # A paragraph break near the start would waste most of the part; a late line break wins.
    text = "Intro.\n\n" + "\n".join(f"item number {i}" for i in range(10))
    parts = _check(text, 80)
    assert len(parts[0]) > 40


def test_unbroken_run_is_hard_cut() -> None:
    text = "a" * 95
    assert split_message(text, 40) == ["a" * 40, "a" * 40, "a" * 15]


def test_code_block_is_closed_and_reopened_with_its_language() -> None:
    code = "\n".join(f"    value_{i} = compute({i})" for i in range(40))
    text = f"Here is the code:\n\n```python\n{code}\n```\n\nThat is all."
    parts = _check(text, 400)
    assert len(parts) > 2
    for part in parts[1:-1]:
        assert part.startswith("```python\n")
        assert part.endswith("\n```")
    # Lines of code are never broken, and indentation survives.
    code_lines = [line for p in parts for line in p.split("\n") if line.startswith("    value_")]
    assert code_lines == code.split("\n")


def test_block_ending_at_the_cut_is_not_reopened_empty() -> None:
    code = "\n".join(f"x{i} = {i}" for i in range(10))
    text = f"```py\n{code}\n```\n\n" + "tail words " * 30
    parts = _check(text, len(f"```py\n{code}\n```") + 2)
    assert parts[0] == f"```py\n{code}\n```"
    assert not any(p.startswith("```py\n```") for p in parts)


def test_part_never_ends_on_an_opening_fence() -> None:
    text = "Some prose that fills the first part nicely.\n```sh\n" + "echo hi\n" * 20 + "```"
    parts = _check(text, 60)
    assert parts[0] == "Some prose that fills the first part nicely."


@pytest.mark.parametrize("seed", range(40))
def test_random_documents_keep_all_content(seed: int) -> None:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "x", "longerword", "end.", "why?", "(ok)", "**b**"]
    blocks: list[str] = []
    for _ in range(rng.randint(1, 25)):
        kind = rng.random()
        if kind < 0.25:
            lang = rng.choice(["", "python", "sh", "yaml"])
            lines = [
                " " * rng.randint(0, 8) + " ".join(rng.choices(words, k=rng.randint(1, 8)))
                for _ in range(rng.randint(1, 30))
            ]
            blocks.append(f"```{lang}\n" + "\n".join(lines) + "\n```")
        elif kind < 0.4:
            blocks.append("\n".join("- " + " ".join(rng.choices(words, k=5)) for _ in range(8)))
        else:
            blocks.append(" ".join(rng.choices(words, k=rng.randint(1, 120))))
    text = rng.choice(["\n\n", "\n"]).join(blocks)
    for limit in (60, 137, 500, MESSAGE_LIMIT):
        _check(text, limit)


# ---------------------------------------------------------------------------------------------
# safe_truncate, escape_markdown, render_sources


def test_safe_truncate() -> None:
    assert safe_truncate("short", 10) == "short"
    out = safe_truncate("the quick brown fox jumps over the lazy dog", 20)
    assert out == "the quick brown fox…" and len(out) <= 20
    assert len(safe_truncate("a" * 50, 10)) == 10
    # A dangling backslash would escape the marker.
    assert safe_truncate("abc\\" + "d" * 20, 5) == "abc…"
    # A code block left open by the cut is closed.
    out = safe_truncate("text\n```py\n" + "print(1)\n" * 20, 40)
    assert len(out) <= 40 and out.endswith("\n```") and _fences_balanced(out)


def test_escape_markdown() -> None:
    assert escape_markdown("a [b] *c*\n_d_") == r"a \[b\] \*c\* \_d\_"


def test_render_sources_links_without_previews() -> None:
    out = render_sources(
        [
            (1, "GPU [index] *fast*", "https://milvus.io/docs/gpu_index.md#GPU_IVF_FLAT"),
            (2, "Spaces", "https://example.org/a page)x"),
            (3, "Local file", "/srv/docs/a.md"),
        ],
        1000,
    )
    assert out.split("\n") == [
        r"[1] [GPU \[index\] \*fast\*](<https://milvus.io/docs/gpu_index.md#GPU_IVF_FLAT>)",
        "[2] [Spaces](<https://example.org/a%20page%29x>)",
        "[3] Local file",
    ]


def test_render_sources_fits_the_limit() -> None:
    sources = [(i, f"Title number {i}", f"https://docs.example/p{i}") for i in range(1, 40)]
    for limit in (30, 100, 250, 1024):
        out = render_sources(sources, limit)
        assert 0 < len(out) <= limit
    out = render_sources(sources, 250)
    assert out.startswith("[1] [Title number 1](<https://docs.example/p1>)")
    assert out.endswith("more)")
    long_title = render_sources([(1, "word " * 100, "https://x.io")], 1000)
    assert len(long_title) < 150 and "…" in long_title


# ---------------------------------------------------------------------------------------------
# Links in model text


PHISHING = (
    "Before you start, [click here to verify](https://evil.example/login) your account, "
    "or open https://evil.example/bare directly. Also <https://evil.example/angle> and "
    '[**verify**](<https://evil.example/a b> "title"), [x](https:\\/\\/evil.example/esc) '
    "and foo\\https://evil.example/backslash or https://evil.example/glued``y``. "
    "Use `http://localhost:19530` in the client [1].\n\n"
    "```python\nclient = MilvusClient(uri='http://localhost:19530')  # [docs](https://x.io)\n```\n"
    "A stray ` backtick, then https://evil.example/after-stray and [c](https://evil.example/c)."
)


def test_links_in_model_text_are_plain_text() -> None:
    assert clickable_links(PHISHING)  # the checker sees them before
    out = plain_links(PHISHING)
    assert clickable_links(out) == []
    prose, _code, after = out.split("```")
    assert "](" not in prose + after
    # Masked links read as their text and their URL; bare URLs stay readable, as code.
    assert "click here to verify (`https://evil.example/login`) your account" in out
    assert "open `https://evil.example/bare` directly." in out
    assert "`https://evil.example/angle`" in out and "<https" not in out
    # Code is left alone: copyable URLs, untouched Markdown inside the block.
    assert "`http://localhost:19530` in the client [1]." in out
    assert "uri='http://localhost:19530')  # [docs](https://x.io)\n```" in out
    # The stray backtick is escaped, so the inline code added for URLs pairs only with itself.
    assert "A stray \\` backtick" in out


def test_plain_links_keeps_plain_text_and_closes_an_open_block() -> None:
    text = "No links here [1], just **bold** and `code`.\n\n```sh\necho hi"
    assert plain_links("No links here [1], just **bold** and `code`.") == text.split("\n")[0]
    out = plain_links(text)
    assert out.endswith("```sh\necho hi\n```") and out.count("```") == 2
    # Streaming: a link cut off in the middle is not clickable either.
    for end in range(len(PHISHING) + 1):
        assert clickable_links(plain_links(PHISHING[:end])) == [], PHISHING[:end]


@pytest.mark.parametrize("seed", range(40))
def test_split_links_made_plain_stay_plain_in_every_part(seed: int) -> None:
    rng = random.Random(seed)
    pieces = [
        "word",
        "end.",
        "[1]",
        "`",
        "``",
        "\\",
        "\\`",
        "x" * rng.randint(1, 900),
        "https://evil.example/" + "a" * rng.randint(1, 900),
        "`pip install pymilvus`",
        "[see](https://evil.example/p)",
        "https://evil.example/q",
        "<https://evil.example/r>",
        "`inline`",
        "(https://evil.example/s)",
        "\n```py\nurl = 'https://ok.example'\n```\n",
        "\n\n",
    ]
    text = " ".join(rng.choices(pieces, k=rng.randint(20, 150)))
    for limit in (600, 1000, MESSAGE_LIMIT):  # parts longer than any inline code
        for part in split_message(plain_links(text), limit):
            assert clickable_links(part) == [], part


def test_plain_text_escapes_markdown_and_links() -> None:
    question = "Is [click here to verify](https://evil.example/login) <@1> **safe**?\n`x`"
    out = plain_text(question)
    assert out == (
        r"Is \[click here to verify\]\(`https://evil.example/login`\) \<\@1\> \*\*safe\*\*? \`x\`"
    )
    assert clickable_links(out) == []
    # Cut to fit before rendering: never inside the added code.
    long = "see https://evil.example/" + "a" * 60 + " " + "word " * 20
    for limit in range(5, 120, 7):
        short = fit(plain_text, long, limit)
        assert len(short) <= limit and clickable_links(short) == [], short


def test_source_urls_are_encoded() -> None:
    out = render_sources(
        [(1, "Page", "https://docs.example/a_(b)) [x](https://evil.example)")], 500
    )
    assert out == "[1] [Page](<https://docs.example/a_%28b%29%29%20[x]%28https://evil.example%29>)"


# ---------------------------------------------------------------------------------------------
# ThrottledEditor


class FakeEdit:
    """The Discord edit boundary: records (start, end, text) and can be slow or fail."""

    def __init__(self, delay: float = 0.0, fail_on: set[str] | None = None) -> None:
        self.delay = delay
        self.fail_on = fail_on or set()
        self.calls: list[tuple[float, float, str]] = []
        self.active = 0
        self.max_active = 0

    async def __call__(self, text: str) -> None:
        start = time.monotonic()
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(self.delay)
            if text in self.fail_on:
                raise RuntimeError(f"edit failed: {text}")
        finally:
            self.active -= 1
        self.calls.append((start, time.monotonic(), text))

    @property
    def texts(self) -> list[str]:
        return [t for _, _, t in self.calls]


INTERVAL = 0.05
SLACK = 0.01  # event-loop timer granularity


async def _stream(editor: ThrottledEditor, n: int, step: float) -> str:
    text = ""
    for i in range(n):
        text += f"tok{i} "
        editor.update(text)
        await asyncio.sleep(step)
    return text


async def test_throttles_and_delivers_final_text() -> None:
    fake = FakeEdit()
    editor = ThrottledEditor(fake, interval=INTERVAL)
    t0 = time.monotonic()
    text = await _stream(editor, 40, 0.005)
    await editor.finish(text + "[done]")
    elapsed = time.monotonic() - t0
    assert fake.texts[-1] == text + "[done]"
    starts = [s for s, _, _ in fake.calls]
    assert all(b - a >= INTERVAL - SLACK for a, b in pairwise(starts))
    assert len(fake.calls) <= elapsed / INTERVAL + 2
    assert len(fake.calls) >= 2  # it did stream, not only the final edit
    assert editor.edits_sent == len(fake.calls)
    assert fake.max_active == 1
    # Every streamed text is a prefix of the next: coalescing only drops intermediate states.
    assert all(b.startswith(a) for a, b in pairwise(fake.texts))


async def test_first_update_is_sent_at_once() -> None:
    fake = FakeEdit()
    editor = ThrottledEditor(fake, interval=10.0)
    editor.update("hello")
    await asyncio.sleep(0.01)
    assert fake.texts == ["hello"]
    await editor.aclose()


async def test_slow_edits_coalesce_and_never_overlap() -> None:
    fake = FakeEdit(delay=0.08)  # slower than the interval
    editor = ThrottledEditor(fake, interval=0.02)
    for i in range(30):
        editor.update(f"text {i}")
        await asyncio.sleep(0.01)
    await editor.finish("final")
    assert fake.max_active == 1
    assert len(fake.calls) < 10
    assert fake.texts[0] == "text 0" and fake.texts[-1] == "final"
    for (_, end, _), (start, _, _) in pairwise(fake.calls):
        assert start >= end


async def test_finish_sends_even_identical_text() -> None:
    fake = FakeEdit()
    editor = ThrottledEditor(fake, interval=0.01)
    editor.update("same")
    await asyncio.sleep(0.03)
    editor.update("same")  # identical to what is shown: skipped
    await asyncio.sleep(0.03)
    assert fake.texts == ["same"]
    await editor.finish("same")
    assert fake.texts == ["same", "same"]
    editor.update("ignored after finish")
    await asyncio.sleep(0.03)
    assert fake.texts == ["same", "same"]
    with pytest.raises(RuntimeError):
        await editor.finish("twice")


async def test_failed_edit_does_not_stop_the_stream() -> None:
    fake = FakeEdit(fail_on={"b"})
    editor = ThrottledEditor(fake, interval=0.02)
    for text in ("a", "b", "c"):
        editor.update(text)
        await asyncio.sleep(0.04)
    await editor.finish("d")
    assert fake.texts == ["a", "c", "d"]
    assert editor.edits_sent == 3 and editor.edits_failed == 1


async def test_finish_raises_its_own_failure() -> None:
    fake = FakeEdit(fail_on={"final"})
    editor = ThrottledEditor(fake, interval=0.01)
    editor.update("partial")
    with pytest.raises(RuntimeError, match="final"):
        await editor.finish("final")
    assert editor.edits_failed == 1


async def test_finish_waits_for_in_flight_edit() -> None:
    fake = FakeEdit(delay=0.05)
    editor = ThrottledEditor(fake, interval=0.0)
    editor.update("one")
    await asyncio.sleep(0.01)  # "one" is in flight now
    await editor.finish("two")
    assert fake.texts == ["one", "two"]
    assert fake.max_active == 1


async def test_finish_replaces_a_deferred_edit() -> None:
    fake = FakeEdit()
    editor = ThrottledEditor(fake, interval=0.05)
    editor.update("one")
    await asyncio.sleep(0.01)
    editor.update("two")  # deferred to the next slot
    await editor.finish("three")
    assert fake.texts == ["one", "three"]
    starts = [s for s, _, _ in fake.calls]
    assert starts[1] - starts[0] >= 0.05 - SLACK


async def test_aclose_cancels_pending_work() -> None:
    fake = FakeEdit(delay=1.0)
    editor = ThrottledEditor(fake, interval=0.0)
    editor.update("slow")
    await asyncio.sleep(0.01)
    t0 = time.monotonic()
    await editor.aclose()
    assert time.monotonic() - t0 < 0.5
    editor.update("after close")
    await asyncio.sleep(0.01)
    assert fake.calls == [] and editor.closed


async def test_injected_clock_drives_the_slots() -> None:
    now = [100.0]
    fake = FakeEdit()
    editor = ThrottledEditor(fake, interval=5.0, clock=lambda: now[0])
    editor.update("a")
    await asyncio.sleep(0.01)
    now[0] += 5.0  # the slot is open by the injected clock: no real waiting
    editor.update("b")
    await asyncio.sleep(0.01)
    assert fake.texts == ["a", "b"]
    await editor.aclose()
