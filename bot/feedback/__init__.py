"""The feedback database: answers the bot gave, conversations, votes and moderator reviews."""

from .records import FLAG, GOOD, AnswerRecord, Conversation, SourceRecord, StaleAnswer, VoteChange
from .store import FeedbackStore, FeedbackStoreClosed, default_path

__all__ = [
    "FLAG",
    "GOOD",
    "AnswerRecord",
    "Conversation",
    "FeedbackStore",
    "FeedbackStoreClosed",
    "SourceRecord",
    "StaleAnswer",
    "VoteChange",
    "default_path",
]
