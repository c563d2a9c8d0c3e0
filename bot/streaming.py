"""Streaming an answer into Discord: splitting within the 2000-char limit, throttled edits."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import quote

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000  # Discord's limit on message content
ELLIPSIS = "…"

_FENCE = "```"
_CLOSE = "\n" + _FENCE  # appended to a part that ends inside a code block
_MIN_LIMIT = 20  # room for a reopened fence, some content and the closing fence
# A sentence end: punctuation, optional closing quotes/brackets, then the whitespace we cut at.
_SENTENCE_END = re.compile(r"[.!?][\"')\]*_]*([ \t]+)")
_SPACE = re.compile(r"[ \t]+")
_LANG_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+#.-"
# A fence and the language tag after it (Discord needs the tag alone on the fence's line).
_FENCE_TOKEN = re.compile(r"```(?:([\w+#.-]+)(?=\n|$))?")


# ---------------------------------------------------------------------------------------------
# Splitting


def _reopen(lang: str, limit: int) -> str:
    """The fence that reopens a code block in the next part, with the same language tag."""
    opener = _FENCE + lang
    # A pathological tag must not eat the part: fall back to a bare fence.
    return opener if len(opener) + 1 + len(_CLOSE) <= limit // 4 else _FENCE


def _scan_fences(text: str, opener: str | None, limit: int) -> str | None:
    """The reopen fence of the code block open at the end of `text`, or None outside code.

    `opener` is the state at the start of `text`. Like Discord, any ``` opens or closes a block,
    wherever it is on a line; a language tag is a single word right after an opening fence.
    """
    for m in _FENCE_TOKEN.finditer(text):
        opener = None if opener is not None else _reopen(m.group(1) or "", limit)
    return opener


def _candidates(rest: str, budget: int, in_code: bool) -> list[tuple[int, int]]:
    """The last cut of each kind within `budget`, best kind first, as (end, next_start).

    The part is rest[:end]; the next one starts at rest[next_start:]. A kind with no cut gives
    (0, 0). Inside code only line boundaries make sense (a sentence or word cut breaks a line
    of code in two), unless a line is longer than the budget: then a word cut beats a hard cut.
    """
    window = rest[: budget + 1]  # a separator right after the budget still gives a full part
    para = window.rfind("\n\n")
    line = window.rfind("\n")
    found = [(max(para, 0), max(para, 0)), (max(line, 0), max(line, 0))]
    if in_code and line > 0:
        return found
    sentence = (0, 0)
    for m in _SENTENCE_END.finditer(window if not in_code else ""):
        if m.start(1) <= budget:
            sentence = (m.start(1), m.end(1))
    word = (0, 0)
    for m in _SPACE.finditer(window):
        if 0 < m.start() <= budget:
            word = (m.start(), m.end())
    return [*found, sentence, word]


def _find_cut(
    rest: str, budget: int, in_code: bool, inline: Sequence[tuple[int, int]] = ()
) -> tuple[int, int]:
    """Where to end this part: the best boundary kind in the second half, else the latest one.

    `inline`: the (start, end) of inline code in `rest`; a cut inside one would leave its
    backticks unpaired in both parts, so it is avoided wherever the code fits in a part.
    """

    def inside(pos: int) -> tuple[int, int] | None:
        return next(((a, b) for a, b in inline if a < pos < b), None)

    cands = [
        c
        for c in _candidates(rest, budget, in_code)
        if rest[: c[0]].strip() and inside(c[0]) is None
    ]
    for end, nxt in cands:
        if end >= budget // 2:
            return end, nxt
    if cands:
        return max(cands)
    # One unbroken run longer than the budget: a hard cut, but not through a run of backticks,
    # inline code or an escape (a backslash left at the end would escape nothing, and the
    # character it escaped would start the next part unescaped).
    cut = budget
    while cut > 1 and rest[cut - 1] == "`" and rest[cut] == "`":
        cut -= 1
    span = inside(cut)
    if span is not None:
        a, b = span
        cut = a if rest[:a].strip() else b if b <= budget else cut
    if cut > 1 and (len(rest[:cut]) - len(rest[:cut].rstrip("\\"))) % 2:
        cut -= 1
    return cut, cut


def split_message(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Split `text` into non-empty parts of at most `limit` chars, at the nicest boundaries.

    Boundaries are tried in order: paragraph, line, sentence, word, then a hard cut. A part that
    ends inside a ``` code block closes it, and the next part reopens it with the same language,
    so each part renders on its own; those fences count toward the limit. Whitespace at a cut is
    dropped (Discord strips it anyway).
    """
    if limit < _MIN_LIMIT:
        raise ValueError(f"limit must be at least {_MIN_LIMIT}")
    parts: list[str] = []
    rest = text.strip("\n")
    spans = [(a, b) for a, b, closed in _code_spans(rest) if closed and rest[a : a + 3] != _FENCE]
    offset = 0  # where `rest` starts in the text
    opener: str | None = None  # the code block carried over from the previous part
    while rest.strip():
        prefix = opener + "\n" if opener else ""
        if len(prefix) + len(rest) <= limit:
            parts.append(prefix + rest.rstrip())
            break
        budget = limit - len(prefix)
        inline = [(a - offset, b - offset) for a, b in spans if b > offset]
        end, nxt = _find_cut(rest, budget, opener is not None, inline)
        state = _scan_fences(rest[:end], opener, limit)
        if state is not None:
            # Ending inside code costs a closing fence: cut again with room for it.
            end, nxt = _find_cut(rest, budget - len(_CLOSE), True, inline)
            state = _scan_fences(rest[:end], opener, limit)
        if state is not None:
            last = rest.rfind(_FENCE, 0, end)
            after = rest[nxt:].lstrip()
            close_end = len(rest) - len(after) + len(_FENCE)
            if (
                last > 0
                and rest[:last].strip()
                and _scan_fences(rest[:last], opener, limit) is None
                and not rest[last + len(_FENCE) : end].strip().strip(_LANG_CHARS)
            ):
                # The part would end on an opening fence: leave the whole block to the next part.
                end = nxt = last
                state = None
            elif after.startswith(_FENCE) and len(rest[:close_end].rstrip()) <= budget:
                # The block closes right after the cut: keep its own closing fence rather than
                # closing here and reopening an empty block in the next part.
                end = nxt = close_end
                state = None
        chunk = rest[:end].rstrip()
        if chunk.strip():
            parts.append(prefix + chunk + (_CLOSE if state is not None else ""))
            opener = state
        after = rest[nxt:]
        rest = after.lstrip("\n")
        offset += nxt + len(after) - len(rest)
    return parts


# ---------------------------------------------------------------------------------------------
# Truncation and sources


def safe_truncate(text: str, limit: int, marker: str = ELLIPSIS) -> str:
    """`text` cut to at most `limit` chars, ending in `marker`, without breaking markup.

    Prefers a word boundary near the end, never leaves a dangling backslash that would escape
    the marker, and closes a ``` code block left open by the cut.
    """
    if len(text) <= limit:
        return text
    if limit <= len(marker):
        return marker[:limit]
    room = limit - len(marker)
    cut = text[:room]
    space = max(cut.rfind(" "), cut.rfind("\n"))
    if not text[room].isspace() and space >= room * 4 // 5:
        cut = cut[:space]  # a word boundary near the end reads better than a broken word
    cut = cut.rstrip()
    if (len(cut) - len(cut.rstrip("\\"))) % 2:
        cut = cut[:-1]
    if _scan_fences(cut, None, MESSAGE_LIMIT) is not None:
        cut = cut[: max(room - len(_CLOSE) - 1, 0)].rstrip()
        if _scan_fences(cut, None, MESSAGE_LIMIT) is not None:
            return cut + "\n" + marker + _CLOSE
    return cut + marker


_MARKDOWN_CHARS = re.compile(r"([\\*_~`|\[\]()<>#@:])")


def escape_markdown(text: str) -> str:
    """Backslash-escape Discord markdown (and link brackets), collapsing whitespace."""
    return _MARKDOWN_CHARS.sub(r"\\\1", " ".join(text.split()))


def link_target(url: str) -> str | None:
    if not url.startswith(("https://", "http://")):
        return None
    # Percent-encode what would end the <...> or (...) early, keep what is already encoded.
    return quote(url, safe=":/?#[]@!$&'*+,;=%~")


def render_sources(
    sources: Sequence[tuple[int, str, str]], limit: int, *, title_limit: int = 100
) -> str:
    """Numbered links, one per line: `[1] [Title](<https://…>)`, within `limit` chars.

    Angle brackets keep Discord from expanding a preview per link. Sources that do not fit are
    summarised as `(+N more)`; a source without an http(s) URL is shown as plain text.
    """
    lines: list[str] = []
    for n, title, url in sources:
        label = escape_markdown(safe_truncate(" ".join(title.split()) or url, title_limit))
        target = link_target(url)
        lines.append(f"[{n}] [{label}](<{target}>)" if target else f"[{n}] {label}")

    out: list[str] = []
    used = 0
    for i, line in enumerate(lines):
        remaining = len(lines) - i - 1
        more = f"\n(+{remaining} more)" if remaining else ""
        cost = len(line) + (1 if out else 0)
        if used + cost + len(more) <= limit or (not remaining and used + cost <= limit):
            out.append(line)
            used += cost
            continue
        omitted = len(lines) - i
        tail = f"(+{omitted} more)"
        if not out:
            # Not even one link fits: a bare, truncated first line beats nothing.
            n, title, _ = sources[0]
            return safe_truncate(f"[{n}] {escape_markdown(title)}", limit)
        if used + 1 + len(tail) <= limit:
            out.append(tail)
        break
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Links in model text
#
# The only clickable links the bot posts are its own numbered sources. A page in the index can
# carry instructions that make the model write a phishing link, so model text never keeps one:
# outside code, a masked link `[text](url)` becomes `text (`url`)` and every bare or <...> URL
# is wrapped in inline code, which Discord shows as plain text and never links or previews.
# Code blocks and inline code are kept as they are (Discord renders no links there, and code
# must stay copyable); a code block left open at the end is closed. Stray backticks outside
# code are escaped, so the inline code added here pairs only with itself.

_URL = r"[a-z][a-z0-9+.\-]*:(?:\\?/)+[^\s<>`\\]*"  # also https:/x, which browsers repair
_LINKISH = re.compile(
    r"(?P<esc>\\[^0-9A-Za-z\s])"  # an escaped character: kept as it is
    # A masked link: text with at most one level of brackets, a target with an optional title.
    r"|(?P<masked>\[(?P<text>(?:[^\[\]\\\n]|\\.|\[[^\[\]\n]*\])*)\]"
    r"\(\s*(?P<target><[^<>\n]*>|(?:[^\s()\\]|\\.|\([^\s()]*\))*)"
    r"(?:\s+(?:\"[^\"\n]*\"|'[^'\n]*'))?\s*\))"
    r"|(?P<angle><[^: >\n]+:/[^ >\n]+>)"  # Discord's <scheme:/...> autolink
    rf"|(?P<url>{_URL})"
    r"|(?P<join>\]\()",  # what is left of a masked link (cut off, or around inline code)
    re.IGNORECASE,
)
_BARE_URL = re.compile(_URL, re.IGNORECASE)
_URL_TRAILER = ".,:;!?'\"*_~|"
# Inline code longer than this counts as plain text, and a URL shown as code is cut to this:
# message splitting never cuts through inline code that fits in a part (it would unpair the
# backticks), which needs them shorter than a part.
_MAX_INLINE = 400
_MAX_URL_SHOWN = 200


def _as_code(url: str) -> str:
    """`url` as inline code: shown as text, never a link. Markdown escapes are undone (code
    shows them raw); a backtick would end the code and a final backslash could escape it."""
    url = re.sub(r"\\(.)", r"\1", url).replace("\\", "%5C").replace("`", "%60")
    return f"`{safe_truncate(url, _MAX_URL_SHOWN)}`"


def _split_url(url: str) -> tuple[str, str]:
    """A URL and the punctuation after it that belongs to the sentence, not the URL."""
    end = len(url)
    while end:
        ch = url[end - 1]
        if ch in _URL_TRAILER:
            end -= 1
        elif ch in ")]" and url.count(ch, 0, end) > url.count("(" if ch == ")" else "[", 0, end):
            end -= 1
        else:
            break
    return url[:end], url[end:]


def _defang(plain: str) -> str:
    """Plain (non-code) markdown with every link and URL turned into non-clickable text."""

    def sub(m: re.Match[str]) -> str:
        if m["esc"]:
            return m[0]
        # A lone backslash right before the new inline code would escape its backtick.
        before = m.string[: m.start()]
        guard = "\\" if (len(before) - len(before.rstrip("\\"))) % 2 else ""
        if m["masked"]:
            text = _defang(m["text"])
            target = m["target"].strip().removeprefix("<").removesuffix(">").strip()
            return f"{guard}{text} ({_as_code(target)})" if target else guard + text
        if m["angle"]:
            return guard + _as_code(m["angle"][1:-1])
        if m["url"]:
            url, rest = _split_url(m["url"])
            return guard + _as_code(url) + rest
        return "] ("

    return _LINKISH.sub(sub, plain)


def _code_spans(text: str) -> list[tuple[int, int, bool]]:
    """(start, end, closed) of the code blocks and inline code Discord would render in `text`.

    Only what is sure to be code counts: a ``` fence (not escaped, a run of exactly three)
    up to the next ```, with something besides newlines in between, or a run of one or two
    backticks up to the next run of the same length with no other backtick in between (at
    most _MAX_INLINE chars in all). A code block still open at the end has closed=False.
    """
    spans: list[tuple[int, int, bool]] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2  # an escaped character is plain text
            continue
        if ch != "`":
            i += 1
            continue
        j = i
        while j < n and text[j] == "`":
            j += 1
        run = j - i
        if run == 3:
            close = text.find(_FENCE, j)
            if close == -1:
                if text[j:].strip("\n"):
                    spans.append((i, n, False))
                    break
            elif text[j:close].strip("\n"):
                spans.append((i, close + 3, True))
                i = close + 3
                continue
        elif run in (1, 2):
            close = text.find("`", j)
            end = close
            while 0 <= end < n and text[end] == "`":
                end += 1
            if close > j and end - close == run and end - i <= _MAX_INLINE:
                spans.append((i, end, True))
                i = end
                continue
        i = j  # literal backticks: escaped when the plain text around them is rewritten
    return spans


def _escape_backticks(plain: str) -> str:
    """Escape the backticks of plain text that are not escaped already."""
    return re.sub(r"(\\.)|`", lambda m: m[1] or "\\`", plain, flags=re.S)


def plain_links(text: str) -> str:
    """Model text safe to post: no clickable or previewed link outside code (see above)."""
    out: list[str] = []
    pos = 0
    for start, end, closed in [*_code_spans(text), (len(text), len(text), True)]:
        plain = _defang(_escape_backticks(text[pos:start]))
        # Inline code added for a URL must not touch the backticks of the code next to it:
        # Discord would read the runs together and the URL could end up outside any code.
        if plain.startswith("`") and out and out[-1].endswith("`"):
            plain = " " + plain
        if plain.endswith("`") and not plain.endswith("\\`") and start < len(text):
            plain += " "
        out.append(plain)
        out.append(text[start:end] if closed else text[start:end].rstrip() + _CLOSE)
        pos = end
    return "".join(out)


def plain_text(text: str) -> str:
    """Text from a user as one plain line: Markdown escaped, URLs as non-clickable code."""
    text = " ".join(text.split())
    out: list[str] = []
    pos = 0
    for m in _BARE_URL.finditer(text):
        url, _ = _split_url(m[0])
        out.append(_MARKDOWN_CHARS.sub(r"\\\1", text[pos : m.start()]))
        out.append(_as_code(url))
        pos = m.start() + len(url)
    out.append(_MARKDOWN_CHARS.sub(r"\\\1", text[pos:]))
    return "".join(out)


def fit(render: Callable[[str], str], text: str, limit: int) -> str:
    """`render(text)` within `limit` chars. The text is cut before rendering (and cut shorter
    until the result fits), so a cut never falls inside the code that `render` adds."""
    room = limit
    while True:
        out = render(safe_truncate(text, room))
        if len(out) <= limit or room <= len(ELLIPSIS):
            return out if len(out) <= limit else ELLIPSIS[:limit]
        room = max(room - (len(out) - limit), len(ELLIPSIS))


# ---------------------------------------------------------------------------------------------
# Throttled editing


class ThrottledEditor:
    """Edits one message as text streams in: at most one edit per `interval`, one in flight.

    `update()` only remembers the newest text; a worker task sends it when the next slot opens,
    so intermediate texts are coalesced. `finish()` delivers the final text for sure.
    """

    def __init__(
        self,
        edit: Callable[[str], Awaitable[None]],
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._edit = edit
        self._interval = interval
        self._clock = clock
        self._pending: str | None = None  # newest text not yet handed to an edit
        self._shown: str | None = None  # text of the last edit started
        self._last_start: float | None = None
        self._worker: asyncio.Task[None] | None = None
        self._in_flight = False
        self._closed = False  # after finish() or aclose(): update() does nothing
        self._finished = False
        self.edits_sent = 0
        self.edits_failed = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def update(self, text: str) -> None:
        """Remember `text` as the newest content; never waits."""
        if self._closed:
            return
        if text == self._shown:
            self._pending = None  # back to what is (being) shown: nothing to send
            return
        self._pending = text
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def finish(self, text: str) -> None:
        """Wait for the edit in flight, then edit to `text` (always, even if already shown).

        The final edit keeps to the interval too. Its failure is raised, so the caller can fall
        back (e.g. send a new message); earlier failures were only logged.
        """
        if self._finished:
            raise RuntimeError("finish() was already called")
        self._finished = self._closed = True
        self._pending = None
        worker = self._worker
        if worker is not None and not worker.done():
            if not self._in_flight:
                worker.cancel()  # only waiting for a slot: the final edit supersedes it
            await asyncio.wait([worker])
        await self._wait_for_slot()
        self._last_start = self._clock()
        self._shown = text
        try:
            await self._edit(text)
        except Exception:
            self.edits_failed += 1
            raise
        self.edits_sent += 1

    async def aclose(self) -> None:
        """Stop: cancel a waiting or in-flight edit; later updates are ignored."""
        self._closed = True
        self._pending = None
        worker = self._worker
        if worker is not None and not worker.done():
            worker.cancel()
            await asyncio.wait([worker])

    async def _wait_for_slot(self) -> None:
        if self._last_start is not None:
            delay = self._last_start + self._interval - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)

    async def _run(self) -> None:
        while self._pending is not None and not self._closed:
            await self._wait_for_slot()
            text, self._pending = self._pending, None
            if text is None or self._closed:
                return
            self._last_start = self._clock()
            self._shown = text
            self._in_flight = True
            try:
                await self._edit(text)
                self.edits_sent += 1
            except Exception:
                # A failed edit (rate limit, network blip) must not stop the stream; the next
                # update carries the whole text anyway, so nothing is retried here.
                self.edits_failed += 1
                log.warning("streaming edit failed", exc_info=True)
            finally:
                self._in_flight = False
