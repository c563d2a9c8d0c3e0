"""FeedbackStore: reads and writes the feedback database (answers the bot gave, the
conversations they belong to, 👍/👎 votes on them, moderator reviews, verified answers).

One SQLite file (default `data_dir/feedback.db`) in WAL mode. A single connection is shared
under a lock and used from worker threads, so async callers never block the event loop and
every write is one short transaction (a crash loses at most the one in progress).

Another process may hold the database (a backup, an admin's long transaction): SQLite waits
`busy_timeout` seconds for it, and each operation is then retried with exponential backoff
(on the event loop's timer, not in a thread) until `patience` seconds have passed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, fields
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TextIO, TypeVar

from rag_core.quality.gaps import AskedQuestion

from .records import (
    FLAG,
    GOOD,
    REVIEW_STATUSES,
    AnswerRecord,
    Candidate,
    Conversation,
    FlaggedAnswer,
    QueuedPost,
    SourceRecord,
    StaleAnswer,
    TurnRecord,
    VerifiedRecord,
    VoteChange,
)
from .schema import migrate

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

DEFAULT_FILENAME = "feedback.db"
BUSY_TIMEOUT_S = 10.0  # SQLite's own wait for a lock, per attempt
PATIENCE_S = 60.0  # retrying a busy database gives up after about this long
_FIRST_RETRY_S, _MAX_RETRY_S = 0.05, 5.0
# A turn reservation older than this was left behind by a process that stopped mid-answer.
RESERVATION_TTL_S = 3600.0

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_R = TypeVar("_R", bound="DataclassInstance")


class FeedbackStoreClosed(RuntimeError):
    """The store was used after close()."""


def stale_answer_ids(cited: Mapping[int, Collection[str]], present: Collection[str]) -> list[int]:
    """The answers (of `cited`: answer id -> its cited chunk hashes) citing a hash that is not
    in `present`, the hashes the live index still has."""
    return sorted(a for a, hashes in cited.items() if any(h not in present for h in hashes))


def default_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / DEFAULT_FILENAME


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _check_vote(vote: int) -> None:
    if vote not in (GOOD, FLAG):
        raise ValueError(f"vote must be {GOOD} or {FLAG}, not {vote!r}")


_ANSWER_COLUMNS = (
    "a.id, a.message_id, a.guild_id, a.channel_id, a.user_id, a.question, a.answer, a.sources, "
    "a.model, a.refused, a.created_at, a.latency_ms, a.review_message_id, a.low_support"
)
# Flag and good counts per answer, for answers with at least one flag.
_FLAGGED_SQL = f"""
    SELECT {_ANSWER_COLUMNS},
           SUM(v.vote = -1) AS flags, SUM(v.vote = 1) AS good,
           MAX(CASE WHEN v.vote = -1 THEN v.created_at END) AS last_flag
    FROM answers a JOIN votes v ON v.answer_id = a.id
    WHERE (:guild IS NULL OR a.guild_id = :guild)
    GROUP BY a.id
    HAVING flags > 0
"""


def _record(cls: type[_R], row: sqlite3.Row, **converted: Any) -> _R:
    """A `cls` from `row`: each field is the column of its name, or its value in `converted`."""
    columns = {f.name: row[f.name] for f in fields(cls) if f.name not in converted}
    return cls(**columns, **converted)


def _answer(row: sqlite3.Row) -> AnswerRecord:
    return _record(
        AnswerRecord,
        row,
        sources=tuple(SourceRecord(**s) for s in json.loads(row["sources"])),
        refused=bool(row["refused"]),
        created_at=_dt(row["created_at"]),
        low_support=bool(row["low_support"]),
    )


def _verified(row: sqlite3.Row) -> VerifiedRecord:
    return _record(
        VerifiedRecord,
        row,
        created_at=_dt(row["created_at"]),
        removed_at=_dt(row["removed_at"]) if row["removed_at"] is not None else None,
    )


def _candidate(row: sqlite3.Row) -> Candidate:
    return _record(Candidate, row, created_at=_dt(row["created_at"]))


class FeedbackStore:
    """Answers and votes in SQLite; every public method is async and runs in a worker thread.

    Open with `FeedbackStore.open(path)` (or `with`/`async with` it) and close with `close()`.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        clock: Callable[[], float],
        patience: float = PATIENCE_S,
    ) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.Lock()  # one connection, one statement sequence at a time
        self.path = path
        self._clock = clock
        self.patience = patience

    # -- lifecycle ----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = BUSY_TIMEOUT_S,
        patience: float = PATIENCE_S,
    ) -> FeedbackStore:
        """Open (creating or migrating) the database at `path`.

        `busy_timeout`: how long SQLite waits for another connection's lock in one attempt;
        `patience`: how long an operation keeps retrying a locked database before it raises.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves; check_same_thread=False: the
        # lock, not the thread, keeps use of the connection serial.
        conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.row_factory = sqlite3.Row
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot enable WAL on {path} (got {mode})")
            # NORMAL is durable against application crashes in WAL mode; only a power loss can
            # drop the last commits, which is fine for feedback.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            with _transaction(conn):
                migrate(conn)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path, clock, patience)

    def close(self) -> None:
        """Close the connection (waits for an operation in progress); idempotent."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.close)

    # -- plumbing -----------------------------------------------------------------------------

    async def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `fn` in a worker thread, retrying while another connection holds the lock."""
        deadline = time.monotonic() + self.patience
        delay = _FIRST_RETRY_S
        attempt = 1
        while True:
            try:
                return await asyncio.to_thread(self._locked, fn)
            except sqlite3.OperationalError as exc:
                left = deadline - time.monotonic()
                if not is_busy(exc) or left <= 0:
                    raise
                log.warning(
                    "feedback database is locked by another connection (attempt %d); "
                    "retrying in %.2f s",
                    attempt,
                    min(delay, left),
                )
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, _MAX_RETRY_S)
                attempt += 1

    def _locked(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            if self._conn is None:
                raise FeedbackStoreClosed("the feedback store is closed")
            return fn(self._conn)

    # -- answers ------------------------------------------------------------------------------

    async def record_answer(
        self,
        *,
        message_id: int,
        channel_id: int,
        user_id: int,
        question: str,
        answer: str,
        guild_id: int | None = None,
        sources: Sequence[SourceRecord] = (),
        model: str = "",
        refused: bool = False,
        latency_ms: int | None = None,
        extra_message_ids: Sequence[int] = (),
        low_support: bool = False,
        cited_hashes: Collection[str] = (),
    ) -> int:
        """Store an answer posted as `message_id` (and any continuation messages); its id.

        `cited_hashes`: the content hashes of the passages it cites (see `cited_since`).
        Raises ValueError if one of the messages is already recorded.
        """
        sources_json = json.dumps([asdict(s) for s in sources], ensure_ascii=False)
        hashes_json = json.dumps(sorted({h for h in cited_hashes if h}))
        now = self._clock()

        def run(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                try:
                    cur = conn.execute(
                        "INSERT INTO answers (message_id, guild_id, channel_id, user_id, "
                        "question, answer, sources, model, refused, created_at, latency_ms, "
                        "low_support, cited_hashes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            message_id,
                            guild_id,
                            channel_id,
                            user_id,
                            question,
                            answer,
                            sources_json,
                            model,
                            int(refused),
                            now,
                            latency_ms,
                            int(low_support),
                            hashes_json,
                        ),
                    )
                    answer_id = cur.lastrowid
                    assert answer_id is not None
                    conn.executemany(
                        "INSERT INTO answer_messages (message_id, answer_id) VALUES (?, ?)",
                        [(m, answer_id) for m in dict.fromkeys([message_id, *extra_message_ids])],
                    )
                except sqlite3.IntegrityError as e:
                    raise ValueError(f"message {message_id} is already recorded") from e
                return answer_id

        return await self._call(run)

    async def answer_by_message(self, message_id: int) -> AnswerRecord | None:
        """The answer that `message_id` (any of its parts) belongs to."""

        def run(conn: sqlite3.Connection) -> AnswerRecord | None:
            row = conn.execute(
                f"SELECT {_ANSWER_COLUMNS} FROM answer_messages m "
                "JOIN answers a ON a.id = m.answer_id WHERE m.message_id = ?",
                (message_id,),
            ).fetchone()
            return _answer(row) if row else None

        return await self._call(run)

    # -- stale answers ------------------------------------------------------------------------

    async def cited_since(self, since: float) -> dict[int, frozenset[str]]:
        """Answers given at or after `since` (unix seconds) and not stale yet, with the content
        hashes of the passages they cite (refusals cite nothing)."""

        def run(conn: sqlite3.Connection) -> dict[int, frozenset[str]]:
            rows = conn.execute(
                "SELECT id, cited_hashes FROM answers WHERE created_at >= ? AND refused = 0 "
                "AND stale_at IS NULL AND cited_hashes != '[]'",
                (since,),
            ).fetchall()
            return {r["id"]: frozenset(json.loads(r["cited_hashes"])) for r in rows}

        return await self._call(run)

    async def mark_stale(self, answer_ids: Collection[int]) -> list[StaleAnswer]:
        """Mark `answer_ids` stale now (those not stale already); the ones marked, each with
        the messages it was posted as."""
        now = self._clock()
        ids = sorted(set(answer_ids))

        def run(conn: sqlite3.Connection) -> list[StaleAnswer]:
            marked: list[StaleAnswer] = []
            with _transaction(conn):
                for answer_id in ids:
                    cur = conn.execute(
                        "UPDATE answers SET stale_at = ? WHERE id = ? AND stale_at IS NULL",
                        (now, answer_id),
                    )
                    if cur.rowcount == 1:
                        marked.append(_posted(conn, answer_id, now))
            return marked

        return await self._call(run)

    async def recent_questions(
        self, since: float, guild_id: int | None, limit: int = 1000
    ) -> list[tuple[int, str]]:
        """(answer id, question) of the answers given at or after `since` in `guild_id` (None:
        every server) that no correction has reached yet, newest first."""

        def run(conn: sqlite3.Connection) -> list[tuple[int, str]]:
            rows = conn.execute(
                "SELECT id, question FROM answers WHERE created_at >= :since "
                "AND corrected_at IS NULL AND (:guild IS NULL OR guild_id = :guild) "
                "ORDER BY created_at DESC LIMIT :limit",
                {"since": since, "guild": guild_id, "limit": limit},
            ).fetchall()
            return [(r["id"], r["question"]) for r in rows]

        return await self._call(run)

    async def mark_corrected(
        self, answer_ids: Collection[int], verified_id: int
    ) -> list[StaleAnswer]:
        """Mark `answer_ids` as reached by verified answer `verified_id` (those not marked
        already); the ones marked, each with the messages it was posted as."""
        now = self._clock()
        ids = sorted(set(answer_ids))

        def run(conn: sqlite3.Connection) -> list[StaleAnswer]:
            marked: list[StaleAnswer] = []
            with _transaction(conn):
                for answer_id in ids:
                    cur = conn.execute(
                        "UPDATE answers SET corrected_at = ?, corrected_by = ? "
                        "WHERE id = ? AND corrected_at IS NULL",
                        (now, verified_id, answer_id),
                    )
                    if cur.rowcount == 1:
                        marked.append(_posted(conn, answer_id, now))
            return marked

        return await self._call(run)

    # -- coverage gaps ------------------------------------------------------------------------

    async def gap_questions(self, since: float, guild_id: int | None = None) -> list[AskedQuestion]:
        """Questions asked at or after `since` that the bot refused ("not in the docs") or whose
        answer was flagged (unless a moderator found it fine or dismissed the flag), oldest
        first. A follow-up counts as the standalone question retrieval used."""

        def run(conn: sqlite3.Connection) -> list[AskedQuestion]:
            rows = conn.execute(
                "SELECT * FROM ("
                "SELECT COALESCE(NULLIF(t.standalone, ''), a.question) AS question, "
                "a.created_at, a.refused, "
                "EXISTS (SELECT 1 FROM votes v WHERE v.answer_id = a.id AND v.vote = -1) "
                "AND COALESCE(a.review_status, '') NOT IN ('fine', 'dismissed') AS flagged "
                "FROM answers a LEFT JOIN turns t ON t.answer_id = a.id "
                "WHERE a.created_at >= :since AND (:guild IS NULL OR a.guild_id = :guild) "
                "AND (a.refused = 1 OR flagged) "
                "UNION ALL SELECT question, created_at, 1, 0 FROM unanswered "
                "WHERE created_at >= :since AND (:guild IS NULL OR guild_id = :guild)"
                ") ORDER BY created_at",
                {"since": since, "guild": guild_id},
            ).fetchall()
            return [
                AskedQuestion(
                    r["question"], r["created_at"], bool(r["refused"]), bool(r["flagged"])
                )
                for r in rows
            ]

        return await self._call(run)

    async def record_unanswered(
        self, *, guild_id: int | None, channel_id: int, user_id: int, question: str
    ) -> None:
        """A question the bot left to people without a reply (a forum post the docs do not
        cover): not an answer, but a coverage gap."""
        now = self._clock()

        def run(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                _insert_unanswered(conn, guild_id, channel_id, user_id, question, now)

        await self._call(run)

    # -- the forum queue ----------------------------------------------------------------------

    async def queue_forum_post(
        self, *, post_id: int, guild_id: int | None, user_id: int, question: str, limit: int
    ) -> QueuedPost | None:
        """Queue a new forum post for an answer (one queued already stays as it is); None when
        `limit` posts are queued: then it is recorded as unanswered instead, in one transaction."""
        now = self._clock()

        def run(conn: sqlite3.Connection) -> QueuedPost | None:
            with _transaction(conn):
                if not _queued(conn, post_id):
                    if conn.execute("SELECT COUNT(*) FROM forum_queue").fetchone()[0] >= limit:
                        _insert_unanswered(conn, guild_id, post_id, user_id, question, now)
                        return None
                    conn.execute(
                        "INSERT INTO forum_queue (post_id, guild_id, user_id, question, queued_at)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (post_id, guild_id, user_id, question, now),
                    )
                row = conn.execute(
                    "SELECT * FROM forum_queue WHERE post_id = ?", (post_id,)
                ).fetchone()
                return _record(QueuedPost, row)

        return await self._call(run)

    async def queued_forum_posts(self) -> list[QueuedPost]:
        """The forum posts waiting for an answer, oldest first."""

        def run(conn: sqlite3.Connection) -> list[QueuedPost]:
            rows = conn.execute("SELECT * FROM forum_queue ORDER BY queued_at, post_id").fetchall()
            return [_record(QueuedPost, r) for r in rows]

        return await self._call(run)

    async def unqueue_forum_post(self, post_id: int) -> None:
        """The post was answered (or left by the gate, or is gone): out of the queue."""

        def run(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute("DELETE FROM forum_queue WHERE post_id = ?", (post_id,))

        await self._call(run)

    async def leave_forum_post(self, post_id: int) -> bool:
        """Move a queued post to unanswered (left to people: a coverage gap) in one transaction;
        False when it was not queued."""
        now = self._clock()

        def run(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                row = _queued(conn, post_id)
                if row is None:
                    return False
                conn.execute("DELETE FROM forum_queue WHERE post_id = ?", (post_id,))
                _insert_unanswered(
                    conn, row["guild_id"], post_id, row["user_id"], row["question"], now
                )
                return True

        return await self._call(run)

    async def claim_reminders(self, before: float, since: float) -> list[tuple[int | None, int]]:
        """The posts left to people between `since` and `before` (unix seconds) whose helpers
        were not reminded yet, as (guild id, post id), marked reminded in the same transaction:
        each post is reminded of once, by one process."""
        now = self._clock()

        def run(conn: sqlite3.Connection) -> list[tuple[int | None, int]]:
            with _transaction(conn):
                rows = conn.execute(
                    "SELECT id, guild_id, channel_id FROM unanswered WHERE reminded_at IS NULL "
                    "AND created_at <= ? AND created_at > ? ORDER BY id LIMIT 50",
                    (before, since),
                ).fetchall()
                conn.executemany(
                    "UPDATE unanswered SET reminded_at = ? WHERE id = ?",
                    [(now, r["id"]) for r in rows],
                )
                return [(r["guild_id"], r["channel_id"]) for r in rows]

        return await self._call(run)

    # -- conversations ------------------------------------------------------------------------

    async def record_turn(
        self,
        answer_id: int,
        *,
        standalone: str,
        conversation_id: int | None = None,
        thread_id: int | None = None,
        reservation: int | None = None,
    ) -> int:
        """Add recorded answer `answer_id` as the next turn of a conversation; its id.

        Without `conversation_id` a new conversation starts with it, in the answer's channel
        (and `thread_id`, when the bot started a thread for it). An answer already in a
        conversation stays where it is. `reservation` (from `reserve_turn`) becomes this turn.
        """
        now = self._clock()

        def run(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                if reservation is not None:
                    conn.execute("DELETE FROM turn_reservations WHERE id = ?", (reservation,))
                done = conn.execute(
                    "SELECT conversation_id FROM turns WHERE answer_id = ?", (answer_id,)
                ).fetchone()
                if done is not None:
                    return int(done[0])  # recorded already (a reply raced the /ask that made it)
                conversation = conversation_id
                if conversation is None:
                    row = conn.execute(
                        "SELECT guild_id, channel_id, user_id FROM answers WHERE id = ?",
                        (answer_id,),
                    ).fetchone()
                    if row is None:
                        raise ValueError(f"answer {answer_id} is not recorded")
                    cur = conn.execute(
                        "INSERT INTO conversations (guild_id, channel_id, thread_id, user_id, "
                        "created_at) VALUES (?, ?, ?, ?, ?)",
                        (row["guild_id"], row["channel_id"], thread_id, row["user_id"], now),
                    )
                    conversation = cur.lastrowid
                    assert conversation is not None
                position = conn.execute(
                    "SELECT COALESCE(MAX(position) + 1, 0) FROM turns WHERE conversation_id = ?",
                    (conversation,),
                ).fetchone()[0]
                conn.execute(
                    "INSERT INTO turns (answer_id, conversation_id, position, standalone) "
                    "VALUES (?, ?, ?, ?)",
                    (answer_id, conversation, position, standalone),
                )
                return conversation

        return await self._call(run)

    async def reserve_turn(self, conversation_id: int, limit: int) -> int | None:
        """Take a turn of the conversation for an answer about to start: the reservation's id,
        or None when its stored turns and the answers under way reach `limit`.

        Checked and taken in one transaction, so concurrent messages cannot pass the limit.
        Pass it to `record_turn`, or give it back with `release_turn`."""
        now = self._clock()

        def run(conn: sqlite3.Connection) -> int | None:
            with _transaction(conn):
                conn.execute(
                    "DELETE FROM turn_reservations WHERE created_at < ?", (now - RESERVATION_TTL_S,)
                )
                taken = conn.execute(
                    "SELECT (SELECT COUNT(*) FROM turns WHERE conversation_id = :c) + "
                    "(SELECT COUNT(*) FROM turn_reservations WHERE conversation_id = :c)",
                    {"c": conversation_id},
                ).fetchone()[0]
                if taken >= limit:
                    return None
                cur = conn.execute(
                    "INSERT INTO turn_reservations (conversation_id, created_at) VALUES (?, ?)",
                    (conversation_id, now),
                )
                return cur.lastrowid

        return await self._call(run)

    async def release_turn(self, reservation: int) -> None:
        """Give back a reservation whose answer did not come (a no-op once it became a turn)."""

        def run(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute("DELETE FROM turn_reservations WHERE id = ?", (reservation,))

        await self._call(run)

    async def claim_too_long(self, conversation_id: int) -> bool:
        """Whether to say now that the conversation is too long: True once per conversation."""
        now = self._clock()

        def run(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                cur = conn.execute(
                    "UPDATE conversations SET too_long_at = ? WHERE id = ? AND too_long_at IS NULL",
                    (now, conversation_id),
                )
                return cur.rowcount == 1

        return await self._call(run)

    async def set_conversation_thread(self, conversation_id: int, thread_id: int) -> None:
        """The bot started `thread_id` for the conversation: messages there continue it."""

        def run(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute(
                    "UPDATE conversations SET thread_id = ? WHERE id = ?",
                    (thread_id, conversation_id),
                )

        await self._call(run)

    async def conversation(
        self, *, thread_id: int | None = None, message_id: int | None = None
    ) -> Conversation | None:
        """The conversation the bot's thread `thread_id` holds, or that the answer posted as
        `message_id` (any of its parts) belongs to; with its turns, oldest first."""

        def run(conn: sqlite3.Connection) -> Conversation | None:
            if thread_id is not None:
                row = conn.execute(
                    "SELECT * FROM conversations WHERE thread_id = ?", (thread_id,)
                ).fetchone()
            else:
                row = conn.execute(
                    "SELECT c.* FROM answer_messages m JOIN turns t ON t.answer_id = m.answer_id "
                    "JOIN conversations c ON c.id = t.conversation_id WHERE m.message_id = ?",
                    (message_id,),
                ).fetchone()
            if row is None:
                return None
            turns = conn.execute(
                "SELECT t.position, t.answer_id, a.question, a.answer, t.standalone FROM turns t "
                "JOIN answers a ON a.id = t.answer_id WHERE t.conversation_id = ? "
                "ORDER BY t.position",
                (row["id"],),
            ).fetchall()
            return _record(Conversation, row, turns=tuple(TurnRecord(*t) for t in turns))

        return await self._call(run)

    # -- votes --------------------------------------------------------------------------------

    async def set_vote(self, message_id: int, user_id: int, vote: int) -> VoteChange | None:
        """Record `user_id`'s vote (+1/-1), replacing an older one; None if not an answer."""
        _check_vote(vote)
        now = self._clock()

        def run(conn: sqlite3.Connection) -> VoteChange | None:
            with _transaction(conn):
                answer_id = _answer_id(conn, message_id)
                if answer_id is None:
                    return None
                row = conn.execute(
                    "SELECT vote FROM votes WHERE answer_id = ? AND user_id = ?",
                    (answer_id, user_id),
                ).fetchone()
                previous = row["vote"] if row else None
                if previous != vote:  # an unchanged vote keeps its original time
                    conn.execute(
                        "INSERT INTO votes (answer_id, user_id, vote, created_at) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (answer_id, user_id) "
                        "DO UPDATE SET vote = excluded.vote, created_at = excluded.created_at",
                        (answer_id, user_id, vote, now),
                    )
                post_card = False
                if vote == FLAG:
                    # Claimed inside this transaction, so concurrent flags yield a single card.
                    post_card = (
                        conn.execute(
                            "UPDATE answers SET review_claimed_at = ? "
                            "WHERE id = ? AND review_claimed_at IS NULL",
                            (now, answer_id),
                        ).rowcount
                        == 1
                    )
                flags, good = _counts(conn, answer_id)
                return VoteChange(answer_id, previous, vote, flags, good, post_card)

        return await self._call(run)

    async def remove_vote(self, message_id: int, user_id: int, vote: int) -> bool:
        """Withdraw `user_id`'s vote if it is still `vote` (an older, replaced reaction is a
        no-op); True if a vote was removed."""
        _check_vote(vote)

        def run(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                cur = conn.execute(
                    "DELETE FROM votes WHERE user_id = ? AND vote = ? AND answer_id = "
                    "(SELECT answer_id FROM answer_messages WHERE message_id = ?)",
                    (user_id, vote, message_id),
                )
                return cur.rowcount > 0

        return await self._call(run)

    # -- review -------------------------------------------------------------------------------

    async def flagged(self, limit: int = 20, guild_id: int | None = None) -> list[FlaggedAnswer]:
        """Answers with at least one 👎, most recently flagged first."""

        def run(conn: sqlite3.Connection) -> list[FlaggedAnswer]:
            rows = conn.execute(
                _FLAGGED_SQL + " ORDER BY last_flag DESC, a.id DESC LIMIT :limit",
                {"guild": guild_id, "limit": limit},
            ).fetchall()
            return [
                FlaggedAnswer(_answer(r), r["flags"], r["good"], _dt(r["last_flag"])) for r in rows
            ]

        return await self._call(run)

    async def mark_reviewed_card(self, answer_id: int, message_id: int) -> None:
        """Remember the moderator card posted for `answer_id`."""

        def run(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute(
                    "UPDATE answers SET review_message_id = ?, "
                    "review_claimed_at = COALESCE(review_claimed_at, ?) WHERE id = ?",
                    (message_id, self._clock(), answer_id),
                )

        await self._call(run)

    async def release_review_card(self, answer_id: int) -> None:
        """Give back a card claim whose posting failed, so the next flag tries again."""

        def run(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute(
                    "UPDATE answers SET review_claimed_at = NULL "
                    "WHERE id = ? AND review_message_id IS NULL",
                    (answer_id,),
                )

        await self._call(run)

    async def answer_by_id(self, answer_id: int) -> AnswerRecord | None:
        def run(conn: sqlite3.Connection) -> AnswerRecord | None:
            row = conn.execute(
                f"SELECT {_ANSWER_COLUMNS} FROM answers a WHERE a.id = ?", (answer_id,)
            ).fetchone()
            return _answer(row) if row else None

        return await self._call(run)

    async def set_review(self, answer_id: int, status: str, by: int) -> bool:
        """Record a moderator's verdict on an answer; False if there is no such answer."""
        if status not in REVIEW_STATUSES:
            raise ValueError(f"review status must be one of {REVIEW_STATUSES}, not {status!r}")
        now = self._clock()

        def run(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                return _set_review(conn, answer_id, status, by, now)

        return await self._call(run)

    async def golden_answers(self, min_good: int = 2) -> list[AnswerRecord]:
        """Answers the community vouched for: marked fine by a moderator, or 👍 by at least
        `min_good` people and never flagged (refused answers and corrected ones excluded)."""

        def run(conn: sqlite3.Connection) -> list[AnswerRecord]:
            rows = conn.execute(
                f"SELECT {_ANSWER_COLUMNS} FROM answers a "
                "LEFT JOIN votes v ON v.answer_id = a.id "
                "WHERE a.refused = 0 AND COALESCE(a.review_status, '') NOT IN "
                "('corrected', 'dismissed') GROUP BY a.id "
                "HAVING a.review_status = 'fine' OR "
                "(COALESCE(SUM(v.vote = 1), 0) >= ? AND COALESCE(SUM(v.vote = -1), 0) = 0) "
                "ORDER BY a.id",
                (min_good,),
            ).fetchall()
            return [_answer(r) for r in rows]

        return await self._call(run)

    async def export_golden(
        self, path_or_file: str | os.PathLike[str] | TextIO, guild_id: int | None = None
    ) -> int:
        """Write the golden set as eval questions (docs/evaluation.md); the number written.

        Verified answers expect themselves (their Discord link), vouched-for answers the pages
        they cited. The file works as REINDEX_GATE_QUESTIONS and with `rag_core eval`.
        """
        verified = await self.verified(guild_id)
        answers = [
            a
            for a in await self.golden_answers()
            if a.sources and (guild_id is None or a.guild_id == guild_id)
        ]
        records: list[dict[str, Any]] = [
            {
                "id": f"verified-{v.id}",
                "question": v.question,
                "expected_sources": [v.message_link],
                "origin": "verified answer",
            }
            for v in verified
        ]
        records += [
            {
                "id": f"answer-{a.id}",
                "question": a.question,
                "expected_sources": sorted({s.url.split("#", 1)[0] for s in a.sources}),
                "origin": "answer marked good",
            }
            for a in answers
        ]
        await _write_records(path_or_file, records)
        return len(records)

    # -- verified answers ---------------------------------------------------------------------

    async def add_verified(
        self,
        *,
        question: str,
        answer: str,
        message_link: str,
        created_by: int,
        guild_id: int | None = None,
        answer_id: int | None = None,
        answered_by: str = "",
    ) -> VerifiedRecord:
        """Store a moderator's answer (marking the answer it corrects, if any, as corrected);
        `answered_by` names the community member whose answer it is, if it is one's."""
        now = self._clock()

        def run(conn: sqlite3.Connection) -> VerifiedRecord:
            with _transaction(conn):
                cur = conn.execute(
                    "INSERT INTO verified_answers (answer_id, guild_id, question, answer, "
                    "message_link, created_by, created_at, answered_by) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        answer_id,
                        guild_id,
                        question,
                        answer,
                        message_link,
                        created_by,
                        now,
                        answered_by,
                    ),
                )
                if answer_id is not None:
                    _set_review(conn, answer_id, "corrected", created_by, now)
                row = conn.execute(
                    "SELECT * FROM verified_answers WHERE id = ?", (cur.lastrowid,)
                ).fetchone()
                return _verified(row)

        return await self._call(run)

    async def verified(
        self, guild_id: int | None = None, *, include_removed: bool = False
    ) -> list[VerifiedRecord]:
        """Verified answers (of one guild, or all), oldest first."""

        def run(conn: sqlite3.Connection) -> list[VerifiedRecord]:
            rows = conn.execute(
                "SELECT * FROM verified_answers WHERE (:guild IS NULL OR guild_id = :guild) "
                "AND (:all OR removed_at IS NULL) ORDER BY id",
                {"guild": guild_id, "all": int(include_removed)},
            ).fetchall()
            return [_verified(r) for r in rows]

        return await self._call(run)

    async def remove_verified(
        self, verified_id: int, by: int, guild_id: int | None = None
    ) -> VerifiedRecord | None:
        """Mark a verified answer removed; None if there is none (in `guild_id`) to remove."""
        now = self._clock()

        def run(conn: sqlite3.Connection) -> VerifiedRecord | None:
            with _transaction(conn):
                cur = conn.execute(
                    "UPDATE verified_answers SET removed_at = :now, removed_by = :by "
                    "WHERE id = :id AND removed_at IS NULL "
                    "AND (:guild IS NULL OR guild_id = :guild)",
                    {"now": now, "by": by, "id": verified_id, "guild": guild_id},
                )
                if cur.rowcount != 1:
                    return None
                row = conn.execute(
                    "SELECT * FROM verified_answers WHERE id = ?", (verified_id,)
                ).fetchone()
                return _verified(row)

        return await self._call(run)

    async def export_jsonl(
        self, path_or_file: str | os.PathLike[str] | TextIO, guild_id: int | None = None
    ) -> int:
        """Write every flagged answer as one JSON object per line; the number written.

        Each line has what an eval question needs (`expected_sources`, `notes` left to fill in);
        a follow-up also carries its `conversation` (the earlier turns) and `standalone` question.
        A path is written atomically: a reader never sees half a file.
        """

        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(_FLAGGED_SQL + " ORDER BY a.id", {"guild": guild_id}).fetchall()
            return [{**_export_row(r), **_conversation_context(conn, r["id"])} for r in rows]

        records = await self._call(run)
        await _write_records(path_or_file, records)
        return len(records)

    # -- hand-offs to helpers -------------------------------------------------------------------

    async def claim_handoff(
        self,
        *,
        answer_id: int,
        guild_id: int | None,
        channel_id: int,
        user_id: int,
        window_s: float,
        per_user: int,
        per_channel: int,
    ) -> Literal["ok", "done", "user", "channel"]:
        """Record a hand-off of answer `answer_id` if the limits allow it, in one transaction:
        "ok"; "done" (this answer was handed off already); "user" or "channel" (that one's
        limit in the last `window_s` is reached)."""
        now = self._clock()
        since = now - window_s

        def run(conn: sqlite3.Connection) -> Literal["ok", "done", "user", "channel"]:
            with _transaction(conn):
                if conn.execute(
                    "SELECT 1 FROM handoffs WHERE answer_id = ?", (answer_id,)
                ).fetchone():
                    return "done"
                (by_user,) = conn.execute(
                    "SELECT COUNT(*) FROM handoffs WHERE user_id = ? AND created_at > ?",
                    (user_id, since),
                ).fetchone()
                if by_user >= per_user:
                    return "user"
                (in_channel,) = conn.execute(
                    "SELECT COUNT(*) FROM handoffs WHERE channel_id = ? AND created_at > ?",
                    (channel_id, since),
                ).fetchone()
                if in_channel >= per_channel:
                    return "channel"
                conn.execute(
                    "INSERT INTO handoffs (answer_id, guild_id, channel_id, user_id, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (answer_id, guild_id, channel_id, user_id, now),
                )
                return "ok"

        return await self._call(run)

    async def finish_handoff(self, answer_id: int, message_id: int | None) -> None:
        """The ping for answer `answer_id` was posted as `message_id`; None: it could not be,
        so the hand-off is taken back (the asker may press again)."""

        def run(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                if message_id is None:
                    conn.execute("DELETE FROM handoffs WHERE answer_id = ?", (answer_id,))
                else:
                    conn.execute(
                        "UPDATE handoffs SET message_id = ? WHERE answer_id = ?",
                        (message_id, answer_id),
                    )

        await self._call(run)

    # -- candidates: people's answers proposed as verified answers ---------------------------

    async def propose_candidate(
        self,
        *,
        message_id: int,
        guild_id: int | None,
        channel_id: int,
        author_id: int,
        author_name: str,
        question: str,
        answer: str,
        reason: str,
        proposed_by: int,
    ) -> Candidate | None:
        """Record a proposal; None when that message was proposed before (one card each)."""
        now = self._clock()

        def run(conn: sqlite3.Connection) -> Candidate | None:
            with _transaction(conn):
                cur = conn.execute(
                    "INSERT OR IGNORE INTO candidates (message_id, guild_id, channel_id, "
                    "author_id, author_name, question, answer, reason, proposed_by, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (message_id, guild_id, channel_id, author_id, author_name, question, answer,
                     reason, proposed_by, now),
                )  # fmt: skip
                if not cur.rowcount:
                    return None
                row = conn.execute(
                    "SELECT * FROM candidates WHERE id = ?", (cur.lastrowid,)
                ).fetchone()
                return _candidate(row)

        return await self._call(run)

    async def set_candidate_card(self, candidate_id: int, message_id: int | None) -> None:
        """The moderators' card for the candidate was posted as `message_id`; None: it could
        not be, so the proposal is taken back (a later solve or save may propose it again)."""

        def run(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                if message_id is None:
                    conn.execute("DELETE FROM candidates WHERE id = ?", (candidate_id,))
                else:
                    conn.execute(
                        "UPDATE candidates SET card_message_id = ? WHERE id = ?",
                        (message_id, candidate_id),
                    )

        await self._call(run)

    async def candidate(self, candidate_id: int) -> Candidate | None:
        def run(conn: sqlite3.Connection) -> Candidate | None:
            row = conn.execute("SELECT * FROM candidates WHERE id = ?", (candidate_id,)).fetchone()
            return _candidate(row) if row else None

        return await self._call(run)

    async def settle_candidate(self, candidate_id: int, status: str, by: int) -> bool:
        """Close an open candidate as "added" or "dismissed"; False when it was closed already
        (two moderators pressing at once: the first one wins). An "added" one gets its
        verified answer with `finish_candidate`."""
        if status not in ("added", "dismissed"):
            raise ValueError(f"unknown candidate status {status!r}")

        def run(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                cur = conn.execute(
                    "UPDATE candidates SET status = ?, reviewed_by = ? "
                    "WHERE id = ? AND status IS NULL",
                    (status, by, candidate_id),
                )
                return cur.rowcount == 1

        return await self._call(run)

    async def finish_candidate(self, candidate_id: int, verified_id: int | None) -> None:
        """The added candidate became verified answer `verified_id`; None: adding it failed,
        so the candidate is open again."""

        def run(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                if verified_id is None:
                    conn.execute(
                        "UPDATE candidates SET status = NULL, reviewed_by = NULL WHERE id = ?",
                        (candidate_id,),
                    )
                else:
                    conn.execute(
                        "UPDATE candidates SET verified_id = ? WHERE id = ?",
                        (verified_id, candidate_id),
                    )

        await self._call(run)

    async def stats(self, guild_id: int | None = None) -> dict[str, int]:
        """Counts: answers, refused, low-support answers, flags, good votes, flagged answers,
        stale answers (their cited passages changed in a later reindex), answers a later
        correction reached, questions handed to helpers, people's answers proposed to the
        moderators and those they added as verified answers."""

        def run(conn: sqlite3.Connection) -> dict[str, int]:
            params = {"guild": guild_id}
            where = "WHERE (:guild IS NULL OR a.guild_id = :guild)"
            answers = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(a.refused), 0), COALESCE(SUM(a.low_support), 0), "
                f"COUNT(a.stale_at), COUNT(a.corrected_at) FROM answers a {where}",
                params,
            ).fetchone()
            votes = conn.execute(
                "SELECT COALESCE(SUM(v.vote = -1), 0), COALESCE(SUM(v.vote = 1), 0), "
                "COUNT(DISTINCT CASE WHEN v.vote = -1 THEN v.answer_id END) "
                f"FROM votes v JOIN answers a ON a.id = v.answer_id {where}",
                params,
            ).fetchone()
            (handoffs,) = conn.execute(
                "SELECT COUNT(*) FROM handoffs h WHERE (:guild IS NULL OR h.guild_id = :guild) "
                "AND h.message_id IS NOT NULL",
                params,
            ).fetchone()
            proposed, added = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(c.status = 'added'), 0) FROM candidates c "
                "WHERE (:guild IS NULL OR c.guild_id = :guild)",
                params,
            ).fetchone()
            return {
                "handoffs": handoffs,
                "candidates": proposed,
                "candidates_added": added,
                "answers": answers[0],
                "refused": answers[1],
                "low_support": answers[2],
                "flags": votes[0],
                "good": votes[1],
                "flagged_answers": votes[2],
                "stale": answers[3],
                "corrected": answers[4],
            }

        return await self._call(run)


# -- helpers ----------------------------------------------------------------------------------


def is_busy(exc: BaseException) -> bool:
    """Whether `exc` is SQLite saying another connection holds a lock (worth retrying)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so a read-then-write never hits SQLITE_BUSY
    # halfway through when another process (a second store on the file) writes too.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")  # inside: a failed COMMIT must not leave the transaction open
    except BaseException:
        if conn.in_transaction:  # some errors make SQLite roll back on its own
            conn.execute("ROLLBACK")
        raise


def _posted(conn: sqlite3.Connection, answer_id: int, marked_at: float) -> StaleAnswer:
    """Where answer `answer_id` was posted (for editing its footer), marked at `marked_at`."""
    row = conn.execute(
        "SELECT guild_id, channel_id FROM answers WHERE id = ?", (answer_id,)
    ).fetchone()
    messages = conn.execute(
        "SELECT message_id FROM answer_messages WHERE answer_id = ? ORDER BY message_id",
        (answer_id,),
    ).fetchall()
    return StaleAnswer(
        answer_id, row["guild_id"], row["channel_id"], tuple(m[0] for m in messages), _dt(marked_at)
    )


def _answer_id(conn: sqlite3.Connection, message_id: int) -> int | None:
    row = conn.execute(
        "SELECT answer_id FROM answer_messages WHERE message_id = ?", (message_id,)
    ).fetchone()
    return row["answer_id"] if row else None


def _insert_unanswered(
    conn: sqlite3.Connection,
    guild_id: int | None,
    channel_id: int,
    user_id: int,
    question: str,
    now: float,
) -> None:
    conn.execute(
        "INSERT INTO unanswered (guild_id, channel_id, user_id, question, created_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (guild_id, channel_id, user_id, question, now),
    )


def _queued(conn: sqlite3.Connection, post_id: int) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM forum_queue WHERE post_id = ?", (post_id,)
    ).fetchone()
    return row


def _set_review(conn: sqlite3.Connection, answer_id: int, status: str, by: int, now: float) -> bool:
    """Set an answer's review verdict; False if there is no such answer."""
    cur = conn.execute(
        "UPDATE answers SET review_status = ?, reviewed_by = ?, reviewed_at = ? WHERE id = ?",
        (status, by, now, answer_id),
    )
    return cur.rowcount == 1


def _counts(conn: sqlite3.Connection, answer_id: int) -> tuple[int, int]:
    row = conn.execute(
        "SELECT COALESCE(SUM(vote = -1), 0), COALESCE(SUM(vote = 1), 0) "
        "FROM votes WHERE answer_id = ?",
        (answer_id,),
    ).fetchone()
    return row[0], row[1]


def _export_row(row: sqlite3.Row) -> dict[str, Any]:
    answer = _answer(row)
    return {
        "id": answer.id,
        "question": answer.question,
        "answer": answer.answer,
        "sources": [asdict(s) for s in answer.sources],
        "flags": row["flags"],
        "good": row["good"],
        "refused": answer.refused,
        "low_support": answer.low_support,
        "model": answer.model,
        "asked_at": answer.created_at.isoformat(),
        "guild_id": answer.guild_id,
        "message_link": answer.jump_url,
        # Filled in by a reviewer to turn the flag into an eval question.
        "expected_sources": [],
        "notes": "",
    }


def _conversation_context(conn: sqlite3.Connection, answer_id: int) -> dict[str, Any]:
    """For a follow-up: the turns before it and the question retrieval used; else nothing."""
    turn = conn.execute(
        "SELECT conversation_id, position, standalone FROM turns WHERE answer_id = ?",
        (answer_id,),
    ).fetchone()
    if turn is None or turn["position"] == 0:
        return {}
    earlier = conn.execute(
        "SELECT a.question, a.answer FROM turns t JOIN answers a ON a.id = t.answer_id "
        "WHERE t.conversation_id = ? AND t.position < ? ORDER BY t.position",
        (turn["conversation_id"], turn["position"]),
    ).fetchall()
    return {
        "conversation": [{"question": q, "answer": a} for q, a in earlier],
        "standalone": turn["standalone"],
    }


async def _write_records(
    path_or_file: str | os.PathLike[str] | TextIO, records: list[dict[str, Any]]
) -> None:
    """Write `records` as JSON lines, in a worker thread: a path atomically, a file as it is."""

    def write() -> None:
        if isinstance(path_or_file, str | os.PathLike):
            _write_atomic(Path(path_or_file), records)
        else:
            _write_lines(path_or_file, records)

    await asyncio.to_thread(write)


def _write_lines(file: TextIO, records: list[dict[str, Any]]) -> None:
    for record in records:
        file.write(json.dumps(record, ensure_ascii=False) + "\n")


def _write_atomic(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            _write_lines(f, records)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
