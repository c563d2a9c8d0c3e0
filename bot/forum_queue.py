"""The forum queue: new help-forum posts wait here for an answer, in the feedback database
(table forum_queue), so neither a burst nor a restart loses one without a trace.

Every new post in a watched forum is queued (bot/cogs/conversations.py) and answered, oldest
first, once an answer slot is free and its poster's cooldown allows: at most
MAX_CONCURRENT_ANSWERS forum answers at once, so posts nobody is watching never crowd out
people waiting on /ask. A post still waiting after FORUM_MAX_WAIT_S, or one that finds
FORUM_MAX_QUEUED posts queued, is left to people: recorded as unanswered (a coverage gap in
/gaps), counted (docsbot_forum_posts_left) and logged. Posts queued before a restart are resumed
once the bot is ready; an answer cut short by a shutdown leaves its post queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from . import metrics

if TYPE_CHECKING:
    from rag_core.config import Settings

    from .answer_path import AnswerPath
    from .feedback import FeedbackStore
    from .feedback.records import QueuedPost

log = logging.getLogger(__name__)

POLL_S = 1.0  # while posts wait: how often a freed slot or an ended cooldown is looked for

# Answers a queued post: True when done with it (answered, refused by the gate, failed, gone),
# False when it found no answer slot after all (it waits again).
AnswerPost = Callable[["QueuedPost"], Awaitable[bool]]


class ForumQueue:
    """The queued forum posts: kept in `store`, started through `path`'s slots and cooldowns,
    answered by `answer`. `start()` once the store is open; `close()` before it closes."""

    def __init__(
        self, settings: Settings, path: AnswerPath, store: FeedbackStore, answer: AnswerPost
    ) -> None:
        self.settings = settings
        self.path = path
        self.store = store
        self.answer = answer
        self._waiting: dict[int, QueuedPost] = {}  # the table's rows by post id, oldest first
        self._answering: dict[int, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Posts queued, those being answered included."""
        return len(self._waiting)

    async def start(self, ready: Callable[[], Awaitable[object]]) -> None:
        """Take up the posts queued before a restart; answer them, and new ones, once `ready()`
        returns (the bot's `wait_until_ready`)."""
        try:
            queued = await self.store.queued_forum_posts()
        except Exception:  # conversations still work; those posts wait for the next start
            log.exception("could not read the forum queue: its posts are not resumed")
            queued = []
        for post in queued:
            self._waiting.setdefault(post.post_id, post)
        if self._waiting:
            log.info("%d forum posts still wait for an answer: resumed", len(self._waiting))
        self._changed()
        self._runner = asyncio.create_task(self._run(ready), name="forum-queue")

    async def close(self) -> None:
        """Stop; answers under way are cancelled and their posts stay queued for the next start."""
        tasks = [t for t in (self._runner, *self._answering.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def add(self, *, post_id: int, guild_id: int | None, user_id: int, question: str) -> None:
        """Queue a new post; left to people at once when FORUM_MAX_QUEUED posts wait already."""
        limit = self.settings.forum_max_queued
        queued = await self.store.queue_forum_post(
            post_id=post_id, guild_id=guild_id, user_id=user_id, question=question, limit=limit
        )
        if queued is None:  # recorded as unanswered instead, by the store
            metrics.observe_forum_left("full")
            log.warning(
                "forum post %s left to people: %d posts wait for an answer already "
                "(FORUM_MAX_QUEUED)",
                post_id,
                limit,
            )
            return
        self._waiting.setdefault(post_id, queued)
        self._changed()

    # -- the loop ---------------------------------------------------------------------------------

    def _changed(self) -> None:
        metrics.set_forum_queue_depth(len(self._waiting))
        self._wake.set()

    async def _run(self, ready: Callable[[], Awaitable[object]]) -> None:
        await ready()
        while True:
            self._wake.clear()
            try:
                await self._round(time.time())
            except Exception:  # e.g. the database stayed locked: the next round tries again
                log.exception("the forum queue could not go through its posts")
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns when the wake-up and
            # close()'s cancel come together (an answer task cancelled by close() sets _wake as
            # it ends), and the loop then waited forever, hanging the shutdown.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S if self._waiting else None):
                    await self._wake.wait()

    async def _round(self, now: float) -> None:
        """Leave the posts that waited too long to people; start those that may start."""
        for post in list(self._waiting.values()):
            if post.post_id in self._answering:
                continue
            if now - post.queued_at >= self.settings.forum_max_wait_s:
                await self._leave(post, now - post.queued_at)
            elif now - post.queued_at < self.settings.forum_grace_s:
                continue  # helpers have the first word
            elif self._slot_free() and self.path.take_cooldown(post.user_id) is None:
                task = asyncio.create_task(self._answer(post), name=f"forum-post-{post.post_id}")
                self._answering[post.post_id] = task

    def _slot_free(self) -> bool:
        queue = self.path.queue
        if self.path.stopped:  # shutting down: what waits, waits for the next start
            return False
        return len(self._answering) < queue.slots and not queue.full()

    async def _answer(self, post: QueuedPost) -> None:
        done = True
        try:
            done = await self.answer(post)
        except Exception:
            log.exception("the answer to forum post %s failed", post.post_id)
        finally:  # cancelled (a shutdown): the post stays queued for the next start
            self._answering.pop(post.post_id, None)
            self._wake.set()
        if not done:
            return
        self._waiting.pop(post.post_id, None)
        self._changed()
        try:
            await self.store.unqueue_forum_post(post.post_id)
        except Exception:  # the next start finds it answered (or tries once more)
            log.exception("could not take forum post %s out of the queue", post.post_id)

    async def _leave(self, post: QueuedPost, waited: float) -> None:
        if await self.store.leave_forum_post(post.post_id):
            metrics.observe_forum_left("waited")
            log.warning(
                "forum post %s left to people: no answer slot in %.0f s (FORUM_MAX_WAIT_S)",
                post.post_id,
                waited,
            )
        self._waiting.pop(post.post_id, None)
        self._changed()
