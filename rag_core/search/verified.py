"""Verified answers: a question and the answer moderators wrote for it, searched like a page.

Each one is a single row in the live version (doc_id `verified:<id>`, title "Verified by the
moderators" or, for a community member's answer the moderators adopted, "Answered by <name>,
verified by the moderators", url = where it was given, heading_path = the question, text =
question and answer). Its vector is the *question's* query embedding, so a paraphrase of that
question finds it closely; BM25 still reads the answer's words.

Verified answers are not a docs source: a reindex carries them over into every version it
builds (re-embedding them when the model changed), whatever it prunes. Adding or removing one
changes the live version at once, under the lock a reindex holds while it copies them and
switches versions, so neither can miss the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..documents import Chunk, Hit, sha256
from ..errors import IndexMissingError
from .embedding import Embedder
from .store import KnowledgeStore, milvus_str

PREFIX = "verified:"
TITLE = "Verified by the moderators"
BY_TITLE = "Answered by {name}, verified by the moderators"
_BY_START, _BY_END = BY_TITLE.split("{name}")
SOURCE = "verified"  # the `source` of every verified row: never a spec a reindex reads
FILTER = f'doc_id like "{PREFIX}%"'


def docs_filter(scope: Sequence[str]) -> str:
    """The Milvus filter for the docs search when only the verified answers given under one of
    the URL prefixes in `scope` may answer (a community's own: its Discord server's message
    links). An empty scope keeps every verified answer out.

    Written with `source` and `like`: Milvus Lite cannot negate a `like`, nor escape its
    wildcards (`_` in a prefix matches any one character; Discord links hold only digits)."""
    docs = f"source != {milvus_str(SOURCE)}"
    given = " or ".join(f"url like {milvus_str(prefix + '%')}" for prefix in scope)
    return f"{docs} or {given}" if scope else docs


def given_in(scope: Sequence[str]) -> Callable[[str], bool]:
    """Whether a verified answer's link is under one of the prefixes in `scope`."""
    prefixes = tuple(scope)
    return lambda url: url.startswith(prefixes)


def is_verified(doc_id: str) -> bool:
    return doc_id.startswith(PREFIX)


def doc_id_of(verified_id: int) -> str:
    return f"{PREFIX}{verified_id}"


@dataclass(frozen=True)
class VerifiedAnswer:
    """What the knowledge base holds for one verified answer."""

    id: int
    question: str
    answer: str
    url: str  # the Discord message the correction belongs to, or the person's answer
    answered_by: str = ""  # the person whose answer it is (a display name), if not moderators'

    @property
    def doc_id(self) -> str:
        return doc_id_of(self.id)

    @property
    def title(self) -> str:
        return BY_TITLE.format(name=self.answered_by) if self.answered_by else TITLE

    def chunk(self) -> Chunk:
        text = f"Question: {self.question}\n\nAnswer: {self.answer}"
        return Chunk(
            chunk_id=self.doc_id,
            doc_id=self.doc_id,
            url=self.url,
            title=self.title,
            headings=(self.question,),
            text=text,
            doc_hash=sha256(f"{self.url}\n{text}"),
            source=SOURCE,
        )


def from_row(row: Mapping[str, Any]) -> VerifiedAnswer:
    """Read a verified row (or Hit fields) back, as `VerifiedAnswer.chunk` wrote it."""
    _, _, answer = str(row["text"]).partition("\n\nAnswer: ")
    doc_id = str(row["doc_id"])
    title = str(row.get("title", ""))
    by = title[len(_BY_START) : -len(_BY_END)] if title.startswith(_BY_START) else ""
    return VerifiedAnswer(
        int(doc_id[len(PREFIX) :]), str(row["heading_path"]), answer, row["url"], by
    )


def from_hit(hit: Hit) -> VerifiedAnswer:
    fields = ("doc_id", "heading_path", "text", "url", "title")
    return from_row({f: getattr(hit, f) for f in fields})


class VerifiedIndex:
    """Writes verified answers into the live version; a reindex carries them into the next one."""

    def __init__(self, store: KnowledgeStore, embedder: Embedder) -> None:
        self.store = store
        self.embedder = embedder
        # Held by add/remove while they write, and by a reindex from copying the verified rows
        # to its publish: an answer added meanwhile is never lost by the version switch.
        self.lock = asyncio.Lock()

    async def vectors(self, answers: Sequence[VerifiedAnswer]) -> np.ndarray:
        """One query embedding per answer's question (what a paraphrase is compared with)."""
        rows = [await self.embedder.aembed_query(a.question) for a in answers]
        return np.vstack(rows) if rows else np.zeros((0, self.embedder.dim), dtype=np.float32)

    async def add(self, answer: VerifiedAnswer) -> None:
        """Index `answer` in the live version (replacing an older text of the same id)."""
        vectors = await self.vectors([answer])
        async with self.lock:
            live = await asyncio.to_thread(self.store.live)
            if live is None:
                raise IndexMissingError(detail="no live version to add a verified answer to")
            await asyncio.to_thread(self.store.delete_documents, live.name, [answer.doc_id])
            await asyncio.to_thread(self.store.insert, live.name, [answer.chunk()], vectors)

    async def remove(self, verified_id: int) -> None:
        """Take a verified answer out of the live version (gone for the next question)."""
        async with self.lock:
            live = await asyncio.to_thread(self.store.live)
            if live is not None:
                await asyncio.to_thread(
                    self.store.delete_documents, live.name, [doc_id_of(verified_id)]
                )

    async def listed(self, collection: str | None = None) -> list[VerifiedAnswer]:
        """The verified answers indexed in `collection` (default: the live version), by id."""
        rows = await asyncio.to_thread(self.store.rows, FILTER, collection)
        return sorted((from_row(r) for r in rows), key=lambda a: a.id)

    async def carry_over(self, source: str, target: str, *, same_model: bool) -> int:
        """Put the verified answers of version `source` into `target`; call under `lock`."""
        if same_model:
            return await asyncio.to_thread(
                self.store.copy_documents, source, target, None, filter=FILTER
            )
        answers = await self.listed(source)
        if not answers:
            return 0
        # Another model: the stored vectors mean nothing to it.
        vectors = await self.vectors(answers)
        chunks = [a.chunk() for a in answers]
        await asyncio.to_thread(self.store.insert, target, chunks, vectors)
        return len(chunks)
