"""KnowledgeStore: chunks in Milvus (Lite file or server), hybrid search, versioned reindexing.

Every (re)index builds a new collection *version* beside the live one and then points the
live pointer (searchers only ever resolve it) at it, so a reindex is invisible to searchers until
it is complete, and a crashed one leaves the live version untouched. On a Milvus server the
pointer is an alias. Milvus Lite 2.5 has no aliases: the pointer is a small file beside the
database (`kb.db.<alias>.live`, holding the collection name; lite_engine.py), replaced in one
`os.replace`.

Concurrent searches with the same shape (mode, top_k, filter) go to Milvus as one call with
several queries (nq > 1): one round trip and one engine pass for the questions that arrived
together, each question's hits as a search of its own would return them.

Opening a Milvus Lite file, keeping its engine running and its disk reserve: lite_engine.py.
Milvus Lite quirks handled here:
- collection properties are not kept: the version's model and dim also go in the collection
  description;
- after reopening, collections are released: they are loaded on first use;
- BM25 distances may come back negative (order is right): only ranks are used (RRF).
"""

from __future__ import annotations

import errno
import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar

import numpy as np

from ..documents import Chunk, Hit, in_context
from ..errors import IndexMissingError, StoreError, StoreFullError
from .diversity import diversify
from .lite_engine import LiteEngine, LivePointer

log = logging.getLogger(__name__)

T = TypeVar("T")

# VARCHAR max_length in Milvus counts UTF-8 bytes (values are truncated to fit, see _fit).
_MAX_BYTES = {
    "chunk_id": 64,
    "doc_id": 2048,
    "source": 2048,
    "url": 2048,
    "title": 1024,
    "heading_path": 2048,
    "text": 65535,
    "doc_hash": 64,
    "chunk_hash": 64,
}
# What a Hit needs; the vector comes back too, for the exact query-chunk cosine.
_HIT_FIELDS = [
    "chunk_id",
    "doc_id",
    "url",
    "title",
    "heading_path",
    "text",
    "chunk_hash",
    "vector",
]
# Everything a copy carries over, except `sparse`: a BM25 function output cannot be inserted,
# the target collection recomputes it from `search_text`, which the copy rebuilds from the title,
# heading path and text (a version written before the field existed has none to read).
_COPY_FIELDS = [*_MAX_BYTES, "vector", "indexed_at"]
# BM25's input: the passage in its page's context, like the embedded text, so a question that
# names a section ("indexNode.enableDisk") matches the passage under that heading.
_SEARCH_TEXT_BYTES = 65535

_PROP_MODEL = "rag.model"
_PROP_DIM = "rag.dim"


@dataclass(frozen=True)
class Fusion:
    """How a hybrid search fuses its dense and BM25 rankings (weighted reciprocal rank).

    The defaults are the product's (Settings: SEARCH_CANDIDATES, FUSION_RRF_K,
    FUSION_DENSE_WEIGHT); rrf_k 60 with equal weights is the classic RRF.
    """

    candidates: int = 32  # each side proposes this many (at least top_k)
    rrf_k: int = 30
    dense_weight: float = 1.0  # BM25's weight is 1


# Extra dense hits fetched past top_k so ties at the cut (duplicate chunks) are broken here,
# by chunk_id: engines order ties by storage order, which a copy changes.
_TIE_SLACK = 8
_INSERT_BATCH = 512
_ITER_BATCH = 5000  # query_iterator page size (a plain query caps at 16384 rows); each page
# costs Lite a scan of the collection, so few large pages beat many small ones
_HASH_BATCH = 500  # chunk hashes per `in [...]` filter when looking up stale answers
_SEARCH_RETRIES = 3  # a search racing publish() may hit the version it just dropped
# search_held: how long rows held in memory serve before they are read again (written by this
# store: at once).
_HELD_TTL_S = 30.0


@dataclass(frozen=True)
class DocRecord:
    """What the store knows about one indexed document (for incremental reindexing)."""

    doc_hash: str
    source: str
    chunks: int
    url: str = ""  # the page (without a chunk's anchor)


@dataclass(frozen=True)
class VersionInfo:
    """A collection version and the embedding model it was built with."""

    name: str
    model: str
    dim: int


def milvus_str(value: str) -> str:
    """`value` as a quoted Milvus filter string literal (for `field == ...` expressions).

    A tab stays as it is: Lite 2.5 matches a raw tab but not `\\t` (servers take both). It
    cannot match a line break at all, raw or escaped; servers take the escaped form.
    """
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    return f'"{escaped}"'


def _fit(value: str, max_bytes: int) -> str:
    """Cut `value` to at most `max_bytes` of UTF-8 without splitting a character."""
    raw = value.encode("utf-8")
    if len(raw) <= max_bytes:
        return value
    return raw[:max_bytes].decode("utf-8", errors="ignore")


def _redact(uri: str) -> str:
    """`uri` without user:password, for logs."""
    scheme, sep, rest = uri.partition("://")
    return f"{scheme}{sep}{rest.rsplit('@', 1)[-1]}" if sep else uri


def is_lite_uri(uri: str) -> bool:
    return not uri.startswith(("http://", "https://", "tcp://", "unix:"))


# Questions searched in one Milvus call at most (the embedder encodes up to 64 at once too).
_MAX_SEARCH_BATCH = 64


def _disk_full(exc: BaseException) -> bool:
    """ENOSPC anywhere in the chain; servers and Lite report it only as text."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return True
        if "no space left on device" in str(current).lower():
            return True
        current = current.__cause__ or current.__context__
    return False


@dataclass(eq=False)
class _Query:
    """One search waiting for its batch; `hits` or `error` is set when the batch ran."""

    vector: np.ndarray
    text: str
    top_k: int
    hybrid: bool
    filter: str
    collection: str = ""  # empty: the live version
    pool: int = 0  # ranked candidates the top_k are picked from (0: top_k)
    per_page: int = 0  # at most this many from one page before every page had one (0: no cap)
    done: bool = False
    hits: list[Hit] | None = None
    error: BaseException | None = None

    @property
    def shape(self) -> tuple[bool, int, str, str, int, int]:
        return (self.hybrid, self.top_k, self.filter, self.collection, self.pool, self.per_page)


@dataclass(frozen=True)
class _Held:
    """The rows a filter matches in one version, held for searching in memory."""

    rows: list[dict[str, Any]]  # in chunk_id order
    vectors: np.ndarray  # one unit-length row per row
    read_at: float  # time.monotonic()


class _Ranked(NamedTuple):
    """A candidate before its row is read: enough to rank it and to spread pages."""

    chunk_id: str
    doc_id: str
    score: float


def _unit(vector: np.ndarray) -> np.ndarray:
    query = np.asarray(vector, dtype=np.float32).ravel()
    norm = float(np.linalg.norm(query))
    return query / norm if norm > 0 else query


def _pick(ranked: list[_Ranked], top_k: int, per_page: int) -> list[_Ranked]:
    return diversify(ranked, top_k, per_page) if per_page else ranked[:top_k]


class KnowledgeStore:
    """Chunks of the indexed docs in Milvus, behind a live pointer naming a complete version.

    Safe to share between threads: searches may run while the indexer writes a new version.
    """

    def __init__(
        self,
        uri: str,
        *,
        token: str = "",
        alias: str = "docs",
        connect_timeout: float = 10.0,
        fusion: Fusion | None = None,
    ) -> None:
        from pymilvus import MilvusClient

        self.alias = alias
        self.fusion = fusion or Fusion()
        self._prefix = f"{alias}__v"
        self._lite = LiteEngine(uri) if is_lite_uri(uri) else None  # owns a Lite store's client
        self._client: Any | None = None  # a Milvus server's client
        self._pointer: LivePointer | None = None  # Lite: the live pointer file (servers: the alias)
        # Version metadata never changes after creation: cache it (live() runs per question).
        self._info_cache: dict[str, VersionInfo] = {}
        self._loaded: set[str] = set()
        # search_held: rows per (version, filter), and a count of writes per version.
        self._held_sets: dict[tuple[str, str], _Held] = {}
        self._held_generation: dict[str, int] = {}
        self._state_lock = threading.Lock()
        # One load at a time: Lite fails searches that race a second load_collection() of the
        # same collection ("in state 'released'"), which is what many first questions at once do.
        self._load_lock = threading.Lock()
        # Searches waiting for a batch; one caller at a time runs a batch for all of them.
        self._batch_cond = threading.Condition()
        self._waiting: list[_Query] = []
        self._batch_running = False
        lite = self._lite
        if lite is not None:
            lite.connect(uri, token, connect_timeout)
        else:
            try:
                self._client = MilvusClient(uri=uri, token=token, timeout=connect_timeout)
            except Exception as exc:
                raise StoreError(detail=f"cannot open Milvus at {_redact(uri)}: {exc}") from exc
        if lite is not None:
            self._pointer = LivePointer(lite.path, alias)
            self._check_pointer()
            lite.keep_reserve()
        where = lite.path if lite is not None else _redact(uri)
        log.info("knowledge store opened: %s (alias %s)", where, alias)

    def close(self) -> None:
        """Close the connection; for Milvus Lite also stop the local server and free its lock."""
        if self._lite is not None:
            self._lite.close()
            return
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing must not fail
                log.warning("closing the Milvus client failed", exc_info=True)

    def __enter__(self) -> KnowledgeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ read side

    def live(self) -> VersionInfo | None:
        """The version searchers see (the pointer's target), or None before the first publish."""
        name = self._live_name()
        return None if name is None else self._version_info(name)

    def live_since(self) -> float | None:
        """When the live version was built (unix seconds, from its name), None before any."""
        name = self._live_name()
        stamp = name[len(self._prefix) :] if name and name.startswith(self._prefix) else ""
        return int(stamp) / 1000 if stamp.isdigit() else None

    def search(
        self,
        query_vector: np.ndarray,
        query_text: str,
        *,
        top_k: int,
        mode: Literal["hybrid", "dense"] = "hybrid",
        filter: str | None = None,
        collection: str | None = None,
        pool: int | None = None,
        per_page: int = 0,
    ) -> list[Hit]:
        """Top `top_k` chunks of the live version (or of `collection`, a version being built);
        `filter` is a Milvus boolean expression.

        `pool` > top_k with `per_page`: the `top_k` are picked from the first `pool` ranked
        candidates, at most `per_page` from one page until every page had its turn
        (diversity.py). Only the picked rows are read back.

        Searches that arrive while another is running wait for it and then go to Milvus
        together, in one call (the same hits each would get alone).
        """
        # BM25 of an empty text finds nothing and the dense side would be ranked alone anyway.
        hybrid = mode == "hybrid" and bool(query_text.strip())
        job = _Query(
            _unit(query_vector), query_text, top_k, hybrid, filter or "", collection or "",
            pool=max(pool or top_k, top_k), per_page=per_page,
        )  # fmt: skip
        cond = self._batch_cond
        with cond:
            self._waiting.append(job)
        while True:
            with cond:
                while not job.done and self._batch_running:
                    cond.wait()
                if job.done:
                    break
                # This caller runs the next batch: its own query and whatever waits with it.
                self._batch_running = True
                batch = self._waiting[:_MAX_SEARCH_BATCH]
                del self._waiting[:_MAX_SEARCH_BATCH]
            try:
                self._run_batch(batch)
            finally:
                with cond:
                    self._batch_running = False
                    cond.notify_all()
        if job.error is not None:
            raise job.error
        assert job.hits is not None
        return job.hits

    def search_held(
        self,
        query_vector: np.ndarray,
        filter: str,
        *,
        top_k: int,
        collection: str | None = None,
        keep: Callable[[str], bool] | None = None,
    ) -> list[Hit]:
        """Exact dense top `top_k` among the rows `filter` matches, searched in memory.

        For a small set searched on every question (the verified answers), where a Milvus call
        of its own would cost more than the search: read once per version, read again after
        this store writes to that version, or after _HELD_TTL_S (another process may have).
        `keep(url)`: only the rows whose url it accepts.
        """
        name = collection or self._live_name()
        if name is None:
            raise IndexMissingError(detail=f"alias {self.alias!r} does not exist yet")
        held = self._held(name, filter)
        if not held.rows:
            return []
        query = _unit(query_vector)
        scores = held.vectors @ query
        hits: list[Hit] = []
        for i in np.argsort(-scores, kind="stable"):  # rows are in chunk_id order: ties too
            row = held.rows[int(i)]
            if keep is None or keep(row["url"]):
                hits.append(_to_hit({**row, "_score": float(scores[i])}, query))
                if len(hits) >= top_k:
                    break
        return hits

    def _held(self, name: str, filter: str) -> _Held:
        with self._state_lock:
            held = self._held_sets.get((name, filter))
            generation = self._held_generation.get(name, 0)
        if held is not None and time.monotonic() - held.read_at < _HELD_TTL_S:
            return held

        def read() -> list[dict[str, Any]]:
            self._ensure_loaded(name)
            return sorted(self._iterate(name, filter, _HIT_FIELDS), key=lambda r: r["chunk_id"])

        rows = self._call(read, f"query {name}")
        vectors = np.array([r["vector"] for r in rows], dtype=np.float32).reshape(
            len(rows), -1 if rows else 0
        )
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        held = _Held(rows, vectors / np.where(norms > 0, norms, 1.0), time.monotonic())
        with self._state_lock:
            # Not if a write landed while this read ran: it may have read the rows before it.
            if self._held_generation.get(name, 0) == generation:
                self._held_sets[(name, filter)] = held
        return held

    def _forget_held(self, name: str) -> None:
        """After a write to version `name`: its held sets are read again on their next use."""
        with self._state_lock:
            self._held_generation[name] = self._held_generation.get(name, 0) + 1
            for key in [k for k in self._held_sets if k[0] == name]:
                del self._held_sets[key]

    def _run_batch(self, batch: list[_Query]) -> None:
        """One Milvus call per shape (mode, top_k, filter, ...) in `batch`; every job ends done."""
        groups: dict[tuple[bool, int, str, str, int, int], list[_Query]] = {}
        for job in batch:
            groups.setdefault(job.shape, []).append(job)
        try:
            for group in groups.values():
                try:
                    results = self._search_many(group)
                except BaseException as exc:  # each waiting caller raises it in its own thread
                    for job in group:
                        job.error = exc
                else:
                    for job, hits in zip(group, results, strict=True):
                        job.hits = hits
        finally:
            for job in batch:
                job.done = True

    def _search_many(self, group: list[_Query]) -> list[list[Hit]]:
        first = group[0]
        queries = [job.vector for job in group]
        for attempt in range(_SEARCH_RETRIES):
            name = first.collection or self._live_name()
            if name is None:
                raise IndexMissingError(detail=f"alias {self.alias!r} does not exist yet")
            try:
                self._ensure_loaded(name)
                if first.hybrid:
                    texts = [job.text for job in group]
                    rows = self._hybrid(name, queries, texts, first)
                else:
                    rows = self._dense(name, queries, first)
                return [
                    [_to_hit(row, query) for row in found]
                    for query, found in zip(queries, rows, strict=True)
                ]
            except Exception as exc:
                # Only the live pointer moves under a search; a named version does not.
                retry = not first.collection and attempt + 1 < _SEARCH_RETRIES
                if retry and self._worth_retrying(name):
                    log.debug("search in %s failed, retrying: %s", name, exc)
                    continue
                raise StoreError(detail=f"search in {name} failed: {exc}") from exc
        raise AssertionError("unreachable")

    def _worth_retrying(self, name: str) -> bool:
        """After a failed search: was it a publish moving the pointer, or a released collection?

        Other failures (a bad filter expression) are not retried.
        """
        with self._state_lock:
            self._loaded.discard(name)  # the next attempt checks the load state again
        if self._revive_lite():
            return True
        try:
            if self._live_name() != name:  # publish() swapped and dropped `name` under us
                return True
            state = self.client.get_load_state(name)["state"]
        except Exception:
            return False
        return getattr(state, "name", str(state)) != "Loaded"

    def _dense(
        self, name: str, queries: list[np.ndarray], shape: _Query
    ) -> list[list[dict[str, Any]]]:
        # Picking among more than top_k: rank on ids alone, then read only the picked rows.
        picking = shape.pool > shape.top_k
        result = self.client.search(
            name,
            data=[q.tolist() for q in queries],
            anns_field="vector",
            limit=shape.pool + _TIE_SLACK,
            filter=shape.filter,
            output_fields=["chunk_id", "doc_id"] if picking else _HIT_FIELDS,
            search_params={"metric_type": "COSINE"},
        )
        ranked = [
            _cut([{**hit["entity"], "_score": hit["distance"]} for hit in hits], shape.pool)
            for hits in result
        ]
        if not picking:
            return ranked
        picked = [
            _pick([_Ranked(r["chunk_id"], r["doc_id"], r["_score"]) for r in rows], shape.top_k,
                  shape.per_page)
            for rows in ranked
        ]  # fmt: skip
        return self._read_rows(name, picked)

    def _hybrid(
        self, name: str, queries: list[np.ndarray], texts: list[str], shape: _Query
    ) -> list[list[dict[str, Any]]]:
        """Dense and BM25 candidates, fused here by weighted reciprocal rank (`self.fusion`).

        Fused here, not by Milvus's RRFRanker: Lite 2.5 ranks the second and later queries of
        a batch as if their ranks continued the first one's (scores of 1/(60 + 20 + rank)),
        which reorders them; fusing the two rankings ourselves gives each query of a batch
        exactly what it gets alone.
        """
        # Each side proposes more candidates than asked, so RRF can promote a chunk that ranks
        # well on both without being first on either.
        fusion = self.fusion
        candidates = max(fusion.candidates, shape.pool)
        sides = [
            self.client.search(
                name,
                data=data,
                anns_field=field,
                limit=candidates,
                filter=shape.filter,
                output_fields=["chunk_id", "doc_id"],
                search_params={"metric_type": metric},
            )
            for data, field, metric in (
                ([q.tolist() for q in queries], "vector", "COSINE"),
                (texts, "sparse", "BM25"),
            )
        ]
        picked: list[list[_Ranked]] = []
        for dense, sparse in zip(*sides, strict=True):
            scores: dict[str, float] = {}
            dense_rank: dict[str, int] = {}
            pages: dict[str, str] = {}
            for ranking, weight in ((dense, fusion.dense_weight), (sparse, 1.0)):
                for rank, hit in enumerate(ranking, 1):
                    chunk_id = hit["entity"]["chunk_id"]
                    pages[chunk_id] = hit["entity"]["doc_id"]
                    scores[chunk_id] = scores.get(chunk_id, 0.0) + weight / (fusion.rrf_k + rank)
                    if ranking is dense:
                        dense_rank[chunk_id] = rank
            # Mirrored ranks (1st and 3rd vs 3rd and 1st) tie exactly: the chunk closer in
            # meaning goes first, as Milvus's own RRF orders them; then chunk_id.
            order = sorted(
                scores,
                key=lambda c: (-scores[c], dense_rank.get(c, len(dense) + 1), c),
            )
            ranked = [_Ranked(c, pages[c], scores[c]) for c in order[: shape.pool]]
            picked.append(_pick(ranked, shape.top_k, shape.per_page))
        return self._read_rows(name, picked)

    def _read_rows(self, name: str, picked: list[list[_Ranked]]) -> list[list[dict[str, Any]]]:
        """The stored rows of the picked candidates (one query for a whole batch), in order."""
        wanted = sorted({c.chunk_id for best in picked for c in best})
        rows: dict[str, dict[str, Any]] = {}
        if wanted:
            expr = f"chunk_id in [{', '.join(milvus_str(c) for c in wanted)}]"
            found = self.client.query(name, filter=expr, output_fields=_HIT_FIELDS)
            rows = {row["chunk_id"]: row for row in found}
        # A row deleted between the search and this read is left out.
        return [
            [{**rows[c.chunk_id], "_score": c.score} for c in best if c.chunk_id in rows]
            for best in picked
        ]

    def lexical_texts(
        self, queries: Sequence[str], limit: int, collection: str | None = None
    ) -> list[list[str]]:
        """For each query, the search text (title, headings, text) of the `limit` passages BM25
        ranks first in `collection` (default: the live version)."""
        name = collection or self._live_name()
        if name is None or not queries:
            return [[] for _ in queries]

        def run() -> list[list[str]]:
            self._ensure_loaded(name)
            result = self.client.search(
                name,
                data=list(queries),
                anns_field="sparse",
                limit=limit,
                output_fields=["search_text"],
                search_params={"metric_type": "BM25"},
            )
            return [[hit["entity"]["search_text"] for hit in hits] for hits in result]

        return self._call(run, f"search {name} for terms")

    def count(self) -> int:
        """Chunks in the live version (0 before the first publish)."""
        name = self._live_name()
        if name is None:
            return 0
        return self._call(lambda: self._count(name), f"count {name}")

    def _count(self, name: str) -> int:
        self._ensure_loaded(name)
        rows = self.client.query(name, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def documents(self, collection: str | None = None) -> dict[str, DocRecord]:
        """doc_id -> what is indexed for it, in `collection` (default: the live version)."""
        name = collection or self._live_name()
        if name is None:
            return {}
        return self._call(lambda: self._documents(name), f"list documents of {name}")

    def _documents(self, name: str) -> dict[str, DocRecord]:
        self._ensure_loaded(name)
        seen: dict[str, tuple[str, str, int, str]] = {}
        for row in self._iterate(name, "", ["doc_id", "doc_hash", "source", "url"]):
            _, _, n, _ = seen.get(row["doc_id"], ("", "", 0, ""))
            url = row["url"].split("#", 1)[0]
            seen[row["doc_id"]] = (row["doc_hash"], row["source"], n + 1, url)
        return {doc: DocRecord(h, src, n, url) for doc, (h, src, n, url) in seen.items()}

    def rows(self, filter: str, collection: str | None = None) -> list[dict[str, Any]]:
        """The rows `filter` matches in `collection` (default: the live version), no vectors."""
        name = collection or self._live_name()
        if name is None:
            return []
        fields = [f for f in _HIT_FIELDS if f != "vector"]

        def run() -> list[dict[str, Any]]:
            self._ensure_loaded(name)
            return list(self._iterate(name, filter, fields))

        return self._call(run, f"query {name}")

    def present_chunk_hashes(
        self, hashes: Collection[str], collection: str | None = None
    ) -> set[str]:
        """Which of `hashes` some chunk of `collection` (default: the live version) still has.

        A hash that is missing means the passage it names changed or left the index.
        """
        name = collection or self._live_name()
        wanted = sorted(set(hashes))
        if name is None or not wanted:
            return set()

        def run() -> set[str]:
            self._ensure_loaded(name)
            found: set[str] = set()
            for start in range(0, len(wanted), _HASH_BATCH):
                batch = wanted[start : start + _HASH_BATCH]
                expr = f"chunk_hash in [{', '.join(milvus_str(h) for h in batch)}]"
                found.update(row["chunk_hash"] for row in self._iterate(name, expr, ["chunk_hash"]))
            return found

        return self._call(run, f"look up chunk hashes in {name}")

    def _iterate(self, name: str, filter: str, fields: list[str]) -> Iterable[dict[str, Any]]:
        """All matching rows, page by page (a plain query stops at 16384 rows)."""
        iterator = self.client.query_iterator(
            name, batch_size=_ITER_BATCH, filter=filter, output_fields=fields
        )
        try:
            while page := iterator.next():
                yield from page
        finally:
            iterator.close()

    # ----------------------------------------------------------------- write side

    def create_version(self, *, model: str, dim: int) -> str:
        """A new, empty, loaded collection beside the live one; returns its name."""
        return self._call(lambda: self._create_version(model, dim), "create a collection version")

    def _create_version(self, model: str, dim: int) -> str:
        from pymilvus import DataType, Function, FunctionType

        existing = set(self.client.list_collections())
        stamp = time.time_ns() // 1_000_000
        while f"{self._prefix}{stamp}" in existing:  # two versions in one millisecond
            stamp += 1
        name = f"{self._prefix}{stamp}"

        meta = {_PROP_MODEL: model, _PROP_DIM: str(dim)}
        # Lite 2.5 drops collection properties but keeps the description: both carry them.
        schema = self.client.create_schema(
            auto_id=False, enable_dynamic_field=False, description=json.dumps(meta)
        )
        schema.add_field("chunk_id", DataType.VARCHAR, is_primary=True, max_length=64)
        for field in ("doc_id", "source", "url", "title", "heading_path"):
            schema.add_field(field, DataType.VARCHAR, max_length=_MAX_BYTES[field])
        schema.add_field("text", DataType.VARCHAR, max_length=65535)
        schema.add_field(
            "search_text", DataType.VARCHAR, max_length=_SEARCH_TEXT_BYTES, enable_analyzer=True
        )
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_field("doc_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("chunk_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("indexed_at", DataType.INT64)
        schema.add_function(
            Function(
                name="text_bm25",
                function_type=FunctionType.BM25,
                input_field_names=["search_text"],
                output_field_names=["sparse"],
            )
        )
        index = self.client.prepare_index_params()
        # Lite: FLAT, an exact scan (a few ms over 5k x 384 in Lite 2.5's native engine; exact
        # results keep rankings stable across reindexes). Server: AUTOINDEX, built by Milvus.
        dense_index = "FLAT" if self._lite is not None else "AUTOINDEX"
        index.add_index("vector", index_type=dense_index, metric_type="COSINE")
        index.add_index(
            "sparse",
            index_type="SPARSE_INVERTED_INDEX",
            metric_type="BM25",
            params={"inverted_index_algo": "DAAT_MAXSCORE"},
        )
        index.add_index("doc_id", index_type="INVERTED")  # filters name pages by doc_id
        self.client.create_collection(
            name,
            schema=schema,
            properties=meta,
            consistency_level="Strong",  # the indexer reads back what it just wrote
        )
        # sync=False: waiting for the build calls AllocTimestamp, which Lite lacks (an error
        # traceback in the log and 0.5 s per index); an empty collection's index is ready anyway.
        self.client.create_index(name, index, sync=False)
        self.client.load_collection(name)
        with self._state_lock:
            self._loaded.add(name)
        log.info("created collection version %s (%s, dim %d)", name, model, dim)
        return name

    def copy_documents(
        self, src: str, dst: str, doc_ids: Collection[str] | None, *, filter: str = ""
    ) -> int:
        """Copy the rows of `doc_ids` (None: every row `filter` matches) from `src` to `dst` as
        stored (no re-embedding)."""
        wanted = None if doc_ids is None else set(doc_ids)
        return self._call(lambda: self._copy(src, dst, wanted, filter), f"copy {src} -> {dst}")

    def _copy(self, src: str, dst: str, doc_ids: set[str] | None, filter: str = "") -> int:
        self._ensure_loaded(src)
        copied = 0
        batch: list[dict[str, Any]] = []
        # One pass over `src`, picking rows here: no filter expression has to spell the ids
        # (Lite 2.5 cannot match some characters in a literal), and a reindex copies most
        # documents anyway.
        for row in self._iterate(src, filter, _COPY_FIELDS):
            if doc_ids is not None and row["doc_id"] not in doc_ids:
                continue
            copy = {f: row[f] for f in _COPY_FIELDS}
            copy["search_text"] = _search_text(row["title"], row["heading_path"], row["text"])
            batch.append(copy)
            if len(batch) >= _INSERT_BATCH:
                self.client.insert(dst, batch)
                copied += len(batch)
                batch = []
        if batch:
            self.client.insert(dst, batch)
            copied += len(batch)
        # Sealed now, not at publish: a version searched before it is flushed pays for its
        # unsealed rows on every search (Lite 3.x re-indexed them per query).
        self.client.flush(dst)
        self._forget_held(dst)
        self._check_written(f"copy into {dst}")
        return copied

    def insert(self, collection: str, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Store chunks with their (unit-length) vectors, one row each."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(chunks) != vectors.shape[0]:
            raise ValueError(f"{len(chunks)} chunks but vectors of shape {vectors.shape}")
        now = int(time.time())
        rows = [_to_row(chunk, vector, now) for chunk, vector in zip(chunks, vectors, strict=True)]
        self._call(lambda: self._insert_rows(collection, rows), f"insert into {collection}")

    def _insert_rows(self, collection: str, rows: list[dict[str, Any]]) -> None:
        for start in range(0, len(rows), _INSERT_BATCH):
            self.client.insert(collection, rows[start : start + _INSERT_BATCH])
        self._forget_held(collection)
        self._check_written(f"insert into {collection}")

    def delete_documents(self, collection: str, doc_ids: Collection[str]) -> None:
        """Delete every row of `doc_ids` from `collection` (searches miss them at once)."""
        if not doc_ids:
            return
        expr = f"doc_id in [{', '.join(milvus_str(d) for d in sorted(doc_ids))}]"

        def run() -> None:
            self._ensure_loaded(collection)
            self.client.delete(collection, filter=expr)
            self._forget_held(collection)
            self._check_written(f"delete from {collection}")

        self._call(run, f"delete from {collection}")

    def publish(self, collection: str) -> None:
        """Point the live pointer at `collection` in one step, then drop the version it replaced.

        The collection is flushed first: it serves searches from sealed segments from its
        first question on, every row visible.
        """

        def swap() -> str | None:
            self.client.flush(collection)
            self._check_written(f"flush {collection}")
            self._ensure_loaded(collection)
            previous = self._live_name()
            if self._pointer is not None:
                if previous != collection:
                    self._pointer.write(collection)
            elif previous is None:
                self.client.create_alias(collection, self.alias)
            elif previous != collection:
                self.client.alter_alias(collection, self.alias)
            return previous

        previous = self._call(swap, f"publish {collection}")
        log.info("published %s as %s (was %s)", collection, self.alias, previous)
        if previous is not None and previous != collection:
            try:
                self.drop(previous)
            except StoreError as exc:
                # Published all the same: the old version is an orphan that the next
                # reindex drops (drop_orphans).
                log.warning("published %s; could not drop %s yet: %s", collection, previous, exc)
        if self._lite is not None:  # given up on a full disk earlier: take it back if there is room
            self._lite.keep_reserve()

    def drop(self, collection: str) -> None:
        """Drop a version (never the live one)."""
        # drop_collection resolves aliases on a server: dropping the alias drops the live one.
        if collection in (self.alias, self._live_name()):
            raise StoreError(detail=f"refusing to drop the live collection {collection}")

        def run() -> None:
            if self.client.has_collection(collection):
                self.client.drop_collection(collection)

        try:
            self._call(run, f"drop {collection}")
        except StoreFullError:
            # Dropping writes a little metadata too: on a full disk, give up the reserve so the
            # unfinished version (what filled the disk) can go now, not at the next run.
            if self._lite is None or not self._lite.release_reserve():
                raise
            self._call(run, f"drop {collection}")
        with self._state_lock:
            self._loaded.discard(collection)
            self._info_cache.pop(collection, None)
        self._forget_held(collection)

    def drop_orphans(self) -> list[str]:
        """Drop versions the live pointer does not name (left by a failed or crashed reindex).

        Call it only while no reindex is building a version: that one would count as orphan.
        """
        live = self._live_name()
        names = self._call(self.client.list_collections, "list collections")
        orphans = sorted(n for n in names if n.startswith(self._prefix) and n != live)
        for name in orphans:
            self.drop(name)
        if orphans:
            log.info("dropped orphan versions: %s", ", ".join(orphans))
        return orphans

    # ------------------------------------------------------------------ helpers

    @property
    def is_lite(self) -> bool:
        """A Milvus Lite file (exact FLAT search, live pointer file), not a server."""
        return self._pointer is not None

    @property
    def client(self) -> Any:
        # Lite: the engine's client, which revive() replaces when the engine is started again.
        client = self._client if self._lite is None else self._lite.client
        if client is None:
            raise StoreError(detail="the knowledge store is closed")
        return client

    def _call(self, fn: Callable[[], T], what: str) -> T:
        """Run a Milvus call; its failures become StoreError (user-safe message, detail logged)."""
        for attempt in range(2):
            try:
                return fn()
            except StoreError:
                raise
            except Exception as exc:
                if attempt == 0 and self._revive_lite():
                    continue
                if _disk_full(exc) or (self._lite is not None and self._lite.disk_full()):
                    raise StoreFullError(detail=f"{what} failed, disk full: {exc}") from exc
                raise StoreError(detail=f"{what} failed: {exc}") from exc
        raise AssertionError("unreachable")

    def _revive_lite(self) -> bool:
        """Lite: start the engine again if its process died; True when it was restarted."""
        return self._lite is not None and self._lite.revive(self._forget_loaded)

    def _forget_loaded(self) -> None:
        # A restarted engine has every collection released.
        with self._state_lock:
            self._loaded.clear()

    def _check_written(self, what: str) -> None:
        """Lite: a write on a (nearly) full disk fails, even where the engine said it worked."""
        if self._lite is not None:
            self._lite.check_written(what)

    def _live_name(self) -> str | None:
        if self._pointer is not None:
            return self._pointer.read()
        # list_aliases first: describe_alias of a missing alias makes pymilvus log an error.
        try:
            if self.alias not in self.client.list_aliases().get("aliases", []):
                return None
            return str(self.client.describe_alias(self.alias)["collection_name"])
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(detail=f"cannot resolve alias {self.alias}: {exc}") from exc

    def _check_pointer(self) -> None:
        """Lite: forget a live pointer that names no collection (its database was replaced)."""
        assert self._pointer is not None
        try:
            name = self._live_name()
            if name is None or self._call(
                lambda: self.client.has_collection(name), f"look up {name}"
            ):
                return
        except Exception:
            self.close()
            raise
        pointer = self._pointer.path
        log.warning("%s names %s, which the database does not hold: ignored", pointer, name)
        self._pointer.remove()

    def _version_info(self, name: str) -> VersionInfo:
        with self._state_lock:
            cached = self._info_cache.get(name)
        if cached is not None:
            return cached
        desc = self._call(lambda: self.client.describe_collection(name), f"describe {name}")
        props = desc.get("properties") or {}
        if _PROP_MODEL not in props:
            try:
                props = json.loads(desc.get("description") or "{}")
            except ValueError:
                props = {}
        dim = int(props.get(_PROP_DIM, 0)) or next(
            int(f["params"]["dim"]) for f in desc["fields"] if f["name"] == "vector"
        )
        info = VersionInfo(name=name, model=str(props.get(_PROP_MODEL, "")), dim=dim)
        with self._state_lock:
            self._info_cache[name] = info
        return info

    def _ensure_loaded(self, name: str) -> None:
        # A reopened Lite db (or a restarted server) has every collection released.
        with self._state_lock:
            if name in self._loaded:
                return
        with self._load_lock:
            with self._state_lock:
                if name in self._loaded:  # another thread loaded it while this one waited
                    return
            state = self.client.get_load_state(name)["state"]
            if getattr(state, "name", str(state)) != "Loaded":
                self.client.load_collection(name)
            with self._state_lock:
                self._loaded.add(name)


def _to_row(chunk: Chunk, vector: np.ndarray, now: int) -> dict[str, Any]:
    if len(chunk.chunk_id.encode("utf-8")) > _MAX_BYTES["chunk_id"]:
        # A cut primary key could merge two chunks: that is a chunker bug, not data to trim.
        raise ValueError(f"chunk_id longer than 64 bytes: {chunk.chunk_id!r}")
    values = {
        "chunk_id": chunk.chunk_id,
        "doc_id": chunk.doc_id,
        "source": chunk.source,
        "url": chunk.url,
        "title": chunk.title,
        "heading_path": chunk.heading_path,
        "text": chunk.text,
        "doc_hash": chunk.doc_hash,
        "chunk_hash": chunk.chunk_hash,
    }
    row: dict[str, Any] = {k: _fit(v, _MAX_BYTES[k]) for k, v in values.items()}
    row["search_text"] = _search_text(row["title"], row["heading_path"], row["text"])
    row["vector"] = vector.tolist()
    row["indexed_at"] = now
    return row


def _search_text(title: str, heading_path: str, text: str) -> str:
    return _fit(in_context(title, heading_path, text), _SEARCH_TEXT_BYTES)


def _cut(rows: list[dict[str, Any]], top_k: int) -> list[dict[str, Any]]:
    """The best `top_k` rows, equal scores in chunk_id order (the same whatever the engine)."""
    return sorted(rows, key=lambda row: (-row["_score"], row["chunk_id"]))[:top_k]


def _to_hit(row: dict[str, Any], query: np.ndarray) -> Hit:
    vector = np.asarray(row["vector"], dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    similarity = float(query @ vector) / norm if norm > 0 else 0.0
    return Hit(
        chunk_id=row["chunk_id"],
        doc_id=row["doc_id"],
        url=row["url"],
        title=row["title"],
        heading_path=row["heading_path"],
        text=row["text"],
        score=float(row["_score"]),
        similarity=similarity,
        chunk_hash=row.get("chunk_hash") or "",
    )


__all__ = ["DocRecord", "KnowledgeStore", "VersionInfo", "is_lite_uri", "milvus_str"]
