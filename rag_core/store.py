"""KnowledgeStore: chunks in Milvus (Lite file or server), hybrid search, versioned reindexing.

Every (re)index builds a new collection *version* beside the live one and then points the
alias (searchers only ever use the alias) at it, so a reindex is invisible to searchers until
it is complete, and a crashed one leaves the live version untouched.

Milvus Lite (milvus-lite 3.x) quirks handled here:
- the `.db` path is a folder holding a `LOCK` file: a second *process* cannot open it; we check
  the lock ourselves first, because the failure pymilvus raises says only "Open local milvus
  failed" (after milvus_lite logged a traceback);
- `client.close()` leaves the in-process server (and its lock) running: `close()` also stops it
  through milvus_lite's server manager;
- after reopening, collections are released: they are loaded on first use;
- BM25 distances come back negative (order is right): only ranks are used (RRF).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from .documents import Chunk, Hit
from .errors import IndexMissingError, StoreError, StoreFullError, StoreLockedError

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
_HIT_FIELDS = ["chunk_id", "doc_id", "url", "title", "heading_path", "text", "vector"]
# Everything a copy carries over, except `sparse`: a BM25 function output cannot be inserted,
# the target collection recomputes it from `text`.
_COPY_FIELDS = [*_MAX_BYTES, "vector", "indexed_at"]

_PROP_MODEL = "rag.model"
_PROP_DIM = "rag.dim"
_RRF_K = 60
# Candidates each side of a hybrid search proposes: top_k * factor, at least the minimum.
_HYBRID_FACTOR = 4
_HYBRID_MIN = 20
_INSERT_BATCH = 512
_COPY_IDS_PER_QUERY = 64  # doc ids per `doc_id in [...]` filter (ids may be long URLs)
_ITER_BATCH = 5000  # query_iterator page size (a plain query caps at 16384 rows); each page
# costs Lite a scan of the collection, so few large pages beat many small ones
_SEARCH_RETRIES = 3  # a search racing publish() may hit the version it just dropped


@dataclass(frozen=True)
class DocRecord:
    """What the store knows about one indexed document (for incremental reindexing)."""

    doc_hash: str
    source: str
    chunks: int


@dataclass(frozen=True)
class VersionInfo:
    """A collection version and the embedding model it was built with."""

    name: str
    model: str
    dim: int


def milvus_str(value: str) -> str:
    """`value` as a quoted Milvus filter string literal (for `field == ...` expressions)."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
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


# Lite paths this process has open, with how many stores share each: the last close() stops the
# in-process server; earlier ones must not pull it from under the others.
_lite_refs: dict[str, int] = {}
_lite_refs_lock = threading.Lock()


class _DropLiteIteratorWarning(logging.Filter):
    """Lite has no MVCC timestamps; pymilvus warns about it on every query_iterator."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "mvccTs" not in record.getMessage()


def _quiet_lite_warnings() -> None:
    # pymilvus logs every failed call with a full traceback at ERROR; each failure reaches our
    # callers as a StoreError with its message, logged once where it is handled.
    logging.getLogger("pymilvus.decorators").setLevel(logging.CRITICAL)
    logging.getLogger("milvus_lite.adapter.grpc.servicer").setLevel(logging.CRITICAL)
    logger = logging.getLogger("pymilvus.client.iterator.query_iterator")
    if not any(isinstance(f, _DropLiteIteratorWarning) for f in logger.filters):
        logger.addFilter(_DropLiteIteratorWarning())


# Space held beside a Milvus Lite database and given up when the disk fills, so that a failed
# reindex can still drop its unfinished version (dropping writes metadata too).
RESERVE_SUFFIX = ".reserve"
RESERVE_BYTES = 4 * 2**20


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


def _lite_lock_held_elsewhere(db_path: Path) -> bool:
    """True when another process holds the Lite database's LOCK file (advisory flock)."""
    lock_file = db_path / "LOCK"
    if not lock_file.exists():
        return False
    fd = os.open(lock_file, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class KnowledgeStore:
    """Chunks of the indexed docs in Milvus, behind an alias that always names a complete version.

    Safe to share between threads: searches may run while the indexer writes a new version.
    """

    def __init__(
        self, uri: str, *, token: str = "", alias: str = "docs", connect_timeout: float = 10.0
    ) -> None:
        from pymilvus import MilvusClient

        self.alias = alias
        self._prefix = f"{alias}__v"
        self._lite_path: str | None = None
        # Version metadata never changes after creation: cache it (live() runs per question).
        self._info_cache: dict[str, VersionInfo] = {}
        self._loaded: set[str] = set()
        self._state_lock = threading.Lock()
        # One load at a time: Lite fails searches that race a second load_collection() of the
        # same collection ("in state 'released'"), which is what many first questions at once do.
        self._load_lock = threading.Lock()
        if is_lite_uri(uri):
            self._lite_path = self._open_lite(uri)
            _quiet_lite_warnings()
        lite_path = self._lite_path
        try:
            self._client = MilvusClient(uri=uri, token=token, timeout=connect_timeout)
        except Exception as exc:
            self._client = None
            self._release_lite()
            # Another process may have taken the lock between our check and the open.
            if lite_path and _lite_lock_held_elsewhere(Path(lite_path)):
                raise StoreLockedError(
                    detail=f"Milvus Lite database {lite_path} is locked by another process"
                ) from exc
            where = (
                f"Milvus Lite database {lite_path}" if lite_path else f"Milvus at {_redact(uri)}"
            )
            raise StoreError(detail=f"cannot open {where}: {exc}") from exc
        self._reserve = Path(lite_path + RESERVE_SUFFIX) if lite_path else None
        self._keep_reserve()
        log.info("knowledge store opened: %s (alias %s)", lite_path or _redact(uri), alias)

    @staticmethod
    def _open_lite(uri: str) -> str:
        if not uri.endswith(".db"):
            raise StoreError(detail=f"a Milvus Lite path must end in .db: {uri}")
        path = Path(uri).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        with _lite_refs_lock:
            # Already served in this process (another store): the lock is ours, not a conflict.
            if _lite_refs.get(str(path), 0) == 0 and _lite_lock_held_elsewhere(path):
                raise StoreLockedError(
                    detail=f"Milvus Lite database {path} is locked by another process"
                )
            _lite_refs[str(path)] = _lite_refs.get(str(path), 0) + 1
        return str(path)

    def _release_lite(self) -> None:
        if self._lite_path is None:
            return
        path, self._lite_path = self._lite_path, None
        with _lite_refs_lock:
            left = _lite_refs.get(path, 1) - 1
            if left > 0:
                _lite_refs[path] = left
                return
            _lite_refs.pop(path, None)
            try:
                from milvus_lite.server_manager import server_manager_instance
            except ImportError:
                return
            # Stops the gRPC server thread and closes the db, which releases the LOCK file.
            server_manager_instance.release_server(path)

    def close(self) -> None:
        """Close the connection; for Milvus Lite also stop the local server and free its lock."""
        client = getattr(self, "_client", None)
        if client is not None:
            try:
                client.close()
            except Exception:  # closing must not fail: the lock release below matters more
                log.warning("closing the Milvus client failed", exc_info=True)
            self._client = None
        self._release_lite()

    def __enter__(self) -> KnowledgeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ read side

    def live(self) -> VersionInfo | None:
        """The version searchers see (the alias target), or None before the first publish."""
        name = self._live_name()
        return None if name is None else self._version_info(name)

    def search(
        self,
        query_vector: np.ndarray,
        query_text: str,
        *,
        top_k: int,
        mode: Literal["hybrid", "dense"] = "hybrid",
        filter: str | None = None,
    ) -> list[Hit]:
        """Top `top_k` chunks of the live version; `filter` is a Milvus boolean expression."""
        query = np.asarray(query_vector, dtype=np.float32).ravel()
        norm = float(np.linalg.norm(query))
        if norm > 0:
            query = query / norm
        # BM25 of an empty text finds nothing and the dense side would be ranked alone anyway.
        hybrid = mode == "hybrid" and bool(query_text.strip())
        for attempt in range(_SEARCH_RETRIES):
            name = self._live_name()
            if name is None:
                raise IndexMissingError(detail=f"alias {self.alias!r} does not exist yet")
            try:
                self._ensure_loaded(name)
                if hybrid:
                    rows = self._hybrid(name, query, query_text, top_k, filter)
                else:
                    rows = self._dense(name, query, top_k, filter)
                return [_to_hit(row, query) for row in rows]
            except Exception as exc:
                if attempt + 1 < _SEARCH_RETRIES and self._worth_retrying(name):
                    log.debug("search in %s failed, retrying: %s", name, exc)
                    continue
                raise StoreError(detail=f"search in {name} failed: {exc}") from exc
        raise AssertionError("unreachable")

    def _worth_retrying(self, name: str) -> bool:
        """After a failed search: was it a publish moving the alias, or a released collection?

        Other failures (a bad filter expression) are not retried.
        """
        with self._state_lock:
            self._loaded.discard(name)  # the next attempt checks the load state again
        try:
            if self._live_name() != name:  # publish() swapped and dropped `name` under us
                return True
            state = self.client.get_load_state(name)["state"]
        except Exception:
            return False
        return getattr(state, "name", str(state)) != "Loaded"

    def _dense(
        self, name: str, query: np.ndarray, top_k: int, filter: str | None
    ) -> list[dict[str, Any]]:
        result = self.client.search(
            name,
            data=[query.tolist()],
            anns_field="vector",
            limit=top_k,
            filter=filter or "",
            output_fields=_HIT_FIELDS,
            search_params={"metric_type": "COSINE"},
        )
        return [{**hit["entity"], "_score": hit["distance"]} for hit in result[0]]

    def _hybrid(
        self, name: str, query: np.ndarray, text: str, top_k: int, filter: str | None
    ) -> list[dict[str, Any]]:
        from pymilvus import AnnSearchRequest, RRFRanker

        # Each side proposes more candidates than asked, so RRF can promote a chunk that ranks
        # well on both without being first on either.
        candidates = max(top_k * _HYBRID_FACTOR, _HYBRID_MIN)
        requests = [
            AnnSearchRequest(
                data=[query.tolist()],
                anns_field="vector",
                param={"metric_type": "COSINE"},
                limit=candidates,
                expr=filter or None,
            ),
            AnnSearchRequest(
                data=[text],
                anns_field="sparse",
                param={"metric_type": "BM25"},
                limit=candidates,
                expr=filter or None,
            ),
        ]
        result = self.client.hybrid_search(
            name, requests, RRFRanker(_RRF_K), limit=top_k, output_fields=_HIT_FIELDS
        )
        return [{**hit["entity"], "_score": hit["distance"]} for hit in result[0]]

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
        seen: dict[str, tuple[str, str, int]] = {}
        for row in self._iterate(name, "", ["doc_id", "doc_hash", "source"]):
            _, _, n = seen.get(row["doc_id"], ("", "", 0))
            seen[row["doc_id"]] = (row["doc_hash"], row["source"], n + 1)
        return {doc: DocRecord(h, src, n) for doc, (h, src, n) in seen.items()}

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

        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("chunk_id", DataType.VARCHAR, is_primary=True, max_length=64)
        for field in ("doc_id", "source", "url", "title", "heading_path"):
            schema.add_field(field, DataType.VARCHAR, max_length=_MAX_BYTES[field])
        schema.add_field("text", DataType.VARCHAR, max_length=65535, enable_analyzer=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_field("doc_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("chunk_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("indexed_at", DataType.INT64)
        schema.add_function(
            Function(
                name="text_bm25",
                function_type=FunctionType.BM25,
                input_field_names=["text"],
                output_field_names=["sparse"],
            )
        )
        index = self.client.prepare_index_params()
        # Lite: FLAT, an exact NumPy scan. Lite's AUTOINDEX is a faiss HNSW built inside this
        # process on every segment flush (5 s per 17k rows on 2 busy cores, paid at each
        # reindex and again on drop) and measured no faster at 10k x 384 (dense top-5 p50
        # 110-145 ms on 2 overloaded cores, either way). Server: AUTOINDEX, built by Milvus.
        dense_index = "FLAT" if self._lite_path else "AUTOINDEX"
        index.add_index("vector", index_type=dense_index, metric_type="COSINE")
        index.add_index(
            "sparse",
            index_type="SPARSE_INVERTED_INDEX",
            metric_type="BM25",
            params={"inverted_index_algo": "DAAT_MAXSCORE"},
        )
        index.add_index("doc_id", index_type="INVERTED")  # copy_documents filters on it
        self.client.create_collection(
            name,
            schema=schema,
            properties={_PROP_MODEL: model, _PROP_DIM: str(dim)},
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

    def copy_documents(self, src: str, dst: str, doc_ids: Collection[str]) -> int:
        """Copy the rows of `doc_ids` from `src` to `dst` as stored (no re-embedding)."""
        return self._call(lambda: self._copy(src, dst, list(doc_ids)), f"copy {src} -> {dst}")

    def _copy(self, src: str, dst: str, doc_ids: list[str]) -> int:
        self._ensure_loaded(src)
        copied = 0
        batch: list[dict[str, Any]] = []
        for start in range(0, len(doc_ids), _COPY_IDS_PER_QUERY):
            ids = doc_ids[start : start + _COPY_IDS_PER_QUERY]
            expr = f"doc_id in [{', '.join(milvus_str(i) for i in ids)}]"
            for row in self._iterate(src, expr, _COPY_FIELDS):
                batch.append({f: row[f] for f in _COPY_FIELDS})
                if len(batch) >= _INSERT_BATCH:
                    self.client.insert(dst, batch)
                    copied += len(batch)
                    batch = []
        if batch:
            self.client.insert(dst, batch)
            copied += len(batch)
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

    def publish(self, collection: str) -> None:
        """Point the alias at `collection` in one step, then drop the version it replaced."""

        def swap() -> str | None:
            self.client.flush(collection)  # server Milvus: make every row visible before the swap
            self._ensure_loaded(collection)
            previous = self._live_name()
            if previous is None:
                self.client.create_alias(collection, self.alias)
            elif previous != collection:
                self.client.alter_alias(collection, self.alias)
            return previous

        previous = self._call(swap, f"publish {collection}")
        log.info("published %s as %s (was %s)", collection, self.alias, previous)
        if previous is not None and previous != collection:
            self.drop(previous)
        self._keep_reserve()  # given up on a full disk earlier: take it back if there is room

    def drop(self, collection: str) -> None:
        """Drop a version (never the live one)."""
        # Lite's drop_collection resolves aliases: dropping the alias name drops the live one.
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
            if not self._release_reserve():
                raise
            self._call(run, f"drop {collection}")
        with self._state_lock:
            self._loaded.discard(collection)
            self._info_cache.pop(collection, None)

    def drop_orphans(self) -> list[str]:
        """Drop versions the alias does not point to (left by a failed or crashed reindex).

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

    def _keep_reserve(self) -> None:
        """Lite only: hold RESERVE_BYTES beside the database while the disk has room for them."""
        reserve = self._reserve
        if reserve is None or reserve.exists():
            return
        try:
            if shutil.disk_usage(reserve.parent).free < 4 * RESERVE_BYTES:
                return  # nearly full already: the reserve would only make it worse
            with open(reserve, "wb") as f:
                f.truncate(0)
                os.posix_fallocate(f.fileno(), 0, RESERVE_BYTES)
        except OSError:
            log.debug("no disk reserve beside %s", reserve, exc_info=True)
            reserve.unlink(missing_ok=True)

    def _release_reserve(self) -> bool:
        """Free the reserve; True when there was one to free."""
        if self._reserve is None or not self._reserve.exists():
            return False
        log.warning("disk full: releasing the %d-byte reserve to drop a version", RESERVE_BYTES)
        self._reserve.unlink(missing_ok=True)
        return True

    @property
    def client(self) -> Any:
        if self._client is None:
            raise StoreError(detail="the knowledge store is closed")
        return self._client

    def _call(self, fn: Callable[[], T], what: str) -> T:
        """Run a Milvus call; its failures become StoreError (user-safe message, detail logged)."""
        try:
            return fn()
        except StoreError:
            raise
        except Exception as exc:
            if _disk_full(exc):
                raise StoreFullError(detail=f"{what} failed, disk full: {exc}") from exc
            raise StoreError(detail=f"{what} failed: {exc}") from exc

    def _live_name(self) -> str | None:
        # list_aliases first: describe_alias of a missing alias makes pymilvus log an error.
        try:
            if self.alias not in self.client.list_aliases().get("aliases", []):
                return None
            return str(self.client.describe_alias(self.alias)["collection_name"])
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(detail=f"cannot resolve alias {self.alias}: {exc}") from exc

    def _version_info(self, name: str) -> VersionInfo:
        with self._state_lock:
            cached = self._info_cache.get(name)
        if cached is not None:
            return cached
        desc = self._call(lambda: self.client.describe_collection(name), f"describe {name}")
        props = desc.get("properties", {})
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
    row["vector"] = vector.tolist()
    row["indexed_at"] = now
    return row


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
    )


__all__ = ["DocRecord", "KnowledgeStore", "VersionInfo", "is_lite_uri", "milvus_str"]
