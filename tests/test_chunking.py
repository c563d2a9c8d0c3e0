"""Chunker: token limits with the real MiniLM tokenizer, heading paths, deep links, stable ids."""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path

import pytest

from rag_core.documents import Chunk, Document, sha256
from rag_core.ingest.chunking import Chunker
from tests.conftest import FIXTURES

DOCS = FIXTURES / "milvus-docs"
FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)


def load(path: Path) -> Document:
    """A fixture page as sources.py would give it: front matter stripped, title from it."""
    text = path.read_text(encoding="utf-8")
    title = ""
    if match := FRONT_MATTER.match(text):
        if found := re.search(r"^title:\s*(.+)$", match.group(1), re.MULTILINE):
            title = found.group(1).strip()
        text = text[match.end() :]
    return Document(
        doc_id=str(path),
        url=f"https://milvus.io/docs/{path.name}",
        title=title,
        text=text,
        source=str(DOCS),
    )


def doc(text: str, **kwargs: object) -> Document:
    fields: dict[str, object] = {
        "doc_id": "/docs/page.md",
        "url": "https://example.org/docs/page",
        "title": "Page",
        "text": text,
    }
    return Document(**(fields | kwargs))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def chunker(embedder) -> Chunker:
    return Chunker(
        embedder.count_tokens, max_tokens=embedder.max_tokens, chunk_tokens=256, overlap_tokens=32
    )


@pytest.fixture(scope="module")
def small(embedder) -> Chunker:
    """Small chunks, so short test texts need the recursive splitter."""
    return Chunker(
        embedder.count_tokens, max_tokens=embedder.max_tokens, chunk_tokens=64, overlap_tokens=16
    )


def assert_fits(chunks: list[Chunk], embedder, limit: int) -> None:
    assert chunks
    for chunk in chunks:
        assert embedder.count_tokens(chunk.embed_text) <= limit, chunk.chunk_id
        assert chunk.text.strip()


def words_outside_headings(text: str) -> set[str]:
    """Words a reader sees: heading lines, rules and table delimiter rows are rewritten."""
    lines = [ln for ln in text.splitlines() if not re.match(r"^#{1,6} |^---+$|^[\s|:-]+$", ln)]
    return set(" ".join(lines).split())


@pytest.mark.parametrize("chunk_tokens", [128, 256, 512])
def test_fixture_corpus_fits_the_encoder_and_keeps_every_word(embedder, chunk_tokens: int) -> None:
    assert embedder.max_tokens == 256
    chunker = Chunker(
        embedder.count_tokens,
        max_tokens=embedder.max_tokens,
        chunk_tokens=chunk_tokens,
        overlap_tokens=32,
    )
    pages = sorted(DOCS.rglob("*.md"))
    assert len(pages) >= 10
    for page in pages:
        document = load(page)
        chunks = chunker.split(document)
        # chunk_tokens above the encoder's limit is capped by it
        assert_fits(chunks, embedder, min(chunk_tokens, embedder.max_tokens))
        assert {c.doc_id for c in chunks} == {document.doc_id}
        assert {c.doc_hash for c in chunks} == {document.content_hash}
        assert {c.title for c in chunks} == {document.title}
        assert {c.source for c in chunks} == {str(DOCS)}
        assert all(c.url.startswith(document.url) for c in chunks)
        kept = set(" ".join(c.text for c in chunks).split())
        # a word longer than a chunk is cut by tokens: it survives across consecutive chunks
        squeezed = "".join("".join(c.text.split()) for c in chunks)
        lost = {w for w in words_outside_headings(document.text) - kept if w not in squeezed}
        assert not lost, page


def test_heading_paths_and_deep_links_on_the_index_page(chunker: Chunker) -> None:
    chunks = chunker.split(load(DOCS / "reference" / "index.md"))
    hnsw = [c for c in chunks if c.headings and c.headings[-1] == "HNSW"]
    assert hnsw
    # The H1 "In-memory Index" repeats the title: it is not repeated in the heading path.
    assert hnsw[0].headings == ("Indexes supported in Milvus", "HNSW")
    assert hnsw[0].url == "https://milvus.io/docs/index.md#hnsw"
    assert hnsw[0].embed_text.startswith("In-memory Index > Indexes supported in Milvus > HNSW\n\n")
    assert "efConstruction" in " ".join(c.text for c in hnsw)
    # Text under the H1 links to the page itself.
    assert chunks[0].headings == ()
    assert chunks[0].url == "https://milvus.io/docs/index.md"
    assert chunks[0].text.startswith("This topic lists various types of in-memory indexes")


def test_heading_rules(chunker: Chunker) -> None:
    text = """# Another Top

Intro.

## Install it {#setup}

Run the installer.

## Usage

Call it.

### What's `nlist`?  Really [see](x.md)

A parameter.

## Example

One.

## Example

Two.

## Empty section

### Nested ##

Deep.
"""
    chunks = chunker.split(doc(text, anchors={"Usage": "usage-section"}))
    got = [
        (c.headings, c.url.removeprefix("https://example.org/docs/page"), c.text) for c in chunks
    ]
    assert got == [
        # An H1 other than the title stays in the path, and still links to the page itself.
        (("Another Top",), "", "Intro."),
        (("Another Top", "Install it"), "#setup", "Run the installer."),
        (("Another Top", "Usage"), "#usage-section", "Call it."),
        (
            ("Another Top", "Usage", "What's nlist?  Really see"),
            "#whats-nlist--really-see",
            "A parameter.",
        ),
        (("Another Top", "Example"), "#example", "One."),
        (("Another Top", "Example"), "#example-1", "Two."),
        (("Another Top", "Empty section", "Nested"), "#nested", "Deep."),
    ]


def test_no_headings_keeps_the_page_url(chunker: Chunker) -> None:
    chunks = chunker.split(doc("Just a paragraph.\n\nAnd another.", url="https://x.org/p#frag"))
    assert [(c.headings, c.url, c.text) for c in chunks] == [
        ((), "https://x.org/p#frag", "Just a paragraph.\n\nAnd another.")
    ]


def test_code_fence_is_kept_whole_when_the_section_fits(chunker: Chunker) -> None:
    code = (
        "```python\n"
        "# Connect first\n"
        "client = MilvusClient()\n"
        "\n"
        "## not a heading either\n"
        "for hit in client.search(data=[vec]):\n"
        "    print(hit)\n"
        "```"
    )
    text = f"# Page\n\n## Search\n\nExample:\n\n{code}\n\nDone.\n"
    chunks = chunker.split(doc(text))
    assert len(chunks) == 1
    assert chunks[0].headings == ("Search",)
    assert chunks[0].text == f"Example:\n\n{code}\n\nDone."


def test_long_section_moves_a_code_block_whole_to_one_chunk(small: Chunker, embedder) -> None:
    code = "```python\nfor i in range(3):\n\n    print(i)  # indented\n```"
    prose = " ".join(f"Sentence {n} says something short." for n in range(8))
    text = f"## Loop\n\n{prose}\n\n{code}\n\n{prose}\n"
    chunks = small.split(doc(text))
    assert len(chunks) > 2
    assert_fits(chunks, embedder, 64)
    assert any(code in c.text for c in chunks)


def test_huge_code_block_is_split_by_lines_to_fit(small: Chunker, embedder) -> None:
    body = "\n".join(f"    value_{n} = compute({n}, scale=0.5)" for n in range(300))
    chunks = small.split(doc(f"## Big\n\n```python\ndef f():\n{body}\n```\n"))
    assert len(chunks) > 10
    assert_fits(chunks, embedder, 64)
    # cut between lines: every line survives whole, indentation included
    lines = {ln for c in chunks for ln in c.text.splitlines()}
    assert all(f"    value_{n} = compute({n}, scale=0.5)" in lines for n in range(300))


@pytest.mark.parametrize(
    "line",
    [
        " ".join(f"word{n}" for n in range(3000)),  # one long line with spaces
        "a,b;" * 4000,  # no spaces at all: cut mid-line by tokens
    ],
)
def test_single_huge_line_still_fits(chunker: Chunker, embedder, line: str) -> None:
    chunks = chunker.split(doc(f"# Page\n\n## Dump\n\n{line}\n"))
    assert len(chunks) > 3
    assert_fits(chunks, embedder, embedder.max_tokens)
    assert all(c.headings == ("Dump",) for c in chunks)


def test_huge_title_and_headings_still_fit(small: Chunker, embedder) -> None:
    title = "Very long title " * 40
    text = "".join(
        f"{'#' * n} Heading level {n} " + "with words " * 10 + "\n\n" for n in range(1, 7)
    )
    chunks = small.split(doc(text + "Body text.", title=title))
    assert_fits(chunks, embedder, 64)
    assert chunks[-1].text == "Body text."


def test_overlap_between_consecutive_recursive_chunks(small: Chunker, embedder) -> None:
    sentences = [f"Fact number {n} is about collections." for n in range(40)]
    chunks = small.split(doc("## Facts\n\n" + "\n".join(sentences)))
    assert len(chunks) > 3
    assert_fits(chunks, embedder, 64)
    for before, after in pairwise(chunks):
        assert after.text.splitlines()[0] in before.text.splitlines()
    assert set("\n".join(c.text for c in chunks).splitlines()) == set(sentences)


def test_chunk_ids_are_stable_and_positional(chunker: Chunker, small: Chunker) -> None:
    document = load(DOCS / "reference" / "index.md")
    first, second = chunker.split(document), chunker.split(document)
    assert [c.chunk_id for c in first] == [c.chunk_id for c in second]
    prefix = sha256(document.doc_id)[:16]
    assert [c.chunk_id for c in first] == [f"{prefix}-{i:04d}" for i in range(len(first))]
    # Same position, same id, even when the content there changed; another page, other ids.
    edited = doc("## A\n\nChanged text.")
    assert small.split(edited)[0].chunk_id == small.split(doc("## B\n\nOld."))[0].chunk_id
    other = small.split(doc("## A\n\nChanged text.", doc_id="/docs/other.md"))
    assert other[0].chunk_id != small.split(edited)[0].chunk_id


def test_text_documents_skip_heading_processing(chunker: Chunker) -> None:
    text = "# Not a heading\n\nPlain words.\n\n## Still not\n\nMore."
    chunks = chunker.split(doc(text, format="text"))
    assert [(c.headings, c.url, c.text) for c in chunks] == [
        ((), "https://example.org/docs/page", text)
    ]


def test_empty_pieces_are_dropped(chunker: Chunker) -> None:
    assert chunker.split(doc("")) == []
    assert chunker.split(doc("  \n\n\t\n")) == []
    assert chunker.split(doc("# Page\n\n## Only headings\n\n---\n\n### Here\n")) == []


def test_unclosed_fence_loses_no_text(chunker: Chunker) -> None:
    chunks = chunker.split(doc("## Setup\n\nBefore.\n\n```bash\npip install pymilvus\n# done"))
    assert "pip install pymilvus\n# done" in chunks[-1].text
    assert chunks[0].text.startswith("Before.")
