"""Milvus Lite: the database file a store opens, the engine serving it, and the files beside it.

Milvus Lite (milvus-lite 2.5: a native engine in a child process, docs/benchmarks.md) quirks
handled here:
- the `.db` file is locked (`.kb.db.lock`, a POSIX lock): a second *process* cannot open it; we
  check the lock ourselves first, because the failure pymilvus raises says only "Open local
  milvus failed" (after milvus_lite logged an error);
- `client.close()` leaves the engine (and its lock) running: `close()` also stops it through
  milvus_lite's server manager, once no other store of this process uses the file;
- the engine process may die as it starts, or exit later (a full disk): it is started again;
- a full disk shows as "internal error" only: the disk itself is asked, and a reserve file is
  given up so that an unfinished version can still be dropped;
- there are no aliases: the live pointer is a small file beside the database.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import StoreError, StoreFullError, StoreLockedError

log = logging.getLogger(__name__)

# A live pointer file beside a Lite database, one per alias: `kb.db.docs.live`.
LIVE_SUFFIX = ".live"
# Space held beside a Milvus Lite database and given up when the disk fills, so that a failed
# reindex can still drop its unfinished version (dropping writes metadata too).
RESERVE_SUFFIX = ".reserve"
RESERVE_BYTES = 4 * 2**20
_LITE_START_TIMEOUT = 60.0

# Lite paths this process has open, with how many stores share each: the last close() stops the
# in-process server; earlier ones must not pull it from under the others.
_lite_refs: dict[str, int] = {}
_lite_refs_lock = threading.Lock()


class LiteEngine:
    """One store's Milvus Lite database: its client, the engine behind it, the reserve file.

    Every store of a file in this process has a LiteEngine of its own; they share the engine.
    """

    def __init__(self, uri: str) -> None:
        """Claim the database at `uri` (a `.db` path); StoreLockedError when another process
        has it."""
        self.path = self._claim(uri)
        self.reserve = Path(self.path + RESERVE_SUFFIX)
        self.client: Any | None = None
        self._claimed = True  # counted in _lite_refs until release()
        self._engine: object | None = None  # the engine `client` talks to
        self._revive_lock = threading.Lock()
        _quiet_lite_warnings()

    @staticmethod
    def _claim(uri: str) -> str:
        if not uri.endswith(".db"):
            raise StoreError(detail=f"a Milvus Lite path must end in .db: {uri}")
        path = Path(uri).resolve()
        if path.is_dir():
            raise StoreError(
                detail=f"{path} is a Milvus Lite 3.x database (a folder); this version uses "
                "Milvus Lite 2.5 files: move it away and index the docs again"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        with _lite_refs_lock:
            # Already served in this process (another store): the lock is ours, not a conflict.
            if _lite_refs.get(str(path), 0) == 0 and _lite_lock_held_elsewhere(path):
                raise StoreLockedError(
                    detail=f"Milvus Lite database {path} is locked by another process"
                )
            _lite_refs[str(path)] = _lite_refs.get(str(path), 0) + 1
        return str(path)

    def connect(self, uri: str, token: str, timeout: float) -> None:
        """Open `client`, starting the engine if no store of this process has; StoreError
        (StoreLockedError: another process took the file) with the file released when not."""
        from pymilvus import MilvusClient

        # The Lite engine is a 170 MB native binary: its first start on a busy host (files
        # not yet in the page cache) took over 10 s.
        timeout = max(timeout, _LITE_START_TIMEOUT)
        try:
            try:
                self.client = MilvusClient(uri=uri, token=token, timeout=timeout)
            except Exception as exc:
                if not self._restart_engine(exc):
                    raise
                self.client = MilvusClient(uri=uri, token=token, timeout=timeout)
        except Exception as exc:
            self.client = None
            self.release()
            # Another process may have taken the lock between our check and the open.
            if _lite_lock_held_elsewhere(Path(self.path)):
                raise StoreLockedError(
                    detail=f"Milvus Lite database {self.path} is locked by another process"
                ) from exc
            raise StoreError(detail=f"cannot open Milvus Lite database {self.path}: {exc}") from exc
        self._engine = _lite_engine(self.path)

    def _restart_engine(self, exc: Exception) -> bool:
        """After a failed first connect: stop the engine this store started; True to try again.

        The engine process sometimes dies after its start was reported ("Fail connecting to
        server ... .sock: No such file"); a second start then works. Only when this store is
        the engine's sole user and no other process holds the database's lock.
        """
        path = self.path
        with _lite_refs_lock:
            if _lite_refs.get(path, 0) != 1:
                return False
            try:
                from milvus_lite.server_manager import server_manager_instance
            except ImportError:
                return False
            server_manager_instance.release_server(path)
        if _lite_lock_held_elsewhere(Path(path)):
            return False
        log.warning("Milvus Lite did not start for %s (%s); starting it once more", path, exc)
        return True

    def release(self) -> None:
        """Let go of the file; the last store of it in this process stops the engine."""
        if not self._claimed:
            return
        self._claimed = False
        path = self.path
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
            # Stops the engine process and releases the lock file.
            server_manager_instance.release_server(path)

    def close(self) -> None:
        """Close the client, then release the file."""
        client, self.client = self.client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing must not fail: the lock release below matters more
                log.warning("closing the Milvus client failed", exc_info=True)
        self.release()

    def revive(self, on_restart: Callable[[], None]) -> bool:
        """Start the engine again if its process died; True when it was restarted.

        The engine is a child process: it exits on some failures (a full disk), and every
        later call would fail until the bot restarted. `on_restart` runs once the new client is
        in place: the new engine has every collection released.
        """
        if not self._claimed:
            return False
        path = self.path
        try:
            from milvus_lite.server_manager import server_manager_instance
        except ImportError:
            return False
        with self._revive_lock:
            server = server_manager_instance._servers.get(path)
            process = getattr(server, "_p", None)
            if process is None or process.poll() is None:
                # Running: the failure was something else, unless another thread restarted
                # it since this client was made.
                return self.client is not None and self._engine is not server
            log.warning(
                "the Milvus Lite engine of %s exited (%s): restarting it", path, process.returncode
            )
            server_manager_instance.release_server(path)
            from pymilvus import MilvusClient

            old, self.client = self.client, MilvusClient(uri=path, timeout=_LITE_START_TIMEOUT)
            self._engine = server_manager_instance._servers.get(path)
            on_restart()
            if old is not None:
                try:
                    old.close()
                except Exception:
                    log.debug("closing the client of the exited engine failed", exc_info=True)
        return True

    # ------------------------------------------------------------------ a full disk

    def keep_reserve(self) -> None:
        """Hold RESERVE_BYTES beside the database while the disk has room for them."""
        reserve = self.reserve
        if reserve.exists():
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

    def release_reserve(self) -> bool:
        """Free the reserve; True when there was one to free."""
        if not self.reserve.exists():
            return False
        log.warning("disk full: releasing the %d-byte reserve to drop a version", RESERVE_BYTES)
        self.reserve.unlink(missing_ok=True)
        return True

    def check_written(self, what: str) -> None:
        """A write on a (nearly) full disk fails, even where the engine said it worked.

        Lite 2.5 acknowledges inserts whose BM25 statistics it could not write on a full disk
        (only its log says so): such a version must never be published.
        """
        if self.disk_full():
            raise StoreFullError(detail=f"{what}: the disk under {self.path} is full")

    def disk_full(self) -> bool:
        """After a failed call: is the database's disk (nearly) full?

        Lite 2.5 answers a full disk with "internal error" only (its log says "database or
        disk is full"), so the disk itself is asked.
        """
        try:
            return shutil.disk_usage(self.reserve.parent).free < RESERVE_BYTES
        except OSError:
            return False


class LivePointer:
    """Which collection version an alias names on Lite, which has no aliases: a file beside the
    database (`kb.db.<alias>.live`) holding the collection's name, replaced in one step."""

    def __init__(self, db_path: str, alias: str) -> None:
        self.path = Path(f"{db_path}.{alias}{LIVE_SUFFIX}")

    def read(self) -> str | None:
        """The collection it names; None before the first publish."""
        try:
            return self.path.read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(detail=f"cannot read the live pointer {self.path}: {exc}") from exc

    def write(self, collection: str) -> None:
        _write_atomically(self.path, collection + "\n")

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


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


def _lite_lock_held_elsewhere(db_path: Path) -> bool:
    """True when another process holds the Lite database's lock file (a POSIX lockf lock).

    Only call it while this process does not serve `db_path` itself: closing any descriptor of
    a POSIX-locked file drops the lock this process holds on it.
    """
    lock_file = db_path.parent / f".{db_path.name}.lock"
    if not lock_file.exists():
        return False
    fd = os.open(lock_file, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _lite_engine(path: str) -> object | None:
    """The milvus_lite server object that runs the engine of `path` in this process."""
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        return None
    return server_manager_instance._servers.get(path)


def _write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step: readers see the old content or the new one.

    fsync before the rename and on the folder after it: after a power loss the file holds one
    complete name, never a torn or empty one.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


__all__ = ["LIVE_SUFFIX", "RESERVE_BYTES", "RESERVE_SUFFIX", "LiteEngine", "LivePointer"]
