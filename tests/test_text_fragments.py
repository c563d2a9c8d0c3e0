"""Text-fragment links to cited passages, and one source per page section."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import pytest

from rag_core.answer.text_fragments import (
    dedupe_sources,
    encode_directive_text,
    passage_phrase,
    passage_url,
    prose_blocks,
    source_key,
    with_text_fragment,
)
from tests.conftest import FIXTURES


def directive_text(url: str) -> str:
    """The decoded `text=` value of a URL's text directive (what the browser searches for)."""
    fragment = urlsplit(url).fragment
    assert ":~:" in fragment, url
    directive = fragment.split(":~:", 1)[1]
    assert directive.startswith("text="), url
    value = directive.removeprefix("text=")
    # Well-formed: no raw delimiter, space or non-ASCII character is left in the value.
    for raw in "&,- #%":
        if raw != "%":
            assert raw not in value, (raw, value)
    assert value.isascii(), value
    return unquote(value)


def anchor_of(url: str) -> str:
    return urlsplit(url).fragment.split(":~:", 1)[0]


def test_prose_phrase_keeps_page_and_anchor() -> None:
    passage = (FIXTURES / "milvus-docs" / "reference" / "gpu_index.md").read_text()
    url = passage_url("https://milvus.io/docs/gpu_index.md#GPU_CAGRA", passage)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "milvus.io", "/docs/gpu_index.md")
    assert anchor_of(url) == "GPU_CAGRA"
    # The first sentence of prose, not the front matter or the `# GPU Index` heading.
    assert directive_text(url) == "Milvus supports various GPU index types to accelerate"
    assert url.startswith("https://milvus.io/docs/gpu_index.md#GPU_CAGRA:~:text=Milvus%20")


def test_url_without_anchor_gets_a_bare_directive() -> None:
    url = passage_url("https://x.org/page", "The quick brown fox jumps over the lazy dog.")
    assert url == (
        "https://x.org/page#:~:text=The%20quick%20brown%20fox%20jumps%20over%20the%20lazy"
    )


def test_reserved_characters_are_encoded() -> None:
    text = 'Set "nlist" – the cluster count, e.g. 1-2 & more — to tune recall.'
    url = passage_url("https://x.org/p#a", text)
    phrase = directive_text(url)
    assert phrase == 'Set "nlist" – the cluster count, e.g. 1-2'
    value = urlsplit(url).fragment.split("text=", 1)[1]
    assert "%2C" in value and "%2D" in value and "%22" in value and "%20" in value
    assert encode_directive_text("a&b,c-d e") == "a%26b%2Cc%2Dd%20e"


def test_ampersand_in_phrase() -> None:
    url = passage_url("https://x.org/p", "Search & filter results by metadata in one call.")
    assert directive_text(url) == "Search & filter results by metadata in one"
    assert "%26" in url


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        (
            "Le paramètre nprobe définit le nombre de clusters à parcourir.",
            "Le paramètre nprobe définit le nombre de clusters",
        ),
        ("Milvus 是一个开源向量数据库。它支持多种索引。", "Milvus 是一个开源向量数据库"),
        ("向量数据库用于存储和检索高维向量。它支持多种索引。", "向量数据库用于存储和检索高维向量"),
    ],
)
def test_non_ascii_is_utf8_percent_encoded(text: str, phrase: str) -> None:
    url = passage_url("https://x.org/文档/page#sección", text)
    assert directive_text(url) == phrase
    assert url.split("#", 1)[1].isascii() or anchor_of(url) == "sección"
    value = urlsplit(url).fragment.split("text=", 1)[1]
    assert value.isascii()
    assert value == encode_directive_text(phrase)
    assert unquote(value, encoding="utf-8", errors="strict") == phrase


def test_markdown_syntax_is_stripped_as_the_browser_renders_it() -> None:
    text = (
        "Use the **`nlist`** parameter of [IVF_FLAT](https://milvus.io/docs/index.md#IVF) "
        "to set _how many_ clusters there are."
    )
    assert passage_phrase(text) == "Use the nlist parameter of IVF_FLAT to set"
    # Identifiers with underscores are not emphasis.
    text = "The `intermediate_graph_degree` value affects recall and build time."
    assert (
        passage_phrase(text) == "The intermediate_graph_degree value affects recall and build time"
    )
    assert passage_phrase(r"Escaped \*stars\* and &amp; entities read like text here.") == (
        "Escaped *stars* and & entities read like text"
    )
    assert passage_phrase("A line<br>with <code>inline</code> HTML tags stays readable.") == (
        "A line with inline HTML tags stays readable"
    )


def test_code_tables_and_headings_give_no_phrase() -> None:
    code_only = "```python\nclient.create_index(collection_name='docs', index_params=p)\n```\n"
    assert passage_phrase(code_only) is None
    assert passage_url("https://x.org/p#create", code_only) == "https://x.org/p#create"
    table = "| Parameter | Description |\n| --- | --- |\n| `nlist` | Number of cluster units |\n"
    assert passage_phrase("## Index parameters\n\n" + table) is None
    assert passage_phrase("x = [1, 2, 3]\ny = {'a': (1, 2)}; z = x[0] + y['a'][1]") is None
    assert passage_url("", "Some prose that would make a phrase.") == ""


def test_phrase_comes_from_prose_after_code() -> None:
    text = (
        "## Create an index\n\n"
        "```python\n# Build the index first\nclient.create_index(p)\n```\n\n"
        "    indented_code(block)\n\n"
        "- **Note**: building takes a few minutes on large collections.\n"
    )
    assert prose_blocks(text) == ["Note: building takes a few minutes on large collections."]
    assert passage_phrase(text) == "Note: building takes a few minutes on large"


def test_a_phrase_found_once_is_preferred() -> None:
    text = (
        "Search parameters are listed below.\n\n"
        "Search parameters are listed below.\n\n"
        "The nprobe value trades recall against latency."
    )
    assert passage_phrase(text) == "The nprobe value trades recall against latency"


def test_existing_directive_is_replaced_and_query_kept() -> None:
    url = with_text_fragment("https://x.org/p?lang=en#sec:~:text=old", "new words")
    assert url == "https://x.org/p?lang=en#sec:~:text=new%20words"


def test_short_or_list_items_do_not_cross_blocks() -> None:
    # Each list item is its own block in the rendered page: a phrase never spans two of them.
    text = "- Fast\n- Small\n- Open source\n- Scales to billions of vectors easily\n"
    assert passage_phrase(text) == "Scales to billions of vectors easily"


@dataclass
class Src:
    url: str
    n: int


def test_dedupe_sources_by_page_and_anchor() -> None:
    sources = [
        Src("https://milvus.io/docs/index.md#HNSW", 1),
        Src("https://MILVUS.io/docs/index.md#HNSW:~:text=graph%20index", 2),
        Src("https://milvus.io/docs/index.md#IVF_FLAT", 3),
        Src("https://milvus.io/docs/index.md", 4),
        Src("https://milvus.io/docs/index.md#", 5),
        Src("https://milvus.io/docs/index.md#hnsw", 6),  # anchors are case-sensitive
        Src("https://milvus.io", 7),
        Src("https://milvus.io/", 8),
    ]
    kept = dedupe_sources(sources, lambda s: s.url)
    assert [s.n for s in kept] == [1, 3, 4, 6, 7]
    assert source_key("https://milvus.io/docs/a.md#x:~:text=y") == "https://milvus.io/docs/a.md#x"
