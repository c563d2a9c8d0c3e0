"""The records the feedback database hands out: answers, their sources, conversations, votes,
flags, stale answers, verified answers, candidate answers and queued forum posts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

GOOD, FLAG = 1, -1  # the two votes: 👍 and 👎
REVIEW_STATUSES = ("corrected", "fine", "dismissed")  # a moderator's verdict on a flag


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One cited source as shown under an answer."""

    n: int
    title: str
    url: str
    score: float | None = None
    similarity: float | None = None


@dataclass(frozen=True, slots=True)
class AnswerRecord:
    id: int
    message_id: int
    guild_id: int | None
    channel_id: int
    user_id: int
    question: str
    answer: str
    sources: tuple[SourceRecord, ...]
    model: str
    refused: bool
    created_at: datetime
    latency_ms: int | None
    review_message_id: int | None
    low_support: bool = False

    @property
    def jump_url(self) -> str:
        """The Discord link to the answer's message."""
        return message_link(self.guild_id, self.channel_id, self.message_id)


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """One answered question of a conversation, oldest first."""

    position: int
    answer_id: int
    question: str
    answer: str
    standalone: str  # the question retrieval used


@dataclass(frozen=True, slots=True)
class Conversation:
    id: int
    guild_id: int | None
    channel_id: int
    thread_id: int | None
    user_id: int
    turns: tuple[TurnRecord, ...]


@dataclass(frozen=True, slots=True)
class QueuedPost:
    """A new help-forum post waiting for an answer slot (bot/forum_queue.py)."""

    post_id: int  # the post, a thread; its first message has the same id
    guild_id: int | None
    user_id: int  # the poster
    question: str  # the post's title and first message
    queued_at: float  # unix seconds


@dataclass(frozen=True, slots=True)
class VoteChange:
    """What a vote did: `post_review_card` is True for exactly one flag per answer."""

    answer_id: int
    previous: int | None  # the user's vote before, if any
    vote: int
    flags: int  # 👎 votes on the answer now
    good: int  # 👍 votes on the answer now
    post_review_card: bool

    @property
    def changed(self) -> bool:
        return self.previous != self.vote


@dataclass(frozen=True, slots=True)
class FlaggedAnswer:
    answer: AnswerRecord
    flags: int
    good: int
    last_flagged_at: datetime


@dataclass(frozen=True, slots=True)
class StaleAnswer:
    """An answer whose cited passages changed, and the messages it was posted as."""

    answer_id: int
    guild_id: int | None
    channel_id: int
    message_ids: tuple[int, ...]  # oldest first: the last one carries the footer
    stale_at: datetime


@dataclass(frozen=True, slots=True)
class VerifiedRecord:
    """A moderator's answer to a question, as the feedback database keeps it."""

    id: int
    answer_id: int | None
    guild_id: int | None
    question: str
    answer: str
    message_link: str
    created_by: int
    created_at: datetime
    removed_at: datetime | None = None
    answered_by: str = ""  # a community member's answer the moderators adopted: their name


@dataclass(frozen=True, slots=True)
class Candidate:
    """A person's answer proposed to the moderators as a verified answer."""

    id: int
    message_id: int  # the person's answer
    guild_id: int | None
    channel_id: int
    author_id: int
    author_name: str
    question: str
    answer: str
    reason: str  # "solved" (a solved forum post) or "saved" (a helper's save reaction)
    proposed_by: int
    created_at: datetime
    card_message_id: int | None = None
    status: str | None = None  # None while open, "added" or "dismissed"
    reviewed_by: int | None = None
    verified_id: int | None = None

    @property
    def jump_url(self) -> str:
        return message_link(self.guild_id, self.channel_id, self.message_id)


def message_link(guild_id: int | None, channel_id: int, message_id: int) -> str:
    return f"{guild_links(guild_id)}{channel_id}/{message_id}"


def guild_links(guild_id: int | None) -> str:
    """How the link of every message in `guild_id` (None: a DM) starts."""
    return f"https://discord.com/channels/{guild_id or '@me'}/"
