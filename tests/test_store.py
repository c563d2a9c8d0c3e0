"""KnowledgeStore on real Milvus, with vectors from the real offline embedding model.

The tests that take the `kb` or `store` fixture run twice: on a Milvus Lite file (the live
pointer is a file beside it) and through MILVUS_URI against a Milvus server on a loopback port
(milvus-lite 3.x serving TCP from .venv-milvus-server, which scripts/setup.sh creates; the live
pointer is an alias there).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from rag_core.documents import Chunk, sha256
from rag_core.errors import IndexMissingError, StoreError, StoreLockedError
from rag_core.search.diversity import diversify
from rag_core.search.store import Fusion, KnowledgeStore, VersionInfo, milvus_str

from .conftest import FIXTURES

DOCS = FIXTURES / "milvus-docs"
# Half of the fixture docs: enough distractors for the retrieval checks, and embedding them
# (~80 chunks) stays a few seconds on 2 CPU cores.
SUBSET = [
    "reference/sys_config/*.md",
    "reference/consistency.md",
    "reference/bitset.md",
    "reference/mmap.md",
    "reference/disk_index.md",
    "reference/metric.md",
    "adminGuide/chunk_cache.md",
]
MODEL = "all-MiniLM-L6-v2"


def split_markdown(path: Path, max_chars: int = 1200) -> list[Chunk]:
    """A heading splitter, just enough for these tests (the real chunker lives elsewhere)."""
    raw = re.sub(r"\A---\n.*?\n---\n", "", path.read_text(encoding="utf-8"), flags=re.S)
    title, heads, body, fenced = path.stem, [], [], False
    sections: list[tuple[str, tuple[str, ...], str]] = []

    def flush() -> None:
        if text := "\n".join(body).strip():
            sections.append((title, tuple(heads), text))
        body.clear()

    for line in raw.splitlines():
        fenced ^= line.startswith("```")
        heading = None if fenced else re.match(r"(#{1,3}) (.+)", line)
        if heading is None:
            body.append(line)
            continue
        flush()
        level, name = len(heading.group(1)), heading.group(2).strip().strip("`")
        if level == 1:
            title, heads = name, []
        else:
            heads = [*heads[: level - 2], name]
    flush()

    doc_id = f"fixtures/{path.relative_to(DOCS).as_posix()}"
    pieces = [(t, h, text[i : i + max_chars]) for t, h, text in sections
              for i in range(0, len(text), max_chars)]  # fmt: skip
    return [
        Chunk(
            chunk_id=sha256(f"{doc_id}#{n}")[:32],
            doc_id=doc_id,
            url=f"https://milvus.io/docs/{path.stem}.md#{n}",
            title=t,
            headings=h,
            text=text,
            doc_hash=sha256(raw),
            source=str(path.parent.relative_to(DOCS)),
        )
        for n, (t, h, text) in enumerate(pieces)
    ]


@pytest.fixture(scope="module")
def corpus(embedder) -> tuple[list[Chunk], np.ndarray]:
    paths = sorted({p for pattern in SUBSET for p in DOCS.glob(pattern)})
    chunks = [c for p in paths for c in split_markdown(p)]
    return chunks, embedder.embed_passages([c.embed_text for c in chunks])


ROOT = Path(__file__).resolve().parents[1]
SERVER_PYTHON = Path(
    os.environ.get("MILVUS_SERVER_PYTHON", ROOT / ".venv-milvus-server" / "bin" / "python")
)


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory) -> Iterator[str]:
    """A Milvus server (milvus-lite 3.x over TCP) on a free loopback port: its MILVUS_URI."""
    if not SERVER_PYTHON.exists():
        pytest.fail(f"no {SERVER_PYTHON}: run scripts/setup.sh (it creates the server venv)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path_factory.mktemp("milvus-server")
    log = open(data.parent / "milvus-server.log", "wb")
    server = subprocess.Popen(
        [str(SERVER_PYTHON), "-c", "from milvus_lite.cmdline import main; main()", "server",
         "--data-dir", str(data), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},  # its own packages only
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the Milvus server did not start: see {log.name}")
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


_aliases = itertools.count()


@pytest.fixture(scope="module", params=["lite", "server"])
def open_store(request, tmp_path_factory) -> Callable[[], KnowledgeStore]:
    """Opens a fresh, empty store: a new Lite file, or a new alias on the shared server."""
    if request.param == "lite":
        return lambda: KnowledgeStore(str(tmp_path_factory.mktemp("data") / "kb.db"))
    uri = request.getfixturevalue("milvus_server")
    return lambda: KnowledgeStore(uri, alias=f"t{next(_aliases)}")


@pytest.fixture(scope="module")
def kb(corpus, open_store) -> Iterator[KnowledgeStore]:
    """The fixture docs indexed and published once; tests here only read it."""
    chunks, vectors = corpus
    store = open_store()
    version = store.create_version(model=MODEL, dim=vectors.shape[1])
    store.insert(version, chunks, vectors)
    store.publish(version)
    yield store
    store.close()


@pytest.fixture
def store(open_store) -> Iterator[KnowledgeStore]:
    s = open_store()
    yield s
    s.close()


def own_collections(store: KnowledgeStore) -> set[str]:
    """The store's versions (a server holds other tests' collections too)."""
    return {n for n in store.client.list_collections() if n.startswith(f"{store.alias}__v")}


def publish_corpus(store: KnowledgeStore, corpus, limit: int | None = None) -> str:
    chunks, vectors = corpus
    version = store.create_version(model=MODEL, dim=vectors.shape[1])
    store.insert(version, chunks[:limit], vectors[:limit])
    store.publish(version)
    return version


def random_chunks(n: int, docs: int, dim: int = 8) -> tuple[list[Chunk], np.ndarray]:
    rng = np.random.default_rng(n)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    chunks = [
        Chunk(
            chunk_id=f"c{i}",
            doc_id=f"doc-{i % docs}",
            url=f"https://example.org/{i % docs}",
            title=f"Page {i % docs}",
            headings=("Section",),
            text=f"passage number {i}",
            doc_hash=f"hash-{i % docs}",
            source="random",
        )
        for i in range(n)
    ]
    return chunks, vectors


def ids(hits) -> list[str]:
    return [h.chunk_id for h in hits]


# --------------------------------------------------------------------------- searching


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_search_returns_cited_passages(kb, corpus, embedder, mode):
    chunks, vectors = corpus
    question = "How do I enable mmap?"
    query = embedder.embed_query(question)
    hits = kb.search(query, question, top_k=5, mode=mode)

    assert len(hits) == 5
    best = hits[0]
    assert best.doc_id == "fixtures/reference/mmap.md" and best.title == "MMap-enabled Data Storage"
    assert best.url.startswith("https://milvus.io/docs/mmap.md#")
    assert any(h.heading_path.startswith("Configure memory mapping > ") for h in hits[:3])
    # similarity is the exact cosine of query and stored chunk vector, whatever the mode ranks by
    by_id = {c.chunk_id: i for i, c in enumerate(chunks)}
    for hit in hits:
        stored = chunks[by_id[hit.chunk_id]]
        assert (hit.text, hit.heading_path) == (stored.text, stored.heading_path)
        assert hit.similarity == pytest.approx(
            float(query @ vectors[by_id[hit.chunk_id]]), abs=1e-5
        )
    if mode == "dense":
        # hybrid with no words to match is dense search
        assert kb.search(query, "  ", top_k=5, mode="hybrid") == hits
        assert [h.score for h in hits] == pytest.approx([h.similarity for h in hits], abs=1e-5)
        assert hits == sorted(hits, key=lambda h: -h.score)
    else:
        # weighted RRF of two rankings: at most (dense weight + 1) / (k + 1)
        bound = (kb.fusion.dense_weight + 1) / (kb.fusion.rrf_k + 1)
        assert all(0 < h.score <= bound + 1e-6 for h in hits)


def test_fusion_weights_move_hybrid_ranking_between_its_sides(kb, embedder):
    """A dense weight of 0 ranks by BM25 alone (an identifier's one chunk first); a huge one
    ranks as dense search does."""
    identifier = "saslUsername"
    query = embedder.embed_query(identifier)
    dense = ids(kb.search(query, identifier, top_k=5, mode="dense"))
    chosen = kb.fusion
    try:
        kb.fusion = Fusion(dense_weight=0.0)
        by_bm25 = kb.search(query, identifier, top_k=5, mode="hybrid")
        assert identifier in by_bm25[0].text and by_bm25[0].chunk_id not in dense
        kb.fusion = Fusion(dense_weight=1e6)
        assert ids(kb.search(query, identifier, top_k=5, mode="hybrid")) == dense
    finally:
        kb.fusion = chosen


@pytest.mark.parametrize("identifier", ["saslUsername", "PQCodeBugetGBRatio"])
def test_hybrid_finds_an_exact_identifier_that_dense_misses(kb, corpus, embedder, identifier):
    # Observed with all-MiniLM-L6-v2: the one chunk holding this config key is outside dense
    # top-20 (ranks 34 and 22 of 81), while BM25 on the rare token ranks it first.
    chunks, _ = corpus
    holders = {c.chunk_id for c in chunks if identifier in c.text}
    assert len(holders) == 1
    query = embedder.embed_query(identifier)

    assert not holders & set(ids(kb.search(query, identifier, top_k=5, mode="dense")))
    assert holders & set(ids(kb.search(query, identifier, top_k=3, mode="hybrid")))


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_filter_restricts_results(kb, embedder, mode):
    question = "How do I configure memory?"
    query = embedder.embed_query(question)
    doc = "fixtures/reference/sys_config/configure_gpu.md"

    hits = kb.search(query, question, top_k=5, mode=mode, filter=f"doc_id == {milvus_str(doc)}")
    assert hits and {h.doc_id for h in hits} == {doc}
    hits = kb.search(query, question, top_k=50, mode=mode, filter='source == "adminGuide"')
    assert hits and all(h.doc_id.startswith("fixtures/adminGuide/") for h in hits)


def test_concurrent_searches_from_threads_match_serial_results(kb, corpus, embedder):
    chunks, vectors = corpus
    probes = [(vectors[i], chunks[i].text[:80]) for i in range(0, len(chunks), 7)]
    expected = [ids(kb.search(v, t, top_k=5)) for v, t in probes]
    results: dict[int, list[str]] = {}

    def run(worker: int) -> None:
        for i, (v, t) in enumerate(probes):
            if i % 4 == worker:
                results[i] = ids(kb.search(v, t, top_k=5))

    threads = [threading.Thread(target=run, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(probes))] == expected


def test_searches_that_arrive_together_go_to_milvus_in_one_call(kb, corpus):
    """While one search runs, the others queue and then go to Milvus as one call (nq > 1);
    each gets the hits it gets alone, in the same order."""
    chunks, vectors = corpus
    probes = [(vectors[i], chunks[i].text[:80]) for i in range(16)]
    expected = [ids(kb.search(v, t, top_k=5)) for v, t in probes]
    client = kb.client
    real = client.search
    calls: list[int] = []  # queries per Milvus search call (a hybrid search makes two)

    def spy(name, *args, **kwargs):
        calls.append(len(kwargs["data"]))
        if len(calls) == 1:
            time.sleep(0.5)  # the first call is slow: every other search arrives meanwhile
        return real(name, *args, **kwargs)

    start = threading.Barrier(len(probes))
    results: dict[int, list[str]] = {}

    def run(i: int) -> None:
        start.wait()
        if i:
            time.sleep(0.1)  # after the first search has started
        results[i] = ids(kb.search(*probes[i], top_k=5))

    client.search = spy
    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(probes))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        del client.search
    assert [results[i] for i in range(len(probes))] == expected
    assert sum(calls) == 2 * len(probes) and len(calls) <= 6, calls


@pytest.mark.parametrize("mode", ["hybrid", "dense"])
def test_hits_picked_from_a_pool_are_the_wide_search_spread_by_page(kb, corpus, mode):
    """top_k picked from `pool` ranked candidates, one per page first, are what spreading the
    first `pool` hits by page gives; only the picked rows are read back from Milvus."""
    chunks, vectors = corpus
    probes = [(vectors[i], chunks[i].text[:80]) for i in range(0, len(chunks), 9)]
    client = kb.client
    real = client.query
    read: list[int] = []  # rows asked for per query call

    def spy(name, *args, **kwargs):
        read.append(kwargs["filter"].count(","))
        return real(name, *args, **kwargs)

    spread = 0
    for vector, text in probes:
        wide = kb.search(vector, text, top_k=20, mode=mode)
        client.query = spy
        try:
            picked = kb.search(vector, text, top_k=5, mode=mode, pool=20, per_page=1)
        finally:
            del client.query
        assert ids(picked) == ids(diversify(wide, 5, 1))
        by_id = {h.chunk_id: h for h in wide}
        assert [h.similarity for h in picked] == [by_id[h.chunk_id].similarity for h in picked]
        spread += ids(picked) != ids(wide[:5])
        assert read and read.pop() < 5, "more rows read than picked"
    assert spread, "no probe had two passages of one page at the top: the test shows nothing"


def test_held_rows_are_searched_in_memory_and_read_again_after_a_write(store, corpus):
    """search_held finds what a Milvus search of the same filter finds, without a Milvus call
    once read; a write to the version (insert, delete) is seen by the next search."""
    chunks, vectors = corpus
    version = store.create_version(model="m", dim=vectors.shape[1])
    store.insert(version, chunks, vectors)
    store.publish(version)
    flt = 'source == "adminGuide"'
    probe = vectors[5]
    expected = store.search(probe, "", top_k=3, mode="dense", filter=flt)
    held = store.search_held(probe, flt, top_k=3)
    assert ids(held) == ids(expected)
    assert [h.similarity for h in held] == pytest.approx([h.similarity for h in expected])
    client = store.client
    calls: list[str] = []
    real_search, real_query = client.search, client.query
    client.search = lambda *a, **k: calls.append("search") or real_search(*a, **k)
    client.query = lambda *a, **k: calls.append("query") or real_query(*a, **k)
    try:
        assert ids(store.search_held(probe, flt, top_k=3)) == ids(expected)
    finally:
        del client.search, client.query
    assert calls == []
    # Only urls `keep` accepts.
    other = expected[0].url
    kept = store.search_held(probe, flt, top_k=3, keep=lambda url: url != other)
    assert kept and other not in [h.url for h in kept]
    # A write through the store: the deleted page is gone, an inserted row is found.
    store.delete_documents(version, [expected[0].doc_id])
    assert expected[0].chunk_id not in ids(store.search_held(probe, flt, top_k=3))
    same = dataclasses.replace(chunks[5], chunk_id="copy-5", doc_id="copy", source="adminGuide")
    store.insert(version, [same], vectors[5:6])
    assert ids(store.search_held(probe, flt, top_k=1)) == ["copy-5"]


def test_many_first_searches_at_once_on_a_reopened_database(tmp_path, corpus):
    """A reopened db has its collections released: searches that all arrive together (questions
    embedded in one batch) must load the collection once and all succeed."""
    chunks, vectors = corpus
    path = str(tmp_path / "kb.db")
    first = KnowledgeStore(path)
    publish_corpus(first, corpus)
    first.close()
    for _ in range(3):
        store = KnowledgeStore(path)
        try:
            start = threading.Barrier(16)
            errors: list[Exception] = []

            def search(i: int, store: KnowledgeStore = store, start=start, errors=errors) -> None:
                start.wait()
                try:
                    store.search(vectors[i], chunks[i].text[:80], top_k=5)
                except Exception as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=search, args=(i,)) for i in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == []
        finally:
            store.close()


def test_search_reloads_a_released_collection_and_reports_bad_filters(store, corpus):
    chunks, vectors = corpus
    version = publish_corpus(store, corpus, limit=20)
    store.client.release_collection(version)  # as after a restart, behind the store's back
    assert ids(store.search(vectors[2], chunks[2].text, top_k=1)) == [chunks[2].chunk_id]

    with pytest.raises(StoreError) as err:
        store.search(vectors[2], chunks[2].text, top_k=1, filter="no_such_field == 1")
    assert "unavailable" in err.value.user_message and "no_such_field" in err.value.detail


def test_nothing_published_means_index_missing(store):
    assert store.live() is None
    assert store.count() == 0
    assert store.documents() == {}
    store.create_version(model=MODEL, dim=8)  # built but never published: still nothing live
    with pytest.raises(IndexMissingError) as err:
        store.search(np.ones(8, dtype=np.float32), "anything", top_k=5)
    assert "/reindex" in err.value.user_message


# --------------------------------------------------------------------------- versions


def test_live_reports_the_model_and_dim_of_the_published_version(kb, corpus):
    info = kb.live()
    assert info is not None
    assert info.name.startswith(f"{kb.alias}__v") and info.model == MODEL and info.dim == 384
    assert kb.count() == len(corpus[0])


def test_publish_swaps_versions_while_searches_run(store, corpus):
    chunks, vectors = corpus
    first = publish_corpus(store, corpus)
    stop = threading.Event()
    errors: list[BaseException] = []
    searches = [0]
    published: list[str] = []

    def searcher() -> None:
        while not stop.is_set():
            try:
                i = searches[0] % len(chunks)
                assert store.search(vectors[i], chunks[i].text[:60], top_k=5), "empty result"
                searches[0] += 1
            except BaseException as exc:
                errors.append(exc)
                return

    def writer() -> None:
        try:
            while not stop.is_set():
                published.append(publish_corpus(store, corpus, limit=40))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=searcher), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    time.sleep(2.5)
    stop.set()
    for t in threads:
        t.join()

    assert not errors, errors
    assert len(published) >= 2 and searches[0] >= 20
    live = store.live()
    assert live is not None and live.name == published[-1]
    assert store.count() == 40
    # every replaced version was dropped on publish, the first one included
    assert first not in store.client.list_collections()
    assert store.drop_orphans() == []


def test_unpublished_version_changes_nothing_and_drop_orphans_removes_it(store, corpus, embedder):
    chunks, vectors = corpus
    live = publish_corpus(store, corpus)
    query = embedder.embed_query("How do consistency levels work?")
    before = store.search(query, "How do consistency levels work?", top_k=5)

    crashed = store.create_version(model=MODEL, dim=vectors.shape[1])  # a reindex that died
    store.insert(crashed, chunks[:10], vectors[:10])

    assert store.search(query, "How do consistency levels work?", top_k=5) == before
    assert store.live() == VersionInfo(name=live, model=MODEL, dim=384)
    assert store.drop_orphans() == [crashed]
    assert own_collections(store) == {live}
    for name in (live, store.alias):  # the live version is never dropped, not even by its alias
        with pytest.raises(StoreError):
            store.drop(name)
    assert store.count() == len(chunks)


def test_copy_documents_keeps_vectors_and_hashes(store, corpus, embedder):
    chunks, _ = corpus
    old = publish_corpus(store, corpus)
    questions = ["What is a bitset?", "How do I enable mmap?", "saslUsername"]
    queries = [embedder.embed_query(q) for q in questions]
    before = [store.search(v, q, top_k=5) for v, q in zip(queries, questions, strict=True)]

    docs = store.documents()
    assert {d: r.doc_hash for d, r in docs.items()} == {c.doc_id: c.doc_hash for c in chunks}
    assert sum(r.chunks for r in docs.values()) == len(chunks)

    new = store.create_version(model=MODEL, dim=384)
    some = sorted(docs)[:3]
    assert store.copy_documents(old, new, some) == sum(docs[d].chunks for d in some)
    rest = sorted(docs)[3:]
    assert store.copy_documents(old, new, rest) == sum(docs[d].chunks for d in rest)
    assert store.documents(new) == docs
    store.publish(new)

    after = [store.search(v, q, top_k=5) for v, q in zip(queries, questions, strict=True)]
    for a, b in zip(after, before, strict=True):
        old_sims = {h.chunk_id: h.similarity for h in b}
        same = [h for h in a if h.chunk_id in old_sims]
        assert same and all(h.similarity == pytest.approx(old_sims[h.chunk_id]) for h in same)
    if store.is_lite:
        # Exact search: the same hits in the same order. A server's approximate index (HNSW)
        # is rebuilt for the copy and may order near neighbours differently.
        assert [ids(h) for h in after] == [ids(h) for h in before]
        for a, b in zip(after, before, strict=True):
            assert [h.similarity for h in a] == pytest.approx([h.similarity for h in b], abs=1e-6)
    assert old not in store.client.list_collections()


def test_bm25_reads_the_title_and_heading_path_too(store):
    """A question that names a section (a configuration key) finds the passage under that
    heading though its text never repeats the name; a copied version still does."""
    chunks, vectors = random_chunks(40, docs=4)
    chunks[7] = dataclasses.replace(
        chunks[7], headings=("indexNode.enableDisk",), text="Default value: true."
    )
    question, away = "indexNode.enableDisk", -vectors[7]  # the dense side ranks it last
    version = store.create_version(model="random", dim=8)
    store.insert(version, chunks, vectors)
    store.publish(version)
    assert "c7" not in ids(store.search(away, question, top_k=5, mode="dense"))
    assert "c7" in ids(store.search(away, question, top_k=5))

    copy = store.create_version(model="random", dim=8)
    store.copy_documents(version, copy, None)
    store.publish(copy)
    assert "c7" in ids(store.search(away, question, top_k=5))


def test_documents_pages_past_the_query_limit(store):
    chunks, vectors = random_chunks(17_000, docs=50)
    version = store.create_version(model="random", dim=8)
    store.insert(version, chunks, vectors)
    docs = store.documents(version)
    assert len(docs) == 50 and sum(r.chunks for r in docs.values()) == 17_000
    assert docs["doc-7"].doc_hash == "hash-7"


def test_odd_doc_ids_survive_filters_and_long_values_are_cut(store):
    chunks, vectors = random_chunks(6, docs=1)
    odd = 'C:\\docs\\"quoted"\tpage.md'
    long_title = "é" * 1000  # 2000 bytes: Milvus max_length counts bytes, title allows 1024
    chunks = [dataclasses.replace(c, doc_id=odd, title=long_title) for c in chunks]
    version = store.create_version(model="random", dim=8)
    store.insert(version, chunks, vectors)
    store.publish(version)

    assert store.documents() == {odd: store.documents()[odd]} and store.documents()[odd].chunks == 6
    copy = store.create_version(model="random", dim=8)
    assert store.copy_documents(version, copy, [odd]) == 6
    # The text names c0 too: "passage" alone ties on BM25, which engines break differently.
    hits = store.search(vectors[0], chunks[0].text, top_k=3, filter=f"doc_id == {milvus_str(odd)}")
    assert hits[0].chunk_id == "c0" and hits[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert hits[0].title == "é" * 512
    with pytest.raises(ValueError, match="64 bytes"):
        store.insert(copy, [dataclasses.replace(chunks[0], chunk_id="x" * 65)], vectors[:1])


def test_lite_live_pointer_is_a_file_replaced_atomically(tmp_path, corpus):
    db = tmp_path / "kb.db"
    store = KnowledgeStore(str(db))
    try:
        first = publish_corpus(store, corpus, limit=10)
        pointer = tmp_path / "kb.db.docs.live"
        assert pointer.read_text().strip() == first
        second = publish_corpus(store, corpus, limit=20)
        assert pointer.read_text().strip() == second
        assert sorted(p.name for p in tmp_path.iterdir() if "live" in p.name) == [pointer.name]
        assert store.live() == VersionInfo(name=second, model=MODEL, dim=384)
        # Another alias in the same database has a pointer of its own.
        other = KnowledgeStore(str(db), alias="other")
        try:
            assert other.live() is None and other.drop_orphans() == []
        finally:
            other.close()
    finally:
        store.close()
    # A pointer left beside a database that no longer holds its collection names nothing.
    pointer.write_text("docs__v1\n")
    reopened = KnowledgeStore(str(db))
    try:
        assert reopened.live() is None and not pointer.exists()
    finally:
        reopened.close()


# --------------------------------------------------------------------------- opening, closing

LOCKED_PROBE = """
import sys
from rag_core.errors import StoreLockedError
from rag_core.search.store import KnowledgeStore
try:
    KnowledgeStore(sys.argv[1])
except StoreLockedError as exc:
    print(exc.user_message)
else:
    print("OPENED")
"""


def probe_from_another_process(db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LOCKED_PROBE, str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )


def test_second_process_gets_a_friendly_locked_error_and_close_releases_it(tmp_path, corpus):
    db = tmp_path / "kb.db"
    store = KnowledgeStore(str(db))
    version = publish_corpus(store, corpus, limit=20)

    held = probe_from_another_process(db)
    assert held.returncode == 0, held.stderr
    assert "in use by another process" in held.stdout and "/reindex" in held.stdout
    assert "Traceback" not in held.stderr

    store.close()
    freed = probe_from_another_process(db)
    assert freed.stdout.strip() == "OPENED", freed.stderr

    # Reopened in this process: collections come back released and are loaded on first use.
    reopened = KnowledgeStore(str(db))
    try:
        live = reopened.live()
        assert live is not None and live.name == version
        chunks, vectors = corpus
        assert (
            reopened.search(vectors[3], chunks[3].text, top_k=1)[0].chunk_id == chunks[3].chunk_id
        )
        assert reopened.count() == 20
    finally:
        reopened.close()


def test_two_stores_in_one_process_share_the_database(tmp_path):
    first = KnowledgeStore(str(tmp_path / "kb.db"))
    second = KnowledgeStore(str(tmp_path / "kb.db"))  # same process: not a lock conflict
    version = second.create_version(model="random", dim=8)
    second.close()  # must not stop the server under `first`
    assert version in first.client.list_collections()
    first.close()


def test_a_lite_engine_that_dies_as_it_starts_is_started_once_more(tmp_path, monkeypatch, caplog):
    """The engine process can exit after its start was reported (the socket never appears);
    the store stops it and starts it again instead of failing the bot's start."""
    import pymilvus
    from milvus_lite.server_manager import server_manager_instance
    from pymilvus.exceptions import MilvusException

    db = str((tmp_path / "kb.db").resolve())
    real_client = pymilvus.MilvusClient
    attempts: list[str] = []

    def first_start_dies(*args, **kwargs):
        attempts.append(kwargs["uri"])
        if len(attempts) == 1:
            # What the flake leaves behind: an engine registered for the file, its process dead.
            server_manager_instance.start_and_get_uri(db)
            engine = server_manager_instance._servers[db]
            engine._p.kill()
            engine._p.wait()
            raise MilvusException(code=2, message="Fail connecting to server on unix:/tmp/x.sock")
        return real_client(*args, **kwargs)

    monkeypatch.setattr(pymilvus, "MilvusClient", first_start_dies)
    with caplog.at_level("WARNING", logger="rag_core.search.lite_engine"):
        store = KnowledgeStore(db)
    try:
        assert len(attempts) == 2
        assert "starting it once more" in caplog.text
        version = store.create_version(model="random", dim=8)
        assert version in store.client.list_collections()
    finally:
        store.close()
    # Closed for real: another process can open the file.
    assert probe_from_another_process(Path(db)).stdout.strip() == "OPENED"


def test_unreachable_server_is_a_store_error():
    started = time.monotonic()
    with pytest.raises(StoreError) as err:
        KnowledgeStore("http://127.0.0.1:1", connect_timeout=2)
    assert not isinstance(err.value, StoreLockedError)
    assert "unavailable" in err.value.user_message
    assert time.monotonic() - started < 10


def test_present_chunk_hashes_says_which_cited_passages_a_version_still_has(store):
    chunks, vectors = random_chunks(1200, docs=12)
    old = store.create_version(model="random", dim=8)
    store.insert(old, chunks, vectors)
    store.publish(old)
    [hit] = store.search(vectors[7], "", top_k=1, mode="dense")
    assert hit.chunk_id == "c7" and hit.chunk_hash == chunks[7].chunk_hash

    # The next version edits one passage and drops another page.
    edited = dataclasses.replace(chunks[7], text="passage number 7, rewritten")
    kept = [edited if c is chunks[7] else c for c in chunks if c.doc_id != "doc-3"]
    new = store.create_version(model="random", dim=8)
    store.insert(new, kept, np.stack([vectors[int(c.chunk_id[1:])] for c in kept]))
    store.publish(new)
    cited = {c.chunk_hash for c in chunks}  # more than one filter's worth of hashes
    present = store.present_chunk_hashes(cited | {"not-a-hash"})
    gone = {chunks[7].chunk_hash} | {c.chunk_hash for c in chunks if c.doc_id == "doc-3"}
    assert present == cited - gone
    assert store.present_chunk_hashes([]) == set()
