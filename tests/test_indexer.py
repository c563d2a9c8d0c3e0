"""The knowledge base end to end: real files, the real offline model, real Milvus Lite."""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rag_core.ingest.indexer import Progress
from rag_core.runtime import Rag, open_rag

BASE = "https://milvus.io/docs/"
HNSW_Q = "What do the parameters for HNSW mean?"


@pytest.fixture
async def rag(settings, embedder):
    async with open_rag(
        settings.model_copy(update={"docs_base_url": BASE}), embedder=embedder
    ) as r:
        yield r


async def top_urls(rag: Rag, question: str, k: int = 5) -> list[str]:
    result = await rag.retriever.retrieve(question, top_k=k)
    return [h.url for h in result.hits]


async def snapshot(rag: Rag, questions: list[str]) -> list[list[tuple[str, str]]]:
    out = []
    for q in questions:
        result = await rag.retriever.retrieve(q, top_k=5)
        out.append([(h.chunk_id, h.text) for h in result.hits])
    return out


QUESTIONS = [HNSW_Q, "How do I configure the log level?", "What is a replica?", "bitset"]


async def test_index_search_and_incremental_reindex(rag: Rag, corpus: Path) -> None:
    first = await rag.indexer.run([str(corpus)])
    n_docs = len(list(corpus.rglob("*.md")))
    assert first.published and first.added == n_docs and not first.failed
    assert first.chunks_total == first.chunks_embedded > n_docs

    # The seed walkthrough's sample question is answered by reference/index.md.
    urls = await top_urls(rag, HNSW_Q, k=3)
    assert any(u.startswith(BASE + "index.md") for u in urls), urls
    # Deep links point into the page's sections.
    assert any("#" in u for u in await top_urls(rag, HNSW_Q))

    # No change: nothing embedded, nothing published.
    again = await rag.indexer.run([str(corpus)])
    assert (again.chunks_embedded, again.published, again.unchanged) == (0, False, n_docs)
    assert again.chunks_total == first.chunks_total

    # Editing one file re-embeds only that file's chunks.
    edited = corpus / "reference" / "replica.md"
    old_replica_chunks = len(rag.indexer.chunker.split(_load_one(edited, str(corpus))))
    edited.write_text(edited.read_text() + "\n\n## Zebra section\n\nZebras replicate stripes.\n")
    after_edit = await rag.indexer.run([str(corpus)])
    replica_chunks = len(rag.indexer.chunker.split(_load_one(edited, str(corpus))))
    assert (after_edit.updated, after_edit.added, after_edit.unchanged) == (1, 0, n_docs - 1)
    assert after_edit.chunks_embedded == replica_chunks
    assert after_edit.chunks_total == first.chunks_total - old_replica_chunks + replica_chunks
    hits = (await rag.retriever.retrieve("zebras replicate stripes", top_k=1)).hits
    assert hits and hits[0].url.startswith(BASE + "replica.md")

    # Deleting a file removes its chunks.
    deleted = corpus / "reference" / "bitset.md"
    deleted_id = str(deleted.resolve())
    deleted.unlink()
    after_delete = await rag.indexer.run([str(corpus)])
    assert after_delete.removed == 1 and after_delete.chunks_embedded == 0
    docs = await asyncio.to_thread(rag.store.documents)
    assert deleted_id not in docs and len(docs) == n_docs - 1
    assert all(not u.startswith(BASE + "bitset.md") for u in await top_urls(rag, "bitset", 10))


def _load_one(path: Path, spec: str):
    """The Document the folder loader makes for one file (to count its chunks)."""
    from rag_core.ingest.sources import load_folder

    for item in load_folder(Path(spec), spec, BASE, 5_000_000):
        if getattr(item, "doc_id", None) == str(path.resolve()):
            return item
    raise AssertionError(f"{path} not loaded")


async def test_cancelled_reindex_leaves_live_index_identical(rag: Rag, corpus: Path) -> None:
    await rag.indexer.run([str(corpus / "reference" / "sys_config")])
    before = await snapshot(rag, QUESTIONS)
    # The next run adds many documents; it is killed after its first write.
    written = asyncio.Event()

    def on_progress(event: Progress) -> None:
        if event.stage == "written":
            written.set()

    (corpus / "reference" / "metric.md").write_text("# Changed\n\nCompletely different text.\n")
    task = asyncio.create_task(rag.indexer.run([str(corpus)], on_progress=on_progress))
    await asyncio.wait_for(written.wait(), 120)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await snapshot(rag, QUESTIONS) == before
    # The unfinished version is gone and the next run succeeds.
    live = await asyncio.to_thread(rag.store.live)
    assert live is not None
    assert await asyncio.to_thread(rag.store.drop_orphans) == []


async def test_a_cancel_during_a_write_drops_the_version_after_the_write(
    rag: Rag, corpus: Path
) -> None:
    """A cancel arriving while a batch is being inserted (in a thread a cancel does not stop)
    waits for that insert before dropping the version (an insert into a dropped collection
    fails, or on a cached schema is lost without a word)."""
    await rag.indexer.run([str(corpus / "reference" / "sys_config")])
    store = rag.store
    real_insert, real_drop = store.insert, store.drop
    inserting = asyncio.Event()
    loop = asyncio.get_running_loop()
    events: list[str] = []

    def slow_insert(collection, chunks, vectors):
        events.append("insert")
        loop.call_soon_threadsafe(inserting.set)
        time.sleep(0.5)  # the cancel lands meanwhile
        try:
            real_insert(collection, chunks, vectors)
        finally:
            events.append("inserted")

    def drop(collection):
        events.append("drop")
        real_drop(collection)

    (corpus / "reference" / "metric.md").write_text("# Changed\n\nCompletely different text.\n")
    store.insert, store.drop = slow_insert, drop  # type: ignore[method-assign]
    try:
        task = asyncio.create_task(rag.indexer.run([str(corpus)]))
        await asyncio.wait_for(inserting.wait(), 120)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        del store.insert, store.drop
    assert events == ["insert", "inserted", "drop"]
    assert await asyncio.to_thread(store.drop_orphans) == []


async def test_searchers_never_see_an_empty_index_during_reindex(rag: Rag, corpus: Path) -> None:
    await rag.indexer.run([str(corpus / "reference" / "index.md")])
    empty: list[str] = []
    searches = 0
    done = asyncio.Event()

    async def searcher() -> None:
        nonlocal searches
        while not done.is_set():
            for q in QUESTIONS:
                result = await rag.retriever.retrieve(q, top_k=3)
                searches += 1
                if not result.hits:
                    empty.append(q)

    task = asyncio.create_task(searcher())
    # Each run must overlap searches (how many depends on the machine, so only "some" is asked).
    during: list[int] = []
    before = searches
    report = await rag.indexer.run([str(corpus)], prune=True)
    during.append(searches - before)
    (corpus / "reference" / "index.md").write_text("# Index\n\nRewritten.\n")
    before = searches
    await rag.indexer.run([str(corpus)], prune=True)
    during.append(searches - before)
    done.set()
    await task
    assert report.published
    assert min(during) >= 1, during
    assert not empty


async def test_killed_indexer_process_leaves_index_identical(
    settings, embedder, corpus: Path, tmp_path: Path
) -> None:
    """A real crash: SIGKILL the CLI mid-reindex, then the old index answers exactly as before."""
    cfg = settings.model_copy(update={"docs_base_url": BASE})
    async with open_rag(cfg, embedder=embedder) as rag:
        await rag.indexer.run([str(corpus / "reference" / "sys_config")])
        before = await snapshot(rag, QUESTIONS)
    env = {
        **os.environ,
        "DATA_DIR": str(cfg.data_dir),
        "EMBEDDING_MODEL": cfg.embedding_model,
        "EMBEDDING_DEVICE": "cpu",
        "DOCS_BASE_URL": BASE,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    # Two copies of the docs make more chunks than one embedding group (256): the run writes its
    # first group to the new version and is still embedding the second when it is killed.
    second = tmp_path / "docs-copy"
    shutil.copytree(corpus, second)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rag_core", "index", str(corpus), str(second)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # Kill it once it is embedding (its tqdm bars on stderr end lines with \r, not \n).
    assert proc.stderr is not None
    seen = ""
    # Its first progress line with "embedded" comes after a whole group: minutes on a busy host.
    deadline = time.monotonic() + 400
    while "embedded" not in seen and time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stderr], [], [], 1.0)
        if ready:
            seen += os.read(proc.stderr.fileno(), 4096).decode(errors="replace")
    assert "embedded" in seen, seen[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    async with open_rag(cfg, embedder=embedder) as rag:
        assert await snapshot(rag, QUESTIONS) == before
        report = await rag.indexer.run([str(corpus / "reference" / "sys_config")])
        assert report.chunks_embedded == 0  # the crash left nothing behind that counts as data
        assert await snapshot(rag, QUESTIONS) == before


async def test_a_page_without_text_is_not_added_again_on_every_run(rag: Rag, corpus: Path) -> None:
    """A heading-only page (the Milvus docs have one) makes no chunks and stores nothing: the next
    run must still be a no-change run, not a new version copied for it every time."""
    (corpus / "heading-only.md").write_text("# Upgrade Embedded Milvus\n")
    first = await rag.indexer.run([str(corpus)])
    again = await rag.indexer.run([str(corpus)])
    assert first.published and first.added == len(list(corpus.rglob("*.md"))) - 1
    assert (again.added, again.updated, again.removed, again.published) == (0, 0, 0, False)
    # A page that had text and now has none is removed, and its chunks leave the index.
    index_page = corpus / "reference" / "index.md"
    before = await asyncio.to_thread(rag.store.documents)
    assert any(doc.endswith("reference/index.md") for doc in before)
    index_page.write_text("# Index\n")
    emptied = await rag.indexer.run([str(corpus)])
    assert (emptied.removed, emptied.published) == (1, True)
    after = await asyncio.to_thread(rag.store.documents)
    assert not any(doc.endswith("reference/index.md") for doc in after)


async def test_a_reindex_past_its_deadline_stops_and_keeps_the_live_index(
    rag: Rag, corpus: Path
) -> None:
    """REINDEX_TIMEOUT_MIN: a source that never finishes cannot hold the index forever."""
    from rag_core.errors import ReindexTimeoutError
    from tests.web_fixtures import LocalSite, Reply

    await rag.indexer.run([str(corpus / "reference" / "sys_config")])
    before = await snapshot(rag, QUESTIONS)
    live = await asyncio.to_thread(rag.store.live)

    # A page that takes a minute to answer, beside a folder that makes a new version.
    async with LocalSite({"/slow": Reply.html("<h1>Late</h1><p>text</p>", delay_s=60)}) as site:
        site.routes["/robots.txt"] = Reply(status=404)
        rag.indexer.settings = rag.settings.model_copy(
            update={"reindex_timeout_min": 2 / 60, "fetch_timeout_s": 120}
        )
        try:
            started = time.monotonic()
            with pytest.raises(ReindexTimeoutError) as stopped:
                await rag.indexer.run([site.url("/slow"), str(corpus)])
            assert time.monotonic() - started < 15
        finally:
            rag.indexer.settings = rag.settings
    assert "REINDEX_TIMEOUT_MIN" in stopped.value.user_message
    assert "live index is unchanged" in stopped.value.user_message
    assert await snapshot(rag, QUESTIONS) == before
    assert await asyncio.to_thread(rag.store.live) == live
    assert await asyncio.to_thread(rag.store.drop_orphans) == []
