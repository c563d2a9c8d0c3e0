"""The feedback database's schema: its migrations, and bringing a database up to date."""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 10

# Each entry migrates from version i to i + 1; never edit a released one, append a new one.
MIGRATIONS: list[list[str]] = [
    [
        """
        CREATE TABLE answers (
            id INTEGER PRIMARY KEY,
            message_id INTEGER NOT NULL UNIQUE,  -- the first message of the answer
            guild_id INTEGER,                    -- NULL in DMs
            channel_id INTEGER NOT NULL,
            user_id INTEGER NOT NULL,            -- who asked
            question TEXT NOT NULL,
            answer TEXT NOT NULL,
            sources TEXT NOT NULL DEFAULT '[]',  -- JSON list of {n,title,url,score,similarity}
            model TEXT NOT NULL DEFAULT '',
            refused INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,            -- unix seconds
            latency_ms INTEGER,
            review_claimed_at REAL,              -- set once, by the first flag
            review_message_id INTEGER            -- the moderator card, once posted
        )
        """,
        "CREATE INDEX answers_guild_created ON answers (guild_id, created_at)",
        # Every message an answer was split into, so a vote on any part counts.
        """
        CREATE TABLE answer_messages (
            message_id INTEGER PRIMARY KEY,
            answer_id INTEGER NOT NULL REFERENCES answers (id) ON DELETE CASCADE
        )
        """,
        """
        CREATE TABLE votes (
            answer_id INTEGER NOT NULL REFERENCES answers (id) ON DELETE CASCADE,
            user_id INTEGER NOT NULL,
            vote INTEGER NOT NULL CHECK (vote IN (-1, 1)),
            created_at REAL NOT NULL,
            PRIMARY KEY (answer_id, user_id)
        ) WITHOUT ROWID
        """,
    ],
    [
        # Most of the answer text was backed by none of its passages (answer/attribution.py).
        "ALTER TABLE answers ADD COLUMN low_support INTEGER NOT NULL DEFAULT 0",
    ],
    [
        # A conversation: an answer and its follow-ups (in its thread, or replies to it).
        """
        CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            guild_id INTEGER,                    -- NULL in DMs
            channel_id INTEGER NOT NULL,         -- where the first question was asked
            thread_id INTEGER UNIQUE,            -- the thread the bot started for it, if any
            user_id INTEGER NOT NULL,            -- who started it
            created_at REAL NOT NULL
        )
        """,
        # One row per answer in a conversation; question, answer and sources are in answers.
        """
        CREATE TABLE turns (
            answer_id INTEGER PRIMARY KEY REFERENCES answers (id) ON DELETE CASCADE,
            conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,           -- 0 for the first question
            standalone TEXT NOT NULL,            -- the question retrieval used
            UNIQUE (conversation_id, position)
        )
        """,
    ],
    [
        # A moderator's verdict on a flagged answer: 'corrected', 'fine' or 'dismissed'.
        "ALTER TABLE answers ADD COLUMN review_status TEXT",
        "ALTER TABLE answers ADD COLUMN reviewed_by INTEGER",
        "ALTER TABLE answers ADD COLUMN reviewed_at REAL",
        # Answers moderators wrote; each is indexed as `verified:<id>` in the knowledge base.
        """
        CREATE TABLE verified_answers (
            id INTEGER PRIMARY KEY,
            answer_id INTEGER REFERENCES answers (id) ON DELETE SET NULL,  -- what it corrects
            guild_id INTEGER,
            question TEXT NOT NULL,
            answer TEXT NOT NULL,
            message_link TEXT NOT NULL,          -- the original Discord message
            created_by INTEGER NOT NULL,
            created_at REAL NOT NULL,
            removed_by INTEGER,
            removed_at REAL                      -- set by /verified remove
        )
        """,
        "CREATE INDEX verified_answers_guild ON verified_answers (guild_id, removed_at)",
    ],
    [
        # Content hashes of the passages an answer cites (rag_core Chunk.chunk_hash): a later
        # index without one of them changed what the answer is based on.
        "ALTER TABLE answers ADD COLUMN cited_hashes TEXT NOT NULL DEFAULT '[]'",
        # When a reindex found its cited passages changed (its footer then says so).
        "ALTER TABLE answers ADD COLUMN stale_at REAL",
    ],
    [
        # Questions the bot read and left to people without posting anything: forum posts the
        # docs do not cover (FORUM_UNCOVERED=silent). Coverage gaps count them as refusals.
        """
        CREATE TABLE unanswered (
            id INTEGER PRIMARY KEY,
            guild_id INTEGER,
            channel_id INTEGER NOT NULL,
            user_id INTEGER NOT NULL,
            question TEXT NOT NULL,
            created_at REAL NOT NULL
        )
        """,
        "CREATE INDEX unanswered_created ON unanswered (created_at)",
    ],
    [
        # New help-forum posts waiting for an answer slot (bot/forum_queue.py), kept until
        # answered or left to people (then moved to unanswered), so a restart resumes them.
        """
        CREATE TABLE forum_queue (
            post_id INTEGER PRIMARY KEY,         -- the post (a thread; its first message too)
            guild_id INTEGER,
            user_id INTEGER NOT NULL,            -- the poster
            question TEXT NOT NULL,              -- the post's title and first message
            queued_at REAL NOT NULL
        )
        """,
        # A turn being answered: taken before the answer starts, turned into a turn or given
        # back after, so concurrent messages cannot pass CONVERSATION_MAX_TURNS.
        """
        CREATE TABLE turn_reservations (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            created_at REAL NOT NULL
        )
        """,
        # When the bot said the conversation is too long: it says so once per conversation.
        "ALTER TABLE conversations ADD COLUMN too_long_at REAL",
    ],
    [
        # "Ask a helper" presses: one per answer, counted per member and per thread.
        """
        CREATE TABLE handoffs (
            id INTEGER PRIMARY KEY,
            answer_id INTEGER NOT NULL UNIQUE REFERENCES answers (id) ON DELETE CASCADE,
            guild_id INTEGER,
            channel_id INTEGER NOT NULL,         -- where the helpers were pinged
            user_id INTEGER NOT NULL,            -- who asked for a helper
            message_id INTEGER,                  -- the ping, once posted
            created_at REAL NOT NULL
        )
        """,
        "CREATE INDEX handoffs_user ON handoffs (user_id, created_at)",
        "CREATE INDEX handoffs_channel ON handoffs (channel_id, created_at)",
    ],
    [
        # A moderator corrected this answer, or one to a question close to it: the verified
        # answer that says so, and when (its footer then points to the correction).
        "ALTER TABLE answers ADD COLUMN corrected_at REAL",
        "ALTER TABLE answers ADD COLUMN corrected_by INTEGER",
    ],
    [
        # A person's answer proposed to the moderators as a verified answer: a solved forum
        # post's accepted reply, or a message a helper saved. One per message.
        """
        CREATE TABLE candidates (
            id INTEGER PRIMARY KEY,
            message_id INTEGER NOT NULL UNIQUE,  -- the person's answer
            guild_id INTEGER,
            channel_id INTEGER NOT NULL,
            author_id INTEGER NOT NULL,
            author_name TEXT NOT NULL,           -- as shown when it was proposed
            question TEXT NOT NULL,
            answer TEXT NOT NULL,
            reason TEXT NOT NULL,                -- 'solved' or 'saved'
            proposed_by INTEGER NOT NULL,        -- the poster or helper whose act proposed it
            created_at REAL NOT NULL,
            card_message_id INTEGER,             -- the moderators' card, once posted
            status TEXT,                         -- NULL while open, 'added' or 'dismissed'
            reviewed_by INTEGER,
            verified_id INTEGER REFERENCES verified_answers (id) ON DELETE SET NULL
        )
        """,
        # Whose answer a verified answer is, when it is a community member's (shown, never pinged).
        "ALTER TABLE verified_answers ADD COLUMN answered_by TEXT NOT NULL DEFAULT ''",
        # When the helpers were reminded of this post left to people (FORUM_REMIND_AFTER_S):
        # once per post, set before the reminder is sent.
        "ALTER TABLE unanswered ADD COLUMN reminded_at REAL",
    ],
]


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the migrations `conn`'s database lacks; inside the caller's write transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"feedback database schema v{version} is newer than this bot (v{SCHEMA_VERSION})"
        )
    for target, statements in enumerate(MIGRATIONS[version:], start=version + 1):
        for statement in statements:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {target}")
