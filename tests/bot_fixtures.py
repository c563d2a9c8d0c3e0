"""Bot fixtures: the real rag_core (Milvus Lite, offline embedder, tiny vLLM engine) indexed once
per session and copied for each module, and a RagBot connected to a fresh loopback fake Discord
per test.

Registered once in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discord
import pytest

from bot.client import RagBot
from bot.feedback import FeedbackStore
from rag_core.answer.answering import Answerer
from rag_core.answer.llm import GenerationChunk, Generator
from rag_core.config import Settings
from rag_core.runtime import Rag, open_rag
from rag_core.search.rerank import make_reranker
from rag_core.search.retrieval import Retriever
from tests.conftest import FIXTURES, offline_model_path
from tests.fake_discord import FakeChannel, FakeDiscord, FakeGuild, FakeMember, FakeRole

DOCS_BASE = "https://milvus.io/docs/"
MENTION_DOC = """\
---
title: Pinging @everyone <@&{role}> and <@{user}>
---
# Notify @everyone about index builds

To notify @here and @everyone when an index build is done, mention <@{user}> or the
<@&{role}> role in the release notes. Index builds on GPU use CAGRA and IVF_PQ.
"""
# Ids that the fake knows nothing about: a leak would still show up as a mention.
PINGED_USER, PINGED_ROLE = 123456789012345678, 223456789012345678


class ShapedGenerator(Generator):
    """The shared engine with a per-test answer budget and optional scripted text first.

    `max_tokens` (when set) overrides the Answerer's budget without changing its prompt budget;
    `prefix` is text "the model" says before the engine's own (sentences, code, mentions: the
    tiny model only writes noise).
    """

    def __init__(
        self,
        inner: Generator,
        *,
        max_tokens: int | None = None,
        prefix: str = "",
        prefix_chunk: int = 0,
        pace: float = 0.0,
    ) -> None:
        super().__init__(inner.settings, inner._tokenizer, max_model_len=inner.max_model_len)
        self.inner = inner
        self.model_name = inner.model_name
        self.max_tokens = max_tokens
        self.prefix = prefix
        self.prefix_chunk = prefix_chunk  # stream the prefix in pieces of this many characters
        self.pace = pace  # seconds per engine token: a slower "model" on a fast host

    async def stream(  # type: ignore[override]
        self, prompt: str, *, max_tokens: int | None = None, request_id: str | None = None
    ) -> AsyncIterator[GenerationChunk]:
        step = self.prefix_chunk or len(self.prefix) or 1
        for start in range(0, len(self.prefix), step):
            yield GenerationChunk(self.prefix[start : start + step], False, None, 0, 0)
            await asyncio.sleep(0.02)  # as a model would: the bot sees the text grow
        done = 0
        async for chunk in self.inner.stream(
            prompt, max_tokens=self.max_tokens or max_tokens, request_id=request_id
        ):
            if not self.pace:
                yield chunk
                continue
            # One piece per token, `pace` apart: vLLM merges the deltas of a slow consumer
            # (and of any consumer on a busy host), which would make the text grow in a few
            # large steps instead of as a slower model writes it.
            for piece in _per_token(chunk, done):
                yield piece
                await asyncio.sleep(self.pace)
            done = chunk.completion_tokens

    def _generate(self, *args: Any) -> Any:
        raise NotImplementedError  # stream() delegates to the inner generator

    async def _prompt_logprobs(self, ids: list[int], request_id: str) -> list[float]:
        return await self.inner._prompt_logprobs(ids, request_id)  # the reranker's scoring

    async def aclose(self) -> None:
        """The session owns the inner engine."""


def _per_token(chunk: GenerationChunk, done: int) -> list[GenerationChunk]:
    """`chunk` cut into one piece per token it carries (`done` tokens came before it); the
    first piece keeps its retraction, the last its end and counts."""
    n = max(1, chunk.completion_tokens - done)
    step = max(1, -(-len(chunk.text) // n))
    texts = [chunk.text[i : i + step] for i in range(0, len(chunk.text), step)] or [""]
    pieces = [
        GenerationChunk(text, False, None, chunk.prompt_tokens, min(done + i + 1, n + done))
        for i, text in enumerate(texts)
    ]
    pieces[0] = dataclasses.replace(pieces[0], retract=chunk.retract)
    pieces[-1] = dataclasses.replace(chunk, text=texts[-1], retract=pieces[-1].retract)
    return pieces


def bot_settings(data_dir: Path, model_dir: str | Path, **overrides: Any) -> Settings:
    """Fast, deterministic-enough settings for the bot under test."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "embedding_model": offline_model_path(),
        "embedding_device": "cpu",
        "docs_sources": [str(FIXTURES / "milvus-docs")],
        "docs_base_url": DOCS_BASE,
        "llm_model": str(model_dir),
        # The shared engine's (tests/llm_fixtures.py llm_settings); only read by the Answerer.
        "llm_dtype": "bfloat16",
        "llm_max_model_len": 1024,
        "llm_enforce_eager": True,
        "llm_kv_cache_bytes": 64 * 2**20,
        "llm_max_tokens": 48,
        "top_k": 3,
        "relevance_threshold": -1.0,  # always answer; refusal tests raise it
        "ask_cooldown_s": 0,
        "edit_interval_s": 0.5,
        "max_concurrent_answers": 4,
        "allow_private_urls": True,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@dataclass
class Indexed:
    """The module's opened, indexed rag_core and the settings it was opened with."""

    rag: Rag
    settings: Settings
    mention_docs: Path

    def with_settings(self, generator: Generator | None = None, **overrides: Any) -> Rag:
        """The same store, embedder and engine, answering under other settings."""
        settings = self.settings.model_copy(update=overrides)
        gen = generator or self.rag.generator
        assert gen is not None
        rag = self.rag
        retriever = Retriever(settings, rag.store, rag.embedder, make_reranker(settings, gen))
        answerer = Answerer(settings, retriever, gen)
        return dataclasses.replace(
            rag, settings=settings, generator=gen, retriever=retriever, answerer=answerer
        )


@pytest.fixture(scope="module")
def patient_engine(llm_settings: Settings) -> Iterator[None]:
    """The shared engine is slow on a busy 2-core host: a longer timeout for this module."""
    saved = llm_settings.llm_timeout_s
    llm_settings.llm_timeout_s = 300.0
    yield
    llm_settings.llm_timeout_s = saved


@pytest.fixture(scope="module")
def bot_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("bot-data")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
async def indexed_kb(
    tmp_path_factory: pytest.TempPathFactory, embedder: Any, tiny_model_dir: Path
) -> Path:
    """The fixture docs plus a page full of mentions, indexed once per session; each module
    opens a copy of it (see `indexed`)."""
    root = tmp_path_factory.mktemp("bot-kb")
    mention_docs = root / "mention-docs"
    mention_docs.mkdir()
    (mention_docs / "notify.md").write_text(
        MENTION_DOC.format(user=PINGED_USER, role=PINGED_ROLE), encoding="utf-8"
    )
    settings = bot_settings(root / "kb", tiny_model_dir)
    async with open_rag(settings, embedder=embedder) as rag:
        report = await rag.indexer.run([*settings.docs_sources, str(mention_docs)])
        assert report.published and not report.failed
    return root


@pytest.fixture(scope="module")
async def indexed(
    indexed_kb: Path,
    bot_data_dir: Path,
    embedder: Any,
    local_generator: Generator,
    tiny_model_dir: Path,
    patient_engine: None,
) -> AsyncIterator[Indexed]:
    """The session's indexed docs, copied for the module: its tests may reindex or add
    verified answers without touching another module's index, and nothing is embedded again."""
    await asyncio.to_thread(shutil.copytree, indexed_kb / "kb", bot_data_dir / "kb")
    settings = bot_settings(bot_data_dir / "kb", tiny_model_dir)
    async with open_rag(
        settings, with_llm=True, embedder=embedder, generator=local_generator
    ) as rag:
        yield Indexed(rag, settings, indexed_kb / "mention-docs")


@dataclass
class World:
    """A fake Discord with one guild, the bot connected to it, and people to act as."""

    fake: FakeDiscord
    bot: RagBot
    store: FeedbackStore
    guild: FakeGuild
    general: FakeChannel
    help: FakeChannel  # a forum, watched by default (FORUM_CHANNEL_IDS)
    moderators: FakeChannel
    mods_role: FakeRole
    admin: FakeMember
    alice: FakeMember
    bob: FakeMember
    carol: FakeMember
    dana: FakeMember  # no Manage Server, but holds `docs_team`, an admin role once configured
    docs_team: FakeRole

    def member(self, name: str) -> FakeMember:
        return self.fake.add_member(self.guild, name)


def populate(fake: FakeDiscord) -> dict[str, Any]:
    guild = fake.add_guild("Docs")
    mods = guild.add_role("Moderators", discord.Permissions(manage_messages=True), mentionable=True)
    admins = guild.add_role("Admins", discord.Permissions(manage_guild=True))
    docs_team = guild.add_role("Docs team", discord.Permissions.none())
    moderators = guild.add_channel(
        "moderators",
        overwrites={
            guild.everyone: discord.PermissionOverwrite(view_channel=False),
            mods: discord.PermissionOverwrite(view_channel=True),
            fake.bot_member(guild): discord.PermissionOverwrite(view_channel=True),
        },
    )
    # A help forum where the bot may tag posts (the solved tag).
    help_forum = guild.add_forum(
        "help",
        tags=("Solved", "Question"),
        overwrites={fake.bot_member(guild): discord.PermissionOverwrite(manage_threads=True)},
    )
    return {
        "guild": guild,
        "general": guild.channel("general"),
        "help": help_forum,
        "moderators": moderators,
        "mods_role": mods,
        "alice": fake.add_member(guild, "alice"),
        "bob": fake.add_member(guild, "bob"),
        "carol": fake.add_member(guild, "carol", [mods]),
        "admin": fake.add_member(guild, "admin", [admins]),
        "dana": fake.add_member(guild, "dana", [docs_team]),
        "docs_team": docs_team,
    }


@asynccontextmanager
async def running_bot(
    rag: Rag,
    tmp_path: Path,
    *,
    fake_options: Mapping[str, Any] | None = None,
    store_options: Mapping[str, Any] | None = None,
    **setting_overrides: Any,
) -> AsyncIterator[World]:
    """A RagBot over `rag`, connected to a new fake Discord, commands synced; closed on exit.

    `store_options` go to FeedbackStore.open (e.g. short busy timeouts)."""
    async with FakeDiscord(**(fake_options or {})) as fake:
        people = populate(fake)
        overrides = {
            "discord_home_guild_ids": [people["guild"].id],
            "moderators_channel_id": people["moderators"].id,
            "forum_channel_ids": [people["help"].id],
            **setting_overrides,
        }
        settings = rag.settings.model_copy(update=overrides)
        with FeedbackStore.open(tmp_path / "feedback.db", **(store_options or {})) as store:
            bot = RagBot(settings, rag, store, guild_ready_timeout=0.05)
            async with fake.running(bot):
                await bot.tree.sync()
                yield World(fake=fake, bot=bot, store=store, **people)
