"""The data that flows through rag_core: Document -> Chunk -> (stored) -> Hit."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Document:
    """One page of documentation, as text, with where it lives publicly.

    `text` is Markdown (HTML pages are converted on load) or plain text.
    `anchors` maps a heading's text to the page's own anchor id for it (HTML ids, Markdown
    `{#id}`); headings without one get a slug when chunked.
    """

    doc_id: str  # stable key: the file's absolute path, or the page's URL
    url: str  # public URL of the page
    title: str
    text: str
    format: Literal["markdown", "text"] = "markdown"
    source: str = ""  # the source spec it came from (folder, URL, sitemap, crawl root)
    anchors: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def content_hash(self) -> str:
        """Changes when anything a searcher would see changes."""
        return sha256(f"{self.url}\n{self.title}\n{self.format}\n{self.text}")


@dataclass(frozen=True)
class Chunk:
    """A piece of a Document sized for the embedding model."""

    chunk_id: str  # stable: derived from doc_id and position
    doc_id: str
    url: str  # deep link: page URL + '#anchor' where the page has one
    title: str
    headings: tuple[str, ...]  # heading path, outermost first
    text: str
    doc_hash: str
    source: str = ""

    @property
    def chunk_hash(self) -> str:
        return sha256(f"{self.url}\n{self.title}\n{' > '.join(self.headings)}\n{self.text}")

    @property
    def heading_path(self) -> str:
        return " > ".join(self.headings)

    @property
    def embed_text(self) -> str:
        """What the encoder and BM25 see: the page title and heading path give a passage its
        context."""
        return in_context(self.title, self.heading_path, self.text)


def in_context(title: str, heading_path: str, text: str) -> str:
    """A passage's text after its page title and heading path (`Title > Section > Sub`)."""
    context = " > ".join(part for part in (title, heading_path) if part)
    return f"{context}\n\n{text}" if context else text


@dataclass(frozen=True)
class Hit:
    """A search result: a stored chunk and how well it matched."""

    chunk_id: str
    doc_id: str
    url: str
    title: str
    heading_path: str
    text: str
    score: float  # the ranking score (RRF in hybrid mode, cosine in dense mode)
    similarity: float  # cosine similarity of query and chunk vectors (for the relevance gate)
    chunk_hash: str = ""  # the stored chunk's content hash: a later version without it changed


@dataclass(frozen=True)
class SourceFailure:
    """A page that could not be loaded, and why (reported, never fatal)."""

    source: str  # the page (path or URL) that failed; equal to `spec` when a whole source failed
    reason: str
    spec: str = ""  # the source spec it belongs to
    # True when the page is definitively gone (404/410): its old chunks are removed. Otherwise
    # (timeouts, 5xx, bad content) the old version stays, so a flaky network deletes nothing.
    gone: bool = False
