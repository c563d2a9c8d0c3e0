"""Indexer: sources -> load -> chunk -> embed -> write, incrementally, published atomically.

A reindex never touches the live collection. It builds a new version beside it: unchanged
documents are copied over with their vectors (no re-embedding), new and edited ones are
embedded, and the alias is switched only when the version is complete. A run that fails
leaves the live index exactly as it was; its unfinished version is dropped (or, after a
crash, by the next run). A run that finds no change publishes nothing and costs no writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from ..config import Settings
from ..documents import Chunk, SourceFailure
from ..errors import ReindexBusyError, ReindexTimeoutError
from ..golden import GateReport, GoldenQuestion
from ..search.embedding import Embedder
from ..search.store import DocRecord, KnowledgeStore
from ..search.verified import VerifiedIndex, is_verified
from .chunking import Chunker

log = logging.getLogger(__name__)

Stage = Literal["fetched", "chunked", "embedded", "written"]


@dataclass(frozen=True)
class Progress:
    """A progress event: `fetched` counts documents; the other stages count chunks."""

    stage: Stage
    done: int


@dataclass
class IndexReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: list[SourceFailure] = field(default_factory=list)
    chunks_embedded: int = 0  # chunks encoded in this run
    chunks_total: int = 0  # chunks in the index after the run
    seconds: float = 0.0
    published: bool = False  # False when nothing changed: the live version was kept as is
    gate: GateReport | None = None  # the golden questions replayed before publishing
    forced: bool = False  # published although the gate held it back

    @property
    def held_back(self) -> bool:
        """The gate found the new version worse: it was not published."""
        return self.gate is not None and not self.gate.passed and not self.published

    @property
    def nothing_loaded(self) -> bool:
        """Every source failed: not one document could be read (a run to report as failed)."""
        return bool(self.failed) and self.added + self.updated + self.unchanged == 0

    def summary(self) -> str:
        return (
            f"added {self.added}, updated {self.updated}, unchanged {self.unchanged}, "
            f"removed {self.removed}, failed {len(self.failed)} documents; "
            f"{self.chunks_embedded} chunks embedded, {self.chunks_total} in the index; "
            f"{self.seconds:.1f} s"
        )

    @property
    def state(self) -> str:
        """What happened to the live version, in words."""
        if self.held_back:
            return "held back by the reindex gate, live index kept"
        if self.forced:
            return "published despite the reindex gate"
        return "published" if self.published else "no change, live index kept"


ProgressCallback = Callable[[Progress], None]


class PublishCheck(Protocol):
    """Asked before a new version goes live: replay the golden questions (the verified
    answers', the configured set's and `extra`) on `live` and `new`. None: nothing to replay.
    The runtime hands the reindex gate (quality/gate.py) to the Indexer as this."""

    async def __call__(
        self,
        live: str,
        new: str,
        extra: Sequence[GoldenQuestion] = (),
        changed_pages: Iterable[str] = (),
    ) -> GateReport | None: ...


def normalize_spec(spec: str) -> str:
    """Local paths become absolute so a source is the same whatever the working directory."""
    if spec.startswith(("http://", "https://", "crawl:")):
        return spec
    return str(Path(spec).expanduser().resolve())


class Indexer:
    """Owns the reindex procedure; one run at a time per process."""

    def __init__(
        self,
        settings: Settings,
        store: KnowledgeStore,
        embedder: Embedder,
        chunker: Chunker,
        verified: VerifiedIndex,
        check: PublishCheck | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        self.chunker = chunker
        self.verified = verified
        self.check = check  # without one, every complete version is published
        self._lock = asyncio.Lock()
        # Texts handed to the encoder per call: large enough for its length-sorted batching,
        # small enough that loading, embedding and writing overlap.
        self.embed_group = max(256, embedder.batch_size * 8)

    @property
    def running(self) -> bool:
        return self._lock.locked()

    async def run(
        self,
        specs: Sequence[str],
        *,
        prune: bool = False,
        on_progress: ProgressCallback | None = None,
        force: bool = False,
        golden: Sequence[GoldenQuestion] = (),
    ) -> IndexReport:
        """Bring the index in line with `specs`. `prune` also removes documents of other sources.

        Before the switch the golden set (verified answers, REINDEX_GATE_QUESTIONS, `golden`)
        is replayed on both versions; a worse new version is held back (`report.held_back`)
        unless `force`.

        Cancelling the calling task stops the run cleanly (the live index is kept), and so does
        Settings.reindex_timeout_min: a source that never ends cannot hold the index forever.
        """
        if self._lock.locked():
            raise ReindexBusyError()
        minutes = self.settings.reindex_timeout_min
        async with self._lock:
            run = _Run(self, [normalize_spec(s) for s in specs], prune, on_progress)
            run.force, run.golden = force, list(golden)
            deadline = asyncio.timeout(minutes * 60 if minutes else None)
            try:
                async with deadline:
                    return await run.go()
            except TimeoutError:
                if not deadline.expired():
                    raise
                raise ReindexTimeoutError(
                    f"The reindex ran longer than {minutes:g} minutes (REINDEX_TIMEOUT_MIN) and "
                    "was stopped; the live index is unchanged."
                ) from None


class _Run:
    """The state of one reindex; see the module docstring for the procedure."""

    def __init__(
        self,
        indexer: Indexer,
        specs: list[str],
        prune: bool,
        on_progress: ProgressCallback | None,
    ) -> None:
        self.ix = indexer
        self.store = indexer.store
        self.specs = specs
        self.prune = prune
        self.on_progress = on_progress
        self.report = IndexReport()
        self.version: str | None = None  # the new collection, created at the first change
        self.counts: dict[Stage, int] = dict.fromkeys(
            ("fetched", "chunked", "embedded", "written"), 0
        )
        self.pending: list[Chunk] = []
        self.force = False
        self.golden: list[GoldenQuestion] = []
        self.changed_pages: set[str] = set()
        self.writes: list[asyncio.Task[None]] = []

    def progress(self, stage: Stage, n: int) -> None:
        self.counts[stage] += n
        if self.on_progress is not None:
            self.on_progress(Progress(stage, self.counts[stage]))

    async def go(self) -> IndexReport:
        # Imported here: the loaders pull in aiohttp and BeautifulSoup (seconds on a busy host),
        # which a process that only searches never needs.
        from .sources import load_sources

        start = time.perf_counter()
        store, embedder = self.store, self.ix.embedder
        orphans = await asyncio.to_thread(store.drop_orphans)
        if orphans:
            log.info("dropped %d unfinished index versions from earlier runs", len(orphans))
        live = await asyncio.to_thread(store.live)
        # A different model means different vectors: everything is embedded again.
        reuse = live is not None and live.model == embedder.model_name and live.dim == embedder.dim
        old: dict[str, DocRecord] = await asyncio.to_thread(store.documents) if reuse else {}
        keep: set[str] = set()  # old documents carried over unchanged
        seen: set[str] = set()
        failed_specs: set[str] = set()
        gone: set[str] = set()
        items = load_sources(self.specs, self.ix.settings)
        try:
            async for item in items:
                if isinstance(item, SourceFailure):
                    self.report.failed.append(item)
                    # INFO: the report lists every failure; the CLI and /reindex show it.
                    log.info("skipped %s: %s", item.source, item.reason)
                    if item.source == item.spec:
                        failed_specs.add(item.spec)
                    elif item.gone:
                        gone.add(item.source)
                    elif item.source in old:
                        keep.add(item.source)  # a transient failure never deletes a page
                    continue
                self.progress("fetched", 1)
                if item.doc_id in seen:
                    continue  # a page reached twice (sitemap and crawl): first one wins
                seen.add(item.doc_id)
                record = old.get(item.doc_id)
                if record is not None and record.doc_hash == item.content_hash:
                    keep.add(item.doc_id)
                    self.report.unchanged += 1
                    continue
                chunks = await asyncio.to_thread(self.ix.chunker.split, item)
                if not chunks:
                    # No text to index (an empty page): nothing is stored for it, so it is not
                    # "added" (else every run would publish a new version for it); a page that
                    # had text and lost it is removed.
                    log.info("no text to index in %s", item.doc_id)
                    if record is not None:
                        self.report.removed += 1
                    continue
                if record is None:
                    self.report.added += 1
                else:
                    self.report.updated += 1
                self.changed_pages.add(item.url)
                await self.add(chunks)
            await self.flush()
            # Old documents not seen again: removed if their source was read in full.
            for doc_id, record in old.items():
                if doc_id in seen or doc_id in keep or is_verified(doc_id):
                    continue  # verified answers are carried over at publish, never pruned
                in_run = record.source in self.specs
                if (in_run and record.source not in failed_specs) or doc_id in gone:
                    self.report.removed += 1
                    self.changed_pages.add(record.url or doc_id)
                elif in_run or not self.prune:
                    keep.add(doc_id)
                else:
                    self.report.removed += 1
                    self.changed_pages.add(record.url or doc_id)
            if live is not None and not reuse:
                log.warning(
                    "embedding model changed (%s -> %s): every document is embedded again",
                    live.model,
                    embedder.model_name,
                )
            changed = self.report.added + self.report.updated + self.report.removed
            if changed == 0:
                # Nothing to publish: a no-change run writes nothing, and a first run that
                # loaded nothing never publishes an empty index.
                self.report.chunks_total = await asyncio.to_thread(store.count)
                return self.finish(start)
            if self.version is None:
                self.version = await self.create_version()
            if keep and live is not None:
                await asyncio.to_thread(store.copy_documents, live.name, self.version, keep)
            async with self.ix.verified.lock:
                # The live version's verified answers as they are now, then the switch: one
                # added or removed meanwhile waits for the lock and lands in the new version.
                if live is not None:
                    await self.ix.verified.carry_over(live.name, self.version, same_model=reuse)
                    self.report.gate = await self.gate(live.name, self.version)
                    gate = self.report.gate
                    if gate is not None and not gate.passed and not self.force:
                        log.warning("%s", gate.summary())
                        version, self.version = self.version, None
                        await asyncio.to_thread(store.drop, version)
                        self.report.chunks_total = await asyncio.to_thread(store.count)
                        return self.finish(start)
                    self.report.forced = self.report.held_back
                await asyncio.to_thread(store.publish, self.version)
            self.version = None
            self.report.published = True
            self.report.chunks_total = await asyncio.to_thread(store.count)
            return self.finish(start)
        finally:
            # Closed now, not when collected: a run stopped while it embeds (cancelled, timed
            # out) stops its fetches, and kills the processes converting pages, at once.
            await items.aclose()
            await self.settle_writes()
            if self.version is not None:  # failed midway: the live index was never touched
                log.warning("reindex failed; dropping unfinished version %s", self.version)
                try:
                    await asyncio.to_thread(store.drop, self.version)
                except Exception as exc:  # the run's own error is the one to report
                    log.warning("could not drop %s now (the next run will): %s", self.version, exc)

    async def gate(self, live: str, new: str) -> GateReport | None:
        """Replay the golden set on both versions; None when there is none (or no check)."""
        if self.ix.check is None:
            return None
        return await self.ix.check(live, new, self.golden, self.changed_pages)

    def finish(self, start: float) -> IndexReport:
        self.report.seconds = time.perf_counter() - start
        log.info("reindex done: %s", self.report.summary())
        return self.report

    async def create_version(self) -> str:
        embedder = self.ix.embedder
        return await asyncio.to_thread(
            self.store.create_version, model=embedder.model_name, dim=embedder.dim
        )

    async def add(self, chunks: list[Chunk]) -> None:
        self.progress("chunked", len(chunks))
        self.pending.extend(chunks)
        if len(self.pending) >= self.ix.embed_group:
            await self.flush(final=False)

    async def flush(self, *, final: bool = True) -> None:
        """Embed the pending chunks; write them while the next group is loaded and embedded."""
        if self.pending:
            batch, self.pending = self.pending, []
            if self.version is None:
                self.version = await self.create_version()
            texts = [c.embed_text for c in batch]
            vectors = await self.ix.embedder.aembed_passages(texts)
            self.report.chunks_embedded += len(batch)
            self.progress("embedded", len(batch))
            # At most one write in flight: it overlaps the next embedding, and order is kept.
            await self.drain_writes()
            self.writes.append(asyncio.create_task(self.write(batch, vectors)))
        if final:
            await self.drain_writes()

    async def drain_writes(self) -> None:
        while self.writes:
            # Shielded: a cancel of the run leaves the write listed, for settle_writes.
            await asyncio.shield(self.writes[0])
            self.writes.pop(0)

    async def settle_writes(self) -> None:
        """Wait for the write in flight, its outcome unused: a cancel does not stop the thread
        it runs in, and dropping the version under it fails that insert."""
        writes, self.writes = self.writes, []
        for task in writes:
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.done():  # this run is cancelled again: the write is left to end
                    raise
            except Exception as exc:  # the run's own error (or cancel) is the one to report
                log.debug("a write of the stopped reindex failed: %s", exc)

    async def write(self, batch: list[Chunk], vectors: np.ndarray) -> None:
        assert self.version is not None
        await asyncio.to_thread(self.store.insert, self.version, batch, vectors)
        self.progress("written", len(batch))
