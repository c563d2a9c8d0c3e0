"""Sources: local folders, and real HTTP from a local aiohttp server (web_fixtures.LocalSite)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from aiohttp import web

from rag_core.config import Settings
from rag_core.documents import Document, SourceFailure
from rag_core.ingest.formats import parse_markdown
from rag_core.ingest.html_text import html_to_page
from rag_core.ingest.sources import load_folder, load_sources
from rag_core.ingest.web import _retry_after
from tests.conftest import FIXTURES, SHARED_CORPUS
from tests.web_fixtures import LocalSite, Reply

MILVUS_DOCS = FIXTURES / "milvus-docs"


async def load(
    specs: list[str], settings: Settings
) -> tuple[dict[str, Document], dict[str, SourceFailure]]:
    """Everything load_sources yields: documents by URL, failures by source."""
    docs: dict[str, Document] = {}
    failures: dict[str, SourceFailure] = {}
    async for item in load_sources(specs, settings):
        if isinstance(item, Document):
            assert item.url not in docs, f"{item.url} loaded twice"
            docs[item.url] = item
        else:
            failures[item.source] = item
    return docs, failures


def page(title: str, body: str = "", links: tuple[str, ...] = ()) -> str:
    anchors = "".join(f'<a href="{link}">{link}</a> ' for link in links)
    return (
        f"<html><head><title>{title}</title></head><body><nav>{anchors}</nav>"
        f"<main><h1>{title}</h1><p>{body or 'Some text about ' + title}.</p></main></body></html>"
    )


# --- HTML conversion ---

ARTICLE = """<!doctype html>
<html><head><title>Install Guide</title><style>p {color: red}</style>
<script>alert("hi")</script></head>
<body>
<header><a href="/">Site logo</a> Search</header>
<nav><a href="/docs/other">Other page</a></nav>
<div role="navigation">Breadcrumbs</div>
<aside>Sidebar ad</aside>
<main>
  <article>
    <header><h1 id="install">Install <a class="headerlink" href="#install">¶</a></h1></header>
    <p>Run <code>pip install milvus</code> first.<br>Then start it.</p>
    <a name="requirements"></a><h2>Requirements</h2>
    <ul><li>Python <strong>3.11</strong></li><li>Docker<ul><li>Compose v2</li></ul></li></ul>
    <ol><li>Download</li><li>Unpack</li></ol>
    <section id="params"><h3>Parameters<a class="headerlink" href="#params">¶</a></h3>
    <table>
      <tr><th>Name</th><th>Meaning</th></tr>
      <tr><td><code>M</code></td><td>Max degree | edges</td></tr>
      <tr><td>efConstruction</td><td>Build-time search width</td></tr>
    </table></section>
    <h2>Example</h2>
    <pre class="language-python"><code>def connect():
    client = MilvusClient("kb.db")

    return   client
</code></pre>
    <form><label>Was this helpful?</label><button>Yes</button></form>
    <noscript>Enable JavaScript</noscript>
    <svg><text>icon</text></svg>
  </article>
</main>
<footer>Copyright 2024</footer>
</body></html>"""


def test_html_keeps_headings_lists_tables_and_code() -> None:
    converted = html_to_page(ARTICLE, "https://example.org/docs/install")

    assert converted.title == "Install Guide"
    assert converted.text == (
        "# Install\n\n"
        "Run `pip install milvus` first.\nThen start it.\n\n"
        "## Requirements\n\n"
        "- Python 3.11\n- Docker\n  - Compose v2\n\n"
        "1. Download\n2. Unpack\n\n"
        "### Parameters\n\n"
        "| Name | Meaning |\n| --- | --- |\n"
        "| `M` | Max degree \\| edges |\n| efConstruction | Build-time search width |\n\n"
        "## Example\n\n"
        '```python\ndef connect():\n    client = MilvusClient("kb.db")\n\n    return   client\n```'
    )
    assert converted.anchors == {
        "Install": "install",
        "Requirements": "requirements",
        "Parameters": "params",
    }
    # Navigation is dropped from the text but its links are kept for crawling.
    assert "https://example.org/docs/other" in converted.links


def test_html_drops_chrome() -> None:
    text = html_to_page(ARTICLE).text
    for chrome in (
        "Site logo",
        "Search",
        "Other page",
        "Breadcrumbs",
        "Sidebar",
        "alert",
        "color",
        "helpful",
        "JavaScript",
        "icon",
        "Copyright",
    ):
        assert chrome not in text


def test_html_without_main_uses_body_and_h1_title() -> None:
    converted = html_to_page("<body><h1>Only heading</h1><div><p>a</p><p>b</p></div></body>")
    assert converted.title == "Only heading"
    assert converted.text == "# Only heading\n\na\n\nb"


# --- Markdown and local folders ---


def test_markdown_front_matter_and_heading_ids() -> None:
    md = parse_markdown(
        '---\nid: guide.md\ntitle: "Guide: the basics"\ntags:\n  - a\n---\n\n'
        "Intro\n\n```bash\n# not a heading\n```\n\n# Getting started {#start}\n\n## Next ##\n"
    )
    assert md.meta == {"id": "guide.md", "title": "Guide: the basics", "tags": ""}
    assert md.h1 == "Getting started"
    assert md.anchors == {"Getting started": "start"}
    assert md.body.startswith("Intro\n")
    assert "# Getting started\n" in md.body and "{#start}" not in md.body


def test_markdown_starting_with_a_rule_keeps_its_text() -> None:
    md = parse_markdown("---\nNot front matter, a rule.\n---\n# Title\n")
    assert (md.meta, md.h1) == ({}, "Title")
    assert md.body.startswith("---\nNot front matter")


def test_folder_maps_front_matter_id_to_public_url() -> None:
    spec = str(MILVUS_DOCS)
    items = list(load_folder(MILVUS_DOCS, spec, "https://milvus.io/docs/", 5_000_000))

    assert all(isinstance(item, Document) for item in items)  # LICENSE (no suffix) is skipped
    docs = {item.doc_id: item for item in items if isinstance(item, Document)}
    index = docs[str((MILVUS_DOCS / "reference" / "index.md").resolve())]
    assert index.url == "https://milvus.io/docs/index.md"
    assert index.title == "In-memory Index"
    assert index.source == spec
    assert index.format == "markdown"
    assert index.text.startswith("# In-memory Index\n")  # front matter stripped
    assert "related_key:" not in index.text


def test_folder_urls_titles_and_bad_files(tmp_path: Path) -> None:
    (tmp_path / "guide").mkdir()
    (tmp_path / "guide" / "intro.md").write_text("# Intro\n\nHello.\n")
    (tmp_path / "guide" / "page.html").write_text(
        "<html><head><title>HTML page</title></head><body><p>Body text</p></body></html>"
    )
    (tmp_path / "notes.txt").write_text("plain notes\n")
    (tmp_path / "untitled.md").write_text("No heading here.\n")
    (tmp_path / "latin1.md").write_bytes("# Café\n".encode("latin-1"))
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02binary")
    (tmp_path / "empty.md").write_text("")
    (tmp_path / "only-front-matter.md").write_text("---\ntitle: Nothing\n---\n")
    (tmp_path / "huge.md").write_text("x" * 2_000)
    (tmp_path / "image.png").write_bytes(b"\x89PNG")  # not a text suffix: skipped
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "secret.md").write_text("# Secret\n")

    root = tmp_path.resolve()
    items = {
        item.doc_id if isinstance(item, Document) else item.source: item
        for item in load_folder(tmp_path, "docs", "https://ex.org/docs", 1_000)
    }

    intro = items[str(root / "guide" / "intro.md")]
    assert isinstance(intro, Document)
    assert (intro.url, intro.title, intro.source) == (
        "https://ex.org/docs/guide/intro.md",
        "Intro",
        "docs",
    )
    html = items[str(root / "guide" / "page.html")]
    assert isinstance(html, Document)
    assert (html.title, html.text, html.format) == ("HTML page", "Body text", "markdown")
    notes = items[str(root / "notes.txt")]
    assert isinstance(notes, Document)
    assert (notes.title, notes.text, notes.format) == ("notes", "plain notes", "text")
    untitled = items[str(root / "untitled.md")]
    assert isinstance(untitled, Document) and untitled.title == "untitled"

    reasons = {
        Path(key).name: item.reason
        for key, item in items.items()
        if isinstance(item, SourceFailure)
    }
    assert reasons == {
        "latin1.md": "not valid utf-8 text",
        "binary.txt": "binary content, not text",
        "empty.md": "empty",
        "only-front-matter.md": "empty: no text",
        "huge.md": "too large: 2000 bytes (limit 1000)",
    }
    assert not any("secret" in key or key.endswith(".png") for key in items)


def test_folder_without_base_url_uses_file_uri(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("---\nid: ignored.md\n---\n# A\n")
    [doc] = load_folder(tmp_path, str(tmp_path), "", 1_000)
    assert isinstance(doc, Document)
    assert doc.url == (tmp_path / "a.md").resolve().as_uri()


async def test_missing_folder_fails_the_whole_spec(settings: Settings, tmp_path: Path) -> None:
    spec = str(tmp_path / "nope")
    docs, failures = await load([spec, str(MILVUS_DOCS)], settings)
    assert failures == {spec: SourceFailure(spec, "no such file or folder", spec)}
    assert len(docs) > 10  # the other source still loads


@pytest.mark.skipif(not SHARED_CORPUS.is_dir(), reason="shared corpus not present")
def test_shared_corpus_loads_fast() -> None:
    start = time.perf_counter()
    items = list(load_folder(SHARED_CORPUS, "corpus", "https://milvus.io/docs/", 5_000_000))
    assert time.perf_counter() - start < 3.0  # ~0.15 s here; slack for a busy runner
    assert len(items) > 200 and all(isinstance(item, Document) for item in items)


# --- the web ---


async def test_each_bad_page_is_reported_and_the_rest_loads(
    site: LocalSite, web_settings: Settings
) -> None:
    site.routes.update(
        {
            "/robots.txt": Reply.text("User-agent: *\nDisallow: /private/\n"),
            "/good": Reply.html(page("Good")),
            "/flaky": [Reply(status=500), Reply(status=503), Reply.html(page("Flaky"))],
            "/busy": [Reply(status=429, headers={"Retry-After": "0"}), Reply.html(page("Busy"))],
            "/broken": Reply(status=500),
            "/removed": Reply(status=410),
            "/slow": Reply.html(page("Slow"), delay_s=2.0),
            "/doc.pdf": Reply(body=b"%PDF-1.4 ...", content_type="application/pdf"),
            "/latin": Reply(body="<p>Café</p>".encode("latin-1"), content_type="text/html"),
            "/latin-declared": Reply(
                body="<p>Café</p>".encode("latin-1"), content_type="text/html; charset=iso-8859-1"
            ),
            "/empty": Reply.html(""),
            "/nav-only": Reply.html("<html><body><nav>menu</nav></body></html>"),
            "/huge": Reply.html("<p>" + "x" * 60_000 + "</p>"),
            "/private/secret": Reply.html(page("Secret")),
            "/moved": Reply.redirect("/target#section", status=301),
            "/target": Reply.html(page("Target")),
            "/loop-a": Reply.redirect("/loop-b"),
            "/loop-b": Reply.redirect("/loop-a"),
            "/to-private": Reply.redirect("/private/secret"),
            **{f"/hop{i}": Reply.redirect(f"/hop{i + 1}") for i in range(5)},
        }
    )
    paths = [path for path in site.routes if path not in ("/robots.txt", "/target")]
    paths.append("/missing")

    docs, failures = await load([site.url(path) for path in paths], web_settings)

    assert {url.removeprefix(site.url("")) for url in docs} == {
        "/good",
        "/flaky",
        "/busy",
        "/latin-declared",
        "/target",  # /target: via /moved
    }
    assert docs[site.url("/good")].title == "Good"
    assert docs[site.url("/latin-declared")].text == "Café"
    moved = docs[site.url("/target")]
    assert moved.doc_id == moved.url == site.url("/target")  # final URL, fragment dropped

    reasons = {
        source.removeprefix(site.url("")): (f.reason, f.gone) for source, f in failures.items()
    }
    assert reasons == {
        "/missing": ("HTTP 404", True),
        "/removed": ("HTTP 410", True),
        "/broken": ("HTTP 500 (after 2 retries)", False),
        "/slow": ("timed out after 0.5 s (after 2 retries)", False),
        "/doc.pdf": ("unsupported content type: application/pdf", False),
        "/latin": ("not valid utf-8 text", False),
        "/empty": ("empty", False),
        "/nav-only": ("empty: no text", False),
        "/huge": ("too large: 60007 bytes (limit 50000)", False),
        "/private/secret": ("disallowed by robots.txt", False),
        "/to-private": ("disallowed by robots.txt", False),
        "/loop-a": ("redirect loop", False),
        "/loop-b": ("redirect loop", False),
        "/hop0": ("too many redirects (more than 3)", False),
        "/hop1": ("too many redirects (more than 3)", False),
        "/hop2": ("HTTP 404", True),  # 3 redirects later: /hop5 has no route
        "/hop3": ("HTTP 404", True),
        "/hop4": ("HTTP 404", True),
    }
    assert all(f.spec == f.source for f in failures.values())
    assert site.hits["/robots.txt"] == 1  # fetched once for the whole site
    assert site.hits["/private/secret"] == 0
    assert site.hits["/flaky"] == 3 and site.hits["/broken"] == 3


async def test_retry_after_is_honoured_when_short(site: LocalSite, web_settings: Settings) -> None:
    site.routes["/busy"] = [
        Reply(status=429, headers={"Retry-After": "1"}),
        Reply.html(page("Busy")),
    ]
    site.routes["/closed"] = Reply(status=503, headers={"Retry-After": "3600"})

    start = time.perf_counter()
    docs, failures = await load([site.url("/busy"), site.url("/closed")], web_settings)

    # Waited the 1 s asked, never the 3,600 s: the upper bound leaves room for a busy runner
    # (5.3 s seen there, with page-conversion workers starting).
    assert 1.0 <= time.perf_counter() - start < 30.0
    assert list(docs) == [site.url("/busy")]
    assert failures[site.url("/closed")].reason == "HTTP 503 (Retry-After 3600 s is too long)"
    assert site.hits["/closed"] == 1


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert _retry_after("7") == 7.0
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert 3590 < (_retry_after(format_datetime(datetime.now(UTC) + timedelta(hours=1))) or 0)
    assert _retry_after("soon") is None


async def test_endless_body_stops_at_the_size_cap(site: LocalSite, web_settings: Settings) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/html"})
        await response.prepare(request)
        while True:  # no Content-Length: only reading can tell the size
            await response.write(b"<p>" + b"x" * 8_000 + b"</p>")

    site.routes["/endless"] = endless
    settings = web_settings.model_copy(update={"fetch_timeout_s": 5.0})

    docs, failures = await load([site.url("/endless")], settings)

    assert not docs
    assert failures[site.url("/endless")].reason == "too large: over 50000 bytes"


async def test_sitemap_index_nested_sitemaps_and_pages(
    site: LocalSite, web_settings: Settings
) -> None:
    def urlset(*paths: str) -> Reply:
        urls = "".join(f"<url><loc>{site.url(path)}</loc></url>" for path in paths)
        return Reply.xml(
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{urls}</urlset>'
        )

    def index(*paths: str) -> Reply:
        maps = "".join(f"<sitemap><loc>{site.url(path)}</loc></sitemap>" for path in paths)
        return Reply(
            body=f'<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{maps}'
            "</sitemapindex>",
            content_type="text/xml",
        )

    site.routes.update(
        {
            "/robots.txt": Reply.text("User-agent: docs-discord-bot\nDisallow: /private/\n"),
            "/sitemap.xml": index("/maps/a.xml", "/maps/nested.xml", "/maps/missing.xml"),
            "/maps/a.xml": urlset("/p1", "/p2"),
            "/maps/nested.xml": index("/maps/b.xml", "/sitemap.xml"),  # a cycle back to the top
            "/maps/b.xml": urlset("/p3", "/p1", "/private/p4", "/gone"),
            "/p1": Reply.html(page("One")),
            "/p2": Reply.html(page("Two")),
            "/p3": Reply.html(page("Three")),
            "/private/p4": Reply.html(page("Four")),
            # Sitemap by content: the name does not end in .xml.
            "/feed": urlset("/p5"),
            "/p5": Reply.html(page("Five")),
            "/rss": Reply.xml("<rss><channel/></rss>"),
        }
    )
    spec = site.url("/sitemap.xml")

    docs, failures = await load([spec, site.url("/feed"), site.url("/rss")], web_settings)

    assert sorted(docs) == [site.url(path) for path in ("/p1", "/p2", "/p3", "/p5")]
    assert docs[site.url("/p1")].source == spec
    assert docs[site.url("/p5")].source == site.url("/feed")
    assert {key.removeprefix(site.url("")): (f.reason, f.gone) for key, f in failures.items()} == {
        "/maps/missing.xml": ("HTTP 404", False),  # a missing sitemap deletes nothing
        "/private/p4": ("disallowed by robots.txt", False),
        "/gone": ("HTTP 404", True),
        "/rss": ("unsupported content type: XML <rss> is not a sitemap", False),
    }
    assert site.hits["/sitemap.xml"] == 1 and site.hits["/p1"] == 1


async def test_crawl_stays_on_site_and_under_the_root(
    site: LocalSite, web_settings: Settings
) -> None:
    async with LocalSite({"/docs/elsewhere": Reply.html(page("Elsewhere"))}) as other:
        site.routes.update(
            {
                "/docs": Reply.redirect("/docs/", status=301),
                "/docs/": Reply.html(
                    page(
                        "Home",
                        links=(
                            "a",
                            "/docs/b",
                            "/blog/post",
                            other.url("/docs/elsewhere"),
                            "file.pdf",
                            "mailto:x@example.org",
                            "#top",
                        ),
                    )
                ),
                "/docs/a": Reply.html(page("A", links=("a/deep", "/docs/", "../docs/b#part"))),
                "/docs/a/deep": Reply.html(page("Deep")),
                "/docs/b": Reply.html(page("B")),
                "/docs/file.pdf": Reply(body=b"%PDF", content_type="application/pdf"),
                "/blog/post": Reply.html(page("Blog")),
            }
        )
        spec = f"crawl:{site.url('/docs')}"

        docs, failures = await load([spec], web_settings)

        assert not failures
        assert sorted(doc.title for doc in docs.values()) == ["A", "B", "Deep", "Home"]
        assert all(doc.source == spec for doc in docs.values())
        assert site.hits["/docs/"] == 1  # reached by the root's redirect, then by links
        assert site.hits["/blog/post"] == 0 and site.hits["/docs/file.pdf"] == 0
        assert other.hits["/docs/elsewhere"] == 0


async def test_crawl_respects_the_page_cap(site: LocalSite, web_settings: Settings) -> None:
    links = tuple(f"/docs/{i}" for i in range(50))
    site.routes["/docs/"] = Reply.html(page("Home", links=links))
    for link in links:
        site.routes[link] = Reply.html(page(link, links=links))
    settings = web_settings.model_copy(update={"source_max_pages": 5})
    spec = f"crawl:{site.url('/docs/')}"

    docs, failures = await load([spec], settings)

    assert len(docs) == 5
    assert failures == {spec: SourceFailure(spec, "stopped at 5 pages (SOURCE_MAX_PAGES)", spec)}
    assert sum(site.hits[path] for path in site.routes) == 5


async def test_private_addresses_are_refused(site: LocalSite, settings: Settings) -> None:
    site.routes["/page"] = Reply.html(page("Page"))
    guarded = settings.model_copy(update={"allow_private_urls": False, "fetch_retries": 0})
    specs = [
        site.url("/page"),
        f"http://localhost:{site.port}/page",  # a name: refused by the resolver, at connect time
        f"crawl:{site.url('/')}",
        "http://[::1]:9/",
        "http://[::ffff:127.0.0.1]:9/",
        "http://10.1.2.3/",
        "http://169.254.169.254/meta/",
        "ftp://example.org/docs",
    ]

    docs, failures = await load(specs, guarded)

    assert not docs
    assert {key: f.reason for key, f in failures.items()} == {
        site.url("/page"): "refused: 127.0.0.1 is a loopback address",
        f"http://localhost:{site.port}/page": "refused: localhost resolves to a loopback address",
        site.url("/"): "refused: 127.0.0.1 is a loopback address",
        "http://[::1]:9/": "refused: ::1 is a loopback address",
        "http://[::ffff:127.0.0.1]:9/": "refused: ::ffff:127.0.0.1 is a loopback address",
        "http://10.1.2.3/": "refused: 10.1.2.3 is a private address",
        "http://169.254.169.254/meta/": "refused: 169.254.169.254 is a link-local address",
        "ftp://example.org/docs": "refused: unsupported URL scheme 'ftp'",
    }
    assert not site.hits  # not even robots.txt was asked for


async def test_redirect_targets_pass_the_guard(site: LocalSite, web_settings: Settings) -> None:
    # Loopback must be allowed to reach the test server at all; 0.0.0.0 (which reaches this
    # host too) and non-http schemes are refused regardless, so they show redirects are checked.
    site.routes.update(
        {
            "/to-zero": Reply.redirect(f"http://0.0.0.0:{site.port}/secret"),
            "/to-file": Reply.redirect("file:///etc/passwd"),
            "/secret": Reply.html(page("Secret")),
        }
    )

    docs, failures = await load([site.url("/to-zero"), site.url("/to-file")], web_settings)

    assert not docs
    assert failures[site.url("/to-zero")].reason == "refused: 0.0.0.0 is an unspecified address"
    assert failures[site.url("/to-file")].reason == "refused: unsupported URL scheme 'file'"
    assert site.hits["/secret"] == 0


async def test_markdown_and_text_over_http(site: LocalSite, web_settings: Settings) -> None:
    site.routes.update(
        {
            "/guide.md": Reply.markdown(
                "---\ntitle: The Guide\n---\n# Guide\n\n## Setup {#setup}\n"
            ),
            "/raw/notes.md": Reply.text("# Notes\n\nServed as text/plain."),
            "/notes.txt": Reply.text("Just text.\n"),
        }
    )

    docs, failures = await load(
        [site.url(p) for p in ("/guide.md", "/raw/notes.md", "/notes.txt")], web_settings
    )

    assert not failures
    guide = docs[site.url("/guide.md")]
    assert (guide.title, guide.text, guide.format) == (
        "The Guide",
        "# Guide\n\n## Setup",
        "markdown",
    )
    assert guide.anchors == {"Setup": "setup"}
    notes = docs[site.url("/raw/notes.md")]
    assert (notes.title, notes.format) == ("Notes", "markdown")
    text = docs[site.url("/notes.txt")]
    assert (text.title, text.text, text.format) == ("notes", "Just text.", "text")


async def test_stopping_early_closes_everything(site: LocalSite, web_settings: Settings) -> None:
    site.routes["/fast"] = Reply.html(page("Fast"))
    site.routes["/slow"] = Reply.html(page("Slow"), delay_s=0.2)
    results = load_sources([site.url("/fast"), site.url("/slow")], web_settings)
    assert isinstance(results, AsyncGenerator)

    first = await anext(results)
    await results.aclose()  # cancels the slow fetch and closes the session

    assert isinstance(first, Document) and first.title == "Fast"
    await asyncio.sleep(0.3)  # nothing left running may fail or warn afterwards
