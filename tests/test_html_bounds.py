"""HTML to text in bounded time: the conversion is linear in the page however deep it nests, and
each page gets a CPU budget in worker processes that a cancelled load kills. Real pages from a
local site (web_fixtures.LocalSite), real worker processes (rag_core/ingest/parse_pool.py)."""

from __future__ import annotations

import asyncio
import functools
import time

import psutil
import pytest

from rag_core.config import Settings
from rag_core.documents import SourceFailure
from rag_core.ingest.html_text import html_to_page
from rag_core.ingest.sources import load_sources
from tests.test_sources_limits import load_all
from tests.web_fixtures import LocalSite, Reply

WORKER = "rag_core.ingest.parse_worker"


@pytest.fixture
def web_settings(web_settings: Settings) -> Settings:
    """The shared small limits, with room for 5 MB pages."""
    return web_settings.model_copy(update={"fetch_max_bytes": 6_000_000})


# --- linear in the page ---

# One level of each kind of nesting: its opening and closing markup.
LEVELS = {
    "article": ("<article>", "</article>"),
    "header": ("<header>", "</header>"),  # chrome: dropped with its text
    "div": ("<div>", "</div>"),
    "list": ("<ul><li>", "</li></ul>"),
    "table": ("<table>", "</table>"),  # the text is outside any cell
    "quote": ("<blockquote>", "</blockquote>"),
    "bold": ("<b>", "</b>"),
    "pre": ("<pre>", "</pre>"),
    "heading": ("<h2><a href='#'>", "</a></h2>"),
}


@functools.cache
def worst_case_page(levels: int = 1_000, size: int = 5_000_000) -> str:
    """About `size` bytes: each kind nested `levels` deep around its share of the text, then
    as many sibling chrome elements with text between them."""
    share = size // (len(LEVELS) + 1)
    body = "".join(
        start * levels + f"{kind}-text " * (share // (len(kind) + 6)) + end * levels
        for kind, (start, end) in LEVELS.items()
    )
    siblings = ("<nav>menu</nav>" + "sibling-text " * (share // levels // 13)) * levels
    return f"<html><body>{body}{siblings}</body></html>"


def tag_soup(size: int = 5_000_000) -> str:
    """A page that is only nested tags: seconds of CPU for any HTML parser written in Python."""
    return "<html><body>" + "<div>x" * (size // 6) + "</body></html>"


def test_16000_nested_articles_convert_in_seconds_not_minutes() -> None:
    # The old converter: 17.6 s for 8,000 levels, 80 s for these 16,000 (each <article> asked
    # bs4 whether it was removed, a search of everything below it). Now ~0.5 s of CPU; the bound
    # leaves room for a busy 2-core runner and still fails the quadratic walk by 16x.
    html = "<article>" * 16_000 + "<h1>Deep</h1><p>text</p>" + "</article>" * 16_000
    start = time.process_time()
    page = html_to_page(html)
    assert time.process_time() - start < 5
    assert page.text == "# Deep\n\ntext"


def test_a_5_mb_worst_case_page_converts_in_seconds() -> None:
    # The old converter: 13 s (find_parent per <header>, a scan of the siblings per removed
    # <nav>, the text below copied at each level). Now well under 1 s of CPU; the bound leaves
    # room for a busy runner and still fails the old walk.
    html = worst_case_page()
    assert len(html) > 5_000_000
    start = time.process_time()
    text = html_to_page(html).text
    assert time.process_time() - start < 4
    for kind in LEVELS.keys() - {"header"}:
        assert f"{kind}-text {kind}-text" in text, kind
    assert "header-text" not in text and "menu" not in text
    assert "sibling-text sibling-text" in text


def test_text_outside_table_cells_is_kept() -> None:
    """Browsers show it before the table; it used to be dropped (a page of it was "empty")."""
    page = html_to_page(
        "<table>Only text here, <caption>a caption</caption><tr>stray<td>cell</td></tr></table>"
    )
    assert page.text == "Only text here,\n\na caption\n\nstray\n\n| cell |\n| --- |"
    assert html_to_page("<table>Only text in a table</table>").text == "Only text in a table"


# --- a CPU budget per page, in worker processes ---


def parse_workers() -> list[psutil.Process]:
    """This process's page converters still running."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if WORKER in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.Error:  # gone meanwhile
            pass
    return found


async def test_a_page_over_the_cpu_budget_fails_alone(
    site: LocalSite, web_settings: Settings
) -> None:
    site.routes.update(
        {
            "/huge": Reply.html(tag_soup()),  # 5 MB of nested tags: about 30 s of CPU
            "/table": Reply.html(
                "<head><title>Table</title></head><body><table>Only text in a table</table>"
            ),
            "/fine": Reply.html("<h1>Fine</h1><p>text</p>"),
        }
    )
    settings = web_settings.model_copy(update={"page_parse_cpu_s": 0.5})
    urls = [site.url(path) for path in ("/huge", "/table", "/fine")]

    start = time.monotonic()
    docs, failures = await load_all(urls, settings)

    assert time.monotonic() - start < 15
    assert sorted((doc.url, doc.title, doc.text) for doc in docs) == [
        (site.url("/fine"), "Fine", "# Fine\n\ntext"),
        (site.url("/table"), "Table", "Only text in a table"),  # no longer "empty"
    ]
    reason = "converting it to text took over 0.5 s of CPU (PAGE_PARSE_CPU_S)"
    assert failures == [SourceFailure(site.url("/huge"), reason, site.url("/huge"))]
    assert not parse_workers()  # the load closed its pool


async def test_cancelling_a_load_stops_its_conversions_at_once(
    site: LocalSite, web_settings: Settings
) -> None:
    """A thread cannot be stopped: the old loader kept converting after a cancel."""
    paths = [f"/hostile{i}" for i in range(3)]
    site.routes.update({path: Reply.html(tag_soup()) for path in paths})
    settings = web_settings.model_copy(update={"page_parse_cpu_s": 120})

    async def load() -> None:
        async for _ in load_sources([site.url(path) for path in paths], settings):
            pass

    task = asyncio.create_task(load())
    busy = await converting()
    task.cancel()
    cancelled = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    _, alive = await asyncio.to_thread(psutil.wait_procs, busy, timeout=5)
    assert not alive and time.monotonic() - cancelled < 5
    assert not parse_workers()


async def converting(timeout: float = 30) -> list[psutil.Process]:
    """The page converters, once one of them has spent half a second of CPU on a page."""
    async with asyncio.timeout(timeout):
        while True:
            workers = parse_workers()
            try:
                if any(sum(w.cpu_times()[:2]) > 0.5 for w in workers):
                    return workers
            except psutil.Error:
                pass
            await asyncio.sleep(0.05)
